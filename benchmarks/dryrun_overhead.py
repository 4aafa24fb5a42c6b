"""Dry-run time of the paper grid versus two bare Snakemake workflows with the same job counts.

Baselines, both shell rules only, no config, no validation, params or resources:
- structured: our rules' names, job counts per rule and file dependencies (inputs per job
  included), generated from the study config's grid; the ratio is the cost of what our workflow
  adds to the DAG that the study itself needs;
- plainest: N configurations of prepare -> train -> evaluate -> aggregate, with as many prepare
  jobs as make the same total job count.
Before timing, the benchmark asserts that ours and the structured bare workflow have the same
job count for every rule, and the plainest the same total. Each workflow is a fresh
``python -m snakemake -n --quiet rules`` process (start-up included on every side), run
interleaved so that machine noise hits all alike; medians of wall time and of CPU time (user +
system of the child: steadier than wall time on a shared machine) are compared. Target: ratio
<= 1.5.

Run: python benchmarks/dryrun_overhead.py [--repeats 5] [--configfile configs/paper.yaml]
     python benchmarks/dryrun_overhead.py --smoke   # 2 models x 2 sizes x 1 seed, one repeat
Writes benchmarks/results/dryrun_overhead.json (see results_record.py).
"""

from __future__ import annotations

import argparse
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_record import write_result  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "configs" / "paper.yaml"
DRY_RUN = [sys.executable, "-m", "snakemake", "-n", "--quiet", "rules"]

STRUCTURED = """
MODELS = {models!r}
SERIALIZATIONS = {serializations!r}
STYLES = {styles!r}
KINDS = {kinds!r}
SIZES = {sizes!r}
SEEDS = {seeds!r}
RUNS = {runs!r}
SHARDS = {shards!r}
REFERENCE = "histories/{reference}.parquet"

wildcard_constraints:
    model="[A-Za-z0-9_.-]+",
    format="[a-z_]+",
    style="[a-z_]+",
    kind="[a-z_]+",
    serialization="[a-z_]+",

rule all:
    input: "report.csv"

rule fetch_model:
    output: "hub/{{model}}.json"
    shell: "touch {{output}}"

rule ingest_meds:
    output: "events.parquet"
    shell: "touch {{output}}"

rule build_cohort:
    input: "events.parquet"
    output: "cohort.parquet"
    shell: "touch {{output}}"

rule table_one:
    input: "cohort.parquet", REFERENCE
    output: "table1.csv"
    shell: "touch {{output}}"

rule build_histories:
    input: "events.parquet", "cohort.parquet"
    output: "histories/{{serialization}}.parquet"
    shell: "touch {{output}}"

rule build_prompts:
    input: "histories/{{serialization}}.parquet", "hub/{{model}}.json"
    output: "prompts/{{model}}/{{serialization}}.parquet"
    shell: "touch {{output}}"

rule teacher_shard:
    input: REFERENCE
    output: "shards/{{style}}/{{shard}}.json"
    shell: "touch {{output}}"

rule teacher_shards_done:
    input: expand("shards/{{{{style}}}}/{{shard}}.json", shard=SHARDS)
    output: "shards/{{style}}.json"
    shell: "touch {{output}}"

rule generate_rationales:
    input: REFERENCE, "shards/{{style}}.json" if SHARDS else []
    output: "rationales/{{style}}.parquet"
    shell: "touch {{output}}"

rule rationale_qc:
    input: "rationales/{{style}}.parquet", REFERENCE
    output: "rationales/{{style}}.qc.parquet"
    shell: "touch {{output}}"

rule finetune:
    input:
        "prompts/{{model}}/{{serialization}}.parquet",
        "cohort.parquet",
        lambda w: [] if w.format == "label_only" else f"rationales/{{w.format}}.parquet",
        "hub/{{model}}.json",
    output: "runs/{{model}}/{{serialization}}/{{format}}/{{n_train}}/{{seed}}/run.json"
    shell: "touch {{output}}"

rule evaluate:
    input:
        "runs/{{model}}/{{serialization}}/{{format}}/{{n_train}}/{{seed}}/run.json",
        "prompts/{{model}}/{{serialization}}.parquet",
        "cohort.parquet",
        "hub/{{model}}.json",
    output: "runs/{{model}}/{{serialization}}/{{format}}/{{n_train}}/{{seed}}/metrics.json"
    shell: "touch {{output}}"

rule baseline:
    input: REFERENCE, "cohort.parquet"
    output: "baselines/{{kind}}/{{n_train}}/{{seed}}/metrics.json"
    shell: "touch {{output}}"

rule report:
    input:
        expand("runs/{{run}}/metrics.json", run=RUNS),
        expand("baselines/{{kind}}/{{n}}/{{seed}}/metrics.json", kind=KINDS, n=SIZES, seed=SEEDS),
        expand("rationales/{{style}}.qc.parquet", style=STYLES),
        expand("prompts/{{model}}/{{s}}.parquet", model=MODELS, s=SERIALIZATIONS),
        "table1.csv",
    output: "report.csv"
    shell: "touch {{output}}"
"""

PLAINEST = """
PAIRS = [(i % {prepare}, i) for i in range({configurations})]

rule aggregate:
    input:
        [f"evaluate/{{p}}/{{i}}.txt" for p, i in PAIRS],
        expand("prepare/{{p}}.txt", p=range({prepare})),
    output: "aggregate.txt"
    shell: "touch {{output}}"

rule prepare:
    output: "prepare/{{p}}.txt"
    shell: "touch {{output}}"

rule train:
    input: "prepare/{{p}}.txt"
    output: "train/{{p}}/{{i}}.txt"
    shell: "touch {{output}}"

rule evaluate:
    input: "train/{{p}}/{{i}}.txt"
    output: "evaluate/{{p}}/{{i}}.txt"
    shell: "touch {{output}}"
"""


def study_grid(config: dict[str, Any]) -> dict[str, list]:
    """The grid of ``config`` with config.yaml's defaults for the axes it leaves out."""
    defaults = yaml.safe_load((REPO / "config.yaml").read_text())
    grid = dict(defaults["grid"], **config.get("grid", {}))
    teacher = dict(defaults["teacher"], **config.get("teacher", {}))
    baselines = dict(defaults.get("baselines", {}), **config.get("baselines", {}))
    serialization = dict(defaults.get("serialization", {}), **config.get("serialization", {}))
    styles = sorted(set(grid["format"]) - {"label_only"})
    assert set(styles) <= set(teacher["styles"]), (styles, teacher["styles"])
    return {
        "models": grid["model"],
        "serializations": grid["serialization"],
        "formats": grid["format"],
        "sizes": grid["n_train"],
        "seeds": grid["seed"],
        "styles": styles,
        "kinds": baselines.get("kinds", ["logistic_regression"]),
        # An OpenAI-compatible teacher's requests are sent by shard jobs.
        "shards": list(range(teacher.get("shards", 1)))
        if teacher.get("backend") == "openai"
        else [],
        "reference": serialization.get("reference_variant", grid["serialization"][0]),
    }


def structured_snakefile(grid: dict[str, list]) -> str:
    runs = [
        f"{m}/{s}/{f}/{n}/{seed}"
        for m in grid["models"]
        for s in grid["serializations"]
        for f in grid["formats"]
        for n in grid["sizes"]
        for seed in grid["seeds"]
    ]
    fields = {k: v for k, v in grid.items() if k != "formats"}
    return STRUCTURED.format(runs=runs, **fields)


def job_counts(out: str) -> dict[str, int]:
    """Jobs per rule from the 'Job stats' table of a dry run's output."""
    table = out.split("Job stats:")[1].split("\n\n")[0]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.MULTILINE))
    return {rule: int(n) for rule, n in counts.items() if rule != "total"}


def run(cmd: list[str], cwd: Path) -> str:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return result.stdout + result.stderr


def timed(cmd: list[str], cwd: Path) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (user + system of the child) and output of one dry run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = run(cmd, cwd)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, out


def write_workflows(tmp: Path, config: dict[str, Any]) -> dict[str, tuple[list[str], Path]]:
    """Our config and both bare Snakefiles; the dry-run command and folder of each."""
    (tmp / "meds").mkdir()
    config["data"]["meds"]["path"] = str(tmp / "meds")
    (tmp / "config.yaml").write_text(yaml.safe_dump(config))
    ours = DRY_RUN + ["--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp)]
    ours += ["--configfile", str(tmp / "config.yaml")]
    grid = study_grid(config)
    (tmp / "structured").mkdir()
    (tmp / "structured" / "Snakefile").write_text(structured_snakefile(grid))
    return {
        "ours": (ours, tmp),
        "structured": (DRY_RUN + ["--cores", "1"], tmp / "structured"),
    }


def add_plainest(tmp: Path, ours_counts: dict[str, int]) -> tuple[list[str], Path]:
    """The plainest workflow with as many jobs in all as ours (N = our finetune jobs)."""
    n = ours_counts["finetune"]
    prepare = sum(ours_counts.values()) - 2 * n - 1
    (tmp / "plainest").mkdir()
    text = PLAINEST.format(prepare=prepare, configurations=n)
    (tmp / "plainest" / "Snakefile").write_text(text)
    return DRY_RUN + ["--cores", "1"], tmp / "plainest"


def check_same_jobs(counts: dict[str, dict[str, int]]) -> None:
    ours, structured, plainest = counts["ours"], counts["structured"], counts["plainest"]
    if ours != structured:
        sys.exit(f"not the same DAG: jobs per rule, ours {ours}, structured bare {structured}")
    if sum(ours.values()) != sum(plainest.values()):
        sys.exit(f"not the same job total: ours {ours}, plainest {plainest}")


def smoke_config(config: dict[str, Any]) -> dict[str, Any]:
    grid = config["grid"]
    config["grid"] = dict(grid, model=grid["model"][:2], n_train=grid["n_train"][:2], seed=[1])
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--configfile", type=Path, default=PAPER)
    parser.add_argument("--smoke", action="store_true", help="a 2x3x2x1 grid, one repeat")
    args = parser.parse_args()
    config = yaml.safe_load(args.configfile.read_text())
    if args.smoke:
        args.repeats, config = 1, smoke_config(config)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    times: dict[str, list[float]] = {"ours": [], "structured": [], "plainest": []}
    cpu_times: dict[str, list[float]] = {name: [] for name in times}
    counts: dict[str, dict[str, int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workflows = write_workflows(Path(tmp), config)
        for _ in range(args.repeats):  # interleaved, so machine noise hits all alike
            for name in times:
                if name not in workflows:  # sized after our first run
                    workflows[name] = add_plainest(Path(tmp), counts["ours"])
                seconds, cpu, out = timed(*workflows[name])
                times[name].append(seconds)
                cpu_times[name].append(cpu)
                counts.setdefault(name, job_counts(out))
        check_same_jobs(counts)
    median = {name: statistics.median(t) for name, t in times.items()}
    cpu = {name: statistics.median(t) for name, t in cpu_times.items()}
    jobs = sum(counts["ours"].values())
    print(f"{args.configfile.name} grid dry run, {jobs} jobs (same per rule in the structured)")
    for name in times:
        print(
            f"  {name:<10} {median[name]:.2f} s wall, {cpu[name]:.2f} s CPU "
            f"(medians of {args.repeats})"
        )
    figures = {"jobs": jobs, "finetune_jobs": counts["ours"]["finetune"]}
    for name in times:
        figures[f"{name}_wall_s"] = round(median[name], 3)
        figures[f"{name}_cpu_s"] = round(cpu[name], 3)
    for name in ("structured", "plainest"):
        figures[f"wall_ratio_vs_{name}"] = round(median["ours"] / median[name], 3)
        figures[f"cpu_ratio_vs_{name}"] = round(cpu["ours"] / cpu[name], 3)
        print(
            f"ratio ours / {name}: wall {median['ours'] / median[name]:.2f}, "
            f"CPU {cpu['ours'] / cpu[name]:.2f} (target <= 1.5)"
        )
    args.configfile = str(args.configfile.relative_to(REPO))
    path = write_result(
        "dryrun_overhead",
        vars(args),
        figures,
        "bare Snakemake workflows with the same jobs: structured (same rules) and plainest",
        smoke=args.smoke,
        packages=("snakemake", "snakemake-executor-plugin-slurm"),
    )
    print(f"result: {path}")


if __name__ == "__main__":
    main()
