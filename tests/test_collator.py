import doctest

import torch

import reward_trainer.collator
from reward_trainer.collator import PreferenceCollator


def test_docstring_example_is_exact():
    assert doctest.testmod(reward_trainer.collator).failed == 0


def test_pads_chosen_and_rejected_to_one_dynamic_length():
    batch = PreferenceCollator(pad_token_id=9)([{"chosen_ids": [1, 2], "rejected_ids": [3]}])
    assert batch["input_ids"].tolist() == [[1, 2], [3, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1], [1, 0]]
    assert set(batch) == {"input_ids", "attention_mask"}


def test_pad_to_multiple_of_and_optional_columns():
    rows = [
        {"chosen_ids": [1, 2, 3], "rejected_ids": [4], "weight": 0.5, "tie": 1, "margin": 2},
        {"chosen_ids": [5], "rejected_ids": [6, 7], "weight": 1.0, "tie": 0, "margin": 0},
    ]
    batch = PreferenceCollator(pad_token_id=0, pad_to_multiple_of=4)(rows)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 0], [5, 0, 0, 0], [4, 0, 0, 0], [6, 7, 0, 0]]
    assert batch["attention_mask"].sum(1).tolist() == [3, 1, 1, 2]
    assert torch.equal(batch["weight"], torch.tensor([0.5, 1.0]))
    assert torch.equal(batch["tie"], torch.tensor([1.0, 0.0]))
    assert torch.equal(batch["margin"], torch.tensor([2.0, 0.0]))
