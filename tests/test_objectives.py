"""The objectives of `--loss` and `--length_debias` in the trainer: exact gradient accumulation, Plackett-Luce
batches whole rankings, checkpoints that reload in plain transformers with the scorer's rewards, LoRA."""

import json
import random

import numpy as np
import pytest
import torch
from conftest import GRADIENT_ROUNDOFF, float64_default
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, EvalPrediction

from reward_trainer import PreferenceCollator, RewardConfig, RewardScorer, RewardTrainer
from reward_trainer.collator import PrefixSharingCollator, pairs_of_rankings
from reward_trainer.config import DataArguments, ModelArguments
from reward_trainer.data import load_preference_data
from reward_trainer.heads import TIE_PARAMETER, prepare_objective
from reward_trainer.loading import load_reward_model
from reward_trainer.loss import bradley_terry_loss
from reward_trainer.metrics import compute_metrics
from reward_trainer.train import train
from reward_trainer.trainer import ranking_losses

WORDS = "red blue green gold grey pink cat dog owl fox bee ant".split()


def write_rows(path, kind: str, n: int = 24, seed: int = 0):
    """`ties`: explicit-prompt pairs, every third a tie; `rankings`: K = 2..4 responses with scores; `ratings`: one
    response per row, 2 or 3 per prompt, rated on `helpfulness` and `correctness` (0-4, some missing)."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        if kind == "ratings":
            for i in range(n):
                prompt = " ".join(rng.choices(WORDS, k=3)) + f" | q{i}?\nanswer:"
                for j in range(2 + i % 2):
                    response = " " + " ".join(rng.choices(WORDS, k=1 + j))
                    correctness = None if (i + j) % 5 == 0 else float((i * 3 + j) % 5)
                    row = {
                        "prompt": prompt,
                        "response": response,
                        "helpfulness": (i + 2 * j) % 5,
                        "correctness": correctness,
                    }
                    f.write(json.dumps(row) + "\n")
            return str(path)
        for i in range(n):
            prompt = " ".join(rng.choices(WORDS, k=3)) + f" | q{i}?\nanswer:"
            k = 2 if kind == "ties" else 2 + i % 3
            responses = [" " + " ".join(rng.choices(WORDS, k=1 + j)) + f" {i}" for j in range(k)]
            if kind == "ties":
                row = {"prompt": prompt, "chosen": responses[1], "rejected": responses[0], "tie": i % 3 == 0}
            else:
                row = {"prompt": prompt, "responses": responses, "scores": [float((j * 7 + i) % k) for j in range(k)]}
            f.write(json.dumps(row) + "\n")
    return str(path)


def args_for(tmp_path, name, **kwargs):
    defaults = dict(
        output_dir=str(tmp_path / name), max_steps=1, max_grad_norm=0.0, eval_strategy="no", use_cpu=True, seed=0,
        disable_tqdm=True, train_sampling_strategy="sequential", learning_rate=1e-3,
    )  # fmt: skip
    return RewardConfig(**(defaults | kwargs))


class Capture:
    def __init__(self):
        self.grads = None

    def __call__(self, model):
        from transformers import TrainerCallback

        capture = self

        class Callback(TrainerCallback):
            def on_pre_optimizer_step(self, args, state, control, **kwargs):
                if capture.grads is None:
                    capture.grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

        return Callback()


def first_step_gradients(tmp_path, data_file, batch, accumulation, collator=None, **config):
    """The first step's gradients, in float64 (so that two batchings compare to `GRADIENT_ROUNDOFF`)."""
    with float64_default():
        return _first_step_gradients(tmp_path, data_file, batch, accumulation, collator, **config)


def _first_step_gradients(tmp_path, data_file, batch, accumulation, collator=None, **config):
    torch.manual_seed(0)
    model, tokenizer = load_reward_model(ModelArguments())
    args = args_for(tmp_path, f"b{batch}x{accumulation}", per_device_train_batch_size=batch,
                    gradient_accumulation_steps=accumulation, **config)  # fmt: skip
    attributes = ["helpfulness", "correctness"] if "ratings" in data_file else None
    data = load_preference_data(
        DataArguments(dataset_name=data_file, eval_fraction=0.0, max_length=64, attributes=attributes), tokenizer, seed=0,
        ties_in_loss=args.loss == "bt_ties", rankings=args.loss == "plackett_luce",
    )  # fmt: skip
    prepare_objective(model, args, attributes=data.attributes)
    capture = Capture()
    collator = collator(tokenizer.pad_token_id) if collator else None
    trainer = RewardTrainer(model=model, args=args, train_dataset=data.train.select(range(8)),
                            data_collator=collator, callbacks=[capture(model)])  # fmt: skip
    trainer.train()
    return capture.grads


def assert_same_gradients(full, accumulated):
    assert full.keys() == accumulated.keys() and len(full) > 0
    for name in full:
        torch.testing.assert_close(accumulated[name], full[name], atol=GRADIENT_ROUNDOFF, rtol=0, msg=name)


@pytest.mark.parametrize(
    "kind, config",
    [
        ("ties", {"loss": "bt_ties"}),  # the tie parameter learned: it has a gradient too
        ("ties", {"loss": "bt_ties", "tie_theta": 3.0}),
        ("rankings", {"loss": "plackett_luce"}),  # rankings of 2 to 4 responses: micro-batches of unequal weight
        ("ties", {"length_debias": True, "length_correlation_weight": 0.0}),  # the per-pair and per-step terms
        ("ratings", {"loss": "regression"}),
        ("ratings", {"loss": "bt_ties", "regression_weight": 0.5}),  # per attribute, ties where ratings are equal
    ],
    ids=["bt_ties", "bt_ties_fixed", "plackett_luce", "length_debias", "regression", "attributes_bt_ties"],
)
def test_gradient_accumulation_is_exact(tmp_path, kind, config):
    data = write_rows(tmp_path / f"{kind}.jsonl", kind)
    full = first_step_gradients(tmp_path, data, 4, 1, **config)
    accumulated = first_step_gradients(tmp_path, data, 2, 2, **config)
    assert_same_gradients(full, accumulated)
    if config.get("loss") == "bt_ties" and "tie_theta" not in config:
        assert TIE_PARAMETER in full and full[TIE_PARAMETER].abs() > 0
    if config.get("length_debias") or kind == "ratings":
        assert full["score.weight"].shape[0] == 2  # a length head, or two attributes


def test_plackett_luce_is_exact_with_the_plain_and_deduplicating_collators(tmp_path):
    data = write_rows(tmp_path / "rankings.jsonl", "rankings")
    shared = first_step_gradients(tmp_path, data, 4, 1, loss="plackett_luce")
    for dedupe in (False, True):
        plain = first_step_gradients(
            tmp_path,
            data,
            2,
            2,
            collator=lambda pad, d=dedupe: PreferenceCollator(pad, dedupe=d),
            loss="plackett_luce",
        )
        for name in shared:
            torch.testing.assert_close(plain[name], shared[name], atol=GRADIENT_ROUNDOFF, rtol=0, msg=name)


def test_ranking_items_are_batched_as_their_pairs_and_encoded_once(tiny_tokenizer, tmp_path):
    data = load_preference_data(
        DataArguments(dataset_name=write_rows(tmp_path / "r.jsonl", "rankings"), eval_fraction=0.0, max_length=64),
        tiny_tokenizer, rankings=True,
    )  # fmt: skip
    items = [data.train[i] for i in range(3)]
    assert [len(item["ranking_ids"]) for item in items] == [2, 3, 4]
    pairs = pairs_of_rankings(items)
    assert sum(p["weight"] for p in pairs) == pytest.approx(3.0)  # each ranking weighs 1
    batch = PrefixSharingCollator(tiny_tokenizer.pad_token_id)(items)
    assert len(batch["reward_index"]) == 2 + 3 + 4  # each response encoded once
    # The losses of a ranking of two are Bradley-Terry's; rankings are rebuilt from the pairs.
    rewards = torch.randn(len(batch["reward_index"]))
    chosen, rejected = rewards[batch["chosen_index"]], rewards[batch["rejected_index"]]
    losses, weights = ranking_losses(chosen, rejected, batch)
    torch.testing.assert_close(weights, torch.ones(3))
    torch.testing.assert_close(losses[0], bradley_terry_loss(chosen[:1], rejected[:1])[0])


def test_compute_metrics_reports_tie_likelihoods():
    # alpha = log 3: d = 0 gives P(tie) = 1/2 and P(win) = 1/4, d = log 3 gives P(win) = 1/2 (tests/test_loss.py).
    alpha = np.log(3.0)
    predictions = np.array([[0.0, 0.0, alpha], [1.0, 1.0, alpha], [alpha, 0.0, alpha]])
    metrics = compute_metrics(EvalPrediction(predictions=predictions, label_ids=np.array([1, 0, 0])))
    assert metrics["tie_log_likelihood"] == pytest.approx(np.log(0.5))
    assert metrics["win_log_likelihood"] == pytest.approx((np.log(0.25) + np.log(0.5)) / 2)
    assert metrics["tie_theta"] == pytest.approx(3.0)
    assert metrics["accuracy_non_tie"] == pytest.approx(0.75)  # a model tie (0.5) and a win


def reload_and_score(out, texts):
    plain = AutoModelForSequenceClassification.from_pretrained(out).eval()
    scorer = RewardScorer.from_pretrained(str(out))
    with torch.no_grad():
        rewards = [plain(**scorer.tokenizer(t, return_tensors="pt")).logits[0, 0].item() for t in texts]
    np.testing.assert_allclose(rewards, scorer.score_texts(texts), atol=1e-5, rtol=0)
    return plain


@pytest.mark.parametrize(
    "kind, config",
    [
        ("ties", ["--loss", "bt_ties"]),
        ("rankings", ["--loss", "plackett_luce"]),
        ("ties", ["--length_debias", "true"]),
    ],
    ids=["bt_ties", "plackett_luce", "length_debias"],
)
def test_each_objective_trains_from_the_cli_and_reloads_in_plain_transformers(tmp_path, kind, config):
    from reward_trainer.cli import parse_args

    data = write_rows(tmp_path / f"{kind}.jsonl", kind, n=40)
    out = tmp_path / "model"
    flags = ["--dataset_name", data, "--output_dir", str(out), "--max_steps", "6", "--per_device_train_batch_size",
             "8", "--learning_rate", "1e-3", "--eval_fraction", "0.3", "--max_length", "64", "--disable_tqdm", "true",
             "--eval_strategy", "no", *config]  # fmt: skip
    metrics = train(*parse_args(flags))
    assert "eval_accuracy" in metrics
    saved = json.loads((out / "config.json").read_text())
    weights = load_file(out / "model.safetensors")
    assert len(saved.get("id2label", {0: ""})) == 1
    assert weights["score.weight"].shape[0] == 1 and TIE_PARAMETER not in weights
    if "bt_ties" in config:
        assert saved["tie_theta"] == pytest.approx(metrics["eval_tie_theta"]) and saved["tie_theta"] > 1
        assert metrics["eval_tie_theta"] != pytest.approx(2.0)  # learned: moved from its start
        assert "eval_tie_log_likelihood" in metrics
    if "--length_debias" in config:
        assert -1 <= metrics["eval_reward_length_spearman"] <= 1
    texts = [json.loads(line).get("prompt", "") + " red blue" for line in open(data)][:6]
    reload_and_score(out, texts)


def test_length_debias_with_lora_saves_the_reward_head(tmp_path):
    out = tmp_path / "lora"
    model_args = ModelArguments(use_peft=True, lora_r=4, lora_alpha=8, lora_dropout=0.0)
    args = args_for(tmp_path, "lora", max_steps=4, per_device_train_batch_size=8, length_debias=True)
    args.output_dir = str(out)
    train(model_args, DataArguments(dataset_name=write_rows(tmp_path / "t.jsonl", "ties"), max_length=64), args)
    weights = load_file(out / "model.safetensors")
    assert weights["score.weight"].shape[0] == 1
    reload_and_score(out, ["cat dog | q1?\nanswer: red", "owl | q2?\nanswer: blue green"])


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind, config",
    [("ties", ["--loss", "bt_ties", "--length_debias", "true", "--length_correlation_weight", "0"]),
     ("rankings", ["--loss", "plackett_luce"])],
    ids=["bt_ties_length_debias", "plackett_luce"],
)  # fmt: skip
def test_two_processes_match_one_process(tmp_path, kind, config):
    """DDP: 2 processes x 4 items per step == 1 process x 8: per-step losses (the per-item and per-step terms) and
    weights, tie parameter included, in float64 plain SGD (bounds: conftest's `assert_same_sgd_training`)."""
    import sys

    from conftest import (
        REPO_ROOT,
        assert_same_sgd_training,
        float64_hook,
        free_port,
        outputs,
        run_together,
        subprocess_env,
    )

    data = write_rows(tmp_path / f"{kind}.jsonl", kind, n=48)
    run = ["scripts/train_reward.py", "--dataset_name", data, "--max_steps", "4", "--logging_steps", "1",
           "--learning_rate", "1e-3", "--eval_fraction", "0", "--max_length", "64", "--disable_tqdm", "true",
           "--save_strategy", "steps", "--save_steps", "4", "--bf16", "false", "--optim", "sgd", *config]  # fmt: skip
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "accelerate_configs/cpu.yaml",
                "--main_process_port", str(free_port())]  # fmt: skip
    results = run_together(
        {"two": [*launcher, *run, "--per_device_train_batch_size", "4", "--output_dir", str(tmp_path / "two")],
         "one": [sys.executable, *run, "--per_device_train_batch_size", "8", "--output_dir", str(tmp_path / "one")]},
        tmp_path / "logs", timeout=600, cwd=REPO_ROOT, env=subprocess_env(float64_hook(tmp_path / "hook")),
    )  # fmt: skip
    assert [code for code, _ in results.values()] == [0, 0], outputs(results)
    assert (tmp_path / "two" / "checkpoint-4" / "rng_state_1.pth").exists()  # really 2 processes
    # The tie parameter learns at --tie_learning_rate (1e-2), the fastest rate of the run.
    assert_same_sgd_training(tmp_path / "one" / "checkpoint-4", tmp_path / "two" / "checkpoint-4", 1e-2)


@pytest.mark.slow
def test_resume_gives_the_uninterrupted_weights_and_tie_parameter(tmp_path):
    """Resume from the checkpoint of step 3: the final model (tie theta, reward head) is the uninterrupted one's."""
    data = write_rows(tmp_path / "ties.jsonl", "ties", n=48)

    def run(name, steps, resume=None):  # the checkpoints hold the length head and the tie parameter
        args = args_for(tmp_path, name, max_steps=steps, per_device_train_batch_size=4, save_strategy="steps",
                        save_steps=3, loss="bt_ties", length_debias=True, train_sampling_strategy="group_by_length")  # fmt: skip
        args.resume_from_checkpoint = resume
        train(ModelArguments(), DataArguments(dataset_name=data, eval_fraction=0.0, max_length=64), args)
        return tmp_path / name

    import shutil

    reference = run("reference", 6)
    # The state a run stopped after step 3 leaves (the schedule is that of 6 steps), resumed in a new folder.
    shutil.copytree(reference / "checkpoint-3", tmp_path / "resumed" / "checkpoint-3")
    resumed = run("resumed", 6, resume="auto")
    # Exact: the same operations in the same order on one machine, from a checkpoint that holds the state to the bit
    # (see tests/test_checkpoints.py); any difference is state lost, not roundoff.
    assert (
        json.loads((resumed / "config.json").read_text())["tie_theta"]
        == json.loads((reference / "config.json").read_text())["tie_theta"]
    )
    expected, got = load_file(reference / "model.safetensors"), load_file(resumed / "model.safetensors")
    for name, value in expected.items():
        assert torch.equal(value, got[name]), name


def test_ratings_format_groups_responses_by_prompt_and_counts_every_row(tiny_tokenizer, tmp_path):
    path = write_rows(tmp_path / "ratings.jsonl", "ratings", n=6)  # 2, 3, 2, 3, 2, 3 responses: 15 rows
    data = load_preference_data(
        DataArguments(dataset_name=path, attributes=["helpfulness", "correctness"], eval_fraction=0.0), tiny_tokenizer
    )
    assert data.attributes == ["helpfulness", "correctness"]
    assert data.report["input_rows"] == 15 and data.report["kept"] + data.report["ties"] == 15
    pair = data.train[0]  # prompt 0: helpfulness 0 and 2 -> the second response is chosen; correctness missing, 1
    assert pair["chosen_ratings"][0] == 2 and pair["rejected_ratings"][0] == 0
    assert np.isnan(pair["rejected_ratings"][1]) and pair["chosen_ratings"][1] == 1
    assert len(data.train) == 3 * 1 + 3 * 3  # pairs of each prompt's responses (equal mean ratings: ties)


@pytest.mark.parametrize(
    "row, problem",
    [
        ({"prompt": "p", "response": "r", "helpfulness": "good", "correctness": 1}, "row 2: field 'helpfulness': expected a finite number, got 'good'"),
        ({"prompt": "p", "response": "r", "helpfulness": None, "correctness": None}, "row 2: field 'helpfulness': no rating"),
        ({"prompt": "p", "response": 3, "helpfulness": 1, "correctness": 1}, "row 2: field 'response': expected a string"),
    ],
)  # fmt: skip
def test_bad_rating_names_file_row_and_field(tiny_tokenizer, tmp_path, row, problem):
    from reward_trainer.errors import DataError

    path = tmp_path / "bad.jsonl"
    good = {"prompt": "p", "response": "s", "helpfulness": 1, "correctness": 2}
    path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    args = DataArguments(dataset_name=str(path), attributes=["helpfulness", "correctness"], eval_fraction=0.0)
    with pytest.raises(DataError, match=f"{path}: {problem}"):
        load_preference_data(args, tiny_tokenizer)


def test_missing_attribute_column_names_the_file(tiny_tokenizer, tmp_path):
    from reward_trainer.errors import DataError

    path = write_rows(tmp_path / "ratings.jsonl", "ratings", n=4)
    args = DataArguments(dataset_name=path, attributes=["helpfulness", "verbosity"])
    with pytest.raises(DataError, match=f"{path}: has no attribute column 'verbosity'"):
        load_preference_data(args, tiny_tokenizer)


def test_attributes_train_save_k_labels_and_score_every_attribute(tmp_path):
    from reward_trainer.cli import parse_args

    data = write_rows(tmp_path / "ratings.jsonl", "ratings", n=40)
    out = tmp_path / "model"
    flags = ["--dataset_name", data, "--attributes", "helpfulness", "correctness", "--attribute_weights", "0.75",
             "0.25", "--loss", "regression", "--output_dir", str(out), "--max_steps", "6", "--per_device_train_batch_size",
             "8", "--learning_rate", "1e-3", "--eval_fraction", "0.3", "--max_length", "64", "--disable_tqdm", "true",
             "--eval_strategy", "no"]  # fmt: skip
    metrics = train(*parse_args(flags))
    for key in ("eval_rmse/helpfulness", "eval_rmse/correctness", "eval_rating_spearman/correctness", "eval_accuracy"):
        assert np.isfinite(metrics[key]), key
    saved = json.loads((out / "config.json").read_text())
    assert saved["id2label"] == {"0": "helpfulness", "1": "correctness"} and saved["attribute_weights"] == [0.75, 0.25]
    texts = ["cat dog | q1?\nanswer: red", "owl | q2?\nanswer: blue green", "fox | q3?\nanswer: gold"]
    plain = AutoModelForSequenceClassification.from_pretrained(out).eval()  # plain transformers: K outputs
    scorer = RewardScorer.from_pretrained(str(out))
    with torch.no_grad():
        logits = torch.cat([plain(**scorer.tokenizer(t, return_tensors="pt")).logits for t in texts])  # (3, 2)
    attributes = scorer.score_attributes(texts)
    np.testing.assert_allclose([[a["helpfulness"], a["correctness"]] for a in attributes], logits.numpy(), atol=1e-5)
    np.testing.assert_allclose(scorer.score_texts(texts), (logits @ torch.tensor([0.75, 0.25])).numpy(), atol=1e-5)
    scorer.set_attribute_weights({"correctness": 1.0})
    np.testing.assert_allclose(scorer.score_texts(texts), logits[:, 1].numpy(), atol=1e-5)


def test_length_debias_draws_batches_at_random(tmp_path):
    """The length term's correlations are per micro-batch: length-sorted batches would hide length from them."""
    assert (
        args_for(tmp_path, "d", length_debias=True, train_sampling_strategy="group_by_length").train_sampling_strategy
        == "random"
    )
    assert args_for(tmp_path, "s", length_debias=True).train_sampling_strategy == "sequential"  # as asked
    assert (
        args_for(tmp_path, "b", train_sampling_strategy="group_by_length").train_sampling_strategy == "group_by_length"
    )
