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
import yaml
from slurm_cluster_fixture import FAST_POLLING, REPO

pytestmark = pytest.mark.slurm

SMOKE = REPO / "tests" / "slurm" / "smoke"
PROFILE_TEMPLATE = REPO / "profiles" / "slurm" / "config.yaml"


def _test_profile(dest: Path, account: str, partition: str) -> Path:
    """The user profile template with the test cluster's account/partition and fast polling."""
    profile = yaml.safe_load(PROFILE_TEMPLATE.read_text())
    profile["default-resources"].update(
        {
            "slurm_account": account,
            "slurm_partition": partition,
            "runtime": "10 * attempt",
            "mem_mb": "500 * attempt",
        }
    )
    profile.update(FAST_POLLING)
    profile["jobs"] = 4
    profile["latency-wait"] = 10
    dest.mkdir(parents=True)
    (dest / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return dest


def test_smoke_workflow_runs_on_slurm(slurm_cluster: dict[str, Any], tmp_path: Path) -> None:
    workdir = tmp_path / "smoke"
    shutil.copytree(SMOKE, workdir)
    profile = _test_profile(
        tmp_path / "profile", slurm_cluster["account"], slurm_cluster["partition"]
    )

    try:
        proc = subprocess.run(
            [sys.executable, "-m", "snakemake", "--profile", str(profile)],
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
