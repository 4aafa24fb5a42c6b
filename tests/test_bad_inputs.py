"""Bad-input corpus: exports as institutions write them, each ending in a correct result or a
clear error. No case may end silently: a mislabelled subject, a skipped file or a changed
value without a count. Inputs are small and hand-made in tmp_path; most cases call the library
directly, and only behaviour that belongs to the workflow (reruns, parse-time checks, config
messages) runs Snakemake.
"""

from __future__ import annotations

import copy
import json
import os
from datetime import datetime

import polars as pl
import pytest
import yaml
from conftest import EventBuilder, cohort_cfg
from workflow_helpers import REPO, dry_run, snakemake

from rationale_bench import config_check
from rationale_bench.cohort.build import (
    CohortError,
    build_cohort,
    check_training_size,
    run_cohort_stage,
    table_one,
)
from rationale_bench.data.codes import RISK_FACTORS, code_in, matches_any, normalize_code
from rationale_bench.data.ingest import ingest
from rationale_bench.data.inputs import InputError, check_manifest, write_manifest
from rationale_bench.data.quality import DataError, Plausibility, strict_integer

D = datetime
EVENTS_SCHEMA = {
    "subject_id": pl.Int64,
    "time": pl.Datetime("us"),
    "code": pl.String,
    "numeric_value": pl.Float32,
}


def schema_defaults() -> dict:
    """data.* defaults from the schema, so the cases follow the shipped configuration."""
    schema = yaml.safe_load((REPO / "schemas" / "config.schema.yaml").read_text())
    props = schema["properties"]["data"]["properties"]
    data = {k: v["default"] for k, v in props.items() if "default" in v and k != "source"}
    for source in ("first_occurrence", "omop", "meds"):
        data[source] = {k: v["default"] for k, v in props[source]["properties"].items()}
    return data


def run_ingest(tmp_path, source: str, settings: dict, **data) -> tuple[pl.DataFrame, pl.DataFrame]:
    cfg = schema_defaults()
    cfg.update(source=source, **data)
    cfg[source].update(settings)
    out = tmp_path / "out"
    ingest(cfg, out / "events.parquet", out / "codes.parquet", out / "data_quality.csv")
    return pl.read_parquet(out / "events.parquet"), pl.read_csv(out / "data_quality.csv")


def meds_rows(rows) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=EVENTS_SCHEMA, orient="row")


def person(sid: int, *codes: tuple[str, str], born: str = "1940-01-01") -> list[tuple]:
    """A MEDS subject: birth, sex, yearly visits 2005-2016, plus (time, code) events."""
    rows = [(sid, D.fromisoformat(born), "MEDS_BIRTH", None), (sid, None, "SEX/F", None)]
    rows += [(sid, D(year, 1, 1), "VISIT/OUTPATIENT", None) for year in range(2005, 2017)]
    rows += [(sid, D.fromisoformat(t) if t else None, c, None) for t, c in codes]
    return rows


def meds_ingest(tmp_path, rows, **data) -> tuple[pl.DataFrame, pl.DataFrame]:
    root = tmp_path / "meds"
    (root / "data").mkdir(parents=True, exist_ok=True)
    frame = rows if isinstance(rows, pl.DataFrame) else meds_rows(rows)
    frame.write_parquet(root / "data" / "0.parquet")
    return run_ingest(tmp_path, "meds", {"path": str(root)}, **data)


def checks(quality: pl.DataFrame, check: str) -> list[tuple]:
    rows = quality.filter(pl.col("check") == check)
    return rows.select("n_rows", "action").rows()


def detail(quality: pl.DataFrame, check: str) -> str:
    return quality.filter(pl.col("check") == check)["detail"][0]


def cohort_of(events: pl.DataFrame, **cfg) -> tuple[pl.DataFrame, pl.DataFrame]:
    return build_cohort(events, cohort_cfg(**cfg), check_splits=False)


def labels(cohort: pl.DataFrame) -> dict[int, bool]:
    return dict(cohort.select("subject_id", "label").iter_rows())


# --------------------------------------------------------------------------------------
# 1. Codes normalised before any matching, and counted
# --------------------------------------------------------------------------------------

NORMALISED = [
    ("ICD10/f03.90 ", "ICD10/F03.90"),
    ("ICD10/G310", "ICD10/G31.0"),
    ("icd10cm/F0390", "ICD10/F03.90"),
    ("DIAGNOSIS//ICD//10//F0390", "ICD10/F03.90"),
    ("ICD9CM/3310", "ICD9/331.0"),
    ("ICD9/E8889", "ICD9/E888.9"),
    ("ICD10CM/S060X1A", "ICD10/S06.0X1A"),
    ("atc/n06da02", "ATC/N06DA02"),
]


@pytest.mark.parametrize(("written", "canonical"), NORMALISED)
def test_code_written_another_way_is_normalised_and_counted(tmp_path, written, canonical):
    events, quality = meds_ingest(tmp_path, person(1, ("2010-01-01", written)))
    assert canonical in events["code"].to_list()
    assert written not in events["code"].to_list()
    assert checks(quality, "code normalised") == [(1, "rewritten")]
    assert f"{written!r} -> {canonical!r}" in detail(quality, "code normalised")
    assert checks(quality, "malformed code") == []


@pytest.mark.parametrize("written", ["ICD10/f03.90 ", "ICD10/F0390", "ICD10CM/F03.90"])
def test_outcome_written_another_way_is_still_a_case(written):
    # build_cohort normalises what it is given, so a library user gets the same labels.
    b = EventBuilder()
    for sid in (1, 2):
        b.person(sid, "1940-01-01").visits(sid, "2005-01-01", 12)
    events = b.add(1, "2009-06-01", written).frame()
    cohort, _ = cohort_of(events)
    assert labels(cohort) == {1: True, 2: False}


def test_outcome_prefixes_in_the_config_are_normalised():
    b = EventBuilder().person(1, "1940-01-01").visits(1, "2005-01-01", 12)
    events = b.add(1, "2009-06-01", "ICD10/G31.0").frame()
    cohort, _ = cohort_of(events, outcome={"code_prefixes": ["icd10/g310"]})
    assert labels(cohort) == {1: True}


def test_exclusion_drug_written_in_lower_case_still_excludes():
    b = EventBuilder()
    for sid in (1, 2):
        b.person(sid, "1940-01-01").visits(sid, "2005-01-01", 12)
    events = b.add(1, "2006-06-01", "atc/n06da02 ").frame()
    cohort, attrition = cohort_of(events)
    assert labels(cohort) == {2: False}
    step = attrition.filter(pl.col("step") == "no anti-dementia drug at or before index")
    assert step["n_excluded"].item() == 1


def test_risk_factors_match_normalised_codes():
    codes = ["icd10/i109", "ICD10CM/S060X1A", "ICD10/ I48.91"]
    found = [n for n, rf in RISK_FACTORS.items() if any(code_in(c, rf.prefixes) for c in codes)]
    assert found == ["hypertension", "tbi", "atrial_fibrillation"]
    # Table 1's vectorised match on the canonical codes ingest writes agrees.
    canonical = pl.DataFrame({"code": [normalize_code(c) for c in codes]})
    vectorised = [
        n
        for n, rf in RISK_FACTORS.items()
        if canonical.select(matches_any(pl.col("code"), rf.prefixes).any()).item()
    ]
    assert vectorised == found


# --------------------------------------------------------------------------------------
# 2. UK Biobank special values: code present, date unknown
# --------------------------------------------------------------------------------------


def fo_table(f03: list[str], values: str = "date") -> dict:
    n = len(f03)
    return {
        "eid": [str(i + 1) for i in range(n)],
        "birth_year": ["1940"] * n,
        "sex": ["0"] * n,
        "baseline_date": ["2008-01-01"] * n,
        "F03": f03,
        "I10": ["2000-01-01" if values == "date" else "60"] * n,
    }


def fo_ingest(tmp_path, table: dict, **settings) -> tuple[pl.DataFrame, pl.DataFrame]:
    path = tmp_path / "fo.csv"
    pl.DataFrame(table).write_csv(path)
    settings = {"path": str(path), "followup_end": "2020-12-31", **settings}
    return run_ingest(tmp_path, "first_occurrence", settings)


@pytest.mark.parametrize(
    "placeholder", ["1900-01-01", "1901-01-01", "1902-02-02", "1903-03-03", "2037-07-07"]
)
def test_uk_biobank_placeholder_date_is_a_code_of_unknown_date(tmp_path, placeholder):
    events, quality = fo_ingest(tmp_path, fo_table([placeholder, "2011-05-01", ""]))
    dementia = events.filter(pl.col("code").str.contains("F03"))
    assert dementia.select("subject_id", "time", "code").rows() == [
        (1, None, "DATE_UNKNOWN/ICD10/F03"),
        (2, D(2011, 5, 1), "ICD10/F03"),
    ]
    assert checks(quality, "special date") == [(1, "kept as DATE_UNKNOWN/<code>")]
    assert placeholder in detail(quality, "special date")


def test_placeholder_outcome_is_excluded_never_a_control(tmp_path):
    events, _ = fo_ingest(tmp_path, fo_table(["1900-01-01", "2011-05-01", ""]))
    cohort, attrition = cohort_of(events, min_prior_observation_days=0)
    assert labels(cohort) == {2: True, 3: False}  # subject 1 is neither case nor control
    step = attrition.filter(pl.col("step").str.starts_with("no outcome code or anti-dementia"))
    assert step.select("n_excluded", "n_noncases_excluded").row(0) == (1, 1)


@pytest.mark.parametrize(("age", "check"), [("-1", "special age"), ("-3", "special age")])
def test_uk_biobank_negative_age_codes_are_unknown_dates(tmp_path, age, check):
    table = fo_table([age, "71.5", ""], values="age")
    events, quality = fo_ingest(tmp_path, table, values="age")
    dementia = events.filter(pl.col("code").str.contains("F03"))
    assert dementia.select("subject_id", "code").rows() == [
        (1, "DATE_UNKNOWN/ICD10/F03"),
        (2, "ICD10/F03"),
    ]
    assert checks(quality, check) == [(1, "kept as DATE_UNKNOWN/<code>")]
    assert f"age {age}" in detail(quality, check)


def test_other_negative_age_is_counted_as_unknown_date(tmp_path):
    events, quality = fo_ingest(tmp_path, fo_table(["-7", "71.5", ""], values="age"), values="age")
    assert "DATE_UNKNOWN/ICD10/F03" in events["code"].to_list()
    assert checks(quality, "negative age") == [(1, "kept as DATE_UNKNOWN/<code>")]


def test_dropping_placeholders_is_refused(tmp_path):
    with pytest.raises(DataError, match=r"'1900-01-01': 'drop' is not 'unknown' or 'birth'"):
        fo_ingest(tmp_path, fo_table(["2011-01-01"]), special_dates={"1900-01-01": "drop"})


def test_meds_outcome_dated_before_birth_is_excluded_not_a_control(tmp_path):
    rows = person(1, ("1930-01-01", "ICD10/F03.90")) + person(2)
    events, quality = meds_ingest(tmp_path, rows)
    assert checks(quality, "code kept with unknown date") == [(1, "kept as DATE_UNKNOWN/<code>")]
    cohort, _ = cohort_of(events)
    assert labels(cohort) == {2: False}


# --------------------------------------------------------------------------------------
# 3. Plausibility rules
# --------------------------------------------------------------------------------------


def test_event_in_the_future_is_dropped_counted_and_not_a_control(tmp_path):
    rows = person(1, ("2150-01-01", "ICD10/F03.90")) + person(2)
    events, quality = meds_ingest(tmp_path, rows)
    assert checks(quality, "event in the future") == [(1, "dropped")]
    assert events.filter(pl.col("time") > D(2100, 1, 1)).height == 0
    cohort, _ = cohort_of(events)
    assert labels(cohort) == {2: False}


def test_event_after_the_extraction_date_is_dropped(tmp_path):
    rows = person(1, ("2016-06-01", "ICD10/I10"))
    events, quality = meds_ingest(tmp_path, rows, extraction_date="2016-03-31")
    assert checks(quality, "event after extraction date") == [(1, "dropped")]
    assert "2016-04-01" in detail(quality, "event after extraction date")
    assert "DATE_UNKNOWN/ICD10/I10" in events["code"].to_list()


def test_extraction_date_is_inferred_and_reported(tmp_path):
    _, quality = meds_ingest(tmp_path, person(1, ("2150-01-01", "ICD10/I10")))
    assert detail(quality, "extraction date").startswith("2016-01-01 (inferred")


def test_extraction_date_must_be_a_date(tmp_path):
    with pytest.raises(DataError, match=r"data.extraction_date '31/03/2016' is not a YYYY-MM-DD"):
        meds_ingest(tmp_path, person(1), extraction_date="31/03/2016")


def test_age_at_index_above_115_is_dropped_and_counted():
    b = EventBuilder().person(1, "1880-01-01").visits(1, "2005-01-01", 12)
    b.person(2, "1940-01-01").visits(2, "2005-01-01", 12)
    cohort, attrition = cohort_of(b.frame())
    assert labels(cohort) == {2: False}
    step = attrition.filter(pl.col("step").str.starts_with("age at index at most 115"))
    assert step["n_excluded"].item() == 1


def zoned(zone: str) -> pl.DataFrame:
    frame = meds_rows(person(1, ("2010-01-01 23:30:00", "ICD10/I10")))
    return frame.with_columns(pl.col("time").dt.replace_time_zone(zone))


def test_zoned_times_stop_without_a_timezone_policy(tmp_path):
    with pytest.raises(DataError, match=r"time zone 'Europe/Paris'.*Set data.timezone to 'utc'"):
        meds_ingest(tmp_path, zoned("Europe/Paris"))


@pytest.mark.parametrize(
    ("policy", "expected", "action"),
    [
        ("utc", D(2010, 1, 1, 22, 30), "converted to UTC"),
        ("local", D(2010, 1, 1, 23, 30), "kept clock time"),
    ],
)
def test_zoned_times_follow_the_timezone_policy(tmp_path, policy, expected, action):
    events, quality = meds_ingest(tmp_path, zoned("Europe/Paris"), timezone=policy)
    assert events.filter(pl.col("code") == "ICD10/I10")["time"].to_list() == [expected]
    assert checks(quality, "time zone removed")[0][1] == action


def test_utc_times_pass_and_are_reported(tmp_path):
    events, quality = meds_ingest(tmp_path, zoned("UTC"))
    assert events.filter(pl.col("code") == "ICD10/I10")["time"].to_list() == [D(2010, 1, 1, 23, 30)]
    assert checks(quality, "time zone removed")[0][1] == "converted to UTC"


# --------------------------------------------------------------------------------------
# 4. Whole-column and whole-table failures stop, naming file, column and setting
# --------------------------------------------------------------------------------------

PERSON = {
    "person_id": [1, 2],
    "gender_concept_id": [8532, 8507],
    "year_of_birth": [1940, 1945],
}
CONDITIONS = {
    "person_id": [1, 2],
    "condition_concept_id": [4182210, 320128],
    "condition_start_date": ["2010-01-01", "2011-02-03"],
    "condition_source_value": ["F0390", "I10"],
}


def write_omop(folder, **tables) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    base = {"person": PERSON, "condition_occurrence": CONDITIONS}
    for name, columns in {**base, **tables}.items():
        if columns is None:
            continue
        if isinstance(columns, str):
            (folder / f"{name}.csv").write_text(columns)
        else:
            pl.DataFrame(columns).write_csv(folder / f"{name}.csv")
    return str(folder)


def omop_ingest(tmp_path, skip=(), **tables) -> tuple[pl.DataFrame, pl.DataFrame]:
    path = write_omop(tmp_path / "cdm", **tables)
    return run_ingest(tmp_path, "omop", {"path": path, "skip_tables": list(skip)})


def test_unparseable_date_column_stops_at_ingest(tmp_path):
    conditions = {**CONDITIONS, "condition_start_date": ["01/02/2010", "03/02/2011"]}
    with pytest.raises(DataError) as error:
        omop_ingest(tmp_path, condition_occurrence=conditions)
    message = str(error.value)
    assert (
        "condition_occurrence.csv: column 'condition_start_date': 2 of 2 values (100%)" in message
    )
    assert "'01/02/2010'" in message and "data.date_formats" in message


def test_every_concept_id_zero_stops_at_ingest(tmp_path):
    conditions = {**CONDITIONS, "condition_concept_id": [0, 0]}
    with pytest.raises(
        DataError, match=r"column 'condition_concept_id': all 2 rows have concept_id 0"
    ):
        omop_ingest(tmp_path, condition_occurrence=conditions)


def test_decimal_comma_ages_stop_at_ingest(tmp_path):
    table = fo_table(["72,5", "80,1", ""], values="age")
    table["I10"] = ["60,2", "61,5", "62,0"]
    with pytest.raises(DataError, match=r"do not parse as ages .*decimal point \(72.5, not 72,5\)"):
        fo_ingest(tmp_path, table, values="age")


def test_wrong_date_format_in_code_columns_stops(tmp_path):
    table = fo_table(["01/05/2011", "02/06/2012", ""])
    table["I10"] = ["01/01/2000", "02/01/2000", "03/01/2000"]
    with pytest.raises(DataError, match=r"5 of 5 code values \(100%\) do not parse as dates"):
        fo_ingest(tmp_path, table)


def test_outcome_codes_in_another_vocabulary_name_the_cause(tmp_path):
    b = EventBuilder()
    for sid in range(1, 5):
        b.person(sid, "1940-01-01").visits(sid, "2005-01-01", 12)
    events = b.add(1, "2009-06-01", "SNOMED/26929004").frame()
    with pytest.raises(CohortError) as error:
        build_cohort(events, cohort_cfg())
    message = str(error.value)
    assert message.startswith("cohort: no event matches the outcome codes")
    assert "SNOMED (1 events)" in message and "look like another vocabulary" in message
    assert error.value.attrition is not None


def test_subjects_lost_at_birth_and_sex_name_that_step():
    frame = EventBuilder().visits(1, "2005-01-01", 12).add(1, "2009-01-01", "ICD10/F03").frame()
    with pytest.raises(CohortError, match=r"all were lost at step 'birth date and sex recorded'"):
        build_cohort(frame, cohort_cfg())


def test_failed_cohort_still_writes_its_attrition_table(tmp_path):
    b = EventBuilder()
    for sid in range(1, 5):
        b.person(sid, "1940-01-01").visits(sid, "2005-01-01", 12)
    events_path, codes_path = tmp_path / "events.parquet", tmp_path / "codes.parquet"
    b.frame().write_parquet(events_path)
    pl.DataFrame(schema={"code": pl.String}).write_parquet(codes_path)
    manifest = tmp_path / "manifest.json"
    write_manifest(manifest, {"events": events_path, "codes": codes_path})
    failed = tmp_path / "attrition_failed.csv"
    settings = {**cohort_cfg(), "small_cell_threshold": None}
    with pytest.raises(CohortError, match=r"attrition table up to this point: .*attrition_failed"):
        run_cohort_stage(
            events_path, codes_path, manifest, settings, [2], tmp_path / "a.csv", failed
        )
    table = pl.read_csv(failed)
    assert table["step"].to_list()[:2] == ["subjects in the data", "birth date and sex recorded"]
    assert not (tmp_path / "a.csv").exists()


def test_n_train_larger_than_the_training_split_stops_in_the_cohort_job():
    cohort = pl.DataFrame({"subject_id": [1, 2, 3], "split": ["train", "train", "held_out"]})
    with pytest.raises(CohortError, match=r"grid.n_train asks for 5 .* training split has 2"):
        check_training_size(cohort, [2, 5])


# --------------------------------------------------------------------------------------
# 5. Tolerant readers, strict meaning
# --------------------------------------------------------------------------------------


def test_integral_float_ids_are_accepted():
    frame = pl.DataFrame({"id": [4180628.0, 1.0], "text": ["4180628.0", " 7 "]})
    assert strict_integer(frame, "id", "f").to_list() == [4180628, 1]
    assert strict_integer(frame, "text", "f").to_list() == [4180628, 7]
    big = pl.DataFrame({"id": ["9007199254740993"]})  # above 2**53: exact, not via float
    assert strict_integer(big, "id", "f").to_list() == [9007199254740993]


def test_fractional_ids_are_still_refused():
    frame = pl.DataFrame({"id": [4180628.5]})
    with pytest.raises(DataError, match=r"column 'id' has 1 values that are not integers"):
        strict_integer(frame, "id", "f")


def test_meds_subject_ids_stored_as_whole_floats_are_read(tmp_path):
    frame = meds_rows(person(7)).with_columns(pl.col("subject_id").cast(pl.Float64))
    events, _ = meds_ingest(tmp_path, frame)
    assert events["subject_id"].unique().to_list() == [7]
    frame = frame.with_columns(pl.col("subject_id") + 0.5)
    with pytest.raises(DataError, match=r"'subject_id' is a float column with 14 values"):
        meds_ingest(tmp_path / "b", frame)


def test_concept_ancestor_stored_as_double_is_read(tmp_path):
    ancestor = {"ancestor_concept_id": [4182210.0], "descendant_concept_id": [320128.0]}
    path = write_omop(tmp_path / "cdm")
    pl.DataFrame(ancestor).write_parquet(tmp_path / "cdm" / "concept_ancestor.parquet")
    run_ingest(tmp_path, "omop", {"path": path})
    codes = pl.read_parquet(tmp_path / "out" / "codes.parquet")
    assert codes.filter(pl.col("code") == "OMOP/320128")["parent_codes"].to_list() == [
        ["OMOP/4182210"]
    ]


def test_header_only_optional_table_with_generic_columns_is_skipped(tmp_path):
    events, quality = omop_ingest(tmp_path, death="V1,V2,V3\n")
    assert checks(quality, "optional table skipped") == [(0, "skipped (warning)")]
    assert "MEDS_DEATH" not in events["code"].to_list()


def test_optional_table_with_generic_column_names_is_skipped_with_a_warning(tmp_path):
    events, quality = omop_ingest(tmp_path, death="column0,column1\n1,2010-01-01\n")
    assert checks(quality, "optional table skipped") == [(0, "skipped (warning)")]
    assert "'death_date' missing" in detail(quality, "optional table skipped")
    assert "non-cases who died are not censored" in detail(quality, "optional table skipped")
    assert "MEDS_DEATH" not in events["code"].to_list()


def test_bad_values_in_a_well_formed_optional_table_stop(tmp_path):
    death = "person_id,death_date\n1,01/02/2010\n2,03/04/2011\n"
    with pytest.raises(DataError, match=r"column 'death_date'.*add it to data.omop.skip_tables"):
        omop_ingest(tmp_path, death=death)


def test_skip_tables_leaves_an_optional_table_out_explicitly(tmp_path):
    events, quality = omop_ingest(tmp_path, skip=["death"], death="V1,V2\n1,2010-01-01\n")
    assert checks(quality, "table skipped") == [(0, "skipped")]
    assert "MEDS_DEATH" not in events["code"].to_list()


def test_required_tables_cannot_be_skipped_or_missing(tmp_path):
    with pytest.raises(DataError, match=r"skip_tables lists 'person', which is required"):
        omop_ingest(tmp_path, skip=["person"])
    with pytest.raises(DataError, match=r"condition_occurrence table is missing"):
        omop_ingest(tmp_path / "b", condition_occurrence=None)


def test_missing_column_messages_name_settings_that_exist(tmp_path):
    table = fo_table(["2011-01-01"])
    table["yob"] = table.pop("birth_year")
    with pytest.raises(DataError, match=r"'birth_year' missing.*Set data.first_occurrence.id_col"):
        fo_ingest(tmp_path, table)
    person_table = {"person_id": [1], "gender": [8532], "year_of_birth": [1940]}
    with pytest.raises(DataError, match=r"fixed by the standard: rename the columns"):
        omop_ingest(tmp_path / "b", person=person_table)


# --------------------------------------------------------------------------------------
# 6. Inputs tracked by content
# --------------------------------------------------------------------------------------


def test_foreign_file_in_meds_data_folder_is_listed(tmp_path):
    root = tmp_path / "meds" / "data"
    root.mkdir(parents=True)
    meds_rows(person(1)).write_parquet(root / "0.parquet")
    meds_rows(person(2)).write_csv(root / "1.csv")
    with pytest.raises(DataError, match=r"1 file\(s\) in .* are not parquet shards \(1.csv\)"):
        run_ingest(tmp_path, "meds", {"path": str(tmp_path / "meds")})


def test_corrupt_shard_is_named(tmp_path):
    root = tmp_path / "meds" / "data"
    root.mkdir(parents=True)
    meds_rows(person(1)).write_parquet(root / "0.parquet")
    (root / "1.parquet").write_bytes(b"PAR1 not really parquet")
    with pytest.raises(DataError, match=r"1.parquet: not a readable parquet file"):
        run_ingest(tmp_path, "meds", {"path": str(tmp_path / "meds")})


def test_replaced_intermediate_is_caught_by_its_manifest(tmp_path):
    events = tmp_path / "events.parquet"
    meds_rows(person(1) + person(2)).write_parquet(events)
    write_manifest(tmp_path / "manifest.json", {"events": events})
    check_manifest(tmp_path / "manifest.json", "events", events, "ingest")
    meds_rows(person(1)).write_parquet(events)  # valid parquet, half the rows
    with pytest.raises(InputError, match=r"has 14 rows .* ingest step recorded 28 rows"):
        check_manifest(tmp_path / "manifest.json", "events", events, "ingest")


def meds_workdir(tmp_path, extra: dict | None = None):
    workdir = tmp_path / "work"
    (workdir / "meds" / "data").mkdir(parents=True)
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["data"] = {"source": "meds", "meds": {"path": "meds"}}
    for key, value in (extra or {}).items():
        config[key] = value
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    return workdir


def test_editing_one_shard_reruns_ingest(tmp_path):
    workdir = meds_workdir(tmp_path)
    shard = workdir / "meds" / "data" / "0.parquet"
    meds_rows(person(1)).write_parquet(shard)
    os.utime(shard, (1_000_000, 1_000_000))
    for name in ("events.parquet", "codes.parquet", "data_quality.csv", "manifest.json"):
        path = workdir / "results" / "data" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
        os.utime(path, (2_000_000, 2_000_000))
    target = ("results/data/events.parquet", "--rerun-triggers", "mtime")
    assert "ingest_meds" not in dry_run(workdir, *target)
    os.utime(shard, (3_000_000, 3_000_000))  # edited in place
    assert dry_run(workdir, *target)["ingest_meds"] == 1


def test_foreign_file_stops_the_workflow_at_parse_time(tmp_path):
    workdir = meds_workdir(tmp_path)
    meds_rows(person(1)).write_parquet(workdir / "meds" / "data" / "0.parquet")
    (workdir / "meds" / "data" / "1.csv").write_text("subject_id\n1\n")
    result = snakemake(workdir, "-n", check=False)
    assert result.returncode != 0
    assert "are not parquet shards (1.csv)" in result.stdout + result.stderr


# --------------------------------------------------------------------------------------
# 7. Sex codes, horizon, vocabulary-aware Table 1
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("written", ["SEX//F", "GENDER//FEMALE", "Gender/8532", "sex/f"])
def test_sex_conventions_are_recognised(tmp_path, written):
    rows = [r for r in person(1) if r[2] != "SEX/F"] + [(1, None, written, None)]
    events, quality = meds_ingest(tmp_path, rows)
    assert events.filter(pl.col("code").str.starts_with("SEX/"))["code"].to_list() == ["SEX/F"]
    assert checks(quality, "unknown sex value") == []


def test_unknown_sex_value_is_reported_and_mappable(tmp_path):
    rows = [r for r in person(1) if r[2] != "SEX/F"] + [(1, None, "SEX/2", None)]
    _, quality = meds_ingest(tmp_path, rows)
    assert checks(quality, "unknown sex value") == [(1, "kept (warning)")]
    assert "data.sex_values" in detail(quality, "unknown sex value")
    events, _ = meds_ingest(tmp_path / "b", rows, sex_values={"2": "F"})
    assert "SEX/F" in events["code"].to_list()


def test_question_follows_the_horizon():
    question = "Will this patient be diagnosed within the next {horizon}?"
    assert config_check.fill_horizon(question, 1826).endswith("within the next 5 years?")
    assert config_check.fill_horizon(question, 3652).endswith("within the next 10 years?")
    with pytest.raises(config_check.ConfigError, match=r"says '5 years', but .* 3652 \(10 years\)"):
        config_check.fill_horizon("within the next 5 years?", 3652)


def test_table_one_shows_unmappable_risk_factors_as_na():
    cohort = pl.DataFrame(
        {
            "subject_id": [1, 2],
            "split": ["train", "train"],
            "label": [True, True],
            "age": [70.0, 71.0],
            "sex": ["F", "M"],
            "followup_days": [100, 200],
        }
    )
    history = pl.DataFrame({"subject_id": [1, 2], "code": ["SNOMED/49436004", "SNOMED/1"]})
    table = table_one(cohort, history)
    assert table["% atrial fibrillation"].to_list() == [None]  # n/a, not 0%
    mapped = table_one(cohort, history, {"atrial_fibrillation": ["SNOMED/49436004"]})
    assert mapped["% atrial fibrillation"].to_list() == [50.0]


# --------------------------------------------------------------------------------------
# 8. Early checks and short config errors
# --------------------------------------------------------------------------------------


def study_config() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


def test_prompt_budget_above_sequence_length_stops_at_parse_time():
    config = study_config()
    model = config["grid"]["model"][0]
    config["models"][model].update(max_prompt_tokens=600, max_seq_len=512)
    with pytest.raises(
        config_check.ConfigError, match=rf"models.{model}.max_prompt_tokens \(600\)"
    ):
        config_check.check_budgets(config)


def test_config_typo_gives_one_line_with_a_suggestion():
    config = study_config()
    config.setdefault("cohort", {})["horizon_day"] = 100
    message = config_check.short_schema_error(config, REPO / "schemas" / "config.schema.yaml")
    assert message.startswith("config: unknown key cohort.'horizon_day' (did you mean horizon_days")
    assert "\n" not in message


def test_config_wrong_type_names_the_key_path():
    config = study_config()
    config.setdefault("cohort", {})["min_age"] = "sixty-five"
    message = config_check.short_schema_error(config, REPO / "schemas" / "config.schema.yaml")
    assert message.startswith("config: cohort.min_age: 'sixty-five' is not of type 'number'")


def test_grid_larger_than_an_existing_training_split_stops_at_parse_time(tmp_path):
    path = tmp_path / "cohort.parquet"
    pl.DataFrame({"split": ["train"] * 3 + ["held_out"]}).write_parquet(path)
    config = copy.deepcopy(study_config())
    config["grid"]["n_train"] = [2, 10]
    with pytest.raises(config_check.ConfigError, match=r"asks for 10 .* has 3"):
        config_check.check_training_split(config, path)


def test_config_typo_in_the_workflow_prints_a_short_error(tmp_path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    config = study_config()
    config["data"]["sourc"] = "meds"
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(workdir, "-n", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "config: unknown key data.'sourc' (did you mean source?)" in output
    assert len(output.splitlines()) < 15, output


def test_failed_jobs_show_their_logs():
    profile = yaml.safe_load((REPO / "profiles" / "default" / "config.yaml").read_text())
    assert profile["show-failed-logs"] is True


def test_manifest_records_rows_and_digest(tmp_path):
    path = tmp_path / "x.parquet"
    meds_rows(person(1)).write_parquet(path)
    records = write_manifest(tmp_path / "m.json", {"events": path})
    assert records["events"]["rows"] == 14
    assert (
        json.loads((tmp_path / "m.json").read_text())["events"]["sha256"]
        == (records["events"]["sha256"])
    )


def test_plausibility_defaults_follow_the_schema():
    data = schema_defaults()
    rules = Plausibility.from_config(data)
    assert (rules.extraction_date, rules.timezone, rules.max_unparseable_fraction) == (
        None,
        None,
        0.5,
    )
    assert normalize_code(" icd10/g30.9 ") == "ICD10/G30.9"


def test_model_id_not_cached_without_network_is_one_line(monkeypatch):
    import huggingface_hub

    from rationale_bench.train.models import ModelSourceError, fetch

    class ConnectError(Exception):  # what httpx raises without a network
        pass

    def offline(**kwargs):
        raise ConnectError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ModelSourceError) as error:
        fetch("HuggingFaceTB/SmolLM2-135M-Instruc", None, None, "HF_TOKEN")
    message = str(error.value)
    assert "hub cannot be reached (ConnectError)" in message
    assert "huggingface-cli download HuggingFaceTB/SmolLM2-135M-Instruc" in message
    assert error.value.__cause__ is None and "\n" not in message


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("data:\n  source: [meds\ngrid: {}\n")
    with pytest.raises(config_check.ConfigError, match=r"config.yaml, line 3, column 5: not valid"):
        config_check.check_yaml_file(path)


def test_other_omop_gender_concepts_are_reported_and_mappable(tmp_path):
    person_table = {**PERSON, "gender_concept_id": [8532, 45878463]}
    events, quality = omop_ingest(tmp_path, person=person_table)
    assert checks(quality, "unknown gender concept") == [(1, "kept (warning)")]
    assert "seen: [45878463]" in detail(quality, "unknown gender concept")
    path = write_omop(tmp_path / "b" / "cdm", person=person_table)
    events, _ = run_ingest(tmp_path / "b", "omop", {"path": path}, sex_values={"45878463": "F"})
    assert sorted(events.filter(pl.col("code") == "SEX/F")["subject_id"].to_list()) == [1, 2]
