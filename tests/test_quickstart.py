"""The built-in task cannot be solved by surface cues, and the step-by-step Python flow works with the API."""

from collections import Counter

import pytest
import torch

from reward_trainer.quickstart import CODE_BOOK, make_pairs


def accuracy(scores_chosen, scores_rejected):
    return sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(scores_chosen, scores_rejected)) / len(
        scores_chosen
    )


def test_generation_is_deterministic_and_correct():
    assert make_pairs(50, seed=3) == make_pairs(50, seed=3) != make_pairs(50, seed=4)
    for pair in make_pairs(200, seed=0):
        key = pair["prompt"].split("code of ")[1].split("?")[0]
        assert pair["chosen"] == " " + CODE_BOOK[key] != pair["rejected"]


def test_longer_response_wins_baseline_is_chance():
    test = make_pairs(2000, seed=1)
    score = accuracy([len(p["chosen"]) for p in test], [len(p["rejected"]) for p in test])
    assert 0.45 <= score <= 0.55


def test_response_only_frequency_shortcut_is_chance():
    # A shortcut that ignores the prompt: how often was this response chosen vs rejected in training?
    train, test = make_pairs(10000, seed=0), make_pairs(2000, seed=1)
    wins, losses = Counter(p["chosen"] for p in train), Counter(p["rejected"] for p in train)

    def score(response):
        return (wins[response] + 1) / (losses[response] + 1)

    acc = accuracy([score(p["chosen"]) for p in test], [score(p["rejected"]) for p in test])
    assert 0.45 <= acc <= 0.55


@pytest.mark.slow  # trains 2 epochs on 3000 pairs: ~5 s
def test_step_by_step_python_flow(tmp_path):
    """Build model, build data, train, score a few texts, save, and a `score(prompt, response)` for PPO."""
    from reward_trainer import PreferenceCollator, RewardConfig, RewardScorer, RewardTrainer
    from reward_trainer.config import DataArguments, ModelArguments
    from reward_trainer.data import load_preference_data
    from reward_trainer.loading import load_reward_model
    from reward_trainer.metrics import compute_metrics

    torch.manual_seed(0)
    model, tokenizer = load_reward_model(ModelArguments())
    data = load_preference_data(DataArguments(num_synthetic_pairs=3000), tokenizer, seed=0)
    args = RewardConfig(
        output_dir=str(tmp_path),
        num_train_epochs=2,
        per_device_train_batch_size=32,
        learning_rate=1e-3,
        warmup_steps=10,
        use_cpu=True,
        disable_tqdm=True,
        eval_strategy="no",
    )
    trainer = RewardTrainer(
        model=model,
        args=args,
        data_collator=PreferenceCollator(tokenizer.pad_token_id),
        train_dataset=data.train,
        eval_dataset=data.eval,
        compute_metrics=compute_metrics,
    )
    before = trainer.evaluate()["eval_accuracy"]
    trainer.train()
    after = trainer.evaluate()["eval_accuracy"]
    assert after > before and after > 0.7
    trainer.save_model(str(tmp_path / "rm"))
    tokenizer.save_pretrained(str(tmp_path / "rm"))

    scorer = RewardScorer.from_pretrained(str(tmp_path / "rm"))
    pair = make_pairs(1, seed=123)[0]
    chosen, rejected = scorer.score([pair["prompt"]] * 2, [pair["chosen"], pair["rejected"]])
    assert isinstance(chosen, float)

    def score(prompt: str, response: str) -> float:  # what a PPO loop calls
        return scorer.score([prompt], [response])[0]

    assert score(pair["prompt"], pair["chosen"]) == pytest.approx(chosen, abs=1e-5)
