"""Safety of what is loaded: a pickle-only checkpoint is refused without being unpickled; remote code stays off
unless asked for."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO_ROOT

from reward_trainer import cli
from reward_trainer.config import ModelArguments


class _RunsCodeWhenUnpickled:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_only_checkpoint_is_refused_without_unpickling(tmp_path, capsys):
    model_dir, marker = tmp_path / "pickled-model", tmp_path / "pwned"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 2}))
    torch.save({"payload": _RunsCodeWhenUnpickled(marker)}, model_dir / "pytorch_model.bin")

    assert cli.main(["train", "--model_name_or_path", str(model_dir), "--output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "pytorch_model.bin" in err and "safetensors only" in err and str(model_dir) in err
    assert not marker.exists()


def test_remote_code_is_off_unless_asked_for():
    model_args, *_ = cli.parse_args([])
    assert ModelArguments().trust_remote_code is False and model_args.trust_remote_code is False
    assert cli.parse_args(["--trust_remote_code", "true"])[0].trust_remote_code is True
    recipe = yaml.safe_load((REPO_ROOT / "recipes" / "quickstart.yaml").read_text())
    assert not recipe.get("trust_remote_code", False)


def test_pickle_only_policy_is_refused_without_unpickling(tmp_path):
    """`best-of-n` loads its policy from safetensors (or GGUF) only, like every other model."""
    from reward_trainer.best_of_n import load_policy
    from reward_trainer.config import BestOfNArguments
    from reward_trainer.errors import ModelLoadError

    model_dir, marker = tmp_path / "pickled-policy", tmp_path / "pwned"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 2}))
    torch.save({"payload": _RunsCodeWhenUnpickled(marker)}, model_dir / "pytorch_model.bin")
    args = BestOfNArguments(proxy_model="p", gold_model="g", dataset_name="d", policy_name_or_path=str(model_dir))
    with pytest.raises(ModelLoadError, match="pytorch_model.bin.*safetensors only"):
        load_policy(args)
    assert not marker.exists()
