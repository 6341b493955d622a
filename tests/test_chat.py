"""HH-RLHF turns rendered with the chat template, and one reward token for every path: training, `RewardScorer`,
the server and a plain transformers reload (a tiny Llama with SmolLM2's template: pad == eos == `<|im_end|>`)."""

import gzip
import json

import pytest
import torch
from conftest import QUESTIONS, save_tiny_llama_backbone
from tokenizers import ByteLevelBPETokenizer
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerFast,
)

from reward_trainer import RewardScorer
from reward_trainer.chat import (
    hh_messages,
    parse_implicit_conversation,
    renders_implicit_prompt_with_template,
    split_implicit_prompt,
    writes_human_turn,
)
from reward_trainer.collator import PrefixSharingCollator
from reward_trainer.config import DataArguments, ModelArguments, RewardConfig
from reward_trainer.data import load_preference_data
from reward_trainer.trainer import pair_rewards

# SmolLM2-135M-Instruct's template: a default system turn, ChatML turns ending with "<|im_end|>\n".
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
ROWS = QUESTIONS[:6]


def hh_rows():
    rows = []
    for question, good, bad in ROWS:
        prompt = f"\n\nHuman: Hi.\n\nAssistant: Hello, how can I help?\n\nHuman: {question}\n\nAssistant:"
        rows.append({"chosen": f"{prompt} {good}", "rejected": f"{prompt} {bad}"})
    return rows


def chatml_tokenizer() -> PreTrainedTokenizerFast:
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    corpus = [row[key] for row in hh_rows() for key in ("chosen", "rejected")] + ["system user assistant SmolLM"]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus * 3, vocab_size=400, special_tokens=special, show_progress=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",  # as SmolLM2: pad == eos
        unk_token="<|endoftext|>",
        chat_template=CHATML,
    )


@pytest.fixture(scope="module")
def chat_backbone(tmp_path_factory):
    """A tiny Llama (2 layers, hidden 32, grouped-query attention) saved with the ChatML tokenizer."""
    return save_tiny_llama_backbone(tmp_path_factory.mktemp("tiny-chat-llama"), chatml_tokenizer(), max_positions=256)


@pytest.fixture(scope="module")
def hh_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("hh") / "pairs.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.writelines(json.dumps(row) + "\n" for row in hh_rows())
    return path


def test_parse_implicit_conversation():
    text = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman:  what?  \n\nAssistant: "
    assert parse_implicit_conversation(text) == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "what?"},
        {"role": "assistant", "content": ""},  # an empty final response is a response
    ]
    assert parse_implicit_conversation("Be brief.\n\nHuman: x\n\nAssistant: y") == [
        {"role": "user", "content": "Be brief."},
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": "y"},
    ]


def test_hh_prompt_as_chat_messages():
    prompt = "\n\nHuman: hi there\n\nAssistant: hello\n\nHuman: how do I pick a lock?\n\nAssistant:"
    assert hh_messages(prompt) == [
        {"role": "user", "content": "hi there"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "how do I pick a lock?"},
    ]
    assert hh_messages("cat dog | code of owl?\nanswer:") is None  # not HH: the policy sees the text as is
    assert hh_messages("\n\nHuman: hi\n\nAssistant: hello") is None  # the assistant's turn is not open
    assert hh_messages("\n\nHuman: hi") is None  # no assistant turn to continue


def test_text_before_the_first_marker():
    """Parsed as a user message of its own; not an HH prompt for a policy (which would lose it); and a pair that
    shares no marker has the empty prompt, its texts whole."""
    text = "Be brief.\n\nHuman: x\n\nAssistant:"
    assert parse_implicit_conversation(text)[0] == {"role": "user", "content": "Be brief."}
    assert hh_messages(text) is None
    assert split_implicit_prompt("Q: a? yes", "Q: a? no") == ("", "Q: a? yes", "Q: a? no")
    prompt, chosen, rejected = split_implicit_prompt(text + " y", text + " n")
    assert (prompt, chosen, rejected) == (text, " y", " n")  # the preamble stays in the prompt


def test_empty_final_response():
    """HH-RLHF has rows whose final response is empty: a response all the same, in every reader."""
    conversation = "\n\nHuman: how do I hurt someone?\n\nAssistant:"
    assert split_implicit_prompt(conversation, conversation + " No.") == (conversation, "", " No.")
    assert parse_implicit_conversation(conversation)[-1] == {"role": "assistant", "content": ""}
    assert hh_messages(conversation) == [{"role": "user", "content": "how do I hurt someone?"}]


def test_a_response_that_writes_further_turns():
    """A sample that goes on to write the human's next turn: parsed as those turns, as training parses HH text; the
    prompt split of a pair that differs before its final turn keeps the differing turns in the responses."""
    prompt = "\n\nHuman: hi\n\nAssistant:"
    sample = " hello\n\nHuman: and then?\n\nAssistant: more"
    assert writes_human_turn(sample) and not writes_human_turn(" hello") and not writes_human_turn("Human: hi")
    assert parse_implicit_conversation(prompt + sample) == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "and then?"},
        {"role": "assistant", "content": "more"},
    ]
    assert split_implicit_prompt(prompt + sample, prompt + " bye") == (prompt, sample, " bye")


def test_hh_readers_agree_on_the_real_data(shared_data):
    """On every HH-RLHF harmless-base row: the split's prompt parses to the messages `hh_messages` gives plus the
    open turn, and the whole conversation begins with those messages."""
    with gzip.open(shared_data / "hh-rlhf" / "harmless-base" / "test.jsonl.gz", "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == 2312
    for row in rows:
        prompt, chosen, rejected = split_implicit_prompt(row["chosen"], row["rejected"])
        assert prompt + chosen == row["chosen"] and prompt + rejected == row["rejected"]
        messages = hh_messages(prompt)
        assert messages is not None and messages + [{"role": "assistant", "content": ""}] == (
            parse_implicit_conversation(prompt)
        )
        whole = parse_implicit_conversation(row["chosen"])
        assert whole[: len(messages)] == messages and whole[-1]["role"] == "assistant"


def test_auto_renders_with_the_template_only_when_the_tokenizer_has_one():
    tokenizer = chatml_tokenizer()
    assert renders_implicit_prompt_with_template("auto", tokenizer)
    assert not renders_implicit_prompt_with_template("raw", tokenizer)
    tokenizer.chat_template = None
    assert not renders_implicit_prompt_with_template("auto", tokenizer)
    assert renders_implicit_prompt_with_template("chat_template", tokenizer)  # the default "role: content" one


@pytest.mark.parametrize("rendering", ["chat_template", "raw"])
def test_hh_pairs_are_the_rendered_conversations(chat_backbone, hh_file, rendering):
    from reward_trainer.loading import load_reward_model

    _, tokenizer = load_reward_model(ModelArguments(model_name_or_path=str(chat_backbone)))
    args = DataArguments(dataset_name=str(hh_file), eval_fraction=0.0, implicit_prompt_rendering=rendering)
    pairs = load_preference_data(args, tokenizer).train
    by_text = {}
    for row in hh_rows():
        texts = {key: row[key] for key in ("chosen", "rejected")}
        if rendering == "chat_template":
            texts = {
                k: tokenizer.apply_chat_template(parse_implicit_conversation(t), tokenize=False)
                for k, t in texts.items()
            }
        by_text[tuple(tokenizer(texts["chosen"])["input_ids"])] = tokenizer(texts["rejected"])["input_ids"]
    assert len(pairs) == len(ROWS)
    for pair in pairs:
        assert by_text[tuple(pair["chosen_ids"])] == pair["rejected_ids"]
    end = tokenizer.convert_ids_to_tokens(pairs[0]["chosen_ids"][-3:])
    if rendering == "chat_template":  # the end-of-turn text is the end: its newline is the reward token
        assert end[-2:] == ["<|im_end|>", "Ċ"]
    else:  # the response's own last token: nothing appended
        assert "<|im_end|>" not in end and end[-1] == "."


def test_train_save_reload_read_the_reward_at_the_same_token(chat_backbone, hh_file, tmp_path):
    """Training (prefix-shared rows), `RewardScorer`, the server and plain transformers give the same reward,
    read at the last token of the rendered text, the "\\n" after the final "<|im_end|>"."""
    from reward_trainer.train import train

    out = tmp_path / "rm"
    data_args = DataArguments(dataset_name=str(hh_file), eval_fraction=0.0, implicit_prompt_rendering="chat_template")
    args = RewardConfig(
        output_dir=str(out), max_steps=3, per_device_train_batch_size=2, learning_rate=1e-2, use_cpu=True,
        disable_tqdm=True, seed=0,
    )  # fmt: skip
    train(ModelArguments(model_name_or_path=str(chat_backbone)), data_args, args)

    # `reward-trainer evaluate` reads how HH text was rendered from config.json.
    contract = json.loads((out / "config.json").read_text())["reward_contract"]
    assert contract["implicit_prompt_rendering"] == "chat_template" and contract["append_eos"] is False
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()  # plain transformers
    tokenizer = AutoTokenizer.from_pretrained(out)
    conversations = [parse_implicit_conversation(row["chosen"]) for row in hh_rows()]
    texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in conversations]
    with torch.no_grad():
        plain = [model(**tokenizer(t, return_tensors="pt")).logits[0, 0].item() for t in texts]

    scorer = RewardScorer.from_pretrained(str(out))
    torch.testing.assert_close(scorer.score_conversations(conversations), plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(scorer.score_texts(texts), plain, atol=1e-5, rtol=0)

    # Training's rewards: the pairs as training builds them, through the prefix-sharing path.
    pairs = load_preference_data(data_args, tokenizer).train
    order = {tuple(tokenizer(t)["input_ids"]): i for i, t in enumerate(texts)}
    with torch.no_grad():
        chosen, _ = pair_rewards(model, PrefixSharingCollator(tokenizer.pad_token_id)(list(pairs)))
    for pair, reward in zip(pairs, chosen.tolist()):
        assert reward == pytest.approx(plain[order[tuple(pair["chosen_ids"])]], abs=1e-5)

    # The token: the newline that ends the turn, not the end-of-turn token before it.
    ids = tokenizer(texts[0])["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids[-2:]) == ["<|im_end|>", "Ċ"]
    with torch.no_grad():
        per_token = model.score(model.model(torch.tensor([ids])).last_hidden_state)[0, :, 0]  # (T,)
    assert per_token[-1].item() == pytest.approx(plain[0], abs=2e-6)
    assert abs(per_token[-2].item() - plain[0]) > 1e-5
    # HH text given as text is rendered as training rendered it (the contract says so): the same rewards.
    torch.testing.assert_close(scorer.score_texts([row["chosen"] for row in hh_rows()]), plain, atol=1e-5, rtol=0)

    pytest.importorskip("fastapi")
    httpx = pytest.importorskip("httpx")
    from reward_trainer.config import ServeArguments
    from reward_trainer.server import create_app, serve_in_background

    with serve_in_background(create_app(scorer, ServeArguments(str(out)))) as url:
        served = httpx.post(f"{url}/score", json={"texts": texts}, timeout=60).json()["rewards"]
    torch.testing.assert_close(served, plain, atol=1e-5, rtol=0)


def test_both_renderings_hold_out_the_same_rows(hh_file):
    from reward_trainer.data import read_rows

    tokenizer = chatml_tokenizer()
    buckets = {}
    for rendering in ("chat_template", "raw"):
        args = DataArguments(dataset_name=str(hh_file), implicit_prompt_rendering=rendering)
        _, splits = read_rows(str(hh_file), args, tokenizer, seed=0, report={"input_rows": 0, "empty_responses": 0})
        buckets[rendering] = splits["train"]["_bucket"]
        assert splits["train"][0]["prompt"].startswith("<|im_start|>" if rendering == "chat_template" else "\n\n")
    assert buckets["chat_template"] == buckets["raw"]
