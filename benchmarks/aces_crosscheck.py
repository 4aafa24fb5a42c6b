"""ACES cross-check: one task, one synthetic MEDS dataset, rationale-bench vs es-aces.

Baseline: ACES (``aces-cli``, PyPI ``es-aces`` 0.7.3), an independent MEDS cohort tool. It
needs polars<2 while this project pins polars 2, so it runs from its own virtual environment
(created on first use with ``pip install es-aces==0.7.3``, reused afterwards). Both tools read
the same single-file MEDS events (the dataset's shards gathered into one parquet file, not
timed), each as a whole child process with the same POLARS_MAX_THREADS: wall time and peak
resident memory (the child's own ``ru_maxrss``, started from a small launcher so that it
is not the benchmark's; results_record.run_measured) of each, start-up included on
both sides, so the ratios compare like with like. Our time inside ``build_cohort`` is printed
too, for information only (ACES has no such split). Printed: both times and peaks, the ratios
(ACES / ours), how many subjects were compared and their label agreement (exact match rate,
confusion table), and the reason for every difference (see cohort.aces.compare_labels;
ACES applies the follow-up window to cases, so the cases we keep with short follow-up are
expected to be ours only).

    python benchmarks/aces_crosscheck.py                       # 20,000 subjects
    python benchmarks/aces_crosscheck.py --subjects 5000 --venv /tmp/aces-venv --threads 2
    python benchmarks/aces_crosscheck.py --smoke   # 1,000 subjects; ACES side only if installed

A smoke run never installs ACES: without es-aces in ``--venv`` it runs our side, and the result
file and output say plainly that the ACES side was skipped. Writes
benchmarks/results/aces_crosscheck.json (see results_record.py).

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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_record import run_measured, write_result  # noqa: E402

ACES_VERSION = "0.7.3"
ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config.yaml"
SCHEMA = ROOT / "schemas" / "config.schema.yaml"
COHORT_NAME = "task"


def study_config() -> dict[str, Any]:
    """config.yaml with the schema's defaults filled in (what the workflow's jobs receive)."""
    import yaml

    from rationale_bench.config_check import validate_config

    config = yaml.safe_load(CONFIG.read_text())
    validate_config(config, SCHEMA)
    return config


def installed_aces_cli(venv: Path) -> Path | None:
    """The venv's aces-cli when es-aces ACES_VERSION is installed there, else None."""
    python, cli = venv / "bin" / "python", venv / "bin" / "aces-cli"
    check = [str(python), "-c", "import importlib.metadata as m; print(m.version('es-aces'))"]
    if python.exists() and cli.exists():
        found = subprocess.run(check, capture_output=True, text=True)
        if found.returncode == 0 and found.stdout.strip() == ACES_VERSION:
            return cli
    return None


def aces_cli(venv: Path) -> Path:
    """The venv's aces-cli, installing es-aces there first when it is missing or another version."""
    cli = installed_aces_cli(venv)
    if cli is not None:
        return cli
    python, cli = venv / "bin" / "python", venv / "bin" / "aces-cli"
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

    from rationale_bench.data.synthetic import write_meds_dataset

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

    from rationale_bench.cohort.build import build_cohort

    cohort_cfg = json.loads((workdir / "cohort.json").read_text())
    t0 = time.perf_counter()
    cohort, _ = build_cohort(pl.scan_parquet(events), cohort_cfg)
    seconds = time.perf_counter() - t0
    cohort.write_parquet(workdir / "cohort.parquet")
    print(json.dumps({"build_s": seconds, "rows": cohort.height}))


def whole_process(cmd: list[str], env: dict[str, str], cwd: Path) -> dict[str, Any]:
    """Run ``cmd`` as a child; its wall time, its own peak RSS (MB) and its stdout."""
    run = run_measured(cmd, env, cwd)
    if run["exit_code"] != 0:
        sys.exit(
            f"{' '.join(cmd[:3])} ... failed (exit {run['exit_code']}):\n"
            f"{run['stdout'].read_text()[-3000:]}\n{run['stderr'].read_text()[-5000:]}"
        )
    return {**run, "stdout": run["stdout"].read_text()}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--venv", type=Path, default=Path("/tmp/aces-venv"))
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--threads", type=int, default=2, help="POLARS_MAX_THREADS of both tools")
    parser.add_argument("--smoke", action="store_true", help="1,000 subjects, never installs ACES")
    parser.add_argument("--stage", choices=["ours"], help=argparse.SUPPRESS)
    parser.add_argument("--events", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke:
        args.subjects = 1000
    return args


def run_aces(cli: Path, env: dict[str, str], events: Path, workdir: Path) -> dict[str, Any]:
    """ACES on the same events, as a whole process, without our PYTHONPATH."""
    task_dir = workdir / "aces"
    aces_env = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    aces_cmd = [
        str(cli),
        "data.standard=meds",
        f"data.path={events}",
        f"cohort_dir={task_dir}",
        f"cohort_name={COHORT_NAME}",
        f"hydra.run.dir={task_dir / 'hydra'}",
    ]
    return whole_process(aces_cmd, aces_env, workdir)


def print_agreement(result: dict[str, Any]) -> None:
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


def main() -> None:
    args = parse_args()
    if args.stage == "ours":
        build_ours(args.workdir, args.events)
        return

    import polars as pl

    from rationale_bench.cohort.aces import compare_labels, write_aces_task

    cli = installed_aces_cli(args.venv) if args.smoke else aces_cli(args.venv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="aces_crosscheck_"))
    workdir.mkdir(parents=True, exist_ok=True)
    events, n_events = write_dataset(workdir, args.subjects, args.seed)
    print(f"data: {args.subjects:,} subjects, {n_events:,} events ({events})")
    cohort_cfg = study_config()["cohort"]
    # The child reads the resolved task from here, so neither tool pays for config validation.
    (workdir / "cohort.json").write_text(json.dumps(cohort_cfg))
    write_aces_task(cohort_cfg, workdir / "aces" / f"{COHORT_NAME}.yaml")

    env = dict(os.environ, POLARS_MAX_THREADS=str(args.threads))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    ours_cmd = [sys.executable, __file__, "--stage", "ours", "--workdir", str(workdir)]
    ours = whole_process(ours_cmd + ["--events", str(events)], env, workdir)
    build_s = json.loads(ours["stdout"].strip().splitlines()[-1])["build_s"]
    print(f"threads: {args.threads} (POLARS_MAX_THREADS), workdir {workdir}")
    print(
        f"rationale-bench (whole process): {ours['seconds']:.1f} s wall, peak RSS "
        f"{ours['peak_rss_mb']:,.0f} MB ({build_s:.2f} s inside build_cohort, for information)"
    )
    figures: dict[str, Any] = {
        "events": n_events,
        "ours_wall_s": round(ours["seconds"], 2),
        "ours_peak_rss_mb": round(ours["peak_rss_mb"]),
        "ours_build_cohort_s": round(build_s, 3),
    }
    if cli is None:
        reason = f"es-aces=={ACES_VERSION} not installed in {args.venv} (smoke never installs it)"
        print(f"ACES side SKIPPED: {reason}")
        figures["aces"] = f"skipped: {reason}"
    else:
        aces = run_aces(cli, env, events, workdir)
        print(
            f"ACES {ACES_VERSION} aces-cli (whole process): {aces['seconds']:.1f} s wall, "
            f"peak RSS {aces['peak_rss_mb']:,.0f} MB"
        )
        wall_ratio = aces["seconds"] / ours["seconds"]
        rss_ratio = aces["peak_rss_mb"] / ours["peak_rss_mb"]
        print(
            f"ratios ACES / rationale-bench, whole processes: wall {wall_ratio:.2f}x, "
            f"peak RSS {rss_ratio:.2f}x"
        )
        ours_labels = pl.read_parquet(workdir / "cohort.parquet")
        labels = pl.read_parquet(workdir / "aces" / f"{COHORT_NAME}.parquet")
        result = compare_labels(ours_labels, labels, cohort_cfg["horizon_days"])
        print_agreement(result)
        figures |= {
            "aces_wall_s": round(aces["seconds"], 2),
            "aces_peak_rss_mb": round(aces["peak_rss_mb"]),
            "wall_ratio_aces_over_ours": round(wall_ratio, 2),
            "peak_rss_ratio_aces_over_ours": round(rss_ratio, 2),
            "subjects_ours": result["n_ours"],
            "subjects_aces": result["n_aces_subjects"],
            "subjects_compared": result["n_compared"],
            "label_agreement": round(result["label_agreement"], 6),
            "differences": dict(result["reasons"]),
        }
    args.workdir, args.venv = str(args.workdir), str(args.venv)
    path = write_result(
        "aces_crosscheck",
        vars(args),
        figures,
        f"ACES (es-aces {ACES_VERSION}, aces-cli) as a whole process, on the same events",
        smoke=args.smoke,
        packages=("polars",),
    )
    print(f"result: {path}")


if __name__ == "__main__":
    main()
