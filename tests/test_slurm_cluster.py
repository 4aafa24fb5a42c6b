"""Real SLURM run: the smoke workflow through snakemake-executor-plugin-slurm on a local cluster.

The cluster comes from the session fixture `slurm_cluster` (tests/slurm_cluster_fixture.py).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from slurm_cluster_fixture import FAST_POLLING, REPO

pytestmark = pytest.mark.slurm

SMOKE = REPO / "tests" / "slurm" / "smoke"


def _installed_profile(dest: Path, cluster: dict[str, Any]) -> Path:
    """Exactly what `rationale-bench install-profile` writes for this cluster."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rationale_bench.cli",
            "install-profile",
            "--account",
            cluster["account"],
            "--partition",
            cluster["partition"],
            "--target",
            str(dest),
        ],
        env=dict(cluster["env"], PYTHONPATH=str(REPO / "src")),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return dest


def test_smoke_workflow_runs_on_slurm(slurm_cluster: dict[str, Any], tmp_path: Path) -> None:
    workdir = tmp_path / "smoke"
    shutil.copytree(SMOKE, workdir)
    profile = _installed_profile(tmp_path / "profile", slurm_cluster)

    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "snakemake",
                "--profile",
                str(profile),
                *[f"--{k}={v}" for k, v in FAST_POLLING.items()],
                "--latency-wait=10",
            ],
            cwd=workdir,
            env=slurm_cluster["env"],
            capture_output=True,
            text=True,
            timeout=480,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        pytest.fail(f"snakemake on SLURM did not finish in 480 s:\n{out[-4000:]}")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]

    assert "hello from job" in (workdir / "out" / "hello.txt").read_text()
    gpu_env = (workdir / "out" / "gpu_env.txt").read_text().strip()
    # slurmd sets CUDA_VISIBLE_DEVICES from the gres allocation of the `gpu=1` rule.
    assert re.fullmatch(r"CUDA_VISIBLE_DEVICES=\d+", gpu_env), gpu_env
    summary = (workdir / "out" / "summary.txt").read_text()
    assert "CUDA_VISIBLE_DEVICES=" in summary and "hello from job" in summary
    # All three rules went through sbatch (each job got a SLURM job id).
    assert len(re.findall(r"submitted with SLURM jobid \d+", log)) == 3, log[-6000:]
