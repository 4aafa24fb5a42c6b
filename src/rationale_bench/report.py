"""Study report: every configuration side by side, and formats compared per matched config."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from rationale_bench.study import GRID_AXES

MATCH_AXES = tuple(a for a in GRID_AXES if a != "format")


def metrics_table(entries: Sequence[tuple[Mapping[str, Any], Path, Path]]) -> pl.DataFrame:
    """One row per configuration from (configuration, metrics.json, run.json) triples."""
    rows = []
    for configuration, metrics_path, run_path in entries:
        m = json.loads(Path(metrics_path).read_text())
        run = json.loads(Path(run_path).read_text())
        rows.append(
            {
                **configuration,
                "config_id": "/".join(f"{a}={configuration[a]}" for a in GRID_AXES),
                "scoring_mode": m["scoring_mode"],
                "n_held_out": m["n"],
                "n_cases": m["n_pos"],
                "auroc": m["auroc"],
                "auroc_ci_low": m["auroc_bootstrap"]["ci_low"],
                "auroc_ci_high": m["auroc_bootstrap"]["ci_high"],
                "auroc_delong_ci_low": m["auroc_delong"]["ci_low"],
                "auroc_delong_ci_high": m["auroc_delong"]["ci_high"],
                "auprc": m["auprc"],
                "prevalence": m["prevalence"],
                "brier": m["brier"],
                "forced_answer_rate": m["forced_answer_rate"],
                "optimizer_steps": run["optimizer_steps"],
                "tokens_trained": run["tokens_trained"],
                "mean_completion_tokens": run["mean_completion_tokens"],
                "mean_label_loss_share": run["mean_label_loss_share"],
                "final_loss": run["final_loss"],
            }
        )
    return pl.DataFrame(rows).sort(list(GRID_AXES))


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
