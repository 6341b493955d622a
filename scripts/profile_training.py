"""Where a training step's time goes, ours against TRL's, per token position: matrix products, attention,
element-wise work, the optimizer.

    python scripts/profile_training.py                          # SmolLM2 fp32, 16 HH pairs, the second step profiled
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 python scripts/profile_training.py

Each system trains `benchmark_training.py`'s way (same model, pairs, batch 8, learning rate, no dropout) in its own
subprocess, and `torch.profiler` records the step after the first (which pays one-time costs). Self CPU time is
summed by operator kind, and divided by the token positions the step's forwards ran (padding included): the cost
per position of each kind, which is what an exact method can change by laying the same pairs out differently.
"""

import argparse
import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from benchmark_training import DEFAULT_DATASET, TokenCounter, load_backbone, load_pairs  # this folder is on sys.path
from transformers import TrainerCallback

from reward_trainer import hardware

REPO = Path(__file__).resolve().parents[1]
KINDS = {  # operator kind: substrings of profiler event names, tried in this order
    "attention": ("scaled_dot_product", "flash_attention", "efficient_attention", "softmax"),
    "matrix products": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::linear", "mkldnn"),
    "optimizer": ("adam", "_foreach", "optimizer"),
}


def kind_of(name: str) -> str:
    lower = name.lower()
    for kind, keys in KINDS.items():
        if any(key in lower for key in keys):
            return kind
    return "element-wise and other" if lower.startswith("aten::") else "framework"


class ProfileStep(TrainerCallback):
    """Profiles the optimizer step `step` (1-based) from its beginning to its end, and counts the token positions
    its forwards run (`counter`, at the input embeddings)."""

    def __init__(self, step: int, counter: TokenCounter):
        self.step, self.counter, self.profiler, self.positions = step, counter, None, 0

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            self.profiler.__enter__()
            self.positions = -self.counter.tokens

    def on_step_end(self, args, state, control, **kwargs):
        if self.profiler is not None and state.global_step == self.step:
            self.profiler.__exit__(None, None, None)
            self.positions += self.counter.tokens


def profile_one(args) -> dict:
    """Runs in a subprocess: trains `args.system` for two steps and profiles the second."""
    from datasets import Dataset

    torch.set_num_threads(args.threads)
    model, tokenizer = load_backbone(args.backbone)
    pairs, _ = load_pairs(Path(args.dataset), tokenizer, args.pairs, 0, args.max_length)
    common = dict(
        output_dir=f"/tmp/reward_trainer_profile/{args.system}", per_device_train_batch_size=8, max_steps=2,
        learning_rate=5e-5, warmup_steps=0, weight_decay=0.0, logging_steps=1, eval_strategy="no", save_strategy="no",
        report_to="none", seed=0, use_cpu=True, bf16=args.precision == "bf16", dataloader_num_workers=0,
        disable_tqdm=True,
    )  # fmt: skip
    dataset = Dataset.from_list(pairs)
    if args.system == "trl":
        from trl import RewardConfig, RewardTrainer

        config = RewardConfig(**common, max_length=args.max_length, disable_dropout=True, gradient_checkpointing=False)
    else:
        from reward_trainer import RewardConfig, RewardTrainer

        config = RewardConfig(**common)
    trainer = RewardTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    profile = ProfileStep(2, TokenCounter(model))
    trainer.add_callback(profile)
    trainer.train()
    step_positions = profile.positions
    self_time = collections.Counter()
    for event in profile.profiler.key_averages():
        self_time[kind_of(event.key)] += event.self_cpu_time_total  # microseconds
    return {
        "system": args.system,
        "positions": step_positions,
        "self_cpu_ms": {kind: t / 1e3 for kind, t in self_time.items()},
        "us_per_position": {kind: t / step_positions for kind, t in self_time.items()},
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=str(DEFAULT_DATASET))
    parser.add_argument("--backbone", default="smollm2", choices=["causal", "smollm2", "gpt2"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--pairs", type=int, default=16, help="Two steps of 8.")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--output", help="Write the results as JSON here.")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        args.system = args.worker
        print("RESULT " + json.dumps(profile_one(args)), flush=True)
        return
    print(hardware.machine_line(), flush=True)
    results = {}
    for system in ("reward_trainer", "trl"):
        command = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--worker", system]
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode or not lines:
            raise SystemExit(f"{system} failed:\n{done.stderr[-3000:]}")
        results[system] = json.loads(lines[-1][len("RESULT ") :])
    ours, theirs = results["reward_trainer"], results["trl"]
    kinds = sorted(set(ours["self_cpu_ms"]) | set(theirs["self_cpu_ms"]), key=lambda k: -ours["self_cpu_ms"].get(k, 0))
    print(f"\nprofiled step: ours {ours['positions']:,} positions, TRL {theirs['positions']:,}")
    print(
        f"{'kind':24} {'ours ms':>9} {'share':>6} {'TRL ms':>9} {'share':>6} {'us/pos ours':>11} {'TRL':>8} {'ratio':>6}"
    )
    totals = {name: sum(r["self_cpu_ms"].values()) for name, r in results.items()}
    for kind in kinds:
        a, b = ours["self_cpu_ms"].get(kind, 0.0), theirs["self_cpu_ms"].get(kind, 0.0)
        pa, pb = ours["us_per_position"].get(kind, 0.0), theirs["us_per_position"].get(kind, 0.0)
        print(
            f"{kind:24} {a:9.0f} {a / totals['reward_trainer']:6.1%} {b:9.0f} {b / totals['trl']:6.1%} "
            f"{pa:11.2f} {pb:8.2f} {pa / pb if pb else float('nan'):6.2f}"
        )
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"machine": hardware.machine_line(), "argv": sys.argv[1:], "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
