"""The report's headline: a markdown paragraph computed from the summary and metrics tables."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl

from rationale_bench.report.names import (
    HIGHER_IS_BETTER,
    METRIC_NAMES,
    REFERENCE,
    capitalised,
    format_name,
    p_value_text,
    plural,
)
from rationale_bench.report.validity import reason_kind


def _grid_text(table: pl.DataFrame) -> str:
    parts = []
    for axis, word in (("model", "model"), ("n_train", "training size"), ("seed", "seed")):
        if axis in table.columns:
            k = table[axis].drop_nulls().n_unique()
            parts.append(f"{k} {word}{'' if k == 1 else 's'}")
    return " x ".join(parts)


def validity_sentences(paired: pl.DataFrame, table: pl.DataFrame) -> tuple[str, str]:
    """(opening, exclusions) of the headline: the opening is set when no pair is valid."""
    if not paired.height or "valid" not in paired.columns:
        return "", ""
    excluded = paired.filter(~pl.col("valid"))
    if not excluded.height:
        return "", f"All {paired.height} matched comparisons passed the validity gates."
    invalid = table.filter(pl.col("valid").not_()) if "valid" in table.columns else table.head(0)
    kinds: dict[str, int] = {}
    for reasons in invalid["validity_reasons"].to_list():
        for kind in dict.fromkeys(reason_kind(r) for r in reasons.split("; ") if r):
            kinds[kind] = kinds.get(kind, 0) + 1
    # Most common reason first, ties in the order first seen (never a set's order, which
    # changes with Python's string hashing from one run to the next).
    by_count = sorted(kinds.items(), key=lambda kind_n: -kind_n[1])
    listed = ", ".join(f"{k} ({plural(n, 'configuration')})" for k, n in by_count)
    exclusions = (
        f"{excluded.height} of {paired.height} matched comparisons were excluded because a "
        f"configuration in them is degenerate ({invalid.height} of {table.height} "
        f"configurations: {listed}); see validity.csv."
    )
    if excluded.height < paired.height:
        return "", exclusions
    opening = (
        f"No valid comparison: every one of the {paired.height} matched comparisons involves a "
        "degenerate configuration, so this study does not answer whether rationale SFT helps "
        "or hurts; the numbers below describe broken models, not a finding."
    )
    return opening, exclusions


def _reference_sentence(
    metrics_table: pl.DataFrame, reference: str, baseline_formats: Sequence[str], metric: str
) -> str:
    """The reference's mean over its valid configurations, or why there is none."""
    mname = METRIC_NAMES.get(metric, metric)
    ref_name = format_name(reference)
    tuned = metrics_table.filter(~pl.col("format").is_in(list(baseline_formats)))
    is_ref = pl.col("format") == reference
    if "valid" in metrics_table.columns:  # the reference's mean over its valid configurations
        is_ref = is_ref & pl.col("valid").fill_null(False)
    ref_rows = metrics_table.filter(is_ref)[metric].drop_nulls()
    if ref_rows.len():
        return (
            f"Across {tuned.height} fine-tuned configurations with results "
            f"({_grid_text(tuned)}), {ref_name} reached a mean held-out {mname} of "
            f"{ref_rows.mean():.3f} ({plural(ref_rows.len(), 'valid configuration')})."
        )
    if metrics_table.filter(pl.col("format") == reference).height:
        n_ref = metrics_table.filter(pl.col("format") == reference).height
        return (
            f"No {ref_name} configuration is valid ({plural(n_ref, 'configuration')} with "
            "results, all degenerate; see validity.csv), so no paired comparison is made."
        )
    return (
        f"No {ref_name} results are present yet, so no paired comparison can be made "
        f"({plural(metrics_table.height, 'configuration')} with results)."
    )


def _format_sentence(row: Mapping[str, Any], reference: str, metric: str, alpha: float) -> str:
    """One format against the reference over matched configurations (a summary "all" row)."""
    mname = METRIC_NAMES.get(metric, metric)
    n = row["n_configurations"]
    name = format_name(row["format"])
    if n == 0:
        return f"{capitalised(name)}: no matched configuration with a defined {mname}."
    higher = HIGHER_IS_BETTER.get(metric, True)
    side = "below" if higher else "above"
    p = row["wilcoxon_p_value"]
    sentence = (
        f"{capitalised(name)} reached {row['mean_format']:.3f} against "
        f"{row['mean_reference']:.3f} for {format_name(reference)} on the same {n} matched "
        f"configuration{'' if n == 1 else 's'} (mean Δ{mname} {row['mean_diff']:+.3f}, median "
        f"{row['median_diff']:+.3f}; worse in {row['n_worse']} of {n}, significantly worse "
        f"(paired 95% CI entirely {side} zero) in {row['n_significantly_worse']} of {n}"
    )
    if not math.isfinite(p):
        return sentence + f"). Not tested for significance ({row['note']})."
    sentence += f"; Wilcoxon signed-rank {p_value_text(p)})."
    if p < alpha:
        change = "worse" if (row["mean_diff"] < 0) == higher else "better"
        return sentence + f" Across configurations it is significantly {change}."
    return sentence + f" Across configurations the difference is not significant (p >= {alpha:g})."


def _baseline_sentences(
    metrics_table: pl.DataFrame,
    baseline_formats: Sequence[str],
    paired_formats: set[str],
    metric: str,
) -> list[str]:
    """Each baseline's mean, unless it was already compared in a paired sentence."""
    mname = METRIC_NAMES.get(metric, metric)
    out = []
    for fmt in baseline_formats:
        rows = metrics_table.filter(pl.col("format") == fmt)[metric].drop_nulls()
        if rows.len() and fmt not in paired_formats:  # else already compared above
            out.append(
                f"Baseline {format_name(fmt)}: mean held-out {mname} {rows.mean():.3f} "
                f"({plural(rows.len(), 'configuration')})."
            )
    return out


def _missing_sentence(missing: Sequence[str]) -> str:
    shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
    return (
        f"Partial report: {len(missing)} grid cell{'' if len(missing) == 1 else 's'} "
        f"without results ({shown})."
    )


def headline(
    summary: pl.DataFrame,
    metrics_table: pl.DataFrame,
    reference: str = REFERENCE,
    missing: Sequence[str] = (),
    baseline_formats: Sequence[str] = ("logistic_regression",),
    alpha: float = 0.05,
    validity: tuple[str, str] = ("", ""),
) -> str:
    """A markdown paragraph stating the main result, computed from the tables.

    Uses the ``by == "all"`` rows of ``summary`` (paired, matched configurations) and the
    metrics table (all configurations: grid size, the reference's mean, baselines).  States
    plainly when a difference is not significant or could not be tested. ``validity`` is
    :func:`validity_sentences`: a study with no valid comparison says so first, and the
    exclusions are stated; ``summary`` must then hold only the valid pairs.
    """
    metric = summary["metric"][0] if summary.height and "metric" in summary.columns else "auroc"
    opening, exclusions = validity
    out = [opening] if opening else []
    out.append(_reference_sentence(metrics_table, reference, baseline_formats, metric))
    overall = summary.filter(pl.col("by") == "all") if summary.height else summary
    out += [
        _format_sentence(row, reference, metric, alpha) for row in overall.iter_rows(named=True)
    ]
    if exclusions:
        out.append(exclusions)
    paired_formats = set(overall["format"]) if overall.height else set()
    out += _baseline_sentences(metrics_table, baseline_formats, paired_formats, metric)
    if missing:
        out.append(_missing_sentence(missing))
    return " ".join(out)
