"""The evaluation report: each figure checked against a value derived by hand or computed independently here."""

import gzip
import json
import math

import numpy as np
import pytest
import torch
from scipy import stats
from transformers import EvalPrediction

from reward_trainer.data import split_implicit_prompt as split_prompt
from reward_trainer.metrics import (
    bootstrap_ci,
    compute_metrics,
    expected_calibration_error,
    kendall_tau,
    per_subset_accuracy,
    preference_metrics,
    ranking_correlation,
    reliability_bins,
    spearman,
)


def logit(p):
    return math.log(p / (1 - p))


def test_ece_on_eight_handmade_pairs():
    """p = sigmoid(r_c - r_r) = 0.95 (x4), 0.75 (x2), 0.25, 0.55; each pair counts as (p, 1) and (1 - p, 0).

    bin [0.9, 1): four points p=0.95, y=1       |4 - 3.8|           = 0.2
    bin [0.0, .1): four points p=0.05, y=0      |0 - 0.2|           = 0.2
    bin [0.7, .8): 0.75 (y=1) x2, 0.75 (y=0)    |2 - 2.25|          = 0.25
    bin [0.2, .3): 0.25 (y=0) x2, 0.25 (y=1)    |1 - 0.75|          = 0.25
    bin [0.5, .6): 0.55 (y=1)                   |1 - 0.55|          = 0.45
    bin [0.4, .5): 0.45 (y=0)                   |0 - 0.45|          = 0.45
    ECE = (0.2 + 0.2 + 0.25 + 0.25 + 0.45 + 0.45) / 16 points = 0.1125
    """
    gaps = [logit(p) for p in [0.95, 0.95, 0.95, 0.95, 0.75, 0.75, 0.25, 0.55]]
    rejected = np.linspace(-1, 1, 8)  # only the gap matters
    chosen = rejected + gaps
    assert expected_calibration_error(chosen, rejected) == pytest.approx(0.1125)
    bins = reliability_bins(chosen, rejected)
    assert bins["count"].tolist() == [4, 0, 3, 0, 1, 1, 0, 3, 0, 4]
    assert bins["outcome_sum"][9] == 4 and bins["outcome_sum"][7] == 2


def test_ece_counts_a_human_tie_as_half():
    """One tie with p = 0.9: points (0.9, 0.5) and (0.1, 0.5): (|0.5 - 0.9| + |0.5 - 0.1|) / 2 = 0.4."""
    assert expected_calibration_error([logit(0.9)], [0.0], human_tie=[1]) == pytest.approx(0.4)
    assert expected_calibration_error([logit(0.9)], [0.0]) == pytest.approx(0.1)  # (0.1 + 0.1) / 2


def test_bootstrap_interval_matches_scipy_and_the_normal_approximation():
    rng = np.random.default_rng(1)
    correct = rng.choice([0.0, 0.5, 1.0], size=2000, p=[0.25, 0.05, 0.7])
    low, high = bootstrap_ci(correct, seed=3)
    assert low < correct.mean() < high
    half_width = 1.96 * correct.std() / math.sqrt(len(correct))
    assert low == pytest.approx(correct.mean() - half_width, abs=0.004)
    assert high == pytest.approx(correct.mean() + half_width, abs=0.004)
    reference = stats.bootstrap((correct,), np.mean, method="percentile", n_resamples=2000, random_state=0)
    assert low == pytest.approx(reference.confidence_interval.low, abs=0.004)
    assert high == pytest.approx(reference.confidence_interval.high, abs=0.004)
    assert bootstrap_ci(correct, seed=3) == [low, high]  # deterministic under a seed
    assert bootstrap_ci(np.ones(10)) == [1.0, 1.0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rank_correlations_match_scipy(seed):
    rng = np.random.default_rng(seed)
    x, y = rng.integers(0, 4, size=12).astype(float), rng.integers(0, 5, size=12).astype(float)  # many ties
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)
    assert kendall_tau(x, y) == pytest.approx(stats.kendalltau(x, y).statistic)  # tau-b
    assert math.isnan(spearman(x, np.ones(12))) and math.isnan(kendall_tau(x, np.ones(12)))


def test_ranking_correlation_averages_over_prompts():
    model = [np.array([3.0, 1.0, 2.0]), np.array([0.1, 0.2, 0.3, 0.4]), np.array([1.0, 2.0])]
    human = [np.array([2, 0, 1]), np.array([4, 3, 1, 2]), np.array([1, 1])]  # the last has no defined tau
    result = ranking_correlation(model, human)
    expected_tau = (1.0 + stats.kendalltau(model[1], human[1]).statistic) / 2
    expected_rho = (1.0 + stats.spearmanr(model[1], human[1]).statistic) / 2
    assert result["kendall_tau"] == pytest.approx(expected_tau)
    assert result["spearman_rho"] == pytest.approx(expected_rho)
    assert result["ranked_prompts"] == 3


def test_length_bias_metrics_on_handmade_pairs():
    chosen = np.array([2.0, 1.0, 0.0, 5.0, 1.0, 3.0])
    rejected = np.array([1.0, 2.0, 0.0, 1.0, 0.0, 4.0])
    chosen_len = np.array([10, 3, 7, 4, 8, 8])
    rejected_len = np.array([5, 9, 7, 6, 2, 8])
    tie = np.array([0, 0, 0, 0, 1, 0])
    m = preference_metrics(chosen, rejected, chosen_len, rejected_len, human_tie=tie)
    # Model per pair: 1, 0, 0.5 (equal), 1, 0.5 (human tie), 0.
    assert m["accuracy"] == pytest.approx(3 / 6)
    assert m["tie_rate"] == pytest.approx(1 / 6) and m["human_tie_rate"] == pytest.approx(1 / 6)
    # Longer wins: 1, 0, 0.5 (equal), 0, 0.5 (human tie), 0.5 (equal).
    assert m["longer_wins_accuracy"] == pytest.approx(2.5 / 6)
    # Chosen strictly shorter in pairs 2 and 4: model 0 and 1.
    assert m["chosen_shorter_pairs"] == 2 and m["accuracy_chosen_shorter"] == pytest.approx(0.5)
    rewards, lengths = np.r_[chosen, rejected], np.r_[chosen_len, rejected_len]
    assert m["reward_length_spearman"] == pytest.approx(stats.spearmanr(rewards, lengths).statistic)
    assert m["margin"] == pytest.approx(np.mean(chosen - rejected))


def test_per_subset_accuracy():
    correct = np.array([1.0, 0.0, 1.0, 0.5, 1.0])
    report = per_subset_accuracy(correct, ["b", "a", "b", "a", "b"])
    assert list(report) == ["a", "b"]
    assert report["a"]["pairs"] == 2 and report["a"]["accuracy"] == pytest.approx(0.25)
    assert report["b"]["accuracy"] == 1.0 and report["b"]["accuracy_ci95"] == [1.0, 1.0]


def test_split_prompt_of_hh_conversations():
    prompt = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant:"
    assert split_prompt(prompt + " Like this.", prompt + " No.") == (prompt, " Like this.", " No.")
    # Conversations that differ before the final turn: the prompt stops at the last shared assistant turn.
    a, b = "\n\nHuman: x\n\nAssistant: yes\n\nHuman: ok\n\nAssistant: 1", "\n\nHuman: x\n\nAssistant: no"
    assert split_prompt(a, b) == ("\n\nHuman: x\n\nAssistant:", a[len("\n\nHuman: x\n\nAssistant:") :], " no")
    assert split_prompt(" red", " rose") == ("", " red", " rose")  # plain text: no prompt


def test_evaluate_module_loads_offline_by_path(monkeypatch):
    import evaluate

    from reward_trainer.evaluate_metrics import PREFERENCE_ACCURACY

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    metric = evaluate.load(PREFERENCE_ACCURACY, keep_in_memory=True)
    result = metric.compute(
        chosen_rewards=[2.0, 0.0, 1.0, 3.0], rejected_rewards=[1.0, 1.0, 1.0, 0.0], ties=[0, 0, 0, 1]
    )
    assert result == {"accuracy": pytest.approx((1 + 0 + 0.5 + 0.5) / 4)}


def test_compute_metrics_reports_the_same_figures_during_training():
    rewards = np.array([[2.0, 1.0], [0.0, 1.0], [1.0, 1.0], [3.0, 0.0]])
    labels = np.array([[0, 4, 2], [0, 1, 6], [0, 3, 3], [1, 5, 5]], dtype=float)  # tie, chosen/rejected tokens
    columns = {"chosen": rewards[:, 0], "rejected": rewards[:, 1]}
    named = dict(zip(("tie", "chosen_length", "rejected_length"), labels.T))
    m = compute_metrics(EvalPrediction(predictions=columns, label_ids=named))
    assert m["accuracy"] == pytest.approx((1 + 0 + 0.5 + 0.5) / 4)
    assert m["longer_wins_accuracy"] == pytest.approx((1 + 0 + 0.5 + 0.5) / 4)
    assert m["accuracy_chosen_shorter"] == 0.0
    assert m["ece"] == pytest.approx(expected_calibration_error(rewards[:, 0], rewards[:, 1], labels[:, 0]))
    assert m["accuracy_ci95_low"] <= m["accuracy"] <= m["accuracy_ci95_high"]
    assert all(isinstance(v, float) for v in m.values())


# ---------------------------------------------------------------------------------------------------------
# The `evaluate` command, end to end, on a tiny model scored independently with plain transformers.


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer):
    from reward_trainer.quickstart import build_tiny_gpt2

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny")
    build_tiny_gpt2(tiny_tokenizer).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def plain_rewards(path, texts):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model, tok = AutoModelForSequenceClassification.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    with torch.no_grad():
        return np.array([model(**tok(t, return_tensors="pt")).logits[0, 0].item() for t in texts])


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_evaluate_command_writes_the_report(tmp_path, tiny_model_dir):
    from reward_trainer.cli import main
    from reward_trainer.quickstart import make_pairs

    pairs = make_pairs(24, seed=5)
    for i, pair in enumerate(pairs):
        pair["source"] = "odd" if i % 2 else "even"
        pair["chosen"] += " more" * (i % 3)  # varied lengths
    pairs[0]["tie"] = True
    ranked = [
        {"prompt": p["prompt"], "responses": [p["chosen"], p["rejected"], " sky sea"], "scores": [2, 0, 1]}
        for p in make_pairs(5, seed=6)
    ]
    out = tmp_path / "report"
    argv = [
        "evaluate",
        "--model_name_or_path",
        str(tiny_model_dir),
        "--output_dir",
        str(out),
        "--max_batch_tokens",
        "200",
    ]
    data = [write_jsonl(tmp_path / "pairs.jsonl", pairs), write_jsonl(tmp_path / "ranked.jsonl", ranked)]
    assert main(argv + ["--dataset_name", *data]) == 0

    report = json.loads((out / "eval_report.json").read_text())
    chosen = plain_rewards(tiny_model_dir, [p["prompt"] + p["chosen"] for p in pairs])
    rejected = plain_rewards(tiny_model_dir, [p["prompt"] + p["rejected"] for p in pairs])
    correct = np.where(chosen > rejected, 1.0, np.where(chosen < rejected, 0.0, 0.5))
    correct[0] = 0.5
    assert report["pairs"] == 24
    assert report["accuracy"] == pytest.approx(correct.mean())
    low, high = report["accuracy_ci95"]
    assert low <= report["accuracy"] <= high
    assert report["tie_rate"] == pytest.approx(np.mean(chosen == rejected))
    assert report["ece"] == pytest.approx(expected_calibration_error(chosen, rejected, [1] + [0] * 23), abs=1e-6)
    chosen_len, rejected_len = [len(p["chosen"]) for p in pairs], [len(p["rejected"]) for p in pairs]
    longer = [0.5 if i == 0 or c == r else float(c > r) for i, (c, r) in enumerate(zip(chosen_len, rejected_len))]
    assert report["longer_wins_accuracy"] == pytest.approx(np.mean(longer))
    shorter = np.array(chosen_len) < np.array(rejected_len)
    assert report["accuracy_chosen_shorter"] == pytest.approx(correct[shorter].mean())
    expected_rho = stats.spearmanr(np.r_[chosen, rejected], chosen_len + rejected_len).statistic
    assert report["reward_length_spearman"] == pytest.approx(expected_rho, abs=1e-6)
    assert report["per_subset"]["odd"]["accuracy"] == pytest.approx(correct[1::2].mean())
    assert report["per_subset"]["even"]["pairs"] == 12

    taus = []
    for row in ranked:
        rewards = plain_rewards(tiny_model_dir, [row["prompt"] + r for r in row["responses"]])
        taus.append(stats.kendalltau(rewards, row["scores"]).statistic)
    assert report["kendall_tau"] == pytest.approx(np.nanmean(taus), abs=1e-6)
    assert "spearman_rho" in report

    markdown = (out / "eval_report.md").read_text()
    assert f"{report['accuracy']:.4f}" in markdown and "| odd | 12 |" in markdown
    for png in ("reliability_diagram.png", "reward_histograms.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_command_bad_input_exits_2(tmp_path, tiny_model_dir, capsys):
    from reward_trainer.cli import main

    base = ["evaluate", "--model_name_or_path", str(tiny_model_dir), "--output_dir", str(tmp_path)]
    assert main(base + ["--dataset_name", str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl" in capsys.readouterr().err
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"chosen": "a", "rejected": "b"}, {"chosen": "a", "rejected": 3}])
    assert main(base + ["--dataset_name", bad]) == 2
    assert "row 2: field 'rejected'" in capsys.readouterr().err
    (tmp_path / "broken.jsonl").write_text('{"chosen": "a", "rejected": "b"}\n{"chosen": \n')
    assert main(base + ["--dataset_name", str(tmp_path / "broken.jsonl")]) == 2
    assert "broken.jsonl" in capsys.readouterr().err
    assert main(base + ["--dataset_name", bad, "--on_bad_row", "skip"]) == 0  # read as training reads it
    report = json.loads((tmp_path / "eval_report.json").read_text())
    assert (report["input_rows"], report["pairs"]) == (2, 1)
    assert [(r["row"], r["reason"][:17]) for r in report["skipped_rows"]] == [(2, "field 'rejected':")]
    assert main(["evaluate", "--dataset_name", bad]) == 2  # --model_name_or_path is required


def test_eval_metrics_reach_tensorboard(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from reward_trainer import PreferenceCollator, RewardConfig, RewardTrainer
    from reward_trainer.config import DataArguments, ModelArguments
    from reward_trainer.data import load_preference_data
    from reward_trainer.loading import load_reward_model

    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))  # transformers 5 reads it from here
    torch.manual_seed(0)
    model, tokenizer = load_reward_model(ModelArguments())
    data = load_preference_data(DataArguments(num_synthetic_pairs=60), tokenizer, seed=0)
    args = RewardConfig(
        output_dir=str(tmp_path / "out"),
        report_to=["tensorboard"],
        per_device_train_batch_size=8,
        max_steps=4,
        eval_strategy="steps",
        eval_steps=2,
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = RewardTrainer(
        model=model,
        args=args,
        data_collator=PreferenceCollator(tokenizer.pad_token_id),
        train_dataset=data.train,
        eval_dataset=data.eval,
        compute_metrics=compute_metrics,
    )
    trainer.train()
    final = trainer.evaluate()
    trainer.callback_handler.on_train_end(args, trainer.state, trainer.control)  # flush and close the writer

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = events.Tags()["scalars"]
    for name in ("accuracy", "accuracy_ci95_low", "ece", "longer_wins_accuracy", "reward_length_spearman"):
        assert f"eval/{name}" in tags, name
    assert len(events.Scalars("eval/accuracy")) == 3  # steps 2 and 4, and the final evaluate()
    assert events.Scalars("eval/ece")[-1].value == pytest.approx(final["eval_ece"], rel=1e-6)


def test_hh_longer_wins_baseline_matches_an_independent_count(shared_data):
    """`evaluate` reads HH-RLHF through `reward_trainer.data`, as training does, with default flags: every row,
    the 4 with an empty final response included; its prompt split and "longer wins" count match a count made here."""
    from reward_trainer.config import EvaluateArguments
    from reward_trainer.evaluation import read_texts

    path = shared_data / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    args = EvaluateArguments(model_name_or_path="unused", dataset_name=[str(path)])
    pairs, rankings, accounting = read_texts(args.dataset_name, args)
    assert accounting["input_rows"] == len(rows) == 2312 and accounting["skipped"] == 0
    assert accounting["empty_responses"] == 4
    assert not rankings and not any(pairs["tie"]) and not any(pairs["subset"])
    ours = preference_metrics(
        np.zeros(len(rows)),
        np.zeros(len(rows)),
        [len(c) for c in pairs["chosen"]],
        [len(r) for r in pairs["rejected"]],
    )["longer_wins_accuracy"]
    # Independently: the final response is what follows the last "\n\nAssistant:" of each conversation.
    final = [(r["chosen"].rsplit("\n\nAssistant:", 1)[1], r["rejected"].rsplit("\n\nAssistant:", 1)[1]) for r in rows]
    same_prompt = [
        r["chosen"].rsplit("\n\nAssistant:", 1)[0] == r["rejected"].rsplit("\n\nAssistant:", 1)[0] for r in rows
    ]
    wins = [0.5 if len(c) == len(r) else float(len(c) > len(r)) for (c, r), same in zip(final, same_prompt) if same]
    ours_same = [
        0.5 if len(c) == len(r) else float(len(c) > len(r))
        for c, r, same in zip(pairs["chosen"], pairs["rejected"], same_prompt)
        if same
    ]
    assert len(pairs["chosen"]) == len(rows) == 2312 and len(wins) > 2300
    assert ours_same == wins
    assert 0.40 < ours < 0.50  # the data README: chosen is the longer response in only 44% of rows


def test_evaluate_counts_single_responses_of_a_ratings_file(tmp_path, tiny_model_dir, capsys):
    """A `ratings` file, rows of a prompt apart: prompts with several responses are compared by mean rating (over
    `--attributes`), a prompt with one response is counted in the report, not scored; a file of single responses
    only is a one-line error, not a traceback."""
    from reward_trainer.cli import main

    rows = [("p0", " a", 1, 2), ("p1", " b", 3, 3), ("p0", " c", 4, 4), ("p2", " d", 0, 1), ("p3", " e", 2, 2),
            ("p3", " f", 1, None), ("p3", " g", 4, 0)]  # fmt: skip
    data = write_jsonl(tmp_path / "ratings.jsonl", [{"prompt": f"{p} cat?\nanswer:", "response": r, "helpfulness": h,
                       "correctness": c} for p, r, h, c in rows])  # fmt: skip
    argv = ["evaluate", "--model_name_or_path", str(tiny_model_dir), "--attributes", "helpfulness", "correctness"]
    assert main([*argv, "--dataset_name", data, "--output_dir", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "eval_report.json").read_text())
    assert (report["input_rows"], report["single_responses"], report["pairs"]) == (7, 2, 1)
    assert report["ranked_prompts"] == 1  # p3: three responses, mean ratings 2, 1, 2
    prompt = "p0 cat?\nanswer:"
    chosen, rejected = plain_rewards(tiny_model_dir, [prompt + " c", prompt + " a"])  # mean ratings 4 > 1.5
    assert report["accuracy"] == float(chosen > rejected) + 0.5 * float(chosen == rejected)

    single = write_jsonl(
        tmp_path / "single.jsonl", [{"prompt": "q?", "response": " a", "helpfulness": 1, "correctness": 2}]
    )
    assert main([*argv, "--dataset_name", single, "--output_dir", str(tmp_path / "single")]) == 2
    assert capsys.readouterr().err.strip().endswith("no pairs or rankings to evaluate (single responses: 1)")
