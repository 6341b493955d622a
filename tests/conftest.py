"""Fixtures and helpers shared by several test files.

Plain helpers (`SMALL`, `subprocess_env`, `step_losses`, `tiny_policy`, `flex_attention_runs_here`) are imported with
`from conftest import ...`: pytest puts this folder on `sys.path`.
"""

import json
import os
import shutil
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


def tiny_policy(tokenizer):
    """A 2-layer GPT-2 language model, randomly initialised (seed first): the policy of best-of-n and GRPO tests."""
    from transformers import GPT2LMHeadModel

    from reward_trainer.quickstart import tiny_gpt2_config

    return GPT2LMHeadModel(tiny_gpt2_config(tokenizer, n_positions=128, n_embd=32, n_head=2))


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


def step_losses(checkpoint: Path) -> dict[int, float]:
    """Training loss by step, from a checkpoint's `trainer_state.json`."""
    history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
    return {log["step"]: log["loss"] for log in history if "loss" in log}


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
