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
from reward_trainer.loss import OBJECTIVES, bradley_terry_loss, rating_regression_loss
from reward_trainer.metrics import compute_metrics
from reward_trainer.train import train
from reward_trainer.trainer import ranking_losses

WORDS = "red blue green gold grey pink cat dog owl fox bee ant".split()


def write_rows(path, kind: str, n: int = 24, seed: int = 0):
    """`ties`: explicit-prompt pairs, every third a tie; `rankings`: K = 2..4 responses with scores; `ratings`: one
    response per row, 2 or 3 per prompt, rated on `helpfulness` and `correctness` (0-4, some missing)."""
    rng = random.Random(seed)
    if kind == "ratings_scattered":
        return write_scattered_ratings(path, n, seed)
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


def write_scattered_ratings(path, n: int = 24, seed: int = 0) -> str:
    """The `ratings` format with 1, 2 or 3 responses per prompt (prompt i has 1 + i % 3), its rows shuffled so that a
    prompt's rows are apart; every response rated on `helpfulness` and `correctness` (0-4, some correctness missing)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        prompt = " ".join(rng.choices(WORDS, k=2)) + f" | q{i}?\nanswer:"
        for j in range(1 + i % 3):
            correctness = None if (i + j) % 4 == 0 else (i * 3 + j) % 5
            response = " " + " ".join(rng.choices(WORDS, k=1 + j))
            rows.append(
                {"prompt": prompt, "response": response, "helpfulness": (i + 2 * j) % 5, "correctness": correctness}
            )
    rng.shuffle(rows)
    with open(path, "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
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
    objective = OBJECTIVES[args.loss]
    data = load_preference_data(
        DataArguments(dataset_name=data_file, eval_fraction=0.0, max_length=64, attributes=attributes), tokenizer, seed=0,
        ties_in_loss=objective.ties_in_loss, rankings=objective.data == "rankings",
        single_responses=objective.data == "ratings",
    )  # fmt: skip
    prepare_objective(model, args, attributes=data.attributes)
    capture = Capture()
    collator = collator(tokenizer.pad_token_id) if collator else None
    trainer = RewardTrainer(model=model, args=args, train_dataset=data.train.select(range(8)),
                            data_collator=collator, callbacks=[capture(model)])  # fmt: skip
    if args.micro_batch_tokens:  # the bound really cuts the batch
        parts = trainer.data_collator([data.train[i] for i in range(8)])["micro_batches"]
        assert len(parts) >= 3
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
        ("ratings_scattered", {"loss": "regression"}),  # single responses (pairs of themselves) among the pairs
    ],
    ids=[
        "bt_ties",
        "bt_ties_fixed",
        "plackett_luce",
        "length_debias",
        "regression",
        "attributes_bt_ties",
        "regression_single_responses",
    ],  # fmt: skip
)
def test_gradient_accumulation_is_exact(tmp_path, kind, config):
    data = write_rows(tmp_path / f"{kind}.jsonl", kind)
    full = first_step_gradients(tmp_path, data, 4, 1, **config)
    accumulated = first_step_gradients(tmp_path, data, 2, 2, **config)
    assert_same_gradients(full, accumulated)
    if config.get("loss") == "bt_ties" and "tie_theta" not in config:
        assert TIE_PARAMETER in full and full[TIE_PARAMETER].abs() > 0
    if config.get("length_debias") or kind.startswith("ratings"):
        assert full["score.weight"].shape[0] == 2  # a length head, or two attributes


@pytest.mark.parametrize(
    "kind, config",
    [("ties", {"loss": "bt_ties"}), ("rankings", {"loss": "plackett_luce"}), ("ties", {"prefix_sharing": False}),
     ("ratings", {"loss": "bt_ties", "regression_weight": 0.5})],
    ids=["bt_ties", "plackett_luce", "plain_padding", "attributes"],
)  # fmt: skip
def test_micro_batches_give_the_batch_gradient(tmp_path, kind, config):
    """A batch of 8 cut into micro-batches of at most 40 token positions (3 to 8 of them) gives the gradient of
    the whole batch: the same terms summed in another order (float32: a few ulps)."""
    data = write_rows(tmp_path / f"{kind}.jsonl", kind)
    whole = first_step_gradients(tmp_path, data, 8, 1, micro_batch_tokens=0, **config)
    cut = first_step_gradients(tmp_path, data, 8, 1, micro_batch_tokens=40, **config)
    assert_same_gradients(whole, cut)


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
    predictions = {
        "chosen": np.array([0.0, 1.0, alpha]),
        "rejected": np.array([0.0, 1.0, 0.0]),
        "tie_alpha": [alpha] * 3,
    }
    metrics = compute_metrics(EvalPrediction(predictions=predictions, label_ids={"tie": np.array([1, 0, 0])}))
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
     ("rankings", ["--loss", "plackett_luce"]),
     ("ratings_scattered", ["--loss", "regression", "--attributes", "helpfulness", "correctness", "--eval_fraction",
                            "0.3", "--per_device_eval_batch_size", "3"])],
    ids=["bt_ties_length_debias", "plackett_luce", "regression_single_responses"],
)  # fmt: skip
def test_two_processes_match_one_process(tmp_path, kind, config):
    """DDP: 2 processes x 4 items per step == 1 process x 8: per-step losses (the per-item and per-step terms) and
    weights, tie parameter included, in float64 plain SGD (bounds: conftest's `assert_same_sgd_training`); with
    evaluation (ratings: the attributes' columns, single responses), the same metrics from the gathered columns."""
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
    if "--eval_fraction" in config:
        metrics_one, metrics_two = (
            json.loads((tmp_path / name / "eval_results.json").read_text()) for name in ("one", "two")
        )
        report = json.loads((tmp_path / "one" / "data_report.json").read_text())
        assert metrics_two["eval_num_pairs"] == metrics_one["eval_num_pairs"]
        assert metrics_two["eval_single_responses"] == metrics_one["eval_single_responses"] > 0
        assert metrics_one["eval_num_pairs"] + metrics_one["eval_single_responses"] == report["eval_pairs"]
        assert report["eval_pairs"] % 6 != 0  # 2 processes x batch 3 pad the last batch: duplicates would show
        # float64 weights that agree to the SGD bound above give rewards that agree to ~1e-12: the metrics agree far
        # inside 1e-9 unless a pair was dropped or counted twice.
        for key in (
            "eval_accuracy",
            "eval_rmse/helpfulness",
            "eval_rmse/correctness",
            "eval_rating_pearson/helpfulness",
        ):
            assert metrics_two[key] == pytest.approx(metrics_one[key], abs=1e-9), key


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


def test_ratings_wherever_their_rows_are_single_responses_and_ties_are_counted(tiny_tokenizer, tmp_path):
    """Prompt a: three responses, rows apart (mean ratings 1.5, 4, 0: three pairs, weight 1/3 each); b, c, e: one
    response each; d: three responses of equal mean rating (a tie: its three pairs, weight 1/3 each). 9 rows:
    kept 3, ties 3, single responses 3. A loss that reads each response alone trains on a single response as the
    pair of it with itself (places (0, 0), weight 1); a pairwise loss leaves it out, and the report says which."""
    rows = [("a", " x", 1, 2), ("b", " y", 3, None), ("a", " z", 4, 4), ("c", " w", 2, 2), ("a", " v", 0, 0),
            ("d", " u", 1, 1), ("d", " t", 1, 1), ("e", " s", 0, 1), ("d", " r", 1, 1)]  # fmt: skip
    path = tmp_path / "ratings.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"{p}?", "response": r, "helpfulness": h, "correctness": c}) + "\n"
                            for p, r, h, c in rows))  # fmt: skip
    args = DataArguments(dataset_name=str(path), attributes=["helpfulness", "correctness"], eval_fraction=0.0)
    for single_responses in (True, False):
        data = load_preference_data(args, tiny_tokenizer, single_responses=single_responses)
        report = data.report
        assert report["input_rows"] == 9 and report["single_responses_trained"] is single_responses
        assert (report["kept"], report["ties"], report["single_responses"]) == (3, 3, 3)
        assert report["train_rows"] == 5  # one row per prompt, wherever its rows were
        pairs = data.train.to_list()
        assert len(pairs) == 6 + 3 * single_responses
        single = [p for p in pairs if p["chosen_response"] == p["rejected_response"]]
        assert len(single) == 3 * single_responses
        for pair in single:
            assert pair["chosen_ids"] == pair["rejected_ids"] and pair["weight"] == 1.0 and pair["tie"] == 0.0
            assert pair["chosen_ratings"] == pair["rejected_ratings"] or np.isnan(pair["chosen_ratings"][1])
        ties = [p for p in pairs if p["tie"] == 1.0]
        assert len(ties) == 3 and all(p["weight"] == pytest.approx(1 / 3) for p in ties)
        a = [p for p in pairs if p["tie"] == 0.0 and p["chosen_response"] != p["rejected_response"]]
        assert len(a) == 3 and sum(p["weight"] for p in a) == pytest.approx(1.0)


def test_a_prompts_scattered_rows_are_held_out_together(tiny_tokenizer, tmp_path):
    """The held-out split hashes the prompt, after a prompt's rows are grouped: each prompt is on one side, whole."""
    import re

    n = 60
    path = write_rows(tmp_path / "ratings_scattered.jsonl", "ratings_scattered", n=n)
    args = DataArguments(dataset_name=path, attributes=["helpfulness", "correctness"], eval_fraction=0.5)
    data = load_preference_data(args, tiny_tokenizer, single_responses=True)
    assert data.report["input_rows"] == sum(1 + i % 3 for i in range(n))
    assert data.report["single_responses"] == n // 3 and data.report["train_rows"] + data.report["eval_rows"] == n

    def prompts(pairs):
        return {int(re.search(r"q(\d+)\?", tiny_tokenizer.decode(ids)).group(1)) for ids in pairs["chosen_ids"]}

    train, held_out = prompts(data.train), prompts(data.eval)
    assert train.isdisjoint(held_out) and train | held_out == set(range(n)) and len(held_out) > 10


def test_single_response_ratings_train_with_regression_and_default_flags(tmp_path):
    """A file whose prompts have one response each trains with `--loss regression --attributes ...`: every row in
    data_report.json, and the eval loss is each held-out response's own squared error, recomputed here with plain
    transformers from the saved model (float tolerance: the same fp32 forward, padded differently)."""
    from reward_trainer.cli import main
    from reward_trainer.data.formats import prompt_bucket

    rows = [{"prompt": f"{WORDS[i % 12]} | q{i}?\nanswer:", "response": " " + " ".join(WORDS[i % 5 : i % 5 + 2]),
             "helpfulness": i % 5, "correctness": None if i % 4 == 0 else (3 * i) % 5} for i in range(200)]  # fmt: skip
    data = tmp_path / "single.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "model"
    argv = ["train", "--dataset_name", str(data), "--loss", "regression", "--attributes", "helpfulness",
            "correctness", "--output_dir", str(out), "--max_steps", "3", "--bf16", "false", "--disable_tqdm", "true"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "data_report.json").read_text())
    assert report["input_rows"] == report["single_responses"] == 200 and report["single_responses_trained"]
    assert report["train_pairs"] == report["train_rows"] and report["eval_pairs"] == report["eval_rows"] > 0
    metrics = json.loads((out / "eval_results.json").read_text())
    assert metrics["eval_single_responses"] == report["eval_rows"] and metrics["eval_num_pairs"] == 0
    held_out = [row for row in rows if prompt_bucket(row["prompt"], 42) < 0.05]  # the default seed and eval_fraction
    assert len(held_out) == report["eval_rows"] > 1
    scorer = RewardScorer.from_pretrained(str(out))
    with torch.no_grad():
        outputs = torch.cat([scorer.model(**scorer.tokenizer(r["prompt"] + r["response"], return_tensors="pt")).logits
                             for r in held_out])  # fmt: skip
    ratings = torch.tensor(
        [[r["helpfulness"], np.nan if r["correctness"] is None else r["correctness"]] for r in held_out]
    )
    own = rating_regression_loss(outputs, ratings.float()).mean().item()
    assert metrics["eval_loss"] == pytest.approx(own, abs=1e-4)


def test_prediction_columns_are_named(tmp_path, tiny_tokenizer):
    """`prediction_step` returns named columns (`metrics.PREDICTION_COLUMNS`, `metrics.LABEL_COLUMNS`) that the
    stock `Trainer.predict` concatenates key by key: ratings add each attribute's rewards and ratings, and a single
    response is a row whose two places are equal."""
    from reward_trainer.metrics import LABEL_COLUMNS, PREDICTION_COLUMNS

    path = write_rows(tmp_path / "ratings_scattered.jsonl", "ratings_scattered", n=12)
    torch.manual_seed(0)
    model, tokenizer = load_reward_model(ModelArguments())
    attributes = ["helpfulness", "correctness"]
    args = DataArguments(dataset_name=path, attributes=attributes, eval_fraction=0.0, max_length=64)
    data = load_preference_data(args, tokenizer, single_responses=True)
    config = args_for(tmp_path, "p", loss="regression", per_device_eval_batch_size=5)  # batches of unequal size
    prepare_objective(model, config, attributes=data.attributes)
    prediction = RewardTrainer(model=model, args=config).predict(data.train)
    columns, labels = prediction.predictions, prediction.label_ids
    assert (
        set(columns) == {"chosen", "rejected", "chosen_attributes", "rejected_attributes"} <= set(PREDICTION_COLUMNS)
    )
    assert (
        {"tie", "group", "chosen_response", "chosen_ratings", "rejected_ratings"} <= set(labels) <= set(LABEL_COLUMNS)
    )
    n = len(data.train)
    assert columns["chosen"].shape == (n,) and columns["chosen_attributes"].shape == labels[
        "chosen_ratings"
    ].shape == (n, 2)
    np.testing.assert_allclose(columns["chosen"], columns["chosen_attributes"] @ [0.5, 0.5], rtol=1e-6)
    single = labels["chosen_response"] == labels["rejected_response"]
    assert single.sum() == 4 and (columns["chosen"][single] == columns["rejected"][single]).all()
    np.testing.assert_array_equal(labels["group"], data.train["group"])


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
