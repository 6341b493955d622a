import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("REWARD_TRAINER_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real preference data not found at {SHARED_DATA} (set REWARD_TRAINER_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_tokenizer():
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
