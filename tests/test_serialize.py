"""Serialization: inputs strictly before index, newest first, budgets that never cut the header."""

from __future__ import annotations

import re

import polars as pl
import pytest
from conftest import cohort_cfg

from rationale_bench.cohort.build import build_cohort
from rationale_bench.text.serialize import (
    SERIALIZATIONS,
    SerializationError,
    build_histories,
    build_prompts,
    history_of,
)
from rationale_bench.text.templates import PromptTemplate

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


# Variants: golden texts on one hand-built subject, then properties on the synthetic cohort.


@pytest.fixture
def varied_subject(events_builder):
    b = events_builder
    b.person(1, "1940-01-01", "M").visits(1, "2003-02-01", 18)
    b.add(1, "2003-06-01", "ICD10/I10")
    b.add(1, "2004-06-01", "ICD10/E11.9", "ATC/A10BA02")
    b.add(1, "2004-07-01", "LAB/LDL", value=142.4)
    b.add(1, "2004-09-01", "LAB/LDL", value=120.4)
    b.add(1, "2004-09-01", "ICD10/I10")
    b.add(1, "2004-10-01", "XYZ/123")  # an unknown vocabulary: kept as the bare code
    b.add(1, "2003-02-01", "OBSERVATION_PERIOD/START")  # bookkeeping, never a history line
    b.add(1, "2005-01-31", "ICD10/H90.3")  # at the index visit: never an input
    events = b.frame()
    cohort, _ = build_cohort(events, cohort_cfg(), check_splits=False)
    return events, cohort


HEADER = "## Patient\nAge at prediction time: 65 years\nSex: male\n"
GOLDEN = {
    "timeline_recent": HEADER
    + "## History (most recent first)\n"
    + "- 0.3 years before: XYZ/123\n"
    + "- 0.4 years before: Essential (primary) hypertension (I10); "
    + "LDL cholesterol (mg/dL) (LDL) 120.4\n"
    + "- 0.6 years before: LDL cholesterol (mg/dL) (LDL) 142.4\n"
    + "- 0.7 years before: Type 2 diabetes mellitus without complications (E11.9); "
    + "metformin (A10BA02)\n"
    + "- 1.7 years before: Essential (primary) hypertension (I10)\n",
    "markdown_recent": "# Patient\n- Age at prediction time: 65 years\n- Sex: male\n"
    + "## Conditions\n"
    + "- Essential (primary) hypertension (I10): 2 records, latest 0.4 years before, "
    + "first 1.7 years before\n"
    + "- Type 2 diabetes mellitus without complications (E11.9): 0.7 years before\n"
    + "## Medications\n"
    + "- metformin (A10BA02): 0.7 years before\n"
    + "## Measurements\n"
    + "- LDL cholesterol (mg/dL) (LDL): 120.4 (normal), 0.4 years before (2 measurements)\n"
    + "## Other\n"
    + "- XYZ/123: 0.3 years before\n",
    "chronological": HEADER
    + "## History (oldest first)\n"
    + "- 1.7 years before: Essential (primary) hypertension (I10)\n"
    + "- 0.7 years before: Type 2 diabetes mellitus without complications (E11.9)\n"
    + "- 0.7 years before: metformin (A10BA02)\n"
    + "- 0.6 years before: LDL cholesterol (mg/dL) (LDL) 142.4\n"
    + "- 0.4 years before: Essential (primary) hypertension (I10)\n"
    + "- 0.4 years before: LDL cholesterol (mg/dL) (LDL) 120.4\n"
    + "- 0.3 years before: XYZ/123\n",
    "first_occurrence": HEADER
    + "## First occurrence of each code (oldest first)\n"
    + "- at age 63.4: Essential (primary) hypertension (I10)\n"
    + "- at age 64.4: Type 2 diabetes mellitus without complications (E11.9)\n"
    + "- at age 64.4: metformin (A10BA02)\n"
    + "- at age 64.5: LDL cholesterol (mg/dL) (LDL)\n"
    + "- at age 64.7: XYZ/123\n",
    "codes_only": HEADER
    + "## Codes (most recent first)\n"
    + "- 0.3 years before: XYZ/123\n"
    + "- 0.4 years before: I10; LDL 120.4\n"
    + "- 0.6 years before: LDL 142.4\n"
    + "- 0.7 years before: A10BA02; E11.9\n"
    + "- 1.7 years before: I10\n",
}


@pytest.mark.parametrize("variant", SERIALIZATIONS)
def test_variant_golden_text(varied_subject, variant):
    events, cohort = varied_subject
    row = build_histories(events, cohort, {"variant": variant}).row(0, named=True)
    assert history_of(row) == GOLDEN[variant]
    assert row["n_unknown_codes"] == 1
    assert "H90" not in history_of(row)


@pytest.mark.parametrize(
    ("encoding", "first_line"),
    [
        ("relative_years", "- 0.3 years before: XYZ/123"),
        ("relative_days", "- 122 days before: XYZ/123"),
        ("age", "- at age 64.7: XYZ/123"),
        ("calendar_date", "- 2004-10-01: XYZ/123"),
        ("none", "- XYZ/123"),
    ],
)
def test_time_encodings(varied_subject, encoding, first_line):
    events, cohort = varied_subject
    cfg = {"variant": "timeline_recent", "time_encoding": encoding}
    assert build_histories(events, cohort, cfg)["lines"][0][0] == first_line


def test_unknown_time_encoding_is_an_error(varied_subject):
    events, cohort = varied_subject
    with pytest.raises(SerializationError, match="time_encoding 'weeks'"):
        build_histories(events, cohort, {"variant": "chronological", "time_encoding": "weeks"})


@pytest.mark.parametrize("variant", SERIALIZATIONS)
def test_default_encodings_never_show_calendar_dates(synthetic_events, synthetic_cohort, variant):
    cohort = synthetic_cohort[0].head(200)
    histories = build_histories(synthetic_events, cohort, {"variant": variant})
    text = "\n".join(history_of(row) for row in histories.iter_rows(named=True))
    assert not re.search(r"(19|20)\d\d-\d\d", text)


def test_measurement_flags_follow_reference_ranges(events_builder):
    b = events_builder
    b.person(1, "1940-01-01", "F").visits(1, "2003-02-01", 18)
    b.add(1, "2004-01-01", "LAB/EGFR", value=45.0)  # below 60: low
    b.add(1, "2004-01-01", "LAB/HBA1C", value=7.1)  # above 5.6: high
    b.add(1, "2004-01-01", "LAB/SBP", value=120.0)  # normal
    b.add(1, "2004-01-01", "LAB/UNLISTED", value=3.0)  # no range: no flag
    events = b.frame()
    cohort, _ = build_cohort(events, cohort_cfg(), check_splits=False)
    lines = build_histories(events, cohort, {"variant": "markdown_recent"})["lines"][0].to_list()
    text = "\n".join(lines)
    assert "(EGFR): 45.0 (low)" in text
    assert "(HBA1C): 7.1 (high)" in text
    assert "(SBP): 120.0 (normal)" in text
    assert "LAB/UNLISTED: 3.0, " in text


def test_data_code_names_come_first(varied_subject):
    events, cohort = varied_subject
    names = pl.DataFrame({"code": ["XYZ/123", "ICD10/I10"], "description": ["local thing", None]})
    row = build_histories(events, cohort, {"variant": "timeline_recent"}, names).row(0, named=True)
    assert row["lines"][0] == "- 0.3 years before: local thing (123)"
    assert "Essential (primary) hypertension (I10)" in history_of(row)  # null name: vocabulary
    assert row["n_unknown_codes"] == 0


def test_blackout_input_end_hides_events_before_index(varied_subject):
    events, cohort = varied_subject
    blackout = cohort.with_columns(input_end_time=pl.datetime(2004, 8, 1))
    row = build_histories(events, blackout, {"variant": "chronological"}).row(0, named=True)
    text = history_of(row)
    assert "XYZ/123" not in text and "120.4" not in text  # after the input end
    assert "142.4" in text  # before it
    assert set(row["codes"]) == {"ICD10/I10", "ICD10/E11.9", "ATC/A10BA02", "LAB/LDL"}


@pytest.mark.parametrize("variant", SERIALIZATIONS)
def test_budget_keeps_the_newest_lines_in_every_variant(
    synthetic_events, synthetic_cohort, tiny_tokenizer, variant
):
    histories = build_histories(
        synthetic_events, synthetic_cohort[0].head(300), {"variant": variant}
    )
    prompts = build_prompts(histories, tiny_tokenizer, QUESTION, max_prompt_tokens=150)
    assert (prompts["n_tokens"] <= 150).all() and prompts["truncated"].any()
    exact = [len(tiny_tokenizer(p)["input_ids"]) for p in prompts["prompt"].to_list()]
    assert exact == prompts["n_tokens"].to_list()
    for row, prompt in zip(
        histories.iter_rows(named=True), prompts.iter_rows(named=True), strict=True
    ):
        kept = len(row["lines"]) - prompt["n_lines_dropped"]
        assert prompt["history_text"] == history_of(row, kept)  # the newest ``kept`` lines
        assert prompt["prompt"].startswith(row["header"])
        if kept < len(row["lines"]):  # no more lines dropped than needed
            one_more = history_of(row, kept + 1) + "\nQuestion: " + QUESTION["question"] + "\n"
            assert len(tiny_tokenizer(one_more)["input_ids"]) > 150


@pytest.mark.parametrize("variant", SERIALIZATIONS)
def test_every_variant_is_byte_identical_across_runs(
    synthetic_events, synthetic_cohort, tiny_tokenizer, variant
):
    cohort = synthetic_cohort[0].head(150)
    a = build_histories(synthetic_events, cohort, {"variant": variant})
    b = build_histories(
        synthetic_events.sample(fraction=1.0, shuffle=True, seed=3), cohort, {"variant": variant}
    )
    assert a.equals(b)  # independent of the order of the events file
    pa = build_prompts(a, tiny_tokenizer, QUESTION, 200)
    pb = build_prompts(b, tiny_tokenizer, QUESTION, 200)
    assert pa.equals(pb)


def test_template_tokens_count_against_the_budget(synthetic_histories, tiny_tokenizer):
    template = PromptTemplate(name="chat", before="<s>[USER] ", after=" [ASSISTANT]")
    plain = build_prompts(synthetic_histories.head(50), tiny_tokenizer, QUESTION, 160)
    wrapped = build_prompts(synthetic_histories.head(50), tiny_tokenizer, QUESTION, 160, template)
    assert (wrapped["n_tokens"] <= 160).all()
    assert all(p.startswith("## Patient") for p in wrapped["prompt"].to_list())  # user text
    exact = [
        len(tiny_tokenizer(template.render(p), add_special_tokens=False)["input_ids"])
        for p in wrapped["prompt"]
    ]
    assert exact == wrapped["n_tokens"].to_list()
    assert wrapped["n_lines_dropped"].sum() > plain["n_lines_dropped"].sum()


@pytest.mark.parametrize("variant", SERIALIZATIONS)
def test_every_input_event_is_behind_exactly_one_line(synthetic_events, synthetic_cohort, variant):
    cohort = synthetic_cohort[0].head(200)
    histories = build_histories(synthetic_events, cohort, {"variant": variant})
    per_line = histories["line_events"].list.sum().fill_null(0)
    assert (per_line == histories["n_events"]).all()
    assert (histories["line_events"].list.len() == histories["lines"].list.len()).all()


def test_events_dropped_count_the_dropped_lines_events(varied_subject, tiny_tokenizer):
    events, cohort = varied_subject
    histories = build_histories(events, cohort, {"variant": "timeline_recent"})
    row = histories.row(0, named=True)
    assert row["line_events"] == [1, 2, 1, 2, 1]  # visits, newest first
    question = "\nQuestion: " + QUESTION["question"] + "\n"
    two_lines = len(tiny_tokenizer(history_of(row, 2) + question)["input_ids"])
    prompts = build_prompts(histories, tiny_tokenizer, QUESTION, two_lines)
    assert prompts["n_lines_dropped"][0] == 3
    assert prompts["n_events_dropped"][0] == sum(row["line_events"][2:]) == 4


def test_chunks_give_the_same_prompts(synthetic_histories, tiny_tokenizer):
    whole = build_prompts(synthetic_histories.head(300), tiny_tokenizer, QUESTION, 160)
    chunked = build_prompts(
        synthetic_histories.head(300), tiny_tokenizer, QUESTION, 160, chunk_size=64
    )
    assert whole.equals(chunked)


@pytest.mark.parametrize("variant", SERIALIZATIONS)
def test_visible_codes_are_the_codes_of_the_kept_lines(
    synthetic_events, synthetic_cohort, tiny_tokenizer, variant
):
    """What the model can read: every line's codes, only for the lines the budget kept."""
    cohort = synthetic_cohort[0].head(200)
    histories = build_histories(synthetic_events, cohort, {"variant": variant})
    assert (histories["line_codes"].list.len() == histories["lines"].list.len()).all()
    full = histories["line_codes"].list.eval(pl.element().explode()).list.unique().list.sort()
    assert full.to_list() == histories["codes"].to_list()  # all lines: the whole history
    prompts = build_prompts(histories, tiny_tokenizer, QUESTION, max_prompt_tokens=150)
    assert prompts["truncated"].any()
    for row, prompt in zip(
        histories.iter_rows(named=True), prompts.iter_rows(named=True), strict=True
    ):
        kept = len(row["lines"]) - prompt["n_lines_dropped"]
        expected = sorted({c for codes in row["line_codes"][:kept] for c in codes})
        assert prompt["visible_codes"] == expected
        assert set(expected) <= set(row["codes"])
