"""The evaluation report's metrics during training: per-subset accuracy and ranking correlation at each evaluation,
checked against the rewards of the saved model computed here with plain transformers and scipy."""

import random

import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict
from scipy import stats
from transformers import EvalPrediction

from reward_trainer.metrics import compute_metrics
from reward_trainer.quickstart import CODES, make_pairs


def test_compute_metrics_per_subset_and_rankings_on_handmade_pairs():
    """Pairs 0-1: subset "a" (one right, one wrong); pair 2: subset "b", a tie; pairs 3-7: one prompt (group 9)
    with four responses of human scores [3, 1, 1, 0], so five pairs (the two scored 1 are not paired), subset "b".
    Model rewards of the four responses: [0.5, 2.0, 1.0, -1.0].
    Kendall tau-b against the scores: of the 5 pairs with a human order, (0,1) discordant, (0,2) discordant,
    (0,3) concordant, (1,3) concordant, (2,3) concordant: (3 - 2) / sqrt(6 * 5) = 1 / sqrt(30).
    Spearman: ranks of the rewards [2, 4, 3, 1], of the scores [4, 2.5, 2.5, 1] -> Pearson of those ranks.
    """
    reward = [0.5, 2.0, 1.0, -1.0]
    ranked = [(0, 1), (0, 2), (0, 3), (1, 3), (2, 3)]  # (chosen, rejected) places
    rewards = np.array([[1.0, 0.0], [0.0, 1.0], [0.3, 0.7]] + [[reward[c], reward[r]] for c, r in ranked])
    names = ("tie", "chosen_length", "rejected_length", "group", "subset", "chosen_response", "rejected_response")
    labels = np.array(
        [[0, 3, 2, 0, 0, 0, 1], [0, 1, 1, 1, 0, 0, 1], [1, 2, 2, 2, 1, 0, 1]]
        + [[0, 1, 1, 9, 1, c, r] for c, r in ranked]
    )
    columns, labels = {"chosen": rewards[:, 0], "rejected": rewards[:, 1]}, dict(zip(names, labels.T))
    m = compute_metrics(EvalPrediction(predictions=columns, label_ids=labels), subsets=["a", "b"])

    b_correct = [0.5] + [float(reward[c] > reward[r]) for c, r in ranked]  # the tie counts 0.5
    assert m["accuracy/a"] == 0.5
    assert m["accuracy/b"] == pytest.approx(np.mean(b_correct))
    assert m["accuracy"] == pytest.approx((1 + 0 + sum(b_correct)) / 8)
    assert m["kendall_tau"] == pytest.approx(1 / np.sqrt(30))
    rank_rewards, rank_scores = np.array([2, 4, 3, 1.0]), np.array([4, 2.5, 2.5, 1])
    assert m["spearman_rho"] == pytest.approx(np.corrcoef(rank_rewards, rank_scores)[0, 1])
    assert m["ranked_prompts"] == 1.0  # groups 0-2 have two responses: pairs, not rankings
    # Unnamed subsets are named by id; without the index columns there are no subset or ranking metrics.
    assert "accuracy/1" in compute_metrics(EvalPrediction(predictions=columns, label_ids=labels))
    plain_labels = {key: labels[key] for key in names[:3]}
    plain = compute_metrics(EvalPrediction(predictions=columns, label_ids=plain_labels))
    assert not any(key.startswith("accuracy/") or key == "kendall_tau" for key in plain)
    assert plain["accuracy"] == m["accuracy"]


def test_a_tie_of_three_responses_is_not_a_ranking_and_a_single_response_no_pair():
    """Prompt 0: three responses the annotators tied (its three pairs, `tie` 1): they order nothing, so no ranking
    metric; prompt 1: one response, a pair of itself (places (0, 0)): counted, and in no pairwise metric."""
    columns = {"chosen": np.array([1.0, 2.0, 3.0, 5.0]), "rejected": np.array([0.0, 1.0, 2.0, 5.0])}
    labels = {"tie": np.array([1, 1, 1, 0]), "group": np.array([0, 0, 0, 1]),
              "chosen_response": np.array([0, 0, 1, 0]), "rejected_response": np.array([1, 2, 2, 0])}  # fmt: skip
    m = compute_metrics(EvalPrediction(predictions=columns, label_ids=labels))
    assert "kendall_tau" not in m and m["num_pairs"] == 3 and m["single_responses"] == 1
    assert m["accuracy"] == 0.5 and m["tie_rate"] == 0.0  # annotated ties count 0.5; the single response is no tie


def test_label_columns_are_read_by_name():
    """The columns' order means nothing, an absent one is an absent metric, and an unknown name is an error: a
    column added on one side cannot be read as another one on the other."""
    columns = {"rejected": np.array([0.0, 1.0, 1.0]), "chosen": np.array([1.0, 0.0, 2.0])}
    labels = {"rejected_length": np.array([1, 1, 1]), "tie": np.array([0, 0, 0]), "chosen_length": np.array([2, 2, 0])}
    m = compute_metrics(EvalPrediction(predictions=columns, label_ids=labels))
    assert m["accuracy"] == pytest.approx(2 / 3) and m["longer_wins_accuracy"] == pytest.approx(2 / 3)
    assert "kendall_tau" not in m and not any(key.startswith("accuracy/") for key in m)
    assert "longer_wins_accuracy" not in compute_metrics(EvalPrediction(predictions=columns, label_ids={}))
    with pytest.raises(ValueError, match="unknown label columns \\['margin'\\]"):
        compute_metrics(EvalPrediction(predictions=columns, label_ids={"margin": np.zeros(3)}))
    with pytest.raises(TypeError, match="named columns"):
        compute_metrics(
            EvalPrediction(predictions=np.stack([columns["chosen"], columns["rejected"]], 1), label_ids={})
        )


# ---------------------------------------------------------------------------------------------------------
# A training run on a mixture of two pair sources and one ranked source, checked against the saved model.


def ranked_rows(n, seed):
    rng = random.Random(seed)
    rows = []
    for pair in make_pairs(n, seed=seed):
        responses = [" " + code for code in rng.sample(CODES, 4)]
        scores = rng.choice([[3, 2, 1, 0], [3, 1, 1, 0], [2, 2, 0, 1], [0, 1, 2, 3]])
        rows.append({"prompt": pair["prompt"], "responses": responses, "scores": scores})
    return rows


def save_source(path, train_rows, test_rows):
    DatasetDict({"train": Dataset.from_list(train_rows), "test": Dataset.from_list(test_rows)}).save_to_disk(path)
    return str(path)


def plain_rewards(path, texts):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model, tok = AutoModelForSequenceClassification.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    with torch.no_grad():
        return np.array([model(**tok(t, return_tensors="pt")).logits[0, 0].item() for t in texts])


@pytest.mark.parametrize("collator", ["prefix_sharing", "plain", "dedupe"])
def test_training_logs_per_subset_accuracy_and_ranking_correlation(tmp_path, monkeypatch, collator):
    from reward_trainer.config import DataArguments, ModelArguments, RewardConfig
    from reward_trainer.train import train

    tensorboard = collator == "prefix_sharing"  # the default collator of a causal model: also check the logger
    if tensorboard:
        pytest.importorskip("tensorboard")
        monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))  # transformers 5 reads it from here
    test_a, test_b, test_ranked = make_pairs(10, seed=21), make_pairs(9, seed=22), ranked_rows(6, seed=23)
    for pair in test_b:
        pair["chosen"] += " well"  # a different subset: longer chosen responses
    sources = {
        save_source(tmp_path / "a", make_pairs(24, seed=11), test_a): 1.0,
        save_source(tmp_path / "b", make_pairs(24, seed=12), test_b): 1.0,
        save_source(tmp_path / "ranked", ranked_rows(8, seed=13), test_ranked): 1.0,
    }
    args = RewardConfig(
        output_dir=str(tmp_path / "out"),
        max_steps=4,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=8,
        learning_rate=1e-3,
        eval_strategy="steps",
        eval_steps=2,
        prefix_sharing=collator == "prefix_sharing",
        dedupe_sequences=collator == "dedupe",
        report_to=["tensorboard"] if tensorboard else [],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    torch.manual_seed(0)
    final = train(ModelArguments(), DataArguments(dataset_mixture=sources), args)

    # Independently: score every eval response with the saved model, one text at a time.
    out = tmp_path / "out"
    accuracy = {}
    for name, pairs in (("a", test_a), ("b", test_b)):
        chosen = plain_rewards(out, [p["prompt"] + p["chosen"] for p in pairs])
        rejected = plain_rewards(out, [p["prompt"] + p["rejected"] for p in pairs])
        accuracy[name] = np.where(chosen > rejected, 1.0, np.where(chosen < rejected, 0.0, 0.5))
    taus, rhos, ranked_correct = [], [], []
    for row in test_ranked:
        rewards = plain_rewards(out, [row["prompt"] + r for r in row["responses"]])
        taus.append(stats.kendalltau(rewards, row["scores"]).statistic)
        rhos.append(stats.spearmanr(rewards, row["scores"]).statistic)
        s = row["scores"]
        ranked_correct += [float(rewards[i] > rewards[j]) for i in range(4) for j in range(4) if s[i] > s[j]]
    accuracy["ranked"] = np.array(ranked_correct)

    for name, correct in accuracy.items():
        assert final[f"eval_accuracy/{name}"] == pytest.approx(correct.mean(), abs=1e-9), name
    assert final["eval_accuracy"] == pytest.approx(np.concatenate(list(accuracy.values())).mean(), abs=1e-9)
    assert final["eval_num_pairs"] == sum(len(c) for c in accuracy.values())
    assert final["eval_kendall_tau"] == pytest.approx(np.mean(taus), abs=1e-6)
    assert final["eval_spearman_rho"] == pytest.approx(np.mean(rhos), abs=1e-6)
    assert final["eval_ranked_prompts"] == len(test_ranked)

    if tensorboard:  # every evaluation (steps 2 and 4, and the final one) reaches TensorBoard under the new keys
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(tmp_path / "tb"))
        events.Reload()
        for key in ("accuracy/a", "accuracy/b", "accuracy/ranked", "kendall_tau", "spearman_rho"):
            values = events.Scalars(f"eval/{key}")
            assert len(values) == 3, key
            assert values[-1].value == pytest.approx(final[f"eval_{key}"], abs=1e-6), key


def test_eval_pairs_carry_the_subset_of_their_row_or_source(tmp_path, tiny_tokenizer):
    """A row's own `source` names its subset; else, in a mixture, its source less the folder all sources share."""
    from reward_trainer.config import DataArguments
    from reward_trainer.data import load_preference_data, subset_names

    tagged = make_pairs(4, seed=1)
    for i, pair in enumerate(tagged):
        pair["source"] = "even" if i % 2 == 0 else "odd"
    sources = {
        save_source(tmp_path / "tagged", make_pairs(4, seed=2), tagged): 1.0,
        save_source(tmp_path / "plain", make_pairs(4, seed=3), make_pairs(3, seed=4)): 1.0,
    }
    data = load_preference_data(DataArguments(dataset_mixture=sources), tiny_tokenizer, seed=0)
    names = data.eval.features["subset"].names
    assert [names[i] for i in data.eval["subset"]] == ["even", "odd", "even", "odd", "plain", "plain", "plain"]
    assert "subset" not in data.train.column_names
    assert data.eval["chosen_response"] == [0] * 7 and data.eval["rejected_response"] == [1] * 7

    single = load_preference_data(DataArguments(dataset_name=str(tmp_path / "plain")), tiny_tokenizer, seed=0)
    assert "subset" not in single.eval.column_names  # one source, no row names a subset: no per-subset metrics
    hh = "../shared/data/hh-rlhf/{}-base/test.jsonl.gz"
    assert subset_names([hh.format("harmless"), hh.format("helpful")]) == {
        hh.format("harmless"): "harmless-base/test.jsonl.gz",
        hh.format("helpful"): "helpful-base/test.jsonl.gz",
    }
