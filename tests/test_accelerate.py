"""Scale and safety: accelerate configs, 2-process training, bf16 on CPU, crash-safe resume, Hub push, pickle refusal.

The multi-process and crash tests run the real entry points in subprocesses (`accelerate launch`,
`scripts/train_reward.py`) on a few hundred synthetic pairs; the rest call the CLI in-process.
"""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from reward_trainer import cli
from reward_trainer.checkpoints import checkpoint_problems, find_resume_checkpoint, resolve_resume_checkpoint
from reward_trainer.config import ModelArguments
from reward_trainer.hub import model_card
from reward_trainer.trainer import RewardTrainer

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "accelerate_configs"
# A few hundred pairs, one log line per step; everything else comes from the quickstart recipe.
SMALL = [
    "--config",
    "recipes/quickstart.yaml",
    "--num_synthetic_pairs",
    "250",
    "--logging_steps",
    "1",
    "--warmup_steps",
    "0",
    "--disable_tqdm",
    "true",
    "--per_device_eval_batch_size",
    "4",
]


@pytest.fixture(autouse=True)
def one_thread():
    """In-process training on one thread: on a shared 2-core machine extra threads only contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def subprocess_env(**extra) -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        **extra,
    }
    env.pop("RANK", None)
    return env


def step_losses(checkpoint: Path) -> dict[int, float]:
    history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
    return {log["step"]: log["loss"] for log in history if "loss" in log}


# --- accelerate configs ---------------------------------------------------------------------------------------

EXPECTED_CONFIGS = {  # file -> (distributed_type, mixed_precision)
    "cpu.yaml": ("MULTI_GPU", "no"),  # torchrun launcher; `use_cpu` makes the processes CPU-only, over gloo
    "single_gpu.yaml": ("NO", "bf16"),
    "fp16.yaml": ("NO", "fp16"),
    "multi_gpu.yaml": ("MULTI_GPU", "bf16"),
    "multi_node.yaml": ("MULTI_GPU", "bf16"),
    "fsdp.yaml": ("FSDP", "bf16"),
    "deepspeed_zero2.yaml": ("DEEPSPEED", "bf16"),
    "deepspeed_zero3.yaml": ("DEEPSPEED", "bf16"),
}


def test_every_accelerate_config_loads_and_names_its_launch_command():
    from accelerate.commands.config.config_args import load_config_from_file

    assert sorted(p.name for p in CONFIGS.glob("**/*.yaml")) == sorted(EXPECTED_CONFIGS)
    for name, (distributed_type, mixed_precision) in EXPECTED_CONFIGS.items():
        path = CONFIGS / name
        config = load_config_from_file(str(path))
        assert (config.distributed_type.value, config.mixed_precision) == (distributed_type, mixed_precision), name
        header = path.read_text().split("\ncompute_environment")[0]
        assert re.search(
            rf"# +accelerate launch --config_file accelerate_configs/{name} .*scripts/train_reward.py", header
        ), name

    cpu = load_config_from_file(str(CONFIGS / "cpu.yaml"))
    assert (cpu.num_processes, cpu.use_cpu) == (2, True)
    node = load_config_from_file(str(CONFIGS / "multi_node.yaml"))
    assert node.num_machines == 2 and node.main_process_ip and node.main_process_port
    fsdp = load_config_from_file(str(CONFIGS / "fsdp.yaml")).fsdp_config
    assert fsdp["fsdp_sharding_strategy"] == "FULL_SHARD"
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
    zero2 = load_config_from_file(str(CONFIGS / "deepspeed_zero2.yaml")).deepspeed_config
    zero3 = load_config_from_file(str(CONFIGS / "deepspeed_zero3.yaml")).deepspeed_config
    assert zero2["zero_stage"] == 2
    assert zero3["zero_stage"] == 3 and zero3["zero3_save_16bit_model"] is True


# --- two processes ----------------------------------------------------------------------------------------------

# Loaded by every Python process of the run (through PYTHONPATH): logs which rank writes which checkpoint file.
WRITE_LOGGER = """
import os, safetensors.torch, torch
def _wrap(fn):
    def wrapped(obj, path, *args, **kwargs):
        if isinstance(path, (str, os.PathLike)):
            with open(os.environ["WRITE_LOG"], "a") as log:
                log.write(f"{os.environ.get('RANK', '-')} {os.fspath(path)}\\n")
        return fn(obj, path, *args, **kwargs)
    return wrapped
safetensors.torch.save_file = _wrap(safetensors.torch.save_file)
torch.save = _wrap(torch.save)
"""


def test_two_processes_match_one_process_and_evaluate_every_pair_once(tmp_path):
    """2 processes x 8 pairs per step == 1 process x 16: same per-step losses, same eval set, one writer."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(WRITE_LOGGER)
    write_log = tmp_path / "writes.log"
    run = SMALL + ["--max_steps", "6", "--save_strategy", "steps", "--save_steps", "3"]
    two = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(CONFIGS / "cpu.yaml"),
            "scripts/train_reward.py",
            *run,
            "--per_device_train_batch_size",
            "8",
            "--output_dir",
            str(tmp_path / "two"),
        ],
        cwd=REPO,
        env=subprocess_env(PYTHONPATH=f"{hook}{os.pathsep}{REPO}", WRITE_LOG=str(write_log)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    one = subprocess.run(
        [
            sys.executable,
            "scripts/train_reward.py",
            *run,
            "--per_device_train_batch_size",
            "16",
            "--output_dir",
            str(tmp_path / "one"),
        ],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    out, _ = two.communicate(timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, out[-3000:]
    assert "rng_state_1.pth" in os.listdir(tmp_path / "two" / "checkpoint-6")  # really 2 processes

    losses_one, losses_two = (
        step_losses(tmp_path / "one" / "checkpoint-6"),
        step_losses(tmp_path / "two" / "checkpoint-6"),
    )
    assert sorted(losses_two) == list(range(1, 7))
    np.testing.assert_allclose(
        [losses_two[s] for s in range(1, 7)], [losses_one[s] for s in range(1, 7)], atol=1e-4, rtol=0
    )

    eval_pairs = json.loads((tmp_path / "two" / "data_report.json").read_text())["eval_pairs"]
    assert eval_pairs % 8 != 0  # so 2 processes x batch 4 would need padding: duplicates would show
    metrics_two = json.loads((tmp_path / "two" / "eval_results.json").read_text())
    metrics_one = json.loads((tmp_path / "one" / "eval_results.json").read_text())
    assert metrics_two["eval_num_pairs"] == metrics_one["eval_num_pairs"] == eval_pairs
    # Metrics come from the gathered per-pair rewards, padding removed. (Not `eval_loss`: the stock Trainer
    # averages per-batch losses, and the last batch of a process holds the sampler's padding duplicates.)
    assert metrics_two["eval_accuracy"] == metrics_one["eval_accuracy"]
    for key in ("eval_margin", "eval_chosen_reward_mean", "eval_rejected_reward_std"):
        assert metrics_two[key] == pytest.approx(metrics_one[key], abs=1e-4), key

    writes = [line.split(" ", 1) for line in write_log.read_text().splitlines()]
    by_rank = {rank: {Path(p).name for r, p in writes if r == rank} for rank in {r for r, _ in writes}}
    assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state_0.pth"} <= by_rank["0"]
    assert by_rank["1"] == {"rng_state_1.pth"}  # each process keeps its own RNG state; nothing else


def test_bf16_mixed_precision_on_cpu(tmp_path, monkeypatch):
    """`--bf16` trains under CPU autocast: the linear layers compute in bfloat16, master weights stay fp32."""
    from reward_trainer import train as train_module

    seen = []
    load = train_module.load_reward_model

    def load_and_watch(model_args):
        model, tokenizer = load(model_args)
        model.score.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
        return model, tokenizer

    monkeypatch.setattr(train_module, "load_reward_model", load_and_watch)
    argv = [
        "train",
        *SMALL,
        "--max_steps",
        "3",
        "--per_device_train_batch_size",
        "8",
        "--bf16",
        "true",
        "--eval_strategy",
        "no",
        "--output_dir",
        str(tmp_path),
    ]
    assert cli.main(argv) == 0
    assert seen and set(seen) == {torch.bfloat16}
    weights = load_file(tmp_path / "model.safetensors")
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in weights.values())


# --- checkpoints and resume -------------------------------------------------------------------------------------


def make_checkpoint(path: Path, step: int) -> Path:
    """A checkpoint folder with the files the stock Trainer writes (tiny contents)."""
    path.mkdir(parents=True)
    save_file({"w": torch.arange(6.0).reshape(2, 3)}, path / "model.safetensors")
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        torch.save({"step": step}, path / name)
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return path


@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda c: (c / "trainer_state.json").unlink(), "trainer_state.json is missing"),
        (lambda c: (c / "trainer_state.json").write_text('{"global_st'), "trainer_state.json is truncated"),
        (lambda c: (c / "model.safetensors").unlink(), "no model weights"),
        (lambda c: os.truncate(c / "model.safetensors", 40), "model.safetensors is truncated"),
        (lambda c: os.truncate(c / "model.safetensors", 4), "model.safetensors is truncated"),
        (lambda c: (c / "optimizer.pt").unlink(), "optimizer.pt is missing"),
        (lambda c: os.truncate(c / "optimizer.pt", 100), "optimizer.pt is truncated"),
        (lambda c: os.truncate(c / "scheduler.pt", 0), "scheduler.pt is truncated"),
        (lambda c: (c / "rng_state.pth").unlink(), "rng_state*.pth is missing"),
    ],
)
def test_half_written_checkpoint_is_detected(tmp_path, damage, problem):
    checkpoint = make_checkpoint(tmp_path / "checkpoint-10", 10)
    assert checkpoint_problems(str(checkpoint)) == []
    damage(checkpoint)
    assert any(p.startswith(problem) for p in checkpoint_problems(str(checkpoint))), checkpoint_problems(
        str(checkpoint)
    )


def test_auto_resume_skips_the_half_written_checkpoint_with_a_warning(tmp_path, caplog):
    for step in (5, 10, 15):
        make_checkpoint(tmp_path / f"checkpoint-{step}", step)
    os.truncate(tmp_path / "checkpoint-15" / "model.safetensors", 50)
    assert find_resume_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-10")  # not 5: by step, not by name
    assert "skipping incomplete checkpoint" in caplog.text and "checkpoint-15" in caplog.text
    assert resolve_resume_checkpoint("auto", str(tmp_path / "empty")) is None  # nothing yet: a fresh start
    assert resolve_resume_checkpoint(str(tmp_path / "checkpoint-5"), str(tmp_path)) == str(tmp_path / "checkpoint-5")
    with pytest.raises(cli.UsageError, match="checkpoint-15.*is incomplete: model.safetensors is truncated"):
        resolve_resume_checkpoint(str(tmp_path / "checkpoint-15"), str(tmp_path))


def test_sigkill_then_auto_resume_gives_the_uninterrupted_weights(tmp_path):
    """Kill -9 at a random step after two checkpoints, damage the newest one as a half-written save would,
    rerun with `--resume_from_checkpoint auto`: same per-step losses (same data order) and same final weights."""
    # 120 pairs, batch 8: 15 steps per epoch, 4 epochs; the kill can land in epoch 1 or 2.
    run = [
        sys.executable,
        "scripts/train_reward.py",
        *SMALL,
        "--num_synthetic_pairs",
        "120",
        "--num_train_epochs",
        "4",
        "--per_device_train_batch_size",
        "8",
        "--eval_strategy",
        "no",
        "--save_strategy",
        "steps",
        "--save_steps",
        "5",
    ]
    reference = subprocess.Popen(
        run + ["--output_dir", str(tmp_path / "reference")],
        cwd=REPO,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    crashed = tmp_path / "crashed"
    victim = subprocess.Popen(
        run + ["--output_dir", str(crashed)],
        cwd=REPO,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    kill_at = random.randint(12, 35)  # logs of step 11 come after checkpoint-10 is fully written
    steps_logged = 0
    for line in victim.stdout:
        steps_logged += line.startswith("{'loss'")
        if steps_logged >= kill_at:
            victim.send_signal(signal.SIGKILL)
            break
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL, f"the run ended on its own before step {kill_at}"
    assert reference.wait(timeout=300) == 0

    newest = max((p for p in crashed.glob("checkpoint-*")), key=lambda p: int(p.name.split("-")[1]))
    os.truncate(newest / "model.safetensors", (newest / "model.safetensors").stat().st_size // 2)
    resumed = subprocess.run(
        run + ["--output_dir", str(crashed), "--resume_from_checkpoint", "auto"],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, log[-3000:]
    assert f"skipping incomplete checkpoint {newest}" in log
    previous = crashed / f"checkpoint-{int(newest.name.split('-')[1]) - 5}"
    assert re.search(rf"resuming from {re.escape(str(previous))}\b", log), log[-3000:]

    expected, got = step_losses(tmp_path / "reference" / "checkpoint-60"), step_losses(crashed / "checkpoint-60")
    assert sorted(got) == list(range(1, 61))
    np.testing.assert_allclose([got[s] for s in range(1, 61)], [expected[s] for s in range(1, 61)], atol=1e-6, rtol=0)
    reference_weights, resumed_weights = (
        load_file(tmp_path / "reference" / "model.safetensors"),
        load_file(crashed / "model.safetensors"),
    )
    assert reference_weights.keys() == resumed_weights.keys()
    for name, value in reference_weights.items():
        assert (value - resumed_weights[name]).abs().max().item() <= 1e-6, name


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    compute_rewards = RewardTrainer.compute_rewards

    def nan_at_step_4(self, model, inputs):
        chosen, rejected = compute_rewards(self, model, inputs)
        return (chosen * float("nan"), rejected) if self.state.global_step == 3 else (chosen, rejected)

    monkeypatch.setattr(RewardTrainer, "compute_rewards", nan_at_step_4)
    argv = [
        "train",
        *SMALL,
        "--max_steps",
        "8",
        "--per_device_train_batch_size",
        "8",
        "--eval_strategy",
        "no",
        "--save_strategy",
        "steps",
        "--save_steps",
        "2",
        "--output_dir",
        str(tmp_path),
    ]
    assert cli.main(argv) == 1  # the CLI turns NonFiniteLossError into one line on stderr
    error_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("reward-trainer: error:")]
    assert len(error_lines) == 1
    assert re.search(r"non-finite training loss \(nan\) at step 4 ", error_lines[0])
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2"]
    assert checkpoint_problems(str(tmp_path / "checkpoint-2")) == []
    assert all(torch.isfinite(t).all() for t in load_file(tmp_path / "checkpoint-2" / "model.safetensors").values())


# --- Hub ----------------------------------------------------------------------------------------------------------


def test_model_card_metadata():
    card = model_card("me/rm", "openai-community/gpt2", "Anthropic/hh-rlhf", 0.71234, "reward-trainer train --x 1")
    assert card.data.base_model == "openai-community/gpt2"
    assert card.data.datasets == ["Anthropic/hh-rlhf"]
    assert "reward-model" in card.data.tags
    metric = card.data.to_dict()["model-index"][0]["results"][0]["metrics"][0]
    assert (metric["type"], metric["value"]) == ("accuracy", 0.7123)
    assert "```bash\nreward-trainer train --x 1\n```" in card.text
    local = model_card("me/rm", "builtin:tiny-gpt2", "/data/pairs.jsonl", None, "c")  # not Hub ids: not in the YAML
    assert local.data.base_model is None and local.data.datasets is None and "`builtin:tiny-gpt2`" in local.text


def test_push_to_hub_uploads_weights_tokenizer_and_card(tmp_path, monkeypatch):
    """Intercepts `huggingface_hub.HfApi` (what `Trainer.push_to_hub` calls): no network, a folder as the repo."""
    from fnmatch import fnmatch

    from huggingface_hub import HfApi, ModelCard, RepoUrl
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from reward_trainer.metrics import pair_correctness
    from reward_trainer.quickstart import make_pairs

    hub, calls = tmp_path / "hub", []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id))
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, repo_id, folder_path, ignore_patterns=(), path_in_repo=None, **kwargs):
        calls.append(("upload_folder", repo_id))
        for name in os.listdir(folder_path):
            source = Path(folder_path) / name
            if source.is_file() and not any(fnmatch(name, p) for p in ignore_patterns):
                (hub / repo_id).mkdir(parents=True, exist_ok=True)
                shutil.copy(source, hub / repo_id / name)

    def create_commit(self, *args, **kwargs):
        raise AssertionError("unexpected create_commit")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    argv = [
        "train",
        *SMALL,
        "--max_steps",
        "20",
        "--per_device_train_batch_size",
        "16",
        "--output_dir",
        str(tmp_path / "out"),
        "--push_to_hub",
        "true",
        "--hub_model_id",
        "user/tiny-rm",
    ]
    monkeypatch.setattr(sys, "argv", ["reward-trainer", *argv])
    assert cli.main(argv) == 0

    assert calls == [("create_repo", "user/tiny-rm"), ("upload_folder", "user/tiny-rm")]
    repo = hub / "user" / "tiny-rm"
    assert sorted(os.listdir(repo)) == sorted(
        [
            "README.md",
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
            "training_args.bin",
            "all_results.json",
            "eval_results.json",
            "train_results.json",
            "data_report.json",
        ]
    )
    metrics = json.loads((repo / "eval_results.json").read_text())
    card = ModelCard.load(repo / "README.md")
    assert "reward-model" in card.data.tags and card.data.library_name == "transformers"
    result = card.data.to_dict()["model-index"][0]["results"][0]
    assert result["metrics"][0]["value"] == round(metrics["eval_accuracy"], 4)
    assert result["dataset"]["name"] == "builtin:code-book"
    assert "reward-trainer train --config recipes/quickstart.yaml --num_synthetic_pairs 250" in card.text
    assert "--push_to_hub true --hub_model_id user/tiny-rm" in card.text

    # The pushed folder alone reproduces the eval rewards: accuracy exactly, mean rewards to float precision.
    model = AutoModelForSequenceClassification.from_pretrained(repo).eval()
    tokenizer = AutoTokenizer.from_pretrained(repo)
    pairs = make_pairs(25, seed=42 + 1)  # the built-in held-out set of 250 pairs, as data.py builds it
    assert len(pairs) == metrics["eval_num_pairs"]
    with torch.no_grad():

        def rewards(key):
            return np.array(
                [model(**tokenizer(p["prompt"] + p[key], return_tensors="pt")).logits[0, 0].item() for p in pairs]
            )

        chosen, rejected = rewards("chosen"), rewards("rejected")
    assert pair_correctness(chosen, rejected).mean() == pytest.approx(metrics["eval_accuracy"], abs=1e-9)
    assert chosen.mean() == pytest.approx(metrics["eval_chosen_reward_mean"], abs=1e-4)
    assert rejected.mean() == pytest.approx(metrics["eval_rejected_reward_mean"], abs=1e-4)


# --- security -----------------------------------------------------------------------------------------------------


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
    recipe = yaml.safe_load((REPO / "recipes" / "quickstart.yaml").read_text())
    assert not recipe.get("trust_remote_code", False)
