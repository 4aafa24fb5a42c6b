"""Ingest a user's MEDS dataset: find the shards, check the schema, gather one events file."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from rationale_bench.cohort import CohortError, check_events_schema

MEDS_COLUMNS = ["subject_id", "time", "code", "numeric_value"]


def meds_files(path: str | Path) -> list[Path]:
    """Parquet files of a MEDS dataset: its data/ folder if present, else the folder itself."""
    root = Path(path)
    if root.is_file():
        return [root]
    if not root.exists():
        raise CohortError(
            f"data.meds.path '{root}' does not exist; point it at a MEDS dataset folder."
        )
    base = root / "data" if (root / "data").is_dir() else root
    files = sorted(base.rglob("*.parquet"))
    if not files:
        raise CohortError(f"data.meds.path '{root}': no .parquet files found under {base}.")
    return files


def ingest_meds(path: str | Path, out_path: str | Path) -> int:
    """Check every shard's columns and types, then write them as one sorted events file."""
    frames = []
    for file in meds_files(path):
        frame = pl.scan_parquet(file)
        check_events_schema(frame, str(file))
        if "numeric_value" not in frame.collect_schema():
            frame = frame.with_columns(numeric_value=pl.lit(None, dtype=pl.Float32))
        frames.append(
            frame.select(
                pl.col("subject_id").cast(pl.Int64),
                pl.col("time").cast(pl.Datetime("us")),
                pl.col("code").cast(pl.String),
                pl.col("numeric_value").cast(pl.Float32),
            )
        )
    events = pl.concat(frames).sort("subject_id", "time")
    events.sink_parquet(out_path)
    return pl.scan_parquet(out_path).select(pl.len()).collect().item()
