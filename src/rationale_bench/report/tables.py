"""The report's inputs: each configuration's output files, loaded into long tables.

* :func:`load_predictions` - long held-out predictions with the configuration factors.
* :func:`load_metrics_table` - one row per configuration (``run.json`` optional).
* :func:`available_outputs` and :func:`missing_cells` - what has finished in a partial grid.
* :func:`matched_groups` and :func:`align_pair` - the matched groups (every factor equal except
  ``format``) and two formats' predictions joined on identical held-out subjects.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from rationale_bench.evaluate import diagnostics
from rationale_bench.evaluate.evaluation import PREDICTION_COLUMNS
from rationale_bench.study import GRID_AXES

# dtypes of the grid axes, for empty tables (nothing has finished yet).
AXIS_DTYPES = {
    "model": pl.String,
    "serialization": pl.String,
    "format": pl.String,
    "n_train": pl.Int64,
    "seed": pl.Int64,
}


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


def prediction_factors(preds: pl.DataFrame) -> list[str]:
    """Configuration columns of a long predictions table (everything not a prediction column)."""
    return [c for c in preds.columns if c not in PREDICTION_COLUMNS and c != "config_id"]


def match_id(axes: Sequence[str], values: Sequence[Any]) -> str:
    """Readable id of a matched group: ``model=tiny/n_train=200/seed=1``."""
    return "/".join(f"{a}={v}" for a, v in zip(axes, values, strict=True))


def held_out(preds: pl.DataFrame) -> pl.DataFrame:
    return preds.filter(pl.col("split") == "held_out") if "split" in preds.columns else preds


def matched_groups(
    frame: pl.DataFrame, axes: Sequence[str]
) -> list[tuple[tuple[Any, ...], pl.DataFrame]]:
    """(key, rows) per matched group, in order of appearance; one group when no axes."""
    if not axes:
        return [((), frame)] if frame.height else []
    return list(frame.group_by(list(axes), maintain_order=True))


def align_pair(
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
