"""Evaluation metrics computed from the rewards of each pair."""

import numpy as np
from transformers import EvalPrediction


def pair_accuracy(chosen: np.ndarray, rejected: np.ndarray, human_tie: np.ndarray | None = None) -> np.ndarray:
    """Per-pair correctness: 1 if r_c > r_r, 0 if r_c < r_r, 0.5 for a model tie or a human-labelled tie."""
    correct = np.where(chosen > rejected, 1.0, np.where(chosen < rejected, 0.0, 0.5))
    if human_tie is not None:
        correct = np.where(human_tie > 0, 0.5, correct)
    return correct


def compute_metrics(eval_pred: EvalPrediction) -> dict[str, float]:
    """`accuracy` (ties count 0.5), `tie_rate`, `margin`, reward statistics and `num_pairs`.

    `eval_pred.predictions` is (N, 2): the rewards of chosen and rejected; `label_ids` is (N,), 1 where
    the annotators called the pair a tie.
    """
    rewards = np.asarray(eval_pred.predictions, dtype=np.float64)
    chosen, rejected = rewards[:, 0], rewards[:, 1]
    human_tie = None if eval_pred.label_ids is None else np.asarray(eval_pred.label_ids)
    return {
        "accuracy": float(pair_accuracy(chosen, rejected, human_tie).mean()),
        "tie_rate": float((chosen == rejected).mean()),
        "margin": float((chosen - rejected).mean()),
        "chosen_reward_mean": float(chosen.mean()),
        "chosen_reward_std": float(chosen.std()),
        "rejected_reward_mean": float(rejected.mean()),
        "rejected_reward_std": float(rejected.std()),
        "num_pairs": len(chosen),  # pairs scored: under DDP, shows none were duplicated or dropped
    }
