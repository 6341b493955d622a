"""`compute_metrics` for `RewardTrainer`: the evaluation report's metrics at each evaluation during training."""

import functools

import numpy as np
from transformers import EvalPrediction

from .evaluation import pair_correctness, preference_metrics

__all__ = ["compute_metrics", "pair_correctness", "preference_accuracy_metric"]


@functools.cache
def preference_accuracy_metric():
    """The shipped `evaluate` module, loaded once per process from its path (offline)."""
    import evaluate

    from .evaluate_metrics import PREFERENCE_ACCURACY

    return evaluate.load(PREFERENCE_ACCURACY, keep_in_memory=True)


def compute_metrics(eval_pred: EvalPrediction) -> dict[str, float]:
    """Accuracy (ties 0.5) and its bootstrap 95% interval, tie rate, ECE, length bias, reward statistics.

    `eval_pred.predictions` is (N, 2): the rewards of chosen and rejected. `label_ids` is (N,), 1 where the
    annotators called the pair a tie, or (N, 3) with the response lengths in tokens as its last two columns
    (what `RewardTrainer.prediction_step` returns); the text is not at hand here, so the length metrics
    count tokens where `reward-trainer evaluate` counts characters. Every value is a scalar, for loggers.
    """
    rewards = np.asarray(eval_pred.predictions, dtype=np.float64)
    chosen, rejected = rewards[:, 0], rewards[:, 1]
    labels = None if eval_pred.label_ids is None else np.asarray(eval_pred.label_ids, dtype=np.float64)
    human_tie, lengths = labels, (None, None)
    if labels is not None and labels.ndim == 2:  # (N, 1): tie; (N, 3): tie and the two response lengths
        human_tie = labels[:, 0]
        if labels.shape[1] == 3:
            lengths = (labels[:, 1], labels[:, 2])
    metrics = preference_metrics(chosen, rejected, *lengths, human_tie=human_tie)
    ties = np.zeros_like(chosen) if human_tie is None else human_tie
    metrics["accuracy"] = preference_accuracy_metric().compute(
        chosen_rewards=chosen, rejected_rewards=rejected, ties=ties
    )["accuracy"]
    metrics["accuracy_ci95_low"], metrics["accuracy_ci95_high"] = metrics.pop("accuracy_ci95")
    metrics["num_pairs"] = metrics.pop("pairs")  # pairs scored: under DDP, shows none were duplicated or dropped
    return {key: float(value) for key, value in metrics.items()}
