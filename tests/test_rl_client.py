"""A real RL client: TRL's GRPOTrainer trains a tiny policy for a few steps with our reward model."""

import pytest
import torch
from conftest import tiny_policy
from datasets import Dataset
from transformers import AutoTokenizer

from reward_trainer import RewardScorer
from reward_trainer.quickstart import make_pairs

trl = pytest.importorskip("trl")


def test_grpo_logs_the_rewards_of_our_scorer(trained_checkpoint, tmp_path):
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(trained_checkpoint)  # the policy speaks the reward model's tokens
    policy = tiny_policy(tokenizer)
    prompts = Dataset.from_dict({"prompt": [p["prompt"] for p in make_pairs(8, seed=9)]})
    scorer = RewardScorer.from_pretrained(str(trained_checkpoint))
    assert scorer.group_prompts  # each GRPO group's prompt is encoded once
    args = trl.GRPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=6,
        max_steps=2,
        logging_steps=1,
        learning_rate=1e-3,
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        save_strategy="no",
        seed=0,
    )
    trainer = trl.GRPOTrainer(
        model=policy, reward_funcs=scorer, args=args, train_dataset=prompts, processing_class=tokenizer
    )
    trainer.train()

    logged = trainer._logs  # the prompts, completions and rewards of the last generation batch
    assert len(logged["completion"]) == args.generation_batch_size
    ours = RewardScorer.from_pretrained(str(trained_checkpoint), max_batch_tokens=1)  # one text per batch
    expected = ours.score(list(logged["prompt"]), list(logged["completion"]))
    assert list(logged["rewards"]["RewardScorer"]) == pytest.approx(expected, abs=1e-5)
    assert any("rewards/RewardScorer/mean" in entry for entry in trainer.state.log_history)
