"""What every workflow script shares: logging to the rule's log file, threads, file helpers."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl


def start(snakemake: Any, offline: bool = True) -> logging.Logger:
    """Send logging, warnings and stderr to the rule's log file; cap threads to the job's.

    Jobs run with the Hugging Face hub offline: only the fetch_model rule (``offline=False``)
    may download, so a compute node never starts a download behind the user's back.
    """
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    log_path = Path(snakemake.log[0])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    attempt = getattr(snakemake.resources, "attempt", None)
    stream = (
        open_attempt_log(log_path, int(attempt), snakemake.rule)
        if attempt
        else log_path.open("w", buffering=1)
    )
    sys.stderr = stream
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[logging.StreamHandler(stream)],
        force=True,
    )
    logging.captureWarnings(True)
    threads = max(1, int(getattr(snakemake, "threads", 1)))
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        pass
    return logging.getLogger(f"rationale_bench.{snakemake.rule}")


@contextlib.contextmanager
def stop_on(log: logging.Logger, rule: str) -> Iterator[None]:
    """End the job on an expected error (bad setting, failed teacher requests, PHI guard)
    with its message as one line on Snakemake's console, not a traceback in the job log.

    :func:`start` sent stderr to the log file; the console is the original stderr.
    """
    try:
        yield
    except (ValueError, RuntimeError) as error:
        log.exception("%s failed", rule)
        line = " ".join(str(error).split())
        print(f"{rule} failed: {type(error).__name__}: {line}", file=sys.__stderr__, flush=True)
        raise SystemExit(1) from None


def open_attempt_log(log_path: Path, attempt: int, rule: str) -> Any:
    """The rule log of this attempt, also kept under ``<log>.attempts/`` for good.

    Snakemake deletes a job's log before every attempt (retry or rerun), and with it the
    traceback of the failure that caused the retry. Each attempt therefore writes its own file,
    and the rule log is a hard link to it (same file, two names): the next attempt's deletion
    removes only the name Snakemake knows.
    """
    job_id = os.environ.get("SLURM_JOB_ID")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    folder = log_path.with_name(log_path.name + ".attempts")
    folder.mkdir(parents=True, exist_ok=True)
    suffix = f"-slurm{job_id}" if job_id else ""
    own = folder / f"{stamp}-attempt{attempt}{suffix}.log"
    stream = own.open("a", buffering=1)
    log_path.unlink(missing_ok=True)
    try:
        os.link(own, log_path)
    except OSError:  # a filesystem without hard links: the rule log is this attempt's alone
        stream.close()
        own.unlink()
        own = log_path
        stream = own.open("w", buffering=1)
    where = f"SLURM job {job_id}" if job_id else f"process {os.getpid()}"
    stream.write(
        f"# rule {rule}, attempt {attempt} ({where} on {socket.gethostname()}, {stamp}); "
        f"every attempt's log is kept in {folder}\n"
    )
    return stream


def write_parquet(frame: pl.DataFrame, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(path)


def write_json(obj: Any, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=2, default=str))


def job_model_path(snakemake: Any) -> str:
    """What the job loads its model from: ``train.models.resolve_model`` of its params. Where a
    hub model's weights lie (hub.cache_dir) changes no result, so it is read from the config,
    not a param: moving the cache reruns no job."""
    from rationale_bench.train.models import resolve_model

    return resolve_model(snakemake.params.model, snakemake.config["hub"]["cache_dir"])


def read_cohort(snakemake: Any, log: logging.Logger) -> pl.DataFrame:
    """The job's cohort; when the teacher dropped subjects (input ``eligible``), its train split
    keeps only those with a rationale in every style, for every format and baseline alike."""
    from rationale_bench.cohort.build import restrict_training

    cohort = pl.read_parquet(snakemake.input.cohort)
    eligible = list(getattr(snakemake.input, "eligible", []) or [])
    if not eligible:
        return cohort
    cohort, removed = restrict_training(cohort, pl.read_parquet(eligible[0]))
    log.info("%d training subjects without a usable rationale left the training pool", removed)
    return cohort
