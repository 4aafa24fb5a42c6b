"""Paired statistics: format - reference on the same held-out subjects, then across
configurations.

* :func:`paired_differences` - ``paired.csv``: format - reference per matched configuration,
  with a paired bootstrap (same resampled subjects for both formats) and DeLong's paired test.
* :func:`summary_across_configurations` - ``summary.csv``: counts, mean/median/SD, Wilcoxon.
* :func:`baseline_table` - baselines next to the fine-tuned formats.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl
from scipy import stats

from rationale_bench.evaluate import metrics
from rationale_bench.report.names import (
    HIGHER_IS_BETTER,
    REFERENCE,
    format_order,
    paired_factors,
)
from rationale_bench.report.tables import (
    align_pair,
    held_out,
    match_id,
    matched_groups,
    prediction_factors,
)
from rationale_bench.text.formats import FORMATS

PAIRED_METRICS: dict[str, metrics.Metric] = {
    "auroc": metrics.auroc,
    "auprc": metrics.auprc,
    "brier": metrics.brier,
}
# Below 6 pairs the exact two-sided Wilcoxon test cannot reach p < 0.05 (n=5: p >= 0.0625).
MIN_WILCOXON_PAIRS = 6


def paired_differences(
    preds: pl.DataFrame,
    reference: str = REFERENCE,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> pl.DataFrame:
    """Format - reference in AUROC, AUPRC and Brier per matched configuration (paired.csv).

    A matched group shares every factor except ``format``.  Within it, each other format is
    joined to the reference on ``subject_id`` (identical subject sets required, else
    ValueError).  For each metric the columns are ``{m}_reference``, ``{m}_format``,
    ``{m}_diff`` (format - reference), the paired percentile bootstrap ``{m}_ci_low`` /
    ``{m}_ci_high`` (stratified; both formats evaluated on the same resampled subjects, and the
    same ``seed`` gives the same resamples for every metric) and ``{m}_p_value``: DeLong's
    paired test for AUROC, the paired bootstrap p-value for AUPRC and Brier
    (``auroc_bootstrap_p_value`` is also given).  Groups without the reference are skipped.
    """
    preds = held_out(preds)
    factors = prediction_factors(preds)
    axes = [f for f in factors if f != "format"]
    formats = format_order(preds["format"].unique(maintain_order=True).to_list(), reference)
    rows = []
    for key, group in matched_groups(preds, axes):
        by_format = {k[0]: g for k, g in group.group_by("format", maintain_order=True)}
        if reference not in by_format:
            continue
        mid = match_id(axes, key)
        for fmt in formats:
            if fmt == reference or fmt not in by_format:
                continue
            joined = align_pair(by_format[reference], by_format[fmt], mid, reference, fmt)
            y = joined["boolean_value"].to_numpy()
            s_ref = joined["predicted_boolean_probability"].to_numpy()
            s_fmt = joined["predicted_boolean_probability_other"].to_numpy()
            row: dict[str, Any] = dict(zip(axes, key, strict=True))
            row |= {"match_id": mid, "format": fmt, "reference": reference}
            row |= {"n": int(y.size), "n_pos": int(y.sum())}
            for name, metric in PAIRED_METRICS.items():
                boot = metrics.paired_bootstrap_diff(
                    y, s_fmt, s_ref, metric=metric, n_boot=n_boot, seed=seed, alpha=alpha
                )
                row |= {
                    f"{name}_reference": boot["estimate_b"],
                    f"{name}_format": boot["estimate_a"],
                    f"{name}_diff": boot["diff"],
                    f"{name}_ci_low": boot["ci_low"],
                    f"{name}_ci_high": boot["ci_high"],
                    f"{name}_p_value": boot["p_value"],
                }
            row["auroc_bootstrap_p_value"] = row["auroc_p_value"]
            row["auroc_p_value"] = metrics.delong_paired_test(y, s_fmt, s_ref, alpha=alpha)[
                "p_value"
            ]
            rows.append(row)
    schema = {a: preds.schema[a] for a in axes} | {
        "match_id": pl.String, "format": pl.String, "reference": pl.String,
        "n": pl.Int64, "n_pos": pl.Int64,
    }  # fmt: skip
    for name in PAIRED_METRICS:
        schema |= {f"{name}_{s}": pl.Float64 for s in ("reference", "format", "diff")}
        schema |= {f"{name}_{s}": pl.Float64 for s in ("ci_low", "ci_high", "p_value")}
    schema["auroc_bootstrap_p_value"] = pl.Float64
    return pl.DataFrame(rows, schema=schema)


def _wilcoxon(diffs: np.ndarray) -> tuple[float, float, str]:
    """(statistic, p, note) of scipy's Wilcoxon signed-rank test, NaN with a note if untestable."""
    if diffs.size < MIN_WILCOXON_PAIRS:
        return (
            math.nan,
            math.nan,
            f"only {diffs.size} matched pair(s); the Wilcoxon signed-rank test needs at least "
            f"{MIN_WILCOXON_PAIRS} to reach p < 0.05",
        )
    if np.all(diffs == 0):
        return math.nan, math.nan, "all differences are zero, so there is nothing to test"
    result = stats.wilcoxon(diffs)
    return float(result.statistic), float(result.pvalue), ""


def _summary_row(rows: pl.DataFrame, metric: str) -> dict[str, Any]:
    raw = rows[f"{metric}_diff"].to_numpy().astype(np.float64)
    keep = np.isfinite(raw)
    d = raw[keep]
    lo = rows[f"{metric}_ci_low"].to_numpy().astype(np.float64)[keep]
    hi = rows[f"{metric}_ci_high"].to_numpy().astype(np.float64)[keep]
    # "worse" follows the metric's direction: a higher Brier score is worse.
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    statistic, p, note = _wilcoxon(d)
    if not keep.all():
        dropped = f"{int((~keep).sum())} configuration(s) with undefined {metric} dropped"
        note = f"{note}; {dropped}" if note else dropped
    with np.errstate(all="ignore"):
        return {
            "n_configurations": int(d.size),
            "mean_reference": float(np.mean(rows[f"{metric}_reference"].to_numpy()[keep]))
            if d.size
            else math.nan,
            "mean_format": float(np.mean(rows[f"{metric}_format"].to_numpy()[keep]))
            if d.size
            else math.nan,
            "mean_diff": float(np.mean(d)) if d.size else math.nan,
            "median_diff": float(np.median(d)) if d.size else math.nan,
            "sd_diff": float(np.std(d, ddof=1)) if d.size > 1 else math.nan,
            "n_worse": int(np.sum(sign * d < 0)),
            "n_better": int(np.sum(sign * d > 0)),
            # Significant: the paired bootstrap CI lies entirely on one side of zero.
            "n_significantly_worse": int(np.sum(hi < 0) if sign > 0 else np.sum(lo > 0)),
            "n_significantly_better": int(np.sum(lo > 0) if sign > 0 else np.sum(hi < 0)),
            "wilcoxon_statistic": statistic,
            "wilcoxon_p_value": p,
            "note": note,
        }


def summary_across_configurations(
    paired: pl.DataFrame, metric: str = "auroc", factors: Sequence[str] | None = None
) -> pl.DataFrame:
    """Per format vs reference: how often, how much and how consistently it differs.

    Rows with ``by == "all"`` pool every matched configuration; further rows break the same
    statistics down by each factor (``by`` = factor name, ``level`` = its value as text).
    ``factors`` defaults to the matched-group factors except ``seed``.  Columns: by, level,
    format, reference, n_configurations, mean_reference, mean_format, mean_diff, median_diff,
    sd_diff, n_worse, n_better, n_significantly_worse (paired CI entirely on the worse side of
    0), n_significantly_better, wilcoxon_statistic, wilcoxon_p_value (scipy.stats.wilcoxon on
    the differences; NaN with a note below 6 pairs or when all are zero), note.
    """
    if factors is None:
        factors = [f for f in paired_factors(paired) if f != "seed"]
    rows = []
    present = paired["format"].unique(maintain_order=True).to_list() if paired.height else []
    for fmt in format_order(present):
        part = paired.filter(pl.col("format") == fmt)
        reference = part["reference"][0]
        base = {"format": fmt, "reference": reference}
        rows.append({"by": "all", "level": "all", **base, **_summary_row(part, metric)})
        for factor in factors:
            if factor not in part.columns:
                continue
            for level in part[factor].unique().sort(nulls_last=True).to_list():
                sub = part.filter(pl.col(factor).eq_missing(level))
                rows.append(
                    {"by": factor, "level": str(level), **base, **_summary_row(sub, metric)}
                )
    schema = {
        "by": pl.String, "level": pl.String, "format": pl.String, "reference": pl.String,
        "n_configurations": pl.Int64, "mean_reference": pl.Float64, "mean_format": pl.Float64,
        "mean_diff": pl.Float64, "median_diff": pl.Float64, "sd_diff": pl.Float64,
        "n_worse": pl.Int64, "n_better": pl.Int64, "n_significantly_worse": pl.Int64,
        "n_significantly_better": pl.Int64, "wilcoxon_statistic": pl.Float64,
        "wilcoxon_p_value": pl.Float64, "note": pl.String,
    }  # fmt: skip
    return pl.DataFrame(rows, schema=schema).with_columns(pl.lit(metric).alias("metric"))


def baseline_table(
    metrics_table: pl.DataFrame,
    baseline_formats: Sequence[str] = ("logistic_regression",),
    reference: str = REFERENCE,
) -> pl.DataFrame:
    """Baselines beside the fine-tuned formats: held-out metrics per format and training size.

    One row per (format, n_train) and one per format over all sizes (``n_train`` null);
    ``kind`` is "baseline", "no fine-tuning" (zero- and few-shot arms) or "fine-tuned";
    baselines come first.
    """
    if metrics_table.height == 0:
        return pl.DataFrame(schema={"kind": pl.String, "format": pl.String})
    aggs = [
        pl.len().alias("n_configurations"),
        pl.col("auroc").mean().alias("auroc_mean"),
        pl.col("auroc").std().alias("auroc_sd"),
        pl.col("auroc").min().alias("auroc_min"),
        pl.col("auroc").max().alias("auroc_max"),
        *[
            pl.col(c).mean().alias(f"{c}_mean")
            for c in ("auprc", "brier")
            if c in metrics_table.columns
        ],
    ]
    untrained = [name for name, spec in FORMATS.items() if not spec.trained]
    kind = (
        pl.when(pl.col("format").is_in(list(baseline_formats)))
        .then(pl.lit("baseline"))
        .when(pl.col("format").is_in(untrained))
        .then(pl.lit("no fine-tuning"))
        .otherwise(pl.lit("fine-tuned"))
        .alias("kind")
    )
    table = metrics_table.group_by("format").agg(aggs)
    if "n_train" in metrics_table.columns:
        # Per training size, then one all-sizes row per format (n_train null).
        overall = table.with_columns(pl.lit(None, metrics_table.schema["n_train"]).alias("n_train"))
        per_size = metrics_table.group_by("format", "n_train").agg(aggs)
        table = pl.concat([per_size, overall.select(per_size.columns)])
    table = table.with_columns(kind)
    order = [f for f in baseline_formats if f in set(table["format"])]
    # The other formats in the order text.formats defines them, any unknown one after them in
    # the metrics table's order (the grouped table's own row order is arbitrary).
    seen = metrics_table["format"].unique(maintain_order=True).to_list()
    rest = list(dict.fromkeys(f for f in [*FORMATS, *seen] if f in seen and f not in order))
    order += format_order(rest, reference)
    rank = pl.col("format").replace_strict(
        {f: i for i, f in enumerate(order)}, return_dtype=pl.Int64
    )
    sort_cols = [rank] + ([pl.col("n_train")] if "n_train" in table.columns else [])
    table = table.sort(sort_cols, nulls_last=True)
    return table.select(
        "kind", "format", *[c for c in table.columns if c not in ("kind", "format")]
    )
