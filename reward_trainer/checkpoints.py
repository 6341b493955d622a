"""Finding the checkpoint to resume from, and telling a complete checkpoint from a half-written one.

A job killed while saving (SIGKILL, a lost machine, a full disk) leaves a `checkpoint-N` folder with some files
missing or cut short. `--resume_from_checkpoint auto` takes the newest checkpoint that passes
`checkpoint_problems` and warns about each newer one it skips, naming it and what is wrong.

What a complete checkpoint of the stock `Trainer` holds (it writes `trainer_state.json` last):
    model.safetensors (or shards + index, or adapter_model.safetensors), optimizer.pt, scheduler.pt,
    rng_state.pth (one process) or rng_state_<rank>.pth (several), trainer_state.json.
FSDP sharded state dicts (`pytorch_model_fsdp_*`, `optimizer_*` folders) and DeepSpeed (`global_step*`) store
weights and optimizer in sub-folders: there only their presence is checked.
"""

import json
import logging
import os
import re
import zipfile

from safetensors import SafetensorError, safe_open
from transformers.trainer_utils import sort_checkpoints

from .errors import UsageError

logger = logging.getLogger(__name__)


def safetensors_problem(path: str) -> str | None:
    """Why a .safetensors file is unreadable (bad header, or shorter than its header says), or None.
    `safe_open` validates the header against the file's size and reads no tensor data."""
    try:
        with safe_open(path, framework="pt") as f:
            f.keys()
    except (SafetensorError, OSError) as err:
        return f"{os.path.basename(path)} is truncated or corrupt ({str(err).splitlines()[0]})"
    return None


def torch_file_problem(path: str) -> str | None:
    """Why a `torch.save` file is unreadable, or None. It is a zip archive whose directory sits at its end,
    so a cut-short file fails to open; this reads no tensor data (and unpickles nothing)."""
    try:
        with zipfile.ZipFile(path) as archive:
            archive.infolist()
    except (zipfile.BadZipFile, OSError):
        return f"{os.path.basename(path)} is truncated or corrupt"
    return None


def checkpoint_problems(checkpoint: str) -> list[str]:
    """What is missing or damaged in a `checkpoint-N` folder; an empty list means it can be resumed from."""
    files = set(os.listdir(checkpoint))
    sharded = any(f.startswith(("pytorch_model_fsdp", "global_step")) for f in files)
    problems = []
    state = os.path.join(checkpoint, "trainer_state.json")
    if "trainer_state.json" not in files:
        problems.append("trainer_state.json is missing")
    else:
        try:
            with open(state, encoding="utf-8") as f:
                json.load(f)
        except ValueError:
            problems.append("trainer_state.json is truncated or corrupt")
    weights = sorted(f for f in files if f.endswith(".safetensors"))
    if not weights and not sharded:
        problems.append("no model weights (*.safetensors)")
    problems += filter(None, (safetensors_problem(os.path.join(checkpoint, f)) for f in weights))
    index = "model.safetensors.index.json"
    if index in files:
        with open(os.path.join(checkpoint, index), encoding="utf-8") as f:
            missing = sorted(set(json.load(f)["weight_map"].values()) - files)
        problems += [f"weight shard {name} is missing" for name in missing]
    required = ["scheduler.pt"] + ([] if sharded else ["optimizer.pt"])
    problems += [f"{name} is missing" for name in required if name not in files]
    rng = sorted(f for f in files if re.fullmatch(r"rng_state(_\d+)?\.pth", f))
    if not rng:
        problems.append("rng_state*.pth is missing")
    torch_files = [f for f in required if f in files] + rng
    problems += filter(None, (torch_file_problem(os.path.join(checkpoint, f)) for f in torch_files))
    return problems


def find_resume_checkpoint(output_dir: str) -> str | None:
    """The newest complete checkpoint in `output_dir`, or None; warns about each incomplete one it skips."""
    if not os.path.isdir(output_dir):
        return None
    for checkpoint in reversed(sort_checkpoints(output_dir)):  # the stock Trainer's order, oldest first
        problems = checkpoint_problems(checkpoint)
        if not problems:
            return checkpoint
        logger.warning("skipping incomplete checkpoint %s: %s", checkpoint, "; ".join(problems))
    return None


def resolve_resume_checkpoint(value: str | None, output_dir: str) -> str | None:
    """Turns `--resume_from_checkpoint` into a path for `Trainer.train`: `auto` finds the newest complete
    checkpoint in `output_dir` (None, a fresh start, when there is none); a path must be a complete checkpoint."""
    if value is None or value.lower() in ("", "none", "false"):
        return None
    if value.lower() in ("auto", "true"):
        checkpoint = find_resume_checkpoint(output_dir)
        if checkpoint is None:
            logger.info("resume: no complete checkpoint in %s; starting from scratch", output_dir)
        else:
            logger.info("resume: resuming from %s (newest complete checkpoint in %s)", checkpoint, output_dir)
        return checkpoint
    if not os.path.isdir(value):
        raise UsageError(f"--resume_from_checkpoint {value!r} is not a directory")
    problems = checkpoint_problems(value)
    if problems:
        raise UsageError(f"--resume_from_checkpoint {value!r} is incomplete: {'; '.join(problems)}")
    logger.info("resume: resuming from %s", value)
    return value
