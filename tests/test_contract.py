"""The scoring contract: saved by training, read back by the one loader, and a checkpoint without one read as it
always was (`tests/data/legacy-gpt2`, made by the code before the contract existed)."""

import json
import logging
import shutil

import pytest
import torch
from conftest import REPO_ROOT
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerFast

from reward_trainer import RewardScorer
from reward_trainer.config import DataArguments, ModelArguments, RewardConfig
from reward_trainer.contract import CONTRACT_KEY, ScoringContract, read_contract
from reward_trainer.data import load_preference_data
from reward_trainer.data.tokenizing import drop_repeated_lead

LEGACY = REPO_ROOT / "tests" / "data" / "legacy-gpt2"

# A 2-layer GPT-2 (hidden 32, 64 positions, the built-in tokenizer) trained for 15 steps by the code of commit
# 9f784ec, whose tokenizer appends EOS to every text, and its rewards on `LEGACY_TEXTS` as that code's
# `RewardScorer.from_pretrained(path, max_batch_tokens=1).score_texts(...)` computed them. To regenerate:
#     git archive 9f784ec | tar -x -C /tmp/base
#     PYTHONPATH=/tmp/base python: torch.manual_seed(0); tok = quickstart.build_tokenizer();
#       GPT2ForSequenceClassification(tiny_gpt2_config(tok, n_embd=32, n_head=2, n_positions=64)).save_pretrained(B);
#       tok.save_pretrained(B); train(ModelArguments(model_name_or_path=B), DataArguments(num_synthetic_pairs=300,
#       max_length=64), RewardConfig(output_dir=OUT, max_steps=15, per_device_train_batch_size=16, learning_rate=1e-3,
#       use_cpu=True, seed=0, bf16=False)); then score LEGACY_TEXTS (and `normalize=True`) with that RewardScorer
# and keep config.json, model.safetensors, tokenizer.json and tokenizer_config.json of OUT.
LEGACY_TEXTS = [
    "dog owl | code of cat?\nanswer: red",
    "dog owl | code of cat?\nanswer: tan",
    "ant bee elk yak | code of fox?\nanswer: sky",
    "\n\nHuman: code of cat?\n\nAssistant: red",
    "cat dog fox owl bee ant elk yak cow pig | " * 8 + "code of hen?\nanswer: plum",  # 73 tokens: cut to 64
]
LEGACY_IDS = [
    [279, 300, 265, 268, 267, 309, 32, 200, 269, 27, 329, 0],
    [279, 300, 265, 268, 267, 309, 32, 200, 269, 27, 320, 0],
    [280, 298, 303, 305, 265, 268, 267, 304, 32, 200, 269, 27, 318, 0],
    [200, 200, 41, 86, 78, 259, 27, 268, 267, 309, 32, 200, 200, 34, 84, 84, 74, 84, 85, 280, 27, 329, 0],
    [309]
    + [292, 304, 300, 298, 294, 303, 305, 307, 306, 265, 309] * 4
    + [292, 304, 300, 298, 294, 303, 305, 307, 306]
    + [265, 268, 267, 295, 32, 200, 269, 27, 326, 0],  # 64 tokens: the end of the text, EOS kept
]
LEGACY_REWARDS = [
    -0.6929592490196228,
    -0.6896238327026367,
    0.747951090335846,
    -0.5929134488105774,
    -0.6054784059524536,
]
LEGACY_NORMALIZED = [-0.8404312540201713, -0.8344839291627427, 1.7288317896763177, -0.6620412667090102,
                     -0.6844456309144146]  # fmt: skip


def test_a_checkpoint_without_a_contract_scores_as_before():
    """The same token ids (its tokenizer's appended EOS kept, the long text cut from the left to the model's 64
    positions, EOS kept) and the same rewards. The ids are compared exactly. The rewards to 1e-5: the same
    arithmetic in fp32, but a CPU with other matmul kernels (AVX2 against AVX512) sums the 32- and 128-term dot
    products in another order, a relative difference of a few 1e-7 per product through 2 layers; on the machine
    that recorded them they are equal bit for bit."""
    scorer = RewardScorer.from_pretrained(str(LEGACY), max_batch_tokens=1)
    assert scorer.contract is None and scorer.max_length == 64
    ids, cut = scorer.tokenize(LEGACY_TEXTS)
    assert ids == LEGACY_IDS and cut == [False] * 4 + [True]
    assert scorer.score_texts(LEGACY_TEXTS) == pytest.approx(LEGACY_REWARDS, abs=1e-5)
    assert scorer.score_texts(LEGACY_TEXTS, normalize=True) == pytest.approx(LEGACY_NORMALIZED, abs=1e-5)
    # Batched and grouped scoring, and the TRL reward-function call, read the same tokens.
    batched = RewardScorer.from_pretrained(str(LEGACY))
    assert batched.score_texts(LEGACY_TEXTS) == pytest.approx(LEGACY_REWARDS, abs=1e-4)
    assert batched(prompts=["dog owl | code of cat?\nanswer:"] * 2, completions=[" red", " tan"]) == pytest.approx(
        LEGACY_REWARDS[:2], abs=1e-4
    )


def test_the_contract_is_saved_and_read_back(trained_checkpoint):
    config = json.loads((trained_checkpoint / "config.json").read_text())
    contract = config[CONTRACT_KEY]
    metrics = json.loads((trained_checkpoint / "eval_results.json").read_text())
    assert contract["max_length"] == 64 and contract["truncation"] == "keep_end"  # the fixture's DataArguments
    assert contract["implicit_prompt_rendering"] == "raw" and contract["append_eos"] is False
    assert contract["loss"] == "bradley_terry" and contract["attribute_weights"] is None
    assert contract["reward_token"] == "last" and contract["special_tokens"] == "tokenizer"
    assert contract["reward_std"] > 0 and "eval_accuracy" in metrics
    assert "reward_mean" not in config and "implicit_prompt_rendering" not in config  # one place: the contract

    scorer = RewardScorer.from_pretrained(str(trained_checkpoint))
    assert scorer.contract == ScoringContract.from_dict(contract) and scorer.max_length == 64
    assert scorer.reward_mean == contract["reward_mean"] and scorer.reward_std == contract["reward_std"]
    assert RewardScorer.from_pretrained(str(trained_checkpoint), max_length=32).max_length == 32
    assert RewardScorer.from_pretrained(str(trained_checkpoint), max_length=10**6).max_length == 256  # positions


def test_checkpoints_written_during_training_carry_the_contract(tmp_path):
    from reward_trainer.train import train

    args = RewardConfig(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=8, use_cpu=True,
                        save_strategy="steps", save_steps=1, eval_strategy="no", disable_tqdm=True)  # fmt: skip
    train(ModelArguments(), DataArguments(num_synthetic_pairs=40, max_length=48, truncation="filter"), args)
    contract = read_contract(AutoModelForSequenceClassification.from_pretrained(tmp_path / "checkpoint-1").config)
    assert contract.max_length == 48 and contract.truncation == "filter" and contract.reward_mean is None


def test_append_eos_is_saved_and_followed(tmp_path):
    """`--append_eos true`: training ends every text with the EOS string (TRL RewardTrainer's rule), the contract
    says so, and the scorer does the same; plain transformers matches once the caller appends it."""
    from reward_trainer.train import train

    args = RewardConfig(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=8, use_cpu=True,
                        eval_strategy="no", disable_tqdm=True, seed=0)  # fmt: skip
    data_args = DataArguments(num_synthetic_pairs=40, append_eos=True)
    train(ModelArguments(), data_args, args)
    scorer = RewardScorer.from_pretrained(str(tmp_path), max_batch_tokens=1)
    tokenizer = scorer.tokenizer
    assert scorer.contract.append_eos
    text = "dog owl | code of cat?\nanswer: red"
    ids = scorer.tokenize([text, text + tokenizer.eos_token])[0]
    assert ids[0] == ids[1] == tokenizer(text + tokenizer.eos_token)["input_ids"]  # EOS once, never twice
    assert ids[0][-1] == tokenizer.eos_token_id
    # Training's pairs end with the same EOS.
    pairs = load_preference_data(data_args, tokenizer).train
    assert all(p["chosen_ids"][-1] == p["rejected_ids"][-1] == tokenizer.eos_token_id for p in pairs)
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        plain = model(**tokenizer(text + tokenizer.eos_token, return_tensors="pt")).logits[0, 0].item()
    assert scorer.score_texts([text])[0] == pytest.approx(plain, abs=1e-5)


def test_a_text_ending_with_eos_the_model_never_saw_is_warned_about(trained_checkpoint, caplog):
    scorer = RewardScorer.from_pretrained(str(trained_checkpoint))
    eos = scorer.tokenizer.eos_token
    with caplog.at_level(logging.WARNING, logger="reward_trainer"):
        scorer.score_texts(["dog owl | code of cat?\nanswer: red"])
        assert not caplog.records
        scorer.score_texts(["dog owl | code of cat?\nanswer: red" + eos] * 2)
    assert "2 of 2 texts end with the EOS token" in caplog.text and "--append_eos true" in caplog.text


def bos_tokenizer() -> PreTrainedTokenizerFast:
    """A Llama 3-like tokenizer: it adds BOS, and its chat template writes BOS too."""
    words = ["<|begin_of_text|>", "<|eot_id|>", "<pad>", "user", "assistant", "hi", "hello", "there", ":", "\n"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", 0)]
    )
    template = (
        "{{ bos_token }}{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} <|eot_id|> {% endfor %}"
        "{% if add_generation_prompt %}assistant : {% endif %}"
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                   pad_token="<pad>", chat_template=template)  # fmt: skip


def test_a_bos_the_chat_template_writes_is_not_repeated(tmp_path):
    """Chat-rendered text already holds the BOS of a tokenizer that adds one: training and the scorer keep it once,
    as `apply_chat_template(tokenize=True)`, TRL (add_special_tokens=False) and verl (BOS stripped, then added
    back by vLLM) do. Plain text gets the tokenizer's BOS."""
    tokenizer = bos_tokenizer()
    conversation = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]
    text = tokenizer.apply_chat_template(conversation, tokenize=False)
    doubled = tokenizer(text)["input_ids"]
    once = tokenizer.apply_chat_template(conversation, tokenize=True)["input_ids"]
    assert doubled[:2] == [0, 0] and once[:2] == [0, 3] and drop_repeated_lead(doubled, [0]) == once
    assert once == tokenizer(text, add_special_tokens=False)["input_ids"]  # TRL's GRPO
    assert once == tokenizer(text.removeprefix(tokenizer.bos_token))["input_ids"]  # verl, then vLLM

    rows = tmp_path / "pairs.jsonl"
    rows.write_text(json.dumps({"chosen": conversation, "rejected": conversation[:1] + [{"role": "assistant",
                                "content": "there"}]}) + "\n")  # fmt: skip
    pairs = load_preference_data(DataArguments(dataset_name=str(rows), eval_fraction=0.0), tokenizer).train
    assert pairs[0]["chosen_ids"] == once
    # Cut to 6 tokens: the BOS stays, once, and the prompt loses its beginning.
    short = DataArguments(dataset_name=str(rows), eval_fraction=0.0, max_length=6)
    cut = load_preference_data(short, tokenizer).train[0]["chosen_ids"]
    assert cut == [0] + once[-5:]

    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, num_labels=1, pad_token_id=2)  # fmt: skip
    scorer = RewardScorer(LlamaForSequenceClassification(config), tokenizer, contract=ScoringContract())
    assert scorer.tokenize([text, "hi there"])[0] == [once, [0, 5, 7]]
    assert scorer.tokenize([text], prompts=[text[:20]])[0] == [once]


def test_evaluate_cuts_long_texts_and_counts_them(trained_checkpoint, tmp_path):
    """A text longer than the model's positions was an index error; now it is cut as training cut it and counted."""
    from reward_trainer.cli import main

    pairs = tmp_path / "long.jsonl"
    long_prompt = "cat dog fox owl bee ant elk yak | " * 30 + "code of cat?\nanswer:"
    rows = [{"prompt": long_prompt, "chosen": " red", "rejected": " tan"}, {"prompt": "code of cat?\nanswer:",
            "chosen": " red", "rejected": " tan"}]  # fmt: skip
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "eval"
    argv = ["evaluate", "--model_name_or_path", str(trained_checkpoint), "--dataset_name", str(pairs)]
    assert main([*argv, "--output_dir", str(out), "--disable_tqdm", "true"]) == 0
    report = json.loads((out / "eval_report.json").read_text())
    assert report["max_length"] == 64 and report["truncated_pairs"] == 1 and report["truncated_texts"] == 2
    assert "pairs cut to max_length 64 tokens | 1" in (out / "eval_report.md").read_text()


def test_a_contract_copied_to_another_checkpoint_is_what_it_reads(trained_checkpoint, tmp_path):
    """The contract is data in config.json: editing it changes how the model is read, nothing else does."""
    copy = tmp_path / "copy"
    shutil.copytree(trained_checkpoint, copy)
    config = json.loads((copy / "config.json").read_text())
    config[CONTRACT_KEY]["max_length"] = 16
    (copy / "config.json").write_text(json.dumps(config))
    assert RewardScorer.from_pretrained(str(copy)).max_length == 16
    tokenizer = AutoTokenizer.from_pretrained(copy)
    assert tokenizer.truncation_side == "left"  # saved: a reader that truncates with it keeps the text's end
