"""What this machine is and computes fast: the device rule, the precision rule, the machine line of every benchmark.

Device rule (every command: train, evaluate, rewardbench, best-of-n, the scorer, the server):
    `--device` when given; else the CPU when accelerate was told so (`ACCELERATE_USE_CPU`, which `accelerate
    launch --cpu` sets, as does a config's `use_cpu: true` under its single-process launcher; its multi-process
    launcher does not, hence `gpu_ids` in accelerate_configs/cpu.yaml); else the accelerator torch sees (`cuda`,
    `xpu`, `mps`, ...), the process's own one under a multi-process launch (`LOCAL_RANK`); else the CPU.

Precision rule (training, when neither `--bf16` nor `--fp16` is given and no `accelerate launch` config names a
mixed precision):
    bf16 autocast where the device computes bf16 natively: a GPU with bf16 (`torch.cuda.is_bf16_supported`), a
        CPU with avx512_bf16 or AMX whose kernels torch and oneDNN are allowed to use;
    fp16 with a dynamic loss scale on a GPU without bf16 (V100, T4);
    fp32 elsewhere: a CPU without native bf16 emulates it, tens of times slower than fp32 (`bf16_slowdown`).
Weights stay fp32 in every case (autocast): the optimizer updates fp32 master weights.

The CPU's kind is read from torch's own kernel dispatch (`torch.backends.cpu.get_cpu_capability()`, which
`ATEN_CPU_CAPABILITY` can lower) and from /proc/cpuinfo's flags; `ONEDNN_MAX_CPU_ISA` below the bf16 ISAs also
rules native bf16 out, since oneDNN runs the bf16 matrix products.
"""

import functools
import logging
import os
import platform
import time
from dataclasses import dataclass

import torch

logger = logging.getLogger("reward_trainer")

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# oneDNN ISA names (ONEDNN_MAX_CPU_ISA) that include the bf16 instructions.
ONEDNN_BF16_ISAS = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16", "AVX10", "ALL")


@dataclass(frozen=True)
class CpuInfo:
    """The CPU as torch uses it: model name, cores torch may use, torch's kernel dispatch level and the flags that
    decide bf16 speed."""

    model: str
    cores: int
    capability: str  # torch.backends.cpu.get_cpu_capability(): "AVX2", "AVX512", "DEFAULT", ...
    flags: frozenset[str]  # from /proc/cpuinfo, of `KNOWN_FLAGS`

    KNOWN_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")

    @property
    def kind(self) -> str:
        """The most capable of avx2 / avx512 / avx512_bf16 / AMX that torch's kernels use here."""
        if self.capability.startswith("AVX512"):
            if "amx_bf16" in self.flags:
                return "AMX"
            return "avx512_bf16" if "avx512_bf16" in self.flags else "avx512"
        return self.capability.lower()

    @property
    def native_bf16(self) -> bool:
        """Whether bf16 matrix products run in hardware here (not emulated): avx512_bf16 or AMX, used by torch and
        allowed to oneDNN."""
        isa = os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", "ALL")).upper()
        return self.kind in ("avx512_bf16", "AMX") and isa.startswith(ONEDNN_BF16_ISAS)


@functools.cache
def cpu_info() -> CpuInfo:
    """This machine's `CpuInfo` (read once)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name":
                    model = value.strip()
                elif key in ("flags", "Features"):
                    flags |= set(value.split())
                    break  # one core's lines are enough: the model name comes before the flags
    except OSError:  # not Linux
        pass
    return CpuInfo(
        model=model,
        cores=torch.get_num_threads(),
        capability=torch.backends.cpu.get_cpu_capability(),
        flags=frozenset(f for f in CpuInfo.KNOWN_FLAGS if f in flags),
    )


def accelerator_type() -> str | None:
    """The accelerator torch sees (`cuda`, `xpu`, `mps`, ...), or None."""
    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6
    if accelerator is not None:
        return accelerator.current_accelerator().type if accelerator.is_available() else None
    return "cuda" if torch.cuda.is_available() else None


def accelerate_wants_cpu() -> bool:
    """Whether `accelerate launch` was told to keep the processes on the CPU (`--cpu`, or `use_cpu: true` under
    its single-process launcher)."""
    return os.environ.get("ACCELERATE_USE_CPU", "").strip().lower() in ("1", "true", "yes", "on", "y")


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The device rule of this module's docstring: `device` when given, else the CPU if accelerate says so, else
    the accelerator (this process's own under a multi-process launch), else the CPU."""
    if device is not None and str(device) != "auto":
        return torch.device(device)
    kind = None if accelerate_wants_cpu() else accelerator_type()
    if kind is None:
        return torch.device("cpu")
    if kind == "mps":
        return torch.device("mps")
    return torch.device(kind, int(os.environ.get("LOCAL_RANK", 0)))


@dataclass(frozen=True)
class Precision:
    """A training precision and why it was chosen."""

    name: str  # fp32, bf16 or fp16
    reason: str


def bf16_slowdown() -> str:
    """A warning's words for bf16 forced on a CPU that emulates it, with the slowdown measured now (a short matmul
    probe in each dtype)."""
    info = cpu_info()
    fp32, bf16 = (matmul_peak(dtype, size=256, seconds=0.2)[0] for dtype in (torch.float32, torch.bfloat16))
    return (
        f"this CPU ({info.model}, torch kernels {info.capability}) has no native bf16: its bf16 matrix products are "
        f"emulated, {fp32 / bf16:.0f}x slower than fp32 here (measured); use --bf16 false, or leave --bf16 and "
        "--fp16 unset for the automatic choice"
    )


def choose_precision(device: torch.device) -> Precision:
    """The automatic training precision on `device` (see the module docstring)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        if torch.cuda.is_bf16_supported():
            return Precision("bf16", f"GPU {name} computes bf16 natively")
        return Precision("fp16", f"GPU {name} has no bf16: fp16 with a dynamic loss scale")
    if device.type == "cpu":
        info = cpu_info()
        if info.native_bf16:
            return Precision("bf16", f"CPU {info.model} has native bf16 ({info.kind})")
        return Precision("fp32", f"CPU {info.model} ({info.kind}) has no native bf16: it would be emulated")
    return Precision("fp32", f"{device.type}: fp32 (no automatic mixed precision for this device)")


def available_memory_bytes(device: torch.device) -> int | None:
    """Memory free for this process on `device`: the GPU's free memory, or the machine's available RAM
    (/proc/meminfo's MemAvailable, within a cgroup limit if one is set); None where it cannot be read."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            fields = dict(line.split(":", 1) for line in f)
        available = int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path, encoding="utf-8") as f:
                limit = f.read().strip()
        except OSError:
            continue
        if limit.isdigit() and int(limit) < available:
            available = int(limit)
    return available


def gpu_names() -> list[str]:
    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def machine_line() -> str:
    """One line naming the hardware a figure was measured on: CPU model, its kind, cores, the GPU if any."""
    info = cpu_info()
    gpus = gpu_names()
    gpu = f"GPU {gpus[0]}" + (f" x{len(gpus)}" if len(gpus) > 1 else "") if gpus else "no GPU"
    bf16 = "native bf16" if info.native_bf16 else "no native bf16"
    return (
        f"machine: CPU {info.model}, {info.kind} (torch kernels {info.capability}, {bf16}), {info.cores} threads, "
        f"{os.cpu_count()} cores; {gpu}; torch {torch.__version__}"
    )


def matmul_peak(
    dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", size: int = 2048, seconds: float = 2.0
) -> tuple[float, float]:
    """Measured matmul FLOP/s on `device` in `dtype`, and FLOP per CPU-second of this process (equal to the first
    on a GPU), best of repeated rounds of `size` x `size` products: the peak MFU is measured against."""
    device = torch.device(device)
    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    best, best_cpu, deadline, rounds = 0.0, 0.0, time.perf_counter() + seconds, 0
    while rounds < 2 or time.perf_counter() < deadline:  # the first round warms up; an emulated dtype stops early
        start, cpu_start = time.perf_counter(), time.process_time()
        a @ b
        sync()
        rounds += 1
        if rounds == 1:
            continue
        flops = 2 * size**3
        best = max(best, flops / (time.perf_counter() - start))
        cpu = time.process_time() - cpu_start
        best_cpu = max(best_cpu, flops / cpu if device.type == "cpu" and cpu > 0 else best)
    return best, best_cpu
