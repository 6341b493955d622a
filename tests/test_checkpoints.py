"""Crash safety: half-written checkpoints are detected and skipped, a run killed with SIGKILL resumes to the
uninterrupted weights, a non-finite loss stops training with the step named and the last good checkpoint kept.

The SIGKILL test runs `scripts/train_reward.py` in subprocesses; the others work on folders or call the CLI
in-process.
"""

import json
import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, SMALL, step_losses, subprocess_env
from safetensors.torch import load_file, save_file

from reward_trainer import cli
from reward_trainer.checkpoints import checkpoint_problems, find_resume_checkpoint, resolve_resume_checkpoint
from reward_trainer.trainer import RewardTrainer


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


@pytest.mark.slow  # three training runs in subprocesses: ~13 s
def test_sigkill_then_auto_resume_gives_the_uninterrupted_weights(tmp_path):
    """Kill -9 at a step after two checkpoints, damage the newest one as a half-written save would, rerun with
    `--resume_from_checkpoint auto`: same per-step losses (same data order) and same final weights.

    The kill step comes from `random.Random(0)` (seed 0: step 24), so a failure reruns at the same step; change the
    seed to try another."""
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
        cwd=REPO_ROOT,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    crashed = tmp_path / "crashed"
    victim = subprocess.Popen(
        run + ["--output_dir", str(crashed)],
        cwd=REPO_ROOT,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    kill_at = random.Random(0).randint(12, 35)  # logs of step 11 come after checkpoint-10 is fully written
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
        cwd=REPO_ROOT,
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
    # Exact: the resumed run repeats the uninterrupted one's operations, in the same order, on the same machine and
    # one thread, from the state the checkpoint holds to the bit (weights, optimizer, schedule, RNG, data order).
    # Any difference is state the checkpoint lost, which AdamW would blow up to ~lr per weight, never roundoff.
    assert [got[s] for s in range(1, 61)] == [expected[s] for s in range(1, 61)]
    reference_weights, resumed_weights = (
        load_file(tmp_path / "reference" / "model.safetensors"),
        load_file(crashed / "model.safetensors"),
    )
    assert reference_weights.keys() == resumed_weights.keys()
    for name, value in reference_weights.items():
        assert torch.equal(value, resumed_weights[name]), name


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
