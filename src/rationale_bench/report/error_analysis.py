"""Matched error analysis: which held-out subjects each format gets right, per matched
configuration (cross-tabs, flips with McNemar's test, the discordant subjects)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl
from scipy import stats

from rationale_bench.report.names import (
    REFERENCE,
)
from rationale_bench.report.tables import (
    align_pair,
    held_out,
    match_id,
    matched_groups,
    prediction_factors,
)


def _hard_labels(frame: pl.DataFrame, threshold_by_config: Mapping[str, float] | None) -> pl.Series:
    """predicted_boolean_value, or prob >= the config's threshold where one is given."""
    if not threshold_by_config:
        return frame["predicted_boolean_value"]
    cid = frame["config_id"][0] if "config_id" in frame.columns else None
    if cid not in threshold_by_config:
        return frame["predicted_boolean_value"]
    return frame["predicted_boolean_probability"] >= threshold_by_config[cid]


def _with_hard_labels(
    frame: pl.DataFrame, threshold_by_config: Mapping[str, float] | None
) -> pl.DataFrame:
    return frame.with_columns(
        _hard_labels(frame, threshold_by_config).alias("predicted_boolean_value")
    )


def _correctness(joined: pl.DataFrame) -> pl.DataFrame:
    """The aligned pair with ``reference_correct`` and ``format_correct`` per subject."""
    return joined.with_columns(
        reference_correct=pl.col("predicted_boolean_value") == pl.col("boolean_value"),
        format_correct=pl.col("predicted_boolean_value_other") == pl.col("boolean_value"),
    )


def _crosstab_counts(j: pl.DataFrame) -> dict[tuple[bool, bool], int]:
    """(reference_correct, format_correct) -> subjects, all four cells, zeros included."""
    counts = {}
    for rc in (True, False):
        for fc in (True, False):
            both = (pl.col("reference_correct") == rc) & (pl.col("format_correct") == fc)
            counts[(rc, fc)] = int(j.filter(both).height)
    return counts


def _flip_row(
    base: Mapping[str, Any], counts: Mapping[tuple[bool, bool], int], n: int
) -> dict[str, Any]:
    """Concordant and discordant counts, both accuracies and the exact McNemar p-value."""
    lost, gained = counts[(True, False)], counts[(False, True)]
    mcnemar = stats.binomtest(lost, lost + gained, 0.5).pvalue if lost + gained else 1.0
    return {
        **base,
        "n": n,
        "n_both_correct": counts[(True, True)],
        "n_reference_only_correct": lost,
        "n_format_only_correct": gained,
        "n_both_wrong": counts[(False, False)],
        "accuracy_reference": (counts[(True, True)] + lost) / n,
        "accuracy_format": (counts[(True, True)] + gained) / n,
        "mcnemar_p_value": float(mcnemar),
    }


def _discordant_subjects(j: pl.DataFrame, base: Mapping[str, Any]) -> pl.DataFrame:
    """One row per subject that exactly one of the two formats gets right."""
    disc = j.filter(pl.col("reference_correct") != pl.col("format_correct"))
    return disc.select(
        *[pl.lit(v).alias(k) for k, v in base.items()],
        "subject_id",
        "boolean_value",
        pl.col("predicted_boolean_probability").alias("reference_probability"),
        pl.col("predicted_boolean_probability_other").alias("format_probability"),
        pl.col("predicted_boolean_value").alias("reference_predicted"),
        pl.col("predicted_boolean_value_other").alias("format_predicted"),
        pl.when(pl.col("reference_correct"))
        .then(pl.lit("reference_only_correct"))
        .otherwise(pl.lit("format_only_correct"))
        .alias("flip"),
        *([pl.col("generated_text")] if "generated_text" in disc.columns else []),
    )


def _error_tables(
    cross: list[dict[str, Any]],
    flips: list[dict[str, Any]],
    subjects: list[pl.DataFrame],
    key_schema: Mapping[str, Any],
) -> dict[str, pl.DataFrame]:
    """The three tables, with their schemas when empty."""
    cross_schema = dict(key_schema) | {
        "reference_correct": pl.Boolean, "format_correct": pl.Boolean, "n": pl.Int64,
    }  # fmt: skip
    flip_schema = dict(key_schema) | {
        "n": pl.Int64, "n_both_correct": pl.Int64, "n_reference_only_correct": pl.Int64,
        "n_format_only_correct": pl.Int64, "n_both_wrong": pl.Int64,
        "accuracy_reference": pl.Float64, "accuracy_format": pl.Float64,
        "mcnemar_p_value": pl.Float64,
    }  # fmt: skip
    subject_table = (
        pl.concat(subjects, how="diagonal_relaxed")
        if subjects
        else pl.DataFrame(schema=dict(key_schema) | {"subject_id": pl.Int64, "flip": pl.String})
    )
    return {
        "crosstab": pl.DataFrame(cross, schema=cross_schema),
        "flips": pl.DataFrame(flips, schema=flip_schema),
        "subjects": subject_table,
    }


def matched_error_analysis(
    preds: pl.DataFrame,
    reference: str = REFERENCE,
    other: str | Sequence[str] = ("free_form", "step_by_step"),
    threshold_by_config: Mapping[str, float] | None = None,
) -> dict[str, pl.DataFrame]:
    """Which held-out subjects each format gets right, per matched configuration.

    Hard predictions are ``predicted_boolean_value`` (each configuration's own threshold,
    chosen on tuning by the evaluate job); ``threshold_by_config`` (config_id -> threshold)
    overrides it for the configurations it names.  Returns three tables:

    * ``crosstab``: factors, match_id, reference, format, reference_correct, format_correct, n
      (all four cells per configuration, zeros included);
    * ``flips``: per configuration n, n_both_correct, n_reference_only_correct (flipped to
      wrong), n_format_only_correct (flipped to right), n_both_wrong, both accuracies and an
      exact McNemar p-value on the discordant subjects;
    * ``subjects``: one row per discordant subject (the flips), with both probabilities and the
      format's generated text where present.
    """
    preds = held_out(preds)
    others = [other] if isinstance(other, str) else list(other)
    axes = [f for f in prediction_factors(preds) if f != "format"]
    cross, flips, subjects = [], [], []
    for key, group in matched_groups(preds, axes):
        by_format = {k[0]: g for k, g in group.group_by("format", maintain_order=True)}
        if reference not in by_format:
            continue
        mid = match_id(axes, key)
        ref = _with_hard_labels(by_format[reference], threshold_by_config)
        for fmt in [f for f in others if f in by_format]:
            oth = _with_hard_labels(by_format[fmt], threshold_by_config)
            j = _correctness(align_pair(ref, oth, mid, reference, fmt))
            base = {**dict(zip(axes, key, strict=True)), "match_id": mid}
            base |= {"reference": reference, "format": fmt}
            counts = _crosstab_counts(j)
            cross += [
                {**base, "reference_correct": rc, "format_correct": fc, "n": n}
                for (rc, fc), n in counts.items()
            ]
            flips.append(_flip_row(base, counts, j.height))
            subjects.append(_discordant_subjects(j, base))
    key_schema = {a: preds.schema[a] for a in axes} | {
        "match_id": pl.String, "reference": pl.String, "format": pl.String,
    }  # fmt: skip
    return _error_tables(cross, flips, subjects, key_schema)
