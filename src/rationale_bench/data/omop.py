"""OMOP CDM v5.4 tables -> MEDS-style events and a code-name table.

Tables come from a folder (``person.csv``, ``condition_occurrence.parquet`` or a folder of
parquet parts per table; names and columns case-insensitive) or from a DuckDB database file
(optional ``omop`` extra, imported only when used).

Codes (the first rule that applies):
1. the event's source concept is in an ICD-10 / ICD-10-CM / ICD-9-CM / ATC vocabulary (via
   ``concept``): ``ICD10/<code>``, ``ICD9/<code>``, ``ATC/<code>``;
2. drugs: the standard concept is linked to an ATC concept in ``concept_relationship``
   ('Maps to', 'RxNorm - ATC', ...): ``ATC/<code>`` (one event per linked ATC class);
3. conditions with ``condition_source_vocabulary`` set: the source value read as that
   vocabulary (``F0390`` -> ``ICD10/F03.90``);
4. otherwise ``OMOP/<concept_id>`` (standard concept, else the source concept), counted in
   data_quality.csv; events with neither concept are dropped and counted.
Persons: gender 8507 / 8532 -> ``SEX/M`` / ``SEX/F``; birth from birth_datetime or
year/month/day of birth (missing month -> 1 July, missing day -> the 15th); death ->
``MEDS_DEATH``; visits -> ``VISIT/<kind>``; observation periods -> ``OBSERVATION_PERIOD/START``
and ``/END``; measurement ``value_as_number`` -> ``numeric_value``.

Concept hierarchy: every code of a clinical event gets ``parent_codes`` in codes.parquet (the
MEDS convention): ``OMOP/<standard concept>`` of the events that carry it (so an ICD-10 code
mapped from a source value keeps its SNOMED concept) and, when the CDM has ``concept_ancestor``,
``OMOP/<ancestor>`` for every ancestor of those concepts (the table is already transitive). The
cohort's ``outcome.concept_ids`` then match descendants by looking up parent_codes. A code that
came from several concepts gets the union of their parents.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from rationale_bench.data.quality import (
    EVENTS_SCHEMA,
    DataError,
    MissingColumnsError,
    Plausibility,
    QualityReport,
    check_parse_rate,
    parse_datetime,
    report_timezone,
    require_columns,
    strict_integer,
)

# OMOP vocabulary_id -> our code system.
VOCABULARY_PREFIX = {"ICD10": "ICD10", "ICD10CM": "ICD10", "ICD9CM": "ICD9", "ATC": "ATC"}
DRUG_ATC_RELATIONSHIPS = (
    "Maps to",
    "Mapped from",
    "RxNorm - ATC",
    "ATC - RxNorm",
    "RxNorm - ATC pr lat",
    "ATC - RxNorm pr lat",
)
GENDER = {8507: "M", 8532: "F"}
VISIT_KIND = {
    9201: "INPATIENT",
    9202: "OUTPATIENT",
    9203: "EMERGENCY",
    262: "INPATIENT",  # emergency room and inpatient visit
    581477: "OUTPATIENT",  # office visit
    5083: "TELEHEALTH",
    581458: "PHARMACY",
    32036: "LABORATORY",
}
ICD10_SOURCE = re.compile(r"^[A-Z][0-9]{2}[0-9A-Z]{0,4}$")
ICD9_SOURCE = re.compile(r"^(?:[0-9]{3}|V[0-9]{2}|E[0-9]{3})[0-9]{0,2}$")


@dataclass(frozen=True)
class ClinicalTable:
    """Where an OMOP event table keeps its concept, time, source fields and value."""

    name: str
    concept: str
    date: str
    datetime: str
    source_value: str
    source_concept: str
    value: str | None = None


CLINICAL_TABLES = (
    ClinicalTable(
        "condition_occurrence",
        "condition_concept_id",
        "condition_start_date",
        "condition_start_datetime",
        "condition_source_value",
        "condition_source_concept_id",
    ),
    ClinicalTable(
        "drug_exposure",
        "drug_concept_id",
        "drug_exposure_start_date",
        "drug_exposure_start_datetime",
        "drug_source_value",
        "drug_source_concept_id",
    ),
    ClinicalTable(
        "procedure_occurrence",
        "procedure_concept_id",
        "procedure_date",
        "procedure_datetime",
        "procedure_source_value",
        "procedure_source_concept_id",
    ),
    ClinicalTable(
        "measurement",
        "measurement_concept_id",
        "measurement_date",
        "measurement_datetime",
        "measurement_source_value",
        "measurement_source_concept_id",
        value="value_as_number",
    ),
)
# Tables of events with one code per column: (table, [(date, datetime, code)], and for visits
# the concept column that gives the code instead).
SIMPLE_TABLES = (
    ("death", [("death_date", "death_datetime", "MEDS_DEATH")], None),
    (
        "observation_period",
        [
            ("observation_period_start_date", None, "OBSERVATION_PERIOD/START"),
            ("observation_period_end_date", None, "OBSERVATION_PERIOD/END"),
        ],
        None,
    ),
    (
        "visit_occurrence",
        [("visit_start_date", "visit_start_datetime", "")],
        "visit_concept_id",
    ),
)
EVENT_TABLES = (
    "person",
    "observation_period",
    *(t.name for t in CLINICAL_TABLES),
    "visit_occurrence",
    "death",
)
VOCABULARY_TABLES = ("concept", "concept_relationship", "concept_ancestor")
# Without these there is no cohort; every other table is optional (skipped with a row in
# data_quality.csv when absent, empty, malformed or listed in data.omop.skip_tables).
REQUIRED_TABLES = ("person", "condition_occurrence")
OPTIONAL_TABLES = tuple(t for t in (*EVENT_TABLES, *VOCABULARY_TABLES) if t not in REQUIRED_TABLES)
# What the cohort loses when an optional table is skipped (said in data_quality.csv).
OPTIONAL_LOSS = {
    "death": "no deaths, so non-cases who died are not censored at death",
    "drug_exposure": "no drugs, so anti-dementia drug exclusions cannot apply",
    "observation_period": "follow-up comes from the first and last records",
    "visit_occurrence": "no visits, so the default index (first eligible visit) has no events",
    "concept": "codes are not named and source concepts are not mapped",
    "concept_relationship": "drugs are not mapped to ATC",
    "concept_ancestor": "outcome.concept_ids match only the concepts themselves",
}
OMOP_FIX = "OMOP CDM column names are fixed by the standard: rename the columns in your export"
LINKS_SCHEMA = {"code": pl.String, "concept_id": pl.Int64}


class TableSource:
    """OMOP tables from a folder of CSV/parquet files or a DuckDB database file."""

    def __init__(self, path: str | Path, schema: str | None = None) -> None:
        self.path = Path(path)
        self.schema = schema
        if not self.path.exists():
            raise DataError(
                f"data.omop.path '{self.path}' does not exist; point it at a folder of OMOP CDM "
                "tables or a DuckDB file."
            )
        self._duckdb = None
        if self.path.is_file():
            self._duckdb = _connect_duckdb(self.path)
            self._tables = self._duckdb_tables()
        else:
            self._tables = self._folder_tables()

    def _folder_tables(self) -> dict[str, Path]:
        tables: dict[str, Path] = {}
        for entry in sorted(self.path.iterdir()):
            name = entry.name.lower()
            for suffix in (".csv", ".parquet", ".tsv"):
                if name.endswith(suffix):
                    tables.setdefault(name[: -len(suffix)], entry)
            if entry.is_dir() and any(entry.glob("*.parquet")):
                tables.setdefault(name, entry)
        return tables

    def _duckdb_tables(self) -> dict[str, str]:
        query = "select table_schema, table_name from information_schema.tables"
        rows = self._duckdb.execute(query).fetchall()
        tables: dict[str, str] = {}
        for schema, table in rows:
            if self.schema is None or schema.lower() == self.schema.lower():
                tables.setdefault(table.lower(), f'"{schema}"."{table}"')
        if not tables:
            raise DataError(
                f"{self.path}: no tables found"
                + (f" in schema '{self.schema}'" if self.schema else "")
                + "; set data.omop.schema to the schema of the CDM tables."
            )
        return tables

    def where(self, table: str) -> str:
        """The file (or database table) a table is read from, for messages."""
        found = self._tables[table]
        return f"{self.path}:{found}" if self._duckdb is not None else str(found)

    def has(self, table: str) -> bool:
        return table in self._tables

    def hide(self, tables: set[str]) -> None:
        """Treat ``tables`` as absent (data.omop.skip_tables)."""
        for table in tables:
            self._tables.pop(table, None)

    def read(self, table: str, columns: list[str] | None = None) -> pl.DataFrame:
        """The table with lower-case column names; CSV values as text, empty cells null.

        ``columns`` (lower case) selects them while reading, for large vocabulary tables.
        """
        found = self._tables[table]
        if self._duckdb is not None:
            names = "*"
            if columns:
                have = self._duckdb.sql(f"select * from {found} limit 0").columns
                names = ", ".join(f'"{c}"' for c in have if c.lower() in columns) or "*"
            frame = pl.from_arrow(self._duckdb.sql(f"select {names} from {found}").to_arrow_table())
        elif isinstance(found, Path) and (found.is_dir() or found.suffix.lower() == ".parquet"):
            scan = pl.scan_parquet(found / "*.parquet" if found.is_dir() else found)
            frame = _select_lower(scan, columns).collect()
        else:
            separator = "\t" if found.suffix.lower() == ".tsv" else ","
            scan = pl.scan_csv(found, separator=separator, infer_schema=False)
            frame = _select_lower(scan, columns).collect()
            frame = frame.with_columns(
                pl.when(pl.all().str.strip_chars() != "").then(pl.all()).name.keep()
            )
        return frame.rename({c: c.lower() for c in frame.columns})

    def read_required(
        self, table: str, required: list[str], what: str, columns: list[str] | None = None
    ) -> tuple[str, pl.DataFrame]:
        """Where ``table`` is read from (for messages) and the table, which must hold the
        ``required`` columns (else :class:`MissingColumnsError` naming ``what``)."""
        file = self.where(table)
        frame = self.read(table, columns)
        require_columns(frame.schema, required, file, what, OMOP_FIX)
        return file, frame


def _select_lower(scan: pl.LazyFrame, columns: list[str] | None) -> pl.LazyFrame:
    """The columns whose lower-case names are in ``columns`` (all when None)."""
    if not columns:
        return scan
    return scan.select([c for c in scan.collect_schema().names() if c.lower() in columns])


def _connect_duckdb(path: Path) -> Any:
    try:
        import duckdb
    except ImportError:
        raise DataError(
            f"data.omop.path '{path}' is a file, read as a DuckDB database, but duckdb is not "
            "installed. Install the 'omop' extra: pip install 'rationale-bench[omop]' (or "
            "export the tables to a folder of CSV/parquet files)."
        ) from None
    try:
        return duckdb.connect(str(path), read_only=True)
    except duckdb.Error as error:
        raise DataError(
            f"data.omop.path '{path}' could not be opened as a DuckDB database ({error})."
        ) from None


def _integer(frame: pl.DataFrame, column: str, file: str) -> pl.Series:
    """An Int64 concept/id column (a non-integer value stops the run); missing -> null."""
    if column not in frame.columns:
        return pl.Series(column, [None] * frame.height, dtype=pl.Int64)
    return strict_integer(frame, column, file).alias(column)


def _times(
    frame: pl.DataFrame,
    date: str,
    datetime: str | None,
    formats: list[str],
    file: str,
    report: QualityReport,
    rules: Plausibility | None = None,
) -> pl.Series:
    """Event times from the datetime column when set, else the date; bad ones counted.

    A date column of which at least data.max_unparseable_fraction does not parse stops
    (:func:`check_parse_rate`); zoned datetimes follow data.timezone."""
    rules = rules or Plausibility()
    parts = []
    used = [c for c in (datetime, date) if c and c in frame.columns]
    for column in used:
        dtype = frame.schema[column]
        where = f"{file}: column '{column}'"
        parts.append(parse_datetime(pl.col(column), dtype, formats, rules.timezone, where))
        report_timezone(
            report, dtype, rules.timezone, file, column, int(frame[column].is_not_null().sum())
        )
    times = frame.select(pl.coalesce(parts).alias("time")).to_series()
    check_parse_rate(
        file,
        date,
        frame[date],
        frame.select(parts[-1]).to_series(),
        "dates",
        f"add the column's format to data.date_formats (now {', '.join(formats)})",
        rules.max_unparseable_fraction,
    )
    raw = frame[date].is_not_null()
    if datetime and datetime in frame.columns:
        raw = raw | frame[datetime].is_not_null()
    report.count(
        "unparseable date",
        int((raw & times.is_null()).sum()),
        file,
        date,
        "dropped",
        f"not a date in any of data.date_formats ({', '.join(formats)})",
    )
    report.count("missing date", int((~raw).sum()), file, date, "dropped", "no date")
    return times


def _concepts(source: TableSource, report: QualityReport) -> pl.DataFrame | None:
    if not source.has("concept"):
        report.add(
            "table absent",
            str(source.path),
            "concept",
            0,
            "info",
            "no vocabulary: codes come from source values or stay OMOP/<concept_id>, unnamed",
        )
        return None
    file, frame = source.read_required(
        "concept",
        ["concept_id", "concept_name", "vocabulary_id", "concept_code"],
        "the OMOP concept table",
    )
    return frame.select(
        concept_id=_integer(frame, "concept_id", file),
        concept_name=pl.col("concept_name").cast(pl.String),
        vocabulary_id=pl.col("vocabulary_id").cast(pl.String),
        concept_code=pl.col("concept_code").cast(pl.String),
    ).unique("concept_id", keep="first")


def _drug_atc(
    source: TableSource, concepts: pl.DataFrame | None, report: QualityReport
) -> pl.DataFrame | None:
    """Drug concept -> ATC code links from concept_relationship (both directions)."""
    if concepts is None or not source.has("concept_relationship"):
        return None
    file, frame = source.read_required(
        "concept_relationship",
        ["concept_id_1", "concept_id_2", "relationship_id"],
        "the OMOP concept_relationship table",
    )
    links = frame.select(
        a=_integer(frame, "concept_id_1", file),
        b=_integer(frame, "concept_id_2", file),
        relationship=pl.col("relationship_id").cast(pl.String),
    ).filter(pl.col("relationship").is_in(DRUG_ATC_RELATIONSHIPS))
    both = pl.concat(
        [
            links.select(drug=pl.col("a"), atc_id=pl.col("b")),
            links.select(drug=pl.col("b"), atc_id=pl.col("a")),
        ]
    )
    atc = concepts.filter(pl.col("vocabulary_id") == "ATC").select(
        atc_id="concept_id", code="ATC/" + pl.col("concept_code"), description="concept_name"
    )
    return both.join(atc, on="atc_id").select("drug", "code", "description").unique()


def _normalize_source(values: pl.Expr, vocabulary: str) -> pl.Expr:
    """Source value text -> ``ICD10/F03.90`` / ``ICD9/290.0``; null when it does not parse."""
    bare = values.str.strip_chars().str.to_uppercase().str.replace_all(".", "", literal=True)
    if vocabulary == "ICD10":
        ok = bare.str.contains(ICD10_SOURCE.pattern)
        dotted = pl.when(bare.str.len_chars() > 3).then(
            bare.str.slice(0, 3) + "." + bare.str.slice(3)
        )
    else:
        ok = bare.str.contains(ICD9_SOURCE.pattern)
        head = pl.when(bare.str.starts_with("E")).then(4).otherwise(3)
        dotted = pl.when(bare.str.len_chars() > head).then(
            bare.str.slice(0, head) + "." + bare.str.slice(head)
        )
    return pl.when(ok).then(pl.lit(vocabulary + "/") + dotted.otherwise(bare))


def _clinical_events(
    source: TableSource,
    table: ClinicalTable,
    concepts: pl.DataFrame | None,
    drug_atc: pl.DataFrame | None,
    persons: pl.Series,
    cfg: Mapping[str, Any],
    formats: list[str],
    report: QualityReport,
    rules: Plausibility | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Events, (code, description) rows and (code, concept_id) links of one clinical table.

    A link ties a written code to the standard concept of an event that carries it (for
    ``OMOP/<id>`` codes: the concept itself), for the parent_codes of codes.parquet.
    """
    file, frame = source.read_required(
        table.name, ["person_id", table.concept, table.date], f"OMOP {table.name}"
    )
    report.add("rows read", file, None, frame.height, "info")
    rows = _clinical_rows(frame, table, file, formats, report, rules)
    rows = _known_persons(rows, persons, file, report).with_row_index("_row")
    vocabulary = cfg.get("condition_source_vocabulary")
    mapped = _mapped_codes(rows, table, concepts, drug_atc, vocabulary)
    _report_mapped(report, file, table, mapped, vocabulary)
    fallback = _concept_codes(rows, mapped, table, file, report)
    return _clinical_outputs(rows, mapped, fallback, concepts)


def _numeric_values(
    frame: pl.DataFrame, table: ClinicalTable, file: str, report: QualityReport
) -> pl.Expr | pl.Series:
    """The table's value column as Float32 (measurement ``value_as_number``), else null;
    a value that is not a number is counted and the event kept without it."""
    if not (table.value and table.value in frame.columns):
        return pl.lit(None, dtype=pl.Float32)
    raw = frame[table.value]
    parsed = raw.cast(pl.String).str.strip_chars().cast(pl.Float32, strict=False)
    report.count(
        "unparseable number",
        int((raw.is_not_null() & parsed.is_null()).sum()),
        file,
        table.value,
        "set to null (warning)",
        "not a number; the event is kept without a value",
    )
    return parsed


def _clinical_rows(
    frame: pl.DataFrame,
    table: ClinicalTable,
    file: str,
    formats: list[str],
    report: QualityReport,
    rules: Plausibility | None,
) -> pl.DataFrame:
    """``subject_id, time, concept_id`` (0 when missing), ``source_concept_id, source_value,
    numeric_value`` of the rows with a time."""
    value = _numeric_values(frame, table, file, report)
    rows = pl.DataFrame(
        {
            "subject_id": _integer(frame, "person_id", file),
            "time": _times(frame, table.date, table.datetime, formats, file, report, rules),
            "concept_id": _integer(frame, table.concept, file).fill_null(0),
            "source_concept_id": _integer(frame, table.source_concept, file),
            "source_value": (
                frame[table.source_value].cast(pl.String)
                if table.source_value in frame.columns
                else pl.Series([None] * frame.height, dtype=pl.String)
            ),
        }
    ).with_columns(numeric_value=value)
    return rows.filter(pl.col("time").is_not_null())


def _mapped_codes(
    rows: pl.DataFrame,
    table: ClinicalTable,
    concepts: pl.DataFrame | None,
    drug_atc: pl.DataFrame | None,
    vocabulary: str | None,
) -> pl.DataFrame:
    """``_row, code, description`` of the rows with an ICD10/ICD9/ATC code: through the
    source concept's vocabulary first, then (drugs) ATC links, then (conditions) the source
    value read as data.omop.condition_source_vocabulary; each later step only for rows the
    earlier ones left without a code."""
    named: list[pl.DataFrame] = []
    if concepts is not None:
        named.append(_vocabulary_codes(rows, concepts))
    if table.name == "drug_exposure" and drug_atc is not None:
        named.append(_atc_codes(_not_yet_mapped(rows, named), drug_atc))
    if table.name == "condition_occurrence" and vocabulary:
        named.append(_source_value_codes(_not_yet_mapped(rows, named), vocabulary))
    if not named:
        return pl.DataFrame(schema={"_row": pl.UInt32, "code": pl.String, "description": pl.String})
    return pl.concat(named, how="vertical_relaxed")


def _not_yet_mapped(rows: pl.DataFrame, named: list[pl.DataFrame]) -> pl.DataFrame:
    """The rows that no frame in ``named`` has given a code yet."""
    done = pl.concat(named).select("_row") if named else pl.DataFrame(schema={"_row": pl.UInt32})
    return rows.join(done, on="_row", how="anti")


def _vocabulary_codes(rows: pl.DataFrame, concepts: pl.DataFrame) -> pl.DataFrame:
    """Rows whose source concept is in an ICD-10 / ICD-10-CM / ICD-9-CM / ATC vocabulary."""
    vocab = concepts.filter(pl.col("vocabulary_id").is_in(list(VOCABULARY_PREFIX))).select(
        source_concept_id="concept_id",
        code=pl.col("vocabulary_id").replace_strict(VOCABULARY_PREFIX)
        + "/"
        + pl.col("concept_code"),
        description="concept_name",
    )
    return rows.join(vocab, on="source_concept_id").select("_row", "code", "description")


def _atc_codes(rows: pl.DataFrame, drug_atc: pl.DataFrame) -> pl.DataFrame:
    """Drug rows whose standard concept is linked to ATC classes (one row per class)."""
    return rows.join(drug_atc, left_on="concept_id", right_on="drug").select(
        "_row", "code", "description"
    )


def _source_value_codes(rows: pl.DataFrame, vocabulary: str) -> pl.DataFrame:
    """Condition rows whose source value reads as a ``vocabulary`` code (no description)."""
    return (
        rows.select("_row", code=_normalize_source(pl.col("source_value"), vocabulary))
        .filter(pl.col("code").is_not_null())
        .with_columns(description=pl.lit(None, dtype=pl.String))
    )


def _report_mapped(
    report: QualityReport,
    file: str,
    table: ClinicalTable,
    mapped: pl.DataFrame,
    vocabulary: str | None,
) -> None:
    """The info row of how many events got an ICD10/ICD9/ATC code, and through what."""
    report.add(
        "mapped to ICD10/ICD9/ATC",
        file,
        table.concept,
        mapped.select(pl.col("_row").n_unique()).item(),
        "info",
        "through the source concept's vocabulary"
        + (", 'Maps to' links to ATC" if table.name == "drug_exposure" else "")
        + (
            f", source values read as {vocabulary}"
            if table.name == "condition_occurrence" and vocabulary
            else ""
        ),
    )


def _concept_codes(
    rows: pl.DataFrame, mapped: pl.DataFrame, table: ClinicalTable, file: str, report: QualityReport
) -> pl.DataFrame:
    """The rows left without a mapped code, as ``OMOP/<concept>`` (standard concept, else the
    source concept) in ``code`` and ``concept``; rows with neither are dropped and counted,
    and a table in which no row has a code stops."""
    rest = rows.join(mapped.select("_row").unique(), on="_row", how="anti")
    fallback = rest.with_columns(
        concept=pl.when(pl.col("concept_id") != 0)
        .then(pl.col("concept_id"))
        .when(pl.col("source_concept_id").fill_null(0) != 0)
        .then(pl.col("source_concept_id"))
    )
    no_concept = fallback.filter(pl.col("concept").is_null())
    if rows.height and no_concept.height == rows.height:
        raise DataError(
            f"{file}: column '{table.concept}': all {rows.height} rows have concept_id 0 and no "
            f"source concept or readable source value, so no event of {table.name} has a code. "
            "Map the concepts in your ETL, or (conditions) set "
            "data.omop.condition_source_vocabulary to read condition_source_value as ICD10 or "
            "ICD9."
        )
    report.count(
        "no concept",
        no_concept.height,
        file,
        table.concept,
        "dropped",
        "concept_id 0 and no source concept or mappable source value",
    )
    fallback = fallback.filter(pl.col("concept").is_not_null())
    report.count(
        "unmapped concept",
        fallback.height,
        file,
        table.concept,
        "kept as OMOP/<concept_id>",
        "no ICD10/ICD9/ATC code through the vocabulary or source value",
    )
    return fallback.with_columns(code="OMOP/" + pl.col("concept").cast(pl.String))


def _clinical_outputs(
    rows: pl.DataFrame,
    mapped: pl.DataFrame,
    fallback: pl.DataFrame,
    concepts: pl.DataFrame | None,
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Events, (code, description) rows and (code, concept_id) links of the mapped rows and
    the ``OMOP/<concept>`` rows."""
    names = []
    if concepts is not None:
        names.append(_concept_names(fallback.select("code", concept_id="concept"), concepts))
    with_code = rows.join(mapped.select("_row", "code"), on="_row")
    events = pl.concat(
        [with_code.select(list(EVENTS_SCHEMA)), fallback.select(list(EVENTS_SCHEMA))],
        how="vertical_relaxed",
    )
    codes = pl.concat(
        [mapped.select("code", "description"), *names], how="vertical_relaxed"
    ).unique()
    links = pl.concat(
        [
            with_code.filter(pl.col("concept_id") != 0).select("code", "concept_id"),
            fallback.select("code", concept_id="concept"),
        ],
        how="vertical_relaxed",
    ).unique()
    return events, codes, links.cast(LINKS_SCHEMA)


def _concept_names(pairs: pl.DataFrame, concepts: pl.DataFrame) -> pl.DataFrame:
    """``code, description`` of (code, concept_id) pairs: the concept's name, for the pairs
    whose concept is in the concept table."""
    return (
        pairs.unique()
        .join(concepts.select("concept_id", description="concept_name"), on="concept_id")
        .select("code", "description")
    )


def _ancestors(
    source: TableSource, concept_ids: pl.Series, report: QualityReport
) -> pl.DataFrame | None:
    """(concept_id, ancestor_id) pairs from concept_ancestor for ``concept_ids``, self excluded.

    Only the two id columns are read and only the rows of concepts in the data are kept, so
    a full vocabulary's concept_ancestor (tens of millions of rows) is not held as text.
    """
    if not source.has("concept_ancestor"):
        report.add(
            "table absent",
            str(source.path),
            "concept_ancestor",
            0,
            "info",
            "no concept hierarchy: outcome.concept_ids match the concepts themselves "
            "(and codes mapped from them), not their descendants",
        )
        return None
    wanted = ["ancestor_concept_id", "descendant_concept_id"]
    file, frame = source.read_required(
        "concept_ancestor", wanted, "the OMOP concept_ancestor table", columns=wanted
    )
    pairs = (
        frame.select(
            concept_id=_integer(frame, "descendant_concept_id", file),
            ancestor_id=_integer(frame, "ancestor_concept_id", file),
        )
        .filter(
            pl.col("concept_id").is_in(concept_ids.implode())
            & (pl.col("concept_id") != pl.col("ancestor_id"))
        )
        .unique()
    )
    report.add(
        "concept ancestry read",
        file,
        None,
        pairs.height,
        "info",
        f"ancestor links of {pairs['concept_id'].n_unique()} concepts in the data "
        "(parent_codes of codes.parquet)",
    )
    return pairs


def parent_codes(links: pl.DataFrame, ancestry: pl.DataFrame | None) -> pl.DataFrame:
    """``code, parent_codes``: each code's concepts and their ancestors as ``OMOP/<id>``.

    A code is never its own parent (``OMOP/<id>`` and its concept id are the same thing).
    """
    parents = [links.select("code", parent="concept_id")]
    if ancestry is not None:
        parents.append(links.join(ancestry, on="concept_id").select("code", parent="ancestor_id"))
    return (
        pl.concat(parents)
        .with_columns(parent=pl.lit("OMOP/") + pl.col("parent").cast(pl.String))
        .filter(pl.col("parent") != pl.col("code"))
        .group_by("code")
        .agg(parent_codes=pl.col("parent").unique().sort())
    )


def _known_persons(
    rows: pl.DataFrame, persons: pl.Series, file: str, report: QualityReport
) -> pl.DataFrame:
    known = rows["subject_id"].is_in(persons.implode())
    report.count(
        "person not in person table",
        int((~known).sum()),
        file,
        "person_id",
        "dropped",
        "events of a person_id the person table does not list",
    )
    return rows.filter(known)


def _persons(
    source: TableSource,
    formats: list[str],
    report: QualityReport,
    sex_values: Mapping[str, str] | None = None,
) -> tuple[pl.DataFrame, pl.Series]:
    """Birth and sex events of the person table, and the person ids."""
    if not source.has("person"):
        raise DataError(
            f"{source.path}: the OMOP person table is missing (person.csv, person.parquet or "
            "a person table in the DuckDB file); every OMOP dataset needs one."
        )
    file, frame = source.read_required(
        "person", ["person_id", "gender_concept_id", "year_of_birth"], "OMOP person"
    )
    if frame.height == 0:
        raise DataError(f"{file}: the person table has no rows.")
    report.add("rows read", file, None, frame.height, "info")
    ids = _person_ids(frame, file)
    sex = _sex_of_persons(frame, file, report, sex_values)
    birth = _birth_times(frame, formats, file, report)
    people = pl.DataFrame({"subject_id": ids, "birth": birth.cast(pl.Datetime("us")), "sex": sex})
    events = pl.concat(
        [
            people.filter(pl.col("birth").is_not_null()).select(
                "subject_id", time="birth", code=pl.lit("MEDS_BIRTH")
            ),
            people.filter(pl.col("sex").is_not_null()).select(
                "subject_id", time="birth", code="SEX/" + pl.col("sex")
            ),
        ]
    ).with_columns(numeric_value=pl.lit(None, dtype=pl.Float32))
    return events, ids


def _person_ids(frame: pl.DataFrame, file: str) -> pl.Series:
    """``person_id``; a missing or repeated id stops (events are joined to persons by it)."""
    ids = _integer(frame, "person_id", file)
    if ids.is_null().any():
        raise DataError(
            f"{file}: column 'person_id' is empty in {int(ids.is_null().sum())} rows; every "
            "person needs an id."
        )
    duplicated = ids.is_duplicated()
    if duplicated.any():
        raise DataError(
            f"{file}: column 'person_id' has {int(duplicated.sum())} rows that share an id "
            f"(e.g. {ids.filter(duplicated).unique().sort().head(5).to_list()}); the person table "
            "needs one row per person."
        )
    return ids


def _sex_of_persons(
    frame: pl.DataFrame, file: str, report: QualityReport, sex_values: Mapping[str, str] | None
) -> pl.Series:
    """``M`` / ``F`` of gender_concept_id (8507 / 8532 and data.sex_values); others null,
    counted with the concepts seen."""
    gender = _integer(frame, "gender_concept_id", file)
    # data.sex_values maps further gender concepts ({"45878463": F}); keys are text.
    mapping = {**GENDER}
    for key, letter in (sex_values or {}).items():
        if str(key).strip().isdigit():
            mapping[int(key)] = letter
    sex = gender.replace_strict(mapping, default=None, return_dtype=pl.String)
    unknown = gender.filter(sex.is_null()).drop_nulls().unique().sort().head(5).to_list()
    report.count(
        "unknown gender concept",
        int(sex.is_null().sum()),
        file,
        "gender_concept_id",
        "kept (warning)",
        f"not 8507 (male) or 8532 (female) (seen: {unknown}); no SEX/ event, the cohort "
        "excludes these persons; map other concepts with data.sex_values",
    )
    return sex


def _birth_times(
    frame: pl.DataFrame, formats: list[str], file: str, report: QualityReport
) -> pl.Series:
    """birth_datetime when it parses, else year/month/day of birth; missing or impossible
    ones null, counted."""

    def number(column: str) -> pl.Expr:
        if column not in frame.columns:
            return pl.lit(None, dtype=pl.Int32)
        return pl.col(column).cast(pl.String).str.strip_chars().cast(pl.Int32, strict=False)

    # Missing month -> 1 July; missing day -> the 15th; an impossible date gives no birth.
    month, day = number("month_of_birth"), number("day_of_birth")
    text = pl.format(
        "{}-{}-{}",
        number("year_of_birth"),
        month.fill_null(7).cast(pl.String).str.zfill(2),
        pl.when(month.is_null()).then(1).otherwise(day.fill_null(15)).cast(pl.String).str.zfill(2),
    )
    from_parts = frame.select(
        text.str.to_datetime("%Y-%m-%d", strict=False, time_unit="us")
    ).to_series()
    birth = from_parts
    if "birth_datetime" in frame.columns:
        exact = frame.select(
            parse_datetime(pl.col("birth_datetime"), frame.schema["birth_datetime"], formats)
        ).to_series()
        birth = exact.fill_null(from_parts)
    report.count(
        "missing or impossible birth date",
        int(birth.is_null().sum()),
        file,
        "year_of_birth",
        "kept (warning)",
        "no MEDS_BIRTH; the cohort excludes these persons",
    )
    return birth


def _simple_events(
    source: TableSource,
    table: str,
    columns: list[tuple[str, str | None, str]],
    persons: pl.Series,
    formats: list[str],
    report: QualityReport,
    concept_column: str | None = None,
    concepts: pl.DataFrame | None = None,
    rules: Plausibility | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Events of death, observation_period or visit_occurrence (code per (date, datetime))."""
    if not source.has(table):
        report.add("table absent", str(source.path), table, 0, "info", "no events of this kind")
        return pl.DataFrame(schema=EVENTS_SCHEMA), _empty_codes()
    required = ["person_id", *(date for date, _, _ in columns)]
    if concept_column:
        required.append(concept_column)
    file, frame = source.read_required(table, required, f"OMOP {table}")
    report.add("rows read", file, None, frame.height, "info")
    ids = _integer(frame, "person_id", file)
    codes = _empty_codes()
    if concept_column:
        code, codes = _visit_codes(frame, concept_column, file, concepts)
    frames = []
    for date, datetime, fixed in columns:
        times = _times(frame, date, datetime, formats, file, report, rules)
        codes_here = code if concept_column else pl.Series("code", [fixed] * frame.height)
        part = pl.DataFrame({"subject_id": ids, "time": times, "code": codes_here})
        frames.append(part.filter(pl.col("time").is_not_null()))
    events = pl.concat(frames).with_columns(numeric_value=pl.lit(None, dtype=pl.Float32))
    return _known_persons(events, persons, file, report), codes


def _empty_codes() -> pl.DataFrame:
    """No (code, description) rows."""
    return pl.DataFrame(schema={"code": pl.String, "description": pl.String})


def _visit_codes(
    frame: pl.DataFrame, concept_column: str, file: str, concepts: pl.DataFrame | None
) -> tuple[pl.Series, pl.DataFrame]:
    """``VISIT/<kind>`` per row (VISIT_KIND, else ``VISIT/<concept_id>``, else
    ``VISIT/OTHER``), and the names of the ``VISIT/<concept_id>`` codes."""
    concept = _integer(frame, concept_column, file).fill_null(0)
    kind = concept.replace_strict(VISIT_KIND, default=None, return_dtype=pl.String)
    code = pl.Series(
        "code",
        pl.select(
            pl.when(kind.is_not_null())
            .then("VISIT/" + kind)
            .when(concept != 0)
            .then("VISIT/" + concept.cast(pl.String))
            .otherwise(pl.lit("VISIT/OTHER"))
        ).to_series(),
    )
    if concepts is None:
        return code, _empty_codes()
    pairs = pl.DataFrame({"code": code, "concept_id": concept}).filter(
        ~pl.col("concept_id").is_in(list(VISIT_KIND))
    )
    return code, _concept_names(pairs, concepts)


def _skip_list(cfg: Mapping[str, Any], source: TableSource, report: QualityReport) -> set[str]:
    """data.omop.skip_tables, checked: only optional tables can be skipped."""
    skip = {str(t).lower() for t in (cfg.get("skip_tables") or [])}
    for table in sorted(skip):
        if table in REQUIRED_TABLES:
            raise DataError(
                f"data.omop.skip_tables lists '{table}', which is required "
                f"({', '.join(REQUIRED_TABLES)}); remove it from the list."
            )
        if table not in OPTIONAL_TABLES:
            raise DataError(
                f"data.omop.skip_tables lists '{table}', which is not an OMOP table this ingest "
                f"reads; choose from {', '.join(OPTIONAL_TABLES)}."
            )
        report.add("table skipped", str(source.path), table, 0, "skipped", "data.omop.skip_tables")
    return skip


def _optional(source: TableSource, table: str, report: QualityReport, build, fallback):
    """``build()`` for an optional table. One that is empty (no data rows, whatever its
    header) or malformed (columns it needs are missing: generic names such as column0) is
    skipped with a warning row that says what is lost; data.omop.skip_tables makes the skip
    explicit. Bad values in a well-formed table (ids that are not integers, a date column that
    does not parse) still stop: those tables hold data the cohort would read wrongly.
    """
    try:
        return build()
    except (DataError, pl.exceptions.PolarsError) as error:
        if table in REQUIRED_TABLES:
            raise
        if isinstance(error, MissingColumnsError) or _is_empty(source, table):
            report.add(
                "optional table skipped",
                source.where(table),
                table,
                0,
                "skipped (warning)",
                f"{str(error).splitlines()[0][:300]} The {table} table is left out: "
                f"{OPTIONAL_LOSS.get(table, 'its events are missing')}. Fix the table, or list it "
                "in data.omop.skip_tables to skip it on purpose.",
            )
            return fallback
        raise DataError(
            f"{str(error).rstrip('.')}. '{table}' is an optional table: to ingest without it, "
            f"add it to data.omop.skip_tables."
        ) from None


def _is_empty(source: TableSource, table: str) -> bool:
    try:
        return source.read(table).height == 0
    except (DataError, pl.exceptions.PolarsError, OSError):
        return False


def omop_events(
    cfg: Mapping[str, Any],
    formats: list[str],
    report: QualityReport,
    rules: Plausibility | None = None,
) -> tuple[pl.LazyFrame, pl.DataFrame]:
    """MEDS-style events (not yet checked by clean_events) and code names of an OMOP CDM.

    person and condition_occurrence are required; every other table is optional: absent,
    empty or listed in data.omop.skip_tables means skipped with a row in data_quality.csv;
    one with data rows that cannot be read stops, naming skip_tables."""
    source, skip = _open_source(cfg, report)
    rules = rules or Plausibility()
    person_events, persons = _persons(source, formats, report, rules.sex_values)
    concepts = _optional(source, "concept", report, lambda: _concepts(source, report), None)
    drug_atc = _optional(
        source, "concept_relationship", report, lambda: _drug_atc(source, concepts, report), None
    )

    def clinical(table: ClinicalTable) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
        return _clinical_events(
            source, table, concepts, drug_atc, persons, cfg, formats, report, rules
        )

    def simple(
        table: str, columns: list[tuple[str, str | None, str]], concept_column: str | None
    ) -> tuple[pl.DataFrame, pl.DataFrame]:
        return _simple_events(
            source, table, columns, persons, formats, report, concept_column, concepts, rules
        )

    events, codes, links = _all_clinical_events(source, skip, report, clinical)
    simple_events, simple_codes = _all_simple_events(source, skip, report, simple)
    all_events = pl.concat(
        [
            e.select(list(EVENTS_SCHEMA)).cast(EVENTS_SCHEMA)
            for e in [person_events, *events, *simple_events]
        ],
        how="vertical",
    )
    codes = [*codes, *simple_codes]
    all_codes = pl.concat(codes, how="vertical_relaxed") if codes else _empty_codes()
    return all_events.lazy(), _with_parent_codes(source, all_codes, links, report)


def _open_source(cfg: Mapping[str, Any], report: QualityReport) -> tuple[TableSource, set[str]]:
    """The CDM's tables less data.omop.skip_tables (returned too); stops without the
    condition_occurrence table."""
    if not cfg.get("path"):
        raise DataError("data.omop.path is not set; point it at your OMOP CDM tables.")
    source = TableSource(cfg["path"], cfg.get("schema"))
    skip = _skip_list(cfg, source, report)
    source.hide(skip)
    if not source.has("condition_occurrence"):
        raise DataError(
            f"{source.path}: the OMOP condition_occurrence table is missing "
            "(condition_occurrence.csv, .parquet, a folder of parquet parts, or a table in the "
            "DuckDB file); diagnoses, and so the outcome, come from it."
        )
    return source, skip


def _all_clinical_events(
    source: TableSource,
    skip: set[str],
    report: QualityReport,
    events_of: Callable[[ClinicalTable], tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]],
) -> tuple[list[pl.DataFrame], list[pl.DataFrame], pl.DataFrame]:
    """Events and code names of each clinical table there is, and the (code, concept_id)
    links of all of them."""
    events, codes = [], []
    links = [pl.DataFrame(schema=LINKS_SCHEMA)]
    for table in CLINICAL_TABLES:
        if not source.has(table.name):
            if table.name not in skip:
                report.add(
                    "table absent", str(source.path), table.name, 0, "info", "no such events"
                )
            continue
        result = _optional(source, table.name, report, lambda t=table: events_of(t), None)
        if result is None:
            continue
        events.append(result[0])
        codes.append(result[1])
        links.append(result[2])
    return events, codes, pl.concat(links).unique()


def _all_simple_events(
    source: TableSource,
    skip: set[str],
    report: QualityReport,
    events_of: Callable[..., tuple[pl.DataFrame, pl.DataFrame]],
) -> tuple[list[pl.DataFrame], list[pl.DataFrame]]:
    """Events and code names of death, observation_period and visit_occurrence."""
    events, codes = [], []
    for table, columns, concept_column in SIMPLE_TABLES:
        if table in skip:
            continue
        table_events, table_codes = _optional(
            source,
            table,
            report,
            lambda table=table, columns=columns, concept_column=concept_column: events_of(
                table, columns, concept_column
            ),
            (pl.DataFrame(schema=EVENTS_SCHEMA), _empty_codes()),
        )
        events.append(table_events)
        codes.append(table_codes)
    return events, codes


def _with_parent_codes(
    source: TableSource, codes: pl.DataFrame, links: pl.DataFrame, report: QualityReport
) -> pl.DataFrame:
    """The code names with the parent_codes of each code (concept_ancestor when there is one)."""
    ancestry = _optional(
        source,
        "concept_ancestor",
        report,
        lambda: _ancestors(source, links["concept_id"].unique(), report),
        None,
    )
    # Full join: a code with parents but no name (no concept table) is still listed.
    return codes.join(parent_codes(links, ancestry), on="code", how="full", coalesce=True)
