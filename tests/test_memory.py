"""Memory that fits: batches cut into micro-batches by token positions, and the bound chosen from a budget."""

import pytest
import torch

from reward_trainer import RewardConfig, RewardTrainer, hardware, memory
from reward_trainer.collator import PreferenceCollator, PrefixSharingCollator
from reward_trainer.config import DataArguments, ModelArguments
from reward_trainer.data import load_preference_data
from reward_trainer.loading import load_reward_model

GIB = 2**30


def pairs(lengths):
    """Pairs whose chosen and rejected sequences share a 2-token prompt, of the given total lengths."""
    return [
        {"chosen_ids": [1, 2] + [3 + i] * (n - 2), "rejected_ids": [1, 2] + [40 + i] * (n - 2)}
        for i, n in enumerate(lengths)
    ]


@pytest.mark.parametrize("collator", [PrefixSharingCollator(0), PreferenceCollator(0)], ids=["shared", "padded"])
def test_a_batch_is_cut_in_order_into_micro_batches_that_fit(collator):
    rows = pairs([6, 9, 4, 12, 5, 7])
    collator.max_tokens = None
    assert "micro_batches" not in collator(rows)
    collator.max_tokens = 24
    parts = collator(rows)["micro_batches"]
    # Each part fits (or is one pair), the parts keep the rows' order, and every pair is in exactly one part.
    sizes, start, cut = [], 0, []
    for part in parts:
        n = len(part["chosen_index"]) if "chosen_index" in part else len(part["input_ids"]) // 2
        cut.append(rows[start : start + n])
        sizes.append(collator.positions(rows[start : start + n]))
        start += n
    assert start == len(rows) and len(parts) > 1
    assert all(size <= 24 or len(part) == 1 for size, part in zip(sizes, cut))
    # The parts are greedy: the next pair would not have fit in the part before it.
    for before, after in zip(cut, cut[1:]):
        assert collator.positions([*before, after[0]]) > 24
    collator.max_tokens = None


def tiny_trainer(tmp_path, **kwargs):
    torch.manual_seed(0)
    model, tokenizer = load_reward_model(ModelArguments())
    data = load_preference_data(DataArguments(num_synthetic_pairs=40, max_length=64), tokenizer, seed=0)
    args = RewardConfig(output_dir=str(tmp_path), use_cpu=True, disable_tqdm=True, eval_strategy="no", **kwargs)
    return RewardTrainer(model=model, args=args, train_dataset=data.train, eval_dataset=data.eval)


def test_the_bound_follows_the_budget(tmp_path, monkeypatch):
    """micro_batch_tokens = (budget - held - step) / (rate x overhead), with the rate measured on the model: a budget
    1 GiB larger allows 1 GiB / (rate x overhead) more positions. On a GPU-like device (no CPU cap) the bound is
    that formula; on the CPU at most `CPU_MICRO_BATCH_TOKENS`."""
    trainer = tiny_trainer(tmp_path, micro_batch_tokens=0)
    held = memory.held_bytes(torch.device("cpu"))
    monkeypatch.setattr(memory, "held_bytes", lambda device: held)  # a fixed baseline for the arithmetic below
    monkeypatch.setattr(memory, "CPU_MICRO_BATCH_TOKENS", 10**9)

    def plan(budget_gb):
        trainer.model.gradient_checkpointing_disable()
        return memory.plan_memory(
            trainer.model,
            torch.device("cpu"),
            trainer.probe_forward,
            longest_sequence=30,
            positions_of_pair=lambda n: 2 * n,
            trainable_parameters=1000,
            half_precision=False,
            budget_gb=budget_gb,
        )

    step = 1000 * 12
    small, large = plan((held + step) / GIB + 0.05), plan((held + step) / GIB + 1.05)
    assert not small.gradient_checkpointing and small.bytes_per_position > 0
    expected = int(0.05 * GIB / (small.bytes_per_position * memory.BACKWARD_OVERHEAD))
    assert abs(small.micro_batch_tokens - expected) <= 1
    gained = large.micro_batch_tokens - small.micro_batch_tokens
    assert gained == pytest.approx(GIB / (small.bytes_per_position * memory.BACKWARD_OVERHEAD), rel=1e-3)


def test_a_budget_too_small_for_one_pair_turns_on_gradient_checkpointing(tmp_path, monkeypatch):
    trainer = tiny_trainer(tmp_path, micro_batch_tokens=0)
    held = memory.held_bytes(torch.device("cpu"))
    monkeypatch.setattr(memory, "held_bytes", lambda device: held)
    rate = memory.bytes_per_position(trainer.model, trainer.probe_forward, 30)
    longest = 2 * 200
    # Room for half of the longest pair without checkpointing.
    budget = held + 1000 * 12 + longest * rate * memory.BACKWARD_OVERHEAD / 2
    plan = memory.plan_memory(
        trainer.model, torch.device("cpu"), trainer.probe_forward, 200, lambda n: 2 * n, 1000, False, budget / GIB
    )
    assert plan.gradient_checkpointing and "turned on" in plan.reason
    assert plan.bytes_per_position < rate / 2  # each layer keeps its input only
    assert trainer.model.is_gradient_checkpointing


def test_the_default_budget_is_read_from_the_free_memory(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(hardware, "available_memory_bytes", lambda device: 3 * GIB)
    trainer = tiny_trainer(tmp_path)
    plan = trainer.memory_plan
    held = memory.held_bytes(torch.device("cpu"))
    assert plan.budget_bytes == pytest.approx(memory.BUDGET_FRACTION * (3 * GIB + held), rel=0.05)
    assert plan.micro_batch_tokens == trainer.data_collator.max_tokens <= memory.CPU_MICRO_BATCH_TOKENS
    assert "90% of the free memory" in plan.reason


def test_evaluation_of_micro_batches_gives_the_same_rewards(tmp_path):
    whole = tiny_trainer(tmp_path / "whole", micro_batch_tokens=0, per_device_eval_batch_size=16)
    cut = tiny_trainer(tmp_path / "cut", micro_batch_tokens=50, per_device_eval_batch_size=16)
    cut.model.load_state_dict(whole.model.state_dict())
    batch = next(iter(cut.get_eval_dataloader()))
    assert len(batch["micro_batches"]) > 1
    a, b = whole.predict(whole.eval_dataset), cut.predict(cut.eval_dataset)
    # The same forward per pair (rows never see each other): equal to float32 rounding of different row layouts.
    assert b.predictions.keys() == a.predictions.keys() and b.label_ids.keys() == a.label_ids.keys()
    for key in a.predictions:
        torch.testing.assert_close(
            torch.tensor(b.predictions[key]), torch.tensor(a.predictions[key]), atol=1e-5, rtol=0
        )
    for key in a.label_ids:
        assert (b.label_ids[key] == a.label_ids[key]).all(), key
    assert b.metrics["test_loss"] == pytest.approx(a.metrics["test_loss"], abs=1e-5)


def test_the_trainer_turns_checkpointing_on_when_one_pair_does_not_fit(tmp_path, caplog):
    """A budget below what the process already holds leaves no room for any pair: checkpointing is turned on, in
    the training arguments the stock `Trainer` reads too, and the run still trains (one pair per micro-batch)."""
    trainer = tiny_trainer(tmp_path, memory_budget_gb=0.001, max_steps=2, per_device_train_batch_size=4)
    assert trainer.memory_plan.gradient_checkpointing and "turned on" in trainer.memory_plan.reason
    assert trainer.args.gradient_checkpointing and trainer.model.is_gradient_checkpointing
    assert "may pass the budget" in caplog.text
    before = trainer.model.score.weight.detach().clone()
    trainer.train()
    assert not torch.equal(trainer.model.score.weight, before)
