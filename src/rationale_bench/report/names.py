"""Names the report shares between its tables, prose and figures: formats, metrics, the
configuration factors of a table, and the wording of numbers in prose."""

from __future__ import annotations

import math
from collections.abc import Iterable

import polars as pl

from rationale_bench.study import GRID_AXES

REFERENCE = "label_only"

# Configuration keys that a table may carry besides the grid axes (a future grid may vary the
# teacher); tables other than predictions are matched on those present.
EXTRA_FACTORS: tuple[str, ...] = ("teacher",)
KNOWN_FACTORS: tuple[str, ...] = (*GRID_AXES, *EXTRA_FACTORS)

# Direction of "better" for each metric (Brier is an error: lower is better).
HIGHER_IS_BETTER = {"auroc": True, "auprc": True, "brier": False}

FORMAT_NAMES = {
    "label_only": "label-only SFT",
    "free_form": "free-form rationale SFT",
    "step_by_step": "step-by-step rationale SFT",
    "logistic_regression": "logistic regression",
}
METRIC_NAMES = {"auroc": "AUROC", "auprc": "AUPRC", "brier": "Brier score"}


def format_name(fmt: str) -> str:
    """Human-readable name of a training format or baseline."""
    return FORMAT_NAMES.get(fmt, fmt.replace("_", " "))


def format_order(formats: Iterable[str], reference: str = REFERENCE) -> list[str]:
    """Reference first, then the known rationale formats, then the rest in first-seen order."""
    seen = list(dict.fromkeys(f for f in formats if f is not None))
    known = [f for f in FORMAT_NAMES if f in seen and f != reference]
    rest = [f for f in seen if f not in known and f != reference]
    return ([reference] if reference in seen else []) + known + rest


def table_factors(table: pl.DataFrame) -> list[str]:
    """Configuration columns of a metrics/runs table: the known factors that are present."""
    return [c for c in KNOWN_FACTORS if c in table.columns]


def paired_factors(paired: pl.DataFrame) -> list[str]:
    """The matched-group factor columns of a paired table (those before ``match_id``)."""
    if "match_id" not in paired.columns:
        return [c for c in KNOWN_FACTORS if c in paired.columns and c != "format"]
    return paired.columns[: paired.columns.index("match_id")]


# Wording shared by the headline and the mechanism section.


def capitalised(text: str) -> str:
    """Capitalise the first letter only ("SFT" stays upper case)."""
    return text[:1].upper() + text[1:]


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def p_value_text(p: float) -> str:
    if not math.isfinite(p):
        return "p not computed"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def percent_or_na(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def number_or_na(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"
