"""The reward head and what the objectives add to it: the score head of a sequence classifier, a second output
(ODIN's length head) or one per rated attribute, the learned Rao-Kupper tie parameter, LoRA adapters around the
backbone with the head trained whole, and the export that turns all of it back into a plain reward model."""

import math
import os

import torch
from accelerate.utils import extract_model_from_parallel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .config import ModelArguments
from .errors import ModelLoadError
from .loss import OBJECTIVES


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

    `length_debias`: the head gets a second output, the length reward (ODIN); a loss with ties in it (`bt_ties`)
    without a fixed `tie_theta`: a learned tie parameter `reward_tie_log_alpha` on the model (theta = exp(exp(it)),
    from 2); `attributes` (rating columns): one output per attribute, named in `config.id2label`, and
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
    if OBJECTIVES[args.loss].ties_in_loss and args.tie_theta is None:
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
