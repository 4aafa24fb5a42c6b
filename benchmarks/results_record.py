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
DEFAULT_PACKAGES = ("torch", "transformers", "peft", "polars", "snakemake", "numpy")


def git_commit(repo: Path = RESULTS_DIR.parent.parent) -> str:
    """The checked-out commit, with '+dirty' when the tree has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")


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
