"""One writer per configuration: a lock file that names the job writing its outputs.

When the Snakemake controller dies (a lost login node, SIGKILL), its SLURM jobs keep running.
A rerun after ``--unlock`` would submit a second job for the same outputs while the first still
writes them. Each training and evaluation job therefore holds
``results/locks/<config_id>.json`` (its SLURM job id, host, pid) while it runs:

- a job (and the controller, before it submits anything) refuses to start while the holder is a
  live SLURM job (``squeue``) or a live process on this host, naming the job to ``scancel``;
- a lock left by a job that has ended (killed with SIGKILL, node lost) is stale: it is taken
  over, and the log says so.

Kept free of torch and Snakemake so that the Snakefile can import it.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LOCK_ROOT = Path("results/locks")

# SLURM job states in which the job may still write (squeue --states=all shows ended jobs too,
# for MinJobAge seconds, as COMPLETED, CANCELLED, FAILED, TIMEOUT, ...).
LIVE_STATES = {
    "PENDING",
    "CONFIGURING",
    "RUNNING",
    "COMPLETING",
    "SUSPENDED",
    "STOPPED",
    "SIGNALING",
    "STAGE_OUT",
    "RESIZING",
    "REQUEUED",
    "REQUEUE_FED",
    "REQUEUE_HOLD",
}


class WriterAlive(RuntimeError):
    """Another live job holds the configuration's lock."""


def lock_path(wildcards: Any) -> Path:
    """The lock of one configuration (a job's wildcards), shared by training and evaluation."""
    w = wildcards
    return LOCK_ROOT / (
        f"model={w.model}/serialization={w.serialization}/format={w.format}/"
        f"n_train={w.n_train}/seed={w.seed}.json"
    )


def this_holder(rule: str) -> dict[str, Any]:
    return {
        "rule": rule,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def slurm_job_state(job_id: str) -> str | None:
    """The job's SLURM state, or None when SLURM no longer knows it (ended long ago)."""
    try:
        result = subprocess.run(
            ["squeue", "-h", "--states=all", "-j", str(job_id), "-o", "%T"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (FileNotFoundError, subprocess.TimeoutExpired) as err:
        raise WriterAlive(
            f"cannot tell whether SLURM job {job_id} still runs (squeue: {err}). Check with "
            f"`squeue -j {job_id}` on the cluster."
        ) from err
    if result.returncode != 0:
        if "Invalid job id" in result.stderr:
            return None
        raise WriterAlive(
            f"cannot tell whether SLURM job {job_id} still runs: squeue failed with "
            f"{result.stderr.strip()!r}. Check with `squeue -j {job_id}` on the cluster."
        )
    states = result.stdout.split()
    return states[0] if states else None


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holder_liveness(holder: dict[str, Any]) -> str | None:
    """Why the holder still counts as writing (e.g. 'SLURM job 12 is RUNNING'), or None."""
    job_id = holder.get("slurm_job_id")
    if job_id:
        state = slurm_job_state(job_id)
        return f"SLURM job {job_id} is {state}" if state in LIVE_STATES else None
    if holder.get("host") == socket.gethostname():
        pid = int(holder.get("pid", 0))
        return f"process {pid} on this host is alive" if pid and _process_alive(pid) else None
    raise WriterAlive(
        f"the lock was taken by process {holder.get('pid')} on host {holder.get('host')}, "
        "outside SLURM, which cannot be checked from here."
    )


def _is_own(holder: dict[str, Any]) -> bool:
    """The same SLURM job (requeued after preemption) or the same process."""
    job_id = os.environ.get("SLURM_JOB_ID")
    if job_id and holder.get("slurm_job_id") == job_id:
        return True
    return holder.get("host") == socket.gethostname() and holder.get("pid") == os.getpid()


def read_holder(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError:
        return {}  # half-written by a killed job: stale


def refusal(path: Path, holder: dict[str, Any], why: str) -> str:
    job_id = holder.get("slurm_job_id")
    action = (
        f"Stop it with `scancel {job_id}`, or wait for it to end, then rerun"
        if job_id
        else f"Stop process {holder.get('pid')} or wait for it to end, then rerun"
    )
    return (
        f"{why} and still writes this configuration's outputs (lock {path}, taken by rule "
        f"{holder.get('rule')} at {holder.get('since')}): a second writer would corrupt them. "
        f"{action}. If you are sure it has ended, delete {path}."
    )


def acquire(path: Path, rule: str, log: logging.Logger) -> None:
    """Take the configuration's lock, or raise WriterAlive naming the live holder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mine = json.dumps(this_holder(rule))
    holder = read_holder(path)
    if holder is not None and not _is_own(holder):
        try:
            why = holder_liveness(holder)
        except WriterAlive as err:
            raise WriterAlive(f"{err} {refusal(path, holder, 'It')}") from err
        if why:
            raise WriterAlive(refusal(path, holder, why))
        log.warning(
            "taking over a stale lock %s: %s (rule %s, since %s) has ended without releasing it",
            path,
            f"SLURM job {holder['slurm_job_id']}"
            if holder.get("slurm_job_id")
            else f"process {holder.get('pid')}",
            holder.get("rule"),
            holder.get("since"),
        )
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(mine)
    os.replace(tmp, path)


def release(path: Path) -> None:
    holder = read_holder(path)
    if holder is not None and _is_own(holder):
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def held(path: Path, rule: str, log: logging.Logger) -> Iterator[None]:
    """Hold the lock for the body; released on success and on errors (not on SIGKILL)."""
    acquire(path, rule, log)
    try:
        yield
    finally:
        release(path)


def hold_until_exit(wildcards: Any, rule: str, log: logging.Logger) -> None:
    """What a job's script calls first: take its configuration's lock until the process ends
    (normally or by an exception; a kill leaves a stale lock that the next job takes over)."""
    path = lock_path(wildcards)
    acquire(path, rule, log)
    atexit.register(release, path)


def live_writers(root: Path = LOCK_ROOT) -> list[str]:
    """A refusal for every lock whose holder still runs: what the controller checks first.

    Snakemake locks the working directory, so any live holder here outlived an earlier
    controller; whatever the new run would submit for that configuration would collide.
    """
    found = []
    for path in sorted(root.rglob("*.json")) if root.exists() else []:
        holder = read_holder(path)
        if not holder or _is_own(holder):
            continue
        try:
            why = holder_liveness(holder)
        except WriterAlive as err:
            found.append(f"{err} {refusal(path, holder, 'It')}")
            continue
        if why:
            found.append(refusal(path, holder, why))
    return found
