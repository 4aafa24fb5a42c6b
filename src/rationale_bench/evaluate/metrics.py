"""Discrimination, calibration and decision metrics for binary clinical prediction.

All public functions are plain functions that take array-likes and return Python
scalars, dicts or NumPy arrays.  Conventions used throughout:

* ``y_true`` is a 1-D array of outcomes, boolean or 0/1 (1 = event, e.g. incident
  dementia within 5 years).
* ``y_score`` is a 1-D array of predicted probabilities in ``[0, 1]``.  Metrics that
  only depend on the ranking of the scores (AUROC, AUPRC, thresholds) accept any
  finite real score; metrics that interpret the score as a probability (Brier,
  calibration, Platt scaling) reject values outside ``[0, 1]``.
* Undefined quantities (AUROC with one class, PPV with no predicted positives, ...)
  are returned as ``float("nan")`` rather than raising, so that one degenerate
  subgroup or resample never aborts a benchmark run.  Invalid *inputs* (NaN scores,
  length mismatch, empty arrays, labels other than 0/1) raise ``ValueError``.
* "Predicted positive" always means ``score >= threshold``.

References
----------
DeLong ER, DeLong DM, Clarke-Pearson DL. Comparing the areas under two or more
correlated receiver operating characteristic curves: a nonparametric approach.
Biometrics 1988;44:837-845.

Sun X, Xu W. Fast implementation of DeLong's algorithm for comparing the areas under
correlated receiver operating characteristic curves. IEEE Signal Process Lett
2014;21:1389-1393.

Hanley JA, McNeil BJ. The meaning and use of the area under a receiver operating
characteristic (ROC) curve. Radiology 1982;143:29-36.

Cox DR. Two further applications of a model for binary regression. Biometrika
1958;45:562-565 (calibration slope); Van Calster B et al. Calibration: the Achilles
heel of predictive analytics. BMC Med 2019;17:230.

Platt JC. Probabilistic outputs for support vector machines. 1999.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special, stats

__all__ = [
    "apply_platt",
    "auprc",
    "auroc",
    "auroc_delong",
    "bootstrap_ci",
    "brier",
    "calibration_bins",
    "calibration_intercept_slope",
    "delong_paired_test",
    "expected_calibration_error",
    "fit_platt",
    "operating_point",
    "paired_bootstrap_diff",
    "prevalence",
    "subgroup_auroc",
    "summarize",
    "threshold_for_sensitivity",
    "to_jsonable",
    "youden_threshold",
]

Metric = Callable[[NDArray[np.bool_], NDArray[np.float64]], float]

NAN = float("nan")
# Probabilities are clipped before taking logits so that a model that outputs exact
# 0/1 does not produce infinite logits (value requested by the study protocol).
LOGIT_CLIP = 1e-6
# Bootstrap work arrays are processed in chunks of about this many elements so that
# memory stays bounded (~tens of MB) whatever n_boot * n is.
_CHUNK_ELEMENTS = 2_000_000


# --------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------


def _check_y_true(y_true: ArrayLike) -> NDArray[np.bool_]:
    """Return ``y_true`` as a 1-D boolean array, or raise ValueError."""
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"y_true must be 1-dimensional, got shape {y.shape}")
    if y.size == 0:
        raise ValueError("y_true is empty")
    if y.dtype == np.bool_:
        return y
    if not (np.issubdtype(y.dtype, np.number)):
        raise ValueError(f"y_true must be boolean or 0/1 numeric, got dtype {y.dtype}")
    if np.issubdtype(y.dtype, np.floating) and np.isnan(y).any():
        raise ValueError("y_true contains NaN")
    if not np.isin(y, (0, 1)).all():
        bad = np.unique(y[~np.isin(y, (0, 1))])[:5]
        raise ValueError(f"y_true must contain only 0/1 (or booleans); found {bad.tolist()}")
    return y == 1


def _check_score(
    y_score: ArrayLike, n: int | None, *, name: str = "y_score", probability: bool
) -> NDArray[np.float64]:
    """Return ``y_score`` as a finite 1-D float array of length ``n``, or raise."""
    try:
        s = np.asarray(y_score, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric: {exc}") from exc
    if s.ndim != 1:
        raise ValueError(f"{name} must be 1-dimensional, got shape {s.shape}")
    if s.size == 0:
        raise ValueError(f"{name} is empty")
    if n is not None and s.size != n:
        raise ValueError(f"length mismatch: y_true has {n} elements but {name} has {s.size}")
    if np.isnan(s).any():
        raise ValueError(f"{name} contains {int(np.isnan(s).sum())} NaN value(s)")
    if not np.isfinite(s).all():
        raise ValueError(f"{name} contains infinite values")
    if probability and (s.min() < 0.0 or s.max() > 1.0):
        raise ValueError(
            f"{name} must be probabilities in [0, 1]; found range [{s.min():.6g}, {s.max():.6g}]"
        )
    return s


def _check_pair(
    y_true: ArrayLike, y_score: ArrayLike, *, probability: bool
) -> tuple[NDArray[np.bool_], NDArray[np.float64]]:
    y = _check_y_true(y_true)
    return y, _check_score(y_score, y.size, probability=probability)


def _check_alpha(alpha: float) -> float:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return float(alpha)


def _ratio(num: float, den: float) -> float:
    """num / den, NaN when the denominator is zero (undefined, not an error)."""
    return float(num) / float(den) if den else NAN


# --------------------------------------------------------------------------------------
# Discrimination
# --------------------------------------------------------------------------------------


def prevalence(y_true: ArrayLike) -> float:
    """Fraction of subjects with the outcome."""
    return float(_check_y_true(y_true).mean())


def auroc(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """Area under the ROC curve (Mann-Whitney form, ties count one half).

    Equals ``sklearn.metrics.roc_auc_score`` but returns NaN instead of raising when
    only one class is present (e.g. a small subgroup or a bootstrap resample).
    """
    y, s = _check_pair(y_true, y_score, probability=False)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return NAN
    # Midranks make tied scores contribute 1/2, exactly as the trapezoidal ROC area.
    ranks = stats.rankdata(s)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _delong_structural(
    y: NDArray[np.bool_], scores: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64], int, int]:
    """AUROCs and DeLong covariance matrix for k score vectors (shape (k, n)).

    Fast midrank algorithm of Sun & Xu (2014): the placement values (structural
    components) V10 and V01 follow from three midrank computations instead of the
    O(m*n) pairwise comparison matrix.  Returns (aucs, cov, m, n) where ``cov`` is
    S10/m + S01/n.  ``cov`` is NaN when a class has fewer than two members, because
    the sample covariance of the placement values is then undefined.
    """
    pos = scores[:, y]
    neg = scores[:, ~y]
    m, n = pos.shape[1], neg.shape[1]
    tx = stats.rankdata(pos, axis=1)
    ty = stats.rankdata(neg, axis=1)
    tz = stats.rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    aucs = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)
    k = scores.shape[0]
    if m < 2 or n < 2:
        return aucs, np.full((k, k), NAN), m, n
    # V10[i]: fraction of negatives ranked below positive i; V01[j]: fraction of
    # positives ranked above negative j (ties count 1/2 in both).
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    s10 = np.atleast_2d(np.cov(v10))
    s01 = np.atleast_2d(np.cov(v01))
    return aucs, s10 / m + s01 / n, m, n


def _auroc_ci(auc: float, se: float, alpha: float, transform: str) -> tuple[float, float]:
    z = stats.norm.ppf(1.0 - alpha / 2.0)
    if not (math.isfinite(auc) and math.isfinite(se)):
        return NAN, NAN
    if se == 0.0:
        # Zero estimated variance (e.g. perfect separation): the interval collapses.
        return auc, auc
    if transform == "logit" and 0.0 < auc < 1.0:
        # Delta method: SE(logit A) = SE(A) / (A (1 - A)); back-transforming keeps the
        # interval inside (0, 1) and asymmetric near the boundary.
        centre = special.logit(auc)
        half = z * se / (auc * (1.0 - auc))
        return float(special.expit(centre - half)), float(special.expit(centre + half))
    lo, hi = auc - z * se, auc + z * se
    return float(max(lo, 0.0)), float(min(hi, 1.0))


def auroc_delong(
    y_true: ArrayLike,
    y_score: ArrayLike,
    alpha: float = 0.05,
    *,
    transform: Literal["logit", "none"] = "logit",
) -> dict[str, float]:
    """AUROC with DeLong standard error and a (1 - alpha) confidence interval.

    The variance is DeLong et al.'s (1988) nonparametric estimator computed with the
    fast midrank algorithm (Sun & Xu 2014).

    The confidence interval is, by default, a Wald interval on the **logit scale**,
    back-transformed: ``expit(logit(A) -/+ z * SE / (A (1 - A)))``.  It always lies in
    (0, 1) and is asymmetric near 1, which matters for AUROCs around 0.8-0.9.  With
    ``transform="none"`` a plain Wald interval ``A -/+ z SE`` clipped to [0, 1] is
    returned instead.  When the estimated SE is 0 (perfect separation) the interval
    collapses to the point estimate.

    Returns a dict with ``auroc``, ``se``, ``ci_low``, ``ci_high`` (all NaN when only one
    class is present; SE and CI are NaN when a class has a single member).
    """
    alpha = _check_alpha(alpha)
    if transform not in ("logit", "none"):
        raise ValueError(f"transform must be 'logit' or 'none', got {transform!r}")
    y, s = _check_pair(y_true, y_score, probability=False)
    if y.all() or not y.any():
        return {"auroc": NAN, "se": NAN, "ci_low": NAN, "ci_high": NAN}
    aucs, cov, _, _ = _delong_structural(y, s[None, :])
    auc = float(aucs[0])
    se = float(np.sqrt(max(cov[0, 0], 0.0))) if np.isfinite(cov[0, 0]) else NAN
    lo, hi = _auroc_ci(auc, se, alpha, transform)
    return {"auroc": auc, "se": se, "ci_low": lo, "ci_high": hi}


def delong_paired_test(
    y_true: ArrayLike, score_a: ArrayLike, score_b: ArrayLike, alpha: float = 0.05
) -> dict[str, float]:
    """DeLong test for the difference of two correlated AUROCs (same subjects).

    ``diff = auroc_a - auroc_b``; its variance is ``Var(a) + Var(b) - 2 Cov(a, b)`` from
    the joint DeLong covariance matrix, so the correlation induced by scoring the same
    subjects is accounted for.  ``z = diff / se`` and the two-sided p-value is from the
    standard normal.  The CI is a Wald interval ``diff -/+ z SE`` clipped to [-1, 1].
    If ``se`` is 0 (e.g. identical scores) then ``z = 0, p = 1`` when ``diff == 0``.
    """
    alpha = _check_alpha(alpha)
    y = _check_y_true(y_true)
    a = _check_score(score_a, y.size, name="score_a", probability=False)
    b = _check_score(score_b, y.size, name="score_b", probability=False)
    keys = ("auroc_a", "auroc_b", "diff", "se", "ci_low", "ci_high", "z", "p_value")
    if y.all() or not y.any():
        return dict.fromkeys(keys, NAN)
    aucs, cov, _, _ = _delong_structural(y, np.vstack([a, b]))
    diff = float(aucs[0] - aucs[1])
    contrast = np.array([1.0, -1.0])
    var = float(contrast @ cov @ contrast)
    se = math.sqrt(max(var, 0.0)) if math.isfinite(var) else NAN
    zcrit = stats.norm.ppf(1.0 - alpha / 2.0)
    if not math.isfinite(se):
        z = p = lo = hi = NAN
    elif se == 0.0:
        z = 0.0 if diff == 0.0 else math.copysign(math.inf, diff)
        p = 1.0 if diff == 0.0 else 0.0
        lo = hi = diff
    else:
        z = diff / se
        p = float(2.0 * stats.norm.sf(abs(z)))
        lo, hi = max(diff - zcrit * se, -1.0), min(diff + zcrit * se, 1.0)
    return {
        "auroc_a": float(aucs[0]),
        "auroc_b": float(aucs[1]),
        "diff": diff,
        "se": se,
        "ci_low": float(lo),
        "ci_high": float(hi),
        "z": float(z),
        "p_value": float(p),
    }


def auprc(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """Average precision, identical to ``sklearn.metrics.average_precision_score``.

    ``AP = sum_k (R_k - R_{k-1}) P_k`` over distinct score thresholds (step-wise, no
    interpolation; tied scores form one threshold).  Returns NaN when there are no
    positives (recall undefined).  Compare against :func:`prevalence`, which is the AP
    of an uninformative model.
    """
    y, s = _check_pair(y_true, y_score, probability=False)
    if not y.any():
        return NAN
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    # Last index of each run of tied scores = one ROC/PR threshold.
    ends = np.r_[np.flatnonzero(np.diff(s_sorted)), y.size - 1]
    tp = np.cumsum(y_sorted)[ends].astype(np.float64)
    precision = tp / (ends + 1.0)
    recall = tp / tp[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


# --------------------------------------------------------------------------------------
# Bootstrap
# --------------------------------------------------------------------------------------


def _resample_chunks(
    y: NDArray[np.bool_], n_boot: int, rng: np.random.Generator, stratified: bool
) -> Iterator[NDArray[np.int64]]:
    """Yield (b, n) index matrices, n_boot rows in total.

    Stratified: cases are drawn with replacement from the cases and non-cases from
    the non-cases, so each resample keeps the observed class sizes (and hence both
    classes).  Otherwise subjects are drawn from the whole sample.
    """
    n = y.size
    rows = max(1, _CHUNK_ELEMENTS // n)
    # Strata: (subject indices, column slice) - one stratum for the plain bootstrap.
    if stratified:
        pos_idx, neg_idx = np.flatnonzero(y), np.flatnonzero(~y)
        strata = [(pos_idx, slice(0, pos_idx.size)), (neg_idx, slice(pos_idx.size, n))]
    else:
        strata = [(np.arange(n), slice(0, n))]
    done = 0
    while done < n_boot:
        b = min(rows, n_boot - done)
        idx = np.empty((b, n), dtype=np.int64)
        # Draw row by row so the random stream (and thus every resample) does not
        # depend on the chunk size.
        for r in range(b):
            for members, cols in strata:
                if members.size:
                    idx[r, cols] = members[rng.integers(0, members.size, size=members.size)]
        yield idx
        done += b


def _counts(idx: NDArray[np.int64], n: int) -> NDArray[np.int64]:
    """Per-row multiplicity of each subject: (b, n) index matrix -> (b, n) counts."""
    b = idx.shape[0]
    flat = (idx + (np.arange(b) * n)[:, None]).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n)


class _WeightedAuroc:
    """AUROC of many resamples at once, each resample given by subject counts.

    With w the count of each subject in a resample, the Mann-Whitney numerator is
    sum_{i pos} w_i * (sum_{j neg, s_j < s_i} w_j + 1/2 sum_{j neg, s_j = s_i} w_j).
    Sorting the negatives once and taking a cumulative sum of their counts turns the
    inner sums into two table look-ups, so a chunk costs O(b * n).
    """

    def __init__(self, y: NDArray[np.bool_], s: NDArray[np.float64]) -> None:
        self.pos = np.flatnonzero(y)
        neg = np.flatnonzero(~y)
        self.neg_sorted = neg[np.argsort(s[neg], kind="stable")]
        neg_scores = s[self.neg_sorted]
        self.lo = np.searchsorted(neg_scores, s[self.pos], side="left")
        self.hi = np.searchsorted(neg_scores, s[self.pos], side="right")

    def __call__(self, counts: NDArray[np.int64]) -> NDArray[np.float64]:
        w_neg = counts[:, self.neg_sorted]
        cum = np.zeros((counts.shape[0], w_neg.shape[1] + 1), dtype=np.float64)
        np.cumsum(w_neg, axis=1, out=cum[:, 1:])
        w_pos = counts[:, self.pos]
        below = cum[:, self.lo]
        tied = cum[:, self.hi] - below
        num = np.einsum("ij,ij->i", w_pos, below + 0.5 * tied)
        den = w_pos.sum(axis=1) * w_neg.sum(axis=1).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


class _WeightedAuprc:
    """Average precision of many resamples at once (see :func:`auprc`)."""

    def __init__(self, y: NDArray[np.bool_], s: NDArray[np.float64]) -> None:
        self.order = np.argsort(-s, kind="stable")
        s_sorted = s[self.order]
        self.y_sorted = y[self.order].astype(np.float64)
        self.ends = np.r_[np.flatnonzero(np.diff(s_sorted)), y.size - 1]

    def __call__(self, counts: NDArray[np.int64]) -> NDArray[np.float64]:
        w = counts[:, self.order].astype(np.float64)
        tp = np.cumsum(w * self.y_sorted, axis=1)[:, self.ends]
        total = np.cumsum(w, axis=1)[:, self.ends]
        with np.errstate(invalid="ignore", divide="ignore"):
            # Thresholds not represented in a resample add no recall (d_recall = 0);
            # guard their 0/0 precision so it cannot poison the sum.
            precision = np.where(total > 0, tp / np.where(total > 0, total, 1.0), 0.0)
            d_recall = np.diff(tp, axis=1, prepend=0.0) / tp[:, -1:]
            return np.sum(d_recall * precision, axis=1)


class _WeightedBrier:
    def __init__(self, y: NDArray[np.bool_], s: NDArray[np.float64]) -> None:
        if s.min() < 0.0 or s.max() > 1.0:
            raise ValueError("y_score must be probabilities in [0, 1] for the Brier score")
        self.sq = (s - y) ** 2

    def __call__(self, counts: NDArray[np.int64]) -> NDArray[np.float64]:
        return (counts @ self.sq) / counts.sum(axis=1)


def _vectorised(metric: Metric) -> type | None:
    # Identity check on purpose: a user wrapper (lambda) falls back to the generic loop,
    # which is also how the tests verify that both paths agree.
    return {auroc: _WeightedAuroc, auprc: _WeightedAuprc, brier: _WeightedBrier}.get(metric)


def _boot_values(
    y: NDArray[np.bool_],
    scores: Sequence[NDArray[np.float64]],
    metric: Metric,
    n_boot: int,
    seed: int | None,
    stratified: bool,
) -> list[NDArray[np.float64]]:
    """Metric value of every resample for each score vector (same resamples for all)."""
    rng = np.random.default_rng(seed)
    fast = _vectorised(metric)
    out: list[list[NDArray[np.float64]]] = [[] for _ in scores]
    engines = [fast(y, s) for s in scores] if fast is not None else None
    for idx in _resample_chunks(y, n_boot, rng, stratified):
        if engines is not None:
            counts = _counts(idx, y.size)
            for k, engine in enumerate(engines):
                out[k].append(engine(counts))
        else:
            for k, s in enumerate(scores):
                out[k].append(np.array([metric(y[r], s[r]) for r in idx], dtype=np.float64))
    return [np.concatenate(v) for v in out]


def _check_n_boot(n_boot: int) -> int:
    if int(n_boot) != n_boot or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot}")
    return int(n_boot)


def bootstrap_ci(
    y_true: ArrayLike,
    y_score: ArrayLike,
    metric: Metric = auroc,
    n_boot: int = 1000,
    seed: int | None = 0,
    alpha: float = 0.05,
    stratified: bool = True,
) -> dict[str, float | int]:
    """Percentile bootstrap confidence interval for ``metric(y_true, y_score)``.

    ``stratified=True`` resamples cases and non-cases separately (keeping their
    counts fixed), so every resample contains both classes and ranking metrics are
    always defined; this is the usual choice for case-control-like evaluation sets.
    Resamples where the metric is not finite are dropped; ``n_boot_valid`` reports how
    many remained.  The interval is the (alpha/2, 1 - alpha/2) empirical quantiles of
    the resampled values (linear interpolation); ``estimate`` is the metric on the full
    data.  Results are deterministic for a given ``seed``.

    ``auroc``, ``auprc`` and ``brier`` are evaluated fully vectorised (all resamples at
    once, in memory-bounded chunks); any other callable ``metric(y, score) -> float`` is
    evaluated resample by resample on the same resample indices.
    """
    alpha = _check_alpha(alpha)
    n_boot = _check_n_boot(n_boot)
    y, s = _check_pair(y_true, y_score, probability=False)
    estimate = float(metric(y, s))
    (values,) = _boot_values(y, [s], metric, n_boot, seed, stratified)
    values = values[np.isfinite(values)]
    if values.size == 0:
        lo = hi = NAN
    else:
        lo, hi = (float(q) for q in np.quantile(values, [alpha / 2.0, 1.0 - alpha / 2.0]))
    return {"estimate": estimate, "ci_low": lo, "ci_high": hi, "n_boot_valid": int(values.size)}


def paired_bootstrap_diff(
    y_true: ArrayLike,
    score_a: ArrayLike,
    score_b: ArrayLike,
    metric: Metric = auroc,
    n_boot: int = 1000,
    seed: int | None = 0,
    alpha: float = 0.05,
    stratified: bool = True,
) -> dict[str, float | int]:
    """Paired bootstrap for ``metric(a) - metric(b)`` on the same subjects.

    Both scores are evaluated on the *same* resampled subjects, so the correlation
    between the two models is preserved.  The CI is the percentile interval of the
    resampled differences.  The two-sided p-value is
    ``min(1, 2 * fraction of resampled differences on the other side of 0)``, where a
    resampled difference of exactly 0 counts as "other side" (conservative); it is 1
    when the observed difference is 0.  Its resolution is limited to ``2 / n_boot``.
    """
    alpha = _check_alpha(alpha)
    n_boot = _check_n_boot(n_boot)
    y = _check_y_true(y_true)
    a = _check_score(score_a, y.size, name="score_a", probability=False)
    b = _check_score(score_b, y.size, name="score_b", probability=False)
    est_a, est_b = float(metric(y, a)), float(metric(y, b))
    diff = est_a - est_b
    va, vb = _boot_values(y, [a, b], metric, n_boot, seed, stratified)
    d = va - vb
    d = d[np.isfinite(d)]
    if d.size == 0 or not math.isfinite(diff):
        lo = hi = p = NAN
    else:
        lo, hi = (float(q) for q in np.quantile(d, [alpha / 2.0, 1.0 - alpha / 2.0]))
        if diff > 0:
            p = min(1.0, 2.0 * float(np.mean(d <= 0.0)))
        elif diff < 0:
            p = min(1.0, 2.0 * float(np.mean(d >= 0.0)))
        else:
            p = 1.0
    return {
        "estimate_a": est_a,
        "estimate_b": est_b,
        "diff": diff,
        "ci_low": lo,
        "ci_high": hi,
        "p_value": p,
        "n_boot_valid": int(d.size),
    }


# --------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------


def brier(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """Brier score: mean squared difference between predicted probability and outcome.

    Not ``sklearn.metrics.brier_score_loss``: sklearn squares both columns of the one-hot
    target and halves the sum, and ``1 - (1 - p)`` need not be ``p`` exactly, so it differs
    from this in the last bit on some inputs (41 of 3,000 random ones; the Platt Brier of one
    tiny-study configuration), which would change metrics.json; tests/test_metrics.py checks
    that both agree to float tolerance.
    """
    y, s = _check_pair(y_true, y_score, probability=True)
    return float(np.mean((s - y) ** 2))


def _bin_edges(s: NDArray[np.float64], n_bins: int, strategy: str) -> NDArray[np.float64]:
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins}")
    if strategy == "quantile":
        return np.percentile(s, np.linspace(0.0, 100.0, int(n_bins) + 1))
    if strategy == "uniform":
        return np.linspace(0.0, 1.0, int(n_bins) + 1)
    raise ValueError(f"strategy must be 'quantile' or 'uniform', got {strategy!r}")


def calibration_bins(
    y_true: ArrayLike,
    y_score: ArrayLike,
    n_bins: int = 10,
    strategy: Literal["quantile", "uniform"] = "quantile",
) -> list[dict[str, float | int]]:
    """Reliability-diagram bins: predicted vs observed event rate per bin.

    Binning follows ``sklearn.calibration.calibration_curve``: edges are ``n_bins + 1``
    equally spaced points on [0, 1] (``"uniform"``) or the empirical quantiles of the
    scores (``"quantile"``, equal-count bins, the default because predicted dementia
    risks are concentrated near 0).  Bin k holds scores in ``(edge_k, edge_{k+1}]`` (the
    first bin also includes its lower edge).  Empty bins are omitted (with heavily tied
    scores, quantile bins can coincide).  Each row has ``bin`` (index), ``lower``,
    ``upper``, ``n``, ``mean_predicted`` and ``observed_rate``.

    Not calibration_curve itself: it returns only the two rates, while metrics.json records
    each bin's edges and count (and the ECE weights bins by count); and it asks for the
    quantiles ``linspace(0, 1) * 100``, which differ from ``linspace(0, 100)`` in the last bit
    (30.000000000000004), so its edges differ from the ones metrics.json has always recorded.
    tests/test_metrics.py checks the rates against calibration_curve's.
    """
    y, s = _check_pair(y_true, y_score, probability=True)
    edges = _bin_edges(s, n_bins, strategy)
    ids = np.searchsorted(edges[1:-1], s)  # side="left", as in sklearn
    n_b = np.bincount(ids, minlength=len(edges) - 1)
    sum_p = np.bincount(ids, weights=s, minlength=len(edges) - 1)
    sum_y = np.bincount(ids, weights=y.astype(np.float64), minlength=len(edges) - 1)
    return [
        {
            "bin": int(k),
            "lower": float(edges[k]),
            "upper": float(edges[k + 1]),
            "n": int(n_b[k]),
            "mean_predicted": float(sum_p[k] / n_b[k]),
            "observed_rate": float(sum_y[k] / n_b[k]),
        }
        for k in np.flatnonzero(n_b)
    ]


def expected_calibration_error(
    y_true: ArrayLike,
    y_score: ArrayLike,
    n_bins: int = 10,
    strategy: Literal["quantile", "uniform"] = "quantile",
) -> float:
    """Expected calibration error: ``sum_b (n_b / n) |mean_predicted_b - observed_b|``.

    Bins as in :func:`calibration_bins`.  Note that ECE is biased upwards in small
    samples (each bin's observed rate is noisy), so compare models at equal n and
    bins, and report it alongside calibration slope/intercept.
    """
    rows = calibration_bins(y_true, y_score, n_bins=n_bins, strategy=strategy)
    n = sum(r["n"] for r in rows)
    return float(sum(r["n"] * abs(r["mean_predicted"] - r["observed_rate"]) for r in rows) / n)


def _logit(p: NDArray[np.float64]) -> NDArray[np.float64]:
    return special.logit(np.clip(p, LOGIT_CLIP, 1.0 - LOGIT_CLIP))


def _fit_logistic(
    y: NDArray[np.bool_],
    x: NDArray[np.float64],
    offset: NDArray[np.float64] | None = None,
    max_iter: int = 100,
    tol: float = 1e-10,
) -> tuple[NDArray[np.float64], NDArray[np.float64], bool]:
    """Unpenalised logistic regression by Newton-Raphson with step halving.

    ``x`` is the (n, p) design matrix (include a column of ones for an intercept).
    Returns (coefficients, covariance = inverse observed information, converged).
    Non-convergence usually means (quasi-)complete separation, where the maximum
    likelihood estimate does not exist.
    """
    yf = y.astype(np.float64)
    off = np.zeros(y.size) if offset is None else offset
    beta = np.zeros(x.shape[1])

    def nll(b: NDArray[np.float64]) -> float:
        eta = x @ b + off
        # log(1 + e^eta) - y*eta, computed stably.
        return float(np.sum(np.logaddexp(0.0, eta) - yf * eta))

    current = nll(beta)
    converged = False
    for _ in range(max_iter):
        eta = x @ beta + off
        mu = special.expit(eta)
        grad = x.T @ (mu - yf)
        hess = (x * (mu * (1.0 - mu))[:, None]).T @ x
        try:
            step = np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            break
        if np.max(np.abs(step)) < tol * (1.0 + np.max(np.abs(beta))):
            converged = True
            break
        # Step halving guarantees a monotone decrease of the (convex) objective.
        t = 1.0
        while True:
            candidate = beta - t * step
            value = nll(candidate)
            if value <= current + 1e-12 * abs(current):
                break
            t /= 2.0
            if t < 1e-10:  # no descent possible: numerically at the optimum or stuck
                candidate, value = beta, current
                break
        if candidate is beta:
            converged = bool(np.max(np.abs(grad)) < 1e-6 * max(1.0, y.size))
            break
        beta, current = candidate, value
    mu = special.expit(x @ beta + off)
    hess = (x * (mu * (1.0 - mu))[:, None]).T @ x
    try:
        cov = np.linalg.inv(hess)
    except np.linalg.LinAlgError:
        cov = np.full_like(hess, np.nan)
    return beta, cov, converged


def _separated(y: NDArray[np.bool_], x: NDArray[np.float64]) -> bool:
    """Whether a threshold on x (quasi-)completely separates the classes.

    For the model ``a + b x`` this is exactly the condition under which the maximum
    likelihood estimate does not exist (the slope diverges).  Newton iterations would
    otherwise stop at a huge, arbitrary slope with a vanishing gradient.
    """
    xp, xn = x[y], x[~y]
    return bool(xp.min() >= xn.max() or xp.max() <= xn.min())


def calibration_intercept_slope(y_true: ArrayLike, y_score: ArrayLike) -> dict[str, Any]:
    """Logistic recalibration (Cox 1958): calibration-in-the-large and slope.

    With ``L = logit(clip(p, 1e-6, 1 - 1e-6))``, both fitted by unpenalised maximum
    likelihood:

    * ``slope``: coefficient ``b`` in ``logit P(y=1) = a + b L``.  1 is ideal; < 1 means
      predictions are too extreme (overfitting), > 1 too moderate.
    * ``intercept``: calibration-in-the-large, ``a`` in ``logit P(y=1) = a + L``
      (L as an offset).  0 is ideal; < 0 means risks are overestimated on average.

    Also returned: ``slope_model_intercept`` (``a`` of the slope model), standard errors
    ``intercept_se``/``slope_se`` from the observed information, and ``converged``.
    All estimates are NaN when only one class is present (the MLE does not exist);
    a non-converged fit (separation) is returned as NaN with ``converged=False``.
    """
    y, s = _check_pair(y_true, y_score, probability=True)
    keys = ("intercept", "intercept_se", "slope", "slope_se", "slope_model_intercept")
    if y.all() or not y.any():
        return {**dict.fromkeys(keys, NAN), "converged": False}
    lp = _logit(s)
    if _separated(y, lp):
        warnings.warn(
            "calibration_intercept_slope: outcome is (quasi-)completely separated by the "
            "score, the calibration slope does not exist (fit did not converge)",
            RuntimeWarning,
            stacklevel=2,
        )
        return {**dict.fromkeys(keys, NAN), "converged": False}
    ones = np.ones((y.size, 1))
    b_citl, cov_citl, ok_citl = _fit_logistic(y, ones, offset=lp)
    b_slope, cov_slope, ok_slope = _fit_logistic(y, np.column_stack([ones, lp]))
    ok = ok_citl and ok_slope
    if not ok:
        warnings.warn(
            "calibration_intercept_slope: logistic fit did not converge (separation?)",
            RuntimeWarning,
            stacklevel=2,
        )
        return {**dict.fromkeys(keys, NAN), "converged": False}
    return {
        "intercept": float(b_citl[0]),
        "intercept_se": float(np.sqrt(cov_citl[0, 0])),
        "slope": float(b_slope[1]),
        "slope_se": float(np.sqrt(cov_slope[1, 1])),
        "slope_model_intercept": float(b_slope[0]),
        "converged": True,
    }


def fit_platt(y_true: ArrayLike, y_score: ArrayLike) -> tuple[float, float]:
    """Fit Platt scaling on logit(score); returns ``(a, b)`` = (intercept, slope).

    The recalibrated probability is ``expit(a + b * logit(clip(p, 1e-6, 1 - 1e-6)))``
    (see :func:`apply_platt`).  Unpenalised maximum likelihood, without Platt's target
    smoothing.  Fit on a tuning split and apply to held-out data; fitting and
    evaluating on the same data gives optimistic calibration (slope 1 by
    construction).  Raises ValueError if ``y_true`` has a single class.  If the
    classes are (quasi-)separated by the score the MLE does not exist: a
    RuntimeWarning is issued and the last Newton iterate (a very steep calibrator) is
    returned.
    """
    y, s = _check_pair(y_true, y_score, probability=True)
    if y.all() or not y.any():
        raise ValueError("fit_platt needs both classes in y_true")
    lp = _logit(s)
    beta, _, ok = _fit_logistic(y, np.column_stack([np.ones(y.size), lp]))
    if not ok or _separated(y, lp):
        warnings.warn(
            "fit_platt: logistic fit did not converge (separation?)", RuntimeWarning, stacklevel=2
        )
    return float(beta[0]), float(beta[1])


def apply_platt(params: tuple[float, float], y_score: ArrayLike) -> NDArray[np.float64]:
    """Apply Platt parameters ``(a, b)`` from :func:`fit_platt` to probabilities."""
    a, b = params
    s = _check_score(y_score, None, probability=True)
    return special.expit(a + b * _logit(s))


# --------------------------------------------------------------------------------------
# Thresholds and operating points
# --------------------------------------------------------------------------------------


def _roc_points(
    y: NDArray[np.bool_], s: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.int64], NDArray[np.int64]]:
    """Distinct thresholds (descending) with TP and FP counts at ``score >= t``."""
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    ends = np.r_[np.flatnonzero(np.diff(s_sorted)), y.size - 1]
    tp = np.cumsum(y_sorted)[ends]
    fp = ends + 1 - tp
    return s_sorted[ends], tp, fp


def youden_threshold(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """Threshold maximising Youden's J = sensitivity + specificity - 1.

    Candidates are the observed scores (rule ``score >= t``); among equally good
    thresholds the highest is returned (same choice as ``argmax`` over
    ``sklearn.metrics.roc_curve``).  NaN if only one class is present.
    """
    y, s = _check_pair(y_true, y_score, probability=False)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return NAN
    thr, tp, fp = _roc_points(y, s)
    # J * n_pos * n_neg in exact integer arithmetic so ties are detected exactly.
    j = tp * n_neg - fp * n_pos
    return float(thr[int(np.argmax(j))])


def threshold_for_sensitivity(y_true: ArrayLike, y_score: ArrayLike, target: float = 0.8) -> float:
    """Highest threshold whose sensitivity (``score >= t``) is at least ``target``.

    Sensitivity only increases as the threshold falls, so this is the most specific
    rule meeting the sensitivity requirement.  NaN if there are no positives.
    """
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target sensitivity must be in (0, 1], got {target}")
    y, s = _check_pair(y_true, y_score, probability=False)
    n_pos = int(y.sum())
    if n_pos == 0:
        return NAN
    thr, tp, _ = _roc_points(y, s)
    # Small tolerance so that e.g. 4/5 counts as reaching 0.8 despite float rounding.
    ok = tp >= target * n_pos - 1e-9
    return float(thr[int(np.argmax(ok))])


def operating_point(y_true: ArrayLike, y_score: ArrayLike, threshold: float) -> dict[str, Any]:
    """Confusion matrix and derived rates at ``score >= threshold``.

    Undefined ratios (e.g. PPV with no predicted positives) are NaN.  Returns
    ``threshold``, ``tp``, ``fp``, ``tn``, ``fn``, ``sensitivity``, ``specificity``, ``ppv``,
    ``npv``, ``f1`` and ``flagged_fraction`` (share predicted positive).
    """
    y, s = _check_pair(y_true, y_score, probability=False)
    if not isinstance(threshold, (int, float, np.number)) or math.isnan(threshold):
        raise ValueError(f"threshold must be a number, got {threshold!r}")
    pred = s >= threshold
    tp = int(np.sum(pred & y))
    fp = int(np.sum(pred & ~y))
    fn = int(np.sum(~pred & y))
    tn = int(np.sum(~pred & ~y))
    return {
        "threshold": float(threshold),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "flagged_fraction": _ratio(tp + fp, y.size),
    }


# --------------------------------------------------------------------------------------
# Subgroups, summary, JSON
# --------------------------------------------------------------------------------------


def _group_key(g: Any) -> Any:
    # NaN labels would each be a distinct dict key; treat all missing labels as None.
    return None if isinstance(g, float) and math.isnan(g) else g


def subgroup_auroc(
    y_true: ArrayLike, y_score: ArrayLike, groups: ArrayLike, alpha: float = 0.05
) -> list[dict[str, Any]]:
    """AUROC (with DeLong logit-scale CI) within each level of ``groups``.

    One row per group, ordered by ``str(group)``: ``group``, ``n``, ``n_pos``,
    ``auroc``, ``ci_low``, ``ci_high`` and ``note`` (``"single class"`` with NaN AUROC
    when a group lacks cases or non-cases, otherwise None).  Missing labels (None/NaN)
    form their own group ``None``.
    """
    y, s = _check_pair(y_true, y_score, probability=False)
    g = np.asarray(groups, dtype=object)
    if g.ndim != 1 or g.size != y.size:
        raise ValueError(f"length mismatch: y_true has {y.size} elements but groups has {g.size}")
    labels = [_group_key(v.item() if isinstance(v, np.generic) else v) for v in g.tolist()]
    levels = sorted(dict.fromkeys(labels), key=str)
    code_of = {lev: k for k, lev in enumerate(levels)}
    codes = np.fromiter((code_of[v] for v in labels), dtype=np.int64, count=len(labels))
    rows = []
    for k, lev in enumerate(levels):
        mask = codes == k
        yk, sk = y[mask], s[mask]
        n_pos = int(yk.sum())
        single = n_pos == 0 or n_pos == yk.size
        res = (
            {"auroc": NAN, "ci_low": NAN, "ci_high": NAN}
            if single
            else auroc_delong(yk, sk, alpha=alpha)
        )
        rows.append(
            {
                "group": lev,
                "n": int(yk.size),
                "n_pos": n_pos,
                "auroc": res["auroc"],
                "ci_low": res["ci_low"],
                "ci_high": res["ci_high"],
                "note": "single class" if single else None,
            }
        )
    return rows


def _bootstrap_summary(
    y: NDArray[np.bool_],
    s: NDArray[np.float64],
    metric: Metric,
    n_boot: int,
    seed: int | None,
    alpha: float,
) -> dict[str, Any]:
    """A metric's stratified percentile CI with the settings that produced it."""
    r = bootstrap_ci(y, s, metric=metric, n_boot=n_boot, seed=seed, alpha=alpha)
    return {
        "ci_low": r["ci_low"],
        "ci_high": r["ci_high"],
        "n_boot": int(n_boot),
        "seed": seed,
        "stratified": True,
        "method": "percentile",
        "n_boot_valid": r["n_boot_valid"],
    }


def _held_out_metrics(
    y: NDArray[np.bool_],
    s: NDArray[np.float64],
    n_boot: int,
    seed: int | None,
    alpha: float,
    n_bins: int,
) -> dict[str, Any]:
    """Discrimination and calibration on the held-out predictions alone (no tuning data)."""
    dl = auroc_delong(y, s, alpha=alpha)
    return {
        "n": int(y.size),
        "n_pos": int(y.sum()),
        "prevalence": prevalence(y),
        "alpha": alpha,
        "auroc": dl["auroc"],
        "auroc_delong": {
            "se": dl["se"],
            "ci_low": dl["ci_low"],
            "ci_high": dl["ci_high"],
            "transform": "logit",
        },
        "auroc_bootstrap": _bootstrap_summary(y, s, auroc, n_boot, seed, alpha),
        "auprc": auprc(y, s),
        "auprc_bootstrap": _bootstrap_summary(y, s, auprc, n_boot, seed, alpha),
        "brier": brier(y, s),
        "brier_bootstrap": _bootstrap_summary(y, s, brier, n_boot, seed, alpha),
        "ece": expected_calibration_error(y, s, n_bins=n_bins, strategy="quantile"),
        "ece_n_bins": int(n_bins),
        "ece_strategy": "quantile",
        "calibration": calibration_intercept_slope(y, s),
        "calibration_bins": calibration_bins(y, s, n_bins=n_bins, strategy="quantile"),
    }


def _platt_on_tuning(
    y: NDArray[np.bool_],
    s: NDArray[np.float64],
    ty: NDArray[np.bool_],
    ts: NDArray[np.float64],
    n_bins: int,
) -> dict[str, Any]:
    """Platt scaling fitted on tuning; held-out Brier, ECE and calibration after it."""
    a, b = fit_platt(ty, ts)
    cal = apply_platt((a, b), s)
    return {
        "fitted_on": "tuning",
        "a": a,
        "b": b,
        "brier": brier(y, cal),
        "ece": expected_calibration_error(y, cal, n_bins=n_bins, strategy="quantile"),
        "calibration": calibration_intercept_slope(y, cal),
    }


def _operating_points_from_tuning(
    y: NDArray[np.bool_],
    s: NDArray[np.float64],
    ty: NDArray[np.bool_],
    ts: NDArray[np.float64],
) -> dict[str, Any]:
    """Held-out confusion matrices at thresholds chosen on tuning (Youden; sensitivity 0.8)."""
    t_youden = youden_threshold(ty, ts)
    t_sens = threshold_for_sensitivity(ty, ts, target=0.8)
    return {
        "youden": {
            "selected_on": "tuning",
            "rule": "max sensitivity + specificity - 1",
            **operating_point(y, s, t_youden),
        },
        "sensitivity_0.8": {
            "selected_on": "tuning",
            "rule": "highest threshold with tuning sensitivity >= 0.8",
            **operating_point(y, s, t_sens),
        },
    }


def summarize(
    y_true: ArrayLike,
    y_score: ArrayLike,
    *,
    n_boot: int = 1000,
    seed: int | None = 0,
    alpha: float = 0.05,
    n_bins: int = 10,
    tuning_true: ArrayLike | None = None,
    tuning_score: ArrayLike | None = None,
    groups: Mapping[str, ArrayLike] | None = None,
) -> dict[str, Any]:
    """All metrics for one configuration's held-out predictions (for metrics.json).

    Always present: ``n``, ``n_pos``, ``prevalence``, ``auroc`` with ``auroc_delong``
    (SE, logit-scale CI) and ``auroc_bootstrap`` (stratified percentile CI), ``auprc``
    with ``auprc_bootstrap``, ``brier`` with ``brier_bootstrap``, ``ece`` (quantile bins),
    ``calibration`` (intercept/slope) and ``calibration_bins``.

    With ``tuning_true``/``tuning_score`` (a separate tuning split):
    ``platt`` holds the parameters fitted on tuning and the held-out Brier, ECE and
    calibration after applying them; ``operating_points`` holds the held-out confusion
    matrices at the Youden threshold and at the threshold reaching sensitivity 0.8,
    both *chosen on the tuning split* (choosing them on the held-out data would be
    optimistic).  Without tuning data these keys are None.

    ``groups`` maps a name (e.g. ``"sex"``) to per-subject labels; ``subgroups`` then
    maps each name to :func:`subgroup_auroc` rows (None when not given).

    The result contains only Python scalars, lists, dicts and None, but may contain
    NaN; use :func:`to_jsonable` before strict JSON serialisation.
    """
    alpha = _check_alpha(alpha)
    y, s = _check_pair(y_true, y_score, probability=True)
    if (tuning_true is None) != (tuning_score is None):
        raise ValueError("tuning_true and tuning_score must be given together")
    out = _held_out_metrics(y, s, n_boot, seed, alpha, n_bins)
    out |= {"platt": None, "operating_points": None, "subgroups": None}
    if tuning_true is not None:
        ty, ts = _check_pair(tuning_true, tuning_score, probability=True)
        out["platt"] = _platt_on_tuning(y, s, ty, ts, n_bins)
        out["operating_points"] = _operating_points_from_tuning(y, s, ty, ts)
    if groups is not None:
        out["subgroups"] = {
            str(name): subgroup_auroc(y, s, labels, alpha=alpha) for name, labels in groups.items()
        }
    return out


def to_jsonable(obj: Any) -> Any:
    """Recursively convert to strict-JSON-safe Python objects.

    NaN and +/-inf become None; NumPy scalars/arrays become Python scalars/lists;
    tuples become lists and mapping keys become strings.  Use with
    ``json.dumps(..., allow_nan=False)``.
    """
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return [to_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
