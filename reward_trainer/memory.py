"""Memory that fits: each forward and backward runs at most `micro_batch_tokens` token positions, a bound chosen from
a memory budget, so that the longest batches no longer set the peak.

A batch (`per_device_train_batch_size` pairs) whose layout would hold more positions, padding included, runs as
consecutive micro-batches whose gradients add up to the batch's (`collator.split_by_positions`,
`RewardTrainer.training_step`): the same pairs, the same loss and the same gradient, up to the order of float sums.
When the bound is not given (`--micro_batch_tokens`), `plan_memory` picks it:

1. the budget: `--memory_budget_gb`, by default `BUDGET_FRACTION` of the memory this process holds plus what is
   free at the start (the machine's available RAM on the CPU, the GPU's free memory on a GPU);
2. what a step holds besides activations: the loaded weights (already held), their gradients and AdamW's two
   moments (4 + 8 bytes per trainable parameter) and, under autocast, the half-precision copies of the weights;
3. the bytes autograd saves for the backward per token position, measured on this model at this precision: two
   forwards over synthetic pairs of two lengths (training mode, the random state restored after) count the saved
   tensors; their difference per position is the rate, the attention's growth with length included;
4. micro_batch_tokens = (budget - held - step) / (rate x `BACKWARD_OVERHEAD`), and on the CPU at most
   `CPU_MICRO_BATCH_TOKENS`, where a larger micro-batch saves little time but holds memory in proportion
   (BENCHMARKS.md, "Memory").
   When even the longest pair would not fit, gradient checkpointing is turned on (each layer keeps only its input)
   and the rate is measured again.
"""

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import hardware

logger = logging.getLogger("reward_trainer")

BUDGET_FRACTION = 0.9
# The backward holds, beside the saved activations, the gradients of the activations of the layer it is in and the
# temporaries of its kernels: a margin on the saved bytes.
BACKWARD_OVERHEAD = 1.25
# On the CPU a micro-batch of this many positions already runs the matrix products near full speed.
CPU_MICRO_BATCH_TOKENS = 1024
GIB = 2**30


@dataclass
class MemoryPlan:
    """How training fits its memory budget."""

    micro_batch_tokens: int | None  # None: no bound
    gradient_checkpointing: bool
    budget_bytes: int | None = None
    bytes_per_position: float | None = None
    reason: str = ""


def held_bytes(device: torch.device) -> int:
    """Memory this process holds now: its resident set on the CPU, the tensors it allocated on a GPU."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    try:
        with open("/proc/self/statm", encoding="utf-8") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def saved_bytes(forward: Callable[[], object], exclude: set[int]) -> int:
    """Bytes of the tensors autograd saves for the backward while `forward()` runs (each storage once), less the
    storages in `exclude` (the parameters, which are held anyway)."""
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in exclude:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        forward()
    return sum(storages.values())


def bytes_per_position(model, run: Callable[[int], int], length: int) -> float:
    """Saved bytes per token position of `model`: `run(n)` runs the training forward on synthetic pairs of n tokens
    per sequence and returns the positions it laid out; measured at `length` // 2 and `length`."""
    exclude = {p.untyped_storage().data_ptr() for p in model.parameters()}
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and next(model.parameters()).is_cuda else []
    was_training = model.training
    model.train()
    try:
        with torch.random.fork_rng(devices=devices):  # dropout draws here must not shift the training run's
            counts = []
            for n in (max(length // 2, 8), max(length, 16)):
                positions = []
                count = saved_bytes(lambda n=n, positions=positions: positions.append(run(n)), exclude)
                counts.append((count, positions[0]))
    finally:
        model.train(was_training)
    (b1, p1), (b2, p2) = counts
    return max(b2 - b1, 1) / max(p2 - p1, 1)


def enable_checkpointing(model, kwargs: dict | None) -> None:
    """Activation (gradient) checkpointing on `model`, by the name its transformers version gives it."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def plan_memory(
    model,
    device: torch.device,
    run: Callable[[int], int],
    longest_sequence: int,
    positions_of_pair: Callable[[int], int],
    trainable_parameters: int,
    half_precision: bool,
    budget_gb: float | None = None,
    gradient_checkpointing: bool = False,
    checkpointing_kwargs: dict | None = None,
) -> MemoryPlan:
    """The micro-batch bound (and gradient checkpointing) that keeps training within the budget (module docstring).

    `run(n)`: the training forward on synthetic pairs of n tokens per sequence, returning its positions;
    `longest_sequence`: the training data's longest tokenized sequence; `positions_of_pair(n)`: positions one pair
    of two n-token sequences lays out."""
    held = held_bytes(device)
    if budget_gb is not None:
        budget, source = int(budget_gb * GIB), "--memory_budget_gb"
    else:
        free = hardware.available_memory_bytes(device)
        if free is None:
            return MemoryPlan(None, gradient_checkpointing, reason="the free memory of this device cannot be read")
        budget, source = int(BUDGET_FRACTION * (free + held)), f"{BUDGET_FRACTION:.0%} of the free memory"
    weights = sum(p.numel() for p in model.parameters())
    step = trainable_parameters * (4 + 8) + (weights * 2 if half_precision else 0)
    room = budget - held - step
    config = model.config
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 512
    length = max(min(longest_sequence, 512, positions), 16)
    if gradient_checkpointing:
        enable_checkpointing(model, checkpointing_kwargs)
    rate = bytes_per_position(model, run, length)
    longest = positions_of_pair(longest_sequence)
    turned_on = not gradient_checkpointing and room < longest * rate * BACKWARD_OVERHEAD
    if turned_on:
        enable_checkpointing(model, checkpointing_kwargs)
        gradient_checkpointing = True
        rate = bytes_per_position(model, run, length)
    tokens = int(room / (rate * BACKWARD_OVERHEAD)) if room > 0 else 0
    cap = CPU_MICRO_BATCH_TOKENS if device.type == "cpu" else None
    tokens = min(tokens, cap) if cap else tokens
    if tokens < longest:
        logger.warning(
            "memory: the budget (%.1f GB) leaves room for %d token positions, fewer than the longest pair's %d: "
            "that pair runs alone and may pass the budget",
            budget / GIB,
            tokens,
            longest,
        )
        tokens = longest
    reason = (
        f"budget {budget / GIB:.1f} GB ({source}); {held / GIB:.1f} GB held, {step / GIB:.1f} GB for gradients and "
        f"optimizer state; {rate / 2**20:.2f} MiB saved per token position (measured)"
        + (", with gradient checkpointing" if gradient_checkpointing else "")
        + (" (turned on: the longest pair would not fit without it)" if turned_on else "")
        + (
            f"; at most {cap} positions on the CPU, where larger micro-batches save little time"
            if cap == tokens
            else ""
        )
    )
    return MemoryPlan(tokens, gradient_checkpointing, budget, rate, reason)
