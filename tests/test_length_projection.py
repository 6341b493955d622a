"""`--length_projection`: the probe and the edit as pure functions, and in training: the saved plain reward
model's rewards of the training responses are uncorrelated with log length."""

import json

import numpy as np
import pytest
import torch
from conftest import write_varied_lengths

from reward_trainer import RewardConfig, RewardScorer
from reward_trainer.config import DataArguments, ModelArguments
from reward_trainer.data import load_preference_data
from reward_trainer.length_projection import length_projection, ridge_probe
from reward_trainer.train import train
from reward_trainer.trainer import response_lengths

WORDS = "red blue green gold grey pink cat dog owl fox bee ant".split()


def test_ridge_probe_recovers_a_linear_target():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 12))
    y = x @ np.arange(12.0) + 0.01 * rng.normal(size=300)
    coefficients, penalty, r2 = ridge_probe(x, y)
    assert r2 > 0.999 and penalty > 0
    np.testing.assert_allclose(coefficients, np.arange(12.0), atol=0.01)


def test_projection_leaves_the_reward_uncorrelated_with_log_length():
    rng = np.random.default_rng(1)
    lengths = rng.integers(0, 200, size=500)
    features = rng.normal(size=(500, 8))
    features[:, 0] += 2 * np.log1p(lengths)  # one direction carries length
    weight = np.array([1.0, 0.5, -0.3, 0.2, 0.0, 0.1, -0.2, 0.4])
    new, summary = length_projection(features, lengths, weight)
    y = np.log1p(lengths)
    assert summary["applied"] == 1 and summary["probe_r2"] > 0.5
    assert summary["correlation_before"] == pytest.approx(np.corrcoef(features @ weight, y)[0, 1])
    assert abs(summary["correlation_before"]) > 0.5
    assert abs(np.corrcoef(features @ new, y)[0, 1]) < 1e-9
    assert summary["correlation_after"] == pytest.approx(0.0, abs=1e-9)
    # What was taken away is the probe's direction, scaled by the coefficient.
    probe, _, _ = ridge_probe(features, y)
    np.testing.assert_allclose(weight - new, summary["coefficient"] * probe, atol=1e-12)


def test_a_probe_blind_to_length_changes_nothing():
    rng = np.random.default_rng(2)
    lengths = rng.integers(0, 200, size=400)
    weight = rng.normal(size=6)
    new, summary = length_projection(rng.normal(size=(400, 6)), lengths, weight)
    assert summary["applied"] == 0 and summary["probe_r2"] < 0.1
    np.testing.assert_array_equal(new, weight)


@pytest.mark.parametrize(
    "config",
    [{}, {"prefix_sharing": False}, {"length_debias": True}],
    ids=["prefix_sharing", "plain_padding", "after_length_debias"],
)
def test_the_saved_reward_is_uncorrelated_with_length_on_the_training_responses(tmp_path, config):
    data_file = write_varied_lengths(tmp_path / "pairs.jsonl")
    out = tmp_path / "out"
    args = RewardConfig(
        output_dir=str(out), max_steps=6, per_device_train_batch_size=8, per_device_eval_batch_size=5,
        learning_rate=1e-3, eval_strategy="no", use_cpu=True, disable_tqdm=True, seed=0, length_projection=True,
        **config,
    )  # fmt: skip
    data_args = DataArguments(dataset_name=data_file, eval_fraction=0.0, max_length=64)
    train(ModelArguments(), data_args, args)
    summary = json.loads((out / "train_results.json").read_text())
    assert summary["length_projection_applied"] == 1
    if not config.get("length_debias"):  # (ODIN's terms have taken most of the correlation away already)
        assert abs(summary["length_projection_correlation_before"]) > 0.05

    # The saved model is a plain single-output reward model; its rewards of the training responses (the token ids
    # training saw) are uncorrelated with log(1 + response tokens).
    scorer = RewardScorer.from_pretrained(str(out))
    assert scorer.model.config.num_labels == 1
    rows = load_preference_data(data_args, scorer.tokenizer, seed=0).train
    ids = list(rows["chosen_ids"]) + list(rows["rejected_ids"])
    lengths = [response_lengths(row)["chosen_length"] for row in rows]
    lengths += [response_lengths(row)["rejected_length"] for row in rows]
    with torch.no_grad():
        rewards = np.array(scorer.forward(ids))
    # Not 0: the edit is exact in float64, the rewards are scored again in float32. Their roundoff (~1e-6 on rewards
    # below 2 in size) over their spread (a std above 0.1) bounds the correlation left by ~1e-5.
    assert abs(np.corrcoef(rewards, np.log1p(lengths))[0, 1]) < 1e-4


def test_length_projection_needs_a_pairwise_loss(tmp_path):
    with pytest.raises(ValueError, match="--length_projection works with a pairwise loss"):
        RewardConfig(output_dir=str(tmp_path), use_cpu=True, loss="plackett_luce", length_projection=True)
