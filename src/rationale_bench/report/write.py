"""Study report: the rule's entry point over study_report (tables, statistics, figures), with the
front page (README.md), the truncation table and the run card."""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from rationale_bench.report.study_report import write_study_report
from rationale_bench.report.tables import as_outputs, available_outputs
from rationale_bench.study import GRID_AXES
from rationale_bench.text.serialize import truncation_summary

TRUNCATION_COLUMNS = ["n_tokens", "truncated", "n_lines_dropped", "n_events_dropped"]

MATCH_AXES = tuple(a for a in GRID_AXES if a != "format")


def plot_paired(table: pl.DataFrame, formats: Sequence[str], path: Path) -> None:
    """AUROC of each format, one line per matched (model, n_train, seed), with 95% CIs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = [f for f in formats if f in set(table["format"])]
    x_of = {f: i for i, f in enumerate(order)}
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(order), 4.2))
    for _, group in table.group_by(list(MATCH_AXES), maintain_order=True):
        group = group.filter(pl.col("format").is_in(order)).sort(
            pl.col("format").replace_strict(x_of)
        )
        xs = [x_of[f] for f in group["format"]]
        ax.plot(xs, group["auroc"], color="0.6", lw=0.8, marker="o", ms=3, zorder=1)
    valid = table.filter(pl.col("valid")) if "valid" in table.columns else table
    degenerate = table.filter(~pl.col("valid")) if "valid" in table.columns else table.head(0)
    if degenerate.height:
        ax.scatter(
            [x_of[f] for f in degenerate["format"]],
            degenerate["auroc"],
            marker="x",
            s=50,
            color="red",
            zorder=3,
            label=f"degenerate ({degenerate.height}): excluded from the means",
        )
        ax.legend(loc="lower left", fontsize=7, frameon=False)
    # Means over valid configurations only: a degenerate model is never averaged in.
    means = valid.group_by("format").agg(pl.col("auroc").mean())
    for fmt, mean in means.iter_rows():
        if fmt in x_of:
            ax.hlines(mean, x_of[fmt] - 0.25, x_of[fmt] + 0.25, color="C3", lw=2.5, zorder=2)
            ax.annotate(
                f"mean {mean:.3f}", (x_of[fmt] + 0.27, mean), va="center", fontsize=8, color="C3"
            )
    ax.errorbar(
        [x_of[f] + 0.06 for f in table["format"]],
        table["auroc"],
        yerr=[table["auroc"] - table["auroc_ci_low"], table["auroc_ci_high"] - table["auroc"]],
        fmt="none",
        ecolor="0.8",
        elinewidth=0.8,
        zorder=0,
    )
    ax.axhline(0.5, color="0.3", ls=":", lw=0.8)
    ax.set_xticks(range(len(order)), [f.replace("_", " ") for f in order])
    ax.set_xlim(-0.5, len(order) - 0.2)
    ax.set_ylabel("held-out AUROC (95% bootstrap CI)")
    ax.set_title(
        "Each line: one matched (model, training size, seed)\nred: mean over valid configurations",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)


def write_report(
    entries: Sequence[Sequence[Any]],
    formats: Sequence[str],
    baseline_formats: Sequence[str],
    out_dir: Path,
    n_boot: int,
    seed: int,
    attrition: pl.DataFrame,
    table1: pl.DataFrame,
    qc_paths: Sequence[str],
    partial: bool = False,
    config: Mapping[str, Any] | None = None,
    rationale_paths: Sequence[str] = (),
    workflow_dir: Path | None = None,
    prompt_paths: Sequence[str] = (),
    review_paths: Sequence[str] = (),
    gates: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write every table and figure, and README.md with the computed headline.

    ``prompt_paths`` (``results/prompts/{model}/{serialization}.parquet``) give the truncation
    table: how often each model's token budget cut a history. ``review_paths`` (the human
    review's ``scores.csv`` and ``agreement.csv``, when reviewers filled sheets) are copied in
    and summarized on the front page.

    ``partial`` reports whatever configurations have finished (their files exist) and lists
    the rest as missing; the full report requires every file (Snakemake guarantees it).
    ``gates`` are the config's ``validity`` thresholds (see diagnostics.validity).
    """
    grid = [entry[0] for entry in entries]
    outputs = [as_outputs(entry) for entry in entries]
    if partial:
        outputs, _ = available_outputs(outputs)
    # A grid without rationale formats still gets its (empty, self-explaining) QC figure.
    qc = (
        pl.concat([pl.read_parquet(p) for p in qc_paths])
        if qc_paths
        else pl.DataFrame(
            schema={"style": pl.String, "n_words": pl.Int32, "grounded_fraction": pl.Float64}
        )
    )
    paths = write_study_report(
        outputs,
        out_dir,
        configurations=grid,
        baseline_formats=tuple(baseline_formats),
        n_boot=n_boot,
        seed=seed,
        attrition=attrition,
        table1=table1,
        rationale_qc=qc,
        gates=gates,
    )
    for path in review_paths:
        name = f"review_{Path(path).name}"
        paths[name.removesuffix(".csv")] = out_dir / name
        shutil.copyfile(path, out_dir / name)
    paths["truncation"] = out_dir / "truncation.csv"
    truncation_table(prompt_paths).write_csv(paths["truncation"])
    table = pl.read_csv(paths["metrics"])
    lm = table.filter(pl.col("format").is_in(list(formats)))
    figure = out_dir / "figures" / "auroc_by_format.png"
    if lm.height:
        plot_paired(lm, formats, figure)
    if config is not None:
        card = run_card(
            config, attrition, teacher_metadata(rationale_paths), workflow_dir or out_dir
        )
        paths["run_card"] = out_dir / "run_card.md"
        paths["run_card"].write_text(run_card_markdown(card))
        (out_dir / "run_card.json").write_text(json.dumps(card, indent=2, default=str))
    readme = out_dir / "README.md"
    readme.write_text(readme_text(paths, out_dir, partial))
    paths["readme"] = readme
    return paths


def truncation_table(prompt_paths: Sequence[str]) -> pl.DataFrame:
    """One row per (model, serialization): prompts, share truncated, lines dropped, tokens."""
    rows = []
    for path in prompt_paths:
        model, serialization = Path(path).parent.name, Path(path).stem
        rows.append(
            {"model": model, "serialization": serialization}
            | truncation_summary(pl.read_parquet(path, columns=TRUNCATION_COLUMNS))
        )
    schema = {
        "model": pl.String,
        "serialization": pl.String,
        "n_prompts": pl.Int64,
        "truncation_rate": pl.Float64,
        "mean_lines_dropped": pl.Float64,
        "mean_events_dropped": pl.Float64,
        "mean_tokens": pl.Float64,
        "max_tokens": pl.Int64,
    }
    return pl.DataFrame(rows, schema=schema, orient="row") if rows else pl.DataFrame(schema=schema)


def _truncation_lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    table = pl.read_csv(path)
    if not table.height:
        return []
    lines = ["", "## Prompt truncation", ""]
    lines += [
        f"- {r['model']} / {r['serialization']}: {100 * r['truncation_rate']:.1f}% of "
        f"{r['n_prompts']} histories cut to the token budget (mean {r['mean_lines_dropped']:.1f} "
        f"oldest lines, {r['mean_events_dropped']:.1f} events dropped; mean "
        f"{r['mean_tokens']:.0f}, max {r['max_tokens']} tokens)."
        for r in table.iter_rows(named=True)
    ]
    return lines


def _review_lines(scores_path: Path, agreement_path: Path) -> list[str]:
    """The human review on the front page: mean scores per teacher and style, and agreement."""
    if not scores_path.exists():
        return []
    lines = ["", "## Human review of rationales", ""]
    scores = pl.read_csv(scores_path)
    for r in scores.iter_rows(named=True):
        sd = "n/a" if r["sd"] is None else f"{r['sd']:.2f}"
        lines.append(
            f"- {r['teacher']} / {r['style']}, {r['criterion'].replace('_', ' ')}: mean "
            f"{r['mean']:.2f} (SD {sd}), {r['n_items']} items, {r['n_ratings']} ratings."
        )
    agreement = pl.read_csv(agreement_path) if agreement_path.exists() else pl.DataFrame()
    for r in agreement.iter_rows(named=True):
        kappa = "n/a" if r["kappa"] is None else f"{r['kappa']:.2f}"
        name = "Cohen's" if r["statistic"] == "cohen_kappa" else "Fleiss'"
        lines.append(
            f"- Agreement on {r['criterion'].replace('_', ' ')} ({r['reviewers']}, "
            f"{r['n_items']} items): {name} kappa {kappa}."
        )
    if not agreement.height:
        lines.append("- One reviewer so far: no agreement statistic.")
    lines.append("- Tables: `review_scores.csv`, `review_agreement.csv`.")
    return lines


def readme_text(paths: dict[str, Path], out_dir: Path, partial: bool) -> str:
    """The report's front page: the computed headline, then what each file holds."""
    headline = paths["headline"].read_text().strip()
    status = "Partial report: only finished configurations. " if partial else ""
    figures = sorted(p.name for p in (out_dir / "figures").glob("*.png"))
    lines = [
        "# rationale-bench study report",
        "",
        status + headline,
        "",
        "## Mechanism",
        "",
        paths["mechanism_text"].read_text().strip(),
        "",
        "## Tables",
        "- `metrics.csv`: one row per fine-tuned configuration, every factor a column, with its "
        "diagnostics (compliance, collapse, faithfulness, conclusion agreement, training losses) "
        "and its validity.",
        "- `validity.csv`: each configuration valid or degenerate, with the reasons; degenerate "
        "configurations are left out of the headline, summary and means.",
        "- `mechanism.csv`: per rationale format, each explanation's measure beside ΔAUROC.",
        "- `paired.csv`: each format minus label_only on the same held-out patients, with "
        "paired bootstrap 95% CIs and DeLong p-values; `valid` and `excluded_because` per pair.",
        "- `summary.csv`: across configurations, overall and by factor (Wilcoxon signed-rank).",
        "- `baselines.csv`: classical baselines beside label-only SFT, by training size; "
        "`baseline_metrics.csv`: one row per baseline run.",
        "- `error_crosstab.csv`, `error_flips.csv`, `error_subjects.csv`: matched error analysis.",
        "- `missing.txt`: grid cells without results.",
        "- `truncation.csv`: per model and serialization, the share of histories cut to the "
        "token budget (oldest lines dropped first).",
        "- `run_card.md` / `run_card.json`: data, cohort definition, prompts, teacher and "
        "sampling settings, hyperparameters, package versions, workflow commit, config hash.",
        "",
        "## Figures",
        *[
            f"- `figures/{name}`"
            + (" (and .svg)" if (out_dir / "figures" / name).with_suffix(".svg").exists() else "")
            for name in figures
        ],
        *_truncation_lines(out_dir / "truncation.csv"),
        *_review_lines(out_dir / "review_scores.csv", out_dir / "review_agreement.csv"),
        "",
    ]
    return "\n".join(lines)


CARD_PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "tokenizers",
    "polars",
    "scikit-learn",
    "scipy",
    "numpy",
    "openai",
    "snakemake",
    "snakemake-executor-plugin-slurm",
    "matplotlib",
)


def git_commit(repo: Path) -> str:
    """The workflow's commit (with '+dirty' for local changes), or 'unknown' outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def config_hash(config: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def package_versions() -> dict[str, str]:
    versions = {}
    for name in CARD_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def run_card(
    config: Mapping[str, Any],
    attrition: pl.DataFrame,
    teacher_meta: Sequence[Mapping[str, Any]],
    workflow_dir: Path,
) -> dict[str, Any]:
    """What a reader needs to reproduce the study (TRIPOD-LLM style items), as one record."""
    return {
        "workflow_commit": git_commit(workflow_dir),
        "config_sha256": config_hash(config),
        "data": config["data"],
        "cohort_definition": config["cohort"],
        "attrition": attrition.to_dicts(),
        "serialization": config["serialization"],
        "question": config["serialization"]["question"],
        "teacher": {
            "name": config["teacher"]["name"],
            "backend": config["teacher"]["backend"],
            "prompts": config["teacher"]["prompts"]
            if config["teacher"]["backend"] == "openai"
            else "template teacher (rationale_bench.teacher.generate.template_rationale)",
            "as_used": list(teacher_meta),
        },
        "models": {name: config["models"][name] for name in config["grid"]["model"]},
        "training_defaults": config["training"],
        "evaluation": config["evaluation"],
        "grid": config["grid"],
        "python": platform.python_version(),
        "packages": package_versions(),
    }


def run_card_markdown(card: Mapping[str, Any]) -> str:
    """The run card as readable markdown; every value also sits in run_card.json."""

    def block(title: str, value: Any) -> list[str]:
        return [
            f"## {title}",
            "",
            "```yaml",
            yaml.safe_dump(value, sort_keys=False).strip(),
            "```",
            "",
        ]

    lines = [
        "# Run card",
        "",
        f"- workflow commit: `{card['workflow_commit']}`",
        f"- config SHA-256: `{card['config_sha256']}`",
        f"- Python {card['python']}",
        "",
    ]
    for title, key in (
        ("Data source", "data"),
        ("Cohort definition", "cohort_definition"),
        ("Attrition", "attrition"),
        ("Serialization and question", "serialization"),
        ("Teacher: model, prompts and sampling settings", "teacher"),
        ("Models", "models"),
        ("Fine-tuning hyperparameters (study defaults)", "training_defaults"),
        ("Evaluation", "evaluation"),
        ("Grid", "grid"),
        ("Package versions", "packages"),
    ):
        lines += block(title, card[key])
    return "\n".join(lines)


def teacher_metadata(rationale_paths: Sequence[str]) -> list[dict[str, Any]]:
    """Teacher, model and sampling settings recorded with the rationales actually used."""
    meta = []
    for path in rationale_paths:
        frame = pl.read_parquet(
            path, columns=["style", "teacher", "backend", "teacher_model", "sampling"]
        )
        meta += frame.unique().sort("style").to_dicts()
    return meta
