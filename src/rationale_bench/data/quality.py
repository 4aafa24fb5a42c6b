"""Data-quality checks shared by every ingest adapter, and the report that counts every drop.

Each adapter turns its input into MEDS-style events and hands them to :func:`clean_events`.
Problems that make the data unusable as a whole stop the run with :class:`DataError` (a missing
or mistyped column, empty data, duplicated subject rows in a one-row-per-subject table); problems
with single rows are dropped or kept with a warning, and each is one row of
``results/data/data_quality.csv`` so that nothing disappears silently.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from rationale_bench.data.codes import DATE_UNKNOWN_PREFIX, normalize_codes
from rationale_bench.errors import CohortError

log = logging.getLogger(__name__)

EVENTS_SCHEMA = {
    "subject_id": pl.Int64,
    "time": pl.Datetime("us"),
    "code": pl.String,
    "numeric_value": pl.Float32,
}
# parent_codes: the MEDS metadata/codes.parquet column of a code's ancestors (for OMOP, every
# ``OMOP/<id>`` above it in concept_ancestor); an empty list when the source has none.
CODES_SCHEMA = {"code": pl.String, "description": pl.String, "parent_codes": pl.List(pl.String)}
BARE_CODES = ("MEDS_BIRTH", "MEDS_DEATH")
# Code systems the pipeline knows (the part of a code before '/'); others are counted.
KNOWN_VOCABULARIES = (
    "ICD10",
    "ICD10CM",
    "ICD10PCS",
    "ICD9",
    "ICD9CM",
    "ICD9PROC",
    "ATC",
    "RXNORM",
    "SNOMED",
    "LOINC",
    "CPT4",
    "HCPCS",
    "NDC",
    "LAB",
    "VISIT",
    "SEX",
    "OMOP",
    "OBSERVATION_PERIOD",
    "DATE_UNKNOWN",
)
# The shape of a code's value in the systems whose codes the cohort matches by prefix.
CODE_SHAPES = {
    "ICD10": r"^[A-Z][0-9][0-9A-Z](\.[0-9A-Z]{1,4})?$",
    "ICD9": r"^([0-9]{3}|V[0-9]{2}|E[0-9]{3})(\.[0-9]{1,2})?$",
    "ATC": r"^[A-Z]([0-9]{2}([A-Z]([A-Z]([0-9]{2})?)?)?)?$",
}
# Codes that may carry no time in MEDS (static measurements), and the date-unknown markers.
STATIC_PREFIXES = ("SEX/", DATE_UNKNOWN_PREFIX)
# Codes that describe the person or the record, not a clinical finding: an implausible date
# drops them without a DATE_UNKNOWN/ marker.
NOT_CLINICAL = ("MEDS_", "SEX/", "VISIT/", "OBSERVATION_PERIOD/", DATE_UNKNOWN_PREFIX)
MAX_VOCABULARY_ROWS = 20
TIMEZONE_POLICIES = ("utc", "local")


@dataclass(frozen=True)
class Plausibility:
    """The plausibility rules of ingest (``data.*`` settings; see docs/data.md).

    ``extraction_date``: events after it are implausible (null: inferred as the latest event
    that is not in the future, and reported); ``today``: events after it are in the future;
    ``timezone``: what to do with zoned times (null: UTC passes, any other zone stops;
    'utc' converts to UTC; 'local' keeps the written clock time); ``max_unparseable_fraction``:
    a date or number column with at least this share of unparseable values stops ingest;
    ``sex_values``: extra sex values (upper case) -> F / M.
    """

    extraction_date: dt.date | None = None
    today: dt.date = field(default_factory=dt.date.today)
    timezone: str | None = None
    max_unparseable_fraction: float = 0.5
    sex_values: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_config(cls, data_cfg: Mapping[str, Any]) -> Plausibility:
        date = data_cfg.get("extraction_date")
        if isinstance(date, str):
            try:
                date = dt.date.fromisoformat(date)
            except ValueError:
                raise DataError(
                    f"data.extraction_date '{date}' is not a YYYY-MM-DD date."
                ) from None
        policy = data_cfg.get("timezone")
        if policy is not None and policy not in TIMEZONE_POLICIES:
            raise DataError(
                f"data.timezone '{policy}' is unknown; use one of {', '.join(TIMEZONE_POLICIES)} "
                "or null."
            )
        return cls(
            extraction_date=date,
            timezone=policy,
            max_unparseable_fraction=float(data_cfg.get("max_unparseable_fraction", 0.5)),
            sex_values={str(k).upper(): v for k, v in (data_cfg.get("sex_values") or {}).items()},
        )


class DataError(CohortError):
    """The input data cannot be ingested as it is; the message says where and what to do."""


class MissingColumnsError(DataError):
    """A table lacks columns it needs: its structure is wrong (an optional OMOP table with
    generic column names is skipped on this error; see omop._optional)."""


@dataclass
class QualityReport:
    """Rows of the data-quality table: what was checked, where, how many rows, what was done."""

    rows: list[dict[str, object]] = field(default_factory=list)

    def add(
        self,
        check: str,
        file: str,
        column: str | None,
        n_rows: int,
        action: str,
        detail: str = "",
    ) -> None:
        self.rows.append(
            {
                "check": check,
                "file": file,
                "column": column,
                "n_rows": int(n_rows),
                "action": action,
                "detail": detail,
            }
        )

    def count(
        self, check: str, n_rows: int, file: str, column: str | None, action: str, detail: str = ""
    ) -> None:
        """Add a row only when the check found something (info rows use :meth:`add`)."""
        if n_rows:
            self.add(check, file, column, n_rows, action, detail)

    def frame(self) -> pl.DataFrame:
        return pl.DataFrame(
            self.rows,
            schema={
                "check": pl.String,
                "file": pl.String,
                "column": pl.String,
                "n_rows": pl.Int64,
                "action": pl.String,
                "detail": pl.String,
            },
        )

    def write(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.frame().write_csv(path)

    def log_summary(self, logger: logging.Logger = log) -> None:
        for row in self.rows:
            level = logging.INFO if row["action"] == "info" else logging.WARNING
            where = f"{row['file']}" + (f" [{row['column']}]" if row["column"] else "")
            logger.log(
                level,
                "%s: %s: %d rows, %s%s",
                row["check"],
                where,
                row["n_rows"],
                row["action"],
                f" ({row['detail']})" if row["detail"] else "",
            )


def require_columns(
    schema: pl.Schema | Mapping[str, pl.DataType],
    required: Iterable[str],
    file: str,
    what: str,
    fix: str = "Rename the columns in your data to these names",
) -> None:
    """Stop when a column the adapter needs is absent, listing what the file has instead.

    ``fix`` says how to repair it: the column setting where one exists (first-occurrence
    tables), else renaming (OMOP and MEDS column names are fixed by their standards).
    """
    missing = [c for c in required if c not in schema]
    if missing:
        raise MissingColumnsError(
            f"{file}: column(s) {', '.join(repr(c) for c in missing)} missing; {what} needs "
            f"them (found: {', '.join(schema) or 'no columns'}). {fix}."
        )


def check_parse_rate(
    file: str,
    column: str,
    raw: pl.Series,
    parsed: pl.Series,
    what: str,
    setting: str,
    max_fraction: float = 0.5,
) -> int:
    """Stop when at least ``max_fraction`` of a column's set values do not parse: that is a
    wrong format for the whole column, not bad rows. Returns the count of bad values."""
    n_set = int(raw.is_not_null().sum())
    bad = raw.is_not_null() & parsed.is_null()
    n_bad = int(bad.sum())
    if n_set and n_bad / n_set >= max_fraction:
        examples = ", ".join(repr(v) for v in raw.filter(bad).head(3).to_list())
        raise DataError(
            f"{file}: column '{column}': {n_bad} of {n_set} values ({100 * n_bad / n_set:.0f}%) "
            f"are not {what} (e.g. {examples}). The whole column looks misread: {setting} "
            f"(data.max_unparseable_fraction {max_fraction} stops ingest here)."
        )
    return n_bad


def zone_of(dtype: pl.DataType) -> str | None:
    return dtype.time_zone if isinstance(dtype, pl.Datetime) else None


def naive_times(expr: pl.Expr, dtype: pl.DataType, policy: str | None, where: str) -> pl.Expr:
    """Zone-free datetime[us] times from a datetime column, by the ``data.timezone`` policy.

    UTC times pass under every policy (the clock is UTC either way); another zone stops
    unless data.timezone says whether to convert to UTC or keep the written clock time.
    """
    zone = zone_of(dtype)
    if zone is None:
        return expr.cast(pl.Datetime("us"))
    if policy == "local":
        return expr.dt.replace_time_zone(None).cast(pl.Datetime("us"))
    if policy is None and zone not in ("UTC", "Etc/UTC", "+00:00"):
        raise DataError(
            f"{where}: times carry the time zone '{zone}'; the pipeline's times have none. Set "
            "data.timezone to 'utc' (convert to UTC) or 'local' (keep the clock time as written)."
        )
    return expr.dt.convert_time_zone("UTC").dt.replace_time_zone(None).cast(pl.Datetime("us"))


def report_timezone(
    report: QualityReport, dtype: pl.DataType, policy: str | None, file: str, column: str, n: int
) -> None:
    """One row for a zoned column: what the policy did to it."""
    zone = zone_of(dtype)
    if zone is not None:
        done = "kept clock time" if policy == "local" else "converted to UTC"
        report.add(
            "time zone removed",
            file,
            column,
            n,
            done,
            f"times in zone '{zone}', data.timezone {policy or 'null (UTC only)'}",
        )


def parse_datetime(
    expr: pl.Expr,
    dtype: pl.DataType,
    formats: Sequence[str],
    timezone: str | None = None,
    where: str = "",
) -> pl.Expr:
    """A datetime[us] expression from a date, datetime or text column (nulls where unparseable).

    Zoned datetimes follow the ``data.timezone`` policy (:func:`naive_times`)."""
    if isinstance(dtype, pl.Datetime):
        return naive_times(expr, dtype, timezone, where)
    if dtype == pl.Date:
        return expr.cast(pl.Datetime("us"))
    text = expr.cast(pl.String).str.strip_chars()
    attempts = [text.str.to_datetime(fmt, strict=False, time_unit="us") for fmt in formats]
    return pl.coalesce(attempts) if len(attempts) > 1 else attempts[0]


def strict_integer(frame: pl.DataFrame, column: str, file: str) -> pl.Series:
    """An Int64 id column; any value that is not an integer stops the run, with a count."""
    values = frame[column]
    if values.dtype.is_integer():
        return values.cast(pl.Int64)
    # Ids stored as DOUBLE (4180628.0) or as text of one ("4180628.0") are integers as long
    # as every value is whole; 4180628.5 is not an id.
    text = values.cast(pl.String).str.strip_chars()
    number = text.cast(pl.Float64, strict=False)
    whole = number.is_not_null() & (number == number.floor()) & (number.abs() < 2**53)
    # Text integers parse exactly (ids above 2**53 included); the float route is the fallback.
    parsed = pl.select(
        pl.coalesce(
            text.cast(pl.Int64, strict=False),
            pl.when(whole).then(number.cast(pl.Int64, strict=False)),
        )
    ).to_series()
    bad = values.is_not_null() & parsed.is_null()
    if bad.any():
        examples = ", ".join(repr(v) for v in values.filter(bad).head(3).to_list())
        raise DataError(
            f"{file}: column '{column}' has {int(bad.sum())} values that are not integers "
            f"(e.g. {examples}); ids must be integers. Map them to integers in your export."
        )
    return parsed.alias(column)


def _vocabulary(code: pl.Expr) -> pl.Expr:
    return (
        pl.when(code.str.contains("/", literal=True))
        .then(code.str.extract(r"^([^/]*)/"))
        .otherwise(code)
    )


def normalize_events(events: pl.LazyFrame, file: str, timezone: str | None = None) -> pl.LazyFrame:
    """Check the MEDS columns and their types (stop on a problem), cast to the pipeline's.

    Zoned times follow ``data.timezone`` (:func:`naive_times`)."""
    try:
        schema = events.collect_schema()
    except (pl.exceptions.PolarsError, OSError) as error:
        raise DataError(
            f"{file}: cannot be read as parquet ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:200]}); the file is corrupt or not parquet. "
            "Re-export it or remove it from the dataset."
        ) from None
    require_columns(schema, ("subject_id", "time", "code"), file, "MEDS events")
    if schema["subject_id"].is_float():
        # Ids written as whole-number floats (a pandas export with NaN) are still ids.
        sid = pl.col("subject_id")
        fractional = events.select((sid.is_not_null() & (sid != sid.floor())).sum()).collect()
        if fractional.item():
            raise DataError(
                f"{file}: column 'subject_id' is a float column with {fractional.item()} "
                "values that are not whole numbers; MEDS subject ids are int64. Fix the export."
            )
    elif not schema["subject_id"].is_integer():
        raise DataError(
            f"{file}: column 'subject_id' has type {schema['subject_id']}, expected an integer. "
            "MEDS subject ids are int64; map them to integers in your ETL."
        )
    if not isinstance(schema["time"], pl.Datetime) and schema["time"] != pl.Date:
        raise DataError(
            f"{file}: column 'time' has type {schema['time']}, expected a datetime. MEDS stores "
            "time as a timestamp; convert it in your ETL."
        )
    if schema["code"] not in (pl.String, pl.Categorical) and not isinstance(
        schema["code"], pl.Enum
    ):
        raise DataError(
            f"{file}: column 'code' has type {schema['code']}, expected a string. "
            "Convert it in your ETL."
        )
    if "numeric_value" in schema:
        if not (schema["numeric_value"].is_numeric() or schema["numeric_value"] == pl.Null):
            raise DataError(
                f"{file}: column 'numeric_value' has type {schema['numeric_value']}, expected a "
                "number (MEDS uses float32). Convert it in your ETL."
            )
        value = pl.col("numeric_value").cast(pl.Float32)
    else:
        value = pl.lit(None, dtype=pl.Float32)
    return events.select(
        pl.col("subject_id").cast(pl.Int64, strict=False),
        naive_times(pl.col("time"), schema["time"], timezone, f"{file}: column 'time'"),
        pl.col("code").cast(pl.String),
        value.alias("numeric_value"),
    )


def normalise_event_codes(
    events: pl.LazyFrame, report: QualityReport, file: str, sex_values: Mapping[str, str]
) -> pl.LazyFrame:
    """Rewrite every code to its canonical form (:func:`codes.normalize_code`), counted per
    code system, and count sex codes that are neither F nor M."""
    distinct = events.group_by("code").agg(n=pl.len()).drop_nulls("code").collect()
    mapping = normalize_codes(distinct["code"].to_list(), sex_values)
    if mapping:
        changed = distinct.filter(pl.col("code").is_in(list(mapping))).with_columns(
            new=pl.col("code").replace_strict(mapping)
        )
        per_system = (
            changed.with_columns(vocabulary=_vocabulary(pl.col("new")))
            .group_by("vocabulary")
            .agg(n=pl.col("n").sum(), k=pl.len(), old=pl.col("code").min())
            .sort("vocabulary")
        )
        for vocabulary, n, k, old in per_system.iter_rows():
            example = mapping[old]
            report.add(
                "code normalised",
                file,
                "code",
                n,
                "rewritten",
                f"{k} distinct {vocabulary} codes written another way, e.g. {old!r} -> "
                f"{example!r} (case, spaces, dots, vocabulary name); matching uses the canonical "
                "form",
            )
        events = events.with_columns(pl.col("code").replace(mapping))
    canonical = distinct.with_columns(code=pl.col("code").replace(mapping))
    odd_sex = canonical.filter(
        pl.col("code").str.starts_with("SEX/") & ~pl.col("code").is_in(["SEX/F", "SEX/M"])
    )
    if odd_sex.height:
        report.add(
            "unknown sex value",
            file,
            "code",
            int(odd_sex["n"].sum()),
            "kept (warning)",
            f"{', '.join(sorted(odd_sex['code'].unique().to_list())[:5])}: neither female nor "
            "male; map such values with data.sex_values (e.g. {U: F}) if they mean one",
        )
    return events


def _extraction_end(
    events: pl.LazyFrame, rules: Plausibility, report: QualityReport, file: str
) -> tuple[dt.datetime, dt.datetime]:
    """The first instants after today and after the extraction date (given or inferred)."""
    future = dt.datetime.combine(rules.today + dt.timedelta(days=1), dt.time())
    date = rules.extraction_date
    how = "data.extraction_date"
    if date is None:
        latest = events.filter(pl.col("time") < future).select(pl.col("time").max()).collect()
        value = latest.item()
        date = value.date() if value is not None else rules.today
        how = "inferred: the latest event not in the future; set data.extraction_date to fix it"
    report.add("extraction date", file, "time", 0, "info", f"{date.isoformat()} ({how})")
    return future, dt.datetime.combine(date + dt.timedelta(days=1), dt.time())


# Every row that clean_events drops is counted under the first of these checks it fails, in
# this column of data_quality.csv.
DROP_COLUMNS = {
    "missing subject_id or code": "subject_id, code",
    "missing time": "time",
    "event in the future": "time",
    "event after extraction date": "time",
    "event before birth": "time",
    "event after death": "time",
}
# Drops that mean "date implausible", not "row unusable": the clinical code is kept as
# DATE_UNKNOWN/<code>.
IMPLAUSIBLE_DATE = ("event in the future", "event after extraction date", "event before birth")


def clean_events(
    events: pl.LazyFrame,
    report: QualityReport,
    file: str,
    known_vocabularies: Sequence[str] = KNOWN_VOCABULARIES,
    rules: Plausibility | None = None,
) -> tuple[pl.LazyFrame, int]:
    """Check MEDS events, count every problem in ``report``; the rows to keep and their count.

    Codes are first rewritten to their canonical form (counted). Dropped (each row counted
    under the first check it fails): a missing subject_id or code, a missing time on a code
    that is not static (``SEX/``, ``DATE_UNKNOWN/``), events in the future or after the
    extraction date (:class:`Plausibility`), events before the subject's birth or after their
    death (grace 0 days), and exact duplicate rows. A clinical code dropped for an implausible
    date (future, after extraction, before birth) stays as ``DATE_UNKNOWN/<code>`` without a
    time: the code is present, its date is not, and the cohort must not call such a subject a
    control. Kept with a warning: subjects without a birth or sex event and codes of an
    unknown code system. The rows are deduplicated and sorted by subject and time (null-time
    static codes first, as MEDS orders them); the count is before deduplication, so the
    caller can count the duplicates it writes.

    The rules run in this order, and data_quality.csv lists their rows in the same order.
    """
    rules = rules or Plausibility()
    events = _normalised_events(events, report, file, rules)
    per_subject = _per_subject(events)
    future, after_extraction = _extraction_end(events, rules, report, file)
    flagged = events.join(per_subject, on="subject_id", how="left", nulls_equal=False).with_columns(
        _reason=_drop_reason(future, after_extraction)
    )
    n_in = _count_events_checked(flagged, report, file)
    n_dropped = _count_drops(flagged, report, file, future, after_extraction)
    markers, n_markers = _date_unknown_markers(flagged, report, file)
    _count_subject_warnings(per_subject, report, file)
    per_system = _code_systems(flagged)
    _count_unknown_systems(per_system, report, file, known_vocabularies)
    _count_malformed_codes(per_system, report, file)
    return _kept_rows(flagged, markers), n_in - n_dropped + n_markers


def _normalised_events(
    events: pl.LazyFrame, report: QualityReport, file: str, rules: Plausibility
) -> pl.LazyFrame:
    """The events with checked MEDS columns and types, zone-free times (a zoned time column is
    counted) and canonical codes (rewrites counted)."""
    raw_time = _raw_time_type(events, file)
    events = normalize_events(events, file, rules.timezone)
    if zone_of(raw_time) is not None:
        n_zoned = events.select(pl.col("time").is_not_null().sum()).collect().item()
        report_timezone(report, raw_time, rules.timezone, file, "time", n_zoned)
    return normalise_event_codes(events, report, file, rules.sex_values)


def _per_subject(events: pl.LazyFrame) -> pl.LazyFrame:
    """Per subject: the earliest birth and death, how many distinct of each, and whether any
    sex code is recorded."""
    code = pl.col("code")
    return events.group_by("subject_id").agg(
        _birth=pl.col("time").filter(code == "MEDS_BIRTH").min(),
        _death=pl.col("time").filter(code == "MEDS_DEATH").min(),
        _n_births=pl.col("time").filter(code == "MEDS_BIRTH").n_unique(),
        _n_deaths=pl.col("time").filter(code == "MEDS_DEATH").n_unique(),
        _has_sex=code.str.starts_with("SEX/").any(),
    )


def _drop_reason(future: dt.datetime, after_extraction: dt.datetime) -> pl.Expr:
    """The first check (a key of :data:`DROP_COLUMNS`) an event fails; null when it passes.

    Needs the :func:`_per_subject` columns joined to the events."""
    code = pl.col("code")
    static = pl.any_horizontal([code.str.starts_with(p) for p in STATIC_PREFIXES])
    return (
        pl.when(pl.col("subject_id").is_null() | code.is_null())
        .then(pl.lit("missing subject_id or code"))
        .when(pl.col("time").is_null() & ~static)
        .then(pl.lit("missing time"))
        .when(pl.col("time") >= future)
        .then(pl.lit("event in the future"))
        .when(pl.col("time") >= after_extraction)
        .then(pl.lit("event after extraction date"))
        # Compared by calendar day: an event on the day of birth or death is possible even
        # when the birth or death time is only known to the day (grace 0 days).
        .when(pl.col("time").dt.date() < pl.col("_birth").dt.date())
        .then(pl.lit("event before birth"))
        .when(pl.col("time").dt.date() > pl.col("_death").dt.date())
        .then(pl.lit("event after death"))
    )


def _count_events_checked(flagged: pl.LazyFrame, report: QualityReport, file: str) -> int:
    """Stop on data without events; else one info row with the event and subject counts."""
    totals = flagged.select(
        n=pl.len(),
        n_subjects=pl.col("subject_id").drop_nulls().n_unique(),
    ).collect()
    n_in = totals["n"][0]
    if n_in == 0:
        raise DataError(f"{file}: the data holds no events; check the input path and filters.")
    report.add("events checked", file, None, n_in, "info", f"{totals['n_subjects'][0]} subjects")
    return n_in


def _count_drops(
    flagged: pl.LazyFrame,
    report: QualityReport,
    file: str,
    future: dt.datetime,
    after_extraction: dt.datetime,
) -> int:
    """One 'dropped' row per drop reason found (in name order); the number of rows dropped."""
    drops = flagged.group_by("_reason").len().collect().filter(pl.col("_reason").is_not_null())
    details = {
        "event in the future": f"time on or after {future.date()} (the run date + 1 day)",
        "event after extraction date": f"time on or after {after_extraction.date()}",
        "event before birth": "time earlier than the subject's MEDS_BIRTH",
        "event after death": "time later than the subject's MEDS_DEATH (grace 0 days)",
        "missing time": "only static codes (SEX/, DATE_UNKNOWN/) may have no time",
    }
    for reason, n in drops.sort("_reason").iter_rows():
        report.add(reason, file, DROP_COLUMNS[reason], n, "dropped", details.get(reason, ""))
    return int(drops["len"].sum())


def _date_unknown_markers(
    flagged: pl.LazyFrame, report: QualityReport, file: str
) -> tuple[pl.LazyFrame, int]:
    """``DATE_UNKNOWN/<code>`` rows (no time) for clinical codes dropped for an implausible
    date, counted; and their number."""
    code = pl.col("code")
    implausible = pl.col("_reason").is_in(list(IMPLAUSIBLE_DATE)) & ~pl.any_horizontal(
        [code.str.starts_with(p) for p in NOT_CLINICAL]
    )
    markers = flagged.filter(implausible).select(
        "subject_id",
        pl.lit(None, dtype=pl.Datetime("us")).alias("time"),
        (pl.lit(DATE_UNKNOWN_PREFIX) + code).alias("code"),
        pl.lit(None, dtype=pl.Float32).alias("numeric_value"),
    )
    n_markers = markers.select(pl.len()).collect().item()
    report.count(
        "code kept with unknown date",
        n_markers,
        file,
        "time",
        "kept as DATE_UNKNOWN/<code>",
        "clinical codes whose date was dropped as implausible; the cohort excludes subjects "
        "whose outcome or exclusion drug has an unknown date",
    )
    return markers, n_markers


# Subject-level warnings: (check, column, detail) per count of :func:`_count_subject_warnings`.
SUBJECT_WARNINGS = {
    "no_birth": (
        "subject without birth",
        "code",
        "no MEDS_BIRTH event; the cohort's attrition table excludes these subjects",
    ),
    "many_births": (
        "subject with conflicting births",
        "time",
        "several MEDS_BIRTH times; the earliest is used",
    ),
    "many_deaths": (
        "subject with conflicting deaths",
        "time",
        "several MEDS_DEATH times; the earliest is used, events after it are dropped",
    ),
    "no_sex": (
        "subject without sex",
        "code",
        "no SEX/ event; the cohort's attrition table excludes these subjects",
    ),
}


def _count_subject_warnings(per_subject: pl.LazyFrame, report: QualityReport, file: str) -> None:
    """Subjects kept with a warning: no birth, several births or deaths, no sex."""
    subjects = (
        per_subject.filter(pl.col("subject_id").is_not_null())
        .select(
            no_birth=pl.col("_birth").is_null().sum(),
            many_births=(pl.col("_n_births") > 1).sum(),
            many_deaths=(pl.col("_n_deaths") > 1).sum(),
            no_sex=(~pl.col("_has_sex")).sum(),
        )
        .collect()
    )
    for name, (check, column, detail) in SUBJECT_WARNINGS.items():
        report.count(check, int(subjects[name][0]), file, column, "kept (warning)", detail)


def _code_systems(flagged: pl.LazyFrame) -> pl.DataFrame:
    """Per code system of the kept events: events, an example code, and the events (and an
    example) whose code is not shaped like the system's (:data:`CODE_SHAPES`).

    Code systems and shapes are judged once per distinct code, not once per event."""
    code = pl.col("code")
    per_code = (
        flagged.filter(pl.col("_reason").is_null() & ~code.is_in(BARE_CODES))
        .group_by("code")
        .agg(n=pl.len())
        .collect()
    )
    value = code.str.splitn("/", 2).struct.field("field_1")
    shapes = pl.lit(None, dtype=pl.Boolean)
    for system, pattern in CODE_SHAPES.items():
        shapes = (
            pl.when(pl.col("vocabulary") == system)
            .then(value.str.contains(pattern))
            .otherwise(shapes)
        )
    return (
        per_code.with_columns(vocabulary=_vocabulary(code))
        .with_columns(_malformed=~shapes.fill_null(True))
        .group_by("vocabulary")
        .agg(
            n=pl.col("n").sum(),
            example=code.min(),
            n_malformed=pl.col("n").filter(pl.col("_malformed")).sum(),
            malformed_example=code.filter(pl.col("_malformed")).min(),
        )
        .sort("n", "vocabulary", descending=[True, False])
    )


def _count_unknown_systems(
    per_system: pl.DataFrame,
    report: QualityReport,
    file: str,
    known_vocabularies: Sequence[str],
) -> None:
    """A warning row per unknown code system, the largest first; beyond MAX_VOCABULARY_ROWS
    of them, one row for the rest."""
    unknown = per_system.filter(~pl.col("vocabulary").is_in(list(known_vocabularies)))
    for vocabulary, n, example in (
        unknown.head(MAX_VOCABULARY_ROWS).select("vocabulary", "n", "example").iter_rows()
    ):
        report.add(
            "unknown code system",
            file,
            "code",
            n,
            "kept (warning)",
            f"code system '{vocabulary}' (e.g. {example}) is not one of "
            f"{', '.join(known_vocabularies)}; such codes are shown as written",
        )
    if unknown.height > MAX_VOCABULARY_ROWS:
        rest = unknown.slice(MAX_VOCABULARY_ROWS)
        report.add(
            "unknown code system",
            file,
            "code",
            int(rest["n"].sum()),
            "kept (warning)",
            f"{rest.height} more unknown code systems",
        )


def _count_malformed_codes(per_system: pl.DataFrame, report: QualityReport, file: str) -> None:
    """A warning row per code system with codes not shaped like it (ICD-10, ICD-9, ATC)."""
    malformed = per_system.filter(pl.col("n_malformed") > 0).sort("vocabulary")
    for vocabulary, n, example in malformed.select(
        "vocabulary", "n_malformed", "malformed_example"
    ).iter_rows():
        report.add(
            "malformed code",
            file,
            "code",
            n,
            "kept (warning)",
            f"not shaped like a {vocabulary} code (e.g. {example}); check the ETL's code format "
            "(ICD10/F03.90, ICD9/290.0, ATC/N06DA02)",
        )


def _kept_rows(flagged: pl.LazyFrame, markers: pl.LazyFrame) -> pl.LazyFrame:
    """The events that passed, with the date-unknown markers, deduplicated and in MEDS order."""
    return (
        pl.concat(
            [flagged.filter(pl.col("_reason").is_null()).select(list(EVENTS_SCHEMA)), markers]
        )
        .unique(keep="first")
        # MEDS order: by subject, then time with static (null-time) codes first.
        .sort(
            "subject_id",
            "time",
            "code",
            "numeric_value",
            nulls_last=[False, False, True, True],
        )
    )


def _raw_time_type(events: pl.LazyFrame, file: str) -> pl.DataType | None:
    try:
        return events.collect_schema().get("time")
    except (pl.exceptions.PolarsError, OSError):
        return None  # normalize_events names the unreadable file


def check_meds_conformance(files: Sequence[Path], report: QualityReport) -> None:
    """Check MEDS shards against the official schema package (``meds``) and the MEDS layout rules.

    Per shard, its parquet schema against ``meds.DataSchema`` (``subject_id`` int64 non-null,
    ``time`` timestamp[us], ``code`` string non-null, optional ``numeric_value`` float32): a
    column that is castable but not MEDS-typed is counted as a warning (it is cast on ingest;
    unusable types stop in :func:`normalize_events`). Across shards: a subject's rows must be
    in one shard, and within a shard sorted by ``subject_id`` then ``time`` (nulls, i.e. static
    codes, first); both are counted as warnings, since the ingest gathers and sorts anyway.
    ``large_string`` for ``string`` is not counted: parquet stores both alike (polars writes
    the former), only the Arrow schema hint differs.
    """
    for file in files:
        _check_meds_schema(file, report)
    if not files:
        return
    keys = _shard_keys(files)
    _count_subjects_in_several_shards(keys, files, report)
    for i, file in enumerate(files):
        _count_unsorted_rows(keys.filter(pl.col("_file") == i), file, report)


def _check_meds_schema(file: Path, report: QualityReport) -> None:
    """One warning row when the shard's parquet schema is not ``meds.DataSchema``."""
    import meds
    import pyarrow as pa
    import pyarrow.parquet as pq
    from flexible_schema.exceptions import SchemaValidationError

    schema = pq.read_schema(file)
    try:
        meds.DataSchema.validate(schema)
    except SchemaValidationError as error:
        wrong = [
            (col, want, got)
            for col, want, got in error.mistyped_cols or []
            if not (pa.types.is_string(want) and pa.types.is_large_string(got))
        ]
        missing = ", ".join(error.missing_req_cols or [])
        if not wrong and not missing:
            return
        mistyped = ", ".join(f"{col} is {got}, not {want}" for col, want, got in wrong)
        report.add(
            "not the MEDS data schema",
            str(file),
            ", ".join(col for col, _, _ in wrong) or missing,
            pq.read_metadata(file).num_rows,
            "kept (warning)",
            f"meds {meds.__version__} DataSchema: "
            + (f"mistyped {mistyped}" if mistyped else "")
            + (f"missing {missing}" if missing else "")
            + "; MEDS wants subject_id int64, time timestamp[us], code string, "
            "numeric_value float32 (cast on ingest)",
        )


def _shard_keys(files: Sequence[Path]) -> pl.LazyFrame:
    """``subject_id, time`` of every row of every shard, with the shard's index (``_file``)."""
    keys = [
        pl.scan_parquet(f)
        .select(
            pl.col("subject_id").cast(pl.Int64, strict=False),
            pl.col("time").cast(pl.Datetime("us"), strict=False),
        )
        .with_columns(_file=pl.lit(i, dtype=pl.Int32))
        for i, f in enumerate(files)
    ]
    return pl.concat(keys)


def _count_subjects_in_several_shards(
    keys: pl.LazyFrame, files: Sequence[Path], report: QualityReport
) -> None:
    """MEDS keeps each subject in one shard: count the subjects found in several."""
    split = (
        keys.group_by("subject_id")
        .agg(n=pl.col("_file").n_unique())
        .filter(pl.col("n") > 1)
        .select(pl.len())
        .collect()
        .item()
    )
    report.count(
        "subject in several shards",
        split,
        ", ".join(str(f) for f in files[:3]) + (" ..." if len(files) > 3 else ""),
        "subject_id",
        "kept (warning)",
        "MEDS keeps each subject in one shard; the ingest gathers all shards",
    )


def _count_unsorted_rows(shard: pl.LazyFrame, file: Path, report: QualityReport) -> None:
    """Count the shard's rows that break MEDS order (subject_id, then time, static first)."""
    # A run is a block of consecutive rows of one subject; within it, a row is out of order
    # when its time is earlier than a time above it (a null time, static, belongs first).
    run = (pl.col("subject_id") != pl.col("subject_id").shift(1)).fill_null(True).cum_sum()
    earlier = pl.col("time").cum_max().forward_fill().shift(1).over(run)
    out_of_order = (pl.col("subject_id") < pl.col("subject_id").shift(1)) | (
        (pl.col("time") < earlier) | (pl.col("time").is_null() & earlier.is_not_null())
    )
    n = shard.select(out_of_order.fill_null(False).sum()).collect().item()
    report.count(
        "shard not sorted by subject_id, time",
        n,
        str(file),
        "subject_id, time",
        "kept (warning)",
        "rows before the previous row's subject or time; the ingest sorts the events",
    )


def write_events(
    events: pl.LazyFrame,
    report: QualityReport,
    file: str,
    events_path: str | Path,
    known_vocabularies: Sequence[str] = KNOWN_VOCABULARIES,
    rules: Plausibility | None = None,
) -> int:
    """Clean ``events``, write them, and count the exact duplicates the cleaning removed."""
    clean, kept = clean_events(events, report, file, known_vocabularies, rules)
    Path(events_path).parent.mkdir(parents=True, exist_ok=True)
    clean.sink_parquet(events_path)
    n_written = pl.scan_parquet(events_path).select(pl.len()).collect().item()
    report.count(
        "exact duplicate event",
        kept - n_written,
        file,
        "subject_id, time, code, numeric_value",
        "dropped",
        "identical rows are kept once",
    )
    if n_written == 0:
        raise DataError(
            f"{file}: every event was dropped by the data-quality checks; see the counts in "
            "results/data/data_quality.csv (and the log) and fix the data."
        )
    report.add("events written", str(events_path), None, n_written, "info")
    return n_written


def empty_codes() -> pl.DataFrame:
    return pl.DataFrame(schema=CODES_SCHEMA)


def write_codes(codes: pl.DataFrame, path: str | Path) -> int:
    """Write the code table (MEDS metadata/codes.parquet convention): one row per code.

    Columns ``code, description, parent_codes``; a table without ``parent_codes`` gets empty
    lists, and a code listed twice keeps its named row and the union of its parents.
    """
    parents = (
        pl.col("parent_codes").cast(pl.List(pl.String)).fill_null([])
        if "parent_codes" in codes.columns
        else pl.lit([], dtype=pl.List(pl.String))
    )
    codes = codes.select(
        pl.col("code").cast(pl.String),
        pl.col("description").cast(pl.String),
        parents.alias("parent_codes"),
    ).filter(pl.col("code").is_not_null())
    union = codes.group_by("code").agg(
        pl.col("parent_codes").list.explode(keep_nulls=False, empty_as_null=False).unique().sort()
    )
    codes = (
        codes.sort("code", pl.col("description").is_null())
        .unique("code", keep="first")
        .drop("parent_codes")
        .join(union, on="code")
    )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    codes.sort("code").write_parquet(path)
    return codes.height
