"""Tests for rationale_bench.evaluate.baselines: features from training rows only, same subjects
as the LM configurations, tuning-chosen hyperparameters, and outputs shaped like evaluate.py's."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from rationale_bench.cohort.build import training_subset
from rationale_bench.evaluate import baselines as B
from rationale_bench.evaluate import metrics
from rationale_bench.evaluate.evaluation import PREDICTION_COLUMNS

# The 2,500-subject fixture keeps 632 subjects in its training split; 600 is the largest round
# subset and the closest it allows to the n_train ~ 1,000 of the brief.
N_TRAIN = 600
FAST = {"bootstrap_resamples": 100, "bootstrap_seed": 0}
SMALL_GB_GRID = {"learning_rate": [0.1], "max_leaf_nodes": [7], "max_iter": [30, 60]}


def _histories(rows: list[tuple[int, str, bool, float, str, list[str]]]) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema={
            "subject_id": pl.Int64,
            "split": pl.String,
            "label": pl.Boolean,
            "age": pl.Float64,
            "sex": pl.String,
            "codes": pl.List(pl.String),
        },
        orient="row",
    )


@pytest.fixture(scope="module")
def cohort(synthetic_cohort) -> pl.DataFrame:
    return synthetic_cohort[0]


@pytest.fixture(scope="module")
def lr_run(synthetic_histories, cohort):
    return B.run_baseline("logistic_regression", synthetic_histories, cohort, N_TRAIN, 1, FAST)


# --------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------


def test_icd10_rollups_in_the_vocabulary():
    """Specific ICD-10 codes add their 3-character category; categories and other
    vocabularies add nothing."""
    codes = ["ICD10/I10.9", "ICD10/G31.83", "ICD10/F0390", "ICD10/I10", "ATC/N06DA02", "LAB/LDL"]
    hist = _histories([(1, "train", True, 70.0, "F", codes)])
    rolled = B.fit_feature_space(hist, min_count=1).vocabulary
    assert set(rolled) - set(codes) == {"ICD10/G31", "ICD10/F03"}  # ICD10/I10 is already there
    assert B.fit_feature_space(hist, min_count=1, rollup=False).vocabulary == tuple(sorted(codes))


def test_feature_matrix_binary_rollups_and_training_scaler():
    hist = _histories(
        [
            (1, "train", True, 70.0, "F", ["ICD10/I10.9", "LAB/LDL"]),
            (2, "train", False, 80.0, "M", ["ICD10/I10", "ICD10/I10.9"]),
            (3, "train", False, 90.0, "F", []),
            (4, "held_out", True, 100.0, "M", ["ICD10/I10.9", "ICD10/Q99.9", "LAB/LDL"]),
        ]
    )
    x, space, ids = B.feature_matrix(hist, min_count=1)
    assert space.vocabulary == ("ICD10/I10", "ICD10/I10.9", "LAB/LDL")
    assert space.feature_names[-2:] == [B.AGE_FEATURE, B.SEX_FEATURE]
    assert x.shape == (4, space.n_features)
    assert ids.tolist() == [1, 2, 3, 4]
    dense = x.toarray()
    # Subject 1 has only I10.9 but its category I10 is switched on; subject 2's explicit I10
    # and its roll-up count once (binary, not counts).
    np.testing.assert_array_equal(dense[:, :3], [[1, 1, 1], [1, 1, 0], [0, 0, 0], [1, 1, 1]])
    # Age standardized with the mean (80) and sd (10) of the three training rows, not all four.
    np.testing.assert_allclose(dense[:, 3], [-1.0, 0.0, 1.0, 2.0])
    np.testing.assert_array_equal(dense[:, 4], [1, 0, 1, 0])
    assert (space.age_mean, space.age_sd) == (80.0, 10.0)

    no_rollup = B.feature_matrix(hist, min_count=1, rollup=False)[1]
    assert no_rollup.vocabulary == ("ICD10/I10", "ICD10/I10.9", "LAB/LDL")
    assert B.feature_matrix(hist, min_count=2, rollup=False)[1].vocabulary == ("ICD10/I10.9",)


def test_vocabulary_is_learned_from_training_rows_only(synthetic_histories):
    # A code given to every tuning and held-out subject (but no training subject) must not
    # become a feature, while a code given to a handful of training subjects must.
    leak, planted = "ICD10/Q99.9", "ICD10/Q98.1"
    train_ids = (
        synthetic_histories.filter(pl.col("split") == "train")["subject_id"].head(6).to_list()
    )
    hist = synthetic_histories.with_columns(
        codes=pl.when(pl.col("split") != "train")
        .then(pl.col("codes").list.concat(pl.lit([leak])))
        .when(pl.col("subject_id").is_in(train_ids))
        .then(pl.col("codes").list.concat(pl.lit([planted])))
        .otherwise(pl.col("codes"))
    )
    x, space, ids = B.feature_matrix(hist, min_count=5)
    assert leak not in space.vocabulary and "ICD10/Q99" not in space.vocabulary
    assert planted in space.vocabulary and "ICD10/Q98" in space.vocabulary
    assert x.shape == (hist.height, space.n_features)
    # The same space applied to held-out rows keeps the training columns.
    held = hist.filter(pl.col("split") == "held_out")
    x_held, space_held, _ = B.feature_matrix(held, space)
    assert space_held is space and x_held.shape == (held.height, space.n_features)
    # Fitting a space on rows that include other splits is refused.
    with pytest.raises(ValueError, match="training rows only"):
        B.fit_feature_space(hist, min_count=5)


def test_empty_vocabulary_is_a_clear_error(synthetic_histories):
    train = synthetic_histories.filter(pl.col("split") == "train")
    with pytest.raises(ValueError, match="vocabulary is empty; lower baselines.min_count"):
        B.fit_feature_space(train, min_count=train.height + 1)


# --------------------------------------------------------------------------------------
# Subjects, fitting and model selection
# --------------------------------------------------------------------------------------


def test_training_rows_are_the_lm_training_subset(synthetic_histories, cohort):
    for n_train, seed in [(300, 1), (N_TRAIN, 2)]:
        train, tuning, held = B.baseline_rows(synthetic_histories, cohort, n_train, seed)
        expected = training_subset(cohort, n_train, seed)["subject_id"].sort()
        assert train["subject_id"].to_list() == expected.to_list()
        assert set(tuning["split"]) == {"tuning"} and set(held["split"]) == {"held_out"}
        assert tuning.height == cohort.filter(pl.col("split") == "tuning").height
        assert held.height == cohort.filter(pl.col("split") == "held_out").height
    # Nested like the LM subsets: the 300 subjects of seed 1 are within its 600.
    small = set(B.baseline_rows(synthetic_histories, cohort, 300, 1)[0]["subject_id"])
    large = set(B.baseline_rows(synthetic_histories, cohort, N_TRAIN, 1)[0]["subject_id"])
    assert small < large


def _matrices(synthetic_histories, cohort, n_train: int, seed: int):
    train, tuning, _ = B.baseline_rows(synthetic_histories, cohort, n_train, seed)
    space = B.fit_feature_space(train)
    x_train = B.feature_matrix(train, space)[0]
    x_tune = B.feature_matrix(tuning, space)[0]
    return (x_train, train["label"].to_numpy()), (x_tune, tuning["label"].to_numpy()), x_tune


@pytest.mark.parametrize(
    ("kind", "grid"),
    [("logistic_regression", None), ("gradient_boosting", SMALL_GB_GRID)],
)
def test_hyperparameters_chosen_on_tuning_are_deterministic(
    synthetic_histories, cohort, kind, grid
):
    train, tuning, x_tune = _matrices(synthetic_histories, cohort, 300, 3)
    first = B.fit_baseline(kind, train, tuning, seed=3, grid=grid)
    second = B.fit_baseline(kind, train, tuning, seed=3, grid=grid)
    assert first[1] == second[1]
    assert first[2] == second[2]
    np.testing.assert_array_equal(
        B.predict_proba(first[0], x_tune), B.predict_proba(second[0], x_tune)
    )
    # The chosen point is the best tuning AUROC of the grid.
    full = grid or B.DEFAULT_GRIDS[kind]
    assert set(first[1]) == set(full)
    for key, value in first[1].items():
        assert value in full[key]
    assert first[2] == pytest.approx(metrics.auroc(tuning[1], B.predict_proba(first[0], x_tune)))


def test_fit_baseline_rejects_one_class_and_bad_grids(synthetic_histories, cohort):
    (x_train, y_train), tuning, _ = _matrices(synthetic_histories, cohort, 300, 1)
    with pytest.raises(ValueError, match="training subset has 300 subjects and 0 cases"):
        B.fit_baseline("logistic_regression", (x_train, np.zeros_like(y_train)), tuning, seed=1)
    with pytest.raises(ValueError, match="tuning split .* cases; a baseline needs cases"):
        B.fit_baseline(
            "logistic_regression", (x_train, y_train), (tuning[0], np.ones_like(tuning[1])), 1
        )
    with pytest.raises(ValueError, match="unknown; choose one of"):
        B.fit_baseline("random_forest", (x_train, y_train), tuning, seed=1)
    with pytest.raises(ValueError, match="baseline grid for logistic_regression"):
        B.fit_baseline("logistic_regression", (x_train, y_train), tuning, 1, {"depth": [3]})


def test_one_class_training_subset_is_a_clear_error(synthetic_histories, cohort):
    # No case left in the training split: every training subset has a single class.
    no_cases = cohort.with_columns(label=pl.col("label") & (pl.col("split") != "train"))
    with pytest.raises(ValueError, match=r"training subset \(n_train=300, seed=1\) .* 0 cases"):
        B.run_baseline("logistic_regression", synthetic_histories, no_cases, 300, 1, FAST)


def test_missing_histories_are_a_clear_error(synthetic_histories, cohort):
    held_id = cohort.filter(pl.col("split") == "held_out")["subject_id"][0]
    partial = synthetic_histories.filter(pl.col("subject_id") != held_id)
    with pytest.raises(ValueError, match="histories lack 1 cohort subjects"):
        B.run_baseline("logistic_regression", partial, cohort, 300, 1, FAST)


# --------------------------------------------------------------------------------------
# run_baseline: discrimination and output schema
# --------------------------------------------------------------------------------------


def test_logistic_regression_discriminates_on_held_out(lr_run, cohort):
    _, summary = lr_run
    assert summary["n"] == cohort.filter(pl.col("split") == "held_out").height
    assert 0.6 < summary["auroc"] < 0.95
    assert summary["tuning_auroc"] > 0.6
    assert summary["hyperparameters"]["C"] in B.DEFAULT_GRIDS["logistic_regression"]["C"]


def test_predictions_have_meds_evaluation_columns(lr_run, cohort):
    predictions, summary = lr_run
    assert predictions.columns == list(PREDICTION_COLUMNS)
    scored = cohort.filter(pl.col("split").is_in(["tuning", "held_out"]))
    assert predictions.height == scored.height
    assert predictions["subject_id"].n_unique() == predictions.height
    joined = predictions.join(
        scored.select("subject_id", "index_time", "label", pl.col("split").alias("cohort_split")),
        on="subject_id",
    )
    assert joined.height == scored.height
    assert (joined["prediction_time"] == joined["index_time"]).all()
    assert (joined["boolean_value"] == joined["label"]).all()
    assert (joined["split"] == joined["cohort_split"]).all()
    p = predictions["predicted_boolean_probability"]
    assert p.dtype == pl.Float64 and p.min() >= 0.0 and p.max() <= 1.0
    assert (predictions["predicted_boolean_value"] == (p >= summary["threshold"])).all()
    assert set(predictions["scoring_mode"]) == {"logistic_regression"}
    assert not predictions["forced_answer"].any()
    assert predictions["generated_text"].null_count() == predictions.height
    assert predictions.schema["prediction_time"] == pl.Datetime("us")


def test_metrics_look_like_an_lm_configuration(lr_run):
    _, summary = lr_run
    assert summary["config"] == {"format": "logistic_regression", "n_train": N_TRAIN, "seed": 1}
    assert summary["scoring_mode"] == "logistic_regression"
    assert summary["n_forced_answer"] == 0 and summary["forced_answer_rate"] == 0.0
    assert summary["platt"]["fitted_on"] == "tuning"
    assert summary["operating_points"]["youden"]["selected_on"] == "tuning"
    assert set(summary["subgroups"]) == {"sex", "age_band"}
    assert summary["n_features"] > 2
    text = json.dumps(metrics.to_jsonable(summary), allow_nan=False)
    assert json.loads(text)["config"]["format"] == "logistic_regression"


def test_gradient_boosting_runs(synthetic_histories, cohort):
    cfg = {**FAST, "grids": {"gradient_boosting": SMALL_GB_GRID}}
    predictions, summary = B.run_baseline(
        "gradient_boosting", synthetic_histories, cohort, N_TRAIN, 1, cfg
    )
    assert set(predictions["scoring_mode"]) == {"gradient_boosting"}
    assert predictions.columns == list(PREDICTION_COLUMNS)
    assert 0.5 < summary["auroc"] <= 1.0
    assert summary["hyperparameters"]["max_iter"] in SMALL_GB_GRID["max_iter"]
    json.dumps(metrics.to_jsonable(summary), allow_nan=False)
