"""Train Bradley-Terry reward models for RLHF with the Hugging Face Trainer."""

from .collator import PreferenceCollator
from .config import DataArguments, ModelArguments, RewardConfig
from .loss import bradley_terry_loss
from .scorer import RewardScorer
from .trainer import RewardTrainer

__all__ = [
    "DataArguments",
    "ModelArguments",
    "PreferenceCollator",
    "RewardConfig",
    "RewardScorer",
    "RewardTrainer",
    "bradley_terry_loss",
]
__version__ = "0.1.0"
