"""First-occurrence (UK-Biobank-style wide table) adapter: events, counts and bad input."""

from __future__ import annotations

import copy

import polars as pl
import pytest
import yaml
from workflow_helpers import REPO

from rationale_bench.cohort.build import build_cohort
from rationale_bench.data.ingest import ingest
from rationale_bench.data.quality import DataError


def defaults() -> dict:
    """The schema's defaults of data.first_occurrence (so the tests follow the schema)."""
    schema = yaml.safe_load((REPO / "schemas" / "config.schema.yaml").read_text())
    data = schema["properties"]["data"]["properties"]
    props = data["first_occurrence"]["properties"]
    return {
        "source": "first_occurrence",
        "date_formats": data["date_formats"]["default"],
        "extra_vocabularies": [],
        "first_occurrence": {key: spec["default"] for key, spec in props.items()},
    }


TABLE = {
    "eid": ["1", "2", "3", "4", "5"],
    "birth_year": ["1940", "1945", "x", "1950", "1938"],
    "birth_month": ["3", "", "", "13", "12"],
    "sex": ["0", "1", "1", "2", "0"],
    "baseline_date": ["2008-05-01", "2009-01-02", "2010-01-01", "", "2009-06-30"],
    "death_date": ["", "", "", "", "2012-01-01"],
    "F03": ["2015-01-01", "", "", "", "2011-02-01"],
    "I10": ["1990-01-01", "1900-01-01", "2000-01-01", "bad", "2013-05-05"],
    "ICD10_E11": ["1940-03-02", "1902-02-02", "", "", "1930-01-01"],
    "note": ["a", "", "", "", ""],
}

EXPECTED = [
    (1, "1940-03-15", "ICD10/E11"),  # 1940-03-02: in the birth month, moved to birth
    (1, "1940-03-15", "MEDS_BIRTH"),
    (1, "1940-03-15", "OBSERVATION_PERIOD/START"),
    (1, "1940-03-15", "SEX/F"),
    (1, "1990-01-01", "ICD10/I10"),
    (1, "2008-05-01", "VISIT/ASSESSMENT"),
    (1, "2015-01-01", "ICD10/F03"),
    (1, "2022-10-31", "OBSERVATION_PERIOD/END"),
    # 1902-02-02 and 1900-01-01 are UK Biobank placeholders: code present, date unknown
    (2, None, "DATE_UNKNOWN/ICD10/E11"),
    (2, None, "DATE_UNKNOWN/ICD10/I10"),
    (2, "1945-07-01", "MEDS_BIRTH"),
    (2, "1945-07-01", "OBSERVATION_PERIOD/START"),
    (2, "1945-07-01", "SEX/M"),
    (2, "2009-01-02", "VISIT/ASSESSMENT"),
    (2, "2022-10-31", "OBSERVATION_PERIOD/END"),
    (3, None, "SEX/M"),  # no usable birth year: sex stays, static, without time (MEDS: first)
    (3, "2000-01-01", "ICD10/I10"),
    (3, "2010-01-01", "VISIT/ASSESSMENT"),
    (3, "2022-10-31", "OBSERVATION_PERIOD/END"),
    (4, "1950-07-01", "MEDS_BIRTH"),
    (4, "1950-07-01", "OBSERVATION_PERIOD/START"),
    (4, "2022-10-31", "OBSERVATION_PERIOD/END"),
    (5, None, "DATE_UNKNOWN/ICD10/E11"),  # 1930-01-01, before birth: date implausible
    (5, "1938-12-15", "MEDS_BIRTH"),
    (5, "1938-12-15", "OBSERVATION_PERIOD/START"),
    (5, "1938-12-15", "SEX/F"),
    (5, "2009-06-30", "VISIT/ASSESSMENT"),
    (5, "2011-02-01", "ICD10/F03"),
    (5, "2012-01-01", "MEDS_DEATH"),
    (5, "2012-01-01", "OBSERVATION_PERIOD/END"),  # death before the follow-up end
]

GOLDEN_QUALITY = [
    ("rows read", None, 5, "info"),
    ("column not used", "note", 1, "ignored (warning)"),
    ("unparseable or impossible birth year", "birth_year", 1, "set to null (warning)"),
    ("unparseable birth month", "birth_month", 1, "set to null (warning)"),
    ("unknown sex value", "sex", 1, "kept (warning)"),
    ("missing baseline date", "baseline_date", 1, "kept (warning)"),
    ("code values read", None, 10, "info"),
    ("unparseable date", "I10", 1, "dropped"),
    ("special date", "code columns", 1, "kept as DATE_UNKNOWN/<code>"),
    ("special date", "code columns", 1, "kept as DATE_UNKNOWN/<code>"),
    ("date in birth period before imputed birth", "code columns", 1, "set to birth"),
    ("extraction date", "time", 0, "info"),
    ("events checked", None, 31, "info"),
    ("event after death", "time", 1, "dropped"),
    ("event before birth", "time", 1, "dropped"),
    ("code kept with unknown date", "time", 1, "kept as DATE_UNKNOWN/<code>"),
    ("subject without birth", "code", 1, "kept (warning)"),
    ("subject without sex", "code", 1, "kept (warning)"),
    ("events written", None, 30, "info"),
]


def run(tmp_path, table=TABLE, suffix="csv", **settings):
    path = tmp_path / f"fo.{suffix}"
    frame = pl.DataFrame(table)
    if suffix == "csv":
        frame.write_csv(path)
    else:
        frame.write_parquet(path)
    data = defaults()
    data["first_occurrence"].update(
        path=str(path),
        birth_month_column="birth_month",
        death_date_column="death_date",
        followup_end="2022-10-31",
    )
    data["first_occurrence"].update(settings)
    out = tmp_path / "out"
    ingest(data, out / "events.parquet", out / "codes.parquet", out / "data_quality.csv")
    return (
        pl.read_parquet(out / "events.parquet"),
        pl.read_parquet(out / "codes.parquet"),
        pl.read_csv(out / "data_quality.csv"),
    )


def rows(events: pl.DataFrame) -> list[tuple]:
    return [
        (s, None if t is None else t.strftime("%Y-%m-%d"), c)
        for s, t, c in events.select("subject_id", "time", "code").iter_rows()
    ]


def test_wide_table_becomes_meds_events(tmp_path):
    events, codes, quality = run(tmp_path)
    assert events.schema == pl.Schema(
        {
            "subject_id": pl.Int64,
            "time": pl.Datetime("us"),
            "code": pl.String,
            "numeric_value": pl.Float32,
        }
    )
    assert rows(events) == EXPECTED
    assert codes.schema == pl.Schema(
        {"code": pl.String, "description": pl.String, "parent_codes": pl.List(pl.String)}
    )
    assert codes.height == 0
    golden = [
        (r["check"], r["column"], r["n_rows"], r["action"]) for r in quality.iter_rows(named=True)
    ]
    assert golden == GOLDEN_QUALITY
    assert quality.columns == ["check", "file", "column", "n_rows", "action", "detail"]


def test_ages_parquet_and_the_cohort_indexes_on_the_baseline(tmp_path):
    table = {
        "eid": [10, 11],
        "birth_year": [1930, 1935],
        "sex": ["F", "M"],
        "baseline_date": ["2000-07-01", "2001-07-01"],
        "F03": [72.5, None],  # 72.5 years after 1 July 1930
        "I10": [60.0, 50.25],
    }
    events, _, quality = run(
        tmp_path,
        table,
        suffix="parquet",
        values="age",
        birth_month_column=None,
        death_date_column=None,
        followup_end="2012-01-01",
    )
    f03 = events.filter(pl.col("code") == "ICD10/F03")
    assert rows(f03) == [(10, "2002-12-30", "ICD10/F03")]
    i10 = events.filter(pl.col("code") == "ICD10/I10")["time"].dt.strftime("%Y-%m-%d").to_list()
    assert i10 == ["1990-07-01", "1985-09-29"]
    cohort, attrition = build_cohort(
        events,
        {
            "min_age": 65,
            "min_prior_observation_days": 730,
            "horizon_days": 1826,
            "index": {"event_prefixes": ["VISIT/"]},
            "outcome": {"code_prefixes": ["ICD10/F03"]},
            "exclusion": {"drug_prefixes": []},
            "split": {"seed": 1, "tuning_fraction": 0.1, "held_out_fraction": 0.3},
        },
        check_splits=False,
    )
    # Index = baseline assessment; subject 10 is a case (F03 in the window), 11 a non-case
    # observed to the follow-up end (2012-01-01 > 2001-07-01 + 5 years).
    assert cohort.select("subject_id", "label").rows() == [(10, True), (11, False)]
    assert cohort["index_time"].dt.strftime("%Y-%m-%d").to_list() == ["2000-07-01", "2001-07-01"]
    assert attrition["n_subjects"][0] == 2
    assert "unparseable age" not in quality["check"].to_list()


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda t: t.update(eid=["1", "2", "2", "4", "4"]),
            r"fo\.csv: column 'eid' has 4 rows that share an id with another row "
            r"\(e\.g\. \[2, 4\]\)",
        ),
        (
            lambda t: t.pop("baseline_date"),
            r"fo\.csv: column\(s\) 'baseline_date' missing; data\.first_occurrence needs them",
        ),
        (
            lambda t: t.update(eid=["1", "2", "x3", "4", "5"]),
            r"fo\.csv: column 'eid' has 1 values that are not integers \(e\.g\. 'x3'\)",
        ),
        (
            lambda t: t.update(sex=["w", "x", "w", "x", "w"]),
            r"no value of column 'sex' is listed in data\.first_occurrence\.sex_values",
        ),
        (
            lambda t: [t.pop(c) for c in ("F03", "I10", "ICD10_E11")],
            r"fo\.csv: no column name matches data\.first_occurrence\.code_column_regex",
        ),
        (
            lambda t: [v.clear() for v in t.values()],
            r"fo\.csv: the table has no rows",
        ),
    ],
)
def test_bad_tables_stop_naming_file_column_and_count(tmp_path, change, message):
    table = copy.deepcopy(TABLE)
    change(table)
    with pytest.raises(DataError, match=message):
        run(tmp_path, table)


def test_wrong_type_of_code_column_stops(tmp_path):
    table = {
        "eid": [1],
        "birth_year": [1940],
        "sex": [0],
        "baseline_date": ["2008-01-01"],
        "F03": [71.5],
    }
    with pytest.raises(DataError, match=r"code column 'F03' has type Float64, expected a date"):
        run(tmp_path, table, suffix="parquet", birth_month_column=None, death_date_column=None)


def test_explicit_code_columns(tmp_path):
    table = {
        "eid": [1],
        "birth_year": [1940],
        "sex": [0],
        "baseline_date": ["2008-01-01"],
        "p130836": ["2010-05-05"],
        "p131286": ["2001-01-01"],
    }
    events, _, quality = run(
        tmp_path,
        table,
        suffix="parquet",
        birth_month_column=None,
        death_date_column=None,
        code_columns={"p130836": "F03", "p131286": "I10"},
    )
    assert events.filter(pl.col("code").str.starts_with("ICD10/"))["code"].to_list() == [
        "ICD10/I10",
        "ICD10/F03",
    ]
    assert "column not used" not in quality["check"].to_list()


def test_followup_end_column_ends_observation_at_each_date_or_at_death(tmp_path):
    table = copy.deepcopy(TABLE)
    table["fu"] = ["2020-01-01", "bad", "", "2021-05-05", "2019-01-01"]
    events, _, quality = run(tmp_path, table, followup_end="fu")
    ends = events.filter(pl.col("code") == "OBSERVATION_PERIOD/END")
    # 2: the end date does not parse; 3: no end date; 5: died (2012) before the end date.
    assert rows(ends) == [
        (1, "2020-01-01", "OBSERVATION_PERIOD/END"),
        (4, "2021-05-05", "OBSERVATION_PERIOD/END"),
        (5, "2012-01-01", "OBSERVATION_PERIOD/END"),
    ]
    bad = quality.filter(pl.col("check") == "unparseable follow-up end date")
    assert bad.select("column", "n_rows", "action").rows() == [("fu", 1, "set to null (warning)")]
    unused = quality.filter(pl.col("check") == "column not used")["column"].to_list()
    assert unused == ["note"]  # the follow-up column is a setting, not an ignored column


def test_followup_end_that_is_neither_a_date_nor_a_column_stops(tmp_path):
    with pytest.raises(
        DataError,
        match=r"data\.first_occurrence\.followup_end 'soon' is neither a YYYY-MM-DD date nor "
        r"a column of .*fo\.csv",
    ):
        run(tmp_path, followup_end="soon")
