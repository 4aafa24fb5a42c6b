"""Validity: matched training checked, degenerate configurations flagged and left out.

A paired comparison means something only when both formats trained alike
(:func:`check_matched_training`) and neither model is degenerate (:func:`with_validity`,
:func:`gate_pairs`, with the gates of ``diagnostics.validity``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import polars as pl

from rationale_bench.evaluate import diagnostics
from rationale_bench.report.names import (
    REFERENCE,
    paired_factors,
    table_factors,
)
from rationale_bench.report.tables import match_id, matched_groups


class MatchedTrainingError(ValueError):
    """Formats of one matched configuration were not trained alike: no paired comparison."""


def _differing(group: pl.DataFrame, column: str) -> dict[str, Any] | None:
    if column not in group.columns:
        return None
    values = group.select("format", column).drop_nulls()
    if values[column].n_unique() <= 1:
        return None
    return dict(values.iter_rows())


def check_matched_training(table: pl.DataFrame) -> None:
    """Every fine-tuned format of a matched configuration trained on the same subjects, in the
    same batch order and (under ``training.budget: equal_steps``) for the same optimizer steps,
    as their run.json files record; else :class:`MatchedTrainingError` naming the difference.
    """
    if "subjects_sha256" not in table.columns:
        return
    trained = table.filter(pl.col("subjects_sha256").is_not_null())
    axes = [f for f in table_factors(trained) if f != "format"]
    for key, group in matched_groups(trained, axes):
        checks = ["subjects_sha256", "batch_order_sha256"]
        budgets = set(group["budget"].drop_nulls()) if "budget" in group.columns else set()
        if budgets <= {"equal_steps"}:
            checks.append("optimizer_steps")
        for column in checks:
            differing = _differing(group, column)
            if differing:
                raise MatchedTrainingError(
                    f"{match_id(axes, key)}: the formats' run.json files differ in {column} "
                    f"({differing}). Matched formats must train on the same subjects, batch "
                    "order and steps; retrain them with the same config (snakemake --forcerun "
                    "finetune) instead of comparing them."
                )


def with_validity(
    table: pl.DataFrame, gates: Mapping[str, Any], reference: str = REFERENCE
) -> pl.DataFrame:
    """The metrics table with ``valid`` and ``validity_reasons`` (see diagnostics.validity)."""
    if not table.height:
        return table.with_columns(
            pl.lit(None, pl.Boolean).alias("valid"),
            pl.lit(None, pl.String).alias("validity_reasons"),
        )
    verdicts = [diagnostics.validity(row, gates, reference) for row in table.iter_rows(named=True)]
    return table.with_columns(
        pl.Series("valid", [v for v, _ in verdicts], dtype=pl.Boolean),
        pl.Series("validity_reasons", ["; ".join(r) for _, r in verdicts], dtype=pl.String),
    )


def reason_kind(reason: str) -> str:
    """'reached the answer slot unforced 0.12 (limit >= 0.95)' -> 'reached the answer slot
    unforced': what failed, without the numbers, for counting."""
    return re.sub(r" [-+\d.e]+$", "", reason.split(" (")[0])


def gate_pairs(paired: pl.DataFrame, table: pl.DataFrame) -> pl.DataFrame:
    """Paired rows with ``valid`` (both configurations valid) and ``excluded_because``."""
    axes = paired_factors(paired)
    if not paired.height or "valid" not in table.columns:
        return paired.with_columns(
            pl.lit(True).alias("valid"), pl.lit("", pl.String).alias("excluded_because")
        )
    verdict = table.select(*axes, "format", "valid", "validity_reasons")
    ref = verdict.rename({"format": "reference", "valid": "ref_valid"}).rename(
        {"validity_reasons": "ref_reasons"}
    )
    joined = paired.join(verdict, on=[*axes, "format"], how="left").join(
        ref, on=[*axes, "reference"], how="left"
    )
    fmt_ok = pl.col("valid").fill_null(False)
    ref_ok = pl.col("ref_valid").fill_null(False)
    because = pl.concat_str(
        pl.when(~fmt_ok).then(pl.col("format") + ": " + pl.col("validity_reasons")),
        pl.when(~ref_ok).then(pl.col("reference") + ": " + pl.col("ref_reasons")),
        separator="; ",
        ignore_nulls=True,
    )
    return joined.with_columns(
        (fmt_ok & ref_ok).alias("valid"), because.fill_null("").alias("excluded_because")
    ).drop("ref_valid", "ref_reasons", "validity_reasons")
