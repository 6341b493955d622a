"""The evaluation report: accuracy with a confidence interval, calibration, length bias, subsets, rankings.

    reward-trainer evaluate --model_name_or_path outputs/quickstart --dataset_name pairs.jsonl --output_dir OUT

Every metric is a pure function of numpy arrays, so that the same code serves `compute_metrics` during
training (lengths there are in tokens) and the `evaluate` command (lengths in characters). Definitions:

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
- kendall_tau / spearman_rho (ranked data, K > 2 responses per prompt): tau-b and rho between the model's
  rewards and the human scores of one prompt's responses, averaged over prompts.
"""

import json
import math
import os
from collections.abc import Sequence

import numpy as np

N_BINS = 10


def pair_correctness(chosen: np.ndarray, rejected: np.ndarray, human_tie: np.ndarray | None = None) -> np.ndarray:
    """Per pair: 1 if r_c > r_r, 0 if r_c < r_r, 0.5 for a model tie or a pair the annotators called a tie."""
    chosen, rejected = np.asarray(chosen, dtype=np.float64), np.asarray(rejected, dtype=np.float64)
    correct = np.where(chosen > rejected, 1.0, np.where(chosen < rejected, 0.0, 0.5))
    if human_tie is not None:
        correct = np.where(np.asarray(human_tie) > 0, 0.5, correct)
    return correct


def bootstrap_ci(values: np.ndarray, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> list[float]:
    """Percentile bootstrap interval of the mean of `values`.

    Resampling N values with replacement only changes how many times each distinct value is drawn, so the
    draws are taken as multinomial counts over the distinct values: exact, and O(n_resamples) memory.
    """
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return [math.nan, math.nan]
    distinct, counts = np.unique(values, return_counts=True)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(len(values), counts / len(values), size=n_resamples)  # (n_resamples, n_distinct)
    means = draws @ distinct / len(values)
    alpha = (1 - confidence) / 2
    return [float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))]


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


def rank(x: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties get the average of the ranks they span."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    ranks = np.empty(len(x))
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2  # mean of ranks start+1 .. end
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho: the Pearson correlation of the ranks; NaN when either side is constant."""
    rx, ry = rank(x), rank(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = math.sqrt((rx**2).sum() * (ry**2).sum())
    return float((rx * ry).sum() / denominator) if denominator > 0 else math.nan


def kendall_tau(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's tau-b (adjusted for ties); NaN when either side is constant. O(K^2), for one prompt's K responses."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    i, j = np.triu_indices(len(x), k=1)
    dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    denominator = math.sqrt(np.count_nonzero(dx) * np.count_nonzero(dy))
    return float((dx * dy).sum() / denominator) if denominator > 0 else math.nan


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


# ---------------------------------------------------------------------------------------------------------
# The written report: eval_report.json, eval_report.md and two PNG plots.

REPORT_JSON, REPORT_MD = "eval_report.json", "eval_report.md"
RELIABILITY_PNG, HISTOGRAM_PNG = "reliability_diagram.png", "reward_histograms.png"


def write_report(
    report: dict, chosen: np.ndarray, rejected: np.ndarray, output_dir: str, human_tie: np.ndarray | None = None
) -> None:
    """Writes the JSON (NaN becomes null), the Markdown summary and the two plots."""
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, REPORT_JSON), "w", encoding="utf-8") as f:
        json.dump(_nan_to_none(report), f, indent=2)
    with open(os.path.join(output_dir, REPORT_MD), "w", encoding="utf-8") as f:
        f.write(report_markdown(report))
    plot_reliability_diagram(chosen, rejected, human_tie, os.path.join(output_dir, RELIABILITY_PNG))
    plot_reward_histograms(chosen, rejected, os.path.join(output_dir, HISTOGRAM_PNG))


def _nan_to_none(value):
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_nan_to_none(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _fmt(value) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def report_markdown(report: dict) -> str:
    low, high = report["accuracy_ci95"]
    rows = [
        ("pairs", report["pairs"]),
        ("accuracy (ties 0.5)", f"{_fmt(report['accuracy'])} (95% CI {_fmt(low)} - {_fmt(high)})"),
        ("tie rate (model scores equal)", report["tie_rate"]),
        ("human tie rate", report["human_tie_rate"]),
        ("ECE of sigmoid(r_c - r_r), 10 bins", report["ece"]),
        ("longer-wins baseline accuracy (characters)", report.get("longer_wins_accuracy", math.nan)),
        ("Spearman(reward, response length)", report.get("reward_length_spearman", math.nan)),
        (
            f"accuracy where chosen is shorter ({report.get('chosen_shorter_pairs', 0)} pairs)",
            report.get("accuracy_chosen_shorter", math.nan),
        ),
        ("mean margin r_c - r_r", report["margin"]),
    ]
    if "input_rows" in report:
        rows.insert(0, ("rows read (skipped as malformed)", f"{report['input_rows']} ({report['skipped']})"))
    if "kendall_tau" in report:
        rows += [
            (f"Kendall tau, mean over {report['ranked_prompts']} ranked prompts", report["kendall_tau"]),
            ("Spearman rho, mean over ranked prompts", report["spearman_rho"]),
        ]
    lines = [
        f"# Reward model evaluation: {report.get('model', '')}",
        "",
        f"Data: {report.get('dataset', '')}",
        "",
        "| metric | value |",
        "| --- | --- |",
        *[f"| {name} | {_fmt(value)} |" for name, value in rows],
    ]
    if report.get("per_subset"):
        lines += ["", "## Per subset", "", "| subset | pairs | accuracy | 95% CI |", "| --- | --- | --- | --- |"]
        for name, sub in report["per_subset"].items():
            low, high = sub["accuracy_ci95"]
            lines.append(f"| {name} | {sub['pairs']} | {_fmt(sub['accuracy'])} | {_fmt(low)} - {_fmt(high)} |")
    lines += ["", f"![reliability diagram]({RELIABILITY_PNG})", "", f"![reward histograms]({HISTOGRAM_PNG})", ""]
    return "\n".join(lines)


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("the evaluation plots need matplotlib: pip install 'reward-trainer[report]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_reliability_diagram(chosen, rejected, human_tie, path: str) -> None:
    plt = _pyplot()
    bins = reliability_bins(chosen, rejected, human_tie)
    count = bins["count"]
    centers = (np.arange(N_BINS) + 0.5) / N_BINS
    with np.errstate(invalid="ignore", divide="ignore"):
        frequency = bins["outcome_sum"] / count
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    ax.bar(centers[count > 0], frequency[count > 0], width=1 / N_BINS, edgecolor="black", alpha=0.7, label="observed")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="sigmoid(r_a - r_b)", ylabel="fraction where a is preferred")
    ax.set_title(f"Reliability diagram (ECE {expected_calibration_error(chosen, rejected, human_tie):.3f})")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_reward_histograms(chosen, rejected, path: str) -> None:
    plt = _pyplot()
    edges = np.histogram_bin_edges(np.concatenate([chosen, rejected]), bins=40)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(chosen, bins=edges, alpha=0.6, label="chosen")
    ax.hist(rejected, bins=edges, alpha=0.6, label="rejected")
    ax.set(xlabel="reward", ylabel="responses", title="Rewards of chosen and rejected responses")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------
# The `evaluate` command: read the data as training does, score it, report.


def read_texts(names: Sequence[str], args, tokenizer=None) -> tuple[dict[str, list], list[dict], dict]:
    """The pairs and rankings of each source, read, normalized and checked by `data.read_rows` as for training.

    Returns pair columns `prompt`, `chosen`, `rejected`, `tie` and `subset`; rankings (rows of more than two
    responses) as `{"prompt", "responses", "scores"}`; and the row accounting (`input_rows`, `skipped`,
    `skipped_rows`). The whole `args.split` of each source is read (its first `args.max_samples` rows, if set);
    the subset of a row is its `source`/`subset` field, else, with several sources, its source.
    """
    from .config import DataArguments
    from .data import read_rows, subset_names

    pairs = {"prompt": [], "chosen": [], "rejected": [], "tie": [], "subset": []}
    rankings, accounting = [], {"input_rows": 0, "skipped": 0, "skipped_rows": []}
    subsets = subset_names(list(names))
    for name in names:
        data_args = DataArguments(dataset_name=name, train_split=args.split, eval_split="", on_bad_row=args.on_bad_row)
        _, splits = read_rows(name, data_args, tokenizer, args.seed, accounting, subset=subsets[name])
        rows = splits["train"]
        if args.max_samples:
            rows = rows.select(range(min(len(rows), args.max_samples)))
        for row in rows.select_columns(["prompt", "responses", "scores", "subset"]):
            responses, scores = row["responses"], row["scores"]
            if len(responses) > 2:
                rankings.append({"prompt": row["prompt"], "responses": responses, "scores": scores})
                continue
            better = 0 if scores[0] >= scores[1] else 1
            pairs["prompt"].append(row["prompt"])
            pairs["chosen"].append(responses[better])
            pairs["rejected"].append(responses[1 - better])
            pairs["tie"].append(float(scores[0] == scores[1]))
            pairs["subset"].append(row["subset"])
    return pairs, rankings, accounting


def score_texts(scorer, texts: list[str], progress: bool = True) -> np.ndarray:
    """Rewards of `texts` (prompt + response each) with a `RewardScorer`, and a progress bar over its batches."""
    from tqdm.auto import tqdm

    ids = scorer.tokenizer(texts, truncation=bool(scorer.max_length), max_length=scorer.max_length)["input_ids"]
    rewards = np.empty(len(ids))
    for batch in tqdm(scorer.batches(ids), desc="Scoring", unit="batch", disable=not progress):
        rewards[batch] = scorer.forward([ids[i] for i in batch])
    return rewards


def evaluate_model(args) -> dict:
    """The `evaluate` command: scores every pair (and ranking) of `args.dataset_name` and writes the report."""
    import torch

    from .config import ModelArguments
    from .data import DataError
    from .modeling import load_reward_model
    from .scorer import RewardScorer

    _pyplot()  # fail before scoring, not after, when matplotlib is missing
    model, tokenizer = load_reward_model(ModelArguments(model_name_or_path=args.model_name_or_path))
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    scorer = RewardScorer(model, tokenizer, max_batch_tokens=args.max_batch_tokens, max_length=args.max_length)
    names = args.dataset_name
    pairs, rankings, accounting = read_texts(names, args, tokenizer)
    if not pairs["chosen"] and not rankings:
        raise DataError(f"{', '.join(names)}: no rows to evaluate")

    n = len(pairs["chosen"])
    texts = [p + c for p, c in zip(pairs["prompt"], pairs["chosen"])] + [
        p + r for p, r in zip(pairs["prompt"], pairs["rejected"])
    ]
    texts += [r["prompt"] + response for r in rankings for response in r["responses"]]
    rewards = score_texts(scorer, texts, progress=not args.disable_tqdm)
    chosen, rejected = rewards[:n], rewards[n : 2 * n]
    human_tie = np.asarray(pairs["tie"])

    report = {"model": args.model_name_or_path, "dataset": ", ".join(names), **accounting}
    if n:
        report |= preference_metrics(
            chosen,
            rejected,
            chosen_length=[len(c) for c in pairs["chosen"]],
            rejected_length=[len(r) for r in pairs["rejected"]],
            human_tie=human_tie,
            seed=args.seed,
        )
        correct = pair_correctness(chosen, rejected, human_tie)
        if any(pairs["subset"]):
            report["per_subset"] = per_subset_accuracy(correct, [s or "(none)" for s in pairs["subset"]], args.seed)
    if rankings:
        offsets = np.cumsum([2 * n] + [len(r["responses"]) for r in rankings])
        model_scores = [rewards[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
        report |= ranking_correlation(model_scores, [np.asarray(r["scores"], dtype=float) for r in rankings])
        if not n:  # a ranked-only file: its pair metrics are those of every pair within each ranking
            chosen, rejected = _ranked_pairs(model_scores, [r["scores"] for r in rankings])
            report |= preference_metrics(chosen, rejected, seed=args.seed)
            human_tie = None
    write_report(report, chosen, rejected, args.output_dir, human_tie)
    return report


def _ranked_pairs(model_scores, human_scores) -> tuple[np.ndarray, np.ndarray]:
    """(reward of the better, reward of the worse) for every pair of differently scored responses of a prompt."""
    better, worse = [], []
    for rewards, scores in zip(model_scores, human_scores):
        for a in range(len(scores)):
            for b in range(len(scores)):
                if scores[a] > scores[b]:
                    better.append(rewards[a])
                    worse.append(rewards[b])
    return np.asarray(better), np.asarray(worse)
