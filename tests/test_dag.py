"""DAG tests: dry runs of the default and paper-scale studies, config validation errors."""

from __future__ import annotations

import os
import shutil

import pytest
import yaml
from workflow_helpers import REPO, dry_run, snakemake


@pytest.fixture
def workdir(tmp_path):
    shutil.copy(REPO / "config.yaml", tmp_path / "config.yaml")
    return tmp_path


def test_default_study_job_counts(workdir):
    counts = dry_run(workdir)
    assert counts == {
        "synthesize_events": 1,
        "build_cohort": 1,
        "table_one": 1,
        "build_histories": 1,
        "build_tiny_model": 1,
        "build_prompts": 1,
        "generate_rationales": 2,
        "rationale_qc": 2,
        "baseline": 4,
        "finetune": 12,
        "evaluate": 12,
        "report": 1,
        "all": 1,
    }


def test_label_only_grid_needs_no_teacher(workdir, tmp_path):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["grid"]["format"] = ["label_only"]
    path = tmp_path / "label_only.yaml"
    path.write_text(yaml.safe_dump(config))
    counts = dry_run(workdir, configfile=path)
    assert "generate_rationales" not in counts
    assert counts["finetune"] == 4


def test_serialization_axis_multiplies_student_jobs_only(workdir, tmp_path):
    """Two variants: two histories and prompt files and twice the fine-tunes, but the teacher,
    the baselines and the tiny model read the one reference view."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["grid"]["serialization"] = ["timeline_recent", "first_occurrence"]
    path = tmp_path / "two_views.yaml"
    path.write_text(yaml.safe_dump(config))
    counts = dry_run(workdir, configfile=path)
    assert counts["build_histories"] == 2 and counts["build_prompts"] == 2
    assert counts["finetune"] == 24 and counts["evaluate"] == 24
    assert counts["generate_rationales"] == 2 and counts["baseline"] == 4
    assert counts["build_tiny_model"] == 1


def test_reference_variant_outside_the_grid_is_still_built(workdir, tmp_path):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["grid"]["serialization"] = ["codes_only"]
    config["serialization"] = {"reference_variant": "markdown_recent"}
    path = tmp_path / "codes_only.yaml"
    path.write_text(yaml.safe_dump(config))
    counts = dry_run(workdir, configfile=path)
    assert counts["build_histories"] == 2  # codes_only for students, markdown for the teacher
    # the students' codes_only prompts, and the teacher's view: markdown cut to tiny's budget
    assert counts["build_prompts"] == 2


def write_config(tmp_path, mutate):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    mutate(config)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda c: c["grid"].update(n_trian=[1]), "n_trian"),
        (lambda c: c.update(evaluaton={}), "evaluaton"),
        (lambda c: c["models"]["tiny"].update(max_seq_len="long"), "max_seq_len"),
        (lambda c: c["grid"].update(format=["label_only", "cot"]), "cot"),
        (lambda c: c["grid"].update(model=["tiny", "llama"]), "models has no entry 'llama'"),
        (
            lambda c: c["teacher"].update(styles=["free_form"]),
            "teacher.styles does not include 'step_by_step'",
        ),
    ],
)
def test_broken_config_fails_before_any_job_naming_the_key(workdir, tmp_path, mutate, expected):
    path = write_config(tmp_path, mutate)
    result = snakemake(workdir, "-n", configfile=path, check=False)
    assert result.returncode != 0
    assert expected in result.stdout + result.stderr
    assert not (workdir / "results").exists()


def test_lint_is_clean():
    result = snakemake(REPO, "--lint", check=False)
    assert (
        "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr
    ), result.stdout + result.stderr


def test_every_format_and_control_is_a_grid_value(workdir, tmp_path):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["grid"]["format"] = [
        "label_only",
        "label_first",
        "multitask",
        "shuffled_rationale",
        "length_matched_filler",
        "zero_shot",
        "few_shot_labels",
        "few_shot_rationales",
    ]
    config["teacher"]["styles"] = ["free_form"]
    path = tmp_path / "controls.yaml"
    path.write_text(yaml.safe_dump(config))
    counts = dry_run(workdir, configfile=path)
    assert counts["finetune"] == 20 and counts["evaluate"] == 32  # arms are evaluated only
    assert counts["generate_rationales"] == 1


def test_cohort_reruns_when_the_code_table_changes(workdir):
    """build_cohort reads codes.parquet (parent_codes expand OMOP concept ids): a newer code
    table alone reruns the cohort and what follows, not the ingest."""
    files = [
        "results/data/events.parquet",
        "results/data/codes.parquet",
        "results/data/data_quality.csv",
        "results/data/manifest.json",
        "results/cohort/cohort.parquet",
        "results/cohort/attrition.csv",
        "results/cohort/aces_task.yaml",
        "results/cohort/manifest.json",
    ]
    for age, name in enumerate(files):
        path = workdir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
        os.utime(path, (1_000_000 + age, 1_000_000 + age))
    target = "results/cohort/cohort.parquet"
    args = ("--rerun-triggers", "mtime")
    assert "build_cohort" not in dry_run(workdir, target, *args)
    os.utime(workdir / "results/data/codes.parquet", (2_000_000, 2_000_000))
    counts = dry_run(workdir, target, *args)
    assert counts["build_cohort"] == 1 and "synthesize_events" not in counts


def test_yaml_error_in_a_configfile_is_found_with_its_line(workdir, tmp_path, capsys):
    """Snakemake reads --configfile files before the workflow runs, and its message names no
    file or line (docs/study.md quotes it); `rationale-bench plan` names both."""
    from rationale_bench import cli

    path = tmp_path / "my_study.yaml"
    path.write_text("grid:\n  model: [tiny\n  seed: [1]\n")
    result = snakemake(workdir, "-n", configfile=path, check=False)
    assert result.returncode != 0
    said = "Config file is not valid JSON or YAML."
    assert said in result.stdout + result.stderr
    assert said in (REPO / "docs" / "study.md").read_text()
    assert cli.main(["plan", "--configfile", str(path), "--directory", str(workdir)]) == 1
    assert "my_study.yaml, line 3, column 7: not valid YAML" in capsys.readouterr().err


def test_an_old_key_is_read_with_a_deprecation_message(workdir, tmp_path):
    path = write_config(
        tmp_path,
        lambda c: c["teacher"].update(qc={"max_attempts": 3}, openai={"max_attempts": 2}),
    )
    result = snakemake(workdir, "-n", configfile=path)
    said = result.stdout + result.stderr
    assert "teacher.qc.max_attempts is deprecated" in said
    assert "use teacher.qc.regenerations" in said and "use teacher.openai.http_attempts" in said


def test_an_old_and_a_new_key_together_stop_naming_both(workdir, tmp_path):
    path = write_config(tmp_path, lambda c: c["teacher"].update(seed=1, openai={"seed": 2}))
    result = snakemake(workdir, "-n", configfile=path, check=False)
    assert result.returncode != 0
    assert "config sets both teacher.openai.seed (deprecated) and teacher.seed" in (
        result.stdout + result.stderr
    )
    assert not (workdir / "results").exists()
