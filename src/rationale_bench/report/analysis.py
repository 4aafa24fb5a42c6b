"""Study-level report: rationale formats against label-only SFT on the same held-out subjects.

The question of the benchmark is paired: does training on teacher rationales change the
held-out discrimination of *the same* model, trained on *the same* subjects with *the same*
seed, compared with training on the label alone?  So every comparison here is made within a
matched group (all configuration factors equal except ``format``), on identical held-out
subjects, with a paired bootstrap (same resampled subjects for both formats) and DeLong's
paired test; the across-configuration summary then asks how consistent the sign is
(counts and a Wilcoxon signed-rank test over matched configurations).

Everything tolerates a partial grid: cells without outputs are listed by :func:`missing_cells`
and simply absent from the tables; groups without a label-only run are skipped.

Tables produced (all polars):

* :func:`load_predictions` - long held-out predictions with the configuration factors.
* :func:`load_metrics_table` - one row per configuration (``run.json`` optional).
* :func:`paired_differences` - ``paired.csv``: format - reference per matched configuration.
* :func:`summary_across_configurations` - ``summary.csv``: counts, mean/median/SD, Wilcoxon.
* :func:`headline` - a markdown paragraph computed from the two tables above.
* :func:`matched_error_analysis` - correct/incorrect cross-tabs and per-subject flips.
* :func:`baseline_table` - baselines next to the fine-tuned formats.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from scipy import stats

from rationale_bench.evaluate import diagnostics, metrics
from rationale_bench.evaluate.evaluation import PREDICTION_COLUMNS
from rationale_bench.report import figures
from rationale_bench.report.names import (
    HIGHER_IS_BETTER,
    METRIC_NAMES,
    REFERENCE,
    format_name,
    format_order,
    paired_factors,
    table_factors,
)
from rationale_bench.study import GRID_AXES
from rationale_bench.text.formats import FORMATS

# dtypes of the grid axes, for empty tables (nothing has finished yet).
AXIS_DTYPES = {
    "model": pl.String,
    "serialization": pl.String,
    "format": pl.String,
    "n_train": pl.Int64,
    "seed": pl.Int64,
}

PAIRED_METRICS: dict[str, metrics.Metric] = {
    "auroc": metrics.auroc,
    "auprc": metrics.auprc,
    "brier": metrics.brier,
}
# Below 6 pairs the exact two-sided Wilcoxon test cannot reach p < 0.05 (n=5: p >= 0.0625).
MIN_WILCOXON_PAIRS = 6

# --------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunOutputs:
    """The output files of one configuration; ``run`` is None for baselines."""

    configuration: Mapping[str, Any]
    predictions: Path | None = None
    metrics: Path | None = None
    run: Path | None = None


Entry = RunOutputs | Sequence[Any]


def as_outputs(entry: Entry) -> RunOutputs:
    """Accept a :class:`RunOutputs` or a ``(configuration, predictions, metrics, run)`` tuple.

    Shorter tuples are allowed (missing trailing paths are None).
    """
    if isinstance(entry, RunOutputs):
        return entry
    configuration, *paths = entry
    paths = [Path(p) if p is not None else None for p in paths] + [None] * (3 - len(paths))
    return RunOutputs(dict(configuration), *paths[:3])


def config_id(configuration: Mapping[str, Any]) -> str:
    """Grid axes in grid order, then any extra keys sorted (matches Configuration.config_id)."""
    keys = [a for a in GRID_AXES if a in configuration]
    keys += sorted(k for k in configuration if k not in GRID_AXES)
    return "/".join(f"{k}={configuration[k]}" for k in keys)


def available_outputs(
    entries: Iterable[Entry], need: Sequence[str] = ("predictions", "metrics")
) -> tuple[list[RunOutputs], list[str]]:
    """Split entries into those whose ``need`` files exist and the config_ids of the others.

    A partial report (grid still running) calls this first and reports the missing ids.
    """
    present, missing = [], []
    for entry in map(as_outputs, entries):
        paths = [getattr(entry, n) for n in need]
        if all(p is not None and Path(p).exists() for p in paths):
            present.append(entry)
        else:
            missing.append(config_id(entry.configuration))
    return present, missing


def _require(path: Path | None, what: str, configuration: Mapping[str, Any]) -> Path:
    if path is None or not Path(path).exists():
        raise FileNotFoundError(
            f"{config_id(configuration)}: {what} not found ({path}); "
            "use available_outputs() to drop configurations that have not finished."
        )
    return Path(path)


def _lit(value: Any) -> pl.Expr:
    """A literal with the dtype the metrics table infers (Int64, Float64, String; None as String),
    so that tables built from predictions and from metrics.json join on equal dtypes."""
    if isinstance(value, bool):
        return pl.lit(value, pl.Boolean)
    if isinstance(value, int):
        return pl.lit(value, pl.Int64)
    if isinstance(value, float):
        return pl.lit(value, pl.Float64)
    return pl.lit(None if value is None else str(value), pl.String)


def _with_factors(frame: pl.DataFrame, configuration: Mapping[str, Any]) -> pl.DataFrame:
    factors = [_lit(v).alias(k) for k, v in configuration.items()]
    return frame.with_columns(*factors, pl.lit(config_id(configuration)).alias("config_id"))


def load_predictions(entries: Iterable[Entry]) -> pl.DataFrame:
    """Held-out predictions of every configuration, with its factors, as one long table.

    Columns: the configuration keys (model, format, n_train, seed, ...), ``config_id`` and the
    predictions.parquet columns present.  Tuning-split rows are dropped.
    """
    frames = []
    for entry in map(as_outputs, entries):
        path = _require(entry.predictions, "predictions", entry.configuration)
        frame = pl.read_parquet(path)
        if "split" in frame.columns:
            frame = frame.filter(pl.col("split") == "held_out")
        frame = frame.select([c for c in PREDICTION_COLUMNS if c in frame.columns])
        frames.append(_with_factors(frame, entry.configuration))
    if not frames:
        return pl.DataFrame(
            schema={a: AXIS_DTYPES.get(a, pl.String) for a in GRID_AXES}
            | {"config_id": pl.String, "subject_id": pl.Int64, "boolean_value": pl.Boolean}
            | {"predicted_boolean_value": pl.Boolean, "predicted_boolean_probability": pl.Float64}
        )
    # Baselines may lack generated_text or scoring_mode: relax to the union of columns.
    return pl.concat(frames, how="diagonal_relaxed")


def _get(mapping: Mapping[str, Any] | None, *keys: str) -> Any:
    """Nested .get that returns None on any missing level (JSON NaN is written as null)."""
    value: Any = mapping
    for key in keys:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


# What every format of a matched configuration must share (checked by check_matched_training).
MATCHED_RUN_FIELDS = ("subjects_sha256", "batch_order_sha256", "budget")

RUN_COLUMNS = (
    "optimizer_steps",
    "tokens_trained",
    "mean_completion_tokens",
    "mean_label_loss_share",
    "final_loss",
    "wall_s",
)


def load_metrics_table(entries: Iterable[Entry]) -> pl.DataFrame:
    """One row per configuration from metrics.json and (optional) run.json.

    Same columns as ``report.metrics_table`` plus ``threshold`` and ``wall_s``; run.json
    columns are null for baselines (no run.json) and any absent metric is null.
    """
    rows = []
    for entry in map(as_outputs, entries):
        m = json.loads(_require(entry.metrics, "metrics.json", entry.configuration).read_text())
        # Baselines have no run.json; their training columns stay null.
        has_run = entry.run is not None and Path(entry.run).exists()
        run = json.loads(Path(entry.run).read_text()) if has_run else None
        rows.append(
            {
                **entry.configuration,
                "config_id": config_id(entry.configuration),
                "scoring_mode": m.get("scoring_mode"),
                "n_held_out": m.get("n"),
                "n_cases": m.get("n_pos"),
                "auroc": m.get("auroc"),
                "auroc_ci_low": _get(m, "auroc_bootstrap", "ci_low"),
                "auroc_ci_high": _get(m, "auroc_bootstrap", "ci_high"),
                "auroc_delong_ci_low": _get(m, "auroc_delong", "ci_low"),
                "auroc_delong_ci_high": _get(m, "auroc_delong", "ci_high"),
                "auprc": m.get("auprc"),
                "prevalence": m.get("prevalence"),
                "brier": m.get("brier"),
                "threshold": m.get("threshold"),
                "forced_answer_rate": m.get("forced_answer_rate"),
                **{k: _get(run, k) for k in RUN_COLUMNS},
                **{k: _get(m, "diagnostics", k) for k in diagnostics.DIAGNOSTIC_KEYS},
                **{k: _get(run, k) for k in diagnostics.TRAINING_KEYS},
                **{k: _get(run, k) for k in MATCHED_RUN_FIELDS},
            }
        )
    float_cols = [
        "auroc", "auroc_ci_low", "auroc_ci_high", "auroc_delong_ci_low", "auroc_delong_ci_high",
        "auprc", "prevalence", "brier", "threshold", "forced_answer_rate",
        "mean_completion_tokens", "mean_label_loss_share", "final_loss", "wall_s",
        *diagnostics.DIAGNOSTIC_KEYS, *diagnostics.TRAINING_KEYS,
    ]  # fmt: skip
    if not rows:
        axes = {a: AXIS_DTYPES.get(a, pl.String) for a in GRID_AXES}
        return pl.DataFrame(schema=axes | {"config_id": pl.String, "auroc": pl.Float64})
    table = pl.DataFrame(rows, infer_schema_length=None)
    table = table.with_columns(pl.col(c).cast(pl.Float64) for c in float_cols)
    return table.sort([a for a in GRID_AXES if a in table.columns], nulls_last=True)


def thresholds_from_metrics(entries: Iterable[Entry]) -> dict[str, float]:
    """config_id -> the threshold the evaluate job chose (Youden on tuning), where recorded."""
    out = {}
    for entry in map(as_outputs, entries):
        if entry.metrics is not None and Path(entry.metrics).exists():
            threshold = json.loads(Path(entry.metrics).read_text()).get("threshold")
            if threshold is not None:
                out[config_id(entry.configuration)] = float(threshold)
    return out


def missing_cells(
    configurations: Iterable[Mapping[str, Any]],
    present: pl.DataFrame | Iterable[Mapping[str, Any] | str],
) -> list[str]:
    """config_ids of the configurations that have no row in ``present``, in grid order.

    ``present`` is a table with the configuration columns (e.g. the metrics table), a list of
    configuration dicts or a list of config_id strings.
    """
    configurations = [dict(c) for c in configurations]
    if isinstance(present, pl.DataFrame):
        present = present.to_dicts()
    have = set()
    keys = {k for c in configurations for k in c}
    for item in present:
        if isinstance(item, str):
            have.add(item)
        else:
            have.add(config_id({k: v for k, v in item.items() if k in keys}))
    return [config_id(c) for c in configurations if config_id(c) not in have]


# --------------------------------------------------------------------------------------
# Paired differences
# --------------------------------------------------------------------------------------


def prediction_factors(preds: pl.DataFrame) -> list[str]:
    """Configuration columns of a long predictions table (everything not a prediction column)."""
    return [c for c in preds.columns if c not in PREDICTION_COLUMNS and c != "config_id"]


def match_id(axes: Sequence[str], values: Sequence[Any]) -> str:
    """Readable id of a matched group: ``model=tiny/n_train=200/seed=1``."""
    return "/".join(f"{a}={v}" for a, v in zip(axes, values, strict=True))


def _held_out(preds: pl.DataFrame) -> pl.DataFrame:
    return preds.filter(pl.col("split") == "held_out") if "split" in preds.columns else preds


def _groups(frame: pl.DataFrame, axes: Sequence[str]) -> list[tuple[tuple[Any, ...], pl.DataFrame]]:
    """(key, rows) per matched group, in order of appearance; one group when no axes."""
    if not axes:
        return [((), frame)] if frame.height else []
    return list(frame.group_by(list(axes), maintain_order=True))


def _align(
    ref: pl.DataFrame, other: pl.DataFrame, context: str, reference: str, fmt: str
) -> pl.DataFrame:
    """Join two formats' predictions on subject_id, insisting on the same subjects and labels."""
    for name, frame in ((reference, ref), (fmt, other)):
        if frame["subject_id"].n_unique() != frame.height:
            raise ValueError(f"{context}: {name} has duplicate held-out subject_ids.")
    a, b = set(ref["subject_id"].to_list()), set(other["subject_id"].to_list())
    if a != b:
        only_ref, only_other = sorted(a - b), sorted(b - a)
        raise ValueError(
            f"{context}: {fmt} and {reference} were scored on different held-out subjects "
            f"({len(only_other)} only in {fmt}, e.g. {only_other[:3]}; {len(only_ref)} only in "
            f"{reference}, e.g. {only_ref[:3]}). A paired comparison needs identical subjects: "
            "check that both configurations used the same cohort split."
        )
    cols = [
        "subject_id",
        "boolean_value",
        "predicted_boolean_value",
        "predicted_boolean_probability",
    ]
    extra = ["generated_text"] if "generated_text" in other.columns else []
    joined = (
        ref.select(cols)
        .join(other.select(cols + extra), on="subject_id", suffix="_other")
        .sort("subject_id")
    )
    if not (joined["boolean_value"] == joined["boolean_value_other"]).all():
        raise ValueError(f"{context}: {fmt} and {reference} disagree on held-out labels.")
    return joined


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
    preds = _held_out(preds)
    factors = prediction_factors(preds)
    axes = [f for f in factors if f != "format"]
    formats = format_order(preds["format"].unique(maintain_order=True).to_list(), reference)
    rows = []
    for key, group in _groups(preds, axes):
        by_format = {k[0]: g for k, g in group.group_by("format", maintain_order=True)}
        if reference not in by_format:
            continue
        mid = match_id(axes, key)
        for fmt in formats:
            if fmt == reference or fmt not in by_format:
                continue
            joined = _align(by_format[reference], by_format[fmt], mid, reference, fmt)
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


# --------------------------------------------------------------------------------------
# Validity: matched training checked, degenerate configurations flagged and left out
# --------------------------------------------------------------------------------------


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
    for key, group in _groups(trained, axes):
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
        for kind in {reason_kind(r) for r in reasons.split("; ") if r}:
            kinds[kind] = kinds.get(kind, 0) + 1
    listed = ", ".join(f"{k} ({_plural(n, 'configuration')})" for k, n in kinds.items())
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


# --------------------------------------------------------------------------------------
# Across configurations
# --------------------------------------------------------------------------------------


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


def _cap(text: str) -> str:
    """Capitalise the first letter only ("SFT" stays upper case)."""
    return text[:1].upper() + text[1:]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _p_text(p: float) -> str:
    if not math.isfinite(p):
        return "p not computed"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _grid_text(table: pl.DataFrame) -> str:
    parts = []
    for axis, word in (("model", "model"), ("n_train", "training size"), ("seed", "seed")):
        if axis in table.columns:
            k = table[axis].drop_nulls().n_unique()
            parts.append(f"{k} {word}{'' if k == 1 else 's'}")
    return " x ".join(parts)


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
    mname = METRIC_NAMES.get(metric, metric)
    ref_name = format_name(reference)
    opening, exclusions = validity
    out = [opening] if opening else []
    tuned = metrics_table.filter(~pl.col("format").is_in(list(baseline_formats)))
    is_ref = pl.col("format") == reference
    if "valid" in metrics_table.columns:  # the reference's mean over its valid configurations
        is_ref = is_ref & pl.col("valid").fill_null(False)
    ref_rows = metrics_table.filter(is_ref)[metric].drop_nulls()
    if ref_rows.len():
        out.append(
            f"Across {tuned.height} fine-tuned configurations with results "
            f"({_grid_text(tuned)}), {ref_name} reached a mean held-out {mname} of "
            f"{ref_rows.mean():.3f} ({_plural(ref_rows.len(), 'valid configuration')})."
        )
    elif metrics_table.filter(pl.col("format") == reference).height:
        n_ref = metrics_table.filter(pl.col("format") == reference).height
        out.append(
            f"No {ref_name} configuration is valid ({_plural(n_ref, 'configuration')} with "
            "results, all degenerate; see validity.csv), so no paired comparison is made."
        )
    else:
        out.append(
            f"No {ref_name} results are present yet, so no paired comparison can be made "
            f"({_plural(metrics_table.height, 'configuration')} with results)."
        )
    overall = summary.filter(pl.col("by") == "all") if summary.height else summary
    for row in overall.iter_rows(named=True):
        n = row["n_configurations"]
        name = format_name(row["format"])
        if n == 0:
            out.append(f"{_cap(name)}: no matched configuration with a defined {mname}.")
            continue
        higher = HIGHER_IS_BETTER.get(metric, True)
        side = "below" if higher else "above"
        p = row["wilcoxon_p_value"]
        sentence = (
            f"{_cap(name)} reached {row['mean_format']:.3f} against "
            f"{row['mean_reference']:.3f} for {ref_name} on the same {n} matched configuration"
            f"{'' if n == 1 else 's'} (mean Δ{mname} {row['mean_diff']:+.3f}, median "
            f"{row['median_diff']:+.3f}; worse in {row['n_worse']} of {n}, significantly worse "
            f"(paired 95% CI entirely {side} zero) in {row['n_significantly_worse']} of {n}"
        )
        if math.isfinite(p):
            sentence += f"; Wilcoxon signed-rank {_p_text(p)})."
            if p < alpha:
                change = "worse" if (row["mean_diff"] < 0) == higher else "better"
                sentence += f" Across configurations it is significantly {change}."
            else:
                sentence += (
                    f" Across configurations the difference is not significant (p >= {alpha:g})."
                )
        else:
            sentence += f"). Not tested for significance ({row['note']})."
        out.append(sentence)
    if exclusions:
        out.append(exclusions)
    paired_formats = set(overall["format"]) if overall.height else set()
    for fmt in baseline_formats:
        rows = metrics_table.filter(pl.col("format") == fmt)[metric].drop_nulls()
        if rows.len() and fmt not in paired_formats:  # else already compared above
            out.append(
                f"Baseline {format_name(fmt)}: mean held-out {mname} {rows.mean():.3f} "
                f"({_plural(rows.len(), 'configuration')})."
            )
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        out.append(
            f"Partial report: {len(missing)} grid cell{'' if len(missing) == 1 else 's'} "
            f"without results ({shown})."
        )
    return " ".join(out)


# --------------------------------------------------------------------------------------
# Matched error analysis
# --------------------------------------------------------------------------------------


def _hard_labels(frame: pl.DataFrame, threshold_by_config: Mapping[str, float] | None) -> pl.Series:
    """predicted_boolean_value, or prob >= the config's threshold where one is given."""
    if not threshold_by_config:
        return frame["predicted_boolean_value"]
    cid = frame["config_id"][0] if "config_id" in frame.columns else None
    if cid not in threshold_by_config:
        return frame["predicted_boolean_value"]
    return frame["predicted_boolean_probability"] >= threshold_by_config[cid]


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
    preds = _held_out(preds)
    others = [other] if isinstance(other, str) else list(other)
    axes = [f for f in prediction_factors(preds) if f != "format"]
    cross, flips, subjects = [], [], []
    for key, group in _groups(preds, axes):
        by_format = {k[0]: g for k, g in group.group_by("format", maintain_order=True)}
        if reference not in by_format:
            continue
        mid = match_id(axes, key)
        factors = dict(zip(axes, key, strict=True))
        ref = by_format[reference].with_columns(
            _hard_labels(by_format[reference], threshold_by_config).alias("predicted_boolean_value")
        )
        for fmt in others:
            if fmt not in by_format:
                continue
            oth = by_format[fmt].with_columns(
                _hard_labels(by_format[fmt], threshold_by_config).alias("predicted_boolean_value")
            )
            j = _align(ref, oth, mid, reference, fmt).with_columns(
                reference_correct=pl.col("predicted_boolean_value") == pl.col("boolean_value"),
                format_correct=pl.col("predicted_boolean_value_other") == pl.col("boolean_value"),
            )
            base = {**factors, "match_id": mid, "reference": reference, "format": fmt}
            counts = {}
            for rc in (True, False):
                for fc in (True, False):
                    n = int(
                        j.filter(
                            (pl.col("reference_correct") == rc) & (pl.col("format_correct") == fc)
                        ).height
                    )
                    counts[(rc, fc)] = n
                    cross.append({**base, "reference_correct": rc, "format_correct": fc, "n": n})
            lost, gained = counts[(True, False)], counts[(False, True)]
            mcnemar = stats.binomtest(lost, lost + gained, 0.5).pvalue if lost + gained else 1.0
            flips.append(
                {
                    **base,
                    "n": j.height,
                    "n_both_correct": counts[(True, True)],
                    "n_reference_only_correct": lost,
                    "n_format_only_correct": gained,
                    "n_both_wrong": counts[(False, False)],
                    "accuracy_reference": (counts[(True, True)] + lost) / j.height,
                    "accuracy_format": (counts[(True, True)] + gained) / j.height,
                    "mcnemar_p_value": float(mcnemar),
                }
            )
            disc = j.filter(pl.col("reference_correct") != pl.col("format_correct"))
            subjects.append(
                disc.select(
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
            )
    key_schema = {a: preds.schema[a] for a in axes} | {
        "match_id": pl.String, "reference": pl.String, "format": pl.String,
    }  # fmt: skip
    cross_schema = key_schema | {
        "reference_correct": pl.Boolean, "format_correct": pl.Boolean, "n": pl.Int64,
    }  # fmt: skip
    flip_schema = key_schema | {
        "n": pl.Int64, "n_both_correct": pl.Int64, "n_reference_only_correct": pl.Int64,
        "n_format_only_correct": pl.Int64, "n_both_wrong": pl.Int64,
        "accuracy_reference": pl.Float64, "accuracy_format": pl.Float64,
        "mcnemar_p_value": pl.Float64,
    }  # fmt: skip
    subject_table = (
        pl.concat(subjects, how="diagonal_relaxed")
        if subjects
        else pl.DataFrame(schema=key_schema | {"subject_id": pl.Int64, "flip": pl.String})
    )
    return {
        "crosstab": pl.DataFrame(cross, schema=cross_schema),
        "flips": pl.DataFrame(flips, schema=flip_schema),
        "subjects": subject_table,
    }


# --------------------------------------------------------------------------------------
# Baselines
# --------------------------------------------------------------------------------------


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
    rest = [f for f in table["format"].unique(maintain_order=True) if f not in order]
    order += format_order(rest, reference)
    rank = pl.col("format").replace_strict(
        {f: i for i, f in enumerate(order)}, return_dtype=pl.Int64
    )
    sort_cols = [rank] + ([pl.col("n_train")] if "n_train" in table.columns else [])
    table = table.sort(sort_cols, nulls_last=True)
    return table.select(
        "kind", "format", *[c for c in table.columns if c not in ("kind", "format")]
    )


# --------------------------------------------------------------------------------------
# Everything at once
# --------------------------------------------------------------------------------------


def write_study_report(
    entries: Iterable[Entry],
    out_dir: Path,
    configurations: Iterable[Mapping[str, Any]] | None = None,
    reference: str = REFERENCE,
    baseline_formats: Sequence[str] = ("logistic_regression",),
    n_boot: int = 1000,
    seed: int = 0,
    attrition: pl.DataFrame | None = None,
    table1: pl.DataFrame | None = None,
    rationale_qc: pl.DataFrame | None = None,
    gates: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write every table, the headline and every figure for the outputs that exist.

    ``gates`` (the config's ``validity`` section) mark each configuration valid or degenerate;
    the headline and summary count only matched pairs of valid configurations, and say how many
    were excluded and why. Matched formats must have trained alike (check_matched_training).

    ``configurations`` (the full grid) defaults to the entries' configurations; cells whose
    predictions or metrics are missing are listed in missing.txt and in the headline.
    Returns name -> path of what was written (figure paths are stems, .png and .svg).
    """

    entries = [as_outputs(e) for e in entries]
    grid = [e.configuration for e in entries] if configurations is None else list(configurations)
    present, _ = available_outputs(entries)
    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    table = load_metrics_table(present)
    check_matched_training(table)
    table = with_validity(table, gates or {}, reference)
    preds = load_predictions(present)
    missing = missing_cells(grid, [config_id(e.configuration) for e in present])
    paired = gate_pairs(
        paired_differences(preds, reference=reference, n_boot=n_boot, seed=seed), table
    )
    summary = summary_across_configurations(paired.filter(pl.col("valid")).drop("valid"))
    mechanism = mechanism_table(paired, table, reference)
    formats = format_order(table["format"].to_list() if table.height else [], reference)
    rationale_formats = [f for f in formats if f != reference and f not in baseline_formats]
    errors = matched_error_analysis(
        preds, reference, rationale_formats, thresholds_from_metrics(present)
    )
    paths = {
        "metrics": out_dir / "metrics.csv",
        "paired": out_dir / "paired.csv",
        "summary": out_dir / "summary.csv",
        "baselines": out_dir / "baselines.csv",
        "baseline_metrics": out_dir / "baseline_metrics.csv",
        "error_crosstab": out_dir / "error_crosstab.csv",
        "error_flips": out_dir / "error_flips.csv",
        "error_subjects": out_dir / "error_subjects.csv",
        "missing": out_dir / "missing.txt",
        "headline": out_dir / "headline.md",
        "validity": out_dir / "validity.csv",
        "mechanism": out_dir / "mechanism.csv",
        "mechanism_text": out_dir / "mechanism.md",
    }
    # metrics.csv: one row per fine-tuned configuration; baselines get their own table.
    is_baseline = pl.col("format").is_in(list(baseline_formats))
    table.filter(~is_baseline).write_csv(paths["metrics"])
    table.filter(is_baseline).write_csv(paths["baseline_metrics"])
    paired.write_csv(paths["paired"])
    summary.write_csv(paths["summary"])
    baseline_table(table, baseline_formats, reference).write_csv(paths["baselines"])
    errors["crosstab"].write_csv(paths["error_crosstab"])
    errors["flips"].write_csv(paths["error_flips"])
    errors["subjects"].write_csv(paths["error_subjects"])
    paths["missing"].write_text("".join(f"{m}\n" for m in missing))
    paths["headline"].write_text(
        headline(
            summary,
            table,
            reference,
            missing,
            baseline_formats,
            validity=validity_sentences(paired, table.filter(~is_baseline)),
        )
        + "\n"
    )
    validity_columns = ["config_id", "format", "valid", "validity_reasons"]
    table.select(validity_columns).write_csv(paths["validity"])
    mechanism.write_csv(paths["mechanism"])
    paths["mechanism_text"].write_text(mechanism_markdown(mechanism))
    fig = out_dir / "figures"
    # Baselines are not matched to a fine-tuned model; their own table and curves show them.
    lm_formats = [f for f in formats if f not in baseline_formats]
    figures.paired_configurations(table, lm_formats, fig / "paired_configurations", reference)
    figures.delta_by_factor(paired, None, fig / "delta_by_factor")
    figures.error_analysis(errors["crosstab"], fig / "error_analysis")
    figures.token_dilution(paired, table, fig / "token_dilution")
    figures.roc_and_calibration(preds, fig / "roc_and_calibration", formats)
    figures.learning_curves(table, fig / "learning_curves", formats)
    if attrition is not None:
        figures.cohort_overview(attrition, table1, fig / "cohort_overview")
    if rationale_qc is not None:
        figures.rationale_qc(rationale_qc, fig / "rationale_qc")
    names = ["paired_configurations", "delta_by_factor", "error_analysis", "token_dilution"]
    names += ["roc_and_calibration", "learning_curves"]
    if attrition is not None:
        names.append("cohort_overview")
    if rationale_qc is not None:
        names.append("rationale_qc")
    paths |= {f"figure_{n}": fig / n for n in names}
    return paths


# --------------------------------------------------------------------------------------
# Mechanism: which explanations of a rationale format's ΔAUROC the diagnostics support
# --------------------------------------------------------------------------------------

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
    for fmt in format_order(paired["format"].unique().to_list() if paired.height else []):
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
            f"right age in {age or 0:.0%}, factor precision {_pct(precision)}",
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


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


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
            f"{'n/a' if delta is None else f'{delta:+.3f}'} | {_pct(r['token_dilution'])} | "
            f"{_pct(r['collapse'])} | {_pct(r['age_faithful'])} | "
            f"{_pct(r['factor_precision'])} | {_num(r['hallucinated'])} | "
            f"{_pct(r['conclusion_driven'])} | {_num(r['answer_loss'])} "
            f"({_num(r['reference_answer_loss'])}) |"
        )
    lines.append("")
    for r in mechanism.iter_rows(named=True):
        note = (
            " (measured on degenerate configurations only)"
            if r["measured_on_degenerate_only"]
            else ""
        )
        lines.append(f"{_cap(format_name(r['format']))}{note}:")
        lines += [f"- {name}: {text}." for name, text in mechanism_verdicts(r).items()]
    lines.append(
        f"\nThresholds: dilution when the answer carries under {DILUTION_SHARE:.0%} of the loss; "
        f"unfaithful when under {FAITHFUL_SHARE:.0%} state the right age or name present factors; "
        f"conclusion-driven from {DRIVEN_SHARE:.0%}; under-trained when the answer-token loss is "
        f"over {LOSS_GAP_NATS} nats above label-only's."
    )
    return "\n".join(lines) + "\n"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"
