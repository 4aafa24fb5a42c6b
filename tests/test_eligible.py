"""When the teacher drops subjects, every format and baseline trains on the same eligible pool."""

from __future__ import annotations

import shutil

import polars as pl
import pytest
from workflow_helpers import REPO, dry_run, snakemake, study_with_teacher

from rationale_bench.cohort.build import restrict_training, training_subset
from rationale_bench.study import drops_subjects
from rationale_bench.teacher.generate import eligible_subjects
from rationale_bench.train.finetune import TrainingError, build_examples


def rationale_table(ids, splits, texts) -> pl.DataFrame:
    return pl.DataFrame({"subject_id": ids, "split": splits, "rationale": texts})


def test_eligible_is_the_subjects_with_a_rationale_in_every_style():
    free = rationale_table([1, 2, 3, 4], ["train"] * 3 + ["tuning"], ["a", None, "c", "d"])
    steps = rationale_table([1, 2, 3], ["train"] * 3, ["x", "y", "  "])
    assert eligible_subjects([free, steps])["subject_id"].to_list() == [1]
    assert eligible_subjects([free])["subject_id"].to_list() == [1, 3, 4]


@pytest.mark.parametrize(
    ("teacher", "drops"),
    [
        ({}, False),
        ({"qc": {"on_failure": "keep"}}, False),
        ({"qc": {"on_failure": "drop"}}, True),
        ({"mode": "label_blind", "label_blind": {"on_disagreement": "rationalize"}}, False),
        ({"mode": "label_blind", "label_blind": {"on_disagreement": "drop"}}, True),
        ({"mode": "label_aware", "label_blind": {"on_disagreement": "drop"}}, False),
    ],
)
def test_which_teacher_settings_drop_subjects(teacher, drops):
    assert drops_subjects(teacher) is drops


def test_restricted_pool_keeps_evaluation_splits_and_feeds_every_format(
    synthetic_cohort, synthetic_histories
):
    cohort = synthetic_cohort[0]
    train = cohort.filter(pl.col("split") == "train")
    # The teacher dropped every fifth training subject's rationale.
    dropped = set(train["subject_id"].to_list()[::5])
    kept = cohort.filter(~pl.col("subject_id").is_in(list(dropped)))
    rationales = kept.select("subject_id", "split").with_columns(rationale=pl.lit("because"))
    eligible = eligible_subjects([rationales])
    restricted, removed = restrict_training(cohort, eligible)
    assert removed == len(dropped)
    for split in ("tuning", "held_out"):  # the evaluation sets never change
        assert restricted.filter(pl.col("split") == split).equals(
            cohort.filter(pl.col("split") == split)
        )
    prompts = synthetic_histories.select("subject_id", "label").with_columns(prompt=pl.lit("p"))
    # Without the restriction a rationale format cannot train; with it, both formats train on
    # exactly the same subjects, and smaller subsets stay nested in larger ones.
    n = 80
    with pytest.raises(TrainingError, match="have no 'free_form' rationale"):
        build_examples(prompts, cohort, rationales, "free_form", len(train) - 5, 1)
    label_only = build_examples(prompts, restricted, None, "label_only", n, 1)
    free_form = build_examples(prompts, restricted, rationales, "free_form", n, 1)
    assert label_only["subject_id"].to_list() == free_form["subject_id"].to_list()
    assert not set(free_form["subject_id"]) & dropped
    small = set(training_subset(restricted, n // 2, 1)["subject_id"])
    assert small <= set(label_only["subject_id"])


@pytest.fixture
def workdir(tmp_path):
    shutil.copy(REPO / "config.yaml", tmp_path / "config.yaml")
    return tmp_path


def test_drop_mode_makes_every_training_job_wait_for_the_pool(workdir, tmp_path):
    path = study_with_teacher(tmp_path, qc={"on_failure": "drop"})
    counts = dry_run(workdir, configfile=path)
    assert counts["eligible_subjects"] == 1
    out = snakemake(workdir, "-n", configfile=path)
    pool = "results/rationales/template/eligible_subjects.parquet"
    jobs = (out.stdout + out.stderr).split("\nrule ")
    for rule in ("finetune", "baseline"):
        inputs = [j for j in jobs if j.startswith(f"{rule}:")]
        assert inputs and all(pool in j.split("output:")[0] for j in inputs), rule
    label_only = [j for j in jobs if j.startswith("finetune:") and "format=label_only" in j]
    assert label_only  # label-only formats too: matched formats keep the same subjects


def test_keep_mode_has_no_pool(workdir):
    assert "eligible_subjects" not in dry_run(workdir)
