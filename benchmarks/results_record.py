"""One JSON record per benchmark run, in benchmarks/results/: what ran, where, and what it measured.

Standard library only, so that a benchmark can run on a bare GPU image (no polars, no
snakemake). Every figure the README or docs/benchmarks.md quotes comes from such a file.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# Runs a command and prints its own peak RSS. A child forked from a big process inherits that
# process's resident size in ru_maxrss (Linux keeps it across exec), so the command is started
# from this small launcher instead of from the benchmark itself.
LAUNCHER = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(f"{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss}")
"""
DEFAULT_PACKAGES = ("torch", "transformers", "peft", "polars", "snakemake", "numpy")


def git_commit(repo: Path = RESULTS_DIR.parent.parent) -> str:
    """The checked-out commit, with '+dirty' when the tree has uncommitted changes (other than
    result files: a run of several benchmarks must not mark the later ones dirty)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no", "--"]
            + [".", ":(exclude)benchmarks/results"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")


def peak_rss_mb() -> float:
    """This process's own peak resident memory in MB: VmHWM (per address space, so it starts
    afresh at exec) where Linux has it, else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_measured(cmd: list[str], env: Mapping[str, str], cwd: Path) -> dict[str, Any]:
    """Run ``cmd`` as a whole process: exit code, wall seconds, its own peak RSS (MB) and the
    paths of its stdout and stderr (in ``cwd``)."""
    import sys
    import time

    stdout, stderr, peak = cwd / "child.stdout", cwd / "child.stderr", cwd / "child.peak"
    with stdout.open("w") as out, stderr.open("w") as err:
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", LAUNCHER, str(peak), *cmd],
            stdout=out,
            stderr=err,
            env=dict(env),
            cwd=cwd,
        )
        seconds = time.perf_counter() - start
    code, max_rss_kib = (int(x) for x in peak.read_text().split())
    return {
        "exit_code": code,
        "seconds": seconds,
        "peak_rss_mb": max_rss_kib / 1024,  # Linux reports KiB
        "stdout": stdout,
        "stderr": stderr,
    }


def package_versions(names: Iterable[str] = DEFAULT_PACKAGES) -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def machine() -> dict[str, Any]:
    """Processor, cores and, where torch sees one, the GPU."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_count"] = torch.cuda.device_count()
    except ImportError:
        pass
    return info


def write_result(
    name: str,
    arguments: Mapping[str, Any],
    figures: Mapping[str, Any],
    baseline: str,
    smoke: bool = False,
    packages: Iterable[str] = DEFAULT_PACKAGES,
    results_dir: Path | None = None,
) -> Path:
    """Write ``<results_dir>/<name>.json`` (``<name>.smoke.json`` for a smoke run) and return it.

    ``figures`` holds the measured numbers (ratios against ``baseline`` among them);
    ``arguments`` the command-line arguments that produced them.
    """
    record = {
        "benchmark": name,
        "baseline": baseline,
        "smoke": smoke,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "machine": machine(),
        "versions": package_versions(packages),
        "arguments": dict(arguments),
        "figures": dict(figures),
    }
    # Tests point smoke runs elsewhere, so that they never overwrite a measured result.
    folder = results_dir or Path(os.environ.get("RATIONALE_BENCH_RESULTS_DIR", RESULTS_DIR))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}{'.smoke' if smoke else ''}.json"
    path.write_text(json.dumps(record, indent=2, sort_keys=False, default=str) + "\n")
    return path
