"""``rationale-bench``: know the cost before submitting, and install the cluster profile.

- ``rationale-bench plan [--configfile F] [--results DIR]``: jobs per rule (from a Snakemake dry
  run, so it is exactly what would run) and estimates of GPU-hours and teacher tokens: study
  sizes from the config's ``plan`` section, throughputs measured on a GPU
  (benchmarks/gpu_check.py records in DIR) scaled to each model, each labelled measured or
  assumed (throughput.py).
- ``rationale-bench install-profile --account A --partition P [--gpu-partition G]
  [--gpu-request gpus|gres] [--gpu-model M]``: writes a filled copy of ``profiles/slurm`` to
  ``$XDG_CONFIG_HOME/snakemake/slurm`` (``~/.config/...`` by default) so that
  ``snakemake --profile slurm`` works as typed, choosing the status command by the cluster's
  MinJobAge; ``install-profile --check`` checks an installed profile against the live cluster.
- ``rationale-bench review-kappa A.csv B.csv [C.csv ...] [--scale-max 5]``: agreement between
  reviewers' filled review sheets (Cohen's kappa per pair and criterion, Fleiss' for 3+).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from rationale_bench import config_check, study, throughput

REPO = Path(__file__).resolve().parents[2]


def job_counts(snakemake_output: str) -> Counter:
    """Jobs per rule from the 'Job stats' table Snakemake prints for a dry run."""
    counts: Counter = Counter()
    in_table = False
    for line in snakemake_output.splitlines():
        if line.startswith("job ") and "count" in line:
            in_table = True
        elif in_table:
            match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
            if match and match.group(1) != "total":
                counts[match.group(1)] = int(match.group(2))
            elif line.strip().startswith("total"):
                break
    return counts


def model_rates(
    config: Mapping[str, Any], name: str, points: list[dict[str, Any]]
) -> dict[str, throughput.Rate] | None:
    """Fine-tuning, prefill and generation rates of one model (None: its size is unknown)."""
    model = config["models"][name]
    parameters = throughput.parameter_count(model)
    if parameters is None:
        return None
    plan = config["plan"]
    method = study.training_settings(config, name)["method"]
    train_len = plan["prompt_tokens"] + plan["rationale_tokens"]
    return {
        "finetune": throughput.rate_for(f"finetune_{method}", parameters, train_len, points),
        "prefill": throughput.rate_for("prefill", parameters, plan["prompt_tokens"], points),
        "generate": throughput.rate_for("generate", parameters, plan["prompt_tokens"], points),
    }


def estimate(
    config: Mapping[str, Any], points: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """GPU-hours of fine-tuning and evaluation and teacher tokens for the whole grid.

    Training tokens per configuration: n_train x epochs x (prompt + completion tokens), the
    completion being a rationale for rationale formats. Evaluation: one prompt pass (prefill)
    per scored subject, plus a generated rationale for rationale formats. Rates come from the
    GPU measurements in ``points`` (throughput.read_measurements), scaled to each model, or are
    assumed where none exists; ``rates`` says which. Models of unknown size are listed in
    ``unsized`` and left out of the hours.
    """
    points = points or []
    plan = config["plan"]
    gpu_hours = {"finetune": 0.0, "evaluate": 0.0}
    scored = plan["held_out_subjects"] + (
        plan["tuning_subjects"] if config["evaluation"]["calibrate_on_tuning"] else 0
    )
    rates = {m: model_rates(config, m, points) for m in config["grid"]["model"]}
    for c in study.iter_configurations(config):
        rate = rates[c.model]
        if rate is None:
            continue
        training = study.training_settings(config, c.model)
        has_rationale = study.rationale_style(c.format) is not None
        completion = plan["rationale_tokens"] + 3 if has_rationale else 3
        epochs = training["epochs"] if study.is_trained(c.format) else 0
        tokens = c.n_train * epochs * (plan["prompt_tokens"] + completion)
        # Data-parallel jobs: the GPUs share the work, so GPU-hours do not change with them.
        gpu_hours["finetune"] += tokens / rate["finetune"].tokens_per_s / 3600
        generated = scored * plan["rationale_tokens"] if has_rationale else 0
        prefill = scored * plan["prompt_tokens"] / rate["prefill"].tokens_per_s
        gpu_hours["evaluate"] += (generated / rate["generate"].tokens_per_s + prefill) / 3600
    n_styles = len(
        {
            study.rationale_style(f)
            for f in config["grid"]["format"]
            if study.rationale_style(f) is not None
        }
    )
    teacher_requests = plan["teacher_subjects"] * n_styles
    return {
        "gpu_hours": {k: round(v, 1) for k, v in gpu_hours.items()},
        "gpu_hours_total": round(sum(gpu_hours.values()), 1),
        "rates": {m: r for m, r in rates.items() if r is not None},
        "unsized": [m for m, r in rates.items() if r is None],
        "teacher_requests": teacher_requests,
        "teacher_prompt_tokens": teacher_requests * (plan["prompt_tokens"] + 200),
        "teacher_completion_tokens": teacher_requests * plan["rationale_tokens"],
    }


def load_config(configfile: Path) -> dict[str, Any]:
    """The study config with the schema's defaults filled in and validated."""
    config = yaml.safe_load(configfile.read_text())
    for message in config_check.apply_renames(config):
        print(message, file=sys.stderr)
    config_check.validate_config(config, REPO / "schemas" / "config.schema.yaml")
    config_check.check_grid(config)
    return config


def print_rates(cost: Mapping[str, Any], results: str) -> None:
    """Each model's rates, and whether they are measured (and where) or assumed."""
    print(f"throughputs per GPU (tokens/s; measured: GPU check records in {results}):")
    for name, rates in cost["rates"].items():
        for kind, rate in rates.items():
            print(f"  {name:<20} {kind:<9} {rate.tokens_per_s:>12,.0f}  {rate.label}: {rate.basis}")
    for name in cost["unsized"]:
        print(f"  {name:<20} size unknown: set models.{name}.parameters; left out of GPU-hours")


def plan_command(args: argparse.Namespace) -> int:
    configfile = Path(args.configfile)
    # Snakemake reads --configfile files before the workflow's own checks, and its message for
    # a YAML error names neither the file nor the line: say both first.
    try:
        config_check.check_yaml_file(configfile)
    except config_check.ConfigError as error:
        print(error, file=sys.stderr)
        return 1
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "--snakefile",
            str(REPO / "Snakefile"),
            "--configfile",
            str(configfile),
            "--directory",
            str(args.directory),
        ],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-3000:] + result.stderr[-3000:])
        return result.returncode
    counts = job_counts(result.stdout + result.stderr)
    config = load_config(configfile)
    n_configs = sum(1 for _ in study.iter_configurations(config))
    print(f"study {configfile}: {n_configs} configurations")
    print("jobs that would run, by rule:")
    for rule, count in counts.items():
        print(f"  {rule:<22} {count:>6}")
    print(f"  {'total':<22} {sum(counts.values()):>6}")
    points = throughput.read_measurements(Path(args.results))
    cost = estimate(config, points)
    print_rates(cost, args.results)
    print("estimates for the whole grid (study sizes assumed in the config's 'plan' section):")
    print(f"  GPU-hours fine-tuning   {cost['gpu_hours']['finetune']:>10,.1f}")
    print(f"  GPU-hours evaluation    {cost['gpu_hours']['evaluate']:>10,.1f}")
    print(f"  GPU-hours total         {cost['gpu_hours_total']:>10,.1f}")
    print(f"  teacher requests        {cost['teacher_requests']:>10,}")
    print(f"  teacher prompt tokens   {cost['teacher_prompt_tokens']:>10,}")
    print(f"  teacher output tokens   {cost['teacher_completion_tokens']:>10,}")
    return 0


def filled_profile(template: str, account: str, partition: str) -> str:
    if "EDIT_ME_ACCOUNT" not in template or "EDIT_ME_PARTITION" not in template:
        raise ValueError("profiles/slurm/config.yaml lacks the EDIT_ME placeholders")
    return template.replace("EDIT_ME_ACCOUNT", account).replace("EDIT_ME_PARTITION", partition)


def install_profile_command(args: argparse.Namespace) -> int:
    from rationale_bench import slurm_profile

    target = Path(args.target).expanduser() if args.target else slurm_profile.default_profile_dir()
    out = target / "config.yaml"
    if args.check:
        return print_profile_check(out)
    if not (args.account and args.partition):
        print("error: --account and --partition are required (or use --check)", file=sys.stderr)
        return 2
    template = (REPO / "profiles" / "slurm" / "config.yaml").read_text()
    text = filled_profile(template, args.account, args.partition)
    # GPU settings travel as config, not set-resources: the workflow profile's set-resources
    # would replace a set-resources written here (Snakemake merges profiles key by key).
    execution = {"gpu_request": args.gpu_request}
    if args.gpu_model:
        execution["gpu_model"] = args.gpu_model
    if args.gpu_partition:
        execution["gpu_partition"] = args.gpu_partition
    # The status command that survives scancel on this cluster (see slurm_profile).
    status, why = slurm_profile.choose_status_command(slurm_profile.slurm_config())
    extra = {"config": [f"execution={execution!r}"]}
    text = re.sub(r"(?m)^slurm-status-command:.*$", f"slurm-status-command: {status}", text)
    target.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n# Added by rationale-bench install-profile\n" + yaml.safe_dump(extra))
    print(f"wrote {out}; run `snakemake --profile slurm` from the repository root")
    print(why)
    if slurm_profile.slurm_config() is not None:
        return print_profile_check(out)
    return 0


def print_profile_check(path: Path) -> int:
    """Check an installed profile against the live cluster; 1 when something is wrong."""
    from rationale_bench import slurm_profile

    if not path.exists():
        print(f"error: no profile at {path}; install one with install-profile", file=sys.stderr)
        return 2
    findings = slurm_profile.check_profile(yaml.safe_load(path.read_text()))
    print(f"checked {path} against the cluster:")
    for finding in findings:
        print(f"  {finding}")
    return 0 if all(f.ok for f in findings) else 1


def review_kappa_command(args: argparse.Namespace) -> int:
    from rationale_bench.teacher.review import ReviewError, read_review_sheet, review_agreement

    try:
        sheets = {Path(p).stem: read_review_sheet(p, args.scale_max) for p in args.sheets}
        if len(sheets) != len(args.sheets):
            raise ReviewError("two sheets have the same file name; name one file per reviewer")
        table = review_agreement(sheets)
    except ReviewError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for row in table.iter_rows(named=True):
        kappa = "n/a" if row["kappa"] is None else f"{row['kappa']:.3f}"
        quad = row["kappa_quadratic"]
        extra = "" if quad is None else f"  quadratic-weighted {quad:.3f}"
        print(
            f"{row['criterion']:<20} {row['statistic']:<13} {row['reviewers']}: "
            f"kappa {kappa}{extra}  (n={row['n_items']})"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rationale-bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    plan = sub.add_parser("plan", help="jobs per rule and estimated cost of a study")
    plan.add_argument("--configfile", default="config.yaml")
    plan.add_argument("--directory", default=".", help="the study's working directory")
    plan.add_argument(
        "--results",
        default=str(REPO / "benchmarks" / "results"),
        help="folder of benchmarks/gpu_check.py records (measured throughputs)",
    )
    plan.set_defaults(func=plan_command)
    install = sub.add_parser("install-profile", help="install the SLURM profile as 'slurm'")
    install.add_argument("--account", help="SLURM account (sbatch -A)")
    install.add_argument("--partition", help="partition for CPU jobs")
    install.add_argument("--gpu-partition", help="partition for fine-tuning and evaluation")
    install.add_argument("--gpu-request", choices=["gpus", "gres"], default="gpus")
    install.add_argument("--gpu-model", help="GPU type, e.g. a100")
    install.add_argument(
        "--target", help="profile folder (default: $XDG_CONFIG_HOME/snakemake/slurm)"
    )
    install.add_argument(
        "--check",
        action="store_true",
        help="check the installed profile against the live cluster (account, partitions, "
        "status command and MinJobAge, GPU request style) and print what was found",
    )
    install.set_defaults(func=install_profile_command)
    kappa = sub.add_parser("review-kappa", help="agreement between filled review sheets")
    kappa.add_argument("sheets", nargs="+", help="filled sheets, one CSV per reviewer (>= 2)")
    kappa.add_argument("--scale-max", type=int, default=5, help="ratings run from 1 to this")
    kappa.set_defaults(func=review_kappa_command)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
