"""Cohort invariants on hand-built subjects: index, exclusions, labels, censoring, splits."""

from __future__ import annotations

from datetime import datetime

import polars as pl
import pytest
from conftest import cohort_cfg

from rationale_bench.cohort.build import CohortError, build_cohort, split_of, training_subset


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


# --------------------------------------------------------------------------------------
# Attrition detail, defaults and the options of cohort.index / outcome / blackout / sampling
# --------------------------------------------------------------------------------------

import copy  # noqa: E402
from datetime import timedelta  # noqa: E402
from pathlib import Path  # noqa: E402

import yaml  # noqa: E402

from rationale_bench.cohort.build import (  # noqa: E402
    ATTRITION_COUNTS,
    CONFIRMATION_RULES,
    INDEX_STRATEGIES,
    resolve_definition,
    suppress_small_cells,
)
from rationale_bench.data.codes import ANTI_DEMENTIA_DRUG_PREFIXES, OUTCOME_TIERS  # noqa: E402

SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"


def test_golden_attrition_cases_noncases_and_deaths(hand_cohort):
    (_, attrition), _ = hand_cohort
    assert attrition.columns == ["step", *ATTRITION_COUNTS]
    assert attrition["n_cases"].to_list() == [None, None, 2, 2, 2, 2, 2]
    assert attrition["n_noncases"].to_list() == [None, None, 7, 5, 4, 3, 2]
    assert attrition["n_cases_excluded"].to_list() == [None, None, None, 0, 0, 0, 0]
    assert attrition["n_noncases_excluded"].to_list() == [None, None, None, 2, 1, 1, 1]
    # Subjects 5 and 7 die within five years of index; 5 (a non-case) is then dropped.
    assert attrition["n_died_in_window"].to_list() == [None, None, 2, 2, 2, 1, 1]
    labelled = attrition.filter(pl.col("n_cases").is_not_null())
    assert (labelled["n_cases"] + labelled["n_noncases"] == labelled["n_subjects"]).all()
    assert (
        labelled["n_cases_excluded"] + labelled["n_noncases_excluded"] == labelled["n_excluded"]
    )[1:].all()


def test_defaults_are_the_schemas():
    """The cohort's defaults are read from the schema (no copy in the code): an empty cohort
    section resolves to exactly what the validator fills in."""
    from jsonschema import Draft202012Validator, validators

    schema = yaml.safe_load(SCHEMA.read_text())
    cohort = schema["properties"]["cohort"]

    def fill_defaults(validator, properties, instance, node):  # jsonschema's documented recipe
        for key, sub in properties.items():
            if "default" in sub:
                instance.setdefault(key, copy.deepcopy(sub["default"]))
        yield from Draft202012Validator.VALIDATORS["properties"](
            validator, properties, instance, node
        )

    filling = validators.extend(Draft202012Validator, {"properties": fill_defaults})
    filled: dict = {}
    filling({**cohort, "$defs": schema["$defs"]}).validate(filled)
    assert resolve_definition({}) == filled
    # The schema's default drug list is the one the code documents.
    assert filled["exclusion"]["drug_prefixes"] == list(ANTI_DEMENTIA_DRUG_PREFIXES)
    props = cohort["properties"]
    assert props["index"]["properties"]["strategy"]["enum"] == list(INDEX_STRATEGIES)
    assert props["outcome"]["properties"]["tier"]["enum"] == list(OUTCOME_TIERS)
    rule = props["outcome"]["properties"]["confirmation"]["properties"]["rule"]
    assert rule["enum"] == list(CONFIRMATION_RULES)
    for tier, prefixes in OUTCOME_TIERS.items():  # each tier's list is documented
        doc = props["outcome"]["properties"]["tier"]["description"]
        assert f"'{tier}'" in doc
        for p in prefixes:
            assert p.split("/")[1] in doc, (tier, p)


def test_default_definition_equals_the_explicit_one(events_builder):
    events = hand_built(events_builder)
    split = {"seed": 1, "tuning_fraction": 0.0001, "held_out_fraction": 0.0001}
    explicit = build_cohort(events, cohort_cfg(split=split), check_splits=False)
    defaults = build_cohort(events, {"split": split}, check_splits=False)
    assert explicit[0].equals(defaults[0]) and explicit[1].equals(defaults[1])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"outcome": {"tier": "medium"}}, "cohort.outcome.tier 'medium' is unknown"),
        ({"index": {"strategy": "last_visit"}}, "cohort.index.strategy 'last_visit' is unknown"),
        ({"index": {"strategy": "fixed_age"}}, "fixed_age strategy needs an age"),
        ({"index": {"strategy": "fixed_age", "fixed_age": 60}}, "at or above cohort.min_age"),
        ({"outcome": {"regex": "(ICD10"}}, "not a valid regex"),
        ({"outcome": {"confirmation": {"rule": "three_codes"}}}, "rule 'three_codes'"),
        ({"outcome": {"code_prefixes": []}}, "outcome code set is empty"),
        ({"min_agee": 65}, r"cohort: unknown key\(s\) \['min_agee'\]"),
        ({"outcome": {"tierr": "core"}}, r"cohort.outcome: unknown key"),
        ({"case_control": {"controls_per_case": 0}}, "must be positive"),
    ],
)
def test_bad_definitions_are_named(override, message):
    with pytest.raises(CohortError, match=message):
        resolve_definition(cohort_cfg(**override))


def test_split_without_cases_is_refused(hand_cohort, events_builder):
    events = hand_built(events_builder)
    with pytest.raises(CohortError, match=r"split '\w+' has \d+ subjects and \d+ cases"):
        build_cohort(events, cohort_cfg())


def test_no_index_event_gives_a_specific_error(events_builder):
    events = hand_built(events_builder)
    cfg = cohort_cfg(index={"strategy": "baseline_date"})
    with pytest.raises(CohortError, match="no subject passes the index step.*baseline_date"):
        build_cohort(events, cfg, check_splits=False)


# ---- index strategies ------------------------------------------------------------------


def _index_of(cohort: pl.DataFrame) -> dict:
    return dict(zip(cohort["subject_id"], cohort["index_time"], strict=True))


def test_fixed_age_index(events_builder):
    b = events_builder
    b.person(1, "1940-01-01").visits(1, "2003-02-01", 18)  # observed through age 66: kept
    b.person(2, "1940-01-01").visits(2, "2003-02-01", 3)  # record ends at 65: not observed then
    b.person(3, "1940-01-01").visits(3, "2003-02-01", 18).add(3, "2005-06-01", "MEDS_DEATH")
    b.person(4, "1940-01-01").visits(4, "2005-06-01", 15)  # < 730 days observed before 66
    b.person(5, "1941-07-01").visits(5, "2003-02-01", 18)  # younger: later index date
    cfg = cohort_cfg(index={"strategy": "fixed_age", "fixed_age": 66})
    cohort, attrition = build_cohort(b.frame(), cfg, check_splits=False)
    days = 24107  # ceil(66 * 365.25)
    assert _index_of(cohort) == {
        1: datetime(1940, 1, 1) + timedelta(days=days),
        5: datetime(1941, 7, 1) + timedelta(days=days),
    }
    assert (cohort["age"] >= 66).all()
    assert attrition["step"][2].startswith("observed and alive at the fixed index age 66")


def test_baseline_date_index_is_first_eligible_baseline(events_builder):
    b = events_builder
    b.person(1, "1940-01-01").visits(1, "2000-02-01", 21)
    b.add(1, "2003-05-05", "BASELINE/ASSESSMENT")  # age 63: too young
    b.add(1, "2007-05-05", "BASELINE/ASSESSMENT")  # repeat assessment at 67: the index
    b.person(2, "1940-01-01").visits(2, "2000-02-01", 21)  # no assessment: no index
    b.person(3, "1938-01-01").visits(3, "2000-02-01", 21).add(3, "2006-03-03", "UKB/53-0.0")
    cfg = cohort_cfg(index={"strategy": "baseline_date"})
    cohort, _ = build_cohort(b.frame(), cfg, check_splits=False)
    assert _index_of(cohort) == {1: datetime(2007, 5, 5)}
    cfg = cohort_cfg(index={"strategy": "baseline_date", "baseline_code_prefixes": ["UKB/53-"]})
    cohort, _ = build_cohort(b.frame(), cfg, check_splits=False)
    assert _index_of(cohort) == {3: datetime(2006, 3, 3)}


def _many_subjects(b, n: int = 40):
    for s in range(1, n + 1):
        b.person(s, "1935-01-01").visits(s, f"{1996 + s % 5}-02-01", 24)
    return b.frame()


def test_random_visit_index_is_eligible_seeded_and_per_subject(events_builder):
    events = _many_subjects(events_builder)
    first = _index_of(build_cohort(events, cohort_cfg(), check_splits=False)[0])
    cfg = cohort_cfg(index={"strategy": "random_visit", "seed": 3})
    drawn = _index_of(build_cohort(events, cfg, check_splits=False)[0])
    again = _index_of(build_cohort(events, cfg, check_splits=False)[0])
    assert drawn == again  # deterministic
    visits = events.filter(pl.col("code") == "VISIT/OUTPATIENT")
    for sid, t in drawn.items():
        assert t >= first[sid]  # never before the first eligible visit
        assert t in set(visits.filter(pl.col("subject_id") == sid)["time"])
    assert sum(drawn[s] != first[s] for s in drawn) > len(drawn) // 2  # really drawn
    other = cohort_cfg(index={"strategy": "random_visit", "seed": 4})
    assert _index_of(build_cohort(events, other, check_splits=False)[0]) != drawn
    # A subject's draw does not depend on who else is in the data.
    alone = events.filter(pl.col("subject_id").is_in([7, 8]))
    assert _index_of(build_cohort(alone, cfg, check_splits=False)[0]) == {
        s: drawn[s] for s in (7, 8) if s in drawn
    }


# ---- outcome definition ----------------------------------------------------------------


def _labels_for(events_builder, codes: list[tuple[str, str]], **overrides) -> dict:
    """One subject per (date, code), index 2005-01-31, followed through 2020."""
    b = events_builder
    for sid, (when, code) in enumerate(codes, start=1):
        b.person(sid, "1940-01-01").visits(sid, "2003-02-01", 18)
        for c in code.split("+"):
            day, _, c = c.rpartition("@")
            b.add(sid, day or when, c)
    cohort, _ = build_cohort(b.frame(), cohort_cfg(**overrides), check_splits=False)
    return dict(zip(cohort["subject_id"], cohort["label"], strict=True))


TIER_CODES = [
    ("2007-01-01", "ICD10/G30.1"),
    ("2007-01-01", "ICD9/331.0"),
    ("2007-01-01", "ICD10/F03.90"),
    ("2007-01-01", "ICD10/F03.A0"),  # FY2023 severity codes, by prefix
    ("2007-01-01", "ICD10/F01.B11"),
    ("2007-01-01", "ICD10/F02.C4"),
    ("2007-01-01", "ICD9/290.12"),
    ("2007-01-01", "ICD9/294.11"),
    ("2007-01-01", "ICD9/331.82"),
    ("2007-01-01", "ICD10/R41.81"),
    ("2007-01-01", "ICD9/797"),
    ("2007-01-01", "ICD10/G31.84"),  # MCI: prodromal, in no tier
]


@pytest.mark.parametrize(
    ("tier", "cases"),
    [("narrow", {1, 2}), ("core", set(range(1, 10))), ("broad", set(range(1, 12)))],
)
def test_outcome_tiers(events_builder, tier, cases):
    labels = _labels_for(events_builder, TIER_CODES, outcome={"code_prefixes": None, "tier": tier})
    assert {s for s, y in labels.items() if y} == cases
    assert len(labels) == len(TIER_CODES)  # nobody excluded: all codes are after index


def test_tiers_are_nested_and_core_keeps_the_icd10_default():
    from rationale_bench.data.codes import ADRD_CODE_PREFIXES

    assert set(OUTCOME_TIERS["narrow"]) <= set(OUTCOME_TIERS["core"]) <= set(OUTCOME_TIERS["broad"])
    assert OUTCOME_TIERS["core"][: len(ADRD_CODE_PREFIXES)] == ADRD_CODE_PREFIXES
    assert not any(p.startswith("ICD10/G31.84") for t in OUTCOME_TIERS.values() for p in t)


def test_regex_and_omop_concept_ids_without_icd_codes(events_builder):
    codes = [
        ("2007-01-01", "SNOMED/26929004"),
        ("2007-01-01", "OMOP/4182210"),
        ("2007-01-01", "OMOP/41822100"),  # another concept: ids match exactly
        ("2007-01-01", "ICD10/F03.90"),
    ]
    labels = _labels_for(
        events_builder,
        codes,
        outcome={
            "code_prefixes": [],
            "regex": "^SNOMED/(26929004|52448006)$",
            "concept_ids": [4182210],
        },
    )
    assert labels == {1: True, 2: True, 3: False, 4: False}


def test_drugs_as_outcome_and_drug_concepts(events_builder):
    codes = [("2007-01-01", "ATC/N06DA02"), ("2007-01-01", "OMOP/19006111")]
    assert _labels_for(events_builder, codes) == {1: False, 2: False}
    events_builder.rows.clear()
    labels = _labels_for(
        events_builder,
        codes,
        outcome={"drugs_as_outcome": True},
        exclusion={"drug_concept_ids": [19006111]},
    )
    assert labels == {1: True, 2: True}


def test_confirmation_two_codes_within_days(events_builder):
    codes = [
        ("2007-01-01", "ICD10/F03.90"),  # single code: not confirmed
        ("2007-01-01", "ICD10/F03.90+2007-07-20@ICD10/F03.90"),  # 200 days: confirmed
        ("2007-01-01", "ICD10/F03.90+2008-02-05@ICD10/F03.90"),  # 400 days: not
        ("2007-01-01", "ICD10/F03.90+ICD10/G30.9"),  # same day: not a second occasion
        ("2010-01-20", "ICD10/F03.90+2010-04-01@ICD10/F03.90"),  # confirmed after the horizon
    ]
    rule = {"confirmation": {"rule": "two_codes", "within_days": 365}}
    labels = _labels_for(events_builder, codes, outcome=rule)
    assert labels == {1: False, 2: True, 3: False, 4: False, 5: True}


def test_confirmation_code_plus_drug(events_builder):
    codes = [
        ("2007-01-01", "ICD10/F03.90+2007-04-11@ATC/N06DA02"),  # drug 100 days later
        ("2007-01-01", "ICD10/F03.90+2008-06-01@ATC/N06DX01"),  # drug 517 days later: not
        ("2007-01-01", "ICD10/F03.90"),
    ]
    rule = {"confirmation": {"rule": "code_plus_drug", "within_days": 365}}
    labels = _labels_for(events_builder, codes, outcome=rule)
    assert labels == {1: True, 2: False, 3: False}


def test_onset_is_the_first_confirmed_code(events_builder):
    b = events_builder
    b.person(1, "1940-01-01").visits(1, "2003-02-01", 18)
    b.add(1, "2006-01-01", "ICD10/F03.90")  # unconfirmed
    b.add(1, "2008-01-01", "ICD10/F03.90").add(1, "2008-03-01", "ICD10/F03.90")
    rule = {"confirmation": {"rule": "two_codes", "within_days": 365}}
    cohort, _ = build_cohort(b.frame(), cohort_cfg(outcome=rule), check_splits=False)
    assert cohort["outcome_time"].to_list() == [datetime(2008, 1, 1)]


# ---- blackout, sampling, suppression, leakage --------------------------------------------


def test_blackout_sets_input_end_time_and_keeps_index_and_labels(hand_cohort, events_builder):
    (base, _), events = hand_cohort
    cfg = cohort_cfg(
        blackout_days=365, split={"seed": 1, "tuning_fraction": 0.0001, "held_out_fraction": 0.0001}
    )
    cohort, _ = build_cohort(events, cfg, check_splits=False)
    assert cohort.drop("input_end_time").equals(base.drop("input_end_time"))
    assert (base["input_end_time"] == base["index_time"]).all()
    assert (cohort["index_time"] - cohort["input_end_time"] == timedelta(days=365)).all()
    # The index-day visit and the visit a year before are no longer inputs.
    joined = events.join(
        cohort.select("subject_id", "index_time", "input_end_time"), on="subject_id"
    )
    blacked = joined.filter(
        (pl.col("time") >= pl.col("input_end_time")) & (pl.col("time") < pl.col("index_time"))
    )
    assert blacked.height > 0


def test_train_case_control_sampling(synthetic_events, synthetic_cohort):
    base, base_attrition = synthetic_cohort
    cfg = cohort_cfg(case_control={"controls_per_case": 2, "seed": 5})
    sampled, attrition = build_cohort(synthetic_events, cfg)
    train = sampled.filter(pl.col("split") == "train")
    base_train = base.filter(pl.col("split") == "train")
    n_cases = int(base_train["label"].sum())
    assert int(train["label"].sum()) == n_cases
    assert train.height - n_cases == 2 * n_cases < base_train.height - n_cases
    for split in ("tuning", "held_out"):  # never sampled
        assert sampled.filter(pl.col("split") == split).equals(
            base.filter(pl.col("split") == split)
        )
    last = attrition.row(-1, named=True)
    assert last["step"].startswith("train split only: non-cases sampled to 2 per case")
    assert last["n_cases_excluded"] == 0 and last["n_subjects"] == sampled.height
    assert attrition.head(base_attrition.height).equals(base_attrition)
    again, _ = build_cohort(synthetic_events, cfg)
    assert again.equals(sampled)
    other, _ = build_cohort(
        synthetic_events, cohort_cfg(case_control={"controls_per_case": 2, "seed": 6})
    )
    assert set(other["subject_id"]) != set(sampled["subject_id"])


def test_held_out_identical_across_sizes_seeds_and_case_control(synthetic_events, synthetic_cohort):
    base, _ = synthetic_cohort
    held = base.filter(pl.col("split") == "held_out")
    for ratio in (None, 1, 3):
        cfg = cohort_cfg(case_control={"controls_per_case": ratio, "seed": 0})
        cohort, _ = build_cohort(synthetic_events, cfg)
        assert cohort.filter(pl.col("split") == "held_out").equals(held)
        for seed in (1, 2):
            for n in (40, 80):  # 1:1 sampling leaves about 2 x 48 train subjects
                subset = training_subset(cohort, n, seed)
                assert not set(subset["subject_id"]) & set(held["subject_id"])
                assert set(subset["split"]) == {"train"}


@pytest.mark.parametrize(
    "override",
    [
        {},
        {"index": {"strategy": "random_visit", "seed": 2}},
        {"index": {"strategy": "fixed_age", "fixed_age": 70}},
        {"blackout_days": 730},
        {"outcome": {"tier": "broad", "confirmation": {"rule": "two_codes", "within_days": 365}}},
    ],
)
def test_leakage_invariants_on_synthetic_data(synthetic_events, synthetic_cohort, override):
    cfg = cohort_cfg(**override)
    cohort, attrition = build_cohort(synthetic_events, cfg, check_splits=False)
    defn = resolve_definition(cfg)
    from rationale_bench.cohort.build import drug_expr, outcome_code_expr

    joined = synthetic_events.join(
        cohort.select("subject_id", "index_time", "input_end_time"), on="subject_id"
    )
    # No outcome code or drug at or before index; every label's onset inside the window.
    prior = joined.filter(
        (pl.col("time") <= pl.col("index_time")) & (outcome_code_expr(defn) | drug_expr(defn))
    )
    assert prior.height == 0
    horizon = timedelta(days=cfg["horizon_days"])
    cases = cohort.filter(pl.col("label"))
    assert (cases["outcome_time"] > cases["index_time"]).all()
    assert (cases["outcome_time"] <= cases["index_time"] + horizon).all()
    assert cohort.filter(~pl.col("label"))["outcome_time"].is_null().all()
    assert (cohort["input_end_time"] <= cohort["index_time"]).all()
    # Splits are a function of the subject alone: identical to the default cohort's.
    base = synthetic_cohort[0].select("subject_id", base_split="split")
    both = cohort.join(base, on="subject_id")
    assert both.height > 0 and (both["split"] == both["base_split"]).all()
    assert (attrition["n_subjects"].diff().drop_nulls() <= 0).all()
    assert attrition["n_subjects"][0] == synthetic_events["subject_id"].n_unique()


def test_suppress_small_cells():
    frame = pl.DataFrame({"step": ["a", "b", "c", "d"], "n": [0, 3, 10, None], "m": [1, 2, 3, 4]})
    out = suppress_small_cells(frame, ["n"], 10)
    assert out["n"].to_list() == ["0", "<10", "10", None]
    assert out["m"].to_list() == [1, 2, 3, 4]  # other columns untouched
    assert suppress_small_cells(frame, ["n"], None).equals(frame)
    with pytest.raises(CohortError, match=r"column\(s\) \['x'\]"):
        suppress_small_cells(frame, ["x"], 5)


def test_suppressed_attrition_and_table_one(hand_cohort, synthetic_cohort, synthetic_histories):
    (_, attrition), _ = hand_cohort
    out = suppress_small_cells(attrition, ATTRITION_COUNTS, 5)
    assert out["n_subjects"].to_list() == ["11", "10", "9", "7", "6", "5", "<5"]
    assert out["n_cases"].to_list() == [None, None, "<5", "<5", "<5", "<5", "<5"]
    from rationale_bench.cohort.build import TABLE_ONE_COUNTS, table_one

    codes = synthetic_histories.select("subject_id", "codes").explode("codes")
    table = table_one(synthetic_cohort[0], codes.rename({"codes": "code"}).drop_nulls())
    big = int(table["n"].max())
    out = suppress_small_cells(table, TABLE_ONE_COUNTS, big)
    assert out["n"].to_list() == [str(n) if n >= big else f"<{big}" for n in table["n"]]


def test_resolve_definition_does_not_mutate_its_input():
    cfg = cohort_cfg(outcome={"tier": "narrow"})
    before = copy.deepcopy(cfg)
    defn = resolve_definition(cfg)
    assert cfg == before and defn["outcome"]["confirmation"]["rule"] == "none"


def _table_one_fixture() -> tuple[pl.DataFrame, pl.DataFrame]:
    cohort = pl.DataFrame(
        {
            "subject_id": [1, 2, 3, 4, 5, 6],
            "label": [True, True, False, False, False, False],
            "age": [70.0, 72.0, 68.0, 69.0, 71.0, 66.0],
            "sex": ["F", "M", "F", "F", "M", "M"],
            "followup_days": [900, 1200, 1826, 1900, 2000, 1830],
            "split": ["train", "train", "train", "train", "held_out", "held_out"],
        }
    )
    history = pl.DataFrame(
        {
            "subject_id": [1, 1, 1, 2, 2, 3, 3, 4, 5, 6, 9, 9],
            "code": [
                "ICD10/I10",
                "ICD10/I10.9",  # the same category twice: one subject
                "ATC/C09AA05",  # not ICD-10: not a condition
                "ICD10/I10",
                "ICD10/R41.3",
                "ICD10/I10",
                "ICD10/E11",
                "ICD10/E11.2",
                "ATC/N06DA02",  # not ICD-10: not a condition
                "ICD10/H90.3",
                "ICD10/Z99",  # subject 9 is not in the cohort
                "ICD10/Z99.1",
            ],
        }
    )
    return cohort, history


def test_table_one_lists_the_cohorts_top_icd10_categories_by_split_and_label():
    from rationale_bench.cohort.build import (
        TABLE_ONE_COUNTS,
        TOP_CONDITIONS,
        table_one,
        top_conditions,
    )

    cohort, history = _table_one_fixture()
    top = top_conditions(cohort, history)
    # I10: 3 subjects, E11: 2, then H90 and R41 (1 each, by code); Z99 is outside the cohort.
    assert top.select("category", "n_subjects").rows() == [
        ("I10", 3),
        ("E11", 2),
        ("H90", 1),
        ("R41", 1),
    ]
    assert top["name"][0] == "Essential (primary) hypertension"
    table = table_one(cohort, history)
    # Existing columns are kept, every count column of TABLE_ONE_COUNTS is present.
    for column in ("n", "age mean", "% female", "follow-up days median"):
        assert column in table.columns
    assert set(TABLE_ONE_COUNTS) <= set(table.columns) and len(TABLE_ONE_COUNTS) == 11
    rows = {(r["split"], r["label"]): r for r in table.iter_rows(named=True)}
    assert set(rows) == {("train", False), ("train", True), ("held_out", False)}
    assert {r["condition 1"] for r in rows.values()} == {"I10 Essential (primary) hypertension"}
    assert rows[("train", True)]["n condition 1"] == 2  # subjects 1 and 2
    assert rows[("train", True)]["% condition 1"] == 100.0
    assert rows[("train", False)]["n condition 1"] == 1  # subject 3
    assert rows[("train", False)]["n condition 2"] == 2  # E11: subjects 3 and 4
    assert rows[("held_out", False)]["n condition 3"] == 1  # H90: subject 6
    assert rows[("held_out", False)]["% condition 3"] == 50.0
    assert rows[("train", True)]["n condition 4"] == 1  # R41: subject 2
    # Fewer than TOP_CONDITIONS categories: the remaining slots are null.
    assert TOP_CONDITIONS == 10
    assert all(r["condition 5"] is None and r["n condition 10"] is None for r in rows.values())


def test_table_one_suppression_hides_small_condition_counts_and_their_percentages():
    from rationale_bench.cohort.build import suppress_table_one, table_one

    cohort, history = _table_one_fixture()
    table = table_one(cohort, history)
    out = suppress_table_one(table, 2)
    rows = {(r["split"], r["label"]): r for r in out.iter_rows(named=True)}
    assert rows[("train", True)]["n condition 1"] == "2"
    assert rows[("train", True)]["% condition 1"] == 100.0
    assert rows[("train", False)]["n condition 1"] == "<2"
    assert rows[("train", False)]["% condition 1"] is None  # would give the count back
    assert rows[("held_out", False)]["n condition 1"] == "0"  # zero is not a small cell
    assert rows[("held_out", False)]["% condition 1"] == 0.0
    assert rows[("train", False)]["n"] == "2"
    assert rows[("train", True)]["n condition 10"] is None
    assert suppress_table_one(table, None).equals(table)
