"""Scale: every accelerate config loads, 2 processes and 2 machines train like 1, bf16 mixed precision on CPU.

The 2-process and 2-machine tests run `accelerate launch scripts/train_reward.py` and the script itself in
subprocesses on a few hundred synthetic pairs, in float64; the bf16 test calls the CLI in-process.
"""

import json
import os
import re
import sys
from pathlib import Path

import pytest
import torch
from conftest import (
    REPO_ROOT,
    SMALL,
    assert_same_sgd_training,
    float64_hook,
    free_port,
    outputs,
    run_together,
    subprocess_env,
    write_varied_lengths,
)
from safetensors.torch import load_file

from reward_trainer import cli

CONFIGS = REPO_ROOT / "accelerate_configs"

# --- accelerate configs ---------------------------------------------------------------------------------------

EXPECTED_CONFIGS = {  # file -> (distributed_type, mixed_precision)
    "cpu.yaml": ("MULTI_GPU", "no"),  # torchrun launcher; `use_cpu` makes the processes CPU-only, over gloo
    "single_gpu.yaml": ("NO", "bf16"),
    "fp16.yaml": ("NO", "fp16"),
    "multi_gpu.yaml": ("MULTI_GPU", "bf16"),
    "multi_node.yaml": ("MULTI_GPU", "bf16"),
    "fsdp.yaml": ("FSDP", "bf16"),
    "fsdp2.yaml": ("FSDP", "bf16"),
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
    fsdp2 = load_config_from_file(str(CONFIGS / "fsdp2.yaml")).fsdp_config
    assert fsdp2["fsdp_version"] == 2 and fsdp2["fsdp_reshard_after_forward"] is True
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


def launch(run: list[str], port: int, *extra: str) -> list[str]:
    """`accelerate launch` of the training script with `accelerate_configs/cpu.yaml` (one machine, 2 processes) and
    a free rendezvous port; `extra` launcher flags (e.g. several machines) override the config's."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "cpu.yaml"),
            "--main_process_port", str(port), *extra, "scripts/train_reward.py", *run]  # fmt: skip


# Float64 plain SGD at the quickstart's learning rate: runs in two layouts then differ by roundoff alone, and
# conftest's bounds follow from the arithmetic (`assert_same_sgd_training`).
SGD = ["--optim", "sgd"]
LEARNING_RATE = 1e-3  # recipes/quickstart.yaml's


def assert_same_evaluation(one: Path, two: Path) -> None:
    """The same eval pairs, each once, and the same metrics. The rewards of the two runs' weights differ by
    roundoff (GRADIENT_ROUNDOFF of their size, below 10 here) plus what the weights' difference (below 1e-14 per
    weight after a few SGD steps at lr 1e-3) makes of them, under sqrt(P) = 690 times a reward's gradient norm
    (below 100 for these 0.02-scale weights): both far below 1e-9, the bound on the metrics (means and stds of
    rewards)."""
    eval_pairs = json.loads((two / "data_report.json").read_text())["eval_pairs"]
    assert eval_pairs % 8 != 0  # so 2 processes x batch 4 would need padding: duplicates would show
    metrics_two = json.loads((two / "eval_results.json").read_text())
    metrics_one = json.loads((one / "eval_results.json").read_text())
    assert metrics_two["eval_num_pairs"] == metrics_one["eval_num_pairs"] == eval_pairs
    # Metrics come from the gathered per-pair rewards, padding removed. (Not `eval_loss`: the stock Trainer
    # averages per-batch losses, and the last batch of a process holds the sampler's padding duplicates.)
    assert metrics_two["eval_accuracy"] == metrics_one["eval_accuracy"]
    for key in ("eval_margin", "eval_chosen_reward_mean", "eval_rejected_reward_std"):
        assert metrics_two[key] == pytest.approx(metrics_one[key], abs=1e-9), key


@pytest.mark.slow  # `accelerate launch` with 2 processes beside a 1-process run: ~15 s
def test_two_processes_match_one_process_and_evaluate_every_pair_once(tmp_path):
    """2 processes x 8 pairs per step == 1 process x 16: same per-step losses and weights, same eval set, one
    writer; the length projection after training sees every training pair once in both, and makes the same edit."""
    write_log = tmp_path / "writes.log"
    # Responses of 1 to 10 words, so that there is a length for the projection to find (the built-in task's are
    # all one word long).
    data = write_varied_lengths(tmp_path / "pairs.jsonl", n=250)
    run = SMALL + SGD + ["--dataset_name", data, "--eval_fraction", "0.1", "--max_steps", "6", "--save_strategy",
                         "steps", "--save_steps", "3", "--length_projection", "true"]  # fmt: skip
    results = run_together(
        {
            "two": launch([*run, "--per_device_train_batch_size", "8", "--output_dir", str(tmp_path / "two")],
                          free_port()),
            "one": [sys.executable, "scripts/train_reward.py", *run, "--per_device_train_batch_size", "16",
                    "--output_dir", str(tmp_path / "one")],
        },
        tmp_path / "logs",
        timeout=300,
        cwd=REPO_ROOT,
        env=subprocess_env(float64_hook(tmp_path / "hook", WRITE_LOGGER), WRITE_LOG=str(write_log)),
    )  # fmt: skip
    assert [code for code, _ in results.values()] == [0, 0], outputs(results)
    out = results["two"][1]
    assert "find_unused_parameters=True was specified" not in out  # no extra autograd traversal per step
    assert "rng_state_1.pth" in os.listdir(tmp_path / "two" / "checkpoint-6")  # really 2 processes

    assert_same_sgd_training(tmp_path / "one" / "checkpoint-6", tmp_path / "two" / "checkpoint-6", LEARNING_RATE)
    assert_same_evaluation(tmp_path / "one", tmp_path / "two")

    projection_two, projection_one = (
        json.loads((tmp_path / name / "train_results.json").read_text()) for name in ("two", "one")
    )
    # The same responses were gathered (the probe's fit and the correlation depend on every one of them). The
    # ridge probe's fitted values move with its inputs by at most 1/(2 sqrt(penalty)) times their change, and its
    # penalty is at least 1e-10 of the largest squared singular value: relative changes of 1e-12 in the inputs move
    # the summary by at most ~1e-7 of its size.
    assert projection_two["length_projection_applied"] == projection_one["length_projection_applied"] == 1
    for key in ("length_projection_coefficient", "length_projection_probe_r2", "length_projection_correlation_before"):
        assert projection_two[key] == pytest.approx(projection_one[key], rel=1e-6, abs=1e-12), key

    writes = [line.split(" ", 1) for line in write_log.read_text().splitlines()]
    by_rank = {rank: {Path(p).name for r, p in writes if r == rank} for rank in {r for r, _ in writes}}
    assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state_0.pth"} <= by_rank["0"]
    assert by_rank["1"] == {"rng_state_1.pth"}  # each process keeps its own RNG state; nothing else


@pytest.mark.slow  # two launches, one per machine, beside a 1-process run: ~20 s
def test_two_machines_match_one_process(tmp_path):
    """2 machines on localhost (accelerate's `--num_machines 2 --machine_rank 0|1`, one process each, an output
    folder each as if on separate disks) x 8 pairs per step == 1 process x 16: same per-step losses and weights,
    same eval metrics."""
    run = SMALL + SGD + ["--max_steps", "6", "--save_strategy", "steps", "--save_steps", "6"]
    port = free_port()
    machines = ["--num_machines", "2", "--num_processes", "2", "--main_process_ip", "127.0.0.1"]
    commands = {
        f"machine{rank}": launch(
            [*run, "--per_device_train_batch_size", "8", "--output_dir", str(tmp_path / f"machine{rank}")],
            port, *machines, "--machine_rank", str(rank),
        )
        for rank in (0, 1)
    }  # fmt: skip
    commands["one"] = [sys.executable, "scripts/train_reward.py", *run, "--per_device_train_batch_size", "16",
                       "--output_dir", str(tmp_path / "one")]  # fmt: skip
    results = run_together(
        commands, tmp_path / "logs", timeout=300, cwd=REPO_ROOT, env=subprocess_env(float64_hook(tmp_path / "hook"))
    )
    assert [code for code, _ in results.values()] == [0, 0, 0], outputs(results)
    # Rank 1 ran on the second machine: it kept its RNG state there, and left the model to the main machine.
    assert (tmp_path / "machine1" / "checkpoint-6" / "rng_state_1.pth").exists(), outputs(results)
    assert not (tmp_path / "machine1" / "model.safetensors").exists()
    assert_same_sgd_training(tmp_path / "one" / "checkpoint-6", tmp_path / "machine0" / "checkpoint-6", LEARNING_RATE)
    assert_same_evaluation(tmp_path / "one", tmp_path / "machine0")


# --- mixed precision ----------------------------------------------------------------------------------------------


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
