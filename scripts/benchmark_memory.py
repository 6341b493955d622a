"""Peak memory and time of a training run on the longest pairs, with and without the micro-batch bound.

    python scripts/benchmark_memory.py                                   # the SmolLM2 recipe, 64 longest HH pairs
    python scripts/benchmark_memory.py --precision fp32 bf16 --pairs 64 --output memory.json
    python scripts/benchmark_memory.py --settings "--micro_batch_tokens 0" "" "--memory_budget_gb 6"

Each setting is one `reward-trainer train --config <recipe>` run in its own subprocess, on a JSON Lines file of the
`--pairs` HH-RLHF rows with the most characters (chosen + rejected: the batches that set the peak), one epoch
(`--pairs` / 8 steps of 8), no evaluation, at each `--precision` (`auto` is the recipe's default: the hardware's
choice). Peak RSS is the child's own (`getrusage(RUSAGE_CHILDREN)` of a fresh child per run); the time per epoch is
the trainer's `train_runtime`. The default settings compare `--micro_batch_tokens 0` (no bound: a batch is one
forward) with the defaults (the bound chosen from the memory budget).
"""

import argparse
import gzip
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("REWARD_TRAINER_SHARED_DATA", REPO.parent / "shared" / "data"))
DEFAULT_DATASET = SHARED_DATA / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"
PRECISION_FLAGS = {"auto": [], "fp32": ["--bf16", "false", "--fp16", "false"], "bf16": ["--bf16", "true"]}


def longest_rows(path: Path, n: int) -> list[dict]:
    """The `n` rows with the most characters in `chosen` + `rejected`, in file order."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    keep = sorted(range(len(rows)), key=lambda i: len(rows[i]["chosen"]) + len(rows[i]["rejected"]))[-n:]
    return [rows[i] for i in sorted(keep)]


def run(recipe: str, data: str, flags: list[str], output_dir: str) -> dict:
    """One training run in a fresh subprocess: its peak RSS, train_runtime and what the trainer chose."""
    command = [sys.executable, "-m", "reward_trainer.cli", "train", "--config", recipe, "--dataset_name", data,
               "--eval_fraction", "0", "--eval_strategy", "no", "--output_dir", output_dir, "--logging_steps", "1",
               "--disable_tqdm", "true", *flags]  # fmt: skip
    # Through this script's `--peak-of` wrapper: a fresh parent whose only child is the run, so that its
    # RUSAGE_CHILDREN peak is the run's own (a parent's covers all its children that ended).
    wrapped = [sys.executable, __file__, "--peak-of", *command]
    done = subprocess.run(wrapped, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    peak = int(done.stdout.splitlines()[-1].removeprefix("PEAK_RSS_KB "))
    results = json.loads(Path(output_dir, "train_results.json").read_text())
    memory = [line for line in done.stdout.splitlines() if "memory: " in line]
    return {
        "flags": flags,
        "peak_rss_gb": peak * 1024 / 2**30,
        "train_runtime_s": results["train_runtime"],
        "precision": results.get("precision"),
        "micro_batch_tokens": results.get("micro_batch_tokens"),
        "gradient_checkpointing": results.get("gradient_checkpointing"),
        "train_loss": results.get("train_loss"),
        "memory_line": memory[-1].split("memory: ", 1)[1] if memory else None,
    }


def peak_of(command: list[str]) -> None:
    """Runs `command`, passing its output through, then prints its peak RSS in KiB; exits with its code."""
    code = subprocess.run(command).returncode
    print(f"PEAK_RSS_KB {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}", flush=True)
    sys.exit(code)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--peak-of"]:
        return peak_of(argv[1:])
    from reward_trainer.hardware import machine_line

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=str(DEFAULT_DATASET), help="HH-RLHF-style JSONL(.gz).")
    parser.add_argument("--recipe", default=str(REPO / "recipes" / "hh_rlhf_smollm2.yaml"))
    parser.add_argument("--pairs", type=int, default=64, help="The longest rows kept (one epoch over them).")
    parser.add_argument("--precision", nargs="+", default=["auto"], choices=list(PRECISION_FLAGS))
    parser.add_argument(
        "--settings",
        nargs="+",
        default=["--micro_batch_tokens 0", ""],
        help="Extra flags of each run, one string per run ('' = the defaults).",
    )
    parser.add_argument("--max-steps", type=int, help="Stop after this many steps (a quick look at the peak).")
    parser.add_argument("--output", help="Write the results as JSON here.")
    args = parser.parse_args(argv)
    if not Path(args.dataset).exists():
        raise SystemExit(f"dataset {args.dataset} not found; pass --dataset or set REWARD_TRAINER_SHARED_DATA")
    print(machine_line(), flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "longest.jsonl")
        with open(data, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row) + "\n" for row in longest_rows(Path(args.dataset), args.pairs))
        for precision in args.precision:
            for i, setting in enumerate(args.settings):
                flags = PRECISION_FLAGS[precision] + setting.split()
                flags += ["--max_steps", str(args.max_steps)] if args.max_steps else []
                result = run(args.recipe, data, flags, os.path.join(tmp, f"run-{precision}-{i}"))
                result["setting"] = setting or "(defaults)"
                result["precision_asked"] = precision
                results.append(result)
                print(json.dumps(result), flush=True)
    print(f"\n{'precision':9} {'setting':28} {'peak RSS GB':>11} {'epoch s':>8} {'micro-batch':>11} {'ckpt':>5}")
    for r in results:
        print(
            f"{r['precision']:9} {r['setting']:28} {r['peak_rss_gb']:11.2f} {r['train_runtime_s']:8.1f} "
            f"{r['micro_batch_tokens'] or '-':>11} {str(r['gradient_checkpointing']):>5}"
        )
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"machine": machine_line(), "argv": sys.argv[1:], "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
