"""Study report: the rule's entry point over study_report (tables, statistics) and figures."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from rationale_bench import study_report
from rationale_bench.study import GRID_AXES

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
    means = table.group_by("format").agg(pl.col("auroc").mean())
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
        "Each line: one matched (model, training size, seed)\nred: mean over configurations",
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
) -> dict[str, Path]:
    """Write every table and figure, and README.md with the computed headline.

    ``partial`` reports whatever configurations have finished (their files exist) and lists
    the rest as missing; the full report requires every file (Snakemake guarantees it).
    """
    grid = [entry[0] for entry in entries]
    outputs = [study_report.as_outputs(entry) for entry in entries]
    if partial:
        outputs, _ = study_report.available_outputs(outputs)
    qc = pl.concat([pl.read_parquet(p) for p in qc_paths]) if qc_paths else None
    paths = study_report.write_study_report(
        outputs,
        out_dir,
        configurations=grid,
        baseline_formats=tuple(baseline_formats),
        n_boot=n_boot,
        seed=seed,
        attrition=attrition,
        table1=table1,
        rationale_qc=qc,
    )
    table = pl.read_csv(paths["metrics"])
    lm = table.filter(pl.col("format").is_in(list(formats)))
    figure = out_dir / "figures" / "auroc_by_format.png"
    if lm.height:
        plot_paired(lm, formats, figure)
    readme = out_dir / "README.md"
    readme.write_text(readme_text(paths, out_dir, partial))
    paths["readme"] = readme
    return paths


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
        "## Tables",
        "- `metrics.csv`: one row per configuration (and baseline), every factor a column.",
        "- `paired.csv`: each format minus label_only on the same held-out patients, with "
        "paired bootstrap 95% CIs and DeLong p-values.",
        "- `summary.csv`: across configurations, overall and by factor (Wilcoxon signed-rank).",
        "- `baselines.csv`: classical baselines beside label-only SFT.",
        "- `error_crosstab.csv`, `error_flips.csv`, `error_subjects.csv`: matched error analysis.",
        "- `missing.txt`: grid cells without results.",
        "",
        "## Figures",
        *[f"- `figures/{name}` (and .svg)" for name in figures],
        "",
    ]
    return "\n".join(lines)
