"""ACES cross-check: one task, one synthetic MEDS dataset, rationale-bench vs es-aces.

Baseline: ACES (``aces-cli``, PyPI ``es-aces`` 0.7.3), an independent MEDS cohort tool. It
needs polars<2 while this project pins polars 2, so it runs from its own virtual environment
(created on first use with ``pip install es-aces==0.7.3``, reused afterwards). Both tools read
the same single-file MEDS events (the dataset's shards gathered into one parquet file, not
timed), each in a child process with the same POLARS_MAX_THREADS, and both wall times include
interpreter start-up. Printed: both times, the speed ratio (ACES / ours), how many subjects
were compared and their label agreement (exact match rate, confusion table), and the reason for
every difference (see rationale_bench.aces.compare_labels; ACES applies the follow-up window to
cases, so the cases we keep with short follow-up are expected to be ours only).

    python benchmarks/aces_crosscheck.py                       # 20,000 subjects
    python benchmarks/aces_crosscheck.py --subjects 5000 --venv /tmp/aces-venv --threads 2

The task is the cohort section of config.yaml (schema defaults filled in).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ACES_VERSION = "0.7.3"
ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config.yaml"
SCHEMA = ROOT / "schemas" / "config.schema.yaml"
COHORT_NAME = "task"


def study_config() -> dict[str, Any]:
    """config.yaml with the schema's defaults filled in (what the workflow's jobs receive)."""
    import yaml
    from snakemake.utils import validate

    config = yaml.safe_load(CONFIG.read_text())
    validate(config, str(SCHEMA))
    return config


def aces_cli(venv: Path) -> Path:
    """The venv's aces-cli, installing es-aces there first when it is missing or another version."""
    python, cli = venv / "bin" / "python", venv / "bin" / "aces-cli"
    check = [str(python), "-c", "import importlib.metadata as m; print(m.version('es-aces'))"]
    if python.exists() and cli.exists():
        found = subprocess.run(check, capture_output=True, text=True)
        if found.returncode == 0 and found.stdout.strip() == ACES_VERSION:
            return cli
    if not python.exists():
        print(f"creating a virtual environment for ACES in {venv}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    print(f"installing es-aces=={ACES_VERSION} into {venv} (PyPI)", flush=True)
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", f"es-aces=={ACES_VERSION}"],
        capture_output=True,
        text=True,
    )
    if install.returncode != 0 or not cli.exists():
        sys.exit(
            f"could not install es-aces=={ACES_VERSION} into {venv} "
            f"(pip exit {install.returncode}):\n{install.stderr[-3000:]}"
        )
    return cli


def write_dataset(workdir: Path, n_subjects: int, seed: int) -> tuple[Path, int]:
    """A synthetic MEDS dataset, gathered into one events parquet for both tools."""
    import polars as pl

    from rationale_bench.synthetic import write_meds_dataset

    root = workdir / f"meds_{n_subjects}_{seed}"
    events = workdir / f"events_{n_subjects}_{seed}.parquet"
    if not events.exists():
        write_meds_dataset(root, n_subjects, seed)
        pl.scan_parquet(root / "data" / "*.parquet").sink_parquet(events)
    n_events = pl.scan_parquet(events).select(pl.len()).collect().item()
    return events, n_events


def build_ours(workdir: Path, events: Path) -> None:
    """Child process: our cohort from the events file; prints its in-process build time."""
    import polars as pl

    from rationale_bench.cohort import build_cohort

    cohort_cfg = json.loads((workdir / "cohort.json").read_text())
    t0 = time.perf_counter()
    cohort, _ = build_cohort(pl.scan_parquet(events), cohort_cfg)
    seconds = time.perf_counter() - t0
    cohort.write_parquet(workdir / "cohort.parquet")
    print(json.dumps({"build_s": seconds, "rows": cohort.height}))


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, str]:
    t0 = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    seconds = time.perf_counter() - t0
    if result.returncode != 0:
        sys.exit(
            f"{' '.join(cmd[:3])} ... failed (exit {result.returncode}):\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        )
    return seconds, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--venv", type=Path, default=Path("/tmp/aces-venv"))
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--threads", type=int, default=2, help="POLARS_MAX_THREADS of both tools")
    parser.add_argument("--stage", choices=["ours"], help=argparse.SUPPRESS)
    parser.add_argument("--events", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage == "ours":
        build_ours(args.workdir, args.events)
        return

    import polars as pl

    from rationale_bench.aces import compare_labels, write_aces_task

    cli = aces_cli(args.venv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="aces_crosscheck_"))
    workdir.mkdir(parents=True, exist_ok=True)
    events, n_events = write_dataset(workdir, args.subjects, args.seed)
    print(f"data: {args.subjects:,} subjects, {n_events:,} events ({events})")
    cohort_cfg = study_config()["cohort"]
    # The child reads the resolved task from here, so neither tool pays for config validation.
    (workdir / "cohort.json").write_text(json.dumps(cohort_cfg))
    task_dir = workdir / "aces"
    write_aces_task(cohort_cfg, task_dir / f"{COHORT_NAME}.yaml")

    env = dict(os.environ, POLARS_MAX_THREADS=str(args.threads))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    ours_cmd = [sys.executable, __file__, "--stage", "ours", "--workdir", str(workdir)]
    ours_cmd += ["--events", str(events)]
    ours_s, out = timed(ours_cmd, env, workdir)
    build_s = json.loads(out.strip().splitlines()[-1])["build_s"]
    aces_env = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    aces_cmd = [
        str(cli),
        "data.standard=meds",
        f"data.path={events}",
        f"cohort_dir={task_dir}",
        f"cohort_name={COHORT_NAME}",
        f"hydra.run.dir={task_dir / 'hydra'}",
    ]
    aces_s, _ = timed(aces_cmd, aces_env, workdir)

    ours = pl.read_parquet(workdir / "cohort.parquet")
    labels = pl.read_parquet(task_dir / f"{COHORT_NAME}.parquet")
    result = compare_labels(ours, labels, cohort_cfg["horizon_days"])
    print(f"threads: {args.threads} (POLARS_MAX_THREADS), workdir {workdir}")
    print(
        f"rationale-bench build_cohort: {ours_s:.1f} s wall ({build_s:.1f} s in build_cohort), "
        f"{n_events / build_s:,.0f} events/s"
    )
    print(f"ACES {ACES_VERSION} aces-cli:        {aces_s:.1f} s wall")
    print(f"speed ratio (ACES / rationale-bench, wall incl. start-up): {aces_s / ours_s:.2f}x")
    # Our start-up is mostly importing the ICD-10-CM vocabulary (simple_icd_10_cm), seconds
    # that do not grow with the data; ACES's wall time includes its own start-up too.
    print(f"speed ratio (ACES wall / rationale-bench build_cohort alone): {aces_s / build_s:.2f}x")
    print(
        f"subjects: ours {result['n_ours']:,}; ACES {result['n_aces_subjects']:,} "
        f"({result['n_aces_rows']:,} trigger rows, first per subject taken); "
        f"compared (both keep) {result['n_compared']:,}, same index time "
        f"{result['n_same_index']:,}"
    )
    print(f"label exact match on compared subjects: {result['label_agreement']:.4%}")
    print("confusion (compared subjects):")
    for key, n in result["confusion"].items():
        print(f"  {key}: {n:,}")
    print("differences:")
    for reason, n in result["reasons"].items():
        examples = result["examples"].get(reason)
        tail = f" (e.g. subjects {examples})" if n and examples else ""
        print(f"  {reason}: {n:,}{tail}")


if __name__ == "__main__":
    main()
