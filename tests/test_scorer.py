"""RewardScorer: same rewards as a plain one-text forward, for any batching and padding side; normalization."""

import json
import math
import random

import pytest
import torch
from conftest import flex_attention_runs_here
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from reward_trainer import RewardScorer
from reward_trainer.chat import DEFAULT_CHAT_TEMPLATE
from reward_trainer.quickstart import make_pairs
from reward_trainer.scorer import reward_stats_from_metrics


@pytest.fixture(scope="module")
def texts():
    pairs = make_pairs(24, seed=3)
    rng = random.Random(0)
    # Lengths vary a lot, so batches hold much padding.
    return [p["prompt"] * rng.randint(1, 4) + p["chosen"] for p in pairs]


def plain_rewards(path, texts):
    """One text at a time, no padding, the way the README's reload snippet does it."""
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    with torch.no_grad():
        return [model(**tokenizer(t, return_tensors="pt")).logits[0, 0].item() for t in texts]


def test_scores_equal_plain_transformers_one_at_a_time(trained_checkpoint, texts):
    scorer = RewardScorer.from_pretrained(str(trained_checkpoint))
    expected = plain_rewards(trained_checkpoint, texts)
    assert max(abs(a - b) for a, b in zip(scorer.score_texts(texts), expected)) <= 1e-5
    assert len(set(expected)) > 1  # the texts do get different rewards


def test_score_tokenizes_prompt_plus_response_like_training(trained_checkpoint):
    scorer = RewardScorer.from_pretrained(str(trained_checkpoint))
    pairs = make_pairs(5, seed=1)
    prompts, responses = [p["prompt"] for p in pairs], [p["chosen"] for p in pairs]
    texts = [p + r for p, r in zip(prompts, responses)]
    assert scorer.score(prompts, responses) == pytest.approx(scorer.score_texts(texts), abs=1e-5)
    # The text's own tokens, nothing appended: the reward is read at the response's last token.
    ids = scorer.tokenize(texts)[0]
    assert (
        ids == scorer.tokenizer(texts)["input_ids"] == scorer.tokenizer(texts, add_special_tokens=False)["input_ids"]
    )
    assert (
        ids[0][-1]
        == scorer.tokenizer(" red", add_special_tokens=False)["input_ids"][-1]
        != scorer.tokenizer.eos_token_id
    )
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        scorer.score(prompts[:2], responses[:1])


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_batch_invariance(trained_checkpoint, texts, padding_side):
    """Alone, in one big batch, in small batches, shuffled: the same reward within 1e-5."""
    alone = RewardScorer.from_pretrained(str(trained_checkpoint), max_batch_tokens=1).score_texts(texts)
    scorer = RewardScorer.from_pretrained(str(trained_checkpoint), padding_side=padding_side, max_batch_tokens=10**6)
    one_batch = scorer.score_texts(texts)
    scorer.max_batch_tokens = 200
    assert len(scorer.batches(scorer.tokenizer(texts)["input_ids"])) > 2
    small_batches = scorer.score_texts(texts)
    order = list(range(len(texts)))
    random.Random(1).shuffle(order)
    shuffled = scorer.score_texts([texts[i] for i in order])
    unshuffled = [0.0] * len(texts)
    for position, i in enumerate(order):
        unshuffled[i] = shuffled[position]
    for rewards in (one_batch, small_batches, unshuffled):
        assert max(abs(a - b) for a, b in zip(rewards, alone)) <= 1e-5


def test_left_padding_needs_position_ids(trained_checkpoint, texts):
    """GPT-2 does not derive positions from the attention mask: without the scorer's position ids, left padding
    would change the rewards. This guards the reason the scorer passes them."""
    scorer = RewardScorer.from_pretrained(str(trained_checkpoint), padding_side="left", max_batch_tokens=10**6)
    rows = scorer.tokenizer(texts)["input_ids"]
    with_positions = scorer.forward(rows)
    scorer.takes_position_ids = False
    without_positions = scorer.forward(rows)
    assert max(abs(a - b) for a, b in zip(with_positions, without_positions)) > 1e-3


def test_batches_respect_the_token_budget():
    scorer = RewardScorer.__new__(RewardScorer)
    scorer.max_batch_tokens = 12
    ids = [[0] * n for n in (2, 5, 3, 6, 1)]
    # Longest first: 6 (1 row x 6), then 5+3 would be 2 x 5 = 10 <= 12, adding 2 gives 3 x 5 = 15 > 12.
    assert scorer.batches(ids) == [[3, 1], [2, 0, 4]]
    assert scorer.batches([]) == []


def test_long_texts_keep_their_end_and_are_counted(trained_checkpoint):
    scorer = RewardScorer.from_pretrained(str(trained_checkpoint), max_length=8)
    prompt, response = "cat dog fox owl bee ant | code of cat?\nanswer:", " red"
    ids = scorer.tokenizer(prompt + response, truncation=False)["input_ids"]
    assert len(ids) > 8
    with torch.no_grad():
        expected = scorer.model(input_ids=torch.tensor([ids[-8:]])).logits[0, 0].item()  # the last 8 tokens
    assert scorer.score_texts([prompt + response])[0] == pytest.approx(expected, abs=1e-5)
    # With the prompt known, as training's `keep_end` cuts: the prompt from the left, the response whole.
    assert scorer.score([prompt], [response])[0] == pytest.approx(expected, abs=1e-5)
    assert scorer.truncated_texts == 2
    assert scorer.tokenize([prompt + response, "red"]) == (
        [ids[-8:], scorer.tokenizer("red")["input_ids"]],
        [True, False],
    )


def test_reward_stats_from_metrics_by_hand():
    # chosen all 1, rejected all -1: pooled mean 0, pooled std 1.
    metrics = {"eval_chosen_reward_mean": 1.0, "eval_rejected_reward_mean": -1.0}
    metrics |= {"eval_chosen_reward_std": 0.0, "eval_rejected_reward_std": 0.0}
    assert reward_stats_from_metrics(metrics) == (0.0, 1.0)
    # Same means, stds 3 and 1: pooled variance (9 + 1) / 2 = 5.
    metrics = {"eval_chosen_reward_mean": 2.0, "eval_rejected_reward_mean": 2.0}
    metrics |= {"eval_chosen_reward_std": 3.0, "eval_rejected_reward_std": 1.0}
    assert reward_stats_from_metrics(metrics) == (2.0, math.sqrt(5.0))


def test_normalization_stored_after_training(trained_checkpoint, texts):
    config = json.loads((trained_checkpoint / "config.json").read_text())
    metrics = json.loads((trained_checkpoint / "eval_results.json").read_text())
    mean, std = reward_stats_from_metrics(metrics)
    contract = config["reward_contract"]
    assert contract["reward_mean"] == pytest.approx(mean) and contract["reward_std"] == pytest.approx(std) and std > 0

    scorer = RewardScorer.from_pretrained(str(trained_checkpoint))
    raw, normalized = scorer.score_texts(texts), scorer.score_texts(texts, normalize=True)
    assert normalized == pytest.approx([(r - mean) / std for r in raw], abs=1e-5)
    # Plain transformers still returns raw rewards.
    assert plain_rewards(trained_checkpoint, texts[:3]) == pytest.approx(raw[:3], abs=1e-5)


def test_normalize_without_stats_is_an_error(tmp_path, tiny_tokenizer):
    from reward_trainer.quickstart import build_tiny_gpt2

    build_tiny_gpt2(tiny_tokenizer).save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    scorer = RewardScorer.from_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="no reward_mean/reward_std"):
        scorer.score_texts(["a"], normalize=True)


def test_score_conversations(trained_checkpoint):
    scorer = RewardScorer.from_pretrained(str(trained_checkpoint))
    conversation = [{"role": "user", "content": "code of cat?"}, {"role": "assistant", "content": "red"}]
    text = "user: code of cat?\n\nassistant: red\n\n"  # training's default template for conversational data
    assert (
        scorer.tokenizer.apply_chat_template(conversation, chat_template=DEFAULT_CHAT_TEMPLATE, tokenize=False) == text
    )
    assert scorer.score_conversations([conversation]) == scorer.score_texts([text])
    # A tokenizer's own template wins over the default.
    scorer.tokenizer.chat_template = "{% for m in messages %}<{{ m['content'] }}>{% endfor %}"
    assert scorer.score_conversations([conversation]) == scorer.score_texts(["<code of cat?><red>"])


def test_pickle_only_checkpoint_is_refused(tmp_path):
    from reward_trainer.errors import ModelLoadError

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"never unpickled")
    with pytest.raises(ModelLoadError, match="only pickle weights"):
        RewardScorer.from_pretrained(str(tmp_path))


def tiny_causal_scorer(name, tokenizer, **kwargs):
    """A 2-layer GPT-2 (learned positions) or Llama (rotary, grouped-query attention) reward model from a config."""
    from transformers import GPT2ForSequenceClassification, LlamaConfig, LlamaForSequenceClassification

    from reward_trainer.quickstart import tiny_gpt2_config

    torch.manual_seed(0)
    special = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id, "num_labels": 1}
    if name == "gpt2":
        model = GPT2ForSequenceClassification(tiny_gpt2_config(tokenizer, n_embd=32))
    else:
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            **special,
        )
        model = LlamaForSequenceClassification(config)
    return RewardScorer(model, tokenizer, **kwargs)


def grouped_prompts_and_responses():
    """Eight completions for each of five prompts, of varied lengths, one repeated. The first prompt stops inside
    the word "answer", so the byte-level BPE merges its last token with the response's first: there the prompt's
    own ids are not a prefix of the text's ids."""
    rng = random.Random(4)
    prompts, responses = [], []
    for j, pair in enumerate(make_pairs(5, seed=8)):
        prompt, start = (pair["prompt"][: -len("swer:")], "swer: ") if j == 0 else (pair["prompt"], " ")
        for k in range(8):
            words = rng.choices(["red", "tan", "sky", "cat", "dog", "|", "?", "code", "of"], k=rng.randint(1, 12))
            response = start + " ".join(words)
            prompts.append(prompt)
            responses.append(response if k != 7 else responses[-1])
    return prompts, responses


@pytest.mark.parametrize("name", ["gpt2", "llama"])
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_grouped_scoring_equals_each_text_alone(tiny_tokenizer, name, padding_side):
    prompts, responses = grouped_prompts_and_responses()
    texts = [p + r for p, r in zip(prompts, responses)]
    plain = tiny_causal_scorer(name, tiny_tokenizer, group_prompts=False)
    alone = [plain.forward([ids])[0] for ids in tiny_tokenizer(texts)["input_ids"]]  # one text, no padding
    assert len({round(r, 6) for r in alone}) > 20  # the texts do get different rewards

    # The seam: for some texts the prompt's own ids are not a prefix of the whole text's ids.
    prompt_ids = [tiny_tokenizer(p)["input_ids"] for p in prompts]
    assert any(tiny_tokenizer(t)["input_ids"][: len(p)] != p for t, p in zip(texts, prompt_ids))

    for budget in (10**6, 300, 60, 1):
        scorer = tiny_causal_scorer(name, tiny_tokenizer, padding_side=padding_side, max_batch_tokens=budget)
        assert scorer.group_prompts
        order = list(range(len(texts)))
        random.Random(budget).shuffle(order)
        shuffled = scorer.score([prompts[i] for i in order], [responses[i] for i in order])
        grouped = [0.0] * len(texts)
        for position, i in enumerate(order):
            grouped[i] = shuffled[position]
        assert max(abs(a - b) for a, b in zip(grouped, alone)) <= 1e-4, budget
    trl_call = scorer(prompts=prompts, completions=responses)  # TRL's reward-function call, text prompts
    assert max(abs(a - b) for a, b in zip(trl_call, alone)) <= 1e-4


@pytest.mark.skipif(
    not flex_attention_runs_here(), reason="flex attention needs torch's flex module and a C++ compiler"
)
def test_grouped_scoring_under_flex_attention_equals_each_text_alone(tiny_tokenizer):
    """The grouped path follows training's decision: flex attention gets the tree as a `BlockMask` (1e-4, as above)."""
    prompts, responses = grouped_prompts_and_responses()
    scorer = tiny_causal_scorer("llama", tiny_tokenizer, max_batch_tokens=10**6)
    alone = [
        scorer.forward([ids])[0] for ids in tiny_tokenizer([p + r for p, r in zip(prompts, responses)])["input_ids"]
    ]
    scorer.model.config._attn_implementation = "flex_attention"
    flex = RewardScorer(scorer.model, tiny_tokenizer, max_batch_tokens=10**6)
    assert flex.group_prompts
    assert max(abs(a - b) for a, b in zip(flex.score(prompts, responses), alone)) <= 1e-4


def test_grouped_scoring_under_flash_attention_takes_the_plain_path(tiny_tokenizer, caplog):
    """Flash kernels take no custom mask: the scorer keeps its plain path and says so once."""
    scorer = tiny_causal_scorer("llama", tiny_tokenizer)
    scorer.model.config._attn_implementation = "flash_attention_2"
    with caplog.at_level("WARNING", logger="reward_trainer"):
        flash = RewardScorer(scorer.model, tiny_tokenizer)
    assert not flash.group_prompts
    assert sum("prefix sharing off" in r.getMessage() for r in caplog.records) == 1


def test_grouped_scoring_encodes_each_prompt_once(tiny_tokenizer):
    """Forty texts over five prompts: the tokens through the model are about the prompts once plus the responses."""
    prompts, responses = grouped_prompts_and_responses()
    scorer = tiny_causal_scorer("llama", tiny_tokenizer, max_batch_tokens=10**6)
    seen = []
    hook = scorer.model.model.embed_tokens.register_forward_hook(lambda m, args, out: seen.append(args[0].numel()))
    scorer.score(prompts, responses)
    hook.remove()
    ids = tiny_tokenizer([p + r for p, r in zip(prompts, responses)])["input_ids"]
    prompt_ids = {p: tiny_tokenizer(p)["input_ids"] for p in prompts}
    shared = sum(len(v) - 1 for v in prompt_ids.values())  # at most the last prompt token differs
    assert sum(seen) <= sum(map(len, ids)) - 7 * shared + 3 * len(prompt_ids)  # 7 of 8 prompt copies saved
    assert len(seen) == 1


def test_grouped_conversations_equal_each_alone(tiny_tokenizer):
    scorer = tiny_causal_scorer("gpt2", tiny_tokenizer, max_batch_tokens=10**6)
    prompt = [{"role": "user", "content": "code of cat?"}]
    other = [{"role": "user", "content": "dog owl | code of fox?"}]
    prompts = [prompt, prompt, other, prompt, other]
    completions = [[{"role": "assistant", "content": c}] for c in ("red", "tan sky", "oak", "red red", "plum")]
    grouped = scorer(prompts=prompts, completions=completions)  # TRL's call for conversational data
    alone = [scorer.score_conversations([p + c])[0] for p, c in zip(prompts, completions)]
    assert max(abs(a - b) for a, b in zip(grouped, alone)) <= 1e-4 and len(set(alone)) == 5


def test_encoders_keep_the_plain_path(tiny_tokenizer):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tiny_tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=1,
        pad_token_id=tiny_tokenizer.pad_token_id,
    )
    scorer = RewardScorer(BertForSequenceClassification(config), tiny_tokenizer)
    assert not scorer.group_prompts
    prompts, responses = grouped_prompts_and_responses()
    assert scorer.score(prompts, responses) == scorer.score_texts([p + r for p, r in zip(prompts, responses)])


def test_grouped_scoring_of_several_attributes_gives_their_weighted_sum(tiny_tokenizer):
    """A head of three attribute outputs: grouped scoring returns the weighted sum, as the plain path does, and
    `score_attributes` every output."""
    prompts, responses = grouped_prompts_and_responses()
    grouped = tiny_causal_scorer("llama", tiny_tokenizer)
    head = torch.nn.Linear(32, 3, bias=False)
    grouped.model.score = head
    grouped.model.config.num_labels = 3
    grouped.model.config.id2label = {0: "a", 1: "b", 2: "c"}
    grouped.set_attribute_weights([0.5, -1.0, 2.0])
    plain = RewardScorer(grouped.model, tiny_tokenizer, group_prompts=False)
    plain.set_attribute_weights([0.5, -1.0, 2.0])
    ours, reference = grouped.score(prompts, responses), plain.score(prompts, responses)
    assert grouped.group_prompts and not plain.group_prompts
    assert max(abs(a - b) for a, b in zip(ours, reference)) <= 1e-4
    attributes = plain.score_attributes([prompts[0] + responses[0]])[0]
    assert attributes.keys() == {"a", "b", "c"}
    assert sum(w * attributes[k] for k, w in zip("abc", (0.5, -1.0, 2.0))) == pytest.approx(reference[0], abs=1e-5)
