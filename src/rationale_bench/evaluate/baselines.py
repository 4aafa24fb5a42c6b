"""Classical baselines beside the LM configurations: bag-of-codes logistic regression and GBM.

PatientLevelPrediction / EHRSHOT-style count-free features (a code ever seen before the index),
optional 3-character ICD-10 roll-ups, standardized age and a sex indicator. Every baseline uses
exactly the splits and the nested training subset (``cohort.training_subset``) of the LM
configuration with the same ``n_train`` and ``seed``:

- the vocabulary and the age scaler are learned from the training subset only, never from
  tuning or held-out rows;
- hyperparameters are chosen by AUROC on the tuning split, and the model is the one fitted on
  the training subset (not refitted on train + tuning, since tuning also chooses Platt scaling
  and thresholds, as for the LMs);
- predictions and metrics use the schema of ``evaluate.evaluate_configuration`` so the report
  can treat a baseline like any other configuration.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import polars as pl
import scipy.sparse as sp
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import ParameterGrid
from threadpoolctl import threadpool_limits

from rationale_bench.cohort.build import training_subset
from rationale_bench.evaluate import metrics
from rationale_bench.evaluate.evaluation import subgroup_labels

BaselineKind = Literal["logistic_regression", "gradient_boosting"]
BASELINE_KINDS: tuple[str, ...] = ("logistic_regression", "gradient_boosting")

# Small grids: the tuning split is small (it also picks Platt scaling and thresholds), so a
# wide search would mostly fit its noise.
DEFAULT_GRIDS: dict[str, dict[str, list[Any]]] = {
    "logistic_regression": {"C": [0.001, 0.01, 0.1, 1.0, 10.0]},
    "gradient_boosting": {
        "learning_rate": [0.05, 0.1],
        "max_leaf_nodes": [7, 15],
        "max_iter": [100, 300],
    },
}
# Names of the two demographic columns appended after the code features.
AGE_FEATURE = "DEMOGRAPHIC/age_standardized"
SEX_FEATURE = "DEMOGRAPHIC/sex_female"
ICD10_PREFIX = "ICD10/"


class BaselineError(ValueError):
    """A baseline cannot be fitted or evaluated as configured."""


@dataclass(frozen=True)
class FeatureSpace:
    """What is learned from training rows and reused unchanged for tuning and held-out rows.

    ``vocabulary`` holds the code columns in order (roll-ups such as ``ICD10/I10`` included);
    ``age_mean``/``age_sd`` standardize age; ``rollup`` says whether ICD-10 codes also switch on
    their 3-character category.
    """

    vocabulary: tuple[str, ...]
    age_mean: float
    age_sd: float
    rollup: bool = True
    min_count: int = 5

    @property
    def feature_names(self) -> list[str]:
        """Column names of :func:`feature_matrix`: the codes, then age and sex."""
        return [*self.vocabulary, AGE_FEATURE, SEX_FEATURE]

    @property
    def n_features(self) -> int:
        return len(self.vocabulary) + 2


def _subject_codes(histories: pl.DataFrame, rollup: bool) -> pl.DataFrame:
    """Long frame ``row, code``: each row's distinct codes, plus their roll-ups if asked."""
    if "codes" not in histories.columns:
        raise BaselineError(
            "histories: column 'codes' is missing; pass the output of serialize.build_histories."
        )
    long = (
        histories.select(pl.col("codes").fill_null([]))
        .with_row_index("row")
        .explode("codes")
        .rename({"codes": "code"})
        .drop_nulls("code")
    )
    if rollup:  # ICD10/I10.9 -> ICD10/I10; categories (3 characters) and other codes have none
        value = pl.col("code").str.strip_prefix(ICD10_PREFIX).str.replace_all(".", "", literal=True)
        parents = long.filter(
            pl.col("code").str.starts_with(ICD10_PREFIX) & (value.str.len_chars() > 3)
        ).select("row", code=pl.lit(ICD10_PREFIX) + value.str.slice(0, 3))
        long = pl.concat([long, parents])
    # A parent may coincide with a code the subject also has: count each feature once.
    return long.unique(["row", "code"])


def _check_demographics(histories: pl.DataFrame, what: str) -> None:
    for column in ("subject_id", "age", "sex"):
        if column not in histories.columns:
            raise BaselineError(
                f"{what}: column '{column}' is missing; pass the output of "
                "serialize.build_histories."
            )
    if histories["age"].null_count():
        raise BaselineError(
            f"{what}: {histories['age'].null_count()} subjects have no age; "
            "the cohort should give every subject an age at index."
        )


def fit_feature_space(
    train_histories: pl.DataFrame, min_count: int = 5, rollup: bool = True
) -> FeatureSpace:
    """Learn the vocabulary and age scaler from training rows only.

    A code (or roll-up) is kept when at least ``min_count`` training subjects have it. Rows of
    any split other than ``train`` are refused, so held-out codes can never become features.
    """
    if min_count < 1:
        raise BaselineError(f"baselines.min_count must be >= 1, got {min_count}.")
    if train_histories.height == 0:
        raise BaselineError("feature space: no training rows to learn the vocabulary from.")
    if "split" in train_histories.columns:
        other = train_histories.filter(pl.col("split") != "train")
        if other.height:
            raise BaselineError(
                f"feature space: {other.height} rows are from splits "
                f"{sorted(set(other['split'].to_list()))}; the vocabulary and age scaler must be "
                "learned from training rows only."
            )
    _check_demographics(train_histories, "feature space")
    counts = (
        _subject_codes(train_histories, rollup)
        .group_by("code")
        .agg(n=pl.len())
        .filter(pl.col("n") >= min_count)
    )
    vocabulary = tuple(sorted(counts["code"].to_list()))
    if not vocabulary:
        raise BaselineError(
            f"feature space: no code is seen in >= {min_count} of the {train_histories.height} "
            "training subjects, so the vocabulary is empty; lower baselines.min_count or use a "
            "larger n_train."
        )
    age = train_histories["age"].cast(pl.Float64).to_numpy()
    sd = float(age.std(ddof=1)) if age.size > 1 else 0.0
    # A constant age (tiny subsets) would divide by zero; leave the values centred instead.
    return FeatureSpace(
        vocabulary=vocabulary,
        age_mean=float(age.mean()),
        age_sd=sd if sd > 0 else 1.0,
        rollup=rollup,
        min_count=min_count,
    )


def feature_matrix(
    histories: pl.DataFrame,
    vocabulary: FeatureSpace | None = None,
    min_count: int = 5,
    *,
    rollup: bool = True,
) -> tuple[sp.csr_matrix, FeatureSpace, np.ndarray]:
    """Binary bag-of-codes plus standardized age and a female indicator, one row per subject.

    With ``vocabulary=None`` the feature space is fitted on the rows whose ``split`` is
    ``train`` (see :func:`fit_feature_space`) and then applied to all rows; pass the returned
    :class:`FeatureSpace` to build tuning and held-out matrices with the training vocabulary
    and scaler (``min_count`` and ``rollup`` then come from it). Codes outside the vocabulary
    are ignored.

    Returns ``(X, space, subject_ids)``: ``X`` is CSR float64 with columns
    ``space.feature_names`` and rows in the order of ``histories``.
    """
    if vocabulary is None:
        if "split" not in histories.columns:
            raise BaselineError(
                "feature_matrix: without a fitted FeatureSpace the rows need a 'split' column "
                "to find the training rows."
            )
        train = histories.filter(pl.col("split") == "train")
        vocabulary = fit_feature_space(train, min_count=min_count, rollup=rollup)
    space = vocabulary
    _check_demographics(histories, "feature_matrix")

    index = pl.DataFrame(
        {"code": list(space.vocabulary), "col": np.arange(len(space.vocabulary), dtype=np.int64)},
        schema={"code": pl.String, "col": pl.Int64},
    )
    cells = _subject_codes(histories, space.rollup).join(index, on="code", how="inner")
    n = histories.height
    codes = sp.csr_matrix(
        (
            np.ones(cells.height, dtype=np.float64),
            (cells["row"].cast(pl.Int64).to_numpy(), cells["col"].to_numpy()),
        ),
        shape=(n, len(space.vocabulary)),
    )
    age = (histories["age"].cast(pl.Float64).to_numpy() - space.age_mean) / space.age_sd
    female = (histories["sex"] == "F").fill_null(False).cast(pl.Float64).to_numpy()
    demo = sp.csr_matrix(np.column_stack([age, female]))
    matrix = sp.hstack([codes, demo], format="csr", dtype=np.float64)
    matrix.sort_indices()
    return matrix, space, histories["subject_id"].to_numpy()


def _check_labels(y: np.ndarray, what: str) -> np.ndarray:
    y = np.asarray(y).astype(bool)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        raise BaselineError(
            f"{what} has {y.size} subjects and {n_pos} cases; a baseline needs cases and "
            "non-cases there. Use a larger n_train or more subjects."
        )
    return y


def _make_model(kind: str, params: Mapping[str, Any], seed: int) -> Any:
    if kind == "logistic_regression":
        # L2 is the default (l1_ratio=0); lbfgs handles sparse input and does not penalize the
        # intercept, unlike liblinear.
        return LogisticRegression(
            solver="lbfgs", max_iter=10_000, class_weight=None, random_state=seed, **params
        )
    return HistGradientBoostingClassifier(early_stopping=False, random_state=seed, **params)


def fit_baseline(
    kind: BaselineKind,
    train: tuple[sp.spmatrix | np.ndarray, np.ndarray],
    tuning: tuple[sp.spmatrix | np.ndarray, np.ndarray],
    seed: int,
    grid: Mapping[str, Sequence[Any]] | None = None,
    n_threads: int | None = 1,
) -> tuple[Any, dict[str, Any], float]:
    """Fit one model per grid point on ``train`` and keep the best by tuning AUROC.

    ``grid`` maps estimator parameters to candidate values (default :data:`DEFAULT_GRIDS`).
    Ties keep the earlier grid point (grid order is that of ``sklearn.ParameterGrid``; the
    default C grid is ascending, so ties favour stronger regularization), so the choice is
    deterministic for a seed. ``n_threads`` caps the OpenMP/BLAS threads (None: no
    cap); one thread is the default because HistGradientBoosting on a few thousand rows runs
    many times slower with threads that compete for shared cores. Returns ``(model,
    chosen_hyperparameters, tuning_auroc)``; the model is fitted on ``train`` only.
    """
    if kind not in BASELINE_KINDS:
        raise BaselineError(f"baseline kind '{kind}' is unknown; choose one of {BASELINE_KINDS}.")
    grid = dict(DEFAULT_GRIDS[kind] if grid is None else grid)
    grid = {k: list(v) if isinstance(v, (list, tuple)) else [v] for k, v in grid.items()}
    if not grid or any(len(v) == 0 for v in grid.values()):
        raise BaselineError(f"baseline grid for {kind} is empty: {grid}.")
    x_train, y_train = train
    x_tune, y_tune = tuning
    y_train = _check_labels(y_train, "the training subset")
    y_tune = _check_labels(y_tune, "the tuning split")
    if x_train.shape[0] != y_train.size or x_tune.shape[0] != y_tune.size:
        raise BaselineError(
            f"feature rows and labels differ: train {x_train.shape[0]} vs {y_train.size}, "
            f"tuning {x_tune.shape[0]} vs {y_tune.size}."
        )
    if kind == "gradient_boosting":
        # HistGradientBoosting needs dense input; min_count keeps the vocabulary small enough.
        x_train = x_train.toarray() if sp.issparse(x_train) else x_train
        x_tune = x_tune.toarray() if sp.issparse(x_tune) else x_tune

    best: tuple[Any, dict[str, Any], float] | None = None
    for params in ParameterGrid(grid):
        try:
            model = _make_model(kind, params, seed)
        except TypeError as exc:  # an unknown grid key
            raise BaselineError(f"baseline grid for {kind}: {exc}") from exc
        try:
            # A non-converged fit would be silently worse: fail instead.
            with warnings.catch_warnings(), threadpool_limits(n_threads):
                warnings.simplefilter("error", ConvergenceWarning)
                model.fit(x_train, y_train)
        except ConvergenceWarning as exc:
            raise BaselineError(
                f"{kind} with {params} did not converge in {model.max_iter} iterations: {exc}"
            ) from exc
        with threadpool_limits(n_threads):
            score = metrics.auroc(y_tune, model.predict_proba(x_tune)[:, 1])
        if best is None or score > best[2]:
            best = (model, dict(params), float(score))
    assert best is not None
    return best


def predict_proba(model: Any, x: sp.spmatrix | np.ndarray, n_threads: int | None = 1) -> np.ndarray:
    """Probability of the outcome; densifies for HistGradientBoosting."""
    if isinstance(model, HistGradientBoostingClassifier) and sp.issparse(x):
        x = x.toarray()
    with threadpool_limits(n_threads):
        p = model.predict_proba(x)[:, 1].astype(np.float64)
    return np.clip(p, 0.0, 1.0)


def _grid_from_cfg(kind: str, cfg: Mapping[str, Any]) -> Mapping[str, Sequence[Any]] | None:
    grids = cfg.get("grids") or {}
    return grids.get(kind)


def baseline_rows(
    histories: pl.DataFrame, cohort: pl.DataFrame, n_train: int, seed: int
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """The training-subset, tuning and held-out rows of one configuration, by subject id.

    Training rows are ``cohort.training_subset(cohort, n_train, seed)``: the same subjects the
    LM configurations with this ``n_train`` and ``seed`` are fine-tuned on. Each frame has
    ``subject_id, split, label, age, sex, index_time, codes``.
    """
    subset_ids = training_subset(cohort, n_train, seed)["subject_id"].to_list()
    # The cohort is the authority for split, label and index time; histories give the codes.
    people = cohort.select("subject_id", "split", "label", "age", "sex", "index_time")
    table = people.join(histories.select("subject_id", "codes"), on="subject_id", how="left")
    used = pl.col("subject_id").is_in(subset_ids) | pl.col("split").is_in(["tuning", "held_out"])
    missing = table.filter(used & pl.col("codes").is_null())["subject_id"]
    if missing.len():
        raise BaselineError(
            f"histories lack {missing.len()} cohort subjects (e.g. {missing.head(5).to_list()}); "
            "build histories from the same cohort."
        )
    train = table.filter(pl.col("subject_id").is_in(subset_ids)).sort("subject_id")
    tuning = table.filter(pl.col("split") == "tuning").sort("subject_id")
    held = table.filter(pl.col("split") == "held_out").sort("subject_id")
    if tuning.height == 0 or held.height == 0:
        raise BaselineError(
            f"cohort: tuning has {tuning.height} and held_out {held.height} subjects; "
            "baselines need both splits."
        )
    _check_labels(
        train["label"].to_numpy(), f"the training subset (n_train={n_train}, seed={seed})"
    )
    return train, tuning, held


@dataclass(frozen=True)
class BaselineFit:
    """A baseline fitted on the training subset, its choice on tuning and its scores."""

    space: FeatureSpace
    hyperparameters: dict[str, Any]
    tuning_auroc: float
    p_tune: np.ndarray
    p_held: np.ndarray


def fit_and_score(
    kind: BaselineKind,
    train: pl.DataFrame,
    tuning: pl.DataFrame,
    held: pl.DataFrame,
    seed: int,
    cfg: Mapping[str, Any],
) -> BaselineFit:
    """Features learned from the training subset; the grid point best on tuning; its scores."""
    threads = cfg.get("threads", 1)
    space = fit_feature_space(
        train, min_count=int(cfg.get("min_count", 5)), rollup=bool(cfg.get("rollup", True))
    )
    x_train, _, _ = feature_matrix(train, space)
    x_tune, _, _ = feature_matrix(tuning, space)
    x_held, _, _ = feature_matrix(held, space)
    model, hyperparameters, tuning_auroc = fit_baseline(
        kind,
        (x_train, train["label"].to_numpy()),
        (x_tune, tuning["label"].to_numpy()),
        seed,
        _grid_from_cfg(kind, cfg),
        n_threads=threads,
    )
    p_tune = predict_proba(model, x_tune, threads)
    p_held = predict_proba(model, x_held, threads)
    return BaselineFit(space, hyperparameters, tuning_auroc, p_tune, p_held)


def baseline_summary(
    kind: BaselineKind,
    n_train: int,
    seed: int,
    tuning: pl.DataFrame,
    held: pl.DataFrame,
    fit: BaselineFit,
    cfg: Mapping[str, Any],
) -> dict[str, Any]:
    """metrics.json of a baseline: the LM metrics, its threshold and how it was fitted."""
    y_tune = tuning["label"].to_numpy()
    summary = metrics.summarize(
        held["label"].to_numpy(),
        fit.p_held,
        n_boot=int(cfg.get("bootstrap_resamples", 1000)),
        seed=cfg.get("bootstrap_seed", 0),
        tuning_true=y_tune,
        tuning_score=fit.p_tune,
        groups=subgroup_labels(held),
    )
    # The hard label for meds-evaluation: the Youden threshold chosen on tuning, as for the LMs.
    threshold = metrics.youden_threshold(y_tune, fit.p_tune)
    summary.update(
        {
            "config": {"format": kind, "n_train": n_train, "seed": seed},
            "scoring_mode": kind,
            "threshold": threshold,
            "hyperparameters": fit.hyperparameters,
            "tuning_auroc": fit.tuning_auroc,
            "n_features": fit.space.n_features,
            "n_code_features": len(fit.space.vocabulary),
            "min_count": fit.space.min_count,
            "rollup": fit.space.rollup,
            "n_forced_answer": 0,
            "forced_answer_rate": 0.0,
        }
    )
    return summary


def baseline_predictions(
    kind: BaselineKind,
    tuning: pl.DataFrame,
    held: pl.DataFrame,
    fit: BaselineFit,
    threshold: float,
) -> pl.DataFrame:
    """predictions.parquet of a baseline, in the columns of the LM configurations."""
    scored = pl.concat(
        [
            held.select("subject_id", "index_time", "label", "split").with_columns(
                predicted_boolean_probability=pl.Series(fit.p_held, dtype=pl.Float64)
            ),
            tuning.select("subject_id", "index_time", "label", "split").with_columns(
                predicted_boolean_probability=pl.Series(fit.p_tune, dtype=pl.Float64)
            ),
        ]
    )
    return scored.select(
        "subject_id",
        pl.col("index_time").cast(pl.Datetime("us")).alias("prediction_time"),
        pl.col("label").alias("boolean_value"),
        (pl.col("predicted_boolean_probability") >= threshold).alias("predicted_boolean_value"),
        "predicted_boolean_probability",
        "split",
        pl.lit(kind, dtype=pl.String).alias("scoring_mode"),
        pl.lit(False, dtype=pl.Boolean).alias("forced_answer"),
        # A classifier states no answer of its own; the parsed mode is for language models.
        pl.lit(None, dtype=pl.Boolean).alias("parsed_answer"),
        pl.lit(None, dtype=pl.String).alias("generated_text"),
    ).sort("split", "subject_id")


def run_baseline(
    kind: BaselineKind,
    histories: pl.DataFrame,
    cohort: pl.DataFrame,
    n_train: int,
    seed: int,
    cfg: Mapping[str, Any],
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Train one baseline on the configuration's training subset; score tuning and held-out.

    ``cfg`` keys (all optional): ``min_count`` (5), ``rollup`` (True), ``grids`` mapping a kind
    to its grid, ``threads`` (1; see :func:`fit_baseline`), ``bootstrap_resamples`` (1000) and
    ``bootstrap_seed`` (0). Returns predictions in the columns of
    ``evaluate.evaluate_configuration`` (``scoring_mode`` = ``kind``, one row per tuning and
    held-out subject) and its metrics dictionary, plus ``hyperparameters``, ``tuning_auroc``
    and ``n_features``.
    """
    if kind not in BASELINE_KINDS:
        raise BaselineError(f"baseline kind '{kind}' is unknown; choose one of {BASELINE_KINDS}.")
    train, tuning, held = baseline_rows(histories, cohort, n_train, seed)
    fit = fit_and_score(kind, train, tuning, held, seed, cfg)
    summary = baseline_summary(kind, n_train, seed, tuning, held, fit, cfg)
    predictions = baseline_predictions(kind, tuning, held, fit, summary["threshold"])
    return predictions, summary
