"""Mechanism: which explanations of a rationale format's ΔAUROC the diagnostics support
(token dilution, collapse, unfaithful rationales, conclusion-driven answers, under-training)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import polars as pl

from rationale_bench.report.names import (
    REFERENCE,
    capitalised,
    format_name,
    format_order,
    number_or_na,
    percent_or_na,
)

# (column, aggregate name) of each mechanism, averaged over a format's configurations.
MECHANISM_COLUMNS = {
    "token_dilution": "mean_label_loss_share",
    "collapse": "top_generation_share",
    "distinct": "distinct_generation_share",
    "copies": "training_copy_share",
    "age_faithful": "age_correct_share",
    "factor_precision": "factor_precision",
    "hallucinated": "hallucinated_factors_per_text",
    "conclusion_driven": "conclusion_answer_agreement",
    "answer_loss": "final_answer_loss",
    "tuning_answer_loss": "tuning_answer_loss",
}
# Where a diagnostic starts to count as evidence for its mechanism (documented in the report).
DILUTION_SHARE = 0.2  # the answer carries under 20% of the completion loss
COLLAPSE_SHARE = 0.2  # the most common generation covers over 20% of held-out
FAITHFUL_SHARE = 0.9  # at least 90% of rationales state the right age; 90% of factors present
DRIVEN_SHARE = 0.9  # the answer follows the rationale's own conclusion in 90% of patients
LOSS_GAP_NATS = 0.1  # answer-token loss this much above label-only's: less trained


def _mean(frame: pl.DataFrame, column: str) -> float | None:
    if column not in frame.columns:
        return None
    value = frame[column].cast(pl.Float64).drop_nulls().drop_nans().mean()
    return None if value is None else float(value)


def mechanism_table(
    paired: pl.DataFrame, table: pl.DataFrame, reference: str = REFERENCE
) -> pl.DataFrame:
    """One row per rationale format: ΔAUROC over valid pairs beside each mechanism's measure.

    Measures are means over the format's configurations in valid pairs (over all its
    configurations, flagged, when none is valid); ``reference_*`` columns give label-only's.
    """
    rows = []
    valid = table.filter(pl.col("valid")) if "valid" in table.columns else table
    # The paired table's order for formats without a name (unique() alone has none).
    present = paired["format"].unique(maintain_order=True).to_list() if paired.height else []
    for fmt in format_order(present):
        pairs = paired.filter(pl.col("format") == fmt)
        kept = pairs.filter(pl.col("valid")) if "valid" in pairs.columns else pairs
        own = valid.filter(pl.col("format") == fmt)
        only_degenerate = own.height == 0
        if only_degenerate:
            own = table.filter(pl.col("format") == fmt)
        ref = valid.filter(pl.col("format") == reference)
        row = {
            "format": fmt,
            "n_pairs": pairs.height,
            "n_valid_pairs": kept.height,
            "measured_on_degenerate_only": only_degenerate,
            "mean_delta_auroc": _mean(kept, "auroc_diff"),
        }
        row |= {name: _mean(own, column) for name, column in MECHANISM_COLUMNS.items()}
        row["reference_answer_loss"] = _mean(ref, "final_answer_loss")
        row["reference_label_loss_share"] = _mean(ref, "mean_label_loss_share")
        rows.append(row)
    return pl.DataFrame(rows, infer_schema_length=None) if rows else pl.DataFrame()


def _verdict(
    value: float | None, supports: Callable[[float], bool], detail: str, ruled_out: str = ""
) -> str:
    """'supported: <detail>' or 'ruled out: <ruled_out or detail>'; 'not measured' for None."""
    if value is None:
        return "not measured"
    return f"supported: {detail}" if supports(value) else f"ruled out: {ruled_out or detail}"


def mechanism_verdicts(row: Mapping[str, Any]) -> dict[str, str]:
    """For one rationale format: each explanation, supported or ruled out, with its number."""
    share, top = row.get("token_dilution"), row.get("collapse")
    age, precision = row.get("age_faithful"), row.get("factor_precision")
    driven = row.get("conclusion_driven")
    loss, ref_loss = row.get("answer_loss"), row.get("reference_answer_loss")
    gap = None if loss is None or ref_loss is None else loss - ref_loss
    precise = (precision or 1.0) >= FAITHFUL_SHARE
    return {
        "token dilution": _verdict(
            share,
            lambda s: s < DILUTION_SHARE,
            f"the answer carries {share or 0:.0%} of the completion loss",
        ),
        "collapse": _verdict(
            top,
            lambda t: t > COLLAPSE_SHARE,
            f"the most common generation is {top or 0:.0%} of held-out",
            f"the most common generation is only {top or 0:.0%} of held-out",
        ),
        "unfaithful rationales": _verdict(
            age,
            lambda a: not (a >= FAITHFUL_SHARE and precise),
            f"right age in {age or 0:.0%}, factor precision {percent_or_na(precision)}",
        ),
        "conclusion-driven answers": _verdict(
            driven,
            lambda d: d >= DRIVEN_SHARE,
            f"the answer follows the model's own conclusion in {driven or 0:.0%}",
            f"the answer follows the model's own conclusion in only {driven or 0:.0%}",
        ),
        "under-training": _verdict(
            gap,
            lambda g: g > LOSS_GAP_NATS,
            f"answer-token loss {loss or 0:.2f} vs {ref_loss or 0:.2f} nats for label-only",
        ),
    }


def mechanism_markdown(mechanism: pl.DataFrame) -> str:
    """The report's mechanism section: one table, then what the numbers support and rule out."""
    if not mechanism.height:
        return "No rationale format was compared with label-only SFT.\n"
    lines = [
        "| format | valid pairs | mean ΔAUROC | answer loss share | top generation | "
        "right age | factor precision | hallucinated / text | conclusion-driven | "
        "answer loss (label-only) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in mechanism.iter_rows(named=True):
        delta = r["mean_delta_auroc"]
        lines.append(
            f"| {format_name(r['format'])} | {r['n_valid_pairs']} of {r['n_pairs']} | "
            f"{'n/a' if delta is None else f'{delta:+.3f}'} | "
            f"{percent_or_na(r['token_dilution'])} | "
            f"{percent_or_na(r['collapse'])} | {percent_or_na(r['age_faithful'])} | "
            f"{percent_or_na(r['factor_precision'])} | {number_or_na(r['hallucinated'])} | "
            f"{percent_or_na(r['conclusion_driven'])} | {number_or_na(r['answer_loss'])} "
            f"({number_or_na(r['reference_answer_loss'])}) |"
        )
    lines.append("")
    for r in mechanism.iter_rows(named=True):
        note = (
            " (measured on degenerate configurations only)"
            if r["measured_on_degenerate_only"]
            else ""
        )
        lines.append(f"{capitalised(format_name(r['format']))}{note}:")
        lines += [f"- {name}: {text}." for name, text in mechanism_verdicts(r).items()]
    lines.append(
        f"\nThresholds: dilution when the answer carries under {DILUTION_SHARE:.0%} of the loss; "
        f"unfaithful when under {FAITHFUL_SHARE:.0%} state the right age or name present factors; "
        f"conclusion-driven from {DRIVEN_SHARE:.0%}; under-trained when the answer-token loss is "
        f"over {LOSS_GAP_NATS} nats above label-only's."
    )
    return "\n".join(lines) + "\n"
