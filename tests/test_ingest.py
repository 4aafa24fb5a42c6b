"""MEDS ingest, the shared data-quality checks, the synthetic audit and the ingest DAG."""

from __future__ import annotations

import shutil
from datetime import datetime

import polars as pl
import pytest
import yaml
from workflow_helpers import REPO, dry_run, planned_outputs, snakemake

from rationale_bench.data.ingest import audit_synthetic, ingest
from rationale_bench.data.quality import DataError, QualityReport, clean_events
from rationale_bench.data.synthetic import write_events

DATA = {"date_formats": ["%Y-%m-%d"], "extra_vocabularies": []}
D = datetime


def meds_frame(rows) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema={
            "subject_id": pl.Int64,
            "time": pl.Datetime("us"),
            "code": pl.String,
            "numeric_value": pl.Float32,
        },
        orient="row",
    )


SHARD_0 = [
    (1, D(1950, 1, 1), "MEDS_BIRTH", None),
    (1, None, "SEX/F", None),  # static: no time is fine
    (1, D(1949, 12, 31), "ICD10/I10", None),  # before birth
    (1, D(2010, 1, 1), "VISIT/OUTPATIENT", None),
    (1, D(2010, 1, 1), "LAB/LDL", 130.0),
    (1, D(2010, 1, 1), "LAB/LDL", 130.0),  # exact duplicate
    (1, D(2010, 1, 1), "LAB/LDL", 131.0),  # same time, other value: kept
    (1, D(2011, 1, 1), "FOO/1", None),  # unknown code system
    (1, None, "ICD10/E11", None),  # no time on a non-static code
    (1, D(2019, 5, 5, 23), "MEDS_DEATH", None),
    (1, D(2019, 5, 5, 23, 30), "VISIT/INPATIENT", None),  # same day as death: kept
    (1, D(2019, 5, 6), "ICD10/I63", None),  # after death
]
SHARD_1 = [
    (2, D(2012, 3, 3), "ICD10/I10", None),  # subject without birth or sex
    (3, D(1960, 1, 1), "MEDS_BIRTH", None),
    (3, D(1960, 1, 1), "SEX/M", None),
    (3, D(2015, 1, 1), "BAR/2", None),
    (3, D(2015, 2, 2), "ICD10/i10", None),  # lower case: normalised to ICD10/I10
    (3, D(2015, 3, 3), "ICD10/1234", None),  # known system, malformed code
]


@pytest.fixture
def meds_dataset(tmp_path):
    root = tmp_path / "meds"
    (root / "data" / "held_out").mkdir(parents=True)
    (root / "metadata").mkdir()
    meds_frame(SHARD_0).write_parquet(root / "data" / "0.parquet")
    meds_frame(SHARD_1).drop("numeric_value").write_parquet(
        root / "data" / "held_out" / "1.parquet"
    )
    pl.DataFrame(
        {
            "code": ["ICD10/I10", "FOO/1", "ICD10/I10"],
            "description": ["Essential hypertension", "a local code", "duplicate"],
            "parent_codes": [None, None, None],
        }
    ).write_parquet(root / "metadata" / "codes.parquet")
    return root


def run_meds(tmp_path, path):
    out = tmp_path / "out"
    ingest(
        {**DATA, "source": "meds", "meds": {"path": str(path)}},
        out / "events.parquet",
        out / "codes.parquet",
        out / "data_quality.csv",
    )
    return (
        pl.read_parquet(out / "events.parquet"),
        pl.read_parquet(out / "codes.parquet"),
        pl.read_csv(out / "data_quality.csv"),
    )


def test_meds_dataset_is_cleaned_counted_and_keeps_its_code_names(tmp_path, meds_dataset):
    events, codes, quality = run_meds(tmp_path, meds_dataset)
    assert events.rows() == [
        (1, None, "DATE_UNKNOWN/ICD10/I10", None),  # dated before birth: code kept, date not
        (1, None, "SEX/F", None),
        (1, D(1950, 1, 1), "MEDS_BIRTH", None),
        (1, D(2010, 1, 1), "LAB/LDL", 130.0),
        (1, D(2010, 1, 1), "LAB/LDL", 131.0),
        (1, D(2010, 1, 1), "VISIT/OUTPATIENT", None),
        (1, D(2011, 1, 1), "FOO/1", None),
        (1, D(2019, 5, 5, 23), "MEDS_DEATH", None),
        (1, D(2019, 5, 5, 23, 30), "VISIT/INPATIENT", None),
        (2, D(2012, 3, 3), "ICD10/I10", None),
        (3, D(1960, 1, 1), "MEDS_BIRTH", None),
        (3, D(1960, 1, 1), "SEX/M", None),
        (3, D(2015, 1, 1), "BAR/2", None),
        (3, D(2015, 2, 2), "ICD10/I10", None),
        (3, D(2015, 3, 3), "ICD10/1234", None),
    ]
    assert codes.rows() == [
        ("FOO/1", "a local code", []),
        ("ICD10/I10", "Essential hypertension", []),
    ]
    golden = [
        (r["check"], r["column"], r["n_rows"], r["action"]) for r in quality.iter_rows(named=True)
    ]
    assert golden == [
        ("duplicate code row", "code", 2, "first kept (warning)"),
        ("code names read", None, 3, "info"),
        # SEX/F and ICD10/E11 (no time) after timed rows, 1949 after 1950.
        ("shard not sorted by subject_id, time", "subject_id, time", 3, "kept (warning)"),
        ("code normalised", "code", 1, "rewritten"),
        ("extraction date", "time", 0, "info"),
        ("events checked", None, 18, "info"),
        ("event after death", "time", 1, "dropped"),
        ("event before birth", "time", 1, "dropped"),
        ("missing time", "time", 1, "dropped"),
        ("code kept with unknown date", "time", 1, "kept as DATE_UNKNOWN/<code>"),
        ("subject without birth", "code", 1, "kept (warning)"),
        ("subject without sex", "code", 1, "kept (warning)"),
        ("unknown code system", "code", 1, "kept (warning)"),
        ("unknown code system", "code", 1, "kept (warning)"),
        ("malformed code", "code", 1, "kept (warning)"),
        ("exact duplicate event", "subject_id, time, code, numeric_value", 1, "dropped"),
        ("events written", None, 15, "info"),
    ]
    details = quality.filter(pl.col("check") == "unknown code system")["detail"].to_list()
    assert "'BAR' (e.g. BAR/2)" in details[0] and "'FOO' (e.g. FOO/1)" in details[1]
    # Nothing vanishes: read = written + dropped - date-unknown markers added.
    dropped = quality.filter(pl.col("action") == "dropped")["n_rows"].sum()
    assert 15 + dropped - 1 == 18
    malformed = quality.filter(pl.col("check") == "malformed code")["detail"][0]
    assert "ICD10 code (e.g. ICD10/1234)" in malformed


def test_extra_vocabularies_silence_the_unknown_code_warning(tmp_path, meds_dataset):
    out = tmp_path / "out"
    report = ingest(
        {
            **DATA,
            "extra_vocabularies": ["FOO", "BAR"],
            "source": "meds",
            "meds": {"path": str(meds_dataset)},
        },
        out / "events.parquet",
        out / "codes.parquet",
        out / "data_quality.csv",
    )
    assert "unknown code system" not in [r["check"] for r in report.rows]


def test_meds_without_metadata_writes_an_empty_codes_table(tmp_path):
    path = tmp_path / "events.parquet"
    meds_frame(SHARD_1).write_parquet(path)
    _, codes, _ = run_meds(tmp_path, path)
    assert codes.height == 0
    assert codes.schema == pl.Schema(
        {"code": pl.String, "description": pl.String, "parent_codes": pl.List(pl.String)}
    )


@pytest.mark.parametrize(
    "frame, message",
    [
        (
            pl.DataFrame({"subject_id": [1], "when": [D(2000, 1, 1)], "code": ["MEDS_BIRTH"]}),
            r"bad\.parquet: column\(s\) 'time' missing; MEDS events needs them \(found: "
            r"subject_id, when, code\)",
        ),
        (
            pl.DataFrame({"subject_id": [1], "time": ["2000-01-01"], "code": ["MEDS_BIRTH"]}),
            r"bad\.parquet: column 'time' has type String, expected a datetime",
        ),
        (
            pl.DataFrame({"subject_id": ["a"], "time": [D(2000, 1, 1)], "code": ["MEDS_BIRTH"]}),
            r"bad\.parquet: column 'subject_id' has type String, expected an integer",
        ),
        (
            pl.DataFrame({"subject_id": [1.5], "time": [D(2000, 1, 1)], "code": ["MEDS_BIRTH"]}),
            # whole-number floats are ids (tests/test_bad_inputs.py); 1.5 is not
            r"bad\.parquet: column 'subject_id' is a float column with 1 values that are not",
        ),
        (
            pl.DataFrame({"subject_id": [1], "time": [D(2000, 1, 1)], "code": [7]}),
            r"bad\.parquet: column 'code' has type Int64, expected a string",
        ),
        (
            pl.DataFrame(
                {"subject_id": [1], "time": [D(2000, 1, 1)], "code": ["X"], "numeric_value": ["1"]}
            ),
            r"bad\.parquet: column 'numeric_value' has type String, expected a number",
        ),
        (
            meds_frame([]),
            r"bad\.parquet: the data holds no events",
        ),
    ],
)
def test_bad_meds_shards_stop_naming_the_shard_and_column(tmp_path, frame, message):
    path = tmp_path / "bad.parquet"
    frame.write_parquet(path)
    with pytest.raises(DataError, match=message):
        run_meds(tmp_path, path)


def test_synthetic_output_passes_the_audit_in_chunks(tmp_path):
    events = tmp_path / "events.parquet"
    write_events(events, 120, seed=3)
    whole = audit_synthetic(events, tmp_path / "codes.parquet", tmp_path / "dq.csv")
    assert [r["check"] for r in whole.rows] == ["events checked"]
    assert whole.rows[0]["detail"] == "120 subjects"
    chunked = audit_synthetic(events, tmp_path / "c.parquet", tmp_path / "c.csv", chunk_subjects=7)
    assert chunked.rows == whole.rows
    assert pl.read_parquet(tmp_path / "codes.parquet").height == 0
    assert (
        pl.read_csv(tmp_path / "dq.csv")["n_rows"][0]
        == pl.scan_parquet(events).select(pl.len()).collect().item()
    )


def test_synthetic_audit_counts_duplicates_as_a_warning(tmp_path):
    events = tmp_path / "events.parquet"
    lab = (3, D(2015, 1, 1), "LAB/HBA1C", 6.6)
    meds_frame([*SHARD_1[1:3], lab, lab]).write_parquet(events)
    report = audit_synthetic(events, tmp_path / "codes.parquet", tmp_path / "dq.csv")
    assert [(r["check"], r["n_rows"], r["action"]) for r in report.rows] == [
        ("events checked", 4, "info"),
        ("exact duplicate event", 1, "kept (warning)"),
    ]
    # Left in place: the audit never rewrites the generator's file.
    assert pl.read_parquet(events).height == 4


def test_synthetic_audit_fails_on_a_generator_bug(tmp_path):
    events = tmp_path / "events.parquet"
    meds_frame(SHARD_0).write_parquet(events)
    with pytest.raises(DataError, match=r"bug in rationale_bench\.data\.synthetic"):
        audit_synthetic(events, tmp_path / "codes.parquet", tmp_path / "dq.csv")


def test_clean_events_counts_each_row_once(tmp_path):
    # A duplicate that is also before birth is counted once, as before birth; the code stays,
    # once, as a date-unknown marker.
    frame = meds_frame(
        [
            (1, D(1950, 1, 1), "MEDS_BIRTH", None),
            (1, D(1940, 1, 1), "ICD10/I10", None),
            (1, D(1940, 1, 1), "ICD10/I10", None),
            (1, D(1960, 1, 1), "SEX/F", None),
        ]
    )
    report = QualityReport()
    clean, kept = clean_events(frame.lazy(), report, "x")
    assert kept == 4  # 2 kept + 2 markers before deduplication
    assert clean.collect()["code"].to_list() == ["DATE_UNKNOWN/ICD10/I10", "MEDS_BIRTH", "SEX/F"]
    assert [(r["check"], r["n_rows"]) for r in report.rows] == [
        ("extraction date", 0),
        ("events checked", 4),
        ("event before birth", 2),
        ("code kept with unknown date", 2),
    ]


# --- DAG: each source schedules its own ingest rule, with the three ingest outputs ---


def study_config(tmp_path, data: dict):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["data"] = data
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("source", ["omop", "first_occurrence", "meds"])
def test_dry_run_schedules_the_source_ingest_rule(tmp_path, source):
    workdir = tmp_path / "work"
    workdir.mkdir()
    shutil.copy(REPO / "config.yaml", workdir / "config.yaml")
    data_path = tmp_path / ("fo.csv" if source == "first_occurrence" else "folder")
    if source != "first_occurrence":
        data_path.mkdir()
    else:
        data_path.write_text("eid\n")
    configfile = study_config(tmp_path, {"source": source, source: {"path": str(data_path)}})
    counts = dry_run(workdir, configfile=configfile)
    assert counts[f"ingest_{source}"] == 1
    others = {"synthesize_events", "ingest_meds", "ingest_omop", "ingest_first_occurrence"}
    assert not (others - {f"ingest_{source}"}) & set(counts)
    assert counts["build_cohort"] == 1
    result = snakemake(workdir, "-n", "-p", configfile=configfile)
    outputs = planned_outputs(result.stdout + result.stderr)
    for name in ("events.parquet", "codes.parquet", "data_quality.csv"):
        assert f"results/data/{name}" in outputs


def test_unknown_first_occurrence_key_is_a_config_error(tmp_path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    configfile = study_config(
        tmp_path, {"source": "first_occurrence", "first_occurrence": {"path": "x", "id_col": "eid"}}
    )
    result = snakemake(workdir, "-n", configfile=configfile, check=False)
    assert result.returncode != 0
    assert "id_col" in result.stdout + result.stderr


def test_ingest_rule_runs_through_snakemake(tmp_path):
    """The one ingest job of a first-occurrence study, run by Snakemake: script wiring, log."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    table = tmp_path / "fo.csv"
    pl.DataFrame(
        {
            "eid": [1, 2],
            "birth_year": [1940, 1941],
            "sex": [0, 1],
            "baseline_date": ["2008-01-01", "2009-01-01"],
            "F03": ["2011-01-01", ""],
            "I10": ["1900-01-01", "2000-01-01"],
        }
    ).write_csv(table)
    configfile = study_config(
        tmp_path, {"source": "first_occurrence", "first_occurrence": {"path": str(table)}}
    )
    snakemake(workdir, "--cores", "1", "results/data/events.parquet", configfile=configfile)
    events = pl.read_parquet(workdir / "results" / "data" / "events.parquet")
    icd = events.filter(pl.col("code").str.starts_with("ICD10/")).select("subject_id", "code")
    assert icd.rows() == [(1, "ICD10/F03"), (2, "ICD10/I10")]
    assert pl.read_parquet(workdir / "results" / "data" / "codes.parquet").height == 0
    quality = pl.read_csv(workdir / "results" / "data" / "data_quality.csv")
    assert ("special date", 1, "kept as DATE_UNKNOWN/<code>") in quality.select(
        "check", "n_rows", "action"
    ).rows()
    log = (workdir / "results" / "logs" / "ingest_first_occurrence.log").read_text()
    assert "special date" in log and "events written" in log


def test_synthetic_rule_writes_the_three_ingest_files(tmp_path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    configfile = study_config(
        tmp_path, {"source": "synthetic", "synthetic": {"n_subjects": 150, "seed": 5}}
    )
    snakemake(workdir, "--cores", "1", "results/data/events.parquet", configfile=configfile)
    data = workdir / "results" / "data"
    n_events = pl.scan_parquet(data / "events.parquet").select(pl.len()).collect().item()
    quality = pl.read_csv(data / "data_quality.csv")
    assert quality.select("check", "n_rows").rows() == [("events checked", n_events)]
    assert pl.read_parquet(data / "codes.parquet").height == 0


def test_meds_shards_are_checked_against_the_official_meds_schema(tmp_path):
    """meds.DataSchema types, one shard per subject and sorted shards: warnings, with counts."""
    from rationale_bench.data.quality import check_meds_conformance

    good, bad = tmp_path / "0.parquet", tmp_path / "1.parquet"
    meds_frame(SHARD_1).write_parquet(good)  # sorted, MEDS types
    meds_frame([SHARD_1[0], SHARD_0[0], SHARD_0[3]]).with_columns(
        pl.col("subject_id").cast(pl.Int32), pl.col("numeric_value").cast(pl.Float64)
    ).write_parquet(bad)
    report = QualityReport()
    check_meds_conformance([good, bad], report)
    rows = {(r["check"], r["file"]): r for r in report.rows}
    assert set(rows) == {
        ("not the MEDS data schema", str(bad)),
        ("subject in several shards", f"{good}, {bad}"),
        ("shard not sorted by subject_id, time", str(bad)),
    }
    schema_row = rows[("not the MEDS data schema", str(bad))]
    assert schema_row["column"] == "subject_id, numeric_value" and schema_row["n_rows"] == 3
    assert "subject_id is int32, not int64" in schema_row["detail"]
    assert rows[("subject in several shards", f"{good}, {bad}")]["n_rows"] == 1  # subject 2
    assert rows[("shard not sorted by subject_id, time", str(bad))]["n_rows"] == 1  # 1 after 2


def test_ingested_events_and_codes_follow_the_meds_schemas(tmp_path, meds_dataset):
    import meds
    import pyarrow as pa
    import pyarrow.parquet as pq

    def plain(schema: pa.Schema) -> pa.Schema:
        # parquet stores string and large_string alike; polars writes the latter.
        def fix(t: pa.DataType) -> pa.DataType:
            if pa.types.is_large_string(t):
                return pa.string()
            if pa.types.is_list(t) or pa.types.is_large_list(t):
                return pa.list_(fix(t.value_type))
            return t

        return pa.schema([pa.field(f.name, fix(f.type)) for f in schema])

    events, codes, _ = run_meds(tmp_path, meds_dataset)
    out = tmp_path / "out"
    meds.DataSchema.validate(plain(pq.read_schema(out / "events.parquet")))
    meds.CodeMetadataSchema.validate(plain(pq.read_schema(out / "codes.parquet")))
    # Sorted by subject and time, one birth per subject, nothing after a death.
    assert events.equals(events.sort("subject_id", "time", nulls_last=False, maintain_order=True))
    deaths = events.filter(pl.col("code") == "MEDS_DEATH").select("subject_id", death="time")
    after = events.join(deaths, on="subject_id").filter(
        pl.col("time").dt.date() > pl.col("death").dt.date()
    )
    assert after.height == 0


def test_conflicting_deaths_are_counted():
    report = QualityReport()
    rows = [
        (1, D(1950, 1, 1), "MEDS_BIRTH", None),
        (1, D(1950, 1, 1), "SEX/F", None),
        (1, D(2019, 1, 1), "MEDS_DEATH", None),
        (1, D(2020, 1, 1), "MEDS_DEATH", None),
    ]
    clean_events(meds_frame(rows).lazy(), report, "x.parquet")
    assert [
        r["n_rows"] for r in report.rows if r["check"] == "subject with conflicting deaths"
    ] == [1]
