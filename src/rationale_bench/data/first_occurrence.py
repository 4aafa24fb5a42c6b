"""UK-Biobank-style first-occurrence table -> MEDS-style events.

One row per participant: an id, birth year (and month), sex, the baseline (assessment) date and
one column per ICD-10 code holding the date, or the age in years, at which that code first
occurred. The table is unpivoted in polars (no per-row Python), so 500,000 participants by
1,000 code columns stay fast.

Conventions (documented in README.md):
- birth is the 15th of the birth month, or 1 July when only the year is known;
- the baseline date becomes a ``VISIT/ASSESSMENT`` event, so the cohort can index on it;
- dates in ``special_dates`` (UK Biobank placeholders such as 1900-01-01 "no event date")
  and negative ages (-1 "unknown", -3 "prefer not to answer") mean "code present, date
  unknown": they become ``DATE_UNKNOWN/<code>`` events without a time (or, for dates
  configured 'birth', events at birth), counted; the cohort excludes a subject whose outcome
  has an unknown date instead of keeping them as a control;
- a date before the imputed birth but inside the birth month (or year) is moved to the birth
  time and counted; earlier dates are impossible and dropped by the shared checks.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import polars as pl

from rationale_bench.data.codes import DATE_UNKNOWN_PREFIX
from rationale_bench.data.quality import (
    DataError,
    Plausibility,
    QualityReport,
    check_parse_rate,
    parse_datetime,
    report_timezone,
    require_columns,
    strict_integer,
)

BASELINE_CODE = "VISIT/ASSESSMENT"
ICD10_PATTERN = re.compile(r"^[A-Z][0-9]{2}(\.[0-9A-Z]{1,4})?$")
MIN_BIRTH_YEAR = 1850
MAX_REPORTED_COLUMNS = 20


def read_table(path: str | Path, what: str) -> pl.DataFrame:
    """A CSV/TSV (read as text, parsed later so bad values are counted) or parquet table."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{what} '{path}' does not exist; set the path in the config.")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pl.read_parquet(path)
    if suffix in (".csv", ".tsv", ".txt", ".tab"):
        separator = "," if suffix == ".csv" else "\t"
        frame = pl.read_csv(path, separator=separator, infer_schema=False)
        # An empty cell is a missing value, not a value that fails to parse.
        return frame.with_columns(
            pl.when(pl.all().str.strip_chars() != "").then(pl.all()).name.keep()
        )
    raise DataError(f"{what} '{path}': unknown file type '{suffix}'; use .csv, .tsv or .parquet.")


def icd10_code(name: str) -> str | None:
    """``F03`` / ``F0390`` / ``f03.90`` -> ``F03`` / ``F03.90``; None when not ICD-10 shaped."""
    code = name.strip().upper().replace(".", "")
    if len(code) > 3:
        code = f"{code[:3]}.{code[3:]}"
    return code if ICD10_PATTERN.match(code) else None


def code_columns(
    columns: list[str], cfg: Mapping[str, Any], used: set[str], file: str
) -> dict[str, str]:
    """Column -> ``ICD10/<code>``: the explicit mapping if given, else the name pattern."""
    explicit: Mapping[str, str] = cfg.get("code_columns") or {}
    if explicit:
        require_columns(columns, explicit, file, "data.first_occurrence.code_columns")
        mapping = {}
        for column, code in explicit.items():
            normal = icd10_code(code)
            if normal is None:
                raise DataError(
                    f"data.first_occurrence.code_columns: '{code}' (column '{column}') is not an "
                    "ICD-10 code such as F03 or I10.9."
                )
            mapping[column] = f"ICD10/{normal}"
        return mapping
    pattern = re.compile(cfg["code_column_regex"])
    mapping = {}
    for column in columns:
        if column in used:
            continue
        match = pattern.fullmatch(column)
        code = icd10_code(match.group(1)) if match else None
        if code is not None:
            mapping[column] = f"ICD10/{code}"
    if not mapping:
        raise DataError(
            f"{file}: no column name matches data.first_occurrence.code_column_regex "
            f"'{cfg['code_column_regex']}' (columns: {', '.join(columns[:12])}"
            f"{', ...' if len(columns) > 12 else ''}). Rename the code columns (e.g. 'F03') or "
            "list them in data.first_occurrence.code_columns."
        )
    return mapping


def _report_by_column(
    report: QualityReport, check: str, file: str, counts: pl.DataFrame, action: str, detail: str
) -> None:
    """One report row per column (the largest first), the tail summed in one row."""
    counts = counts.filter(pl.col("n") > 0).sort("n", "column", descending=[True, False])
    for column, n in counts.head(MAX_REPORTED_COLUMNS).select("column", "n").iter_rows():
        report.add(check, file, column, n, action, detail)
    if counts.height > MAX_REPORTED_COLUMNS:
        rest = counts.slice(MAX_REPORTED_COLUMNS)
        report.add(check, file, f"{rest.height} more columns", int(rest["n"].sum()), action, detail)


def _subject_ids(
    frame: pl.DataFrame, cfg: Mapping[str, Any], file: str, report: QualityReport
) -> pl.DataFrame:
    """The rows with an id, as ``subject_id``; rows without one are counted and dropped, a
    repeated id stops (the table must have one row per participant)."""
    id_col = cfg["id_column"]
    ids = strict_integer(frame, id_col, file)
    missing_id = ids.is_null()
    report.count(
        "missing subject id", int(missing_id.sum()), file, id_col, "dropped", "row has no id"
    )
    frame = frame.with_columns(ids.alias("subject_id")).filter(~missing_id)
    duplicated = frame["subject_id"].is_duplicated()
    if duplicated.any():
        examples = frame["subject_id"].filter(duplicated).unique().sort().head(5).to_list()
        raise DataError(
            f"{file}: column '{id_col}' has {int(duplicated.sum())} rows that share an id with "
            f"another row (e.g. {examples}); a first-occurrence table needs one row per "
            "participant. Deduplicate the table before ingesting it."
        )
    return frame


def _birth_year(
    frame: pl.DataFrame, cfg: Mapping[str, Any], file: str, report: QualityReport
) -> pl.Series:
    """Whole birth years from MIN_BIRTH_YEAR to this year; anything else null, counted."""
    this_year = dt.date.today().year
    raw_year = frame[cfg["birth_year_column"]]
    year = raw_year.cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False)
    bad_year = raw_year.is_not_null() & (
        year.is_null() | (year < MIN_BIRTH_YEAR) | (year > this_year) | (year != year.floor())
    )
    report.count(
        "unparseable or impossible birth year",
        int(bad_year.sum()),
        file,
        cfg["birth_year_column"],
        "set to null (warning)",
        f"not a whole year between {MIN_BIRTH_YEAR} and {this_year}; no MEDS_BIRTH is written",
    )
    report.count(
        "missing birth year",
        int(raw_year.is_null().sum()),
        file,
        cfg["birth_year_column"],
        "kept (warning)",
        "no MEDS_BIRTH is written; the cohort excludes these subjects",
    )
    return pl.Series(year).set(bad_year, None).cast(pl.Int32)


def _birth_month(
    frame: pl.DataFrame, cfg: Mapping[str, Any], file: str, report: QualityReport
) -> pl.Series:
    """Birth months 1-12 (all null without birth_month_column); others null, counted."""
    month_col = cfg.get("birth_month_column")
    if not month_col:
        return pl.Series([None] * frame.height, dtype=pl.Int32)
    raw_month = frame[month_col]
    month = raw_month.cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False)
    bad_month = raw_month.is_not_null() & (
        month.is_null() | (month < 1) | (month > 12) | (month != month.floor())
    )
    report.count(
        "unparseable birth month",
        int(bad_month.sum()),
        file,
        month_col,
        "set to null (warning)",
        "not 1-12; birth is taken as 1 July of the birth year",
    )
    return month.set(bad_month, None).cast(pl.Int32)


def _sex(
    frame: pl.DataFrame, cfg: Mapping[str, Any], file: str, report: QualityReport
) -> pl.Series:
    """Sex letters through data.first_occurrence.sex_values; a column in which no value is
    listed stops (the coding is wrong, not a few cells), unknown values are counted."""
    sex_raw = frame[cfg["sex_column"]].cast(pl.String).str.strip_chars().str.to_lowercase()
    lookup = {
        str(value).strip().lower(): letter
        for letter, values in cfg["sex_values"].items()
        for value in values
    }
    sex = sex_raw.replace_strict(lookup, default=None, return_dtype=pl.String)
    unknown_sex = sex_raw.is_not_null() & sex.is_null()
    if unknown_sex.all() and frame.height:
        examples = sex_raw.unique().drop_nulls().sort().head(5).to_list()
        raise DataError(
            f"{file}: no value of column '{cfg['sex_column']}' is listed in "
            f"data.first_occurrence.sex_values (values: {examples}); set sex_values to your coding "
            "(UK Biobank: 0 = female, 1 = male)."
        )
    report.count(
        "unknown sex value",
        int(unknown_sex.sum()),
        file,
        cfg["sex_column"],
        "kept (warning)",
        "not in data.first_occurrence.sex_values; no SEX/ event is written",
    )
    report.count(
        "missing sex",
        int(sex_raw.is_null().sum()),
        file,
        cfg["sex_column"],
        "kept (warning)",
        "no SEX/ event is written; the cohort excludes these subjects",
    )
    return sex


def _dates(
    frame: pl.DataFrame,
    column: str | None,
    check: str,
    formats: list[str],
    file: str,
    report: QualityReport,
    rules: Plausibility,
) -> pl.Series:
    """One date per row from ``column`` (all null when no column is set); values that do not
    parse are null and counted under ``check``, too many of them stop."""
    if not column:
        return pl.Series([None] * frame.height, dtype=pl.Datetime("us"))
    dtype = frame.schema[column]
    where = f"{file}: column '{column}'"
    parsed = frame.select(parse_datetime(pl.col(column), dtype, formats, rules.timezone, where))
    parsed = parsed.to_series()
    report_timezone(report, dtype, rules.timezone, file, column, int(parsed.is_not_null().sum()))
    check_parse_rate(
        file,
        column,
        frame[column],
        parsed,
        "dates",
        f"add the column's format to data.date_formats (now {', '.join(formats)})",
        rules.max_unparseable_fraction,
    )
    bad = frame[column].is_not_null() & parsed.is_null()
    report.count(
        check,
        int(bad.sum()),
        file,
        column,
        "set to null (warning)",
        f"not a date in any of data.date_formats ({', '.join(formats)})",
    )
    return parsed


def _followup_end(
    frame: pl.DataFrame, followup: Any, file: str, dates: Callable[[str, str], pl.Series]
) -> pl.Series:
    """data.first_occurrence.followup_end: a column of dates (read by ``dates``), one
    YYYY-MM-DD date for all, or (not set) no end."""
    if followup is None:
        return pl.Series([None] * frame.height, dtype=pl.Datetime("us"))
    if followup in frame.columns:
        return dates(followup, "unparseable follow-up end date")
    try:
        end_date = dt.date.fromisoformat(str(followup))
    except ValueError:
        raise DataError(
            f"data.first_occurrence.followup_end '{followup}' is neither a YYYY-MM-DD date "
            f"nor a column of {file}."
        ) from None
    return pl.Series([dt.datetime.combine(end_date, dt.time())] * frame.height)


def _subjects(
    frame: pl.DataFrame,
    cfg: Mapping[str, Any],
    formats: list[str],
    file: str,
    report: QualityReport,
    rules: Plausibility,
) -> pl.DataFrame:
    """One row per participant: subject_id, birth_time, birth period start, sex, baseline, death."""
    frame = _subject_ids(frame, cfg, file, report)
    year = _birth_year(frame, cfg, file, report)
    month = _birth_month(frame, cfg, file, report)
    sex = _sex(frame, cfg, file, report)

    def dates(column: str | None, check: str) -> pl.Series:
        return _dates(frame, column, check, formats, file, report, rules)

    baseline = dates(cfg["baseline_date_column"], "unparseable baseline date")
    report.count(
        "missing baseline date",
        int(baseline.is_null().sum()),
        file,
        cfg["baseline_date_column"],
        "kept (warning)",
        "no VISIT/ASSESSMENT event; the cohort cannot index these subjects on the baseline",
    )
    death = dates(cfg.get("death_date_column"), "unparseable death date")
    end = _followup_end(frame, cfg.get("followup_end"), file, dates)
    subjects = pl.DataFrame(
        {
            "subject_id": frame["subject_id"],
            "_year": year,
            "_month": month,
            "sex": sex,
            "baseline": baseline.cast(pl.Datetime("us")),
            "death": death.cast(pl.Datetime("us")),
            "followup_end": end.cast(pl.Datetime("us")),
        }
    )
    return subjects.with_columns(
        birth_time=pl.datetime(
            pl.col("_year"),
            pl.col("_month").fill_null(7),
            pl.when(pl.col("_month").is_null()).then(1).otherwise(15),
        ),
        birth_period_start=pl.datetime(pl.col("_year"), pl.col("_month").fill_null(1), 1),
    ).drop("_year", "_month")


def first_occurrence_events(
    cfg: Mapping[str, Any],
    formats: list[str],
    report: QualityReport,
    rules: Plausibility | None = None,
) -> pl.LazyFrame:
    """MEDS-style events of a first-occurrence table (not yet checked by clean_events)."""
    rules = rules or Plausibility()
    file = str(cfg["path"])
    frame, used = _read_first_occurrence(cfg, file, report)
    columns = code_columns(frame.columns, cfg, set(used), file)
    _report_unused_columns(frame, columns, used, file, report)
    as_age = cfg["values"] == "age"
    schema = frame.schema  # built once: a schema of 1,000+ columns is not free
    _check_code_column_types(schema, columns, cfg, file)
    subjects = _subjects(frame, cfg, formats, file, report, rules)
    wide = _parse_code_values(frame, schema, columns, cfg, formats, file, report, rules)
    long = _melt_codes(wide, columns, subjects)
    if as_age:
        long, unknown = _ages_to_times(long, cfg, file, report)
    else:
        long, unknown = _special_dates(long, cfg, file, report)
    return _events(subjects, long, unknown, cfg)


def _read_first_occurrence(
    cfg: Mapping[str, Any], file: str, report: QualityReport
) -> tuple[pl.DataFrame, list[str]]:
    """The table and the columns its settings name (checked to exist); rows counted."""
    frame = read_table(cfg["path"], "data.first_occurrence.path")
    if frame.height == 0:
        raise DataError(f"{file}: the table has no rows; check data.first_occurrence.path.")
    fixed = [
        cfg["id_column"],
        cfg["birth_year_column"],
        cfg["sex_column"],
        cfg["baseline_date_column"],
    ]
    optional = [cfg.get("birth_month_column"), cfg.get("death_date_column")]
    if cfg.get("followup_end") in frame.columns:
        optional.append(cfg["followup_end"])
    used = fixed + [c for c in optional if c]
    require_columns(
        frame.schema,
        used,
        file,
        "data.first_occurrence",
        "Set data.first_occurrence.id_column, birth_year_column, sex_column, "
        "baseline_date_column (and birth_month_column, death_date_column) to your column names",
    )
    report.add("rows read", file, None, frame.height, "info", "participants (one row each)")
    return frame, used


def _report_unused_columns(
    frame: pl.DataFrame,
    columns: Mapping[str, str],
    used: list[str],
    file: str,
    report: QualityReport,
) -> None:
    """A warning row per column that is neither a setting nor a code (the first
    MAX_REPORTED_COLUMNS, then one row for the rest): a misnamed code column shows here."""
    unused = [c for c in frame.columns if c not in columns and c not in used]
    for column in unused[:MAX_REPORTED_COLUMNS]:
        report.add(
            "column not used",
            file,
            column,
            int(frame[column].is_not_null().sum()),
            "ignored (warning)",
            "not an id/birth/sex/date setting and not an ICD-10 code column",
        )
    if len(unused) > MAX_REPORTED_COLUMNS:
        report.add(
            "column not used",
            file,
            f"{len(unused) - MAX_REPORTED_COLUMNS} more columns",
            0,
            "ignored (warning)",
            "",
        )


def _check_code_column_types(
    schema: pl.Schema, columns: Mapping[str, str], cfg: Mapping[str, Any], file: str
) -> None:
    """Stop on a typed code column that cannot hold what data.first_occurrence.values says
    (text columns are parsed, and counted, later)."""
    as_age = cfg["values"] == "age"
    for column in columns:
        dtype = schema[column]
        ok = (
            dtype == pl.String
            or (as_age and dtype.is_numeric())
            or (not as_age and (dtype == pl.Date or isinstance(dtype, pl.Datetime)))
        )
        if not ok:
            wanted = "an age in years (number)" if as_age else "a date"
            raise DataError(
                f"{file}: code column '{column}' has type {dtype}, expected {wanted} "
                f"(data.first_occurrence.values is '{cfg['values']}'). Set values to "
                f"'{'date' if as_age else 'age'}' if the table holds "
                f"{'dates' if as_age else 'ages'}, or convert the column."
            )


def _typed_code_values(
    schema: pl.Schema,
    columns: Mapping[str, str],
    as_age: bool,
    formats: list[str],
    file: str,
    rules: Plausibility,
) -> list[pl.Expr]:
    """Per code column: ages as Float64 or dates as datetimes; null where a cell does not parse."""
    if as_age:
        return [
            (
                pl.col(c).cast(pl.Float64)
                if schema[c].is_numeric()
                else pl.col(c).str.strip_chars().cast(pl.Float64, strict=False)
            ).alias(c)
            for c in columns
        ]
    return [
        parse_datetime(
            pl.col(c), schema[c], formats, rules.timezone, f"{file}: column '{c}'"
        ).alias(c)
        for c in columns
    ]


def _parse_code_values(
    frame: pl.DataFrame,
    schema: pl.Schema,
    columns: Mapping[str, str],
    cfg: Mapping[str, Any],
    formats: list[str],
    file: str,
    report: QualityReport,
    rules: Plausibility,
) -> pl.DataFrame:
    """The code columns parsed, plus ``subject_id`` (null where the id is missing).

    Parsed column by column before unpivoting (no text round trip for typed parquet columns);
    a cell that is set but does not parse is counted per column."""
    as_age = cfg["values"] == "age"
    ids = strict_integer(frame, cfg["id_column"], file)
    typed = _typed_code_values(schema, columns, as_age, formats, file, rules)
    raw_counts = frame.select(pl.col(list(columns)).is_not_null().sum())
    wide = frame.select(typed).with_columns(subject_id=ids)
    parsed_counts = wide.select(pl.col(list(columns)).is_not_null().sum())
    _check_code_values(frame, wide, list(columns), as_age, formats, file, rules)
    bad = pl.DataFrame(
        {
            "column": list(columns),
            "n": [r - p for r, p in zip(raw_counts.row(0), parsed_counts.row(0), strict=True)],
        },
        schema={"column": pl.String, "n": pl.Int64},
    )
    report.add(
        "code values read",
        file,
        None,
        int(sum(raw_counts.row(0))),
        "info",
        f"{len(columns)} code columns",
    )
    if as_age:
        _report_by_column(report, "unparseable age", file, bad, "dropped", "not a number of years")
    else:
        _report_by_column(
            report,
            "unparseable date",
            file,
            bad,
            "dropped",
            f"not a date in any of data.date_formats ({', '.join(formats)})",
        )
    return wide


def _melt_codes(
    wide: pl.DataFrame, columns: Mapping[str, str], subjects: pl.DataFrame
) -> pl.DataFrame:
    """One row per set code value: ``subject_id, column, value, code`` and the subject's
    ``birth_time`` and ``birth_period_start`` (rows without an id are left out)."""
    names = pl.DataFrame(
        {"column": list(columns), "code": list(columns.values())},
        schema={"column": pl.String, "code": pl.String},
    )
    return (
        wide.lazy()
        .filter(pl.col("subject_id").is_not_null())
        .unpivot(index="subject_id", on=list(columns), variable_name="column", value_name="value")
        .filter(pl.col("value").is_not_null())
        .join(names.lazy(), on="column")
        .join(
            subjects.lazy().select("subject_id", "birth_time", "birth_period_start"),
            on="subject_id",
        )
        .collect()
    )


def _ages_to_times(
    long: pl.DataFrame, cfg: Mapping[str, Any], file: str, report: QualityReport
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Ages placed in time from the imputed birth (Julian years); returns (dated rows,
    date-unknown rows). Negative ages are unknown dates, ages without a birth are dropped."""
    unknown = _unknown_ages(long, cfg, file, report)
    long = long.filter(pl.col("value") >= 0)
    no_birth = long.filter(pl.col("birth_time").is_null())
    report.count(
        "age without birth",
        no_birth.height,
        file,
        cfg["birth_year_column"],
        "dropped",
        "an age cannot be placed in time without a birth year",
    )
    long = long.filter(pl.col("birth_time").is_not_null())
    micros = (pl.col("value") * 365.25 * 86_400_000_000).round().cast(pl.Int64)
    long = long.with_columns(time=pl.col("birth_time") + pl.duration(microseconds=micros))
    return long, unknown


def _events(
    subjects: pl.DataFrame, long: pl.DataFrame, unknown: pl.DataFrame, cfg: Mapping[str, Any]
) -> pl.LazyFrame:
    """Person events, dated diagnoses and ``DATE_UNKNOWN/<code>`` rows (no time) in the
    MEDS event columns."""
    diagnoses = pl.concat(
        [
            long.select("subject_id", pl.col("time").cast(pl.Datetime("us")), "code"),
            unknown.select(
                "subject_id",
                pl.lit(None, dtype=pl.Datetime("us")).alias("time"),
                (pl.lit(DATE_UNKNOWN_PREFIX) + pl.col("code")).alias("code"),
            ),
        ]
    ).lazy()
    return pl.concat(
        [
            _person_events(subjects, cfg).lazy(),
            diagnoses.with_columns(numeric_value=pl.lit(None, dtype=pl.Float32)),
        ],
        how="vertical_relaxed",
    ).select(
        "subject_id",
        pl.col("time").cast(pl.Datetime("us")),
        "code",
        pl.col("numeric_value").cast(pl.Float32),
    )


def _check_code_values(
    frame: pl.DataFrame,
    wide: pl.DataFrame,
    columns: list[str],
    as_age: bool,
    formats: list[str],
    file: str,
    rules: Plausibility,
) -> None:
    """Stop when at least data.max_unparseable_fraction of all code values do not parse (the
    format is wrong for the table, not for a few cells), naming the worst column."""
    n_set = frame.select(pl.col(columns).is_not_null().sum()).row(0)
    n_ok = wide.select(pl.col(columns).is_not_null().sum()).row(0)
    total, ok = sum(n_set), sum(n_ok)
    if not total or (total - ok) / total < rules.max_unparseable_fraction:
        return
    worst = max(range(len(columns)), key=lambda i: n_set[i] - n_ok[i])
    column = columns[worst]
    raw = frame[column]
    examples = raw.filter(raw.is_not_null() & wide[column].is_null()).head(3).to_list()
    fix = (
        "ages must be numbers of years with a decimal point (72.5, not 72,5); convert them, or "
        "set data.first_occurrence.values to 'date' if the columns hold dates"
        if as_age
        else f"add the columns' format to data.date_formats (now {', '.join(formats)}), or set "
        "data.first_occurrence.values to 'age' if they hold ages"
    )
    raise DataError(
        f"{file}: {total - ok} of {total} code values ({100 * (total - ok) / total:.0f}%) do not "
        f"parse as {'ages' if as_age else 'dates'} (worst column '{column}', e.g. "
        f"{', '.join(repr(v) for v in examples)}); {fix} (data.max_unparseable_fraction "
        f"{rules.max_unparseable_fraction} stops ingest here)."
    )


def _unknown_ages(
    long: pl.DataFrame, cfg: Mapping[str, Any], file: str, report: QualityReport
) -> pl.DataFrame:
    """Rows with a negative age: UK Biobank's -1 (date unknown) and -3 (prefer not to answer)
    and any other negative value; the code is present, its time is not. Counted."""
    special = sorted({float(a) for a in (cfg.get("special_ages") or [])})
    negative = long.filter(pl.col("value") < 0)
    for age in special:
        report.count(
            "special age",
            negative.filter(pl.col("value") == age).height,
            file,
            "code columns",
            "kept as DATE_UNKNOWN/<code>",
            f"age {age:g} (data.first_occurrence.special_ages): code present, date unknown",
        )
    report.count(
        "negative age",
        negative.filter(~pl.col("value").is_in(special)).height,
        file,
        "code columns",
        "kept as DATE_UNKNOWN/<code>",
        "an age below 0 is no time; code present, date unknown",
    )
    return negative


def _special_dates(
    long: pl.DataFrame, cfg: Mapping[str, Any], file: str, report: QualityReport
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Placeholder dates (data.first_occurrence.special_dates): 'unknown' keeps the code
    without a time, 'birth' sets it at birth; and dates in the birth period before the
    imputed birth moved to birth. Returns (dated rows, date-unknown rows), all counted."""
    special: Mapping[str, str] = cfg.get("special_dates") or {}
    for date, what in special.items():
        if what not in ("unknown", "birth"):
            raise DataError(
                f"data.first_occurrence.special_dates: '{date}': '{what}' is not 'unknown' or "
                "'birth' (a dropped placeholder would turn a code carrier into a control)."
            )
    special_days = {dt.date.fromisoformat(d): what for d, what in special.items()}
    day = pl.col("value").dt.date()
    long = long.with_columns(
        _special=day.replace_strict(special_days, default=None, return_dtype=pl.String)
    )
    for date, what in sorted(special_days.items()):
        report.count(
            "special date",
            long.filter(day == date).height,
            file,
            "code columns",
            "kept as DATE_UNKNOWN/<code>" if what == "unknown" else "set to birth",
            f"placeholder date {date} (data.first_occurrence.special_dates)",
        )
    # 'At birth' without a birth year is a code of unknown date as well.
    no_birth = (pl.col("_special") == "birth") & pl.col("birth_time").is_null()
    report.count(
        "special date without birth",
        long.filter(no_birth).height,
        file,
        cfg["birth_year_column"],
        "kept as DATE_UNKNOWN/<code>",
        "a placeholder meaning 'at birth' needs a birth year",
    )
    unknown = long.filter((pl.col("_special") == "unknown") | no_birth)
    long = long.filter(pl.col("_special").is_null() | (pl.col("_special") == "birth") & ~no_birth)
    long = long.with_columns(
        time=pl.when(pl.col("_special") == "birth")
        .then(pl.col("birth_time"))
        .otherwise(pl.col("value"))
    ).filter(pl.col("time").is_not_null())
    # Birth is imputed mid-period; a date in the birth month (year) before it is real.
    in_birth_period = (pl.col("time") < pl.col("birth_time")) & (
        pl.col("time") >= pl.col("birth_period_start")
    )
    report.count(
        "date in birth period before imputed birth",
        long.filter(in_birth_period).height,
        file,
        "code columns",
        "set to birth",
        "birth is imputed as the 15th of the month (1 July if no month)",
    )
    long = long.with_columns(
        time=pl.when(in_birth_period).then(pl.col("birth_time")).otherwise(pl.col("time"))
    )
    return long, unknown


def _person_events(subjects: pl.DataFrame, cfg: Mapping[str, Any]) -> pl.DataFrame:
    """Birth, sex, baseline visit, death and observation-period events of each participant."""
    start = {
        "birth": pl.col("birth_time"),
        "baseline": pl.col("baseline"),
        "first_event": pl.lit(None, dtype=pl.Datetime("us")),
    }[cfg["observation_start"]]
    # Follow-up ends at the configured end date, or at death when that comes first.
    end = pl.when(pl.col("followup_end").is_not_null()).then(
        pl.min_horizontal("followup_end", "death")
    )
    # (code, time); a row is written when both are known, except sex, which is static and
    # may have no time (MEDS static measurement) when the birth year is missing.
    parts = [
        (pl.lit("MEDS_BIRTH"), pl.col("birth_time")),
        ("SEX/" + pl.col("sex"), pl.col("birth_time")),
        (pl.lit(BASELINE_CODE), pl.col("baseline")),
        (pl.lit("MEDS_DEATH"), pl.col("death")),
        (pl.lit("OBSERVATION_PERIOD/START"), start),
        (pl.lit("OBSERVATION_PERIOD/END"), end),
    ]
    frames = []
    for code, time in parts:
        frame = subjects.select(
            "subject_id", time.cast(pl.Datetime("us")).alias("time"), code.alias("code")
        ).filter(pl.col("code").is_not_null())
        if not frame["code"].str.starts_with("SEX/").any():
            frame = frame.filter(pl.col("time").is_not_null())
        frames.append(frame)
    return pl.concat(frames).with_columns(numeric_value=pl.lit(None, dtype=pl.Float32))
