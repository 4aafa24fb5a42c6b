"""The study on a real SLURM cluster, typed as a user would: `snakemake --profile slurm`.

The profile is exactly what `rationale-bench install-profile` writes into $XDG_CONFIG_HOME (the
user's own ~/.config is untouched); the command line adds only a faster status-polling pace.
Faults are made as the scheduler makes them: `scancel`, a time limit, a controller killed with
SIGKILL. Opt-in: `pytest --run-slurm` (see tests/slurm_cluster_fixture.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import yaml
from slurm_cluster_fixture import FAST_POLLING

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "tests" / "configs" / "slurm.yaml"
CONFIG_ID = "model=tiny/serialization=timeline_recent/format=label_only/n_train=64/seed=1"
RUN = Path("results/runs") / CONFIG_ID
CHECKPOINT = Path("results/checkpoints") / CONFIG_ID
FINETUNE_LOG = Path("results/logs/finetune") / f"{CONFIG_ID}.log"
# Test-cluster pace only (a user keeps the profile's 40 s), and a short filesystem latency wait.
TEST_FLAGS = [f"--{key}={value}" for key, value in FAST_POLLING.items()] + ["--latency-wait=5"]


@pytest.fixture(scope="module")
def user(slurm_cluster, tmp_path_factory):
    """A user's environment: the cluster's client config and an installed 'slurm' profile."""
    home = tmp_path_factory.mktemp("user")
    env = dict(slurm_cluster["env"], XDG_CONFIG_HOME=str(home / "config"))
    env["PYTHONPATH"] = str(REPO / "src")
    # install-profile talks to the cluster (MinJobAge, account, partition): run it as the user
    # would, in the cluster's environment, with no --target (XDG_CONFIG_HOME decides).
    installed = subprocess.run(
        [
            sys.executable,
            "-m",
            "rationale_bench.cli",
            "install-profile",
            "--account",
            slurm_cluster["account"],
            "--partition",
            slurm_cluster["partition"],
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    profile = yaml.safe_load((home / "config" / "snakemake" / "slurm" / "config.yaml").read_text())
    # The test cluster keeps ended jobs for 600 s (MinJobAge), so squeue is the choice.
    assert profile["slurm-status-command"] == "squeue", installed.stdout
    assert "[ok] partition 'debug'" in installed.stdout, installed.stdout
    workdir = home / "study"
    workdir.mkdir()
    shutil.copy(STUDY, workdir / "study.yaml")
    return {"env": env, "workdir": workdir}


def slurm_command(*args: str) -> list[str]:
    """`snakemake --profile slurm` on the study, as the user types it (plus test pace)."""
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
    try:
        return subprocess.run(
            slurm_command(*args),
            cwd=user["workdir"],
            env=user["env"],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        pytest.fail(f"the controller did not finish in {timeout} s (hung?):\n{out[-6000:]}")


def start_controller(user, *args) -> subprocess.Popen:
    return subprocess.Popen(
        slurm_command(*args),
        cwd=user["workdir"],
        env=user["env"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def edit_study(user, epochs: int, runtime: int, **training) -> None:
    """Only label-only, with changed training settings (so that it trains again), `epochs`
    epochs (4 steps each) and a runtime limit in minutes (doubled on the retry)."""
    path = user["workdir"] / "study.yaml"
    study = yaml.safe_load(path.read_text())
    study["models"]["tiny"]["training"].update(training)
    study["models"]["tiny"]["resources"]["runtime"] = runtime
    study["training"]["epochs"] = epochs
    study["grid"]["format"] = ["label_only"]
    path.write_text(yaml.safe_dump(study))


def wait_for_steps(user, controller: subprocess.Popen, n: int, timeout: int = 900) -> int:
    """Wait until the new training job has logged at least n steps; the number logged."""
    log = user["workdir"] / RUN / "train_log.jsonl"
    started = time.time()
    deadline = started + timeout
    while True:
        fresh = log.exists() and log.stat().st_mtime > started
        steps = len(log.read_text().splitlines()) if fresh else 0
        if steps >= n:
            return steps
        assert controller.poll() is None, controller.stdout.read()[-6000:]
        assert time.time() < deadline, f"training did not reach step {n} in {timeout} s"
        time.sleep(0.5)


def finetune_jobs(user) -> list[str]:
    """SLURM ids of live fine-tuning jobs (the plugin puts the rule in the job comment)."""
    out = subprocess.run(
        ["squeue", "-h", "-o", "%i %k"], env=user["env"], capture_output=True, text=True
    ).stdout
    return [line.split()[0] for line in out.splitlines() if "rule_finetune" in line]


def assert_no_leftovers(workdir: Path) -> None:
    """After success: no checkpoint folder (.tmp included) and no lock of any configuration."""
    checkpoints = workdir / "results" / "checkpoints"
    left = [p for p in checkpoints.rglob("*") if p.is_dir() and p.name.startswith("seed=")]
    assert not left, left
    locks = workdir / "results" / "locks"
    assert not list(locks.rglob("*.json")) if locks.exists() else True


def attempt_logs(workdir: Path) -> list[str]:
    folder = workdir / FINETUNE_LOG.with_name(FINETUNE_LOG.name + ".attempts")
    return [p.read_text() for p in sorted(folder.glob("*.log"))]


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
    assert_no_leftovers(workdir)


def test_scancel_with_sigterm_checkpoint_only_resumes_at_the_cancelled_step(user):
    """checkpoint_every: 0, scancel mid-training, the profile's own retry resumes; weights equal
    an uninterrupted CPU run; the shipped status command lets the controller see CANCELLED."""
    workdir = user["workdir"]
    edit_study(user, epochs=50, runtime=10, checkpoint_every=0, learning_rate=0.0011)
    controller = start_controller(user)
    logged = wait_for_steps(user, controller, 10)
    jobs = finetune_jobs(user)
    assert len(jobs) == 1, jobs
    subprocess.run(["scancel", jobs[0]], env=user["env"], check=True)
    try:
        output, _ = controller.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        os.killpg(controller.pid, signal.SIGINT)
        pytest.fail("the controller hung after scancel")
    assert controller.returncode == 0, output[-8000:]  # the retry finished the study
    assert "SLURM status is: 'CANCELLED'" in output, output[-8000:]

    run = json.loads((workdir / RUN / "run.json").read_text())
    first, second = attempt_logs(workdir)[-2:]
    stopped = int(re.search(r"SIGTERM at step (\d+)/", first).group(1))
    assert logged <= stopped < run["optimizer_steps"]  # stopped soon after the scancel ...
    assert run["resumed_from_step"] == stopped  # ... and nothing of it was lost
    assert "attempt 2" in second.splitlines()[0], second[:500]
    assert "attempt 2" in (workdir / FINETUNE_LOG).read_text().splitlines()[0]
    steps = [
        json.loads(line)["step"]
        for line in (workdir / RUN / "train_log.jsonl").read_text().splitlines()
    ]
    assert steps == list(range(1, run["optimizer_steps"] + 1))
    assert_no_leftovers(workdir)

    # The same configuration trained without interruption, on CPU outside SLURM.
    from safetensors.torch import load_file

    resumed = load_file(workdir / RUN / "adapter" / "model.safetensors")
    local = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--cores",
            "1",
            "--snakefile",
            str(REPO / "Snakefile"),
            "--configfile",
            "study.yaml",
            "--forcerun",
            "finetune",
            str(RUN / "run.json"),
        ],
        cwd=workdir,
        env=user["env"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert local.returncode == 0, (local.stdout + local.stderr)[-6000:]
    uninterrupted = load_file(workdir / RUN / "adapter" / "model.safetensors")
    assert resumed.keys() == uninterrupted.keys()
    for key in resumed:
        assert (resumed[key] == uninterrupted[key]).all(), key


def test_time_limit_retry_resumes_where_it_stopped(user):
    """A two-minute runtime: SLURM sends SIGTERM at the limit (TIMEOUT); the retry (twice the
    runtime) resumes at the step where the first attempt stopped. 4,000 steps: more than one
    attempt does on any machine here, so the retry may time out as well; what is checked is
    where it starts."""
    workdir = user["workdir"]
    edit_study(user, epochs=1000, runtime=2, checkpoint_every=0, learning_rate=0.0012)
    result = snakemake_slurm(user, timeout=1200)
    log = result.stdout + result.stderr
    assert "SLURM status is: 'TIMEOUT'" in log, log[-8000:]
    first, second = attempt_logs(workdir)[-2:]
    assert "attempt 1" in first.splitlines()[0] and "attempt 2" in second.splitlines()[0]
    stopped = int(re.search(r"SIGTERM at step (\d+)/", first).group(1))
    assert stopped > 0
    assert f"resuming from checkpoint at step {stopped}/" in second, second[-3000:]


def test_lost_controller_gets_no_second_writer(user):
    """SIGKILL the controller (a lost login node): its job runs on. The rerun after --unlock
    refuses to submit a second job for the same outputs and names the job to scancel."""
    workdir = user["workdir"]
    edit_study(user, epochs=150, runtime=10, checkpoint_every=0, learning_rate=0.0013)
    controller = start_controller(user)
    wait_for_steps(user, controller, 5)
    os.killpg(controller.pid, signal.SIGKILL)
    controller.communicate()
    (first,) = finetune_jobs(user)

    unlock = snakemake_slurm(user, "--unlock")
    assert unlock.returncode == 0, unlock.stderr[-4000:]
    rerun = snakemake_slurm(user)
    log = rerun.stdout + rerun.stderr
    assert rerun.returncode != 0, log[-6000:]
    assert f"scancel {first}" in log and CONFIG_ID in log, log[-6000:]
    assert finetune_jobs(user) == [first]  # no second job was submitted

    # What docs/cluster.md advises: scancel it (SIGTERM: it checkpoints), then rerun: the lock
    # it left is released, and the rerun resumes where it stopped.
    subprocess.run(["scancel", first], env=user["env"], check=True)
    deadline = time.time() + 300
    while finetune_jobs(user):
        assert time.time() < deadline, "the cancelled job did not end"
        time.sleep(2)
    rerun = snakemake_slurm(user)
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-8000:]
    run = json.loads((workdir / RUN / "run.json").read_text())
    assert run["resumed_from_step"] > 0
    assert_no_leftovers(workdir)
