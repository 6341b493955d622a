"""`--use_peft`: LoRA adapters plus the whole score head are trained and saved; the merged model matches."""

import pytest
import torch
from transformers import AutoModelForSequenceClassification, set_seed

from reward_trainer import RewardScorer
from reward_trainer.config import DataArguments, ModelArguments, RewardConfig
from reward_trainer.loading import load_reward_model
from reward_trainer.quickstart import make_pairs
from reward_trainer.train import train

peft = pytest.importorskip("peft")


def base_model(seed):
    """The backbone `train` starts from: the built-in model, initialised under the run's seed."""
    set_seed(seed)
    return load_reward_model(ModelArguments())[0].eval()


def test_lora_trains_and_saves_the_head_and_a_merged_model(tmp_path):
    out = tmp_path / "lora"
    model_args = ModelArguments(use_peft=True, lora_r=4, lora_alpha=8, lora_dropout=0.0)
    args = RewardConfig(
        output_dir=str(out),
        max_steps=8,
        per_device_train_batch_size=16,
        learning_rate=1e-2,
        eval_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    train(model_args, DataArguments(num_synthetic_pairs=200, max_length=64), args)
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and (out / "model.safetensors").is_file()

    initial = base_model(seed=0)
    adapter = peft.PeftModel.from_pretrained(base_model(seed=0), out / "adapter").eval()
    merged = AutoModelForSequenceClassification.from_pretrained(out).eval()  # plain transformers

    # The head was trained and saved whole: the merged head differs from its initial value.
    assert not torch.allclose(merged.score.weight, initial.score.weight)
    # The adapters were trained: the merged attention weights differ too.
    assert not torch.allclose(merged.transformer.h[0].attn.c_attn.weight, initial.transformer.h[0].attn.c_attn.weight)

    texts = [p["prompt"] + p["chosen"] for p in make_pairs(12, seed=4)]
    scorer = RewardScorer.from_pretrained(str(out))
    adapter_scorer = RewardScorer(adapter, scorer.tokenizer)
    merged_rewards, adapter_rewards = scorer.score_texts(texts), adapter_scorer.score_texts(texts)
    assert max(abs(a - b) for a, b in zip(merged_rewards, adapter_rewards)) <= 1e-5
    initial_rewards = RewardScorer(initial, scorer.tokenizer).score_texts(texts)
    assert max(abs(a - b) for a, b in zip(merged_rewards, initial_rewards)) > 1e-3


def test_lora_options_parse_from_the_command_line():
    from reward_trainer.cli import parse_args

    model_args, _, _ = parse_args(["--use_peft", "true", "--lora_r", "8", "--lora_target_modules", "c_attn", "c_proj"])
    assert model_args.use_peft and model_args.lora_r == 8 and model_args.lora_target_modules == ["c_attn", "c_proj"]
