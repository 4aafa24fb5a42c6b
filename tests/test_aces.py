"""The ACES task export: valid in the ACES configuration language, and the same definition.

es-aces 0.7.3 is not installed here: it pins polars < 2 and would replace the project's
polars 2.1.0. These tests therefore check the file against the ACES configuration grammar
(docs/source/configuration.md of justin13601/ACES) and evaluate its regex predicates with
polars ``str.contains``, which is how ACES evaluates them on MEDS data.
"""

from __future__ import annotations

import re
from datetime import datetime as DT

import polars as pl
import pytest
import yaml
from conftest import cohort_cfg

from rationale_bench.cohort.aces import (
    aces_task,
    compare_labels,
    not_prefix_regex,
    prefix_regex,
    write_aces_task,
)
from rationale_bench.cohort.build import drug_expr, outcome_code_expr, resolve_definition
from rationale_bench.data.codes import OUTCOME_TIERS, matches_any

HAS = re.compile(r"^\((None|\d+), (None|\d+)\)$")
BOUND = re.compile(
    r"^(?P<ref>[A-Za-z0-9_]+(?:\.(?:start|end))?)"
    r"(?:\s*(?P<op>[+-])\s*(?P<n>\d+) days|\s*(?P<arrow>->|<-)\s*(?P<pred>\w+))?$"
)
SPECIAL = {"_ANY_EVENT"}


def check_aces_grammar(task: dict) -> None:
    """Assert ``task`` follows the ACES task configuration rules."""
    assert set(task) == {"predicates", "trigger", "windows"}
    preds = task["predicates"]
    plain = {n for n, p in preds.items() if "code" in p}
    for name, pred in preds.items():
        assert set(pred) in ({"code"}, {"expr"}), name
        if "code" in pred:
            code = pred["code"]
            if isinstance(code, dict):
                assert set(code) == {"regex"} and code["regex"], name
                re.compile(code["regex"])
            else:
                assert isinstance(code, str) and code
        else:
            m = re.fullmatch(r"(and|or)\((.+)\)", pred["expr"])
            assert m, pred
            inputs = [x.strip() for x in m.group(2).split(",")]
            assert len(inputs) >= 2 and set(inputs) <= plain
    assert task["trigger"] in preds
    seen: set[str] = set()
    labels, index_ts = [], []
    for name, w in task["windows"].items():
        assert {"start", "end", "start_inclusive", "end_inclusive"} <= set(w), name
        assert set(w) <= {
            "start",
            "end",
            "start_inclusive",
            "end_inclusive",
            "has",
            "label",
            "index_timestamp",
        }
        assert isinstance(w["start_inclusive"], bool) and isinstance(w["end_inclusive"], bool)
        assert not (w["start"] is None and w["end"] is None)
        external = 0
        for side, other in (("start", "end"), ("end", "start")):
            bound = w[side]
            if bound is None:
                continue
            m = BOUND.match(bound)
            assert m, (name, side, bound)
            ref = m.group("ref")
            if ref == other:
                # Internal: start = end - d is invalid, end = start + d is the valid form.
                assert side == "end" and m.group("op") in ("+", None), (name, bound)
            else:
                external += 1
                assert ref == "trigger" or ref.split(".")[0] in seen, (name, ref)
            if m.group("pred"):
                assert m.group("pred") in preds
        assert external == 1, name  # exactly one side anchors the window
        for pred, bounds in w.get("has", {}).items():
            assert pred in preds or pred in SPECIAL, (name, pred)
            assert HAS.match(bounds), (name, bounds)
        if "label" in w:
            labels.append(w["label"])
            assert w["label"] in preds
        if "index_timestamp" in w:
            index_ts.append(w["index_timestamp"])
            assert w["index_timestamp"] in ("start", "end")
        seen.add(name)
    assert len(labels) == 1 and len(index_ts) == 1


CONFIGS = {
    "default": {},
    "fixed_age": {"index": {"strategy": "fixed_age", "fixed_age": 70}},
    "baseline": {"index": {"strategy": "baseline_date"}, "min_prior_observation_days": 0},
    "random": {"index": {"strategy": "random_visit", "seed": 3}},
    "drugs": {"outcome": {"drugs_as_outcome": True}, "exclusion": {"drug_concept_ids": [1]}},
    "omop": {
        "outcome": {
            "code_prefixes": [],
            "regex": "^SNOMED/26929004$",
            "concept_ids": [4182210, 378419],
        },
    },
    "blackout": {"blackout_days": 365, "horizon_days": 1095},
}


@pytest.mark.parametrize("name", CONFIGS)
def test_every_definition_exports_valid_aces(name, tmp_path):
    cfg = cohort_cfg(**CONFIGS[name])
    path = write_aces_task(cfg, tmp_path / "aces_task.yaml")
    text = path.read_text()
    assert text.startswith("# ACES task configuration exported by rationale-bench")
    task = yaml.safe_load(text)
    assert task == aces_task(cfg)
    check_aces_grammar(task)


def test_windows_carry_the_configured_numbers():
    task = aces_task(cohort_cfg(min_age=65, min_prior_observation_days=730, blackout_days=90))
    w = task["windows"]
    assert task["trigger"] == "index_event"
    # Age >= 65 years at index is birth at least ceil(65 * 365.25) = 23742 days before.
    assert w["born_min_age_before"]["end"] == "trigger - 23742 days"
    assert w["prior_observation"]["end"] == "trigger - 730 days"
    assert w["no_prior_outcome"]["end"] == "trigger" and w["no_prior_outcome"]["end_inclusive"]
    assert w["input"]["end"] == "trigger - 90 days" and not w["input"]["end_inclusive"]
    target = w["target"]
    assert (target["start"], target["end"]) == ("trigger", "start + 1826 days")
    assert not target["start_inclusive"] and target["end_inclusive"]  # (index, index + horizon]
    assert target["index_timestamp"] == "start" and target["label"] == "outcome_code"
    fixed = aces_task(cohort_cfg(index={"strategy": "fixed_age", "fixed_age": 70}))
    assert fixed["trigger"] == "birth"
    assert fixed["windows"]["to_index_age"]["end"] == "start + 25568 days"
    assert fixed["windows"]["target"]["start"] == "to_index_age.end"


def test_unexportable_options_are_stated_in_the_header(tmp_path):
    cfg = cohort_cfg(
        outcome={"confirmation": {"rule": "two_codes", "within_days": 365}},
        case_control={"controls_per_case": 4, "seed": 0},
    )
    text = write_aces_task(cfg, tmp_path / "t.yaml").read_text()
    assert "confirmation rule 'two_codes' (within 365 days)" in text
    assert "case:control sampling" in text


CODE_UNIVERSE = [
    "MEDS_BIRTH",
    "MEDS_DEATH",
    "MEDS_DEATHX",
    "MEDS",
    "SEX/F",
    "SEX",
    "SEXY/1",
    "",
    "BASELINE/ASSESSMENT",
    "OMOP/4182210",
    "OMOP/41822100",
    "OMOP/1",
    "OMOP/378419",
    "SNOMED/26929004",
    "SNOMED/269290041",
    "ICD10/F03.A0",
    "ICD10/F01.B11",
    "ICD10/F02.C4",
    "ICD10/G31.84",
    "ICD10/G31.83",
    "ICD10/G3183",
    "ICD9/331.0",
    "ICD9/3310",
    "ICD9/290.12",
    "ICD9/797",
    "ATC/N06DA02",
    "ATC/N06DX02",
    "ATC/N06DX01",
    "LAB/LDL",
]


@pytest.fixture(scope="module")
def code_universe(synthetic_events) -> pl.DataFrame:
    codes = synthetic_events["code"].unique().to_list() + CODE_UNIVERSE
    for prefixes in OUTCOME_TIERS.values():
        codes += [p for p in prefixes] + [p + "9" for p in prefixes]
    return pl.DataFrame({"code": sorted(set(codes))})


def _matched(frame: pl.DataFrame, expr: pl.Expr) -> set[str]:
    return set(frame.filter(expr)["code"])


@pytest.mark.parametrize("name", CONFIGS)
def test_predicates_match_the_same_codes_as_the_cohort(name, code_universe):
    cfg = cohort_cfg(**CONFIGS[name])
    defn = resolve_definition(cfg)
    preds = aces_task(cfg)["predicates"]

    def aces(pred: str) -> set[str]:
        return _matched(code_universe, pl.col("code").str.contains(preds[pred]["code"]["regex"]))

    assert aces("outcome_code") == _matched(code_universe, outcome_code_expr(defn))
    assert aces("anti_dementia_drug") == _matched(code_universe, drug_expr(defn))
    static = matches_any(pl.col("code"), ["MEDS_BIRTH", "SEX/"])
    assert aces("recorded") == _matched(code_universe, ~static)
    assert aces("observed") == _matched(code_universe, ~static & (pl.col("code") != "MEDS_DEATH"))
    if "index_event" in preds:
        strategy = defn["index"]["strategy"]
        key = "baseline_code_prefixes" if strategy == "baseline_date" else "event_prefixes"
        prefixes = defn["index"][key]
        assert aces("index_event") == _matched(code_universe, matches_any(pl.col("code"), prefixes))


def test_not_prefix_regex_is_an_exact_complement():
    banned = ["AB", "ABC", "B/", "XY_Z"]
    rx = not_prefix_regex(banned)
    words = [
        "",
        "A",
        "AB",
        "ABD",
        "ABC1",
        "AC",
        "B",
        "B/",
        "B/1",
        "BB",
        "XY",
        "XY_",
        "XY_Z",
        "XY_Q",
    ]
    frame = pl.DataFrame({"code": words})
    got = _matched(frame, pl.col("code").str.contains(rx))
    assert got == {w for w in words if not w.startswith(tuple(banned))}


def test_prefix_regex_needs_something():
    with pytest.raises(ValueError, match="at least one prefix"):
        prefix_regex([])
    assert re.fullmatch(r"\^\(\?:ICD10/F03\|ATC/N06DA\)", prefix_regex(["ICD10/F03", "ATC/N06DA"]))


def test_concept_ids_export_their_descendant_codes():
    codes = pl.DataFrame(
        {
            "code": ["OMOP/378419", "ICD10/F03.90", "OMOP/320128"],
            "description": [None, None, None],
            "parent_codes": [["OMOP/4182210"], ["OMOP/378419", "OMOP/4182210"], []],
        }
    )
    cfg = cohort_cfg(outcome={"code_prefixes": [], "concept_ids": [4182210]})
    rx = aces_task(cfg, codes)["predicates"]["outcome_code"]["code"]["regex"]
    universe = pl.DataFrame({"code": [*codes["code"], "OMOP/4182210", "ICD10/F03.9", "OMOP/37"]})
    expected = {"OMOP/4182210", "OMOP/378419", "ICD10/F03.90"}
    assert _matched(universe, pl.col("code").str.contains(rx)) == expected
    defn = resolve_definition(cfg)
    assert _matched(universe, outcome_code_expr(defn, codes)) == expected
    # Without the codes table only the concept itself is exported.
    assert _matched(universe, pl.col("code").str.contains(prefix_regex([], None, [4182210]))) == {
        "OMOP/4182210"
    }


def test_compare_labels_takes_the_first_trigger_and_names_every_difference():
    ours = pl.DataFrame(
        {
            "subject_id": [1, 2, 3, 4, 5, 6],
            "index_time": [DT(2010, 1, 1), DT(2011, 1, 1), DT(2012, 1, 1)]
            + [DT(2013, 1, 1), DT(2014, 1, 1), DT(2015, 1, 1)],
            "label": [True, False, False, True, True, False],
            "followup_days": [2000, 2000, 2000, 2000, 300, 2000],
        }
    )
    aces_labels = pl.DataFrame(
        {
            # 1 agrees (its later trigger says False and is ignored); 2 disagrees at the same
            # index; 3 has another index; 4 agrees; 5 (short-follow-up case) and 6 are ours only.
            "subject_id": [1, 1, 2, 3, 4, 7],
            "prediction_time": [DT(2010, 2, 1), DT(2010, 1, 1), DT(2011, 1, 1)]
            + [DT(2012, 6, 1), DT(2013, 1, 1), DT(2016, 1, 1)],
            "boolean_value": [False, True, True, False, True, False],
        }
    )
    result = compare_labels(ours, aces_labels, horizon_days=1826)
    assert result["n_ours"] == 6 and result["n_aces_rows"] == 6
    assert result["n_aces_subjects"] == 5 and result["n_compared"] == 4
    assert result["n_same_index"] == 3
    assert result["label_agreement"] == 0.75
    assert result["confusion"] == {
        "ours=True aces=True": 2,
        "ours=True aces=False": 0,
        "ours=False aces=True": 1,
        "ours=False aces=False": 1,
    }
    assert result["reasons"] == {
        "index differs": 1,
        "label differs at the same index": 1,
        "only ours: case with short follow-up": 1,
        "only ours: other": 1,
        "only ACES": 1,
    }
    assert result["examples"]["label differs at the same index"] == [2]
    assert result["examples"]["only ACES"] == [7]
