"""RewardTrainer: gradient accumulation, evaluation metrics, and an end-to-end run reloaded by plain transformers."""

import copy
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import GRADIENT_ROUNDOFF, adam_roundoff_bound, float64_default
from transformers import EvalPrediction, TrainerCallback

from reward_trainer import PreferenceCollator, RewardConfig, RewardTrainer
from reward_trainer.config import DataArguments, ModelArguments
from reward_trainer.data import load_preference_data
from reward_trainer.loading import load_reward_model
from reward_trainer.metrics import compute_metrics


class GradientCapture(TrainerCallback):
    """Keeps a copy of every parameter's gradient just before the first optimizer step."""

    def __init__(self, model):
        self.model, self.grads = model, None

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.grads is None:
            self.grads = {n: p.grad.detach().clone() for n, p in self.model.named_parameters() if p.grad is not None}


def first_step_gradients(tmp_path, batch_size, accumulation, weights=None):
    """The first step's gradients, in float64 (so that two batchings compare to `GRADIENT_ROUNDOFF`)."""
    torch.manual_seed(0)
    with float64_default():
        model, tokenizer = load_reward_model(ModelArguments())
    data = load_preference_data(DataArguments(num_synthetic_pairs=40), tokenizer, seed=0)
    train = data.train.select(range(8))
    if weights is not None:
        train = train.remove_columns([c for c in ("weight",) if c in train.column_names]).add_column("weight", weights)
    args = RewardConfig(
        output_dir=str(tmp_path / f"b{batch_size}x{accumulation}"),
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        max_grad_norm=0.0,
        eval_strategy="no",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    capture = GradientCapture(model)
    trainer = RewardTrainer(
        model=model,
        args=args,
        data_collator=PreferenceCollator(tokenizer.pad_token_id),
        train_dataset=train,
        callbacks=[capture],
    )
    trainer.train()
    return capture.grads


def test_gradient_accumulation_matches_the_full_batch(tmp_path):
    full = first_step_gradients(tmp_path, batch_size=4, accumulation=1)
    accumulated = first_step_gradients(tmp_path, batch_size=2, accumulation=2)
    assert full.keys() == accumulated.keys() and len(full) > 0
    for name in full:
        torch.testing.assert_close(accumulated[name], full[name], atol=GRADIENT_ROUNDOFF, rtol=0, msg=name)


def test_gradient_accumulation_is_exact_with_unequal_pair_weights(tmp_path):
    # Micro-batches of different total weight: a per-micro-batch mean would weigh them equally and differ.
    weights = [1.0, 1.0, 0.25, 0.25, 1.0, 1.0, 1.0, 1.0]
    full = first_step_gradients(tmp_path, batch_size=4, accumulation=1, weights=weights)
    accumulated = first_step_gradients(tmp_path, batch_size=2, accumulation=2, weights=weights)
    for name in full:
        torch.testing.assert_close(accumulated[name], full[name], atol=GRADIENT_ROUNDOFF, rtol=0, msg=name)


def test_given_trls_batches_the_losses_are_trls(tmp_path):
    """Same model, same pairs, the stock random order: TRL's RewardTrainer and ours (prefix sharing, row packing)
    log the same loss at every step and end with the same weights: the same objective, computed differently.

    In float64, where the two differ by roundoff alone, so that the bounds follow from the arithmetic on any CPU
    (conftest's `adam_roundoff_bound`); a difference in the objective shows orders of magnitude above them.
    """
    from trl import RewardConfig as TRLConfig
    from trl import RewardTrainer as TRLTrainer

    torch.manual_seed(0)
    model, tokenizer = load_reward_model(ModelArguments())
    model = model.double()
    pairs = load_preference_data(DataArguments(num_synthetic_pairs=48), tokenizer, seed=0).train
    pairs = pairs.select_columns(["chosen_ids", "rejected_ids"])
    steps, learning_rate = 6, 1e-3
    common = dict(
        per_device_train_batch_size=8, max_steps=steps, learning_rate=learning_rate, logging_steps=1,
        eval_strategy="no", save_strategy="no", report_to="none", use_cpu=True, seed=0, disable_tqdm=True,
        bf16=False,
    )  # fmt: skip
    runs = {}
    for name, trainer_class, config in (
        ("trl", TRLTrainer, TRLConfig(tmp_path / "trl", gradient_checkpointing=False, **common)),
        ("ours", RewardTrainer, RewardConfig(tmp_path / "ours", train_sampling_strategy="random", **common)),
    ):
        trained = copy.deepcopy(model)
        trainer = trainer_class(model=trained, args=config, train_dataset=pairs, processing_class=tokenizer)
        trainer.train()
        # What `adam_roundoff_bound` assumes: the stock AdamW, eps 1e-8, linear decay, no warmup.
        assert config.optim in ("adamw_torch", "adamw_torch_fused") and config.adam_epsilon == 1e-8
        assert config.lr_scheduler_type == "linear" and config.warmup_steps == 0
        losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
        runs[name] = losses, {n: p.detach().clone() for n, p in trained.named_parameters()}
        if name == "ours":
            assert type(trainer.data_collator).__name__ == "PrefixSharingCollator"
    assert len(runs["ours"][0]) == len(runs["trl"][0]) == steps
    # The Trainer sums the logged loss in a float32 tensor: each logged value is the float64 loss rounded to
    # float32, so two float64 losses a roundoff apart log equal or one float32 spacing apart.
    for ours, trl in zip(runs["ours"][0], runs["trl"][0]):
        assert abs(ours - trl) <= np.spacing(np.float32(max(abs(ours), abs(trl)))), (ours, trl)
    bound = adam_roundoff_bound(learning_rate, steps)
    largest = max(float((p - runs["trl"][1][n]).abs().max()) for n, p in runs["ours"][1].items())
    assert largest <= bound, (largest, bound)
    moved = max(float((p.detach() - runs["ours"][1][n]).abs().max()) for n, p in model.named_parameters())
    assert moved > 100 * bound, "training did not move the weights: the comparison would prove nothing"


def test_compute_metrics_counts_ties_as_half():
    rewards = np.array([[2.0, 1.0], [0.0, 1.0], [1.0, 1.0], [3.0, 0.0]])  # right, wrong, model tie, human tie
    human_tie = np.array([0, 0, 0, 1])
    columns = {"chosen": rewards[:, 0], "rejected": rewards[:, 1]}
    metrics = compute_metrics(EvalPrediction(predictions=columns, label_ids={"tie": human_tie}))
    assert metrics["accuracy"] == pytest.approx((1 + 0 + 0.5 + 0.5) / 4)
    assert metrics["tie_rate"] == pytest.approx(0.25)
    assert metrics["margin"] == pytest.approx((1 - 1 + 0 + 3) / 4)
    assert metrics["chosen_reward_mean"] == pytest.approx(1.5)
    assert metrics["rejected_reward_std"] == pytest.approx(np.std([1.0, 1.0, 1.0, 0.0]))


RELOAD_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    assert not any(m.startswith("reward_trainer") for m in sys.modules)
    path, texts = sys.argv[1], json.loads(sys.argv[2])
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    with torch.no_grad():
        rewards = [model(**tok(t, return_tensors="pt")).logits[0, 0].item() for t in texts]
    assert not any(m.startswith("reward_trainer") for m in sys.modules)
    print(json.dumps(rewards))
    """
)


@pytest.mark.slow  # a whole `train` run, then a fresh interpreter: ~4 s
def test_trained_model_reloads_in_plain_transformers(tmp_path):
    from reward_trainer.cli import parse_args
    from reward_trainer.quickstart import make_pairs
    from reward_trainer.train import train

    out = tmp_path / "model"
    metrics = train(
        *parse_args(
            [
                "--config",
                "recipes/quickstart.yaml",
                "--output_dir",
                str(out),
                "--num_synthetic_pairs",
                "200",
                "--num_train_epochs",
                "1",
                "--disable_tqdm",
                "true",
            ]
        )
    )
    assert "eval_accuracy" in metrics
    assert json.loads((out / "eval_results.json").read_text())["eval_accuracy"] == pytest.approx(
        metrics["eval_accuracy"]
    )
    assert (out / "model.safetensors").exists() and not list(out.glob("pytorch_model*"))

    pairs = make_pairs(3, seed=99)
    prompts = [p["prompt"] for p in pairs] * 2
    responses = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    texts = [p + r for p, r in zip(prompts, responses)]
    reloaded = json.loads(
        subprocess.run(
            [sys.executable, "-c", RELOAD_SCRIPT, str(out), json.dumps(texts)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )

    ours = project_scores(out, prompts, responses)
    np.testing.assert_allclose(reloaded, ours, atol=1e-5, rtol=0)
    assert len(set(np.round(ours, 4))) > 1  # a trained model, not a constant


def project_scores(path, prompts, responses):
    """The project's own batched scoring path for a saved checkpoint."""
    from reward_trainer.scorer import RewardScorer

    return RewardScorer.from_pretrained(str(path)).score(prompts, responses)
