"""Batching of preference pairs."""

from dataclasses import dataclass

import torch

from .packing import prefix_shared_batch, prefix_shared_positions, unique_sequences

RESPONSE_LENGTH_COLUMNS = ("chosen_length", "rejected_length")  # tokens after the shared prompt
PAIR_COLUMNS = ("margin", "weight", "tie", *RESPONSE_LENGTH_COLUMNS)  # floats
# Integers that tell evaluation where a pair comes from: its prompt (row), its subset, its responses' places in the row.
INDEX_COLUMNS = ("group", "subset", "chosen_response", "rejected_response")
RATING_COLUMNS = ("chosen_ratings", "rejected_ratings")  # (A,) floats per pair, NaN where missing


def pairs_of_rankings(items: list[dict]) -> list[dict]:
    """Ranking items (`data.pairs.expand_rankings`) -> their pairs, as `expand_pairs` makes them (weight 1/pairs per ranking);
    pair rows pass through unchanged."""
    if "ranking_ids" not in items[0]:
        return items
    pairs = []
    for item in items:
        ids, scores = item["ranking_ids"], item["ranking_scores"]
        better_worse = [(i, j) for i in range(len(ids)) for j in range(len(ids)) if scores[i] > scores[j]]
        for i, j in better_worse:
            pairs.append({"chosen_ids": ids[i], "rejected_ids": ids[j], "weight": 1.0 / len(better_worse),
                          "tie": 0.0, "group": item["group"], "chosen_response": i, "rejected_response": j})  # fmt: skip
    return pairs


@dataclass
class PreferenceCollator:
    """Pads chosen and rejected sequences of a batch together, to the longest one in the batch.

    Rows carry `chosen_ids` and `rejected_ids` (token ids of prompt + response, special tokens included),
    or are ranking items (`ranking_ids`, `ranking_scores`, `group`), which are batched as their pairs,
    and optionally the float `PAIR_COLUMNS` (`margin`, `weight`, `tie`, ...) and the integer `INDEX_COLUMNS`.
    Padding is dynamic (never to `max_length`), on the right, rounded up to `pad_to_multiple_of`. The chosen sequences come first, then the rejected ones:

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

    With `dedupe=True`, a sequence that occurs several times in the batch (a ranking of K responses
    expanded into pairs) is padded once: `input_ids` holds the U distinct sequences, and `chosen_index`
    / `rejected_index` (B,) say which row is each pair's chosen and rejected sequence.

    With `max_tokens`, a batch that would hold more token positions comes as `{"micro_batches": [...]}`
    (`split_by_positions`).
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None
    dedupe: bool = False
    max_tokens: int | None = None

    def __call__(self, rows: list[dict]) -> dict:
        return split_by_positions(rows, self.collate, self.positions, self.max_tokens)

    def collate(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        rows = pairs_of_rankings(rows)
        if self.dedupe:
            sequences, chosen, rejected = unique_sequences(rows)
            batch = self.pad(sequences)
            batch["chosen_index"] = torch.tensor(chosen, dtype=torch.long)
            batch["rejected_index"] = torch.tensor(rejected, dtype=torch.long)
        else:
            batch = self.pad([row["chosen_ids"] for row in rows] + [row["rejected_ids"] for row in rows])
        return batch | pair_columns(rows)

    def positions(self, rows: list[dict]) -> int:
        """Token positions the padded batch of these rows holds (sequences x longest, rounded up)."""
        rows = pairs_of_rankings(rows)
        sequences = (
            unique_sequences(rows)[0] if self.dedupe else [r[k] for r in rows for k in ("chosen_ids", "rejected_ids")]
        )
        length = max(len(ids) for ids in sequences)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        return len(sequences) * length

    def pad(self, sequences: list[list[int]]) -> dict[str, torch.Tensor]:
        return pad_sequences(sequences, self.pad_token_id, pad_to_multiple_of=self.pad_to_multiple_of)


def split_by_positions(rows: list[dict], collate, positions, max_tokens: int | None) -> dict:
    """`collate(rows)`, or, when that batch would run more than `max_tokens` positions, `{"micro_batches": [...]}`:
    the rows cut, in order, into consecutive runs that each fit (a row longer than the bound alone), each collated.

    The trainer runs the micro-batches one after another and adds their gradients (`RewardTrainer.training_step`):
    the same pairs and the same gradient as the whole batch, with the memory of its largest micro-batch. A row is a
    pair or a whole ranking, never cut."""
    if not max_tokens or positions(rows) <= max_tokens:
        return collate(rows)
    parts, current = [], []
    for row in rows:
        if current and positions([*current, row]) > max_tokens:
            parts.append(current)
            current = []
        current.append(row)
    return {"micro_batches": [collate(part) for part in [*parts, current]]}


def pad_sequences(
    sequences: list[list[int]], pad_token_id: int, padding_side: str = "right", pad_to_multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    """`input_ids` and `attention_mask` (N, T) of id lists padded to the longest (rounded up to a multiple)."""
    length = max(len(ids) for ids in sequences)
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(sequences), length), pad_token_id, dtype=torch.long)  # (N, T)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for i, ids in enumerate(sequences):
        span = slice(0, len(ids)) if padding_side == "right" else slice(length - len(ids), length)
        input_ids[i, span] = torch.as_tensor(ids, dtype=torch.long)
        attention_mask[i, span] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def pair_columns(rows: list[dict]) -> dict[str, torch.Tensor]:
    """The optional per-pair columns, (B,) each: float `PAIR_COLUMNS`, integer `INDEX_COLUMNS`; (B, A) `RATING_COLUMNS`."""
    columns = {key: torch.tensor([float(row[key]) for row in rows]) for key in PAIR_COLUMNS if key in rows[0]}
    columns |= {
        key: torch.tensor([row[key] for row in rows], dtype=torch.float32) for key in RATING_COLUMNS if key in rows[0]
    }
    return columns | {key: torch.tensor([int(row[key]) for row in rows]) for key in INDEX_COLUMNS if key in rows[0]}


@dataclass
class PrefixSharingCollator:
    """Lays out each pair as one row `[prompt | chosen | rejected]` for causal models (see `reward_trainer.packing`).

    Each distinct sequence of the batch is encoded once; with `pack=True` short rows are packed together
    into rows no longer than the longest one. The output feeds `packing.prefix_shared_rewards`:

    >>> batch = PrefixSharingCollator(pad_token_id=0)([{"chosen_ids": [5, 6, 7], "rejected_ids": [5, 8]}])
    >>> batch["input_ids"], batch["position_ids"]
    (tensor([[5, 6, 7, 8]]), tensor([[0, 1, 2, 1]]))
    >>> batch["attention_mask"][0, 0].int()  # the rejected token 8 sees the prompt 5, not the chosen 6 7
    tensor([[1, 0, 0, 0],
            [1, 1, 0, 0],
            [1, 1, 1, 0],
            [1, 0, 0, 1]], dtype=torch.int32)
    >>> batch["reward_index"], batch["chosen_index"], batch["rejected_index"]
    (tensor([2, 3]), tensor([0]), tensor([1]))

    With `max_tokens`, a batch whose rows would hold more token positions comes as `{"micro_batches": [...]}`
    (`split_by_positions`).
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None
    pack: bool = True
    max_tokens: int | None = None

    def __call__(self, rows: list[dict]) -> dict:
        return split_by_positions(rows, self.collate, self.positions, self.max_tokens)

    def collate(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        rows = pairs_of_rankings(rows)
        batch = prefix_shared_batch(rows, self.pad_token_id, self.pack, self.pad_to_multiple_of)
        return batch | pair_columns(rows)

    def positions(self, rows: list[dict]) -> int:
        """Token positions the prefix-shared rows of these rows hold (rows x row length)."""
        return prefix_shared_positions(pairs_of_rankings(rows), self.pack, self.pad_to_multiple_of)


def collator_for(model, args, pad_token_id: int):
    """The fastest exact collator for `model` that `args` (a `RewardConfig`) allows."""
    from .packing import supports_prefix_sharing

    if getattr(args, "prefix_sharing", False) and supports_prefix_sharing(model):
        return PrefixSharingCollator(pad_token_id, pack=args.pack_rows)
    return PreferenceCollator(pad_token_id, dedupe=getattr(args, "dedupe_sequences", False))
