"""End to end: the small two-model study runs, then partial reruns schedule only what changed."""

from __future__ import annotations

import json

import polars as pl
import pytest
import yaml
from workflow_helpers import REPO, planned_outputs, run_study, snakemake

from rationale_bench.cli import job_counts

pytestmark = pytest.mark.slow
STUDY = REPO / "tests" / "configs" / "tiny.yaml"
SERIALIZATION = "serialization=markdown_recent"  # the tiny study's students read markdown


def run_folder(results, fmt):
    """A run folder of the tiny study (n_train 64, seed 1)."""
    return (
        results / "runs" / "model=tiny" / SERIALIZATION / f"format={fmt}" / "n_train=64" / "seed=1"
    )


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("study")
    return workdir, run_study(workdir, STUDY)


def edited(workdir, config, mutate):
    study = yaml.safe_load(config.read_text())
    mutate(study)
    path = workdir / "edited.yaml"
    path.write_text(yaml.safe_dump(study))
    result = snakemake(workdir, "-n", configfile=path)
    text = result.stdout + result.stderr
    return job_counts(text), planned_outputs(text)


def test_outputs_are_complete_and_consistent(finished_study):
    workdir, _ = finished_study
    results = workdir / "results"
    table = pl.read_csv(results / "report" / "metrics.csv")
    assert table.height == 10  # 2 models x (3 fine-tuned formats + zero- and few-shot arms)
    assert table["auroc"].is_not_null().all()
    assert (table["auroc_ci_low"] <= table["auroc"]).all() and (
        table["auroc"] <= table["auroc_ci_high"]
    ).all()
    assert (results / "report" / "figures" / "auroc_by_format.png").stat().st_size > 1000
    for figure in ("paired_configurations", "learning_curves", "token_dilution", "rationale_qc"):
        assert (results / "report" / "figures" / f"{figure}.svg").exists()
    paired = pl.read_csv(results / "report" / "paired.csv")
    assert paired.height == 8  # 2 models x (2 rationale formats + 2 arms), vs label_only
    zero_shot = json.loads((run_folder(results, "zero_shot") / "metrics.json").read_text())
    assert zero_shot["scoring_mode"] == "direct"
    assert not (run_folder(results, "zero_shot") / "adapter").exists()
    readme = (results / "report" / "README.md").read_text()
    # The headline is computed from the results: label-only's mean over its valid configurations.
    valid_reference = table.filter((pl.col("format") == "label_only") & pl.col("valid"))
    if valid_reference.height:
        assert f"{valid_reference['auroc'].mean():.3f}" in readme
    else:
        assert "No label-only SFT configuration is valid" in readme
    baselines = pl.read_csv(results / "report" / "baseline_metrics.csv")
    assert baselines["format"].to_list() == ["logistic_regression"]
    side_by_side = pl.read_csv(results / "report" / "baselines.csv")
    kinds = dict(side_by_side.select("format", "kind").unique().iter_rows())
    assert kinds["logistic_regression"] == "baseline" and kinds["label_only"] == "fine-tuned"
    assert kinds["zero_shot"] == kinds["few_shot_labels"] == "no fine-tuning"
    assert (results / "cohort" / "table1.csv").exists()

    # Every configuration carries its diagnostics and its validity, and the front page shows
    # the mechanism table.
    for column in ("answer_slot_rate", "top_generation_share", "age_correct_share", "valid"):
        assert column in table.columns
    rationale_rows = table.filter(pl.col("format").is_in(["free_form", "step_by_step"]))
    assert rationale_rows["answer_slot_rate"].is_between(0, 1).all()
    assert rationale_rows["distinct_generation_share"].is_between(0, 1).all()
    validity = pl.read_csv(results / "report" / "validity.csv")
    assert validity.height == table.height + baselines.height  # every configuration, baselines too
    invalid = validity.filter(~pl.col("valid"))
    assert (invalid["validity_reasons"].str.len_chars() > 0).all()
    assert "## Mechanism" in readme and "| format | valid pairs | mean ΔAUROC |" in readme
    if paired.filter(pl.col("valid")).height == 0:
        assert readme.split("\n")[2].startswith("No valid comparison")

    cohort = pl.read_parquet(results / "cohort" / "cohort.parquet")
    held_out = set(cohort.filter(pl.col("split") == "held_out")["subject_id"])
    for style in ("free_form", "step_by_step"):
        rationales = pl.read_parquet(results / "rationales" / "template" / f"{style}.parquet")
        assert not held_out & set(rationales["subject_id"])  # the teacher never saw held-out

    run_dir = run_folder(results, "free_form")
    predictions = pl.read_parquet(run_dir / "predictions.parquet")
    for column in (
        "subject_id",
        "prediction_time",
        "boolean_value",
        "predicted_boolean_value",
        "predicted_boolean_probability",
    ):
        assert column in predictions.columns
    scored_held_out = predictions.filter(pl.col("split") == "held_out")
    assert set(scored_held_out["subject_id"]) == held_out
    assert scored_held_out["predicted_boolean_probability"].is_between(0, 1).all()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["scoring_mode"] == "after_rationale"
    assert metrics["n"] == len(held_out)
    # Where and how it was scored is recorded (on the CPU: fp32, the exact path).
    assert metrics["device"] in ("cpu", "cuda:0") and metrics["inference"]["processes"] == 1
    assert metrics["precision"] == "fp32" or metrics["device"] != "cpu"

    # Matched formats trained on the same subjects for the same number of steps.
    runs = [
        json.loads((run_folder(results, f) / "run.json").read_text())
        for f in ("label_only", "free_form", "step_by_step")
    ]
    assert len({r["subjects_sha256"] for r in runs}) == 1
    assert len({r["optimizer_steps"] for r in runs}) == 1


def test_nothing_to_do_after_a_complete_run(finished_study):
    workdir, config = finished_study
    result = snakemake(workdir, "-n", configfile=config)
    assert "Nothing to be done" in result.stdout + result.stderr


def test_learning_rate_edit_reruns_only_that_model(finished_study):
    workdir, config = finished_study
    counts, outputs = edited(
        workdir, config, lambda s: s["models"]["tiny_lora"]["training"].update(learning_rate=0.003)
    )
    assert counts == {"finetune": 3, "evaluate": 3, "report": 1, "all": 1}
    runs = [p for p in outputs if "/runs/" in p]
    assert runs and all("model=tiny_lora/" in p for p in runs)


def test_tracking_launcher_and_gpu_edits_rerun_nothing(finished_study):
    workdir, config = finished_study

    def switch(study):
        study["training"].update(report_to=["tensorboard"], launcher="accelerate")
        study["models"]["tiny"].setdefault("resources", {}).update(gpu=2)

    counts, _ = edited(workdir, config, switch)
    assert "finetune" not in counts and "evaluate" not in counts


def test_teacher_edit_reruns_rationales_and_only_rationale_formats(finished_study):
    workdir, config = finished_study
    counts, outputs = edited(workdir, config, lambda s: s.setdefault("teacher", {}).update(seed=5))
    assert counts == {
        "generate_rationales": 2,
        "rationale_qc": 2,
        "finetune": 4,
        "evaluate": 4,
        "report": 1,
        "all": 1,
    }
    assert not [p for p in outputs if "format=label_only" in p]


def test_new_seed_adds_only_new_jobs(finished_study):
    workdir, config = finished_study
    counts, outputs = edited(workdir, config, lambda s: s["grid"].update(seed=[1, 2]))
    assert counts == {"finetune": 6, "evaluate": 10, "baseline": 1, "report": 1, "all": 1}
    assert all("seed=2" in p for p in outputs if "/runs/" in p)


def test_partial_report_lists_what_is_missing(finished_study):
    workdir, config = finished_study
    study = yaml.safe_load(config.read_text())
    study["grid"]["seed"] = [1, 2]  # seed 2 has not run
    path = workdir / "partial.yaml"
    path.write_text(yaml.safe_dump(study))
    snakemake(
        workdir, "--cores", "1", "report_partial", "--forcerun", "report_partial", configfile=path
    )
    partial = workdir / "results" / "report_partial"
    assert "Partial report" in (partial / "README.md").read_text()
    missing = (partial / "missing.txt").read_text().splitlines()
    # 6 fine-tuned configurations, 4 zero-/few-shot arms and the logistic-regression baseline.
    assert len(missing) == 11 and all("seed=2" in m for m in missing)


def test_html_report_and_run_card(finished_study):
    workdir, config = finished_study
    snakemake(workdir, "--report", "report.html", configfile=config)
    html = (workdir / "report.html").read_text(errors="replace")
    for name in ("paired_configurations.png", "learning_curves.png", "run_card.md"):
        assert name in html
    card = json.loads((workdir / "results" / "report" / "run_card.json").read_text())
    assert len(card["config_sha256"]) == 64
    assert card["teacher"]["as_used"][0]["backend"] == "template"
    assert card["packages"]["torch"] == "2.13.0+cpu" or card["packages"]["torch"].startswith(
        "2.13.0"
    )
    assert card["attrition"][0]["n_subjects"] == 2500
