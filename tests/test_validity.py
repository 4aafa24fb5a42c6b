"""Mechanism diagnostics on hand-made generations, validity gates, and their effect on reports."""

from __future__ import annotations

import json

import polars as pl
import pytest
from test_study_report import grid_configurations, write_grid

from rationale_bench.evaluate import diagnostics
from rationale_bench.report.study_report import write_study_report
from rationale_bench.report.validity import MatchedTrainingError

GATES = {
    "min_answer_slot_rate": 0.95,
    "max_parse_failure_rate": 0.05,
    "max_top_generation_share": 0.2,
    "max_training_copy_share": 0.5,
    "max_repetition_loop_share": 0.05,
    "max_answer_loss": 1.0,
    "reference_above_chance": True,
}


def test_compliance_counts_forced_answers_and_parse_failures():
    out = diagnostics.compliance(
        forced=[True, False, False, False], parsed=[None, True, False, False], rationale_first=True
    )
    assert out["answer_slot_rate"] == 0.75
    assert out["parse_failure_rate"] == 0.25
    assert (out["stated_yes_rate"], out["stated_no_rate"]) == (0.25, 0.5)
    direct = diagnostics.compliance([False] * 2, [False, False], rationale_first=False)
    assert direct["answer_slot_rate"] == 1.0 and direct["stated_no_rate"] == 1.0


def test_collapsed_generations_are_measured():
    template = "This 65-year-old woman documents hypertension. Overall, less likely."
    texts = [template] * 9 + ["This 80-year-old man documents diabetes. Overall, more likely."]
    out = diagnostics.collapse(texts, training_texts=[template.upper()])
    assert out["distinct_generation_share"] == pytest.approx(0.2)
    assert out["top_generation_share"] == pytest.approx(0.9)
    assert out["training_copy_share"] == pytest.approx(0.9)  # case and spacing aside
    assert out["repetition_loop_share"] == 0.0


def test_degenerate_loops_and_empty_generations():
    texts = ["pical pical pical pical pical", "5.\n5.\n5.\n5.\n5.", "", "a fine varied sentence"]
    out = diagnostics.collapse(texts)
    assert out["repetition_loop_share"] == pytest.approx(0.5)
    assert out["empty_generation_share"] == pytest.approx(0.25)
    assert out["distinct_2"] < 1.0


def test_diverse_generations_are_not_collapsed():
    texts = [f"This {60 + i}-year-old woman has {i} risk factors." for i in range(20)]
    out = diagnostics.collapse(texts)
    assert out["distinct_generation_share"] == 1.0
    assert out["top_generation_share"] == pytest.approx(0.05)


def test_faithful_rationale_states_the_patient_and_present_factors():
    texts = ["This 72-year-old woman documents hypertension and type 2 diabetes."]
    out = diagnostics.faithfulness(texts, [72.6], ["F"], [["ICD10/I10", "ICD10/E11.9"]])
    assert out["age_correct_share"] == 1.0 and out["sex_correct_share"] == 1.0
    assert out["factor_precision"] == 1.0
    assert out["hallucinated_factors_per_text"] == 0.0


def test_hallucinating_rationale_is_caught():
    texts = ["This 65-year-old man documents atrial fibrillation and hypertension."]
    # The patient is a 78-year-old woman whose prompt shows hypertension only.
    out = diagnostics.faithfulness(texts, [78.1], ["F"], [["ICD10/I10"]])
    assert out["age_correct_share"] == 0.0 and out["sex_correct_share"] == 0.0
    assert out["factor_precision"] == 0.5
    assert out["hallucinated_factors_per_text"] == 1.0


def test_negated_factors_claim_nothing():
    out = diagnostics.faithfulness(["No atrial fibrillation is recorded."], [70], ["M"], [[]])
    assert out["factors_named_per_text"] == 0.0 and out["factor_precision"] is None


def test_conclusion_answer_agreement():
    texts = ["Overall, dementia is more likely.", "Overall, dementia is less likely.", "Unclear."]
    out = diagnostics.conclusion_agreement(texts, [True, True, False])
    assert out["conclusion_stated_share"] == pytest.approx(2 / 3)
    assert out["conclusion_answer_agreement"] == 0.5  # one of the two decided pairs agrees


def test_label_only_gets_no_rationale_diagnostics():
    out = diagnostics.diagnose(
        rationale_first=False,
        forced=[False] * 3,
        parsed=[False] * 3,
        probabilities=[0.161, 0.163, 0.165],
        texts=[None] * 3,
        ages=[70, 71, 72],
        sexes=["F", "M", "F"],
        visible_codes=None,
    )
    assert out["top_generation_share"] is None and out["age_correct_share"] is None
    assert out["probability_range"] == pytest.approx(0.004)


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"format": "free_form", "answer_slot_rate": 0.0}, "reached the answer slot unforced"),
        ({"format": "free_form", "top_generation_share": 0.85}, "most common generation"),
        ({"format": "free_form", "training_copy_share": 0.6}, "copies of a training rationale"),
        ({"format": "free_form", "repetition_loop_share": 1.0}, "generations in a loop"),
        ({"format": "step_by_step", "parse_failure_rate": 1.0}, "answers failed to parse"),
        ({"format": "step_by_step", "final_answer_loss": 5.2}, "final answer-token loss"),
        ({"format": "label_only", "auroc_ci_low": 0.48}, "label_only not above chance"),
    ],
)
def test_each_gate_fails_with_its_reason(row, reason):
    valid, reasons = diagnostics.validity(row, GATES)
    assert not valid and len(reasons) == 1 and reasons[0].startswith(reason)


def test_passing_and_disabled_gates():
    good = {"format": "free_form", "answer_slot_rate": 1.0, "top_generation_share": 0.01}
    assert diagnostics.validity(good, GATES) == (True, [])
    bad = {"format": "free_form", "answer_slot_rate": 0.0}
    assert diagnostics.validity(bad, GATES | {"min_answer_slot_rate": None}) == (True, [])
    ref = {"format": "label_only", "auroc_ci_low": 0.55}
    assert diagnostics.validity(ref, GATES)[0]


# --------------------------------------------------------------------------------------
# The report: degenerate configurations excluded, counted, and never averaged in
# --------------------------------------------------------------------------------------


def _degrade(entries, fmt: str, seeds: set[int]) -> None:
    """Make the rationale runs of ``fmt`` at these seeds degenerate: every answer forced."""
    for entry in entries:
        c = entry.configuration
        if c["format"] == fmt and c["seed"] in seeds:
            m = json.loads(entry.metrics.read_text())
            m["diagnostics"] = {"answer_slot_rate": 0.0, "top_generation_share": 1.0}
            entry.metrics.write_text(json.dumps(m))


def _report(tmp_path, entries):
    return write_study_report(entries, tmp_path / "report", n_boot=50, gates=GATES)


@pytest.fixture
def no_figures(monkeypatch):
    """The tables and headline only: figures are drawn (with degenerate marks) in one test."""
    from rationale_bench.report import figures

    for name in ("paired_configurations", "delta_by_factor", "error_analysis", "token_dilution"):
        monkeypatch.setattr(figures, name, lambda *a, **k: [])
    for name in ("roc_and_calibration", "learning_curves", "cohort_overview", "rationale_qc"):
        monkeypatch.setattr(figures, name, lambda *a, **k: [])


@pytest.fixture
def small_grid(tmp_path, monkeypatch):
    from rationale_bench.report import figures

    monkeypatch.setattr(figures, "DPI", 40)
    configs = grid_configurations(models=("tiny",), sizes=(50, 200), seeds=(1, 2, 3))
    return write_grid(tmp_path / "runs", configs)


def test_degenerate_configurations_leave_the_headline(tmp_path, small_grid):
    _degrade(small_grid, "free_form", {1, 2})
    paths = _report(tmp_path, small_grid)
    paired = pl.read_csv(paths["paired"])
    excluded = paired.filter(~pl.col("valid"))
    assert excluded.height == 4  # free_form at seeds 1 and 2, two sizes each
    assert excluded["excluded_because"].str.contains("reached the answer slot unforced").all()
    summary = pl.read_csv(paths["summary"]).filter(pl.col("by") == "all")
    counts = dict(summary.select("format", "n_configurations").iter_rows())
    assert counts == {"free_form": 2, "step_by_step": 6}
    text = paths["headline"].read_text()
    assert "4 of 12 matched comparisons were excluded" in text
    assert "reached the answer slot unforced (4 configurations)" in text
    validity = pl.read_csv(paths["validity"])
    assert validity.filter(~pl.col("valid")).height == 4
    assert "## Mechanism" not in text  # the front page adds it; the table is its own file
    assert paths["mechanism_text"].read_text().startswith("| format |")
    assert paths["figure_paired_configurations"].with_suffix(".svg").stat().st_size > 0


def test_figures_mark_degenerate_pairs():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rationale_bench.report import figures

    pairs = pl.DataFrame(
        {
            "auroc_ref": [0.7, 0.72, 0.75],
            "auroc": [0.6, 0.5, 0.7],
            "valid": [True, False, True],
            "valid_ref": [True, True, False],
        }
    )
    fig, ax = plt.subplots()
    assert figures._mark_degenerate(ax, pairs, "auroc") == 2
    (marks,) = ax.collections
    assert marks.get_offsets().tolist() == [[0.72, 0.5], [0.75, 0.7]]
    plt.close(fig)


def test_a_study_with_nothing_valid_says_so_first(tmp_path, small_grid, no_figures):
    _degrade(small_grid, "free_form", {1, 2, 3})
    _degrade(small_grid, "step_by_step", {1, 2, 3})
    text = _report(tmp_path, small_grid)["headline"].read_text()
    assert text.startswith("No valid comparison: every one of the 12 matched comparisons")
    summary = pl.read_csv(tmp_path / "report" / "summary.csv")
    assert summary.height == 0


def test_reference_at_chance_excludes_its_pairs(tmp_path, small_grid, no_figures):
    for entry in small_grid:
        if entry.configuration["format"] == "label_only" and entry.configuration["seed"] == 3:
            m = json.loads(entry.metrics.read_text())
            m["auroc_bootstrap"]["ci_low"] = 0.45
            entry.metrics.write_text(json.dumps(m))
    paired = pl.read_csv(_report(tmp_path, small_grid)["paired"])
    excluded = paired.filter(~pl.col("valid"))
    assert excluded.height == 4 and (excluded["seed"] == 3).all()
    assert excluded["excluded_because"].str.contains("label_only: label_only not above").all()


def _stamp_runs(entries, **fields) -> None:
    for entry in entries:
        if entry.run is not None:
            run = json.loads(entry.run.read_text()) | fields
            entry.run.write_text(json.dumps(run))


def test_matched_formats_that_trained_alike_pass(tmp_path, small_grid, no_figures):
    _stamp_runs(small_grid, subjects_sha256="a", batch_order_sha256="b", budget="equal_steps")
    assert _report(tmp_path, small_grid)["headline"].exists()


@pytest.mark.parametrize(
    ("field", "value"),
    [("subjects_sha256", "other"), ("batch_order_sha256", "other"), ("optimizer_steps", 11)],
)
def test_tampered_run_json_stops_the_report(tmp_path, small_grid, no_figures, field, value):
    _stamp_runs(small_grid, subjects_sha256="a", batch_order_sha256="b", budget="equal_steps")
    victim = next(e for e in small_grid if e.configuration["format"] == "step_by_step")
    run = json.loads(victim.run.read_text()) | {field: value}
    victim.run.write_text(json.dumps(run))
    with pytest.raises(MatchedTrainingError, match=f"differ in {field}"):
        _report(tmp_path, small_grid)


def test_early_stopping_may_take_different_steps(tmp_path, small_grid, no_figures):
    _stamp_runs(small_grid, subjects_sha256="a", batch_order_sha256="b", budget="early_stopping")
    victim = next(e for e in small_grid if e.configuration["format"] == "step_by_step")
    victim.run.write_text(json.dumps(json.loads(victim.run.read_text()) | {"optimizer_steps": 99}))
    assert _report(tmp_path, small_grid)["headline"].exists()
