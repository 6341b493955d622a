"""The machine rules of `reward_trainer.hardware`, with the hardware faked: the precision chosen for CPUs with and
without native bf16 and GPUs with and without bf16, what overrides it, and the CPU kept when accelerate says so."""

import json
import logging
import sys

import pytest
import torch
from conftest import REPO_ROOT, free_port, outputs, pretend_gpu, run_together, subprocess_env

from reward_trainer import hardware
from reward_trainer.config import RewardConfig

MODEL = "AMD EPYC 9B14"
CPUS = {  # kind -> (torch's kernel dispatch, /proc/cpuinfo flags)
    "AMX": ("AVX512", {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}),
    "avx512_bf16": ("AVX512", {"avx2", "avx512f", "avx512_bf16"}),
    "avx512": ("AVX512", {"avx2", "avx512f"}),
    "avx2": ("AVX2", {"avx2"}),
    # AVX-512 silicon whose torch kernels were held to AVX2 (ATEN_CPU_CAPABILITY=avx2): torch runs no bf16 there
    "avx512_bf16 held to AVX2": ("AVX2", {"avx2", "avx512f", "avx512_bf16"}),
}
NATIVE_BF16 = {"AMX": True, "avx512_bf16": True, "avx512": False, "avx2": False, "avx512_bf16 held to AVX2": False}


def fake_cpu(monkeypatch, kind: str) -> None:
    capability, flags = CPUS[kind]
    monkeypatch.setattr(hardware, "cpu_info", lambda: hardware.CpuInfo(MODEL, 2, capability, frozenset(flags)))


@pytest.fixture(autouse=True)
def no_launcher(monkeypatch):
    """No `accelerate launch` around these tests, whatever launched pytest."""
    for name in ("ACCELERATE_USE_CPU", "ACCELERATE_MIXED_PRECISION", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("kind", sorted(CPUS))
def test_the_cpu_precision_is_bf16_only_where_bf16_is_native(monkeypatch, kind):
    fake_cpu(monkeypatch, kind)
    assert hardware.cpu_info().native_bf16 is NATIVE_BF16[kind]
    choice = hardware.choose_precision(torch.device("cpu"))
    assert choice.name == ("bf16" if NATIVE_BF16[kind] else "fp32") and MODEL in choice.reason, choice


@pytest.mark.parametrize(
    "isa, native", [("AVX2", False), ("avx512_core", False), ("AVX512_CORE_BF16", True), ("AVX512_CORE_AMX", True)]
)
def test_onednn_held_below_the_bf16_isas_rules_native_bf16_out(monkeypatch, isa, native):
    """oneDNN runs the bf16 matrix products: held to an ISA without bf16 (ONEDNN_MAX_CPU_ISA), it emulates them."""
    fake_cpu(monkeypatch, "avx512_bf16")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
    assert hardware.cpu_info().native_bf16 is native
    assert hardware.choose_precision(torch.device("cpu")).name == ("bf16" if native else "fp32")


@pytest.mark.parametrize("bf16, expected", [(True, "bf16"), (False, "fp16")])
def test_a_gpu_trains_in_bf16_where_it_has_it_else_fp16(monkeypatch, tmp_path, bf16, expected):
    fake_cpu(monkeypatch, "avx2")
    pretend_gpu(monkeypatch, bf16)
    choice = hardware.choose_precision(torch.device("cuda", 0))
    assert choice.name == expected and "NVIDIA Test GPU" in choice.reason
    args = RewardConfig(output_dir=str(tmp_path))  # the CPU lacks native bf16; the GPU decides
    assert not args.use_cpu and args.precision.name == expected
    assert (args.bf16, args.fp16) == (expected == "bf16", expected == "fp16")


@pytest.mark.parametrize("kind", ["avx512_bf16", "avx2"])
@pytest.mark.parametrize("flag, expected", [("bf16", "bf16"), ("fp16", "fp16"), (None, "fp32")])
def test_an_explicit_flag_wins(monkeypatch, tmp_path, kind, flag, expected):
    """`--bf16` / `--fp16` given (true, or both false: fp32) whatever the machine would choose."""
    fake_cpu(monkeypatch, kind)
    pretend_gpu(monkeypatch, bf16=True)  # fp16 autocast is a GPU's: the stock arguments refuse it on a CPU
    args = RewardConfig(output_dir=str(tmp_path), bf16=flag == "bf16", fp16=flag == "fp16")
    assert args.precision == hardware.Precision(expected, "set by --bf16 / --fp16")
    assert (args.bf16, args.fp16) == (flag == "bf16", flag == "fp16")


@pytest.mark.parametrize("launched", ["bf16", "fp16", "no"])
def test_the_mixed_precision_of_an_accelerate_launch_config_wins_over_the_automatic_choice(
    monkeypatch, tmp_path, launched
):
    fake_cpu(monkeypatch, "avx2")
    pretend_gpu(monkeypatch, bf16=True)  # the automatic choice would be bf16
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", launched)  # what `accelerate launch` passes its processes
    args = RewardConfig(output_dir=str(tmp_path))
    expected = "bf16" if launched == "no" else launched  # "no": the config names none, the machine decides
    assert args.precision.name == expected and (args.bf16, args.fp16) == (expected == "bf16", expected == "fp16")
    assert ("accelerate launch config" in args.precision.reason) is (launched != "no")
    # A flag on the command line is more specific than the launch config.
    assert RewardConfig(output_dir=str(tmp_path), bf16=False).precision.name == "fp32"


def test_bf16_forced_on_a_cpu_without_native_bf16_warns_of_the_slowdown(monkeypatch, tmp_path, caplog):
    fake_cpu(monkeypatch, "avx2")
    with caplog.at_level(logging.WARNING, logger="reward_trainer"):
        args = RewardConfig(output_dir=str(tmp_path), bf16=True)
    assert args.bf16 and args.use_cpu and args.precision.name == "bf16"
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "--bf16" in warning and "no native bf16" in warning and "slower than fp32" in warning, warning
    assert MODEL in warning
    caplog.clear()
    fake_cpu(monkeypatch, "avx512_bf16")
    with caplog.at_level(logging.WARNING, logger="reward_trainer"):
        RewardConfig(output_dir=str(tmp_path), bf16=True)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


@pytest.mark.parametrize("kind", ["avx512_bf16", "avx2"])
def test_accelerate_use_cpu_keeps_a_run_off_the_gpu(monkeypatch, tmp_path, kind):
    """`ACCELERATE_USE_CPU` (set by `accelerate launch --cpu`): the CPU on a machine with a GPU, in the CPU's
    precision; without it the GPU is taken."""
    fake_cpu(monkeypatch, kind)
    pretend_gpu(monkeypatch, bf16=False)  # so that the GPU's choice (fp16) differs from every CPU's
    assert not RewardConfig(output_dir=str(tmp_path)).use_cpu
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    args = RewardConfig(output_dir=str(tmp_path))
    assert args.use_cpu and args.device == torch.device("cpu")
    assert hardware.resolve_device() == torch.device("cpu")
    assert args.precision.name == ("bf16" if NATIVE_BF16[kind] else "fp32") and MODEL in args.precision.reason


@pytest.mark.parametrize("how", ["--cpu", "use_cpu: true"])
def test_accelerates_single_process_launcher_passes_use_cpu_on(tmp_path, how):
    """`accelerate launch --cpu`, or a config's `use_cpu: true` under its single-process launcher, sets
    `ACCELERATE_USE_CPU` for the script. Its multi-process launcher does not: see the next test."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_simple_launcher_cmd_env

    config = tmp_path / "single.yaml"
    config.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: 'NO'\nnum_processes: 1\nuse_cpu: true\n")
    flags = ["--cpu"] if how == "--cpu" else ["--config_file", str(config)]
    launch_args, _, _ = _validate_launch_command(launch_command_parser().parse_args([*flags, "train.py"]))
    _, env = prepare_simple_launcher_cmd_env(launch_args)
    assert env["ACCELERATE_USE_CPU"] == "True"


SHOW_DEVICE = """
import json, os
from reward_trainer import hardware
from reward_trainer.config import RewardConfig
rank = os.environ["RANK"]
args = RewardConfig(output_dir=os.path.join(os.environ["OUT"], rank))
seen = {"world": os.environ["WORLD_SIZE"], "device": args.device.type, "use_cpu": args.use_cpu,
        "accelerator": hardware.accelerator_type()}
with open(os.path.join(os.environ["OUT"], f"rank{rank}.json"), "w") as f:  # one file each: prints interleave
    json.dump(seen, f)
"""

# Every process of the launch (launcher included) sees a CUDA GPU: the launcher finds it as accelerate does
# (`torch.accelerator.current_accelerator`), the processes as reward_trainer does, unless its devices are hidden.
FAKE_GPU_SITECUSTOMIZE = """
import os, torch
if os.environ.get("CUDA_VISIBLE_DEVICES", "") == "":
    torch.accelerator.current_accelerator = lambda *args, **kwargs: torch.device("cuda")
    torch.accelerator.is_available = lambda: True
"""


@pytest.mark.slow  # `accelerate launch` of 2 processes: ~15 s
def test_the_cpu_launch_config_keeps_every_process_off_the_gpu(tmp_path):
    """`accelerate_configs/cpu.yaml` on a machine with a GPU: accelerate's multi-process launcher does not pass
    `use_cpu: true` on to the processes (no `ACCELERATE_USE_CPU`), so the config hides the GPUs from them
    (`gpu_ids`), and every rank trains on the CPU over gloo rather than all on cuda:0."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(FAKE_GPU_SITECUSTOMIZE)
    script = tmp_path / "show_device.py"
    script.write_text(SHOW_DEVICE)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "accelerate_configs/cpu.yaml",
               "--main_process_port", str(free_port()), str(script)]  # fmt: skip
    results = run_together(
        {"launch": command}, tmp_path / "logs", timeout=300, cwd=REPO_ROOT, env=subprocess_env(hook, OUT=str(tmp_path))
    )
    assert results["launch"][0] == 0, outputs(results)
    for rank in (0, 1):
        seen = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert seen == {"world": "2", "device": "cpu", "use_cpu": True, "accelerator": None}, (rank, seen)


@pytest.mark.slow  # two short training runs: ~10 s
@pytest.mark.parametrize("kind, expected", [("avx2", "fp32"), ("avx512_bf16", "bf16")])
def test_a_run_records_its_precision(monkeypatch, tmp_path, kind, expected):
    from reward_trainer.cli import main

    fake_cpu(monkeypatch, kind)
    out = tmp_path / "run"
    argv = ["train", "--config", "recipes/quickstart.yaml", "--num_synthetic_pairs", "64", "--max_steps", "2",
            "--eval_strategy", "no", "--disable_tqdm", "true", "--output_dir", str(out)]  # fmt: skip
    monkeypatch.chdir(REPO_ROOT)
    assert main(argv) == 0
    recorded = json.loads((out / "config.json").read_text())["training_precision"]
    assert recorded["precision"] == expected and MODEL in recorded["reason"], recorded
    assert json.loads((out / "train_results.json").read_text())["precision"] == expected
