"""The study on a real SLURM cluster, typed as a user would: `snakemake --profile slurm`.

The profile is installed by `rationale-bench install-profile` (into XDG_CONFIG_HOME, so the
user's own ~/.config is untouched). Then a training job is cancelled with scancel mid-run and
the rerun resumes it from its checkpoint.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import yaml
from slurm_cluster_fixture import FAST_POLLING

from rationale_bench import cli

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "tests" / "configs" / "slurm.yaml"
RUN = Path(
    "results/runs/model=tiny/serialization=timeline_recent/format=label_only/n_train=64/seed=1"
)
CHECKPOINT = Path(
    "results/checkpoints/model=tiny/serialization=timeline_recent/format=label_only/n_train=64/seed=1"
)
# Test-cluster settings a user would not need: fast status polling, squeue (plugin 2.8 does not
# recognise sacct's "CANCELLED by <uid>"), a short filesystem latency wait.
TEST_FLAGS = [f"--{key}={value}" for key, value in FAST_POLLING.items()] + ["--latency-wait=5"]


@pytest.fixture(scope="module")
def user(slurm_cluster, tmp_path_factory):
    """A user's environment: the cluster's client config and an installed 'slurm' profile."""
    home = tmp_path_factory.mktemp("user")
    cli.main(
        [
            "install-profile",
            "--account",
            slurm_cluster["account"],
            "--partition",
            slurm_cluster["partition"],
            "--target",
            str(home / "config" / "snakemake" / "slurm"),
        ]
    )
    env = dict(slurm_cluster["env"], XDG_CONFIG_HOME=str(home / "config"))
    env["PYTHONPATH"] = str(REPO / "src")
    workdir = home / "study"
    workdir.mkdir()
    shutil.copy(STUDY, workdir / "study.yaml")
    return {"env": env, "workdir": workdir}


def slurm_command(*args: str) -> list[str]:
    """`snakemake --profile slurm` on the study, as the user types it (plus test flags)."""
    return [
        sys.executable,
        "-m",
        "snakemake",
        "--profile",
        "slurm",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--configfile",
        "study.yaml",
        *TEST_FLAGS,
        *args,
    ]


def snakemake_slurm(user, *args, timeout=900):
    return subprocess.run(
        slurm_command(*args),
        cwd=user["workdir"],
        env=user["env"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_study_runs_through_the_slurm_profile(user):
    result = snakemake_slurm(user)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-8000:]
    assert "submitted with SLURM jobid" in log or "SLURM run ID" in log
    workdir = user["workdir"]
    table = pl.read_csv(workdir / "results" / "report" / "metrics.csv")
    assert table.filter(pl.col("model").is_not_null()).height == 2
    for fmt in ("label_only", "free_form"):
        run = json.loads((workdir / str(RUN).replace("label_only", fmt) / "run.json").read_text())
        # The GPU job got a (fake) device from SLURM's gres allocation, and ran as a SLURM job.
        assert run["cuda_visible_devices"] not in (None, ""), run
        assert run["slurm_job_id"], run


def test_cancelled_training_job_resumes_from_its_checkpoint(user, slurm_cluster):
    workdir = user["workdir"]
    study = yaml.safe_load((workdir / "study.yaml").read_text())
    # Long enough to be caught mid-run: many short steps, a checkpoint every 2.
    study["models"]["tiny"]["training"].update(learning_rate=0.0011)
    study["training"]["epochs"] = 150  # 600 steps: tens of seconds to catch it running
    # Only label-only: the edit above would otherwise retrain the free-form job too.
    study["grid"]["format"] = ["label_only"]
    (workdir / "study.yaml").write_text(yaml.safe_dump(study))
    first = subprocess.Popen(
        slurm_command("--retries=0"),
        cwd=workdir,
        env=user["env"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    state = workdir / CHECKPOINT / "state.pt"
    deadline = time.time() + 600
    while not state.exists():
        assert first.poll() is None, first.stdout.read()[-6000:]
        assert time.time() < deadline, "no checkpoint appeared within 10 minutes"
        time.sleep(1)
    jobs = subprocess.run(
        ["squeue", "-h", "-o", "%i %k"], env=user["env"], capture_output=True, text=True, check=True
    ).stdout
    training = [line.split()[0] for line in jobs.splitlines() if "finetune" in line]
    assert training, jobs
    subprocess.run(["scancel", *training], env=user["env"], check=True)
    output, _ = first.communicate(timeout=600)
    assert first.returncode != 0, output[-6000:]  # the cancelled job failed the run
    assert state.exists() or (workdir / CHECKPOINT).exists()

    # The user reruns the study as before (a target of metrics.json alone would be considered
    # up to date: Snakemake does not rebuild a missing intermediate under an existing target).
    rerun = snakemake_slurm(user)
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-8000:]
    run = json.loads((workdir / RUN / "run.json").read_text())
    assert run["resumed_from_step"] > 0, run
    log = [
        json.loads(line)["step"]
        for line in (workdir / RUN / "train_log.jsonl").read_text().splitlines()
    ]
    assert log == list(range(1, run["optimizer_steps"] + 1))
    assert not (workdir / CHECKPOINT).exists()  # removed once training finished
