"""Scale benchmark: synthetic MEDS events -> cohort -> histories -> prompts, at N and at N/10.

Each stage runs in its own child process, so its peak resident memory (``ru_maxrss``) is its
own, and reads the previous stage's files with lazy polars (``scan_parquet``), as the workflow
does. Printed per stage: wall time, events/s and peak RSS; then the ratio of the run at N to
the baseline run at N/10 in the same invocation (10x is linear scaling).

    python benchmarks/cohort_scale.py                      # 1,000,000 subjects vs 100,000
    python benchmarks/cohort_scale.py --subjects 100000    # 100,000 vs 10,000
    python benchmarks/cohort_scale.py --subjects 100000 --threads 2 --workdir /tmp/scale
    python benchmarks/cohort_scale.py --smoke              # 1,000 vs 500: does it still run?

A smoke run runs every stage in this one process (no child processes: seconds, not a
measurement; its peak RSS is the whole run's).

Writes benchmarks/results/cohort_scale.json (see results_record.py).

The prompts stage fits every history to the default study's token budget with a BPE tokenizer
trained on the first 2,000 histories (as the tiny model's is; no download).

Target (issue #3): 1,000,000 subjects, cohort + prompts, under 10 minutes and 8 GB on 2 cores.
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
from results_record import peak_rss_mb, write_result  # noqa: E402

STAGES = ("generate", "cohort", "histories", "prompts")
CONFIG = Path(__file__).resolve().parents[1] / "config.yaml"
SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"


def _study_config() -> dict[str, Any]:
    """config.yaml with the schema's defaults filled in (what the workflow's jobs receive)."""
    import yaml

    from rationale_bench.config_check import validate_config

    config = yaml.safe_load(CONFIG.read_text())
    validate_config(config, SCHEMA)
    return config


def _peak_rss_mb() -> float:
    return peak_rss_mb()  # this stage's own (VmHWM), not the launching process's


def run_stage(
    stage: str, n_subjects: int, workdir: Path, seed: int, chunk_size: int, config: dict
) -> dict:
    """Run one stage in this process; return its measurements."""
    import polars as pl
    import pyarrow.parquet as pq

    from rationale_bench.cohort.build import build_cohort
    from rationale_bench.data.synthetic import write_events
    from rationale_bench.text.serialize import build_histories, build_prompts, history_of

    events_path = workdir / "events.parquet"
    cohort_path = workdir / "cohort.parquet"
    t0 = time.perf_counter()
    out: dict[str, Any] = {}
    if stage == "generate":
        syn = config["data"]["synthetic"]
        from datetime import date

        n_events = write_events(
            events_path,
            n_subjects,
            seed,
            chunk_size=chunk_size,
            data_start=date.fromisoformat(syn["data_start"]),
            data_end=date.fromisoformat(syn["data_end"]),
        )
        out["rows_out"] = n_events
    elif stage == "cohort":
        cohort, attrition = build_cohort(pl.scan_parquet(events_path), config["cohort"])
        cohort.write_parquet(cohort_path)
        out["rows_out"] = cohort.height
        out["cases"] = int(cohort["label"].sum())
        out["held_out_cases"] = int(cohort.filter(pl.col("split") == "held_out")["label"].sum())
    elif stage == "histories":
        cohort = pl.read_parquet(cohort_path)
        variant = config["grid"]["serialization"][0]
        cfg = dict(config["serialization"], variant=variant)
        histories = build_histories(pl.scan_parquet(events_path), cohort, cfg)
        histories.write_parquet(workdir / "histories.parquet")
        out["rows_out"] = histories.height
        out["input_events"] = int(histories["n_events"].sum())
    elif stage == "prompts":
        from rationale_bench.train.tiny_model import train_tokenizer

        histories = pl.read_parquet(workdir / "histories.parquet")
        sample = [history_of(row) for row in histories.head(2000).iter_rows(named=True)]
        tokenizer = train_tokenizer(sample, config["models"]["tiny"]["build"]["vocab_size"])
        t0 = time.perf_counter()  # the tokenizer stands in for the model's: not timed
        budget = config["models"]["tiny"]["max_prompt_tokens"]
        prompts = build_prompts(histories, tokenizer, config["serialization"], budget)
        prompts.write_parquet(workdir / "prompts.parquet")
        out["rows_out"] = prompts.height
        out["truncated"] = float(prompts["truncated"].mean())
    else:
        raise ValueError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    out["seconds"] = time.perf_counter() - t0
    out["events"] = pq.ParquetFile(events_path).metadata.num_rows
    out["peak_rss_mb"] = _peak_rss_mb()
    return out


def run_pipeline(n_subjects: int, args: argparse.Namespace, workdir: Path) -> dict[str, dict]:
    """All stages for one N, each in a fresh child process."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, POLARS_MAX_THREADS=str(args.threads))
    env["OMP_NUM_THREADS"] = str(args.threads)
    results = {}
    for stage in STAGES:
        if args.smoke:  # one process for everything: seconds, not a measurement
            wall = time.perf_counter()
            config = json.loads(args.config_json.read_text())
            results[stage] = run_stage(
                stage, n_subjects, workdir, args.seed, args.chunk_size, config
            )
            results[stage]["process_seconds"] = time.perf_counter() - wall
            print_stage(n_subjects, stage, results[stage])
            continue
        cmd = [
            sys.executable,
            __file__,
            "--stage",
            stage,
            "--subjects",
            str(n_subjects),
            "--workdir",
            str(workdir),
            "--seed",
            str(args.seed),
            "--chunk-size",
            str(args.chunk_size),
            "--config-json",
            str(args.config_json),
        ]
        wall = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - wall
        if proc.returncode != 0:
            sys.exit(f"stage {stage} at {n_subjects:,} subjects failed:\n{proc.stderr[-4000:]}")
        results[stage] = json.loads(proc.stdout.strip().splitlines()[-1])
        results[stage]["process_seconds"] = wall
        print_stage(n_subjects, stage, results[stage])
    return results


def print_stage(n_subjects: int, stage: str, r: dict) -> None:
    print(
        f"  {n_subjects:>10,} {stage:<10} {r['seconds']:8.1f} s  "
        f"{r['events'] / r['seconds'] / 1e6:7.2f} M events/s  "
        f"peak RSS {r['peak_rss_mb'] / 1024:6.2f} GB  rows out {r['rows_out']:,}",
        flush=True,
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=1_000_000)
    parser.add_argument("--baseline-divisor", type=int, default=10)
    parser.add_argument("--seed", type=int, default=20260610)
    parser.add_argument("--chunk-size", type=int, default=50_000)
    parser.add_argument("--threads", type=int, default=2, help="POLARS_MAX_THREADS per stage")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--smoke", action="store_true", help="1,000 subjects vs 500, all in this process"
    )
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--config-json", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


def run_both_sizes(args: argparse.Namespace, base_n: int) -> tuple[dict, dict]:
    """Every stage at the baseline size, then at the full size, each in its own process."""
    with tempfile.TemporaryDirectory(prefix="cohort_scale_") as tmp:
        root = args.workdir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        # Validated once here, so that no stage pays for the schema in its own time.
        args.config_json = root / "study_config.json"
        args.config_json.write_text(json.dumps(_study_config(), default=str))
        print(
            f"cohort_scale: {args.subjects:,} subjects vs baseline {base_n:,} "
            f"(POLARS_MAX_THREADS={args.threads}, chunk_size={args.chunk_size:,})"
        )
        base = run_pipeline(base_n, args, root / f"n{base_n}")
        big = run_pipeline(args.subjects, args, root / f"n{args.subjects}")
    args.config_json = None
    return base, big


def print_ratios(base: dict, big: dict, n: int, base_n: int) -> None:
    print(f"\nratio vs baseline ({n:,} / {base_n:,} subjects = {n / base_n:.0f}x):")
    for stage in STAGES:
        b, r = base[stage], big[stage]
        print(
            f"  {stage:<10} time x{r['seconds'] / b['seconds']:5.1f}  "
            f"events/s x{(r['events'] / r['seconds']) / (b['events'] / b['seconds']):4.2f}  "
            f"peak RSS x{r['peak_rss_mb'] / b['peak_rss_mb']:5.2f}"
        )


def scale_figures(base: dict, big: dict, n: int, base_n: int) -> dict[str, object]:
    """The stored figures (totals at N, per stage time, memory and time ratio), printed."""
    total = sum(big[s]["seconds"] for s in STAGES)
    peak = max(big[s]["peak_rss_mb"] for s in STAGES) / 1024
    cohort = big["cohort"]
    print(
        f"\n{n:,} subjects: {big['generate']['events']:,} events; total "
        f"{total / 60:.1f} min; max peak RSS {peak:.2f} GB (target < 10 min, < 8 GB); "
        f"cohort {cohort['rows_out']:,} subjects, {cohort['cases']:,} cases "
        f"({cohort['cases'] / cohort['rows_out']:.1%}), {cohort['held_out_cases']:,} in held_out"
    )
    figures: dict[str, object] = {
        "subjects": n,
        "baseline_subjects": base_n,
        "events": big["generate"]["events"],
        "total_minutes": round(total / 60, 2),
        "max_peak_rss_gb": round(peak, 2),
        "cohort_subjects": cohort["rows_out"],
        "cohort_cases": cohort["cases"],
    }
    for stage in STAGES:
        b, r = base[stage], big[stage]
        figures[f"{stage}_seconds"] = round(r["seconds"], 2)
        figures[f"{stage}_peak_rss_gb"] = round(r["peak_rss_mb"] / 1024, 2)
        figures[f"{stage}_time_ratio_vs_baseline"] = round(r["seconds"] / b["seconds"], 2)
    return figures


def main() -> None:
    args = parse_args()
    if args.stage:  # child process: one stage, JSON on stdout
        config = json.loads(args.config_json.read_text())
        result = run_stage(
            args.stage, args.subjects, args.workdir, args.seed, args.chunk_size, config
        )
        print(json.dumps(result))
        return
    if args.smoke:
        args.subjects, args.baseline_divisor = 1000, 2
    base_n = max(args.subjects // args.baseline_divisor, 500 if args.smoke else 1000)
    base, big = run_both_sizes(args, base_n)
    print_ratios(base, big, args.subjects, base_n)
    path = write_result(
        "cohort_scale",
        vars(args),
        scale_figures(base, big, args.subjects, base_n),
        f"the same stages at {base_n:,} subjects (N / {args.baseline_divisor})",
        smoke=args.smoke,
        packages=("polars", "pyarrow", "tokenizers", "numpy"),
    )
    print(f"result: {path}")


if __name__ == "__main__":
    main()
