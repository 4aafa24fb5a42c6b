"""Teacher: label-aware rationales for training/tuning only, grounded in the subject's record."""

from __future__ import annotations

import polars as pl
import pytest

from rationale_bench.data.codes import RISK_FACTORS, code_in
from rationale_bench.teacher.generate import (
    TeacherError,
    build_messages,
    generate_rationales,
    teacher_inputs,
    template_rationale,
)
from rationale_bench.teacher.qc import grounded_fraction

CFG = {"name": "template", "backend": "template", "seed": 0}


def test_only_training_and_tuning_subjects(synthetic_histories, tmp_path):
    table, report = generate_rationales(
        teacher_inputs(synthetic_histories), "free_form", CFG, tmp_path / "c.jsonl"
    )
    expected = synthetic_histories.filter(pl.col("split").is_in(["train", "tuning"]))
    assert table["subject_id"].to_list() == expected["subject_id"].to_list()
    assert report["usage"]["requests_sent"] == 0
    # the template teacher's rationales pass QC at the first attempt
    assert table["qc_pass"].all() and report["regenerated"] == 0 and report["dropped"] == 0


def test_held_out_subjects_are_refused(synthetic_histories, tmp_path):
    """The refusal is reached: the generator is handed held-out rows and stops before any
    rationale is written (it no longer filters them away itself)."""
    held_out = synthetic_histories.filter(pl.col("split") == "held_out").head(3)
    mixed = pl.concat([teacher_inputs(synthetic_histories).head(5), held_out])
    with pytest.raises(TeacherError, match=r"3 subjects of split\(s\) held_out"):
        generate_rationales(mixed, "free_form", CFG, tmp_path / "c.jsonl")
    assert not (tmp_path / "c.jsonl").exists()


def test_rationales_name_only_risk_factors_present(synthetic_histories, tmp_path):
    table, _ = generate_rationales(
        teacher_inputs(synthetic_histories), "step_by_step", CFG, tmp_path / "c.jsonl"
    )
    codes = dict(synthetic_histories.select("subject_id", "codes").iter_rows())
    ages = dict(synthetic_histories.select("subject_id", "age").iter_rows())
    for sid, text in table.select("subject_id", "rationale").head(300).iter_rows():
        assert grounded_fraction(text, codes[sid], ages[sid]) == 1.0
        assert text.splitlines()[-1].startswith("5. Conclusion:")
    # and every risk factor present is named
    row = synthetic_histories.filter(pl.col("split") == "train").row(0, named=True)
    text = template_rationale(row["age"], row["sex"], row["codes"], row["label"], "free_form", 3)
    for factor in RISK_FACTORS.values():
        if any(code_in(c, factor.prefixes) for c in row["codes"]):
            assert factor.label in text


def test_label_aware_direction_and_varied_wording():
    codes = ["ICD10/I10", "ICD10/E11.9", "ICD10/R41.3"]
    case = template_rationale(81.0, "F", codes, True, "free_form", 1)
    control = template_rationale(81.0, "F", codes, False, "free_form", 1)
    assert "more likely" in case and "less likely" in control
    wordings = {
        template_rationale(81.0, "F", codes, True, "free_form", s).split(" documents")[0]
        for s in range(20)
    }
    assert len(wordings) > 1
    assert template_rationale(81.0, "F", codes, True, "free_form", 1) == case  # deterministic


def test_openai_messages_carry_history_question_and_outcome(synthetic_histories):
    cfg = {
        "prompts": {"system": "sys", "free_form": "{history}\nQ: {question}\nOutcome: {outcome}"},
        "question": "Will it happen?",
        "max_history_lines": 5,
    }
    row = synthetic_histories.filter(pl.col("split") == "train").row(0, named=True)
    messages = build_messages(row, "free_form", cfg)
    assert messages[0] == {"role": "system", "content": "sys"}
    assert (
        row["header"] in messages[1]["content"] and "Q: Will it happen?" in messages[1]["content"]
    )
    assert ("did not receive" in messages[1]["content"]) == (not row["label"])


def test_openai_backend_against_local_server(synthetic_histories, tmp_path):
    from fake_openai_server import FakeOpenAIServer

    subset = synthetic_histories.filter(pl.col("split") == "train").head(12)
    with FakeOpenAIServer() as server:
        cfg = {
            "name": "fake",
            "backend": "openai",
            "prompts": {"system": "s", "free_form": "{history}\n{question}\n{outcome}"},
            "question": "q?",
            "max_history_lines": 50,
            "allowed_hosts": [],
            "openai": {
                "base_url": server.base_url,
                "model": "m",
                "api_key_env": None,
                "temperature": 0.0,
                "top_p": 1.0,
                "max_tokens": 64,
                "seed": 0,
                "concurrency": 4,
                "request_timeout_s": 10,
                "max_attempts": 3,
            },
        }
        cfg["qc"] = {"max_attempts": 1}  # the fake's echo answers fail QC (too short)
        table, report = generate_rationales(subset, "free_form", cfg, tmp_path / "cache.jsonl")
        assert table.height == 12 and report["usage"]["requests_sent"] == 12
        again, report = generate_rationales(subset, "free_form", cfg, tmp_path / "cache.jsonl")
        assert report["usage"]["requests_sent"] == 0 and report["usage"]["cache_hits"] == 12
        assert again["rationale"].to_list() == table["rationale"].to_list()


def test_the_template_teacher_speaks_of_the_cohorts_horizon() -> None:
    """cohort.horizon_days reaches every rationale and every label-aware prompt."""
    from rationale_bench.teacher.generate import outcome_words

    codes = ["ICD10/I10"]
    assert "within five years" in template_rationale(81.0, "F", codes, True, "free_form", 1)
    ten = template_rationale(81.0, "F", codes, True, "step_by_step", 1, horizon_days=3652)
    assert "within ten years" in ten and "five years is" not in ten
    assert outcome_words(False, 3652).endswith(
        "did not receive a diagnosis of Alzheimer's disease or a related dementia within 10 years"
    )
    assert outcome_words(True, 1000).endswith("within 1000 days")
