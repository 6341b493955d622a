"""Batching of preference pairs."""

from dataclasses import dataclass

import torch


@dataclass
class PreferenceCollator:
    """Pads chosen and rejected sequences of a batch together, to the longest one in the batch.

    Rows carry `chosen_ids` and `rejected_ids` (token ids of prompt + response, special tokens included),
    and optionally `margin`, `weight` and `tie`. Padding is dynamic (never to `max_length`), on the right,
    rounded up to `pad_to_multiple_of`. The chosen sequences come first, then the rejected ones:

    >>> collator = PreferenceCollator(pad_token_id=0)
    >>> collator([
    ...     {"chosen_ids": [5, 6, 7], "rejected_ids": [5, 8], "margin": 1.0},
    ...     {"chosen_ids": [9], "rejected_ids": [9, 4, 3, 2], "margin": 0.0},
    ... ])
    {'input_ids': tensor([[5, 6, 7, 0],
            [9, 0, 0, 0],
            [5, 8, 0, 0],
            [9, 4, 3, 2]]), 'attention_mask': tensor([[1, 1, 1, 0],
            [1, 0, 0, 0],
            [1, 1, 0, 0],
            [1, 1, 1, 1]]), 'margin': tensor([1., 0.])}
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        sequences = [row["chosen_ids"] for row in rows] + [row["rejected_ids"] for row in rows]
        length = max(len(ids) for ids in sequences)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(sequences), length), self.pad_token_id, dtype=torch.long)  # (2B, T)
        attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
        for i, ids in enumerate(sequences):
            input_ids[i, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
            attention_mask[i, : len(ids)] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        for key in ("margin", "weight", "tie"):
            if key in rows[0]:
                batch[key] = torch.tensor([float(row[key]) for row in rows])
        return batch
