"""Seeded synthetic longitudinal health records in MEDS event form.

The generator simulates, per subject: sex, birth date, three latent health factors
(cardiometabolic, mental health, frailty) that induce correlated comorbidity, condition onsets
with age- and sex-dependent timing, an observation period (first visit, loss to follow-up,
death as a competing risk), visits whose rate rises with comorbidity, ICD-10 diagnosis codes
recorded at visits (with detection delay, under-coding and recurrence), drugs that follow
diagnoses, labs/vitals whose values follow the latent state, about 1,150 distinct real WHO
ICD-10 3-character codes (risk factors, common chronic and acute conditions and a long tail
over the chapters), and ADRD onset from an age-doubling hazard multiplied by risk-factor hazard
ratios and unobserved frailty (~2 %/year at 75-84). Prodromal codes (memory complaint, MCI,
falls) cluster 0.5-4 years before ADRD onset without being deterministic.

Everything is vectorised numpy per block of STREAM_BLOCK subjects; block k's RNG is derived
from ``(seed, k)`` only, so the events do not depend on ``chunk_size`` and ``write_events``
streams a million subjects in bounded memory. ``simulate_population`` returns the simulated
truth (onsets, frailty, death) behind the events, for validation. The clinical constants live
in :mod:`rationale_bench.data.synthetic_tables` (sources: docs/references.md: the Lancet
Commission 2024); they were tuned so that a 5-year prediction task built on the data is
realistically hard (logistic-regression AUROC ~0.75) with 5-10 % cases. This module compiles
them into numpy arrays once at import and simulates, one named step per stage.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from rationale_bench.data.codes import describe_many
from rationale_bench.data.synthetic_tables import (
    ACUTE_CODES_PER_VISIT,
    ACUTE_DRUG_PROB,
    ACUTE_NOISE_CODES,
    ADRD_AGE_DOUBLING_YEARS,
    ADRD_BASE_HAZARD_AT_80,
    ADRD_CONDITION,
    ADRD_FEMALE_HR,
    ADRD_FRAILTY_SD,
    ADRD_HAZARD_RATIOS,
    DEATH_BASE_HAZARD_AT_65,
    DEATH_GOMPERTZ_SLOPE,
    ENTRY_AGE_MEAN,
    ENTRY_AGE_SD,
    LOST_TO_FOLLOW_UP_MEAN_YEARS,
    P_DRUG_REFILL,
    P_INPATIENT,
    P_LATE_ENTRY,
    P_LOST_TO_FOLLOW_UP,
    P_MALE,
    PRODROMAL_CONDITIONS,
    PRODROMAL_LINK,
    PRODROMAL_WINDOW_YEARS,
    RISK_CONDITIONS,
    VISIT_LOG_RR_PER_CONDITION,
    VISIT_RATE_MEAN,
    VISIT_RATE_SHAPE,
    VISIT_RR_ADRD,
    Condition,
    noise_conditions,
    tail_conditions,
)

__all__ = [
    "EVENT_SCHEMA",
    "STREAM_BLOCK",
    "VOCAB",
    "generate_events",
    "iter_event_chunks",
    "simulate_population",
    "write_events",
    "write_meds_dataset",
]

YEAR = 365.25  # days
_EPOCH = date(1900, 1, 1)  # internal day/minute origin (all births are after it)
_MIN_PER_DAY = 1440
_US_PER_MIN = 60_000_000
_EPOCH_TO_UNIX_MIN = (date(1970, 1, 1) - _EPOCH).days * _MIN_PER_DAY

EVENT_SCHEMA: dict[str, Any] = {
    "subject_id": pl.Int64,
    "time": pl.Datetime("us"),
    "code": pl.String,
    "numeric_value": pl.Float32,
}
_ARROW_SCHEMA = pa.schema(
    [
        ("subject_id", pa.int64()),
        ("time", pa.timestamp("us")),
        ("code", pa.large_string()),
        ("numeric_value", pa.float32()),
    ]
)

_GRID_AGES = np.arange(30.0, 111.0)  # yearly hazard grid for ADRD and death


# ----------------------------------------------------------------------------------------
# Tables compiled once at import.


# Column order of the condition table: risk factors, noise, long tail, prodromal, ADRD (last).
_STD = RISK_CONDITIONS + noise_conditions() + tail_conditions()
_ALL = _STD + PRODROMAL_CONDITIONS + (ADRD_CONDITION,)
_N_RISK = len(RISK_CONDITIONS)
_N_STD = len(_STD)
_COND_INDEX = {c.name: i for i, c in enumerate(_ALL)}

_LABS = ("LDL", "HBA1C", "SBP", "EGFR", "BMI")


def _build_vocab() -> list[str]:
    vocab = ["MEDS_BIRTH", "MEDS_DEATH", "SEX/F", "SEX/M", "VISIT/OUTPATIENT", "VISIT/INPATIENT"]
    vocab += [f"LAB/{lab}" for lab in _LABS]
    for c in _ALL:
        vocab += [f"ICD10/{code}" for code, _ in c.codes + c.followup]
        vocab += [f"ATC/{code}" for code, _ in c.drugs]
    for code, _, _, drug in ACUTE_NOISE_CODES:
        vocab.append(f"ICD10/{code}")
        if drug:
            vocab.append(f"ATC/{drug}")
    return list(dict.fromkeys(vocab))


VOCAB: list[str] = _build_vocab()
_CODE_ID = {c: i for i, c in enumerate(VOCAB)}
_ID_BIRTH, _ID_DEATH, _ID_F, _ID_M, _ID_OUT, _ID_INP = range(6)
_ID_LAB = {lab: _CODE_ID[f"LAB/{lab}"] for lab in _LABS}
_RANK_BIRTH, _RANK_SEX, _RANK_VISIT, _RANK_DX, _RANK_DRUG, _RANK_LAB, _RANK_DEATH = (
    0, 1, 2, 3, 4, 5, 9
)  # fmt: skip


def _choice_table(
    lists: Sequence[Sequence[tuple[str, float]]], vocab_prefix: str
) -> tuple[np.ndarray, np.ndarray]:
    """Padded (ids, cumulative weights) so a row can be sampled with one comparison."""
    width = max(1, max(len(x) for x in lists))
    ids = np.zeros((len(lists), width), dtype=np.int32)
    cum = np.full((len(lists), width), 2.0)  # padding never chosen (u < 1)
    for i, items in enumerate(lists):
        if not items:
            continue
        w = np.array([x[1] for x in items], dtype=float)
        ids[i, : len(items)] = [_CODE_ID[f"{vocab_prefix}{x[0]}"] for x in items]
        cum[i, : len(items)] = np.cumsum(w / w.sum())
        cum[i, len(items) - 1] = 1.0
    return ids, cum


def _arr(attr: str, conds: Sequence[Condition] = _ALL) -> np.ndarray:
    return np.array([getattr(c, attr) for c in conds], dtype=float)


_FIRST_IDS, _FIRST_CUM = _choice_table([c.codes for c in _ALL], "ICD10/")
_FOLLOW_IDS, _FOLLOW_CUM = _choice_table([c.followup or c.codes for c in _ALL], "ICD10/")
_HAS_FOLLOW = np.array([bool(c.followup) for c in _ALL])
_DRUG_IDS, _DRUG_CUM = _choice_table([c.drugs for c in _ALL], "ATC/")
_P_TREAT = _arr("p_treat")
_P_CODED = _arr("p_coded")
_DELAY = _arr("delay")
_P_RECUR = _arr("p_recur")
_ACUTE = np.array([c.acute for c in _ALL])

_STD_LOGIT = np.log(_arr("p_ever", _STD) / (1 - _arr("p_ever", _STD))).astype(np.float32)
_STD_LOAD = np.array([c.load for c in _STD], dtype=np.float32)  # (C, 3)
_STD_MALE_OR = _arr("male_or", _STD)
_STD_LOG_OR = np.log(np.clip(_STD_MALE_OR, 1e-9, 1e9)).astype(np.float32)
_STD_LOG_OR[~np.isfinite(_STD_MALE_OR) | (_STD_MALE_OR == 0)] = 0.0
_STD_ONSET = np.array([c.onset for c in _STD])
_PROD_LOGIT = np.log(
    _arr("p_ever", PRODROMAL_CONDITIONS) / (1 - _arr("p_ever", PRODROMAL_CONDITIONS))
)
_PROD_LOAD = np.array([c.load for c in PRODROMAL_CONDITIONS])
_PROD_ONSET = np.array([c.onset for c in PRODROMAL_CONDITIONS])
_PROD_LOG_OR = np.log(_arr("male_or", PRODROMAL_CONDITIONS))
_PROD_LINK = np.array([PRODROMAL_LINK[c.name] for c in PRODROMAL_CONDITIONS])

_ADRD_HR_COLS = np.array([_COND_INDEX[k] for k in ADRD_HAZARD_RATIOS])
_ADRD_LOG_HR = np.log(np.array(list(ADRD_HAZARD_RATIOS.values())))
_DEATH_LOG_HR = np.log(_arr("death_hr", RISK_CONDITIONS))

_ACUTE_IDS = np.array([_CODE_ID[f"ICD10/{c[0]}"] for c in ACUTE_NOISE_CODES], dtype=np.int32)
_ACUTE_DRUG_IDS = np.array(
    [_CODE_ID[f"ATC/{c[3]}"] if c[3] else -1 for c in ACUTE_NOISE_CODES], dtype=np.int32
)
_ACUTE_BANDS = np.arange(30.0, 111.0, 5.0)  # 5-year age bands for acute-code weights
_ACUTE_P = np.array(
    [
        [w * math.exp(slope * (age + 2.5 - 65.0) / 10.0) for _, w, slope, _ in ACUTE_NOISE_CODES]
        for age in _ACUTE_BANDS
    ]
)
# Sex-specific acute codes (prostatitis only in men): rows 0..B-1 women, B..2B-1 men.
_ACUTE_MALE_ONLY = np.array([c[0] in {"N41"} for c in ACUTE_NOISE_CODES])
_ACUTE_P = np.concatenate([_ACUTE_P * ~_ACUTE_MALE_ONLY, _ACUTE_P])
_ACUTE_CUM = np.cumsum(_ACUTE_P / _ACUTE_P.sum(axis=1, keepdims=True), axis=1)
_ACUTE_CUM[:, -1] = 1.0
# Offset group g by g, so one searchsorted samples every (sex, age band) group at once.
_ACUTE_CUM_FLAT = (_ACUTE_CUM + np.arange(_ACUTE_CUM.shape[0])[:, None]).ravel()


# ----------------------------------------------------------------------------------------
# Simulation helpers.


def _loadings(z: np.ndarray, load: np.ndarray) -> np.ndarray:
    """``z @ load.T`` for 3 factors, written out: BLAS threads make the tiny inner dimension
    ten times slower than three multiply-adds."""
    return z[:, 0:1] * load[:, 0] + z[:, 1:2] * load[:, 1] + z[:, 2:3] * load[:, 2]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _pick(
    rng: np.random.Generator, ids: np.ndarray, cum: np.ndarray, rows: np.ndarray
) -> np.ndarray:
    """Sample one code per row index from a padded choice table."""
    u = rng.random(rows.size)
    j = (u[:, None] >= cum[rows]).sum(axis=1)
    return ids[rows, j]


def _first_passage(hazard: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Age at which the cumulative (piecewise-constant, yearly) hazard reaches ``target``."""
    cum = np.cumsum(hazard, axis=1)
    hit = cum[:, -1] >= target
    k = np.argmax(cum >= target[:, None], axis=1)
    rows = np.arange(hazard.shape[0])
    h = hazard[rows, k]
    left = cum[rows, k] - h
    age = _GRID_AGES[k] + (target - left) / np.maximum(h, 1e-12)
    return np.where(hit, age, np.inf)


def _cum_hazard_at(hazard: np.ndarray, age: np.ndarray) -> np.ndarray:
    """Cumulative hazard from the grid start up to ``age``."""
    cum = np.cumsum(hazard, axis=1)
    k = np.clip(np.floor(age - _GRID_AGES[0]).astype(np.int64), 0, hazard.shape[1] - 1)
    rows = np.arange(hazard.shape[0])
    h = hazard[rows, k]
    return cum[rows, k] - h + h * np.clip(age - _GRID_AGES[k], 0.0, 1.0)


def _present_on_grid(onset_age: np.ndarray) -> np.ndarray:
    """(n, grid) boolean: condition present at the middle of each grid year."""
    return onset_age[:, None] <= _GRID_AGES[None, :] + 0.5


def _later_visits(
    rng: np.random.Generator, start_idx: np.ndarray, end_idx: np.ndarray, p: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Random later visits (binomial count, uniform positions) for each instance."""
    n_later = np.maximum(end_idx - start_idx - 1, 0)
    k = rng.binomial(n_later, p)
    rep = np.repeat(np.arange(k.size), k)
    offset = (rng.random(rep.size) * n_later[rep]).astype(np.int64)
    return rep, start_idx[rep] + 1 + offset


def _clinic_hours(rng: np.random.Generator, days: np.ndarray) -> np.ndarray:
    """Move scheduled visits to 08:00-17:00 on the same day."""
    return np.floor(days) + (8.0 + 9.0 * rng.random(days.size)) / 24.0


def _to_minutes(days: np.ndarray) -> np.ndarray:
    return np.floor(days * _MIN_PER_DAY).astype(np.int64)


@dataclass(frozen=True)
class _Latent:
    """The simulated truth of one block of subjects (ages in years, times in days since 1900)."""

    male: np.ndarray
    birth: np.ndarray
    z: np.ndarray  # (n, 3) latent factors
    entry: np.ndarray
    obs_end: np.ndarray
    died: np.ndarray
    death: np.ndarray
    death_age: np.ndarray
    risk_onset: np.ndarray  # (n, risk factors), inf = never
    adrd_onset: np.ndarray  # inf = none before death
    adrd_log_frailty: np.ndarray  # log ADRD hazard multiplier other than age and risk factors
    prod_onset: np.ndarray  # (n, prodromal signals)
    s_std: np.ndarray  # sparse instances of the standard conditions
    c_std: np.ndarray
    onset_std: np.ndarray


def _demographics(
    rng: np.random.Generator, n: int, start_d: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sex, birth day and the three latent health factors (a shared component correlates them)."""
    male = rng.random(n) < P_MALE
    age0 = np.clip(rng.normal(ENTRY_AGE_MEAN, ENTRY_AGE_SD, n), 35.0, 95.0)
    birth = np.floor(start_d - age0 * YEAR)
    shared = rng.standard_normal(n)
    z = (0.5 * shared[:, None] + math.sqrt(0.75) * rng.standard_normal((n, 3))).astype(np.float32)
    return male, birth, z


def _observation_window(
    rng: np.random.Generator, n: int, start_d: float, end_excl: float, birth: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First visit (entry), loss to follow-up (inf when never) and age at entry."""
    span = end_excl - start_d
    late = rng.random(n) < P_LATE_ENTRY
    entry = start_d + np.where(late, rng.random(n) * (span - YEAR), rng.exponential(1.0 * YEAR, n))
    entry = _clinic_hours(rng, np.minimum(entry, end_excl - 0.5 * YEAR))
    lost = rng.random(n) < P_LOST_TO_FOLLOW_UP
    ltfu = np.where(lost, entry + rng.exponential(LOST_TO_FOLLOW_UP_MEAN_YEARS * YEAR, n), np.inf)
    entry_age = (entry - birth) / YEAR
    return entry, ltfu, entry_age


def _standard_conditions(
    rng: np.random.Generator, n: int, male: np.ndarray, z: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Risk-factor and noise conditions as sparse instances (subject, column, onset age), and
    the risk factors' onset ages as a dense (n, risk factors) table (inf = never)."""
    zl = _loadings(z, _STD_LOAD)  # (n, C)
    lin = _STD_LOGIT[None, :] + zl + male[:, None] * _STD_LOG_OR[None, :]
    ever = rng.random(lin.shape, dtype=np.float32) < _sigmoid(lin)
    ever &= ~((_STD_MALE_OR[None, :] == 0) & male[:, None])
    ever &= ~(np.isinf(_STD_MALE_OR)[None, :] & ~male[:, None])
    s_std, c_std = np.nonzero(ever)
    onset_std = (
        _STD_ONSET[c_std, 0]
        - 2.0 * zl[s_std, c_std]
        + _STD_ONSET[c_std, 1] * rng.standard_normal(s_std.size)
    )
    onset_std = np.maximum(onset_std, 2.0)
    risk_onset = np.full((n, _N_RISK), np.inf)
    is_risk = c_std < _N_RISK
    risk_onset[s_std[is_risk], c_std[is_risk]] = onset_std[is_risk]
    return s_std, c_std, onset_std, risk_onset


def _adrd_onset(
    rng: np.random.Generator, n: int, male: np.ndarray, z: np.ndarray, risk_onset: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """ADRD onset age (inf = none) from an age-doubling hazard x risk-factor HRs x unobserved
    frailty, and the log frailty (the multiplier other than age and risk factors)."""
    log_hr = np.zeros((n, _GRID_AGES.size))
    for col, lhr in zip(_ADRD_HR_COLS, _ADRD_LOG_HR, strict=True):
        log_hr += lhr * _present_on_grid(risk_onset[:, col])
    frailty = rng.normal(-0.5 * ADRD_FRAILTY_SD**2, ADRD_FRAILTY_SD, n)
    frailty += 0.15 * z[:, 2] + np.where(male, 0.0, math.log(ADRD_FEMALE_HR))
    age_term = (_GRID_AGES + 0.5 - 80.0) * math.log(2.0) / ADRD_AGE_DOUBLING_YEARS
    adrd_h = ADRD_BASE_HAZARD_AT_80 * np.exp(age_term[None, :] + log_hr + frailty[:, None])
    adrd_onset = _first_passage(np.minimum(adrd_h, 2.0), rng.exponential(1.0, n))
    return adrd_onset, frailty


def _death_age(
    rng: np.random.Generator,
    n: int,
    z: np.ndarray,
    entry_age: np.ndarray,
    risk_onset: np.ndarray,
    adrd_onset: np.ndarray,
) -> np.ndarray:
    """Age at death: Gompertz x comorbidity HRs x ADRD, conditional on being alive at entry."""
    log_hr = np.zeros((n, _GRID_AGES.size))
    for col in range(_N_RISK):
        log_hr += _DEATH_LOG_HR[col] * _present_on_grid(risk_onset[:, col])
    log_hr += math.log(ADRD_CONDITION.death_hr) * _present_on_grid(adrd_onset)
    log_hr += 0.3 * z[:, 2:3]
    death_h = DEATH_BASE_HAZARD_AT_65 * np.exp(
        DEATH_GOMPERTZ_SLOPE * (_GRID_AGES + 0.5 - 65.0)[None, :] + log_hr
    )
    target = rng.exponential(1.0, n) + _cum_hazard_at(death_h, entry_age)
    death_age = _first_passage(death_h, target)
    # Past the grid (very old entrants): die soon, but never before the first visit.
    fallback = np.maximum(_GRID_AGES[-1] + 1.0, entry_age + 1.0)
    return np.where(np.isfinite(death_age), death_age, fallback)


def _prodromal_onsets(
    rng: np.random.Generator, male: np.ndarray, z: np.ndarray, adrd_onset: np.ndarray
) -> np.ndarray:
    """(n, prodromal signals) onset ages: a background onset, or 0.5-4 years before ADRD."""
    pz = _loadings(z.astype(float), _PROD_LOAD)
    p_bg = _sigmoid(_PROD_LOGIT[None, :] + pz + male[:, None] * _PROD_LOG_OR[None, :])
    prod_onset = np.where(
        rng.random(p_bg.shape) < p_bg,
        _PROD_ONSET[:, 0] - 2.0 * pz + _PROD_ONSET[:, 1] * rng.standard_normal(p_bg.shape),
        np.inf,
    )
    lo, hi = PRODROMAL_WINDOW_YEARS
    linked = adrd_onset[:, None] - lo - (hi - lo) * rng.random(p_bg.shape)
    linked_on = (rng.random(p_bg.shape) < _PROD_LINK[None, :]) & np.isfinite(linked)
    return np.minimum(prod_onset, np.where(linked_on, linked, np.inf))


def _simulate(rng: np.random.Generator, n: int, start_d: float, end_excl: float) -> _Latent:
    """Demographics, latent factors, condition onsets, ADRD, death and observation window.

    The steps draw from ``rng`` in this order; reordering them changes every dataset."""
    male, birth, z = _demographics(rng, n, start_d)
    entry, ltfu, entry_age = _observation_window(rng, n, start_d, end_excl, birth)
    s_std, c_std, onset_std, risk_onset = _standard_conditions(rng, n, male, z)
    adrd_onset, frailty = _adrd_onset(rng, n, male, z, risk_onset)
    death_age = _death_age(rng, n, z, entry_age, risk_onset, adrd_onset)
    death = birth + death_age * YEAR
    obs_end = np.minimum(np.minimum(death, ltfu), end_excl)
    died = death < np.minimum(ltfu, end_excl)
    adrd_onset = np.where(adrd_onset < death_age, adrd_onset, np.inf)
    prod_onset = _prodromal_onsets(rng, male, z, adrd_onset)
    return _Latent(
        male, birth, z, entry, obs_end, died, death, death_age, risk_onset, adrd_onset,
        frailty, prod_onset, s_std, c_std, onset_std,
    )  # fmt: skip


@dataclass(frozen=True)
class _Visits:
    """The visits of one block, sorted by subject then time."""

    subject: np.ndarray  # subject index within the block
    minute: np.ndarray  # minutes since 1900
    key: np.ndarray  # subject << 32 | minute, for searchsorted
    inpatient: np.ndarray
    age: np.ndarray  # years
    end: np.ndarray  # per subject: one past the index of their last visit


def _condition_instances(lat: _Latent) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every condition instance (subject, condition column, onset day): the sparse standard
    ones, then the dense prodromal and ADRD onsets."""
    dense = np.concatenate([lat.prod_onset, lat.adrd_onset[:, None]], axis=1)
    s_d, c_d = np.nonzero(np.isfinite(dense))
    inst_s = np.concatenate([lat.s_std, s_d])
    inst_c = np.concatenate([lat.c_std, c_d + _N_STD])
    inst_onset = lat.birth[inst_s] + np.concatenate([lat.onset_std, dense[s_d, c_d]]) * YEAR
    return inst_s, inst_c, inst_onset


def _visits(
    rng: np.random.Generator,
    lat: _Latent,
    instances: tuple[np.ndarray, np.ndarray, np.ndarray],
    start: date,
    end: date,
    start_d: float,
    end_excl: float,
) -> _Visits:
    """Yearly Poisson visit counts, rate rising with comorbidity and ADRD; the entry visit; an
    inpatient visit at each acute onset during observation."""
    n = lat.male.size
    birth, entry, obs_end = lat.birth, lat.entry, lat.obs_end
    risk_onset, adrd_onset = lat.risk_onset, lat.adrd_onset
    inst_s, inst_c, inst_onset = instances
    years = np.arange(start.year, end.year + 2)
    bounds = np.array([(date(int(y), 1, 1) - _EPOCH).days for y in years], dtype=float)
    bounds = np.clip(bounds, start_d, end_excl)
    y_lo = np.maximum(bounds[None, :-1], entry[:, None])
    y_hi = np.minimum(bounds[None, 1:], obs_end[:, None])
    exposure = np.clip(y_hi - y_lo, 0.0, None)
    mid_age = ((y_lo + y_hi) / 2 - birth[:, None]) / YEAR
    n_present = np.zeros_like(mid_age)
    for col in range(_N_RISK):
        n_present += risk_onset[:, col : col + 1] <= mid_age
    base_rate = rng.gamma(VISIT_RATE_SHAPE, VISIT_RATE_MEAN / VISIT_RATE_SHAPE, n)
    rate = base_rate[:, None] * np.exp(
        VISIT_LOG_RR_PER_CONDITION * n_present + 0.015 * (mid_age - 70.0)
    )
    rate *= np.where(adrd_onset[:, None] <= mid_age, VISIT_RR_ADRD, 1.0)
    counts = rng.poisson(rate * exposure / YEAR)
    v_s, v_y = np.nonzero(counts)
    reps = counts[v_s, v_y]
    v_s, v_y = np.repeat(v_s, reps), np.repeat(v_y, reps)
    v_t = _clinic_hours(rng, y_lo[v_s, v_y] + rng.random(v_s.size) * exposure[v_s, v_y])
    v_t = np.clip(v_t, entry[v_s], obs_end[v_s] - 1.0 / _MIN_PER_DAY)
    # Acute onsets during observation bring the patient in as an inpatient.
    acute_now = _ACUTE[inst_c] & (inst_onset >= entry[inst_s]) & (inst_onset < obs_end[inst_s])
    v_s = np.concatenate([np.arange(n), v_s, inst_s[acute_now]])
    v_t = np.concatenate([entry, v_t, inst_onset[acute_now]])
    v_inp = np.arange(v_t.size) >= v_t.size - int(acute_now.sum())
    v_min = _to_minutes(v_t)
    v_key = (v_s.astype(np.int64) << 32) | v_min
    order = np.argsort(v_key, kind="stable")
    v_s, v_min, v_key, v_inp = v_s[order], v_min[order], v_key[order], v_inp[order]
    v_age = (v_min / _MIN_PER_DAY - birth[v_s]) / YEAR
    p_inp = np.clip(P_INPATIENT * np.exp(0.4 * lat.z[v_s, 2] + 0.03 * (v_age - 70.0)), 0.0, 0.3)
    v_inp |= rng.random(v_s.size) < p_inp
    v_end = np.searchsorted(v_s, np.arange(n), side="right")
    return _Visits(v_s, v_min, v_key, v_inp, v_age, v_end)


def _diagnoses(
    rng: np.random.Generator,
    lat: _Latent,
    instances: tuple[np.ndarray, np.ndarray, np.ndarray],
    visits: _Visits,
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], np.ndarray, np.ndarray]:
    """First code after a detection delay (under-coded), then random recurrences.

    Returns the coded instances (subject, condition column, first visit index) and the
    diagnosis events (visit index, code id)."""
    entry, obs_end = lat.entry, lat.obs_end
    inst_s, inst_c, inst_onset = instances
    v_key, v_end = visits.key, visits.end
    pre_entry = inst_onset < entry[inst_s]
    acute_inst = _ACUTE[inst_c]
    p_coded = _P_CODED[inst_c] * np.where(acute_inst & pre_entry, 0.5, 1.0)
    detect = np.maximum(inst_onset, entry[inst_s]) + rng.exponential(1.0, inst_s.size) * (
        _DELAY[inst_c] * YEAR
    )
    detect = np.where(acute_inst & ~pre_entry, inst_onset, detect)
    keep = (rng.random(inst_s.size) < p_coded) & (detect < obs_end[inst_s])
    inst_s, inst_c, inst_pre, detect = inst_s[keep], inst_c[keep], pre_entry[keep], detect[keep]
    first = np.searchsorted(v_key, (inst_s.astype(np.int64) << 32) | _to_minutes(detect))
    keep = first < v_end[inst_s]
    inst_s, inst_c, inst_pre, first = inst_s[keep], inst_c[keep], inst_pre[keep], first[keep]
    main_code = _pick(rng, _FIRST_IDS, _FIRST_CUM, inst_c)
    hist_code = _pick(rng, _FOLLOW_IDS, _FOLLOW_CUM, inst_c)
    # Conditions known from before entry are recorded as history (e.g. I69 after stroke).
    main_code = np.where(inst_pre & _HAS_FOLLOW[inst_c], hist_code, main_code)
    rep, rec_visit = _later_visits(rng, first, v_end[inst_s], _P_RECUR[inst_c])
    rec_code = np.where(
        _HAS_FOLLOW[inst_c[rep]],
        _pick(rng, _FOLLOW_IDS, _FOLLOW_CUM, inst_c[rep]),
        main_code[rep],
    )
    dx_visit = np.concatenate([first, rec_visit])
    dx_code = np.concatenate([main_code, rec_code])
    return (inst_s, inst_c, first), dx_visit, dx_code


def _drugs(
    rng: np.random.Generator,
    coded: tuple[np.ndarray, np.ndarray, np.ndarray],
    visits: _Visits,
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], np.ndarray, np.ndarray]:
    """Drugs follow diagnoses (sometimes a few visits later) and are refilled.

    Returns the treated instances (subject, condition column, first drug visit index) and the
    drug events (visit index, code id)."""
    inst_s, inst_c, first = coded
    v_end = visits.end
    treat = rng.random(inst_s.size) < _P_TREAT[inst_c]
    d_s, d_c = inst_s[treat], inst_c[treat]
    d_start = first[treat] + np.where(rng.random(d_s.size) < 0.6, 0, rng.geometric(0.5, d_s.size))
    ok = d_start < v_end[d_s]
    d_s, d_c, d_start = d_s[ok], d_c[ok], d_start[ok]
    d_code = _pick(rng, _DRUG_IDS, _DRUG_CUM, d_c)
    rep, refill = _later_visits(rng, d_start, v_end[d_s], np.full(d_s.size, P_DRUG_REFILL))
    rx_visit = np.concatenate([d_start, refill])
    rx_code = np.concatenate([d_code, d_code[rep]])
    return (d_s, d_c, d_start), rx_visit, rx_code


def _acute_codes(
    rng: np.random.Generator, male: np.ndarray, visits: _Visits
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Acute/administrative codes per visit (age- and sex-dependent mix), some with a drug.

    Returns the diagnosis events (visit index, code id) and the drug events (visit index,
    code id)."""
    v_s, v_age = visits.subject, visits.age
    n_acute = rng.poisson(ACUTE_CODES_PER_VISIT, v_s.size)
    a_visit = np.repeat(np.arange(v_s.size), n_acute)
    band = np.clip(((v_age[a_visit] - _ACUTE_BANDS[0]) // 5).astype(np.int64), 0, None)
    band = np.minimum(band, _ACUTE_BANDS.size - 1)
    group = band + male[v_s[a_visit]] * _ACUTE_BANDS.size
    pos = np.searchsorted(_ACUTE_CUM_FLAT, group + rng.random(a_visit.size), side="right")
    a_idx = pos - group * _ACUTE_IDS.size
    a_drug = _ACUTE_DRUG_IDS[a_idx]
    with_drug = (a_drug >= 0) & (rng.random(a_idx.size) < ACUTE_DRUG_PROB)
    return a_visit, _ACUTE_IDS[a_idx], a_visit[with_drug], a_drug[with_drug]


def _generate_chunk(
    rng: np.random.Generator, first_subject_id: int, n: int, start: date, end: date
) -> pl.DataFrame:
    """Simulate ``n`` subjects; returns their events sorted by subject and time.

    The steps draw from ``rng`` in this order; reordering them changes every dataset."""
    start_d = float((start - _EPOCH).days)
    end_excl = float((end - _EPOCH).days + 1)  # events must fall on or before ``end``
    lat = _simulate(rng, n, start_d, end_excl)
    instances = _condition_instances(lat)
    visits = _visits(rng, lat, instances, start, end, start_d, end_excl)
    coded, dx_visit, dx_code = _diagnoses(rng, lat, instances, visits)
    treated, rx_visit, rx_code = _drugs(rng, coded, visits)
    a_visit, a_code, a_rx_visit, a_rx_code = _acute_codes(rng, lat.male, visits)
    dx_visit = np.concatenate([dx_visit, a_visit])
    dx_code = np.concatenate([dx_code, a_code])
    rx_visit = np.concatenate([rx_visit, a_rx_visit])
    rx_code = np.concatenate([rx_code, a_rx_code])
    # Labs/vitals: values follow the latent state, disease and treatment.
    labs = _labs(
        rng, n, lat.z, coded, treated, lat.risk_onset, visits.subject, visits.minute, visits.age
    )
    return _assemble(lat, visits, (dx_visit, dx_code), (rx_visit, rx_code), labs, first_subject_id)


def _event_parts(
    lat: _Latent,
    visits: _Visits,
    diagnoses: tuple[np.ndarray, np.ndarray],
    drugs: tuple[np.ndarray, np.ndarray],
    labs: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, int, np.ndarray | None]]:
    """Per kind of event, in a fixed order: (subject, minute, code id, rank, value or None).

    Birth, sex, visit, diagnosis, drug, lab and death; the rank orders events at one time."""
    n = lat.male.size
    v_s, v_min = visits.subject, visits.minute
    (dx_visit, dx_code), (rx_visit, rx_code) = diagnoses, drugs
    lab_visit, lab_code, lab_value = labs
    birth_min = _to_minutes(lat.birth)
    everyone, died = np.arange(n), lat.died
    return [
        (everyone, birth_min, np.full(n, _ID_BIRTH), _RANK_BIRTH, None),
        (everyone, birth_min, np.where(lat.male, _ID_M, _ID_F), _RANK_SEX, None),
        (v_s, v_min, np.where(visits.inpatient, _ID_INP, _ID_OUT), _RANK_VISIT, None),
        (v_s[dx_visit], v_min[dx_visit], dx_code, _RANK_DX, None),
        (v_s[rx_visit], v_min[rx_visit], rx_code, _RANK_DRUG, None),
        (v_s[lab_visit], v_min[lab_visit], lab_code, _RANK_LAB, lab_value),
        (
            np.flatnonzero(died),
            _to_minutes(lat.death[died]),
            np.full(int(died.sum()), _ID_DEATH),
            _RANK_DEATH,
            None,
        ),
    ]


def _assemble(
    lat: _Latent,
    visits: _Visits,
    diagnoses: tuple[np.ndarray, np.ndarray],
    drugs: tuple[np.ndarray, np.ndarray],
    labs: tuple[np.ndarray, np.ndarray, np.ndarray],
    first_subject_id: int,
) -> pl.DataFrame:
    """All events of the block as one frame, in MEDS order, without exact duplicates."""
    parts = _event_parts(lat, visits, diagnoses, drugs, labs)
    subj = np.concatenate([p[0] for p in parts])
    minute = np.concatenate([p[1] for p in parts])
    code = np.concatenate([p[2] for p in parts]).astype(np.int32)
    rank = np.concatenate([np.full(p[0].size, p[3]) for p in parts]).astype(np.int8)
    value = np.concatenate(
        [np.full(p[0].size, np.nan) if p[4] is None else p[4] for p in parts]
    ).astype(np.float32)
    order = np.lexsort((code, rank, minute, subj))
    subj, minute, code, rank, value = (a[order] for a in (subj, minute, code, rank, value))
    # Drop exact duplicate diagnosis/drug events (a code recurring twice at one visit).
    dup = np.zeros(subj.size, dtype=bool)
    dup[1:] = (
        (subj[1:] == subj[:-1])
        & (minute[1:] == minute[:-1])
        & (code[1:] == code[:-1])
        & np.isnan(value[1:])
    )
    keep = ~dup
    return pl.DataFrame(
        {
            "subject_id": pl.Series(subj[keep].astype(np.int64) + first_subject_id),
            "time": pl.Series((minute[keep] - _EPOCH_TO_UNIX_MIN) * _US_PER_MIN).cast(
                pl.Datetime("us")
            ),
            "code": pl.Series(VOCAB, dtype=pl.String).gather(code[keep]),
            "numeric_value": pl.Series(value[keep], dtype=pl.Float32, nan_to_null=True),
        }
    )


def _labs(
    rng: np.random.Generator,
    n: int,
    z: np.ndarray,
    coded: tuple[np.ndarray, np.ndarray, np.ndarray],
    drugs: tuple[np.ndarray, np.ndarray, np.ndarray],
    risk_onset: np.ndarray,
    v_s: np.ndarray,
    v_min: np.ndarray,
    v_age: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-visit lab draws; returns (visit index, code id, value).

    ``coded`` / ``drugs`` are (subject, condition column, first visit index) per instance.
    """

    def per_subject_min(s: np.ndarray, c: np.ndarray, visit_idx: np.ndarray, col: int):
        out = np.full(n, np.iinfo(np.int64).max)
        sel = c == col
        np.minimum.at(out, s[sel], v_min[visit_idx[sel]])
        return out[v_s]  # gathered per visit

    def present(name: str) -> np.ndarray:
        return risk_onset[v_s, _COND_INDEX[name]] <= v_age

    def diagnosed(name: str) -> np.ndarray:
        return per_subject_min(*coded, _COND_INDEX[name]) <= v_min

    def treated(name: str) -> np.ndarray:
        return per_subject_min(*drugs, _COND_INDEX[name]) <= v_min

    zc = z[v_s, 0].astype(float)
    nv = v_s.size
    htn, dm, lip = present("hypertension"), present("type2_diabetes"), present("hyperlipidaemia")
    ckd, obese = present("ckd"), present("obesity")
    dm_dx, lip_dx = diagnosed("type2_diabetes"), diagnosed("hyperlipidaemia")
    ckd_dx = diagnosed("ckd")
    statin, antihyp = treated("hyperlipidaemia"), treated("hypertension")
    diab_rx = treated("type2_diabetes")
    noise = rng.standard_normal((5, nv))
    # lab -> (probability measured at a visit, value, clip range); units as in codes.py.
    specs = {
        "SBP": (
            0.3,
            125 + 5 * zc + 15 * htn - 8 * antihyp + 0.3 * (v_age - 65) + 12 * noise[0],
            (80, 230),
        ),
        "LDL": (
            0.08 + 0.25 * (lip_dx | dm_dx | statin),
            120 + 12 * zc + 30 * lip - 45 * statin + 22 * noise[1],
            (30, 300),
        ),
        "HBA1C": (
            0.03 + 0.45 * dm_dx,
            5.5 + 0.2 * zc + 1.7 * dm - 0.6 * diab_rx + 0.45 * noise[2],
            (4.0, 14.0),
        ),
        "EGFR": (
            0.06 + 0.3 * ckd_dx + 0.15 * dm_dx,
            95 - 0.7 * (v_age - 50) - 25 * ckd + 10 * noise[3],
            (5, 130),
        ),
        "BMI": (0.1, 27 + 2 * zc + 6 * obese + 2.5 * noise[4], (15, 60)),
    }
    visits, codes, values = [], [], []
    for lab, (p, val, (lo, hi)) in specs.items():
        sel = np.flatnonzero(rng.random(nv) < p)
        visits.append(sel)
        codes.append(np.full(sel.size, _ID_LAB[lab], dtype=np.int32))
        values.append(np.round(np.clip(val[sel], lo, hi), 1))
    return np.concatenate(visits), np.concatenate(codes), np.concatenate(values)


# ----------------------------------------------------------------------------------------
# Public API.

# Subjects per random stream. Block k is simulated from a generator seeded by (seed, k) only,
# so the data do not depend on how many subjects are written at a time (``chunk_size``), and
# memory is bounded by one chunk however many subjects are generated. Changing this constant
# changes every dataset, so it is part of the determinism contract.
STREAM_BLOCK = 1000
DEFAULT_CHUNK_SIZE = 50_000  # subjects generated and written at a time


def _window(data_start: date, data_end: date) -> tuple[float, float]:
    if data_end <= data_start:
        raise ValueError(f"data_end ({data_end}) must be after data_start ({data_start})")
    if data_start <= date(1950, 1, 1):
        raise ValueError(f"data_start ({data_start}) must be after 1950 (births start in 1900)")
    # Days since the internal epoch; events must fall on or before ``data_end``.
    return float((data_start - _EPOCH).days), float((data_end - _EPOCH).days + 1)


def _blocks(n_subjects: int, seed: int) -> Iterator[tuple[np.random.Generator, int, int]]:
    """(generator, first index, size) per block of STREAM_BLOCK subjects."""
    if n_subjects < 0:
        raise ValueError(f"n_subjects must be >= 0, got {n_subjects}")
    n_blocks = -(-n_subjects // STREAM_BLOCK)
    seq = np.random.SeedSequence(seed)
    for k in range(n_blocks):
        # Child k of the seed sequence, built directly so no list of children is held.
        child = np.random.SeedSequence(seq.entropy, spawn_key=(k,))
        lo = k * STREAM_BLOCK
        yield np.random.default_rng(child), lo, min(STREAM_BLOCK, n_subjects - lo)


def iter_event_chunks(
    n_subjects: int,
    seed: int,
    data_start: date = date(2005, 1, 1),
    data_end: date = date(2024, 12, 31),
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Iterator[pl.DataFrame]:
    """Yield the events of about ``chunk_size`` subjects at a time (whole blocks), in order.

    Concatenated, the chunks are the same whatever ``chunk_size``; ids are ``1..n_subjects``.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be > 0, got {chunk_size}")
    _window(data_start, data_end)
    pending: list[pl.DataFrame] = []
    n_pending = 0
    for rng, lo, size in _blocks(n_subjects, seed):
        pending.append(_generate_chunk(rng, lo + 1, size, data_start, data_end))
        n_pending += size
        if n_pending >= chunk_size:
            yield pl.concat(pending)
            pending, n_pending = [], 0
    if pending:
        yield pl.concat(pending)


def generate_events(
    n_subjects: int,
    seed: int,
    data_start: date = date(2005, 1, 1),
    data_end: date = date(2024, 12, 31),
) -> pl.DataFrame:
    """Generate MEDS events for ``n_subjects`` subjects (ids ``1..n_subjects``) in memory.

    Returns columns ``subject_id`` (Int64), ``time`` (Datetime us), ``code`` (String),
    ``numeric_value`` (Float32, null except labs), sorted by subject and time. Identical to
    what :func:`write_events` writes for the same ``seed``; for large ``n_subjects`` use
    :func:`write_events` or :func:`iter_event_chunks`, which keep memory bounded.
    """
    frames = list(iter_event_chunks(n_subjects, seed, data_start, data_end))
    return pl.concat(frames) if frames else pl.DataFrame(schema=EVENT_SCHEMA)


def write_events(
    path: Path,
    n_subjects: int,
    seed: int,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    data_start: date = date(2005, 1, 1),
    data_end: date = date(2024, 12, 31),
) -> int:
    """Stream generated events to one parquet file (a MEDS data shard), chunk by chunk.

    Peak memory is bounded by ``chunk_size`` subjects, not by ``n_subjects``. The file is
    written next to ``path`` and renamed at the end, so an interrupted run never leaves a
    partial file that looks complete. Returns the number of events written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    total = 0
    try:
        with pq.ParquetWriter(tmp, _ARROW_SCHEMA, compression="zstd") as writer:
            for frame in iter_event_chunks(n_subjects, seed, data_start, data_end, chunk_size):
                writer.write_table(frame.to_arrow().cast(_ARROW_SCHEMA))
                total += frame.height
            if n_subjects == 0:
                writer.write_table(_ARROW_SCHEMA.empty_table())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return total


MEDS_VERSION = "0.4.1"  # the MEDS data/metadata layout written by write_meds_dataset


def write_meds_dataset(
    root: Path,
    n_subjects: int,
    seed: int,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    data_start: date = date(2005, 1, 1),
    data_end: date = date(2024, 12, 31),
) -> int:
    """Write a MEDS dataset folder: ``data/<i:05d>.parquet`` (one shard per chunk of subjects),
    ``metadata/codes.parquet`` (code, description, parent_codes) and ``metadata/dataset.json``.

    The shards together hold exactly the events of :func:`generate_events`; the folder can be
    read back with ``data.source: meds``. Written to ``root`` + ``.partial`` and renamed at the
    end, so an interrupted run leaves no folder that looks complete. Returns the event count.
    """
    root = Path(root)
    if root.exists():
        raise FileExistsError(f"{root} exists; remove it or choose another folder for the dataset")
    tmp = root.with_name(root.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "data").mkdir(parents=True)
    (tmp / "metadata").mkdir()
    total, used = 0, set()
    meds_schema = _ARROW_SCHEMA.set(2, pa.field("code", pa.string()))
    try:
        chunks = iter_event_chunks(n_subjects, seed, data_start, data_end, chunk_size)
        for i, frame in enumerate(chunks):
            shard = tmp / "data" / f"{i:05d}.parquet"  # lexical order = subject order
            pq.write_table(frame.to_arrow().cast(meds_schema), shard, compression="zstd")
            used.update(frame["code"].unique().to_list())
            total += frame.height
        names = describe_many(sorted(used))
        codes = pl.DataFrame(
            {
                "code": list(names),
                "description": list(names.values()),
                "parent_codes": [[] for _ in names],
            },
            schema={
                "code": pl.String,
                "description": pl.String,
                "parent_codes": pl.List(pl.String),
            },
        )
        codes.write_parquet(tmp / "metadata" / "codes.parquet")
        meta = {
            "dataset_name": f"rationale-bench synthetic (seed {seed}, {n_subjects} subjects)",
            "dataset_version": f"{data_start.isoformat()}..{data_end.isoformat()}",
            "etl_name": "rationale_bench.data.synthetic",
            "etl_version": f"stream_block={STREAM_BLOCK}",
            "meds_version": MEDS_VERSION,
        }
        (tmp / "metadata" / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
        tmp.rename(root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return total


def simulate_population(
    n_subjects: int,
    seed: int,
    data_start: date = date(2005, 1, 1),
    data_end: date = date(2024, 12, 31),
) -> pl.DataFrame:
    """The simulated truth behind :func:`generate_events` (same seed, same subjects).

    One row per subject: ``subject_id, male, birth_year`` (fractional), ``entry_age,
    obs_end_age, death_age`` (death may fall after the observation window), ``died``
    (recorded), ``adrd_onset_age`` (null when none before death), ``adrd_log_frailty`` (the log
    ADRD hazard multiplier other than age and risk factors), and ``onset_<factor>`` (age, null
    when never) for each risk factor in :data:`ADRD_HAZARD_RATIOS`. For validating the
    generator (hazard ratios, incidence by age), not as model input.
    """
    start_d, end_excl = _window(data_start, data_end)
    frames = []
    for rng, lo, size in _blocks(n_subjects, seed):
        lat = _simulate(rng, size, start_d, end_excl)

        def age(days: np.ndarray, birth: np.ndarray = lat.birth) -> np.ndarray:
            return (days - birth) / YEAR

        cols: dict[str, Any] = {
            "subject_id": np.arange(lo + 1, lo + size + 1, dtype=np.int64),
            "male": lat.male,
            "birth_year": 1900.0 + lat.birth / YEAR,
            "entry_age": age(lat.entry),
            "obs_end_age": age(lat.obs_end),
            "death_age": lat.death_age,
            "died": lat.died,
            "adrd_onset_age": lat.adrd_onset,
            "adrd_log_frailty": lat.adrd_log_frailty,
        }
        for name in ADRD_HAZARD_RATIOS:
            cols[f"onset_{name}"] = lat.risk_onset[:, _COND_INDEX[name]]
        frame = pl.DataFrame(cols)
        # inf (never) -> null, so missing onsets read as missing.
        frames.append(frame.with_columns(pl.selectors.float().replace(math.inf, None)))
    if not frames:
        raise ValueError("simulate_population needs n_subjects >= 1")
    return pl.concat(frames)
