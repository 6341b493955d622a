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
