"""Prefix sharing, deduplication and length grouping give the plain forward's rewards and gradients."""

import pytest
import torch
from conftest import flex_attention_runs_here
from datasets import Dataset
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    LlamaConfig,
    LlamaForSequenceClassification,
)

from reward_trainer import PreferenceCollator, RewardConfig, RewardTrainer
from reward_trainer.collator import PrefixSharingCollator, collator_for
from reward_trainer.loss import bradley_terry_loss
from reward_trainer.packing import (
    Tree,
    flex_block_mask,
    pack_trees,
    prefix_shared_batch,
    shared_prefix_length,
    shared_row_length,
    supports_prefix_sharing,
)
from reward_trainer.trainer import PairLengthSampler, pair_rewards

PAD = 0
ROWS = [
    {"chosen_ids": [5, 6, 7, 8, 9, 1], "rejected_ids": [5, 6, 7, 3, 1]},  # shared prompt 5 6 7
    {"chosen_ids": [9, 2, 1], "rejected_ids": [4, 4, 4, 4, 1]},  # nothing shared
    {"chosen_ids": [5, 6, 1], "rejected_ids": [5, 6, 1, 2, 1]},  # chosen is a prefix of rejected
    {"chosen_ids": [3, 3, 2, 1], "rejected_ids": [3, 3, 2, 1]},  # identical sides
    {"chosen_ids": [5, 6, 7, 8, 9, 1], "rejected_ids": [5, 6, 7, 2, 2, 2, 1]},  # reuses row 0's chosen
]


def build(name, attn):
    torch.manual_seed(0)
    if name == "gpt2":  # learned absolute positions
        config = GPT2Config(
            vocab_size=16, n_positions=32, n_embd=32, n_layer=2, n_head=4, num_labels=1, pad_token_id=PAD
        )
        model = GPT2ForSequenceClassification(config)
    elif name == "llama":  # rotary positions, grouped-query attention
        config = LlamaConfig(
            vocab_size=16,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            num_labels=1,
            pad_token_id=PAD,
        )
        model = LlamaForSequenceClassification(config)
    else:  # SmolLM2-135M-Instruct's shape, scaled down: 3 query heads per key-value head, rope base 1e5
        config = LlamaConfig(
            vocab_size=16, hidden_size=48, intermediate_size=128, num_hidden_layers=2, num_attention_heads=6,
            num_key_value_heads=2, rope_theta=100000.0, rms_norm_eps=1e-5, num_labels=1, pad_token_id=PAD,
        )  # fmt: skip
        model = LlamaForSequenceClassification(config)
    model.config._attn_implementation = attn
    return model.eval()  # no dropout: the two forwards must see the same network


def test_shared_prefix_length():
    assert shared_prefix_length([1, 2, 3], [1, 2, 4, 5]) == 2
    assert shared_prefix_length([1, 2], [1, 2, 3]) == 2
    assert shared_prefix_length([7], [1]) == 0


CUDA = pytest.param("cuda", marks=pytest.mark.gpu)  # `-m gpu` runs the same check on the GPU's kernels


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("name", ["gpt2", "llama", "smollm2-shaped"])
@pytest.mark.parametrize("pack", [True, False])
def test_prefix_sharing_matches_plain_forward_and_gradients(name, attn, pack, device):
    model = build(name, attn).to(device)
    assert supports_prefix_sharing(model)
    c0, r0, g0 = rewards_and_grads(model, PreferenceCollator(PAD)(ROWS))
    shared = PrefixSharingCollator(PAD, pack=pack)(ROWS)
    assert shared["input_ids"].numel() < PreferenceCollator(PAD)(ROWS)["input_ids"].numel()
    c1, r1, g1 = rewards_and_grads(model, shared)
    torch.testing.assert_close(c1, c0, atol=1e-4, rtol=0)
    torch.testing.assert_close(r1, r0, atol=1e-4, rtol=0)
    assert g0.keys() == g1.keys() and len(g0) > 0
    for key in g0:
        torch.testing.assert_close(g1[key], g0[key], atol=1e-4, rtol=1e-4, msg=key)


@pytest.mark.skipif(
    not flex_attention_runs_here(), reason="flex attention needs torch's flex module and a C++ compiler"
)
@pytest.mark.parametrize("name", ["llama", "smollm2-shaped"])
def test_flex_attention_takes_the_tree_as_a_block_mask(name):
    """Under flex attention the tree mask becomes a `BlockMask`, and the rewards equal the plain forward's.

    Forward only: this torch's flex attention has no backward on the CPU (CUDA runs it; `scripts/gpu_checks.py`).
    1e-5: both forwards are fp32 and differ only in the order of the softmax sums over the same keys."""
    model = build(name, "flex_attention")
    assert supports_prefix_sharing(model)
    shared = PrefixSharingCollator(PAD)(ROWS)
    mask = shared["attention_mask"]  # (R, 1, T, T)
    block_mask = flex_block_mask(mask)
    r, q, kv = torch.meshgrid(*(torch.arange(n) for n in (mask.shape[0], mask.shape[2], mask.shape[3])), indexing="ij")
    assert torch.equal(block_mask.mask_mod(r, 0, q, kv), mask[:, 0])  # the same mask, token by token
    with torch.no_grad():
        want = pair_rewards(build(name, "sdpa"), PreferenceCollator(PAD)(ROWS))
        got = pair_rewards(model, shared)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["llama", "smollm2-shaped"])
def test_flex_attention_prefix_sharing_gradients_on_cuda(name):
    """On CUDA flex attention has a backward: rewards and gradients equal the plain forward's (1e-4, as above)."""
    model = build(name, "flex_attention").to("cuda")
    c0, r0, g0 = rewards_and_grads(build(name, "sdpa").to("cuda"), PreferenceCollator(PAD)(ROWS))
    c1, r1, g1 = rewards_and_grads(model, PrefixSharingCollator(PAD)(ROWS))
    torch.testing.assert_close(torch.stack([c1, r1]), torch.stack([c0, r0]), atol=1e-4, rtol=0)
    for key in g0:
        torch.testing.assert_close(g1[key], g0[key], atol=1e-4, rtol=1e-4, msg=key)


@pytest.mark.parametrize("attn", ["flash_attention_2", "flash_attention_3"])
def test_flash_attention_turns_prefix_sharing_off_with_one_warning(attn, caplog):
    """Flash kernels take no custom mask: the plain collator is picked, with one warning naming the kernel and the
    cost. No kernel is needed: the decision reads the config's `_attn_implementation`."""
    model = build("llama", attn)
    args = RewardConfig(output_dir="unused", prefix_sharing=True, dedupe_sequences=False)
    with caplog.at_level("WARNING", logger="reward_trainer"):
        collator = collator_for(model, args, PAD)
    assert collator == PreferenceCollator(PAD)
    warnings = [r.getMessage() for r in caplog.records if "prefix sharing off" in r.getMessage()]
    assert len(warnings) == 1
    assert repr(attn) in warnings[0] and "every prompt once per response" in warnings[0]
    caplog.clear()
    bert = BertForSequenceClassification(
        BertConfig(vocab_size=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, num_labels=1)
    )
    with caplog.at_level("WARNING", logger="reward_trainer"):
        assert supports_prefix_sharing(build("gpt2", "sdpa"))
        assert not supports_prefix_sharing(bert)  # the plain path by design: nothing to warn about
    assert not any("prefix sharing off" in r.getMessage() for r in caplog.records)


def rewards_and_grads(model, batch):
    batch = {key: value.to(next(model.parameters()).device) for key, value in batch.items()}
    model.zero_grad()
    chosen, rejected = pair_rewards(model, batch)
    bradley_terry_loss(chosen, rejected).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return chosen.detach(), rejected.detach(), grads


def test_prefix_mask_hides_chosen_from_rejected():
    batch = prefix_shared_batch([{"chosen_ids": [5, 6, 7], "rejected_ids": [5, 6, 8, 9]}], PAD)
    # one row: prompt 5 6 | chosen 7 | rejected 8 9
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 2, 3]]
    mask = batch["attention_mask"][0, 0].int().tolist()
    assert mask[3] == [1, 1, 0, 1, 0]  # rejected's first token: the prompt and itself, not chosen
    assert mask[4] == [1, 1, 0, 1, 1]
    assert batch["reward_index"].tolist() == [2, 4]


def test_ranking_encodes_each_response_once():
    prompt = [5, 6, 7]
    a, b, c = prompt + [8, 1], prompt + [9, 9, 1], prompt + [2, 1]
    ranking = [  # a > b > c as three pairs of one group
        {"chosen_ids": a, "rejected_ids": b, "group": 0},
        {"chosen_ids": a, "rejected_ids": c, "group": 0},
        {"chosen_ids": b, "rejected_ids": c, "group": 0},
    ]
    deduped = PreferenceCollator(PAD, dedupe=True)(ranking)
    assert deduped["input_ids"].shape[0] == 3  # not 6
    assert deduped["chosen_index"].tolist() == [0, 0, 1] and deduped["rejected_index"].tolist() == [1, 2, 2]
    shared = PrefixSharingCollator(PAD)(ranking)
    # one row: the prompt once, then each response once
    assert shared["input_ids"].tolist() == [prompt + [8, 1] + [9, 9, 1] + [2, 1]]
    model = build("gpt2", "sdpa")
    with torch.no_grad():
        want = pair_rewards(model, PreferenceCollator(PAD)(ranking))
        for batch in (deduped, shared):
            got = pair_rewards(model, batch)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_pack_trees_fills_rows_within_capacity():
    trees = [Tree([i], [], [[1] * n]) for i, n in enumerate([6, 2, 4, 3, 1])]
    rows = pack_trees(trees, capacity=6)
    assert sorted(t.members[0] for row in rows for t in row) == [0, 1, 2, 3, 4]
    assert all(sum(len(t) for t in row) <= 6 for row in rows)
    assert len(rows) == 3  # 6 | 4+2 | 3+1


def test_encoders_keep_the_plain_path():
    config = BertConfig(
        vocab_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, num_labels=1
    )
    bert = BertForSequenceClassification(config)
    assert not supports_prefix_sharing(bert)
    args = RewardConfig(output_dir="unused", prefix_sharing=True)
    assert isinstance(collator_for(bert, args, PAD), PreferenceCollator)
    assert isinstance(collator_for(build("gpt2", "sdpa"), args, PAD), PrefixSharingCollator)
    args = RewardConfig(output_dir="unused", prefix_sharing=False, dedupe_sequences=False)
    assert collator_for(build("gpt2", "sdpa"), args, PAD) == PreferenceCollator(PAD)


def test_length_grouped_batches_carry_less_padding(tmp_path):
    lengths = torch.randperm(64, generator=torch.Generator().manual_seed(0)) + 2
    rows = [{"chosen_ids": [3] * int(n), "rejected_ids": [4] * int(n - i % 2)} for i, n in enumerate(lengths)]
    dataset = Dataset.from_list(rows)

    def padding(strategy):
        args = RewardConfig(
            output_dir=str(tmp_path),
            per_device_train_batch_size=4,
            train_sampling_strategy=strategy,
            eval_strategy="no",
        )
        model = build("gpt2", "sdpa")
        trainer = RewardTrainer(model=model, args=args, train_dataset=dataset, data_collator=PreferenceCollator(PAD))
        if strategy == "group_by_length":  # the longer side of each pair
            assert trainer.train_dataset["length"] == [int(n) for n in lengths]
        pads = 0
        for batch in trainer.get_train_dataloader():
            pads += int((batch["input_ids"] == PAD).sum())
        return pads

    assert padding("group_by_length") < padding("random") / 8


def test_shared_row_length_counts_the_prompt_once():
    assert shared_row_length([1, 2, 3, 4], [1, 2, 5]) == 5  # [1 2 | 3 4 | 5]
    assert shared_row_length([1, 2], [1, 2, 3]) == 4  # [1 | 2 | 2 3]: chosen keeps its last token
    assert shared_row_length([7], [8, 9]) == 3  # no shared prompt
    row = prefix_shared_batch([{"chosen_ids": [1, 2, 3, 4], "rejected_ids": [1, 2, 5]}], PAD)
    assert row["input_ids"].shape == (1, 5)


def test_prefix_sharing_batches_pairs_by_their_shared_row_length(tmp_path):
    # Same longer side (6), very different shared rows: 7 tokens when the prompt is long, 11 when there is none.
    rows = [
        {"chosen_ids": [1] * 5 + [2], "rejected_ids": [1] * 5 + [3]},
        {"chosen_ids": [2] * 6, "rejected_ids": [3] * 5},
    ]
    args = RewardConfig(output_dir=str(tmp_path), eval_strategy="no")
    trainer = RewardTrainer(model=build("gpt2", "sdpa"), args=args, train_dataset=Dataset.from_list(rows))
    assert isinstance(trainer.data_collator, PrefixSharingCollator)
    assert trainer.train_dataset["length"] == [7, 11]


def test_pair_length_sampler_sorts_within_batches_and_shuffles_batches():
    lengths = [5, 1, 9, 3, 7, 2, 8, 4]
    sampler = PairLengthSampler(lengths, batch_size=2, seed=0)
    order = list(sampler)
    assert sorted(order) == list(range(8))
    batches = [sorted(lengths[i] for i in order[k : k + 2]) for k in range(0, 8, 2)]
    assert sorted(batches) == [[1, 2], [3, 4], [5, 7], [8, 9]]  # neighbours in length share a batch
    sampler.set_epoch(1)
    assert list(sampler) != order  # a new order each epoch
