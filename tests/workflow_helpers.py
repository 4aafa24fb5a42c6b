"""Run Snakemake on a study the way a user would, from the command line, in a scratch folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

from rationale_bench.cli import job_counts

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def snakemake(
    workdir: Path,
    *args: str,
    configfile: Path | None = None,
    check: bool = True,
    timeout: int = 1500,
) -> subprocess.CompletedProcess:
    """``snakemake`` on the repo's Snakefile with ``workdir`` as working directory."""
    cmd = [*SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir)]
    if configfile is not None:
        cmd += ["--configfile", str(configfile)]
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    result = subprocess.run([*cmd, *args], capture_output=True, text=True, env=env, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({result.returncode}):\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
        )
    return result


def run_study(workdir: Path, study: Path) -> Path:
    """Copy ``study`` into ``workdir`` as study.yaml and run it to the end on 2 cores, as a
    user would; returns the copied config."""
    config = workdir / "study.yaml"
    shutil.copy(study, config)
    snakemake(workdir, "--cores", "2", configfile=config)
    return config


def study_with_teacher(folder: Path, **teacher: object) -> Path:
    """config.yaml with these teacher settings, written to ``folder/study.yaml``."""
    import yaml

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["teacher"].update(teacher)
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def dry_run(workdir: Path, *args: str, configfile: Path | None = None) -> Counter:
    result = snakemake(workdir, "-n", *args, configfile=configfile)
    return job_counts(result.stdout + result.stderr)


def planned_outputs(output: str) -> list[str]:
    """Output paths of every job a dry run lists."""
    paths = []
    for line in output.splitlines():
        line = line.strip()
        if line.startswith("output:"):
            paths += [p.strip() for p in line[len("output:") :].split(",")]
    return paths
