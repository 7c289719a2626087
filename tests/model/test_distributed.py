"""Data-parallel training through the reversible stacks, with two CPU processes (gloo): DDP's gradients equal one
process's mean over the shards, and FSDP (torch's; accelerate's where it can run) gives DDP's gradients, weights
and α. The programs the processes run are testing/programs/ddp_check.py and fsdp_check.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from testing import launch


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_single_process(tmp_path):
    out = tmp_path / "ddp.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(launch.free_port()), launch.program("ddp_check"),
           str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=launch.env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["worst"] <= 1e-5, result


def _run_fsdp_check(launcher: list[str], out: Path, extra: list[str], env: dict | None = None):
    cmd = launcher + [launch.program("fsdp_check"), str(out)] + extra
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=launch.env(**(env or {})))


@pytest.mark.slow
@pytest.mark.parametrize("version", [1, 2])
def test_fsdp_two_cpu_processes_match_ddp(tmp_path, version):
    """torch's FSDP (one unit, gloo) gives DDP's gradients, weights and α for the reversible model and supernet."""
    out = tmp_path / "fsdp.json"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                "--master_port", str(launch.free_port())]
    proc = _run_fsdp_check(launcher, out, ["--fsdp", str(version)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    for kind in ("model", "supernet"):
        r = result[kind]
        assert r["grad_worst"] <= 1e-5 and r["param_worst"] <= 1e-5 and r["alpha_rank_diff"] == 0.0, (kind, r)
    assert result["supernet"]["alphas"] > 0
    assert "its own FSDP unit" in result["per_layer_error"]


def _accelerate_launcher(version: int) -> list[str]:
    return [str(Path(sys.executable).with_name("accelerate")), "launch", "--use_fsdp", "--fsdp_version", str(version),
            "--fsdp_auto_wrap_policy", "NO_WRAP", "--fsdp_use_orig_params", "true", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(launch.free_port())]


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without an accelerator")
def test_accelerate_fsdp_without_accelerator_refuses_clearly(tmp_path):
    """accelerate 1.x's FSDP needs an accelerator: v1 refuses, v2 silently prepares DDP. The check says so
    (exit code 3) instead of reporting DDP as FSDP."""
    for version in (1, 2):
        proc = _run_fsdp_check(_accelerate_launcher(version), tmp_path / "acc.json", ["--accelerate"],
                               {"ACCELERATE_USE_CPU": "1"})
        assert proc.returncode != 0 and not (tmp_path / "acc.json").exists()
        assert "cannot run here" in proc.stderr or "instead of FSDP" in proc.stderr, proc.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="accelerate's FSDP needs accelerators (2 GPUs here); on "
                    "CPU it refuses (v1) or falls back to DDP (v2), see testing/programs/fsdp_check.py")
@pytest.mark.parametrize("version", [1, 2])
def test_accelerate_fsdp_matches_ddp_on_gpus(tmp_path, version):
    out = tmp_path / "acc.json"
    proc = _run_fsdp_check(_accelerate_launcher(version), out, ["--accelerate"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    for kind in ("model", "supernet"):
        r = result[kind]
        assert r["grad_worst"] <= 1e-4 and r["param_worst"] <= 1e-4 and r["alpha_rank_diff"] == 0.0, (kind, r)
