"""Loading preference data and tokenizing it into `chosen_ids` / `rejected_ids`."""

import json
import os
from dataclasses import dataclass, field

from datasets import Dataset, load_dataset
from transformers import PreTrainedTokenizerBase

from .config import BUILTIN_DATASET, DataArguments


class DataError(ValueError):
    """Bad input data; the message names the file, row and field."""


@dataclass
class PreferenceData:
    train: Dataset
    eval: Dataset | None
    report: dict = field(default_factory=dict)


def load_preference_data(data_args: DataArguments, tokenizer: PreTrainedTokenizerBase, seed: int = 42) -> PreferenceData:
    """Loads, splits and tokenizes the pairs named by `data_args`."""
    if data_args.dataset_name == BUILTIN_DATASET:
        from .quickstart import make_pairs

        n = data_args.num_synthetic_pairs
        train, test = Dataset.from_list(make_pairs(n, seed=seed)), Dataset.from_list(make_pairs(n // 10, seed=seed + 1))
    else:
        path = data_args.dataset_name
        if not os.path.exists(path):
            raise DataError(f"dataset file {path!r} does not exist")
        raw = load_dataset("json", data_files=path, split="train")
        split = raw.train_test_split(test_size=data_args.eval_fraction, seed=seed)
        train, test = split["train"], split["test"]
    if data_args.max_train_samples:
        train = train.select(range(min(len(train), data_args.max_train_samples)))
    if data_args.max_eval_samples:
        test = test.select(range(min(len(test), data_args.max_eval_samples)))
    train, test = tokenize(train, tokenizer, data_args), tokenize(test, tokenizer, data_args)
    report = {"train_pairs": len(train), "eval_pairs": len(test)}
    return PreferenceData(train, test, report)


def tokenize(dataset: Dataset, tokenizer: PreTrainedTokenizerBase, data_args: DataArguments) -> Dataset:
    def encode(batch):
        chosen = tokenizer([p + c for p, c in zip(batch["prompt"], batch["chosen"])])["input_ids"]
        rejected = tokenizer([p + r for p, r in zip(batch["prompt"], batch["rejected"])])["input_ids"]
        return {"chosen_ids": chosen, "rejected_ids": rejected}

    dataset = dataset.map(encode, batched=True, num_proc=data_args.dataset_num_proc, desc="Tokenizing")
    if data_args.max_length:
        limit = data_args.max_length
        dataset = dataset.filter(lambda r: len(r["chosen_ids"]) <= limit and len(r["rejected_ids"]) <= limit)
    return dataset


def write_report(report: dict, output_dir: str) -> None:
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "data_report.json"), "w") as f:
        json.dump(report, f, indent=2)
