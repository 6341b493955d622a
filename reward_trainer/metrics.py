"""`compute_metrics` for `RewardTrainer`: the evaluation report's metrics at each evaluation during training."""

import functools
from collections.abc import Sequence

import numpy as np
from transformers import EvalPrediction

from .collator import LABEL_COLUMNS
from .evaluation import (
    pair_correctness,
    per_subset_accuracy,
    preference_metrics,
    ranking_correlation,
    rankings_from_pairs,
)

__all__ = ["compute_metrics", "pair_correctness", "preference_accuracy_metric"]


@functools.cache
def preference_accuracy_metric():
    """The shipped `evaluate` module, loaded once per process from its path (offline)."""
    import evaluate

    from .evaluate_metrics import PREFERENCE_ACCURACY

    return evaluate.load(PREFERENCE_ACCURACY, keep_in_memory=True)


def compute_metrics(eval_pred: EvalPrediction, subsets: Sequence[str] | None = None) -> dict[str, float]:
    """Accuracy (ties 0.5) and its bootstrap 95% interval, tie rate, ECE, length bias, reward statistics,
    accuracy per subset and, for ranked data, Kendall's tau and Spearman's rho averaged over prompts.

    `eval_pred.predictions` is (N, 2): the rewards of chosen and rejected. `label_ids` is (N,), 1 where the
    annotators called the pair a tie, or (N, k) with the first k of `collator.LABEL_COLUMNS` (what
    `RewardTrainer.prediction_step` returns, all of them; -1 where the data has none): tie, the response
    lengths in tokens (the text is not at hand here, so the length metrics count tokens where `reward-trainer
    evaluate` counts characters), the prompt (`group`), the subset id, and each response's place in its row.
    `subsets` names the subset ids (`accuracy/<name>`; else the id is the name). Every value is a scalar.
    """
    rewards = np.asarray(eval_pred.predictions, dtype=np.float64)
    chosen, rejected = rewards[:, 0], rewards[:, 1]
    labels = None if eval_pred.label_ids is None else np.asarray(eval_pred.label_ids, dtype=np.float64)
    if labels is not None and labels.ndim == 1:
        labels = labels[:, None]
    columns = {} if labels is None else dict(zip(LABEL_COLUMNS, labels.T))
    human_tie = columns.get("tie")
    lengths = [columns.get(key) for key in ("chosen_length", "rejected_length")]
    if any(length is None or (length < 0).any() for length in lengths):
        lengths = [None, None]
    metrics = preference_metrics(chosen, rejected, *lengths, human_tie=human_tie)
    ties = np.zeros_like(chosen) if human_tie is None else human_tie
    metrics["accuracy"] = preference_accuracy_metric().compute(
        chosen_rewards=chosen, rejected_rewards=rejected, ties=ties
    )["accuracy"]
    metrics["accuracy_ci95_low"], metrics["accuracy_ci95_high"] = metrics.pop("accuracy_ci95")
    metrics["num_pairs"] = metrics.pop("pairs")  # pairs scored: under DDP, shows none were duplicated or dropped

    subset = columns.get("subset")
    if subset is not None and (subset >= 0).any():
        names = [_subset_name(int(i), subsets) for i in subset]
        for name, sub in per_subset_accuracy(pair_correctness(chosen, rejected, human_tie), names).items():
            metrics[f"accuracy/{name}"] = sub["accuracy"]
    if all(key in columns for key in ("group", "chosen_response", "rejected_response")):
        known = (columns["group"] >= 0) & (columns["chosen_response"] >= 0) & (columns["rejected_response"] >= 0)
        model_scores, human_scores = rankings_from_pairs(
            chosen[known],
            rejected[known],
            *(columns[key][known].astype(np.int64) for key in ("group", "chosen_response", "rejected_response")),
        )
        if model_scores:  # some prompt has more than two responses
            metrics |= ranking_correlation(model_scores, human_scores)
    return {key: float(value) for key, value in metrics.items()}


def _subset_name(index: int, subsets: Sequence[str] | None) -> str:
    if index < 0:
        return "(none)"
    name = subsets[index] if subsets is not None else str(index)
    return name or "(none)"
