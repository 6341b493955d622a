"""The written evaluation report: eval_report.json, eval_report.md and two PNG plots (metrics from `metrics`)."""

import json
import math
import os

import numpy as np

from .metrics import N_BINS, expected_calibration_error, reliability_bins

REPORT_JSON, REPORT_MD = "eval_report.json", "eval_report.md"
RELIABILITY_PNG, HISTOGRAM_PNG = "reliability_diagram.png", "reward_histograms.png"


def write_eval_report(
    report: dict, chosen: np.ndarray, rejected: np.ndarray, output_dir: str, human_tie: np.ndarray | None = None
) -> None:
    """Writes the JSON (NaN becomes null), the Markdown summary and the two plots."""
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, REPORT_JSON), "w", encoding="utf-8") as f:
        json.dump(nan_to_none(report), f, indent=2)
    with open(os.path.join(output_dir, REPORT_MD), "w", encoding="utf-8") as f:
        f.write(report_markdown(report))
    plot_reliability_diagram(chosen, rejected, human_tie, os.path.join(output_dir, RELIABILITY_PNG))
    plot_reward_histograms(chosen, rejected, os.path.join(output_dir, HISTOGRAM_PNG))


def nan_to_none(value):
    """`value` with every NaN float, at any depth of dicts and lists, as None (JSON null)."""
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [nan_to_none(v) for v in value]
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
        rows.insert(1, ("empty responses (kept)", report.get("empty_responses", 0)))
    if "truncated_pairs" in report:
        rows.insert(1, (f"pairs cut to max_length {report['max_length']} tokens", report["truncated_pairs"]))
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


def pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("the evaluation plots need matplotlib: pip install 'reward-trainer[report]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_reliability_diagram(chosen, rejected, human_tie, path: str) -> None:
    plt = pyplot()
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
    plt = pyplot()
    edges = np.histogram_bin_edges(np.concatenate([chosen, rejected]), bins=40)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(chosen, bins=edges, alpha=0.6, label="chosen")
    ax.hist(rejected, bins=edges, alpha=0.6, label="rejected")
    ax.set(xlabel="reward", ylabel="responses", title="Rewards of chosen and rejected responses")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
