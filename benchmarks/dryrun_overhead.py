"""Dry-run time of the paper grid versus a bare Snakemake workflow with the same jobs.

Prints both times and their ratio (target: at most 1.5). The bare workflow has the same jobs per
rule and the same file dependencies (inputs per job included), written as plain patterns with
shell commands and no config, validation, params or resources: the ratio is the cost of what our
workflow adds to the DAG that the study itself needs.
Run: python benchmarks/dryrun_overhead.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

BARE = """
MODELS = [f"m{i}" for i in range(7)]
FORMATS = ("label_only", "free_form", "step_by_step")
RUNS = [f"{m}/{f}/{n}/{s}" for m in MODELS for f in FORMATS for n in range(8) for s in range(3)]

wildcard_constraints:
    style="[a-z_]+",

rule all:
    input: "report.csv", "table1.csv"

rule events:
    output: "events.parquet"
    shell: "touch {output}"

rule cohort:
    input: "events.parquet"
    output: "cohort.parquet"
    shell: "touch {output}"

rule table1:
    input: "cohort.parquet", "histories.parquet"
    output: "table1.csv"
    shell: "touch {output}"

rule histories:
    input: "events.parquet", "cohort.parquet"
    output: "histories.parquet"
    shell: "touch {output}"

rule model:
    output: "models/{model}.json"
    shell: "touch {output}"

rule prompts:
    input: "histories.parquet", "models/{model}.json"
    output: "prompts/{model}.parquet"
    shell: "touch {output}"

rule rationales:
    input: "histories.parquet"
    output: "rationales/{style}.parquet"
    shell: "touch {output}"

rule finetune:
    input:
        "prompts/{model}.parquet",
        "cohort.parquet",
        lambda w: [] if w.format == "label_only" else f"rationales/{w.format}.parquet",
        "models/{model}.json",
    output: "runs/{model}/{format}/{n}/{seed}/run.json"
    shell: "touch {output}"

rule evaluate:
    input:
        "runs/{model}/{format}/{n}/{seed}/run.json",
        "prompts/{model}.parquet",
        "cohort.parquet",
        "models/{model}.json",
    output: "runs/{model}/{format}/{n}/{seed}/metrics.json"
    shell: "touch {output}"

rule qc:
    input: "rationales/{style}.parquet", "histories.parquet"
    output: "rationales/{style}.qc.parquet"
    shell: "touch {output}"

rule baseline:
    input: "histories.parquet", "cohort.parquet"
    output: "baselines/{n}/{seed}/metrics.json"
    shell: "touch {output}"

rule report:
    input:
        expand("runs/{run}/metrics.json", run=RUNS),
        expand("baselines/{n}/{seed}/metrics.json", n=range(8), seed=range(3)),
        expand("rationales/{style}.qc.parquet", style=FORMATS[1:]),
        "table1.csv",
    output: "report.csv"
    shell: "touch {output}"
"""


def timed(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "meds").mkdir()
        config = (REPO / "configs" / "paper.yaml").read_text()
        (tmp / "paper.yaml").write_text(
            config.replace("/path/to/your/meds_dataset", str(tmp / "meds"))
        )
        bare = tmp / "bare"
        bare.mkdir()
        (bare / "Snakefile").write_text(BARE)
        ours_cmd = [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "--quiet",
            "rules",
            "--snakefile",
            str(REPO / "Snakefile"),
            "--configfile",
            str(tmp / "paper.yaml"),
            "--directory",
            str(tmp),
        ]
        bare_cmd = [sys.executable, "-m", "snakemake", "-n", "--quiet", "rules", "--cores", "1"]
        ours, baseline = [], []
        for _ in range(args.repeats):  # interleaved, so machine noise hits both alike
            ours.append(timed(ours_cmd, tmp))
            baseline.append(timed(bare_cmd, bare))
    o, b = statistics.median(ours), statistics.median(baseline)
    print(f"paper grid dry run (1056 jobs): {o:.2f} s (median of {args.repeats})")
    print(f"bare workflow, same jobs:       {b:.2f} s")
    print(f"ratio ours / bare: {o / b:.2f} (target <= 1.5)")


if __name__ == "__main__":
    main()
