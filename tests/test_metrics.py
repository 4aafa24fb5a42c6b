"""Tests for rationale_bench.evaluate.metrics: sklearn, slow references and textbook values."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from scipy import optimize, special
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    roc_auc_score,
    roc_curve,
)

from rationale_bench.evaluate import metrics as M

# --------------------------------------------------------------------------------------
# Fixtures and slow reference implementations
# --------------------------------------------------------------------------------------


def make_data(n: int, seed: int, prev: float = 0.2, signal: float = 1.0, ties: bool = False):
    """Binary outcome and a probability-like score with some discrimination."""
    rng = np.random.default_rng(seed)
    y = rng.random(n) < prev
    logit = -1.5 + signal * y + rng.normal(size=n)
    s = special.expit(logit)
    if ties:
        s = np.round(s, 1)  # heavy ties, as with coarse LLM-verbalised probabilities
    return y.astype(int), s


def calibrated_data(n: int, seed: int):
    rng = np.random.default_rng(seed)
    p = special.expit(rng.normal(-1.0, 1.2, size=n))
    y = (rng.random(n) < p).astype(int)
    return y, p


def psi(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Heaviside kernel of the Mann-Whitney statistic: 1 if x > y, 1/2 if tied."""
    return (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])


def slow_delong_cov(y: np.ndarray, scores: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """DeLong et al. (1988) covariance from the O(m n) structural components."""
    y = np.asarray(y, bool)
    m, n = y.sum(), (~y).sum()
    v10, v01, aucs = [], [], []
    for s in scores:
        k = psi(s[y], s[~y])
        aucs.append(k.mean())
        v10.append(k.mean(axis=1))  # one per case
        v01.append(k.mean(axis=0))  # one per non-case
    v10, v01 = np.array(v10), np.array(v01)
    a = np.array(aucs)
    s10 = (v10 - a[:, None]) @ (v10 - a[:, None]).T / (m - 1)
    s01 = (v01 - a[:, None]) @ (v01 - a[:, None]).T / (n - 1)
    return a, s10 / m + s01 / n


def ref_logistic(y: np.ndarray, x: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """Reference unpenalised logistic MLE by generic quasi-Newton optimisation."""

    def nll(b):
        eta = x @ b + offset
        return np.sum(np.logaddexp(0.0, eta) - y * eta)

    def grad(b):
        return x.T @ (special.expit(x @ b + offset) - y)

    res = optimize.minimize(nll, np.zeros(x.shape[1]), jac=grad, method="BFGS", tol=1e-10)
    return res.x


# --------------------------------------------------------------------------------------
# AUROC and DeLong
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_matches_sklearn(seed, ties):
    y, s = make_data(400, seed, ties=ties)
    assert M.auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert M.auroc_delong(y, s)["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_auroc_accepts_bool_lists_and_real_scores():
    y = [False, False, True, True]
    assert M.auroc(y, [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    # Ranking metrics accept any finite real score (e.g. raw logits).
    assert M.auroc(y, [-3.0, 2.0, 1.0, 5.0]) == pytest.approx(0.75)


def test_auroc_single_class_is_nan():
    assert math.isnan(M.auroc([1, 1, 1], [0.1, 0.5, 0.9]))
    assert math.isnan(M.auroc([0, 0], [0.1, 0.5]))
    r = M.auroc_delong([0, 0, 0], [0.1, 0.2, 0.3])
    assert all(math.isnan(v) for v in r.values())


def test_delong_hand_example():
    # sklearn's documentation example: AUROC 0.75.  Placement values are
    # V10 = (0.5, 1) for the cases and V01 = (1, 0.5) for the non-cases, so
    # Var = var(V10)/2 + var(V01)/2 = 0.125/2 + 0.125/2 = 0.125.
    r = M.auroc_delong([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert r["auroc"] == pytest.approx(0.75)
    assert r["se"] == pytest.approx(math.sqrt(0.125))
    assert 0.0 < r["ci_low"] < 0.75 < r["ci_high"] < 1.0


def test_hanley_mcneil_ct_example():
    # Hanley & McNeil (1982), Table 1: 5-point ratings of 109 CT images
    # (58 normal, 51 abnormal).  Published AUROC 0.893, SE 0.032.
    normal = [33, 6, 6, 11, 2]
    abnormal = [3, 2, 2, 11, 33]
    rating = np.arange(1, 6)
    s = np.r_[np.repeat(rating, normal), np.repeat(rating, abnormal)] / 5.0
    y = np.r_[np.zeros(58, int), np.ones(51, int)]
    r = M.auroc_delong(y, s)
    assert r["auroc"] == pytest.approx(0.893, abs=5e-4)
    # DeLong's nonparametric SE is close to Hanley-McNeil's exponential approximation.
    assert r["se"] == pytest.approx(0.032, abs=0.003)
    _, cov = slow_delong_cov(y, [s])
    assert r["se"] == pytest.approx(math.sqrt(cov[0, 0]), rel=1e-10)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [3, 4])
def test_delong_se_matches_slow_reference(seed, ties):
    y, s = make_data(150, seed, ties=ties)
    a, cov = slow_delong_cov(y, [s])
    r = M.auroc_delong(y, s)
    assert r["auroc"] == pytest.approx(a[0], abs=1e-12)
    assert r["se"] == pytest.approx(math.sqrt(cov[0, 0]), rel=1e-10)


def test_delong_ci_logit_and_wald():
    y, s = make_data(300, 5, signal=2.5)
    logit = M.auroc_delong(y, s)
    wald = M.auroc_delong(y, s, transform="none")
    a, se = logit["auroc"], logit["se"]
    # Logit CI: symmetric on the logit scale, within (0, 1), shifted towards 0.5.
    lo, hi = special.logit([logit["ci_low"], logit["ci_high"]])
    assert special.logit(a) - lo == pytest.approx(hi - special.logit(a))
    assert 0.0 < logit["ci_low"] < a < logit["ci_high"] < 1.0
    assert logit["ci_high"] - a < a - logit["ci_low"]
    assert wald["ci_low"] == pytest.approx(a - 1.959963984540054 * se)
    assert wald["ci_high"] == pytest.approx(min(1.0, a + 1.959963984540054 * se))
    # Wider interval at smaller alpha.
    r99 = M.auroc_delong(y, s, alpha=0.01)
    assert r99["ci_low"] < logit["ci_low"] and r99["ci_high"] > logit["ci_high"]


def test_delong_perfect_separation():
    r = M.auroc_delong([0, 0, 0, 1, 1], [0.1, 0.2, 0.3, 0.8, 0.9])
    assert r == {"auroc": 1.0, "se": 0.0, "ci_low": 1.0, "ci_high": 1.0}


def test_delong_single_case_has_undefined_se():
    r = M.auroc_delong([0, 0, 0, 1], [0.1, 0.5, 0.3, 0.4])
    assert r["auroc"] == pytest.approx(2 / 3)
    assert math.isnan(r["se"]) and math.isnan(r["ci_low"])


def test_delong_paired_against_itself():
    y, s = make_data(300, 6)
    r = M.delong_paired_test(y, s, s)
    assert r["diff"] == 0.0 and r["se"] == 0.0
    assert r["z"] == 0.0 and r["p_value"] == 1.0
    assert r["auroc_a"] == r["auroc_b"] == pytest.approx(roc_auc_score(y, s))


@pytest.mark.parametrize("ties", [False, True])
def test_delong_paired_matches_slow_reference(ties):
    y, a = make_data(200, 7, ties=ties)
    rng = np.random.default_rng(8)
    b = special.expit(special.logit(np.clip(a, 0.01, 0.99)) + rng.normal(0, 1.0, a.size))
    if ties:
        b = np.round(b, 1)
    aucs, cov = slow_delong_cov(y, [a, b])
    r = M.delong_paired_test(y, a, b)
    se = math.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    assert r["diff"] == pytest.approx(aucs[0] - aucs[1], abs=1e-12)
    assert r["se"] == pytest.approx(se, rel=1e-10)
    assert r["z"] == pytest.approx(r["diff"] / se)
    assert r["p_value"] == pytest.approx(2 * (1 - special.ndtr(abs(r["z"]))))
    assert r["ci_low"] < r["diff"] < r["ci_high"]
    # Antisymmetric in the order of the two scores.
    rev = M.delong_paired_test(y, b, a)
    assert rev["diff"] == pytest.approx(-r["diff"]) and rev["p_value"] == pytest.approx(
        r["p_value"]
    )


def test_delong_paired_detects_real_difference():
    y, good = make_data(2000, 9, signal=2.0)
    noise = np.random.default_rng(10).random(y.size)
    r = M.delong_paired_test(y, good, noise)
    assert r["diff"] > 0.2 and r["p_value"] < 1e-10


# --------------------------------------------------------------------------------------
# AUPRC, Brier, prevalence
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auprc_matches_sklearn(seed, ties):
    y, s = make_data(500, seed, prev=0.1, ties=ties)
    assert M.auprc(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_auprc_edge_cases():
    assert math.isnan(M.auprc([0, 0, 0], [0.1, 0.2, 0.3]))
    assert M.auprc([1, 1], [0.1, 0.2]) == pytest.approx(1.0)
    # All scores tied: one threshold, AP = prevalence.
    assert M.auprc([0, 1, 0, 0], [0.5] * 4) == pytest.approx(0.25)


def test_brier_and_prevalence():
    y, s = make_data(500, 11)
    assert M.brier(y, s) == pytest.approx(brier_score_loss(y, s), abs=1e-12)
    assert M.prevalence(y) == pytest.approx(np.mean(y))
    assert M.brier([0, 1], [0.0, 1.0]) == 0.0
    assert M.brier([0, 1], [1.0, 0.0]) == 1.0


def test_brier_agrees_with_sklearn_on_skewed_scores():
    """Many sizes, prevalences and scores crowded near 0 (as dementia risks are): sklearn's
    brier_score_loss agrees to float tolerance, though not always to the last bit."""
    rng = np.random.default_rng(1)
    for _ in range(300):
        n = int(rng.integers(1, 300))
        y = rng.random(n) < rng.random()
        s = rng.random(n) ** rng.choice([1, 3, 10, 30])
        assert M.brier(y, s) == pytest.approx(brier_score_loss(y, s), rel=1e-14, abs=1e-16)


def test_bootstrap_contains_estimate_and_is_deterministic():
    y, s = make_data(500, 12)
    r1 = M.bootstrap_ci(y, s, n_boot=300, seed=3)
    r2 = M.bootstrap_ci(y, s, n_boot=300, seed=3)
    r3 = M.bootstrap_ci(y, s, n_boot=300, seed=4)
    assert r1 == r2
    assert r1 != r3
    assert r1["estimate"] == pytest.approx(roc_auc_score(y, s))
    assert r1["ci_low"] < r1["estimate"] < r1["ci_high"]
    assert r1["n_boot_valid"] == 300


def test_bootstrap_narrows_with_more_data():
    widths = []
    for n in (200, 3200):
        y, s = make_data(n, 13)
        r = M.bootstrap_ci(y, s, n_boot=400, seed=0)
        widths.append(r["ci_high"] - r["ci_low"])
    # Width scales like 1/sqrt(n): expect about a 4-fold reduction.
    assert widths[1] < widths[0] / 2.5


def test_bootstrap_agrees_with_delong():
    y, s = make_data(3000, 14)
    boot = M.bootstrap_ci(y, s, n_boot=1000, seed=0)
    dl = M.auroc_delong(y, s)
    assert boot["ci_low"] == pytest.approx(dl["ci_low"], abs=0.01)
    assert boot["ci_high"] == pytest.approx(dl["ci_high"], abs=0.01)


@pytest.mark.parametrize("stratified", [True, False])
@pytest.mark.parametrize("metric", [M.auroc, M.auprc, M.brier], ids=["auroc", "auprc", "brier"])
def test_vectorised_bootstrap_equals_loop(metric, stratified):
    # A lambda wrapper is not recognised as vectorisable, so it takes the per-resample
    # loop on the same resample indices: both paths must agree to rounding error.
    y, s = make_data(120, 15, ties=True)
    fast = M.bootstrap_ci(y, s, metric=metric, n_boot=60, seed=5, stratified=stratified)
    slow = M.bootstrap_ci(
        y, s, metric=lambda a, b: metric(a, b), n_boot=60, seed=5, stratified=stratified
    )
    assert fast["n_boot_valid"] == slow["n_boot_valid"]
    for key in ("estimate", "ci_low", "ci_high"):
        assert fast[key] == pytest.approx(slow[key], abs=1e-12)


def test_bootstrap_stratified_keeps_both_classes():
    # 3 cases among 40: unstratified resamples sometimes lack cases, stratified never.
    y = np.zeros(40, int)
    y[:3] = 1
    s = np.linspace(0.05, 0.95, 40)
    strat = M.bootstrap_ci(y, s, n_boot=500, seed=0, stratified=True)
    plain = M.bootstrap_ci(y, s, n_boot=500, seed=0, stratified=False)
    assert strat["n_boot_valid"] == 500
    assert plain["n_boot_valid"] < 500


def test_bootstrap_single_class_gives_nan():
    r = M.bootstrap_ci([1, 1, 1], [0.1, 0.2, 0.3], n_boot=20)
    assert math.isnan(r["estimate"]) and math.isnan(r["ci_low"]) and r["n_boot_valid"] == 0


def test_bootstrap_generic_metric_and_chunking(monkeypatch):
    y, s = make_data(100, 16)
    one = M.bootstrap_ci(y, s, n_boot=50, seed=1)
    # Tiny chunks must give identical resamples (the RNG stream is consumed in order).
    monkeypatch.setattr(M, "_CHUNK_ELEMENTS", 250)
    many = M.bootstrap_ci(y, s, n_boot=50, seed=1)
    assert one == many
    # Any callable metric works through the per-resample loop.
    r = M.bootstrap_ci(y, s, metric=lambda t, p: float(np.mean(p[t])), n_boot=50)
    assert r["ci_low"] <= r["estimate"] <= r["ci_high"] and r["n_boot_valid"] == 50


def test_bootstrap_auroc_is_vectorised(monkeypatch):
    """2,000 AUROC resamples of 5,000 subjects are evaluated a chunk at a time (what keeps the
    bootstrap fast), never one scalar metric call per resample."""
    y, s = make_data(5000, 17)
    batches = []
    real_call = M._WeightedAuroc.__call__

    def counted(self, counts):
        batches.append(counts.shape[0])
        return real_call(self, counts)

    monkeypatch.setattr(M._WeightedAuroc, "__call__", counted)
    r = M.bootstrap_ci(y, s, n_boot=2000, seed=0)
    assert r["n_boot_valid"] == 2000
    rows = M._CHUNK_ELEMENTS // 5000
    assert batches == [rows] * (2000 // rows) + ([2000 % rows] if 2000 % rows else [])
    assert len(batches) < 10


def test_paired_bootstrap_self_and_difference():
    y, a = make_data(600, 18, signal=1.5)
    same = M.paired_bootstrap_diff(y, a, a, n_boot=200)
    assert same["diff"] == 0.0 and same["p_value"] == 1.0
    assert same["ci_low"] == same["ci_high"] == 0.0

    b = np.random.default_rng(19).random(y.size)
    r = M.paired_bootstrap_diff(y, a, b, n_boot=500, seed=2)
    assert r["diff"] == pytest.approx(roc_auc_score(y, a) - roc_auc_score(y, b))
    assert r["ci_low"] < r["diff"] < r["ci_high"]
    assert r["ci_low"] > 0 and r["p_value"] == 0.0
    dl = M.delong_paired_test(y, a, b)
    assert r["ci_low"] == pytest.approx(dl["ci_low"], abs=0.03)
    assert r["ci_high"] == pytest.approx(dl["ci_high"], abs=0.03)
    assert M.paired_bootstrap_diff(y, a, b, n_boot=500, seed=2) == r


def test_paired_bootstrap_p_value_definition():
    # Two nearly equivalent scores: p must equal 2 * fraction on the other side of 0.
    y, a = make_data(300, 20)
    b = np.clip(a + np.random.default_rng(21).normal(0, 0.05, a.size), 0, 1)
    r = M.paired_bootstrap_diff(y, a, b, metric=lambda t, p: M.auroc(t, p), n_boot=400, seed=0)
    # Recompute the resampled differences with the documented resampling scheme.
    rng = np.random.default_rng(0)
    (idx,) = list(M._resample_chunks(np.asarray(y, bool), 400, rng, True))
    d = np.array([M.auroc(y[i], a[i]) - M.auroc(y[i], b[i]) for i in idx])
    other = np.mean(d <= 0) if r["diff"] > 0 else np.mean(d >= 0)
    assert r["p_value"] == pytest.approx(min(1.0, 2 * other))
    assert 0.0 < r["p_value"] <= 1.0


# --------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["quantile", "uniform"])
def test_calibration_bins_match_sklearn(strategy):
    y, p = calibrated_data(3000, 22)
    rows = M.calibration_bins(y, p, n_bins=10, strategy=strategy)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy=strategy)
    np.testing.assert_allclose([r["observed_rate"] for r in rows], prob_true, atol=1e-12)
    np.testing.assert_allclose([r["mean_predicted"] for r in rows], prob_pred, atol=1e-12)
    assert sum(r["n"] for r in rows) == 3000
    for r in rows:
        assert r["lower"] <= r["mean_predicted"] <= r["upper"]


def test_ece_hand_example():
    # Uniform bins of width 0.5: bin 0 = {0.2, 0.4} (observed 1/2), bin 1 = {0.6, 0.8}
    # (observed 1/2).  ECE = 0.5 * |0.3 - 0.5| + 0.5 * |0.7 - 0.5| = 0.2.
    ece = M.expected_calibration_error([0, 1, 0, 1], [0.2, 0.4, 0.6, 0.8], 2, "uniform")
    assert ece == pytest.approx(0.2)


def test_perfect_calibration():
    y, p = calibrated_data(20000, 23)
    cal = M.calibration_intercept_slope(y, p)
    assert cal["converged"]
    assert cal["slope"] == pytest.approx(1.0, abs=4 * cal["slope_se"])
    assert cal["intercept"] == pytest.approx(0.0, abs=4 * cal["intercept_se"])
    assert M.expected_calibration_error(y, p) < 0.02
    assert M.expected_calibration_error(y, p, strategy="uniform") < 0.02


def test_miscalibration_detected():
    y, p = calibrated_data(20000, 23)
    sq = M.calibration_intercept_slope(y, p**2)  # risks underestimated
    assert sq["intercept"] > 0.5
    assert M.expected_calibration_error(y, p**2) > 0.08
    # Over-confident model (logits doubled): slope about 0.5.
    over = special.expit(2 * special.logit(p))
    assert M.calibration_intercept_slope(y, over)["slope"] == pytest.approx(0.5, abs=0.05)
    # Over-estimated risk on average: negative calibration-in-the-large.
    high = special.expit(special.logit(p) + 1.0)
    assert M.calibration_intercept_slope(y, high)["intercept"] == pytest.approx(-1.0, abs=0.08)


def test_calibration_matches_reference_optimiser():
    y, p = make_data(800, 24, ties=True)
    p = np.clip(p, 0.0, 1.0)
    lp = special.logit(np.clip(p, 1e-6, 1 - 1e-6))
    ones = np.ones((y.size, 1))
    citl = ref_logistic(y, ones, lp)
    slope = ref_logistic(y, np.column_stack([ones, lp]), np.zeros(y.size))
    cal = M.calibration_intercept_slope(y, p)
    assert cal["intercept"] == pytest.approx(citl[0], abs=1e-5)
    assert cal["slope"] == pytest.approx(slope[1], abs=1e-5)
    assert cal["slope_model_intercept"] == pytest.approx(slope[0], abs=1e-5)


def test_calibration_handles_exact_zero_and_one():
    y = [0, 0, 1, 1, 0, 1]
    cal = M.calibration_intercept_slope(y, [0.0, 0.3, 1.0, 0.6, 0.4, 0.2])
    assert all(math.isfinite(cal[k]) for k in ("intercept", "slope"))


def test_calibration_degenerate_cases():
    single = M.calibration_intercept_slope([1, 1, 1], [0.2, 0.5, 0.7])
    assert math.isnan(single["slope"]) and not single["converged"]
    with pytest.warns(RuntimeWarning, match="did not converge"):
        sep = M.calibration_intercept_slope([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert math.isnan(sep["slope"]) and not sep["converged"]


def test_platt_recovers_known_parameters():
    rng = np.random.default_rng(25)
    raw = special.expit(rng.normal(-1.0, 1.5, 40000))
    a_true, b_true = -0.7, 0.6
    y = rng.random(raw.size) < special.expit(a_true + b_true * special.logit(raw))
    a, b = M.fit_platt(y, raw)
    assert a == pytest.approx(a_true, abs=0.05)
    assert b == pytest.approx(b_true, abs=0.04)
    cal = M.apply_platt((a, b), raw)
    assert cal.shape == raw.shape and np.all((cal > 0) & (cal < 1))
    after = M.calibration_intercept_slope(y, cal)
    # Refitting on the fitting data is calibrated by construction.
    assert after["slope"] == pytest.approx(1.0, abs=1e-6)
    assert after["slope_model_intercept"] == pytest.approx(0.0, abs=1e-6)
    # Monotone (b > 0): discrimination unchanged.
    assert M.auroc(y, cal) == pytest.approx(M.auroc(y, raw))


def test_platt_errors():
    with pytest.raises(ValueError, match="both classes"):
        M.fit_platt([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        M.apply_platt((0.0, 1.0), [0.5, 1.5])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        M.fit_platt([0, 1, 0, 1, 1], [0.2, 0.3, 0.4, 0.5, 0.9])


# --------------------------------------------------------------------------------------
# Thresholds and operating points
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_youden_matches_sklearn_roc_curve(seed):
    y, s = make_data(500, seed, signal=1.5)
    fpr, tpr, thr = roc_curve(y, s)
    expected = thr[np.argmax(tpr - fpr)]
    assert M.youden_threshold(y, s) == pytest.approx(expected)


def test_youden_with_ties_is_optimal():
    y, s = make_data(500, 26, ties=True)
    t = M.youden_threshold(y, s)
    op = M.operating_point(y, s, t)
    fpr, tpr, _ = roc_curve(y, s)
    assert op["sensitivity"] + op["specificity"] - 1 == pytest.approx(np.max(tpr - fpr))
    assert t in set(s.tolist())


@pytest.mark.parametrize("target", [0.5, 0.8, 0.95])
def test_threshold_for_sensitivity(target):
    y, s = make_data(400, 27, ties=True)
    t = M.threshold_for_sensitivity(y, s, target)
    assert M.operating_point(y, s, t)["sensitivity"] >= target
    higher = np.unique(s)[np.unique(s) > t]
    if higher.size:  # the next higher observed score no longer reaches the target
        assert M.operating_point(y, s, higher.min())["sensitivity"] < target


def test_threshold_for_sensitivity_exact_fraction():
    # 4 of 5 cases above 0.55: sensitivity exactly 0.8 must count as reaching 0.8.
    y = [1, 1, 1, 1, 1, 0, 0]
    s = [0.9, 0.8, 0.7, 0.6, 0.1, 0.5, 0.2]
    assert M.threshold_for_sensitivity(y, s, 0.8) == 0.6
    assert M.threshold_for_sensitivity(y, s, 1.0) == 0.1


def test_operating_point_hand_example():
    y = [1, 1, 1, 0, 0, 0, 0, 1]
    s = [0.9, 0.6, 0.3, 0.7, 0.5, 0.2, 0.1, 0.5]
    op = M.operating_point(y, s, 0.5)  # >= threshold: the 0.5 scores are positive
    assert (op["tp"], op["fp"], op["tn"], op["fn"]) == (3, 2, 2, 1)
    assert op["sensitivity"] == pytest.approx(3 / 4)
    assert op["specificity"] == pytest.approx(2 / 4)
    assert op["ppv"] == pytest.approx(3 / 5)
    assert op["npv"] == pytest.approx(2 / 3)
    assert op["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    assert op["flagged_fraction"] == pytest.approx(5 / 8)


def test_operating_point_undefined_ratios_are_nan():
    op = M.operating_point([0, 0, 1], [0.1, 0.2, 0.3], threshold=0.99)
    assert op["tp"] == op["fp"] == 0
    assert math.isnan(op["ppv"]) and op["sensitivity"] == 0.0
    only_neg = M.operating_point([0, 0], [0.1, 0.9], threshold=0.5)
    assert math.isnan(only_neg["sensitivity"]) and math.isnan(only_neg["f1"]) is False
    assert only_neg["f1"] == 0.0
    none = M.operating_point([0, 0], [0.1, 0.2], threshold=0.5)
    assert math.isnan(none["f1"]) and math.isnan(none["ppv"])


# --------------------------------------------------------------------------------------
# Subgroups, summarize, JSON
# --------------------------------------------------------------------------------------


def test_subgroup_auroc():
    y, s = make_data(300, 28)
    groups = np.where(np.arange(300) % 2 == 0, "F", "M").astype(object)
    groups[:5] = "tiny"
    y[:5] = 0  # the "tiny" group has no cases
    rows = M.subgroup_auroc(y, s, groups)
    by = {r["group"]: r for r in rows}
    assert [r["group"] for r in rows] == ["F", "M", "tiny"]
    assert by["tiny"]["note"] == "single class" and math.isnan(by["tiny"]["auroc"])
    assert by["tiny"]["n"] == 5 and by["tiny"]["n_pos"] == 0
    mask = groups == "F"
    assert by["F"]["auroc"] == pytest.approx(roc_auc_score(y[mask], s[mask]))
    assert by["F"]["note"] is None and by["F"]["ci_low"] < by["F"]["auroc"]
    assert sum(r["n"] for r in rows) == 300


def test_subgroup_numeric_and_missing_labels():
    y = [0, 1, 0, 1, 0, 1]
    rows = M.subgroup_auroc(y, [0.1, 0.9, 0.2, 0.8, 0.3, 0.7], [1, 1, 2, 2, float("nan"), None])
    assert [r["group"] for r in rows] == [1, 2, None]
    assert all(isinstance(r["group"], (int, type(None))) for r in rows)
    with pytest.raises(ValueError, match="length mismatch"):
        M.subgroup_auroc(y, [0.5] * 6, [1, 2])


def test_summarize_json_roundtrip():
    y, s = make_data(600, 29)
    ty, ts = make_data(400, 30)
    sex = np.where(np.arange(600) % 3 == 0, "F", "M")
    site = np.array(["a"] * 595 + ["b"] * 5)
    y[-5:] = 0  # site "b" single class -> NaN AUROC
    out = M.summarize(
        y, s, n_boot=100, seed=1, tuning_true=ty, tuning_score=ts, groups={"sex": sex, "site": site}
    )
    assert out["n"] == 600 and out["n_pos"] == int(np.sum(y))
    assert out["auroc"] == pytest.approx(roc_auc_score(y, s))
    assert out["auprc"] == pytest.approx(average_precision_score(y, s))
    assert out["auroc_delong"]["ci_low"] < out["auroc"] < out["auroc_delong"]["ci_high"]
    assert out["auroc_bootstrap"]["ci_low"] < out["auroc"] < out["auroc_bootstrap"]["ci_high"]
    ops = out["operating_points"]
    assert ops["youden"]["threshold"] == pytest.approx(M.youden_threshold(ty, ts))
    assert ops["sensitivity_0.8"]["threshold"] == pytest.approx(
        M.threshold_for_sensitivity(ty, ts, 0.8)
    )
    a, b = M.fit_platt(ty, ts)
    assert out["platt"]["a"] == a and out["platt"]["brier"] == pytest.approx(
        M.brier(y, M.apply_platt((a, b), s))
    )
    assert math.isnan(out["subgroups"]["site"][1]["auroc"])

    # Default json allows NaN; strict JSON needs to_jsonable.
    json.dumps(out)
    with pytest.raises(ValueError):
        json.dumps(out, allow_nan=False)
    text = json.dumps(M.to_jsonable(out), allow_nan=False)
    back = json.loads(text)
    assert back["subgroups"]["site"][1]["auroc"] is None
    assert back["subgroups"]["site"][1]["note"] == "single class"
    assert back["auroc"] == pytest.approx(out["auroc"])
    assert back["calibration"]["converged"] is True


def test_summarize_without_tuning():
    y, s = make_data(300, 31)
    out = M.summarize(y, s, n_boot=50)
    assert out["platt"] is None and out["operating_points"] is None and out["subgroups"] is None
    json.dumps(M.to_jsonable(out), allow_nan=False)
    with pytest.raises(ValueError, match="together"):
        M.summarize(y, s, n_boot=50, tuning_true=y)


def test_to_jsonable():
    obj = {
        1: np.float32(0.5),
        "a": [np.nan, np.inf, -np.inf, np.int64(3), np.bool_(True)],
        "t": (np.array([1.0, np.nan]), None, "x"),
    }
    assert M.to_jsonable(obj) == {
        "1": 0.5,
        "a": [None, None, None, 3, True],
        "t": [[1.0, None], None, "x"],
    }


# --------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("func", "y", "s", "match"),
    [
        (M.auroc, [0, 1, 1], [0.1, 0.2], "length mismatch"),
        (M.auroc, [0, 1], [0.1, float("nan")], "NaN"),
        (M.auroc, [0, 1], [0.1, float("inf")], "infinite"),
        (M.auroc, [], [], "empty"),
        (M.auroc, [0, 2], [0.1, 0.2], "only 0/1"),
        (M.auroc, [0, float("nan")], [0.1, 0.2], "y_true contains NaN"),
        (M.auroc, ["a", "b"], [0.1, 0.2], "boolean or 0/1"),
        (M.auroc, [[0, 1]], [[0.1, 0.2]], "1-dimensional"),
        (M.auroc, [0, 1], ["x", "y"], "numeric"),
        (M.brier, [0, 1], [0.1, 1.2], r"probabilities in \[0, 1\]"),
        (M.expected_calibration_error, [0, 1], [-0.1, 0.5], r"probabilities in \[0, 1\]"),
        (M.calibration_intercept_slope, [0, 1], [0.1, 1.5], r"probabilities in \[0, 1\]"),
        (M.fit_platt, [0, 1], [0.1, 2.0], r"probabilities in \[0, 1\]"),
        (M.auprc, [0, 1], [0.1], "length mismatch"),
        (M.youden_threshold, [0, 1], [np.nan, 0.1], "NaN"),
    ],
)
def test_validation_errors(func, y, s, match):
    with pytest.raises(ValueError, match=match):
        func(y, s)


def test_validation_of_parameters():
    y, s = make_data(50, 32)
    with pytest.raises(ValueError, match="alpha"):
        M.auroc_delong(y, s, alpha=1.5)
    with pytest.raises(ValueError, match="n_boot"):
        M.bootstrap_ci(y, s, n_boot=0)
    with pytest.raises(ValueError, match="strategy"):
        M.calibration_bins(y, s, strategy="equal")
    with pytest.raises(ValueError, match="n_bins"):
        M.expected_calibration_error(y, s, n_bins=0)
    with pytest.raises(ValueError, match="target"):
        M.threshold_for_sensitivity(y, s, target=0.0)
    with pytest.raises(ValueError, match="score_b"):
        M.delong_paired_test(y, s, s[:-1])
    with pytest.raises(ValueError, match="threshold"):
        M.operating_point(y, s, float("nan"))
