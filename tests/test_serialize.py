"""Serialization: inputs strictly before index, newest first, budgets that never cut the header."""

from __future__ import annotations

import polars as pl
import pytest
from conftest import cohort_cfg

from rationale_bench.cohort import build_cohort
from rationale_bench.serialize import SerializationError, build_histories, build_prompts

CFG = {"variant": "timeline_recent", "lookback_days": None}
QUESTION = {
    "question": "Will this patient be diagnosed with dementia within 5 years? Answer Yes or No."
}


@pytest.fixture
def one_subject(events_builder):
    b = events_builder
    b.person(1, "1940-01-01", "M").visits(1, "2003-02-01", 18)
    b.add(1, "2003-06-01", "ICD10/I10")
    b.add(1, "2004-06-01", "ICD10/E11.9", "ATC/A10BA02")
    b.add(1, "2004-07-01", "LAB/LDL", value=4.24)
    b.add(1, "2005-01-31", "ICD10/H90.3")  # at the index visit: must not be an input
    b.add(1, "2006-01-01", "ICD10/F32.9")  # after index: must not be an input
    events = b.frame()
    cohort, _ = build_cohort(events, cohort_cfg(), check_splits=False)
    return events, cohort


def test_history_has_only_events_strictly_before_index(one_subject):
    events, cohort = one_subject
    row = build_histories(events, cohort, CFG).row(0, named=True)
    text = "\n".join(row["lines"])
    assert "I10" in text and "E11.9" in text and "A10BA02" in text and "LDL" in text
    assert "H90" not in text and "F32" not in text
    assert set(row["codes"]) == {"ICD10/I10", "ICD10/E11.9", "ATC/A10BA02", "LAB/LDL"}
    assert row["header"].startswith("## Patient\nAge at prediction time: 65 years\nSex: male\n")


def test_lines_are_newest_first_with_time_before_index(one_subject):
    events, cohort = one_subject
    lines = build_histories(events, cohort, CFG)["lines"][0].to_list()
    years = [float(line.split(" years before")[0].removeprefix("- ")) for line in lines]
    assert years == sorted(years)
    assert any("4.2" in line and "LDL" in line for line in lines)
    assert not any("20" in line.split(":")[0] for line in lines)  # no calendar dates


def test_budget_drops_oldest_lines_and_keeps_header(synthetic_histories, tiny_tokenizer):
    prompts = build_prompts(synthetic_histories, tiny_tokenizer, QUESTION, max_prompt_tokens=160)
    assert (prompts["n_tokens"] <= 160).all()
    assert prompts["truncated"].any()
    for (prompt, history), full in zip(
        prompts.select("prompt", "history_text").iter_rows(),
        synthetic_histories.iter_rows(named=True),
        strict=True,
    ):
        assert prompt.startswith(full["header"])
        assert prompt.endswith(QUESTION["question"] + "\n")
        kept = history[len(full["header"]) :].splitlines()
        assert kept == full["lines"][: len(kept)]  # a prefix of the newest lines
    exact = [len(tiny_tokenizer(p)["input_ids"]) for p in prompts["prompt"].to_list()[:50]]
    assert exact == prompts["n_tokens"].to_list()[:50]


def test_prompts_are_deterministic(synthetic_histories, tiny_tokenizer):
    a = build_prompts(synthetic_histories, tiny_tokenizer, QUESTION, max_prompt_tokens=200)
    b = build_prompts(synthetic_histories, tiny_tokenizer, QUESTION, max_prompt_tokens=200)
    assert a.equals(b)


def test_budget_too_small_for_header_is_an_error(synthetic_histories, tiny_tokenizer):
    with pytest.raises(SerializationError, match="header and question alone"):
        build_prompts(synthetic_histories.head(3), tiny_tokenizer, QUESTION, max_prompt_tokens=10)


def test_events_without_code_are_an_error(one_subject):
    events, cohort = one_subject
    broken = events.with_columns(
        pl.when(pl.col("code") == "ICD10/I10").then(None).otherwise(pl.col("code")).alias("code")
    )
    with pytest.raises(SerializationError, match="have no code"):
        build_histories(broken, cohort, CFG)
