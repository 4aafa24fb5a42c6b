"""OMOP CDM adapter: a hand-built CDM as CSV, parquet and DuckDB gives the same events."""

from __future__ import annotations

import copy
from datetime import datetime

import polars as pl
import pytest

from rationale_bench.cohort.build import build_cohort
from rationale_bench.data.ingest import ingest
from rationale_bench.data.omop import CLINICAL_TABLES, _mapped_codes
from rationale_bench.data.quality import DataError

DATA = {
    "source": "omop",
    "date_formats": ["%Y-%m-%d", "%Y-%m-%d %H:%M:%S"],
    "extra_vocabularies": [],
    "omop": {"path": None, "schema": None, "condition_source_vocabulary": None},
}

TABLES = {
    "person": {
        "person_id": [1, 2, 3],
        "gender_concept_id": [8532, 8507, 0],
        "year_of_birth": [1940, 1945, 1950],
        "month_of_birth": [3, None, 1],
        "day_of_birth": [10, None, 1],
    },
    "condition_occurrence": {
        "person_id": [1, 1, 2, 2, 9, 1, 1, 2],
        "condition_concept_id": [4182210, 320128, 320128, 0, 320128, 320128, 320128, 320128],
        "condition_start_date": [
            "2015-06-01",
            "2000-01-01",
            "2001-02-03",
            "2002-01-01",
            "2003-01-01",
            "not a date",
            "1930-01-01",
            "2021-01-01",
        ],
        "condition_source_value": ["F0390", "4019", "I10", "zzz", "I10", "I10", "I10", "I10"],
        "condition_source_concept_id": [1001, 1002, None, 0, None, None, None, None],
    },
    "drug_exposure": {
        "person_id": [1, 2],
        "drug_concept_id": [2001, 2002],
        "drug_exposure_start_date": ["2016-01-01", "2012-05-05"],
        "drug_source_value": ["donepezil", "aspirin"],
        "drug_source_concept_id": [0, 0],
    },
    "procedure_occurrence": {
        "person_id": [1],
        "procedure_concept_id": [4000],
        "procedure_date": ["2012-01-01"],
        "procedure_source_value": ["88.38"],
        "procedure_source_concept_id": [4001],  # ICD9Proc: not a diagnosis vocabulary
    },
    "measurement": {
        "person_id": [1, 2],
        "measurement_concept_id": [3004410, 3004410],
        "measurement_date": ["2011-01-01", "2011-02-02"],
        "value_as_number": ["6.5", "abc"],
    },
    "visit_occurrence": {
        "person_id": [1, 2],
        "visit_concept_id": [9202, 5555],
        "visit_start_date": ["2010-01-01", "2010-02-02"],
        "visit_start_datetime": ["2010-01-01 09:30:00", None],
    },
    "death": {"person_id": [2], "death_date": ["2020-01-01"]},
    "observation_period": {
        "person_id": [1],
        "observation_period_start_date": ["2000-01-01"],
        "observation_period_end_date": ["2020-12-31"],
    },
    "concept": {
        "concept_id": [
            1001,
            1002,
            320128,
            4182210,
            2001,
            2002,
            3001,
            3004410,
            5555,
            9202,
            4000,
            4001,
        ],
        "concept_name": [
            "Unspecified dementia without behavioral disturbance",
            "Unspecified essential hypertension",
            "Essential hypertension",
            "Dementia",
            "donepezil 10 MG Oral Tablet",
            "aspirin 81 MG Oral Tablet",
            "donepezil",
            "Hemoglobin A1c",
            "Custom visit",
            "Outpatient Visit",
            "Computed tomography of chest",
            "Other computerized axial tomography",
        ],
        "vocabulary_id": [
            "ICD10CM",
            "ICD9CM",
            "SNOMED",
            "SNOMED",
            "RxNorm",
            "RxNorm",
            "ATC",
            "LOINC",
            "Visit",
            "Visit",
            "SNOMED",
            "ICD9Proc",
        ],
        "concept_code": [
            "F03.90",
            "401.9",
            "59621000",
            "52448006",
            "997223",
            "243670",
            "N06DA02",
            "4548-4",
            "X",
            "OP",
            "169069000",
            "88.38",
        ],
    },
    "concept_relationship": {
        "concept_id_1": [2001, 1001],
        "concept_id_2": [3001, 4182210],
        "relationship_id": ["RxNorm - ATC", "Maps to"],
    },
}

EXPECTED_EVENTS = [
    # a condition dated before birth: the code stays, its date is unknown
    (1, None, "DATE_UNKNOWN/OMOP/320128", None),
    (1, "1940-03-10 00:00:00", "MEDS_BIRTH", None),
    (1, "1940-03-10 00:00:00", "SEX/F", None),
    (1, "2000-01-01 00:00:00", "ICD9/401.9", None),
    (1, "2000-01-01 00:00:00", "OBSERVATION_PERIOD/START", None),
    (1, "2010-01-01 09:30:00", "VISIT/OUTPATIENT", None),
    (1, "2011-01-01 00:00:00", "OMOP/3004410", 6.5),
    (1, "2012-01-01 00:00:00", "OMOP/4000", None),
    (1, "2015-06-01 00:00:00", "ICD10/F03.90", None),
    (1, "2016-01-01 00:00:00", "ATC/N06DA02", None),
    (1, "2020-12-31 00:00:00", "OBSERVATION_PERIOD/END", None),
    (2, "1945-07-01 00:00:00", "MEDS_BIRTH", None),
    (2, "1945-07-01 00:00:00", "SEX/M", None),
    (2, "2001-02-03 00:00:00", "OMOP/320128", None),
    (2, "2010-02-02 00:00:00", "VISIT/5555", None),
    (2, "2011-02-02 00:00:00", "OMOP/3004410", None),
    (2, "2012-05-05 00:00:00", "OMOP/2002", None),
    (2, "2020-01-01 00:00:00", "MEDS_DEATH", None),
    (3, "1950-01-01 00:00:00", "MEDS_BIRTH", None),
]

EXPECTED_CODES = {
    "ATC/N06DA02": ("donepezil", ["OMOP/2001"]),
    "ICD10/F03.90": ("Unspecified dementia without behavioral disturbance", ["OMOP/4182210"]),
    "ICD9/401.9": ("Unspecified essential hypertension", ["OMOP/320128"]),
    "OMOP/2002": ("aspirin 81 MG Oral Tablet", []),
    "OMOP/3004410": ("Hemoglobin A1c", []),
    "OMOP/320128": ("Essential hypertension", []),
    "OMOP/4000": ("Computed tomography of chest", []),
    "VISIT/5555": ("Custom visit", []),
}


def frames(tables=TABLES) -> dict[str, pl.DataFrame]:
    return {name: pl.DataFrame(columns) for name, columns in tables.items()}


def write_cdm(tmp_path, kind: str, tables=TABLES) -> str:
    if kind == "duckdb":
        duckdb = pytest.importorskip("duckdb")
        path = tmp_path / "cdm.duckdb"
        con = duckdb.connect(str(path))
        for name, frame in frames(tables).items():
            con.register("frame", frame.to_arrow())
            con.execute(f"create table {name} as select * from frame")
            con.unregister("frame")
        con.close()
        return str(path)
    folder = tmp_path / "cdm"
    folder.mkdir()
    for name, frame in frames(tables).items():
        if kind == "csv":
            frame.write_csv(folder / f"{name.upper()}.csv")
        else:
            (folder / name).mkdir()
            frame.write_parquet(folder / name / "part-0.parquet")
    return str(folder)


def run(tmp_path, path, **omop):
    data = copy.deepcopy(DATA)
    data["omop"].update(path=path, **omop)
    out = tmp_path / "out"
    report = ingest(data, out / "events.parquet", out / "codes.parquet", out / "data_quality.csv")
    events = pl.read_parquet(out / "events.parquet")
    codes = pl.read_parquet(out / "codes.parquet")
    quality = pl.read_csv(out / "data_quality.csv")
    return report, events, codes, quality


def as_tuples(events: pl.DataFrame) -> list[tuple]:
    return [
        (
            s,
            None if t is None else t.strftime("%Y-%m-%d %H:%M:%S"),
            c,
            None if v is None else round(v, 3),
        )
        for s, t, c, v in events.iter_rows()
    ]


@pytest.mark.parametrize("kind", ["csv", "parquet", "duckdb"])
def test_omop_cdm_becomes_meds_events_and_code_names(tmp_path, kind):
    _, events, codes, quality = run(tmp_path, write_cdm(tmp_path, kind))
    assert events.schema == pl.Schema(
        {
            "subject_id": pl.Int64,
            "time": pl.Datetime("us"),
            "code": pl.String,
            "numeric_value": pl.Float32,
        }
    )
    assert as_tuples(events) == EXPECTED_EVENTS
    assert codes.schema == pl.Schema(
        {"code": pl.String, "description": pl.String, "parent_codes": pl.List(pl.String)}
    )
    # Without concept_ancestor a mapped code's parent is the standard concept of its events.
    assert {c: (d, p) for c, d, p in codes.iter_rows()} == EXPECTED_CODES

    def n(check, column=None):
        rows = quality.filter(pl.col("check") == check)
        if column is not None:
            rows = rows.filter(pl.col("column") == column)
        return rows["n_rows"].to_list()

    assert n("rows read") == [3, 8, 2, 1, 2, 1, 1, 2]
    assert n("mapped to ICD10/ICD9/ATC") == [2, 1, 0, 0]
    # conditions (two later dropped as before birth / after death), drug, procedure, measurements
    assert n("unmapped concept") == [3, 1, 1, 2]
    assert n("no concept") == [1]
    assert n("person not in person table") == [1]
    assert n("unparseable date") == [1]
    assert n("unparseable number") == [1]
    assert n("unknown gender concept") == [1]
    assert n("event before birth") == [1]
    assert n("event after death") == [1]
    assert n("subject without sex") == [1]
    assert n("events written") == [len(EXPECTED_EVENTS)]
    # Every row of the clinical tables is either written or counted under a dropping check.
    clinical_in = sum(n("rows read")[1:5])
    clinical_out = sum(
        1 for e in EXPECTED_EVENTS if e[2].split("/")[0] in ("ICD9", "ICD10", "ATC", "OMOP")
    )
    assert n("code kept with unknown date") == [1]
    dropped = quality.filter(
        (pl.col("action") == "dropped") & (pl.col("check") != "exact duplicate event")
    )["n_rows"].sum()
    assert clinical_in == clinical_out + dropped


def test_source_values_as_icd10_without_vocabulary(tmp_path):
    tables = {k: v for k, v in TABLES.items() if k not in ("concept", "concept_relationship")}
    _, events, codes, quality = run(
        tmp_path, write_cdm(tmp_path, "csv", tables), condition_source_vocabulary="ICD10"
    )
    conditions = events.filter(pl.col("time") < datetime(2016, 1, 1)).filter(
        pl.col("code").str.starts_with("ICD10/") | pl.col("code").str.starts_with("OMOP/3201")
    )
    # F0390 -> F03.90; '4019' is not ICD-10 shaped and stays a concept; I10 stays I10.
    assert conditions["code"].to_list() == ["OMOP/320128", "ICD10/F03.90", "ICD10/I10"]
    # No concept table: the codes are listed without names.
    assert codes["code"].to_list() == ["ICD10/F03.90", "ICD10/I10"]
    assert codes["description"].null_count() == 2
    assert "table absent" in quality["check"].to_list()


def test_duplicate_person_rows_stop_naming_file_column_and_count(tmp_path):
    tables = copy.deepcopy(TABLES)
    tables["person"] = {k: [*v, v[0]] for k, v in tables["person"].items()}
    path = write_cdm(tmp_path, "csv", tables)
    with pytest.raises(DataError, match=r"PERSON\.csv: column 'person_id' has 2 rows that share"):
        run(tmp_path, path)


def test_missing_column_and_non_integer_id_stop(tmp_path):
    tables = copy.deepcopy(TABLES)
    del tables["condition_occurrence"]["condition_start_date"]
    with pytest.raises(
        DataError, match=r"CONDITION_OCCURRENCE\.csv: column\(s\) 'condition_start_date' missing"
    ):
        run(tmp_path, write_cdm(tmp_path, "csv", tables))
    tables = copy.deepcopy(TABLES)
    tables["drug_exposure"]["person_id"] = ["1", "two"]
    (tmp_path / "b").mkdir()
    with pytest.raises(DataError, match=r"DRUG_EXPOSURE\.csv: column 'person_id' has 1 values"):
        run(tmp_path / "b", write_cdm(tmp_path / "b", "csv", tables))


def test_missing_person_table_and_path(tmp_path):
    tables = {k: v for k, v in TABLES.items() if k != "person"}
    with pytest.raises(DataError, match="person table is missing"):
        run(tmp_path, write_cdm(tmp_path, "csv", tables))
    with pytest.raises(DataError, match="does not exist"):
        run(tmp_path, str(tmp_path / "nowhere"))


def test_duckdb_missing_gives_install_hint(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_duckdb(name, *args, **kwargs):
        if name == "duckdb":
            raise ImportError("no duckdb")
        return real_import(name, *args, **kwargs)

    path = tmp_path / "cdm.duckdb"
    path.write_bytes(b"")
    monkeypatch.setattr(builtins, "__import__", no_duckdb)
    with pytest.raises(DataError, match=r"rationale-bench\[omop\]"):
        run(tmp_path, str(path))


# Concept hierarchy: Dementia (4182210) > Alzheimer's disease (378419) > early onset (4043378);
# donepezil (715997, ingredient) > donepezil 10 MG tablet (2001). concept_ancestor is transitive
# and lists every concept as its own ancestor, as the OHDSI vocabulary does.
def hierarchy_cdm() -> dict[str, dict[str, list]]:
    people = [1, 2, 3, 4, 5]
    return {
        "person": {
            "person_id": people,
            "gender_concept_id": [8532, 8507, 8532, 8507, 8532],
            "year_of_birth": [1940, 1941, 1942, 1943, 1944],
        },
        "observation_period": {
            "person_id": people,
            "observation_period_start_date": ["2000-01-01"] * 5,
            "observation_period_end_date": ["2020-12-31"] * 5,
        },
        "visit_occurrence": {
            "person_id": people,
            "visit_concept_id": [9202] * 5,
            "visit_start_date": ["2010-01-01"] * 5,
        },
        "condition_occurrence": {
            "person_id": [1, 2, 3, 4],
            "condition_concept_id": [378419, 4043378, 320128, 378419],
            "condition_start_date": ["2012-01-01", "2013-01-01", "2013-01-01", "2014-01-01"],
            "condition_source_value": ["x", "y", "z", "F0390"],
            "condition_source_concept_id": [0, 0, 0, 1001],
        },
        "drug_exposure": {
            "person_id": [5],
            "drug_concept_id": [2001],
            "drug_exposure_start_date": ["2009-01-01"],
        },
        "concept": {
            "concept_id": [4182210, 378419, 4043378, 320128, 1001, 715997, 2001],
            "concept_name": [
                "Dementia",
                "Alzheimer's disease",
                "Alzheimer's disease with early onset",
                "Essential hypertension",
                "Unspecified dementia",
                "donepezil",
                "donepezil 10 MG Oral Tablet",
            ],
            "vocabulary_id": [
                "SNOMED",
                "SNOMED",
                "SNOMED",
                "SNOMED",
                "ICD10CM",
                "RxNorm",
                "RxNorm",
            ],
            "concept_code": ["52448006", "26929004", "416780008", "59621000", "F03.90", "1", "2"],
        },
        "concept_ancestor": {
            "ancestor_concept_id": [
                4182210,
                4182210,
                4182210,
                378419,
                378419,
                4043378,
                715997,
                2001,
            ],
            "descendant_concept_id": [
                4182210,
                378419,
                4043378,
                378419,
                4043378,
                4043378,
                2001,
                2001,
            ],
            "min_levels_of_separation": [0, 1, 2, 0, 1, 0, 1, 0],
            "max_levels_of_separation": [0, 1, 2, 0, 1, 0, 1, 0],
        },
    }


CONCEPT_COHORT = {
    "min_age": 65,
    "min_prior_observation_days": 730,
    "outcome": {"code_prefixes": [], "concept_ids": [4182210]},
    "exclusion": {"drug_prefixes": [], "drug_concept_ids": [715997]},
}


@pytest.mark.parametrize("kind", ["csv", "duckdb"])
def test_concept_ids_match_descendants_through_concept_ancestor(tmp_path, kind):
    _, events, codes, quality = run(tmp_path, write_cdm(tmp_path, kind, hierarchy_cdm()))
    parents = {c: p for c, _, p in codes.iter_rows()}
    assert parents["OMOP/378419"] == ["OMOP/4182210"]
    assert parents["OMOP/4043378"] == ["OMOP/378419", "OMOP/4182210"]
    # An ICD-10 code mapped from a source concept keeps its standard concept and its ancestors.
    assert parents["ICD10/F03.90"] == ["OMOP/378419", "OMOP/4182210"]
    assert parents["OMOP/2001"] == ["OMOP/715997"]
    assert parents["OMOP/320128"] == []
    assert quality.filter(pl.col("check") == "concept ancestry read")["n_rows"].to_list() == [4]

    cohort, attrition = build_cohort(events, CONCEPT_COHORT, check_splits=False, codes=codes)
    labels = dict(cohort.select("subject_id", "label").iter_rows())
    # 1: child concept, 2: grandchild, 4: ICD-10 code of a child concept, 3: not dementia;
    # 5: a descendant of the donepezil ingredient before index excludes the subject.
    assert labels == {1: True, 2: True, 3: False, 4: True}
    drug_step = attrition.filter(pl.col("step") == "no anti-dementia drug at or before index")
    assert drug_step["n_excluded"].to_list() == [1]

    # Without the hierarchy only the concept itself matches: nobody is a case.
    flat, _ = build_cohort(events, CONCEPT_COHORT, check_splits=False)
    assert dict(flat.select("subject_id", "label").iter_rows()) == dict.fromkeys(range(1, 6), False)


def test_concept_ancestor_without_its_columns_is_skipped_with_a_warning(tmp_path):
    tables = hierarchy_cdm()
    tables["concept_ancestor"] = {"ancestor_concept_id": [1], "child": [2]}
    _, _, _, quality = run(tmp_path, write_cdm(tmp_path, "csv", tables))
    skipped = quality.filter(pl.col("check") == "optional table skipped")
    assert skipped.select("column", "action").rows() == [("concept_ancestor", "skipped (warning)")]
    assert "'descendant_concept_id' missing" in skipped["detail"][0]


def test_each_event_takes_its_code_from_the_first_rule_that_applies():
    """The source concept's vocabulary first; then ATC links (drugs only) or the source value
    read as condition_source_vocabulary (conditions only), each for the events that the
    earlier rules left without a code."""
    rows = pl.DataFrame(
        {
            "_row": [0, 1, 2],
            "concept_id": [2001, 2001, 2001],
            "source_concept_id": [3001, 0, 0],
            "source_value": ["F0390", "F0390", "zzz"],
        },
        schema_overrides={"_row": pl.UInt32},
    )
    concepts = pl.DataFrame(
        {
            "concept_id": [3001],
            "concept_name": ["donepezil"],
            "vocabulary_id": ["ATC"],
            "concept_code": ["N06DA02"],
        }
    )
    drug_atc = pl.DataFrame(
        {"drug": [2001, 2001], "code": ["ATC/N06D", "ATC/N06DA"], "description": ["a", "b"]}
    )
    table = {t.name: t for t in CLINICAL_TABLES}

    def mapped(name: str) -> list[tuple]:
        frame = _mapped_codes(rows, table[name], concepts, drug_atc, "ICD10")
        return sorted(frame.select("_row", "code").rows())

    assert mapped("drug_exposure") == [
        (0, "ATC/N06DA02"),  # not also the linked classes: the vocabulary came first
        (1, "ATC/N06D"),
        (1, "ATC/N06DA"),
        (2, "ATC/N06D"),
        (2, "ATC/N06DA"),
    ]
    # Conditions: no ATC links; 'zzz' is no ICD-10 code, so row 2 is left to OMOP/<concept>.
    assert mapped("condition_occurrence") == [(0, "ATC/N06DA02"), (1, "ICD10/F03.90")]
    assert mapped("measurement") == [(0, "ATC/N06DA02")]
