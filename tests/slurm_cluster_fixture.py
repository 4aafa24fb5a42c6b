"""The local SLURM cluster of tests/slurm/cluster.sh as a session-wide pytest fixture.

Opt-in only (``pytest --run-slurm`` or ``RB_RUN_SLURM=1``): the cluster (munged, mariadbd,
slurmdbd, slurmctld, slurmd on this machine) needs root and the Debian packages that
``tests/slurm/cluster.sh install`` adds; the fixture never installs them. It is always torn
down, also when a test fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
CLUSTER_SH = REPO / "tests" / "slurm" / "cluster.sh"
# A fixed state dir, separate from the script's default, so a crashed earlier run is cleaned up
# by the next `up` and a cluster started by hand is left alone.
STATE_DIR = os.environ.get("RB_SLURM_TEST_DIR", "/tmp/rb-slurm-pytest")

# Status polling for small test runs. The plugin checks first after init-seconds, then adds 10 s
# per check while no job finishes; a smoke job takes 4-7 s here, so 6 s usually catches it on the
# first check. Only the polling pace: the status command is the one install-profile writes.
FAST_POLLING = {
    "slurm-init-seconds-before-status-checks": 6,
    "seconds-between-status-checks": 6,
}

SLURM_OPT_IN = (
    "SLURM tests are opt-in (they start daemons as root): install the packages with "
    "`tests/slurm/cluster.sh install`, then run `python -m pytest --run-slurm` (or set "
    "RB_RUN_SLURM=1); `bash .ci/run` does both."
)


def slurm_opted_in(config: pytest.Config) -> bool:
    return bool(config.getoption("--run-slurm", default=False)) or (
        os.environ.get("RB_RUN_SLURM") == "1"
    )


def _run_cluster(cmd: str, env: dict[str, str], timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(CLUSTER_SH), cmd],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _parse_exports(stdout: str, base_env: dict[str, str]) -> dict[str, str]:
    """Apply the `export K=V` lines printed by `cluster.sh up` to a copy of base_env."""
    env = dict(base_env)
    for line in stdout.splitlines():
        m = re.fullmatch(r"export (\w+)=(.*)", line.strip())
        if m:
            key, value = m.groups()
            env[key] = value.replace("$PATH", base_env.get("PATH", ""))
    return env


@pytest.fixture(scope="session")
def slurm_cluster(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """A running single-node SLURM cluster; always torn down afterwards.

    Yields a dict with `env` (environment for snakemake/sbatch: SLURM_CONF and PATH with the srun
    wrapper), `slurm_conf`, `account`, `partition`, `state_dir` and `snakemake_args` (CLI flags
    for a quick run on this cluster).
    """
    if not slurm_opted_in(request.config):
        pytest.skip(SLURM_OPT_IN)
    if sys.platform != "linux" or not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.fail("--run-slurm: the local SLURM cluster needs root on Linux (SlurmUser=root)")

    base_env = dict(os.environ, RB_SLURM_DIR=STATE_DIR)
    base_env.pop("SLURM_CONF", None)
    missing = [
        name
        for name in ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd", "sacct")
        if shutil.which(name) is None
    ]
    if missing:  # asked for explicitly, so a missing cluster is a failure, not a skip
        pytest.fail(
            f"the SLURM packages are not installed ({', '.join(missing)} missing); run "
            "`tests/slurm/cluster.sh install` as root first (pytest never installs them)"
        )

    try:
        try:
            up = _run_cluster("up", base_env, timeout=240)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"tests/slurm/cluster.sh up timed out: {exc}")
        if up.returncode != 0:
            pytest.fail(
                f"tests/slurm/cluster.sh up failed (rc {up.returncode}):\n{up.stderr[-6000:]}"
            )
        env = _parse_exports(up.stdout, base_env)
        assert "SLURM_CONF" in env, f"no SLURM_CONF in cluster.sh output:\n{up.stdout}"
        account = env.get("RB_SLURM_ACCOUNT", "rbtest")
        partition = env.get("RB_SLURM_PARTITION", "debug")
        yield {
            "env": env,
            "slurm_conf": env["SLURM_CONF"],
            "account": account,
            "partition": partition,
            "state_dir": STATE_DIR,
            "snakemake_args": [
                "--executor",
                "slurm",
                "--default-resources",
                f"slurm_account={account}",
                f"slurm_partition={partition}",
                "runtime=10",
                "mem_mb=500",
                *[f"--{k}={v}" for k, v in FAST_POLLING.items()],
            ],
        }
    finally:
        down = _run_cluster("down", base_env, timeout=120)
        if down.returncode != 0:
            print(f"tests/slurm/cluster.sh down failed:\n{down.stderr}", file=sys.stderr)
