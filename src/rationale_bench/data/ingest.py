"""Ingest: turn a user's data into one checked MEDS-style events file and a code-name table.

Every source (``data.source``) ends the same way: its events pass the shared data-quality
checks (:mod:`rationale_bench.data.quality`) and three files are written,
``events.parquet`` (``subject_id, time, code, numeric_value``), ``codes.parquet`` (``code,
description, parent_codes``: the MEDS metadata/codes.parquet convention; parent_codes come from
OMOP's concept_ancestor or a MEDS dataset's own table, else empty) and ``data_quality.csv``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl

from rationale_bench.data import inputs
from rationale_bench.data.inputs import InputError
from rationale_bench.data.quality import (
    CODES_SCHEMA,
    KNOWN_VOCABULARIES,
    DataError,
    Plausibility,
    QualityReport,
    check_meds_conformance,
    clean_events,
    empty_codes,
    normalize_events,
    report_timezone,
    require_columns,
    write_codes,
    write_events,
)

SOURCES = ("synthetic", "meds", "omop", "first_occurrence")


def meds_files(path: str | Path) -> list[Path]:
    """Parquet shards of a MEDS dataset (:func:`inputs.meds_files`); foreign files stop."""
    try:
        return inputs.meds_files(path)
    except InputError as error:
        raise DataError(str(error)) from None


def meds_codes_file(path: str | Path) -> Path | None:
    """The dataset's metadata/codes.parquet, beside data/ (or above it when path is data/)."""
    root = Path(path)
    if root.is_file():
        root = root.parent
    for base in (root, root.parent):
        candidate = base / "metadata" / "codes.parquet"
        if candidate.is_file():
            return candidate
    return None


def meds_codes(path: str | Path, report: QualityReport) -> pl.DataFrame:
    """Code names (and parent_codes, when given) from the dataset's metadata/codes.parquet;
    an empty table without one."""
    file = meds_codes_file(path)
    if file is None:
        return empty_codes()
    codes = pl.read_parquet(file)
    require_columns(codes.schema, ["code"], str(file), "a MEDS codes table")
    if "description" not in codes.columns:
        codes = codes.with_columns(description=pl.lit(None, dtype=pl.String))
    duplicated = codes.select(pl.col("code").is_duplicated().sum()).item()
    report.count(
        "duplicate code row",
        duplicated,
        str(file),
        "code",
        "first kept (warning)",
        "a code should appear once in metadata/codes.parquet",
    )
    report.add("code names read", str(file), None, codes.height, "info")
    parents = pl.lit(None, dtype=pl.List(pl.String))
    if "parent_codes" in codes.columns:
        dtype = codes.schema["parent_codes"]
        if not (
            dtype == pl.Null or (isinstance(dtype, pl.List) and dtype.inner in (pl.String, pl.Null))
        ):
            raise DataError(
                f"{file}: column 'parent_codes' has type {dtype}, expected a list of strings "
                "(the MEDS codes.parquet schema). Fix the dataset's metadata."
            )
        parents = pl.col("parent_codes").cast(pl.List(pl.String))
    return codes.select(
        pl.col("code").cast(pl.String),
        pl.col("description").cast(pl.String),
        parents.alias("parent_codes"),
    )


def meds_events(
    path: str | Path, timezone: str | None = None, report: QualityReport | None = None
) -> pl.LazyFrame:
    """All shards, each checked for columns and types (errors name the shard), gathered;
    zoned times follow data.timezone, counted per shard in ``report``."""
    files = meds_files(path)
    shards = []
    for file in files:
        rows = check_parquet(file)
        scan = pl.scan_parquet(file)
        shards.append(normalize_events(scan, str(file), timezone))
        dtype = scan.collect_schema().get("time")
        if report is not None and dtype is not None:
            report_timezone(report, dtype, timezone, str(file), "time", rows)
    return pl.concat(shards)


def check_parquet(file: Path) -> int:
    """Stop, naming the file, when a shard's parquet footer cannot be read (corrupt or not
    parquet); polars would otherwise fail later without saying which shard."""
    import pyarrow.parquet as pq

    try:
        return pq.read_metadata(file).num_rows
    except Exception as error:  # pyarrow raises several types for a damaged file
        raise DataError(
            f"{file}: not a readable parquet file ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:160]}). Re-export the shard or remove it."
        ) from None


def _read_meds(
    data_cfg: Mapping[str, Any], formats: list[str], report: QualityReport, rules: Plausibility
) -> tuple[pl.LazyFrame, pl.DataFrame, str]:
    """A MEDS dataset's events (every shard checked), its code table, and its layout checked
    against the MEDS conventions."""
    path = data_cfg["meds"]["path"]
    events = meds_events(path, rules.timezone, report)
    codes = meds_codes(path, report)
    check_meds_conformance(meds_files(path), report)
    return events, codes, str(path)


def _read_omop(
    data_cfg: Mapping[str, Any], formats: list[str], report: QualityReport, rules: Plausibility
) -> tuple[pl.LazyFrame, pl.DataFrame, str]:
    from rationale_bench.data.omop import omop_events

    events, codes = omop_events(data_cfg["omop"], formats, report, rules)
    return events, codes, str(data_cfg["omop"]["path"])


def _read_first_occurrence(
    data_cfg: Mapping[str, Any], formats: list[str], report: QualityReport, rules: Plausibility
) -> tuple[pl.LazyFrame, pl.DataFrame, str]:
    from rationale_bench.data.first_occurrence import first_occurrence_events

    file = str(data_cfg["first_occurrence"]["path"])
    events = first_occurrence_events(data_cfg["first_occurrence"], formats, report, rules)
    return events, empty_codes(), file


# data.source -> the adapter that reads it: (events, code table, the path named in messages).
ADAPTERS = {"meds": _read_meds, "omop": _read_omop, "first_occurrence": _read_first_occurrence}


def ingest(
    data_cfg: Mapping[str, Any],
    events_path: str | Path,
    codes_path: str | Path,
    quality_path: str | Path,
) -> QualityReport:
    """Ingest ``data_cfg['source']`` (not 'synthetic') into the three ingest files: the source's
    adapter (:data:`ADAPTERS`) reads it, the shared data-quality checks clean it."""
    source = data_cfg["source"]
    report = QualityReport()
    rules = Plausibility.from_config(data_cfg)
    known = tuple(KNOWN_VOCABULARIES) + tuple(data_cfg.get("extra_vocabularies") or ())
    formats = list(data_cfg.get("date_formats") or ["%Y-%m-%d"])
    adapter = ADAPTERS.get(source)
    if adapter is None:
        raise DataError(f"data.source '{source}' is not ingested here; use one of {SOURCES}.")
    events, codes, file = adapter(data_cfg, formats, report, rules)
    write_events(events, report, file, events_path, known, rules)
    write_codes(codes, codes_path)
    report.write(quality_path)
    return report


def audit_synthetic(
    events_path: str | Path,
    codes_path: str | Path,
    quality_path: str | Path,
    chunk_subjects: int = 50_000,
) -> QualityReport:
    """Check the generator's own output with the shared checks, without rewriting it.

    Events that the checks would drop (no time, before birth, after death) or codes of an
    unknown system are generator bugs and stop the run. Exact duplicates (the same lab value
    drawn twice at one visit) are harmless to the cohort and are counted, kept, as a warning.
    Subjects are checked ``chunk_subjects`` at a time (ids are 1..n), so memory stays bounded
    at a million subjects.
    """
    file = str(events_path)
    scan = pl.scan_parquet(events_path)
    bounds = scan.select(lo=pl.col("subject_id").min(), hi=pl.col("subject_id").max()).collect()
    lo, hi = bounds["lo"][0] or 0, bounds["hi"][0] or 0
    totals: dict[tuple, int] = {}
    n_subjects = 0
    for start in range(lo, hi + 1, chunk_subjects):
        part = QualityReport()
        chunk = scan.filter(pl.col("subject_id").is_between(start, start + chunk_subjects - 1))
        clean, kept = clean_events(chunk, part, file)
        part.count(
            "exact duplicate event",
            kept - clean.select(pl.len()).collect().item(),
            file,
            "subject_id, time, code, numeric_value",
            "kept (warning)",
            "identical rows from the generator; left in events.parquet",
        )
        for row in part.rows:
            if row["check"] == "extraction date":
                continue  # per chunk; the generator's window is data.synthetic.data_end
            if row["check"] == "events checked":
                n_subjects += int(str(row["detail"]).split()[0])
                row = {**row, "detail": ""}
            key = (row["check"], row["column"], row["action"], row["detail"])
            totals[key] = totals.get(key, 0) + int(row["n_rows"])
    report = QualityReport()
    for (check, column, action, detail), n in totals.items():
        if check == "events checked":
            detail = f"{n_subjects} subjects"
        report.add(check, file, column, n, action, detail)
    bad = [
        r
        for r in report.rows
        if r["action"] == "dropped"
        or r["check"] in ("unknown code system", "code normalised", "code kept with unknown date")
    ]
    if bad:
        raise DataError(
            "the synthetic generator wrote events that fail the data-quality checks: "
            + "; ".join(f"{r['check']}: {r['n_rows']}" for r in bad)
            + ". This is a bug in rationale_bench.data.synthetic; please report it."
        )
    pl.DataFrame(schema=CODES_SCHEMA).write_parquet(codes_path)
    report.write(quality_path)
    return report
