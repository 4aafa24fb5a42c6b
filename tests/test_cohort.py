"""Cohort invariants on hand-built subjects: index, exclusions, labels, censoring, splits."""

from __future__ import annotations

from datetime import datetime

import polars as pl
import pytest
from conftest import cohort_cfg

from rationale_bench.cohort import CohortError, build_cohort, split_of, training_subset


def hand_built(b):
    # 1: non-case, born 1940, visits 2003-2020 -> index 2005 (age 65, 2 y observation)
    b.person(1, "1940-03-01").visits(1, "2003-03-10", 18, "ICD10/I10")
    # 2: case, dementia 3 years after index
    b.person(2, "1940-01-01").visits(2, "2003-02-01", 6).add(2, "2008-06-01", "ICD10/F03.90")
    # 3: prior ADRD before index -> excluded
    b.person(3, "1940-01-01").add(3, "2004-01-01", "ICD10/G30.9").visits(3, "2003-02-01", 18)
    # 4: anti-dementia drug before index -> excluded
    b.person(4, "1940-01-01").add(4, "2004-06-01", "ATC/N06DA02").visits(4, "2003-02-01", 18)
    # 5: non-case who dies 2 years after index -> dropped (censored)
    b.person(5, "1940-01-01").visits(5, "2003-02-01", 4).add(5, "2007-03-01", "MEDS_DEATH")
    # 6: non-case lost to follow-up after 3 years -> dropped
    b.person(6, "1940-01-01").visits(6, "2003-02-01", 5)
    # 7: case with short follow-up (dies soon after diagnosis) -> kept
    b.person(7, "1940-01-01").visits(7, "2003-02-01", 3).add(7, "2005-09-01", "ICD10/G30.1")
    b.add(7, "2005-12-01", "MEDS_DEATH")
    # 8: too young throughout -> no eligible index
    b.person(8, "1970-01-01").visits(8, "2003-02-01", 18)
    # 9: outcome exactly at the index visit -> excluded (prior outcome, not a label)
    b.person(9, "1940-01-01").visits(9, "2003-02-01", 18).add(9, "2005-01-31", "ICD10/F01.50")
    # 10: outcome just after the 5-year window -> non-case
    b.person(10, "1940-01-01").visits(10, "2003-02-01", 18).add(10, "2010-02-15", "ICD10/F03.90")
    # 11: no sex recorded
    b.rows.append((11, datetime(1940, 1, 1), "MEDS_BIRTH", None))
    b.visits(11, "2003-02-01", 18)
    return b.frame()


@pytest.fixture
def hand_cohort(events_builder):
    events = hand_built(events_builder)
    cfg = cohort_cfg(split={"seed": 1, "tuning_fraction": 0.0001, "held_out_fraction": 0.0001})
    # The hand cohort is too small for every split to hold cases.
    return build_cohort(events, cfg, check_splits=False), events


def test_golden_attrition(hand_cohort):
    (cohort, attrition), _ = hand_cohort
    assert attrition["n_subjects"].to_list() == [11, 10, 9, 7, 6, 5, 4]
    assert attrition["n_subjects"][0] == 11  # first row is the input
    assert attrition["n_excluded"].to_list() == [0, 1, 1, 2, 1, 1, 1]
    assert (attrition["n_subjects"].diff().drop_nulls() <= 0).all()  # monotone
    assert sorted(cohort["subject_id"].to_list()) == [1, 2, 7, 10]
    labels = dict(zip(cohort["subject_id"], cohort["label"], strict=True))
    assert labels == {1: False, 2: True, 7: True, 10: False}


def test_index_is_first_eligible_visit(hand_cohort):
    (cohort, _), _ = hand_cohort
    index = dict(zip(cohort["subject_id"], cohort["index_time"], strict=True))
    # Subject 1 turns 65 on 2005-03-01; visits every 365 days from 2003-03-10, and the one on
    # 2005-03-09 is exactly 730 days after the first: eligible (the bound is inclusive).
    assert index[1] == datetime(2005, 3, 9)
    assert cohort.filter(pl.col("subject_id") == 1)["age"][0] >= 65


def test_case_with_short_followup_kept(hand_cohort):
    (cohort, _), _ = hand_cohort
    row = cohort.filter(pl.col("subject_id") == 7).row(0, named=True)
    assert row["label"] and row["followup_days"] < 1826


def test_outcome_window_is_open_at_index_and_closed_at_horizon(events_builder):
    b = events_builder
    b.person(1, "1940-01-01").visits(1, "2003-02-01", 18)
    b.add(1, "2010-01-30", "ICD10/F03.90")  # index 2005-01-31 + 1826 days = 2010-01-31
    b.person(2, "1940-01-01").visits(2, "2003-02-01", 18)
    b.add(2, "2010-02-01", "ICD10/F03.90")  # one day after the window
    cohort, _ = build_cohort(b.frame(), cohort_cfg(), check_splits=False)
    labels = dict(zip(cohort["subject_id"], cohort["label"], strict=True))
    assert labels == {1: True, 2: False}


def test_missing_column_is_named(events_builder):
    events = events_builder.person(1, "1940-01-01").frame().drop("code")
    with pytest.raises(CohortError, match="column 'code' is missing"):
        build_cohort(events, cohort_cfg())


def test_wrong_type_is_named(events_builder):
    events = (
        events_builder.person(1, "1940-01-01").frame().with_columns(pl.col("time").cast(pl.String))
    )
    with pytest.raises(CohortError, match="column 'time' has type"):
        build_cohort(events, cohort_cfg())


def test_empty_cohort_explains(events_builder):
    events = events_builder.person(1, "1990-01-01").visits(1, "2003-02-01", 5).frame()
    with pytest.raises(CohortError, match="no subject passes"):
        build_cohort(events, cohort_cfg())


def test_split_is_deterministic_and_independent_of_other_subjects():
    first = [split_of(s, 1, 0.1, 0.3) for s in range(2000)]
    again = [split_of(s, 1, 0.1, 0.3) for s in range(2000)]
    assert first == again
    shares = {k: first.count(k) / 2000 for k in ("train", "tuning", "held_out")}
    assert abs(shares["held_out"] - 0.3) < 0.04 and abs(shares["tuning"] - 0.1) < 0.03


def test_synthetic_cohort_invariants(synthetic_events, synthetic_cohort):
    cohort, attrition = synthetic_cohort
    assert cohort["subject_id"].is_unique().all()
    assert set(cohort["split"]) == {"train", "tuning", "held_out"}
    for split in ("train", "tuning", "held_out"):
        part = cohort.filter(pl.col("split") == split)
        assert 0 < part["label"].sum() < part.height
    # No subject has an outcome code or anti-dementia drug at or before index.
    joined = synthetic_events.join(cohort.select("subject_id", "index_time"), on="subject_id")
    prior = joined.filter(
        (pl.col("time") <= pl.col("index_time"))
        & (
            pl.col("code").str.starts_with("ICD10/F03")
            | pl.col("code").str.starts_with("ICD10/G30")
            | pl.col("code").str.starts_with("ATC/N06DA")
        )
    )
    assert prior.height == 0
    assert attrition["n_subjects"][0] == synthetic_events["subject_id"].n_unique()


def test_training_subsets_nested_stratified_and_format_free(synthetic_cohort):
    cohort, _ = synthetic_cohort
    small = training_subset(cohort, 100, seed=1)
    large = training_subset(cohort, 400, seed=1)
    assert set(small["subject_id"]) <= set(large["subject_id"])
    assert small["subject_id"].to_list() == large["subject_id"].to_list()[:100]
    assert set(large["split"]) == {"train"}
    train_prev = cohort.filter(pl.col("split") == "train")["label"].mean()
    assert abs(small["label"].mean() - train_prev) <= 0.02
    other_seed = training_subset(cohort, 100, seed=2)
    assert set(other_seed["subject_id"]) != set(small["subject_id"])
    with pytest.raises(CohortError, match="training split has only"):
        training_subset(cohort, 10**6, seed=1)


def test_held_out_identical_for_every_configuration(synthetic_cohort):
    cohort, _ = synthetic_cohort
    held = set(cohort.filter(pl.col("split") == "held_out")["subject_id"])
    for seed in (1, 2):
        for n in (100, 400):
            assert not held & set(training_subset(cohort, n, seed)["subject_id"])
