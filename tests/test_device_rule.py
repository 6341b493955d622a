"""The device rule (`reward_trainer.hardware.resolve_device`) for every command that loads a model to score or
generate: the accelerator when torch sees one, the CPU with `--device cpu` or under `ACCELERATE_USE_CPU=true`.

The accelerator is faked on the CPU: `hardware.accelerator_type` says "cuda", and `loading.to_device` (where every
loaded model is placed) records the device instead of moving anything there."""

import json

import pytest
import torch

from reward_trainer import RewardScorer, hardware, loading
from reward_trainer.cli import main
from reward_trainer.quickstart import make_pairs

CASES = [  # (extra flags, environment, the device every model is placed on)
    ([], {}, torch.device("cuda", 0)),
    (["--device", "cpu"], {}, torch.device("cpu")),
    ([], {"ACCELERATE_USE_CPU": "true"}, torch.device("cpu")),
]


@pytest.fixture
def placed(monkeypatch):
    """A machine with a (pretend) CUDA GPU; returns the devices models were placed on, in order."""
    devices = []
    monkeypatch.setattr(hardware, "accelerator_type", lambda: "cuda")
    monkeypatch.setattr(loading, "to_device", lambda model, device: devices.append(device) or model)
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    return devices


@pytest.mark.parametrize(("flags", "env", "expected"), CASES)
def test_the_scorer(trained_checkpoint, placed, monkeypatch, flags, env, expected):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    RewardScorer.from_pretrained(str(trained_checkpoint), **({"device": "cpu"} if flags else {}))
    assert placed == [expected]


@pytest.mark.parametrize(("flags", "env", "expected"), CASES)
def test_evaluate(trained_checkpoint, placed, monkeypatch, tmp_path, flags, env, expected):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(p) + "\n" for p in make_pairs(4, seed=2)))
    argv = ["evaluate", "--model_name_or_path", str(trained_checkpoint), "--dataset_name", str(pairs)]
    assert main([*argv, "--output_dir", str(tmp_path / "out"), "--disable_tqdm", "true", *flags]) == 0
    assert placed == [expected]


@pytest.mark.parametrize(("flags", "env", "expected"), CASES)
def test_rewardbench(trained_checkpoint, placed, monkeypatch, tmp_path, flags, env, expected):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    rows = tmp_path / "rb.jsonl"
    rows.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b", "subset": "mt-bench-easy"}) + "\n")
    argv = ["evaluate", "--benchmark", "rewardbench", "--model_name_or_path", str(trained_checkpoint)]
    argv += ["--dataset_name", str(rows), "--output_dir", str(tmp_path / "out"), "--disable_tqdm", "true"]
    assert main([*argv, *flags]) == 0
    assert placed == [expected]


@pytest.mark.parametrize(("flags", "env", "expected"), CASES)
def test_best_of_n_generation_and_both_reward_models(
    trained_checkpoint, tiny_tokenizer, placed, monkeypatch, tmp_path, flags, env, expected
):
    from conftest import tiny_policy

    torch.manual_seed(0)
    tiny_policy(tiny_tokenizer).save_pretrained(tmp_path / "policy")
    tiny_tokenizer.save_pretrained(tmp_path / "policy")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p["prompt"]}) + "\n" for p in make_pairs(2, seed=3)))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    argv = ["best-of-n", "--policy_name_or_path", str(tmp_path / "policy"), "--proxy_model", str(trained_checkpoint)]
    argv += ["--gold_model", str(trained_checkpoint), "--dataset_name", str(prompts), "--heldout_fraction", "1.0"]
    argv += ["--max_n", "2", "--max_new_tokens", "3", "--output_dir", str(tmp_path / "out"), "--disable_tqdm", "true"]
    assert main([*argv, *flags]) == 0
    assert placed == [expected] * 3  # the policy (generation), the proxy, the gold reward model


@pytest.mark.parametrize(("flags", "env", "expected"), CASES)
def test_the_server(trained_checkpoint, placed, monkeypatch, flags, env, expected):
    uvicorn = pytest.importorskip("uvicorn")
    pytest.importorskip("fastapi")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.append(app))
    assert main(["serve", "--model_name_or_path", str(trained_checkpoint), *flags]) == 0
    assert placed == [expected] and len(served) == 1
