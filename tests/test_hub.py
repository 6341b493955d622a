"""The Hub: the model card's metadata, and `--push_to_hub` uploading weights, tokenizer, card and results (the
Hub API is replaced by a local folder: no network)."""

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL

from reward_trainer import cli
from reward_trainer.hub import model_card


def test_model_card_metadata():
    card = model_card("me/rm", "openai-community/gpt2", "Anthropic/hh-rlhf", 0.71234, "reward-trainer train --x 1")
    assert card.data.base_model == "openai-community/gpt2"
    assert card.data.datasets == ["Anthropic/hh-rlhf"]
    assert "reward-model" in card.data.tags
    metric = card.data.to_dict()["model-index"][0]["results"][0]["metrics"][0]
    assert (metric["type"], metric["value"]) == ("accuracy", 0.7123)
    assert "```bash\nreward-trainer train --x 1\n```" in card.text
    local = model_card("me/rm", "builtin:tiny-gpt2", "/data/pairs.jsonl", None, "c")  # not Hub ids: not in the YAML
    assert local.data.base_model is None and local.data.datasets is None and "`builtin:tiny-gpt2`" in local.text


def test_model_card_names_the_objective_used():
    from reward_trainer.loss import OBJECTIVES

    for name, objective in OBJECTIVES.items():
        card = model_card("me/rm", "b", "d", None, "c", loss=name)
        assert f"with {objective.description}." in card.text and objective.tag in card.data.tags
        others = [o for o in OBJECTIVES.values() if o.name != name]
        assert not any(o.description in card.text or o.tag in card.data.tags for o in others)


def test_model_card_of_rated_attributes_names_them_and_their_weights():
    weights = {"helpfulness": 0.75, "correctness": 0.25}
    card = model_card("me/rm", "b", "d", None, "c", loss="regression", attribute_weights=weights)
    assert "with a squared error on each response's ratings" in card.text
    assert "(`helpfulness`, `correctness`; `config.id2label`)" in card.text
    assert "0.75 x helpfulness + 0.25 x correctness" in card.text
    assert "logits[0, 0]" not in card.text and "torch.tensor(model.config.attribute_weights)" in card.text
    pairwise = model_card(
        "me/rm", "b", "d", None, "c", loss="bt_ties", attribute_weights=weights, regression_weight=0.5
    )
    assert "applied to each attribute (pairs ordered by that attribute's ratings), plus 0.5 times the squared" in (
        pairwise.text
    )


def test_trainer_card_reads_the_run(tmp_path, tiny_tokenizer):
    """`RewardTrainer.create_model_card` (what `push_to_hub` calls) names the run's `--loss` and the model's
    attributes, as `heads.prepare_objective` set them."""
    from reward_trainer import RewardConfig, RewardTrainer
    from reward_trainer.heads import prepare_objective
    from reward_trainer.quickstart import build_tiny_gpt2

    args = RewardConfig(output_dir=str(tmp_path), loss="regression", attribute_weights=[0.75, 0.25], use_cpu=True,
                        eval_strategy="no")  # fmt: skip
    model = build_tiny_gpt2(tiny_tokenizer)
    prepare_objective(model, args, attributes=["helpfulness", "correctness"])
    RewardTrainer(model=model, args=args).create_model_card(dataset="ratings.jsonl", command="c")
    text = (tmp_path / "README.md").read_text()
    assert "on `ratings.jsonl`, with a squared error on each response's ratings" in text
    assert "0.75 x helpfulness + 0.25 x correctness" in text and "rating-regression" in text


def test_push_to_hub_uploads_weights_tokenizer_and_card(tmp_path, monkeypatch):
    """Intercepts `huggingface_hub.HfApi` (what `Trainer.push_to_hub` calls): no network, a folder as the repo."""
    from fnmatch import fnmatch

    from huggingface_hub import HfApi, ModelCard, RepoUrl
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from reward_trainer.metrics import pair_correctness
    from reward_trainer.quickstart import make_pairs

    hub, calls = tmp_path / "hub", []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id))
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, repo_id, folder_path, ignore_patterns=(), path_in_repo=None, **kwargs):
        calls.append(("upload_folder", repo_id))
        for name in os.listdir(folder_path):
            source = Path(folder_path) / name
            if source.is_file() and not any(fnmatch(name, p) for p in ignore_patterns):
                (hub / repo_id).mkdir(parents=True, exist_ok=True)
                shutil.copy(source, hub / repo_id / name)

    def create_commit(self, *args, **kwargs):
        raise AssertionError("unexpected create_commit")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    argv = [
        "train",
        *SMALL,
        "--max_steps",
        "20",
        "--per_device_train_batch_size",
        "16",
        "--output_dir",
        str(tmp_path / "out"),
        "--push_to_hub",
        "true",
        "--hub_model_id",
        "user/tiny-rm",
    ]
    monkeypatch.setattr(sys, "argv", ["reward-trainer", *argv])
    assert cli.main(argv) == 0

    assert calls == [("create_repo", "user/tiny-rm"), ("upload_folder", "user/tiny-rm")]
    repo = hub / "user" / "tiny-rm"
    assert sorted(os.listdir(repo)) == sorted(
        [
            "README.md",
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
            "training_args.bin",
            "all_results.json",
            "eval_results.json",
            "train_results.json",
            "data_report.json",
        ]
    )
    metrics = json.loads((repo / "eval_results.json").read_text())
    card = ModelCard.load(repo / "README.md")
    assert "reward-model" in card.data.tags and card.data.library_name == "transformers"
    assert "with the Bradley-Terry loss on preference pairs" in card.text and "bradley-terry" in card.data.tags
    result = card.data.to_dict()["model-index"][0]["results"][0]
    assert result["metrics"][0]["value"] == round(metrics["eval_accuracy"], 4)
    assert result["dataset"]["name"] == "builtin:code-book"
    assert "reward-trainer train --config recipes/quickstart.yaml --num_synthetic_pairs 250" in card.text
    assert "--push_to_hub true --hub_model_id user/tiny-rm" in card.text

    # The pushed folder alone reproduces the eval rewards: accuracy exactly, mean rewards to float precision.
    model = AutoModelForSequenceClassification.from_pretrained(repo).eval()
    tokenizer = AutoTokenizer.from_pretrained(repo)
    pairs = make_pairs(25, seed=42 + 1)  # the built-in held-out set of 250 pairs, as data.py builds it
    assert len(pairs) == metrics["eval_num_pairs"]
    with torch.no_grad():

        def rewards(key):
            return np.array(
                [model(**tokenizer(p["prompt"] + p[key], return_tensors="pt")).logits[0, 0].item() for p in pairs]
            )

        chosen, rejected = rewards("chosen"), rewards("rejected")
    assert pair_correctness(chosen, rejected).mean() == pytest.approx(metrics["eval_accuracy"], abs=1e-9)
    assert chosen.mean() == pytest.approx(metrics["eval_chosen_reward_mean"], abs=1e-4)
    assert rejected.mean() == pytest.approx(metrics["eval_rejected_reward_mean"], abs=1e-4)


@pytest.mark.parametrize("append_eos", [False, True])
def test_the_cards_usage_code_reads_the_scorers_reward(tmp_path, monkeypatch, append_eos):
    """The card's usage code, run as written on the saved folder, gives `RewardScorer`'s reward: at the last token
    of the text, or after the EOS that a model trained with `--append_eos true` was read at."""
    import re

    from transformers import AutoModelForSequenceClassification

    from reward_trainer import RewardConfig, RewardScorer, RewardTrainer

    out = tmp_path / "out"
    argv = ["train", *SMALL, "--max_steps", "3", "--eval_strategy", "no", "--output_dir", str(out)]
    assert cli.main([*argv, "--append_eos", str(append_eos).lower()]) == 0
    model = AutoModelForSequenceClassification.from_pretrained(out)
    trainer = RewardTrainer(
        model=model, args=RewardConfig(output_dir=str(tmp_path / "card"), use_cpu=True, eval_strategy="no")
    )
    trainer.create_model_card(model_name=str(out), dataset="d", command="c")
    code = re.search(r"```python\n(.*?)```", (tmp_path / "card" / "README.md").read_text(), re.S).group(1)
    prompt, response = "1 2 3 = ", "6"
    scope = {"prompt": prompt, "response": response}
    exec(code, scope)
    expected = RewardScorer.from_pretrained(str(out), device="cpu").score([prompt], [response])[0]
    assert abs(scope["reward"] - expected) <= 1e-5  # the same forward, batched alone both times
    assert ("tokenizer.eos_token" in code) is append_eos
