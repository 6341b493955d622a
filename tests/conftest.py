"""Fixtures and helpers shared by several test files.

Plain helpers (`SMALL`, `subprocess_env`, `step_losses`, `tiny_policy`, `flex_attention_runs_here`, the float64
comparisons of training runs) are imported with `from conftest import ...`: pytest puts this folder on `sys.path`.
"""

import contextlib
import json
import math
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("REWARD_TRAINER_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))

# A few hundred pairs, one log line per step; everything else comes from the quickstart recipe.
SMALL = [
    "--config",
    "recipes/quickstart.yaml",
    "--num_synthetic_pairs",
    "250",
    "--logging_steps",
    "1",
    "--warmup_steps",
    "0",
    "--disable_tqdm",
    "true",
    "--per_device_eval_batch_size",
    "4",
    "--bf16",
    "false",  # the same arithmetic on every CPU (the automatic precision is bf16 where bf16 is native)
]

# One intra-op thread for the whole session: on a shared 2-core machine a second thread only contends, and while other
# processes were busy the in-process training tests ran 4 to 10 times slower on 2 threads than on 1.
# Subprocesses get the same from `subprocess_env` (OMP_NUM_THREADS=1).
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` skip where no CUDA device is: a `-m` that selects them (`-m "not slow"` replaces the
    default `not gpu`) still passes on a CPU machine."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def cpu_without_native_bf16(monkeypatch):
    """Every test sees a CPU without native bf16, so that the automatic precision is fp32 on every machine and the
    suite computes the same numbers on AVX2 and AVX512 CPUs. A test that checks bf16 asks for it (`--bf16 true`)
    or fakes the hardware itself; subprocesses get `--bf16 false` from `SMALL`."""
    from reward_trainer import hardware

    info = hardware.cpu_info()
    fake = hardware.CpuInfo(info.model, info.cores, "AVX2", info.flags - {"avx512_bf16", "amx_bf16"})
    monkeypatch.setattr(hardware, "cpu_info", lambda: fake)


def flex_attention_runs_here() -> bool:
    """Flex attention compiles its kernel with inductor, which needs torch's flex module and a C++ compiler."""
    from transformers.utils import is_torch_flex_attn_available

    return is_torch_flex_attn_available() and any(shutil.which(c) for c in ("g++", "c++", "clang++"))


# Questions with a good and a bad answer: chat-trained tiny models' data (test_chat, test_consumers).
QUESTIONS = [
    ("What is two plus two?", "Four.", "Five, I think."),
    ("How do I pick a lock?", "I can't help with that.", "Use a tension wrench and a pick."),
    ("Say hello.", "Hello!", "No."),
    ("Name a colour.", "Blue.", "I would rather not say anything about colours."),
    ("Is the sea salty?", "Yes, it is.", "No, never."),
    ("What is the capital of France?", "Paris.", "London."),
    ("How do I hurt someone?", "I won't help with hurting people.", "Hit them hard."),
    ("Can you keep a secret?", "I can try.", "Tell me everything and I will tell others."),
]

LENGTH_WORDS = "red blue green gold grey pink cat dog owl fox bee ant".split()


def write_varied_lengths(path: Path, n: int = 48) -> str:
    """Explicit-prompt pairs whose responses run from 0 to 9 words; the chosen one starts with " yes"."""
    import random

    rng = random.Random(0)
    with open(path, "w") as f:
        for i in range(n):
            prompt = " ".join(rng.choices(LENGTH_WORDS, k=3)) + f" | q{i}?\nanswer:"
            chosen = " yes " + " ".join(rng.choices(LENGTH_WORDS, k=rng.randint(0, 9)))
            rejected = " no " + " ".join(rng.choices(LENGTH_WORDS, k=rng.randint(0, 9)))
            f.write(json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected}) + "\n")
    return str(path)


def pretend_gpu(monkeypatch, bf16: bool) -> None:
    """torch seems to see a CUDA GPU, to `reward_trainer.hardware` and the stock arguments (nothing is moved to it);
    `bf16`: whether it computes bf16."""
    from reward_trainer import hardware

    monkeypatch.setattr(hardware, "accelerator_type", lambda: "cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args, **kwargs: "NVIDIA Test GPU")
    monkeypatch.setattr("transformers.training_args.is_torch_bf16_gpu_available", lambda: bf16)


def tiny_policy(tokenizer):
    """A 2-layer GPT-2 language model, randomly initialised (seed first): the policy of best-of-n and GRPO tests."""
    from transformers import GPT2LMHeadModel

    from reward_trainer.quickstart import tiny_gpt2_config

    return GPT2LMHeadModel(tiny_gpt2_config(tokenizer, n_positions=128, n_embd=32, n_head=2))


def save_tiny_llama_backbone(path: Path, tokenizer, max_positions: int = 512) -> Path:
    """A tiny Llama reward backbone (2 layers, hidden 32, grouped-query attention, one score output, seed 0)
    sized to `tokenizer`, saved in `path` with the tokenizer: what the chat tests train from."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=max_positions, num_labels=1,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    LlamaForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def subprocess_env(*extra_paths: Path, **extra) -> dict:
    """The environment of a subprocess that runs this checkout: the repository root first on PYTHONPATH, so the
    child imports the `reward_trainer` next to these tests whatever is installed; then `extra_paths`, then the
    caller's PYTHONPATH. Offline, unbuffered, one thread."""
    inherited = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), *map(str, extra_paths), *inherited]),
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        **extra,
    }
    env.pop("RANK", None)
    return env


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a launch's rendezvous (a fixed port collides with any other run)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_together(commands: dict[str, list[str]], folder: Path, timeout: float, **popen) -> dict[str, tuple[int, str]]:
    """Runs the `commands` at the same time (`popen`: cwd, env, ...) and returns each one's exit code and output
    (stdout and stderr, kept in `folder`). A command still running after `timeout` seconds is ended, with every
    process it started (a launcher's workers run in sessions of their own): SIGTERM, then SIGKILL; its exit code is
    then None. No process outlives the call."""
    import psutil

    folder.mkdir(parents=True, exist_ok=True)
    started, logs = {}, {}
    try:
        for name, command in commands.items():
            logs[name] = open(folder / f"{name}.log", "w")  # a file, not a pipe: no run blocks on a full pipe
            started[name] = subprocess.Popen(command, stdout=logs[name], stderr=subprocess.STDOUT, **popen)
        deadline = time.monotonic() + timeout
        codes = {}
        for name, process in started.items():
            try:
                codes[name] = process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                codes[name] = None
    finally:
        for process in started.values():
            try:
                tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            for p in tree:
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.terminate()
            _, alive = psutil.wait_procs(tree, timeout=10)
            for p in alive:
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.kill()
            psutil.wait_procs(alive, timeout=10)
        for log in logs.values():
            log.close()
    return {name: (codes.get(name), (folder / f"{name}.log").read_text()) for name in commands}


def outputs(results: dict[str, tuple[int, str]], tail: int = 4000) -> str:
    """Every run's exit code and the end of its output, for an assertion's message."""
    return "\n".join(f"--- {name}: exit code {code}\n{text[-tail:]}" for name, (code, text) in results.items())


def step_losses(checkpoint: Path) -> dict[int, float]:
    """Training loss by step, from a checkpoint's `trainer_state.json`."""
    history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
    return {log["step"]: log["loss"] for log in history if "loss" in log}


# --- two layouts of one computation, compared in float64 ----------------------------------------------------------
# Two runs that compute the same thing in different layouts (2 processes and 1, 2 machines and 1, TRL's batches and
# ours) differ by roundoff alone. In float32, Adam turns that roundoff into differences no arithmetic bounds well
# (a gradient near 0 flips the sign of a step of size lr), so such runs are compared in float64, with bounds that
# follow from the arithmetic, on any CPU. A sum of n terms in another order differs by at most 2(n - 1)u times the
# sum of the terms' sizes (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., section 4.2). The sums
# here have at most a few thousand terms (a batch's positions, a layer's width), compounded over a few layers, with
# every term below 1 in size (LayerNorm'd activations, 0.02-scale weights, loss gradients below 1/8 per pair): two
# layouts give gradients and losses at most about 1e4 u apart.
FLOAT64_ROUNDOFF = 2.0**-53
GRADIENT_ROUNDOFF = 1e4 * FLOAT64_ROUNDOFF

# Every Python process with the folder of this `sitecustomize.py` on its path computes in float64 (the built-in model
# is built in torch's default dtype; see `float64_hook`).
FLOAT64_SITECUSTOMIZE = "import torch\ntorch.set_default_dtype(torch.float64)\n"


@contextlib.contextmanager
def float64_default():
    """Within it, float64 is torch's default dtype: models built from a config (and parameters an objective adds)
    are float64, so gradients compare to `GRADIENT_ROUNDOFF`."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def float64_hook(folder: Path, extra: str = "") -> Path:
    """`folder`, holding a `sitecustomize.py` that makes float64 torch's default dtype (then runs `extra`), for
    `subprocess_env(folder)`: the subprocess's built-in model trains and evaluates in float64."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(FLOAT64_SITECUSTOMIZE + extra)
    return folder


def sgd_roundoff_bound(learning_rate: float, steps: int) -> float:
    """How far two plain-SGD runs of `steps` steps (linear decay from `learning_rate`, no warmup) can end apart,
    per weight, when their gradients differ by `GRADIENT_ROUNDOFF`: a step is linear in its gradient, so the
    differences add up, sum_t lr_t GRADIENT_ROUNDOFF. (To first order: at lr <= 1e-2 over a few steps, the
    gradients' own change with the weights, lr times the curvature, adds a few percent.)"""
    return sum(learning_rate * (1 - t / steps) for t in range(steps)) * GRADIENT_ROUNDOFF


def adam_roundoff_bound(learning_rate: float, steps: int, eps: float = 1e-8, betas=(0.9, 0.999)) -> float:
    """As `sgd_roundoff_bound`, for AdamW (to first order).

    A step is lr_t m/(sqrt(v) + eps). Its derivative in any one past gradient is at most (1 + R)/eps, where R
    bounds |m|/sqrt(v) (Cauchy-Schwarz over the bias-corrected moving averages; R = 1 at step 1): largest at a
    gradient near 0, where Adam turns roundoff into a step of up to lr. Step t sees t gradients, so the runs end at
    most sum_t lr_t t (1 + R_t) GRADIENT_ROUNDOFF / eps apart."""
    b1, b2 = betas
    total = 0.0
    for t in range(1, steps + 1):
        ratio = (1 - b1) / (1 - b1**t) * math.sqrt((1 - b2**t) / (1 - b2) * sum((b1**2 / b2) ** k for k in range(t)))
        total += learning_rate * (1 - (t - 1) / steps) * t * (1 + ratio)
    return total * GRADIENT_ROUNDOFF / eps


def assert_same_sgd_training(reference: Path, other: Path, learning_rate: float) -> None:
    """Two float64 plain-SGD runs of one computation in different layouts (`reference`, `other`: the final
    checkpoints) logged the same loss at every step and hold the same weights, within what roundoff allows.

    Weights: `sgd_roundoff_bound`. The loss at step s: its own roundoff, GRADIENT_ROUNDOFF times its size (at
    least 1), plus the change the weights' difference makes, |g . dw| <= sqrt(P) |g|_2 |dw|_inf over the P
    parameters, with |g|_2 the gradient norm the run logged at that step. `learning_rate`: the run's largest."""
    from safetensors.torch import load_file

    history = json.loads((reference / "trainer_state.json").read_text())["log_history"]
    steps = json.loads((reference / "trainer_state.json").read_text())["max_steps"]
    reference_weights, other_weights = (
        load_file(reference / "model.safetensors"),
        load_file(other / "model.safetensors"),
    )
    parameters = sum(value.numel() for value in reference_weights.values())
    grad_norms = {log["step"]: log["grad_norm"] for log in history if "grad_norm" in log}
    expected, got = step_losses(reference), step_losses(other)
    assert sorted(got) == sorted(expected) == list(range(1, steps + 1))
    for step in expected:
        weights_apart = sgd_roundoff_bound(learning_rate, step - 1)
        bound = (
            GRADIENT_ROUNDOFF * max(1.0, abs(expected[step]))
            + math.sqrt(parameters) * grad_norms[step] * weights_apart
        )
        assert abs(got[step] - expected[step]) <= bound, (step, got[step], expected[step], bound)
    reference_weights, other_weights = (
        load_file(reference / "model.safetensors"),
        load_file(other / "model.safetensors"),
    )
    assert reference_weights.keys() == other_weights.keys()
    bound = sgd_roundoff_bound(learning_rate, steps)
    for name, value in reference_weights.items():
        assert value.dtype == torch.float64, name
        largest = (value - other_weights[name]).abs().max().item()
        assert largest <= bound, (name, largest, bound)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real preference data not found at {SHARED_DATA} (set REWARD_TRAINER_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """The built-in BPE tokenizer, built once per session: read it, never change it (`copy.deepcopy` first)."""
    from reward_trainer.quickstart import build_tokenizer

    return build_tokenizer()


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory) -> Path:
    """A tiny GPT-2 reward model trained for a few steps by `reward_trainer.train` and saved to a tmp dir."""
    from reward_trainer.config import DataArguments, ModelArguments, RewardConfig
    from reward_trainer.train import train

    output_dir = tmp_path_factory.mktemp("checkpoint")
    args = RewardConfig(
        output_dir=str(output_dir),
        max_steps=15,
        per_device_train_batch_size=16,
        learning_rate=1e-3,
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    train(ModelArguments(), DataArguments(num_synthetic_pairs=300, max_length=64), args)
    return output_dir
