"""Every preference metric, as pure functions of numpy arrays, and `compute_metrics`, their `Trainer` adapter.

The evaluation report: accuracy with a confidence interval, calibration, length bias, subsets, rankings.

    reward-trainer evaluate --model_name_or_path outputs/quickstart --dataset_name pairs.jsonl --output_dir OUT

The same code serves `compute_metrics` during training (lengths there are in tokens) and the `evaluate` command
(lengths in characters). Definitions:

- accuracy: mean over pairs of 1 if r_c > r_r, 0 if r_c < r_r, 0.5 if equal or if annotators called a tie.
- accuracy_ci95: percentile bootstrap over pairs (resampling pairs with replacement).
- tie_rate: fraction of pairs the model scores exactly equal.
- ece: expected calibration error of p = sigmoid(r_c - r_r) over 10 equal-width bins of [0, 1]. Each pair
  counts in both orientations, (p, y) and (1 - p, 1 - y) with y = 1 (chosen preferred) or 0.5 (a tie), so
  that the outcome is not always 1: ECE = sum_b |sum_b(y) - sum_b(p)| / (2N), the reliability diagram is
  symmetric about (0.5, 0.5), and a model that says 0.9 should be right 90% of the time.
- longer_wins_accuracy: the baseline that prefers the longer response (equal lengths count 0.5).
- reward_length_spearman: Spearman's rho between reward and response length, chosen and rejected pooled.
- accuracy_chosen_shorter: accuracy on the pairs whose chosen response is strictly shorter.
- accuracy_non_tie: accuracy over the pairs the annotators did not call a tie (when some are).
- tie_log_likelihood / win_log_likelihood (a model trained with ties, `--loss bt_ties`): mean log-probability,
  under Rao-Kupper with the model's theta, of the annotated ties / of the chosen response winning the other pairs.
- rmse / rating_pearson / rating_spearman per attribute (ratings): predicted against annotated ratings of the
  responses of the pairs (a response in several pairs counts in each, a single response once), missing ratings
  left out.
- kendall_tau / spearman_rho (ranked data, K > 2 responses per prompt): tau-b and rho between the model's
  rewards and the human scores of one prompt's responses, averaged over prompts.
"""

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import special, stats
from transformers import EvalPrediction

N_BINS = 10
# The named columns `RewardTrainer.prediction_step` returns and `compute_metrics` reads, (N,) each or (N, A) with A
# rated attributes. Predictions: the rewards of chosen and rejected, the tie parameter alpha = log(theta) of a loss
# with ties, each attribute's rewards. Labels: the annotators' tie, the response lengths in tokens after the shared
# prompt, the prompt (`group`), the subset id, each response's place in its row (equal places: a single response,
# paired with itself), each response's ratings (NaN: missing).
PREDICTION_COLUMNS = ("chosen", "rejected", "tie_alpha", "chosen_attributes", "rejected_attributes")
LABEL_COLUMNS = (
    "tie", "chosen_length", "rejected_length", "group", "subset", "chosen_response", "rejected_response",
    "chosen_ratings", "rejected_ratings",
)  # fmt: skip


def pair_correctness(chosen: np.ndarray, rejected: np.ndarray, human_tie: np.ndarray | None = None) -> np.ndarray:
    """Per pair: 1 if r_c > r_r, 0 if r_c < r_r, 0.5 for a model tie or a pair the annotators called a tie."""
    chosen, rejected = np.asarray(chosen, dtype=np.float64), np.asarray(rejected, dtype=np.float64)
    correct = np.where(chosen > rejected, 1.0, np.where(chosen < rejected, 0.0, 0.5))
    if human_tie is not None:
        correct = np.where(np.asarray(human_tie) > 0, 0.5, correct)
    return correct


def bootstrap_ci(values: np.ndarray, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> list[float]:
    """Percentile bootstrap interval of the mean of `values` (`scipy.stats.bootstrap`, resampled in batches so that
    memory stays at 100 resamples of N values)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return [math.nan, math.nan]
    if len(values) == 1:  # every resample is that one value
        return [float(values[0])] * 2
    result = stats.bootstrap(
        (values,),
        np.mean,
        confidence_level=confidence,
        n_resamples=n_resamples,
        method="percentile",
        rng=np.random.default_rng(seed),
        batch=100,
    )
    return [float(result.confidence_interval.low), float(result.confidence_interval.high)]


def reliability_bins(
    chosen: np.ndarray, rejected: np.ndarray, human_tie: np.ndarray | None = None, n_bins: int = N_BINS
) -> dict[str, np.ndarray]:
    """Per bin of p = sigmoid(r_c - r_r), both orientations of each pair: count, sum of p, sum of outcomes."""
    gap = np.asarray(chosen, dtype=np.float64) - np.asarray(rejected, dtype=np.float64)
    p = 1 / (1 + np.exp(-gap))
    y = np.ones_like(p) if human_tie is None else np.where(np.asarray(human_tie) > 0, 0.5, 1.0)
    probs, outcomes = np.concatenate([p, 1 - p]), np.concatenate([y, 1 - y])  # (2N,)
    bins = np.minimum((probs * n_bins).astype(int), n_bins - 1)
    return {
        "count": np.bincount(bins, minlength=n_bins),
        "prob_sum": np.bincount(bins, weights=probs, minlength=n_bins),
        "outcome_sum": np.bincount(bins, weights=outcomes, minlength=n_bins),
    }


def expected_calibration_error(
    chosen: np.ndarray, rejected: np.ndarray, human_tie: np.ndarray | None = None, n_bins: int = N_BINS
) -> float:
    """sum over bins of (n_b / 2N) * |mean outcome - mean p| (see the module docstring)."""
    bins = reliability_bins(chosen, rejected, human_tie, n_bins)
    total = bins["count"].sum()
    return float(np.abs(bins["outcome_sum"] - bins["prob_sum"]).sum() / total) if total else math.nan


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho (`scipy.stats.spearmanr`); NaN when either side is constant."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return float(stats.spearmanr(x, y).statistic)


def kendall_tau(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's tau-b, adjusted for ties (`scipy.stats.kendalltau`); NaN when either side is constant."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return float(stats.kendalltau(x, y).statistic)


def ranking_correlation(model_scores: Sequence[np.ndarray], human_scores: Sequence[np.ndarray]) -> dict[str, float]:
    """Kendall's tau-b and Spearman's rho per prompt, averaged over the prompts where both are defined."""
    taus = [kendall_tau(m, h) for m, h in zip(model_scores, human_scores)]
    rhos = [spearman(m, h) for m, h in zip(model_scores, human_scores)]
    return {
        "kendall_tau": _nanmean(taus),
        "spearman_rho": _nanmean(rhos),
        "ranked_prompts": len(taus),
    }


def rankings_from_pairs(
    chosen: np.ndarray,
    rejected: np.ndarray,
    group: np.ndarray,
    chosen_response: np.ndarray,
    rejected_response: np.ndarray,
    min_responses: int = 3,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each prompt's responses rebuilt from its pairs, for `ranking_correlation`: (model scores, human scores).

    A response is identified by its prompt (`group`) and its place in that prompt's row; its model score is
    its reward (the mean over its pairs, which differ only by float noise from padding), its human score the
    number of responses it was preferred to. That count orders the responses exactly as the annotators'
    scores do (a higher score beats every response the lower one beats, and that one too), so Kendall's tau-b
    and Spearman's rho, which depend on the order only, equal those of the scores. Prompts with fewer than
    `min_responses` responses are left out (two responses are a pair, not a ranking).
    """
    total, count, wins = {}, {}, {}
    for g, c, r, reward_c, reward_r in zip(group, chosen_response, rejected_response, chosen, rejected):
        for response, reward, won in (((g, c), reward_c, 1), ((g, r), reward_r, 0)):
            total[response] = total.get(response, 0.0) + reward
            count[response] = count.get(response, 0) + 1
            wins[response] = wins.get(response, 0) + won
    responses: dict = {}
    for g, place in sorted(total):
        responses.setdefault(g, []).append((g, place))
    model_scores, human_scores = [], []
    for members in responses.values():
        if len(members) >= min_responses:
            model_scores.append(np.array([total[m] / count[m] for m in members]))
            human_scores.append(np.array([wins[m] for m in members], dtype=np.float64))
    return model_scores, human_scores


def rao_kupper_log_likelihood(chosen, rejected, human_tie, alpha: float) -> dict[str, float]:
    """Mean log P(tie) over annotated ties and mean log P(chosen wins) over the other pairs, under Rao-Kupper with
    theta = exp(alpha): P(win) = sigmoid(d - alpha), P(tie) = sigmoid(alpha - d) sigmoid(alpha + d) (1 - e^(-2 alpha)),
    d = r_c - r_r (`loss.rao_kupper_log_probs`). NaN where there are no such pairs."""
    d = np.asarray(chosen, dtype=np.float64) - np.asarray(rejected, dtype=np.float64)
    tie = np.asarray(human_tie) > 0

    def log_sigmoid(x):
        return -np.logaddexp(0.0, -x)

    win = log_sigmoid(d - alpha)
    tied = log_sigmoid(alpha - d) + log_sigmoid(alpha + d) + np.log(-np.expm1(-2 * alpha))
    return {
        "tie_log_likelihood": float(tied[tie].mean()) if tie.any() else math.nan,
        "win_log_likelihood": float(win[~tie].mean()) if (~tie).any() else math.nan,
    }


def rating_metrics(predicted: np.ndarray, ratings: np.ndarray) -> dict[str, float]:
    """RMSE, Pearson's r and Spearman's rho of predicted against annotated ratings, NaN (missing) ratings left out."""
    known = ~np.isnan(ratings)
    predicted, ratings = predicted[known], ratings[known]
    if len(ratings) == 0:
        return {"rmse": math.nan, "rating_pearson": math.nan, "rating_spearman": math.nan}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        pearson = float(stats.pearsonr(predicted, ratings).statistic) if len(ratings) > 1 else math.nan
    return {
        "rmse": float(np.sqrt(np.mean((predicted - ratings) ** 2))),
        "rating_pearson": pearson,
        "rating_spearman": spearman(predicted, ratings),
    }


def _nanmean(values: Sequence[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def longer_wins_accuracy(chosen_length: np.ndarray, rejected_length: np.ndarray, human_tie=None) -> float:
    """Accuracy of the baseline that prefers the longer response: `pair_correctness` of the lengths."""
    return float(pair_correctness(chosen_length, rejected_length, human_tie).mean())


def preference_metrics(
    chosen: np.ndarray,
    rejected: np.ndarray,
    chosen_length: np.ndarray | None = None,
    rejected_length: np.ndarray | None = None,
    human_tie: np.ndarray | None = None,
    seed: int = 0,
) -> dict[str, float | list[float]]:
    """All pairwise metrics of the module docstring, as a flat dict (the length ones need lengths)."""
    chosen, rejected = np.asarray(chosen, dtype=np.float64), np.asarray(rejected, dtype=np.float64)
    correct = pair_correctness(chosen, rejected, human_tie)
    metrics = {
        "pairs": len(chosen),
        "accuracy": float(correct.mean()),
        "accuracy_ci95": bootstrap_ci(correct, seed=seed),
        "tie_rate": float((chosen == rejected).mean()),
        "human_tie_rate": 0.0 if human_tie is None else float((np.asarray(human_tie) > 0).mean()),
        "ece": expected_calibration_error(chosen, rejected, human_tie),
        "margin": float((chosen - rejected).mean()),
        "chosen_reward_mean": float(chosen.mean()),
        "chosen_reward_std": float(chosen.std()),
        "rejected_reward_mean": float(rejected.mean()),
        "rejected_reward_std": float(rejected.std()),
    }
    if chosen_length is not None and rejected_length is not None:
        chosen_length, rejected_length = np.asarray(chosen_length), np.asarray(rejected_length)
        shorter = chosen_length < rejected_length
        metrics |= {
            "longer_wins_accuracy": longer_wins_accuracy(chosen_length, rejected_length, human_tie),
            "reward_length_spearman": spearman(
                np.concatenate([chosen, rejected]), np.concatenate([chosen_length, rejected_length])
            ),
            "accuracy_chosen_shorter": float(correct[shorter].mean()) if shorter.any() else math.nan,
            "chosen_shorter_pairs": int(shorter.sum()),
        }
    return metrics


def per_subset_accuracy(correct: np.ndarray, subsets: Sequence[str], seed: int = 0) -> dict[str, dict]:
    """`{subset: {"pairs", "accuracy", "accuracy_ci95"}}`, in sorted order of the subset names."""
    subsets = np.asarray([str(s) for s in subsets])
    report = {}
    for name in sorted(set(subsets)):
        values = correct[subsets == name]
        report[name] = {
            "pairs": len(values),
            "accuracy": float(values.mean()),
            "accuracy_ci95": bootstrap_ci(values, seed=seed),
        }
    return report


def compute_metrics(
    eval_pred: EvalPrediction, subsets: Sequence[str] | None = None, attributes: Sequence[str] | None = None
) -> dict[str, float]:
    """Accuracy (ties 0.5) and its bootstrap 95% interval, tie rate, ECE, length bias, reward statistics,
    accuracy per subset, for ranked data Kendall's tau and Spearman's rho averaged over prompts, and for ratings
    each attribute's `rating_metrics`.

    `eval_pred.predictions` and `eval_pred.label_ids` map the names of `PREDICTION_COLUMNS` and `LABEL_COLUMNS` to
    arrays (what `RewardTrainer.prediction_step` returns); `chosen` and `rejected` are required, every other column
    optional, and an unknown name is an error. With `tie_alpha` (a loss with ties) the tie and win log-likelihoods
    are added; with attribute rewards and ratings, `rmse/<name>`, ... per attribute (`attributes` names them, else
    their index). The length metrics count tokens here, where `reward-trainer evaluate` counts characters (the text
    is not at hand). `subsets` names the subset ids (`accuracy/<name>`; else the id is the name). A single response
    (a pair of itself, equal places) counts in the rating metrics once and in no pairwise metric
    (`single_responses` counts them); with no pair at all, the reward statistics are those of the single responses.
    Every value is a scalar.
    """
    if not isinstance(eval_pred.predictions, Mapping) or not isinstance(eval_pred.label_ids, Mapping | None):
        raise TypeError("compute_metrics reads named columns: predictions and label_ids map column names to arrays")
    predictions, labels = dict(eval_pred.predictions), dict(eval_pred.label_ids or {})
    for names, given, what in ((PREDICTION_COLUMNS, predictions, "prediction"), (LABEL_COLUMNS, labels, "label")):
        unknown = set(given) - set(names)
        if unknown:
            raise ValueError(f"unknown {what} columns {sorted(unknown)}: known are {', '.join(names)}")
    columns = {key: np.asarray(value, dtype=np.float64) for key, value in (predictions | labels).items()}
    single = np.zeros(len(columns["chosen"]), dtype=bool)
    if "chosen_response" in columns and "rejected_response" in columns:
        single = columns["chosen_response"] == columns["rejected_response"]
    pair = {key: value[~single] for key, value in columns.items()}  # the pairwise metrics' rows
    chosen, rejected, human_tie = pair["chosen"], pair["rejected"], pair.get("tie")

    metrics = {"single_responses": int(single.sum())} if single.any() else {}
    if len(chosen):
        lengths = [pair.get("chosen_length"), pair.get("rejected_length")]
        metrics |= preference_metrics(chosen, rejected, *lengths, human_tie=human_tie)
        metrics["accuracy_ci95_low"], metrics["accuracy_ci95_high"] = metrics.pop("accuracy_ci95")
    elif single.any():  # no pair: the reward statistics (which the scorer's normalization reads) of the responses
        rewards = columns["chosen"][single]
        metrics |= {f"{side}_reward_{stat}": float(f(rewards)) for side in ("chosen", "rejected")
                    for stat, f in (("mean", np.mean), ("std", np.std))}  # fmt: skip
    metrics["num_pairs"] = metrics.pop("pairs", 0)  # pairs scored: under DDP, shows none were duplicated or dropped
    if len(chosen) and human_tie is not None and (human_tie > 0).any() and (human_tie <= 0).any():
        metrics["accuracy_non_tie"] = float(pair_correctness(chosen, rejected)[human_tie <= 0].mean())
    if len(chosen) and "tie_alpha" in pair and human_tie is not None:
        alpha = float(pair["tie_alpha"][0])
        metrics |= rao_kupper_log_likelihood(chosen, rejected, human_tie, alpha)
        metrics["tie_theta"] = math.exp(alpha)
    rated = ("chosen_attributes", "rejected_attributes", "chosen_ratings", "rejected_ratings")
    if all(key in columns for key in rated):
        r_c, r_r, y_c, y_r = (columns[key] for key in rated)  # (N, A) each
        for a in range(r_c.shape[1]):
            name = attributes[a] if attributes is not None else str(a)
            # Every response of every pair; a single response once (its pair's other side is itself).
            predicted = np.concatenate([r_c[:, a], r_r[~single, a]])
            per = rating_metrics(predicted, np.concatenate([y_c[:, a], y_r[~single, a]]))
            metrics |= {f"{key}/{name}": value for key, value in per.items()}

    subset = pair.get("subset")
    if len(chosen) and subset is not None:
        names = [_subset_name(int(i), subsets) for i in subset]
        for name, sub in per_subset_accuracy(pair_correctness(chosen, rejected, human_tie), names).items():
            metrics[f"accuracy/{name}"] = sub["accuracy"]
    places = ("group", "chosen_response", "rejected_response")
    if all(key in pair for key in places):
        ranked = human_tie <= 0 if human_tie is not None else np.ones(len(chosen), dtype=bool)  # a tie orders nothing
        model_scores, human_scores = rankings_from_pairs(
            chosen[ranked], rejected[ranked], *(pair[key][ranked].astype(np.int64) for key in places)
        )
        if model_scores:  # some prompt has more than two responses
            metrics |= ranking_correlation(model_scores, human_scores)
    return {key: float(value) for key, value in metrics.items()}


def _subset_name(index: int, subsets: Sequence[str] | None) -> str:
    name = subsets[index] if subsets is not None else str(index)
    return name or "(none)"


def best_of_n_kl(n: int | np.ndarray) -> np.ndarray:
    """KL divergence of best-of-n sampling from the policy (Stiennon et al. 2020): log n - (n - 1) / n."""
    n = np.asarray(n, dtype=float)
    return np.log(n) - (n - 1) / n


def best_of_n_rewards(proxy: np.ndarray, gold: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Expected proxy and gold reward of the sample the proxy picks among n, per prompt: (P,) each.

    `proxy` and `gold` are (P, M) rewards of M >= n samples per prompt. The estimate averages over every n-subset
    of the M samples (unbiased, lower variance than drawing one subset): the sample ranked i-th lowest by the proxy
    is the best of a random n-subset with probability C(i - 1, n - 1) / C(M, n).
    """
    proxy, gold = np.asarray(proxy, dtype=float), np.asarray(gold, dtype=float)
    m = proxy.shape[1]
    if not 1 <= n <= m:
        raise ValueError(f"n must be in [1, {m}], got {n}")
    order = np.argsort(proxy, axis=1, kind="stable")  # (P, M) ascending
    ranks = np.arange(1, m + 1)
    weights = np.exp(
        special.gammaln(np.maximum(ranks, n)) - special.gammaln(n) - special.gammaln(np.maximum(ranks - n + 1, 1))
    ) * (ranks >= n)  # C(i - 1, n - 1), zero below n
    weights /= weights.sum()  # = C(M, n)
    proxy_sorted = np.take_along_axis(proxy, order, axis=1)
    gold_sorted = np.take_along_axis(gold, order, axis=1)
    return proxy_sorted @ weights, gold_sorted @ weights
