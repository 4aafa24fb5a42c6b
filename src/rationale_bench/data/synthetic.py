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
in module-level tables below (sources: docs/references.md: the Lancet
Commission 2024); they were tuned so that a 5-year prediction task built on the data is
realistically hard (logistic-regression AUROC ~0.75) with 5-10 % cases.
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

__all__ = [
    "ACUTE_NOISE_CODES",
    "ADRD_DIAGNOSIS_CODES",
    "ADRD_HAZARD_RATIOS",
    "ANTI_DEMENTIA_DRUGS",
    "CHRONIC_NOISE_CONDITIONS",
    "EVENT_SCHEMA",
    "PRODROMAL_LINK",
    "RISK_CONDITIONS",
    "VOCAB",
    "STREAM_BLOCK",
    "TAIL_CODES",
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


@dataclass(frozen=True)
class _Cond:
    """A chronic/acute condition: onset model, how it is coded, what it triggers."""

    name: str
    codes: tuple[tuple[str, float], ...]  # ICD-10 codes at first diagnosis, with weights
    p_ever: float  # probability of onset by old age (before latent-factor shifts)
    onset: tuple[float, float]  # mean, sd of onset age (years)
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)  # cardiometabolic, mental, frailty
    male_or: float = 1.0  # odds ratio for men; 0 = women only, inf = men only
    p_coded: float = 0.8  # probability the condition is ever coded
    delay: float = 1.0  # mean years from onset (or entry) to first code
    p_recur: float = 0.15  # per later visit probability the code recurs
    followup: tuple[tuple[str, float], ...] = ()  # codes at later visits (e.g. sequelae)
    drugs: tuple[tuple[str, float], ...] = ()  # ATC codes started after diagnosis
    p_treat: float = 0.0
    acute: bool = False  # onset is an event that brings the patient in (inpatient)
    death_hr: float = 1.0


_CM, _MH, _FR = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)

# --- Risk-factor conditions (docs/references.md, EHR proxies; prevalences are rough population
# figures for people reaching old age, onset ages from typical epidemiology).
RISK_CONDITIONS: tuple[_Cond, ...] = (
    _Cond("hypertension", (("I10", 0.9), ("I11.9", 0.05), ("I12.9", 0.05)), 0.55, (58, 12),
          (0.8, 0.0, 0.2), 1.2, 0.9, 0.5, 0.4,
          drugs=(("C09AA05", 0.35), ("C08CA01", 0.35), ("C03AA03", 0.15), ("C09CA01", 0.15)),
          p_treat=0.8, death_hr=1.1),
    _Cond("type2_diabetes", (("E11.9", 0.8), ("E11.2", 0.1), ("E11.4", 0.1)), 0.22, (60, 11),
          (1.0, 0.0, 0.2), 1.3, 0.9, 0.5, 0.45,
          drugs=(("A10BA02", 0.75), ("A10BB12", 0.15), ("A10AE04", 0.1)), p_treat=0.85,
          death_hr=1.4),
    _Cond("hyperlipidaemia", (("E78.5", 0.7), ("E78.0", 0.2), ("E78.2", 0.1)), 0.45, (57, 11),
          (0.7, 0.0, 0.0), 1.1, 0.8, 1.0, 0.3,
          drugs=(("C10AA05", 0.7), ("C10AA01", 0.3)), p_treat=0.7),
    _Cond("obesity", (("E66.9", 0.8), ("E66.0", 0.2)), 0.3, (50, 14), (0.9, 0.2, 0.0), 1.0,
          0.6, 1.0, 0.25, death_hr=1.1),
    _Cond("depression", (("F32.9", 0.6), ("F33.9", 0.2), ("F32.1", 0.2)), 0.2, (50, 16),
          (0.0, 1.0, 0.2), 0.55, 0.8, 1.0, 0.3,
          drugs=(("N06AB06", 0.5), ("N06AB10", 0.35), ("N06AX11", 0.15)), p_treat=0.7,
          death_hr=1.2),
    _Cond("hearing_loss", (("H90.3", 0.4), ("H91.9", 0.35), ("H91.1", 0.25)), 0.3, (72, 9),
          (0.0, 0.0, 0.5), 1.4, 0.5, 1.5, 0.15),
    _Cond("vision_loss", (("H54.2", 0.7), ("H54.4", 0.3)), 0.1, (76, 9), (0.2, 0.0, 0.6), 1.0,
          0.6, 1.0, 0.15, death_hr=1.1),
    _Cond("stroke", (("I63.9", 0.7), ("I64", 0.3)), 0.12, (75, 10), (0.8, 0.0, 0.4), 1.3,
          0.95, 0.5, 0.25, followup=(("I69.3", 0.6), ("I69.4", 0.4)),
          drugs=(("B01AC06", 0.6), ("B01AC04", 0.4)), p_treat=0.85, acute=True, death_hr=1.8),
    _Cond("tbi", (("S06.0", 0.7), ("S06.9", 0.3)), 0.06, (60, 22), (0.0, 0.3, 0.5), 1.6, 0.9,
          0.5, 0.05, acute=True, death_hr=1.2),
    _Cond("smoking", (("F17.2", 0.5), ("Z72.0", 0.5)), 0.25, (22, 5), (0.3, 0.5, 0.0), 1.5,
          0.6, 2.0, 0.2, drugs=(("N07BA01", 1.0),), p_treat=0.15, death_hr=1.6),
    _Cond("alcohol", (("F10.2", 0.5), ("F10.1", 0.5)), 0.07, (40, 12), (0.0, 0.8, 0.2), 2.5,
          0.6, 2.0, 0.2, death_hr=1.6),
    _Cond("atrial_fibrillation", (("I48.9", 0.7), ("I48.0", 0.3)), 0.14, (75, 9),
          (0.6, 0.0, 0.3), 1.5, 0.9, 0.5, 0.35,
          drugs=(("B01AF01", 0.4), ("B01AF02", 0.3), ("B01AA03", 0.3)), p_treat=0.75,
          death_hr=1.4),
    _Cond("ckd", (("N18.3", 0.6), ("N18.4", 0.1), ("N18.9", 0.3)), 0.15, (74, 9),
          (0.8, 0.0, 0.4), 1.1, 0.7, 1.0, 0.3, death_hr=1.6),
    _Cond("sleep_apnoea", (("G47.3", 1.0),), 0.08, (55, 12), (0.8, 0.0, 0.0), 2.2, 0.7, 1.0,
          0.2),
    _Cond("social_isolation", (("Z60.2", 0.7), ("Z60.4", 0.3)), 0.1, (72, 10), (0.0, 0.7, 0.4),
          1.0, 0.35, 1.0, 0.1, death_hr=1.2),
    _Cond("physical_inactivity", (("Z72.3", 1.0),), 0.15, (60, 15), (0.5, 0.3, 0.3), 1.0, 0.3,
          1.0, 0.1, death_hr=1.2),
)  # fmt: skip

# ADRD hazard ratios while a risk factor is present (coded or not). Lancet Commission 2024
# (Livingston et al.) meta-analytic RRs (docs/references.md); AF, CKD, sleep apnoea from the
# wider cohort literature [memory].
ADRD_HAZARD_RATIOS: dict[str, float] = {
    "hypertension": 1.4,
    "type2_diabetes": 1.5,
    "hyperlipidaemia": 1.3,
    "obesity": 1.3,
    "depression": 1.9,
    "hearing_loss": 1.4,
    "vision_loss": 1.5,
    "stroke": 2.0,
    "tbi": 1.7,
    "smoking": 1.3,
    "alcohol": 1.4,
    "atrial_fibrillation": 1.4,
    "ckd": 1.2,
    "sleep_apnoea": 1.2,
    "social_isolation": 1.6,
    "physical_inactivity": 1.4,
}

# ADRD incidence for a person aged 80 with none of the risk factors above; the hazard doubles
# every 5 years of age (incidence ~1-2 %/year at 75-84 in the general population).
ADRD_BASE_HAZARD_AT_80 = 0.0075
ADRD_AGE_DOUBLING_YEARS = 5.0
ADRD_FEMALE_HR = 1.15
ADRD_FRAILTY_SD = 1.15  # unobserved heterogeneity (APOE, education, family history...)

# ADRD diagnosis codes (ICD-10-CM) and their mix; anti-dementia drugs (docs/references.md).
ADRD_DIAGNOSIS_CODES: tuple[tuple[str, float], ...] = (
    ("F03.90", 0.38),
    ("G30.9", 0.25),
    ("F01.50", 0.12),
    ("F02.80", 0.08),
    ("G31.83", 0.07),
    ("G30.1", 0.10),
)
ANTI_DEMENTIA_DRUGS: tuple[tuple[str, float], ...] = (
    ("N06DA02", 0.55),
    ("N06DA03", 0.13),
    ("N06DA04", 0.12),
    ("N06DX01", 0.20),
)
_ADRD = _Cond("adrd", ADRD_DIAGNOSIS_CODES, 0.0, (0.0, 0.0), p_coded=0.9, delay=1.0,
              p_recur=0.5, drugs=ANTI_DEMENTIA_DRUGS, p_treat=0.55, death_hr=2.2)  # fmt: skip

# Prodromal signals (docs/references.md): a background onset for everybody plus a "linked"
# onset 0.5-4 years before ADRD onset with the given probability.
_PRODROMAL: tuple[_Cond, ...] = (
    _Cond("memory_complaint", (("R41.3", 1.0),), 0.06, (76, 8), _FR, 1.0, 0.8, 0.3, 0.2),
    _Cond("cognitive_symptoms", (("R41.0", 0.4), ("R41.82", 0.4), ("R41.8", 0.2)), 0.04,
          (78, 8), _FR, 1.0, 0.8, 0.3, 0.15),
    _Cond("mci", (("G31.84", 0.6), ("F06.7", 0.4)), 0.02, (75, 7), _FR, 1.0, 0.8, 0.3, 0.25),
    _Cond("falls", (("R29.6", 0.4), ("W19", 0.6)), 0.15, (78, 8), (0.0, 0.0, 0.8), 0.8, 0.7,
          0.3, 0.15),
)  # fmt: skip
PRODROMAL_LINK: dict[str, float] = {
    "memory_complaint": 0.35,
    "cognitive_symptoms": 0.2,
    "mci": 0.2,
    "falls": 0.15,
}
PRODROMAL_WINDOW_YEARS = (0.5, 4.0)

# Common chronic conditions as background "noise" (real WHO ICD-10 3-character codes):
# code, p_ever, onset mean, onset sd, male OR (0 women only, inf men only), latent factor, drug.
_INF = math.inf
CHRONIC_NOISE_CONDITIONS: tuple[tuple[str, float, float, float, float, str, str], ...] = (
    ("I25", 0.15, 68, 10, 2.0, "cm", "B01AC06"), ("I20", 0.06, 65, 10, 1.8, "cm", "C01DA02"),
    ("I50", 0.10, 76, 9, 1.3, "cm", "C03CA01"), ("I70", 0.07, 72, 9, 1.5, "cm", ""),
    ("I73", 0.05, 70, 9, 1.5, "cm", ""), ("I83", 0.08, 55, 15, 0.6, "", ""),
    ("I35", 0.04, 75, 8, 1.2, "fr", ""), ("I34", 0.03, 70, 10, 0.9, "", ""),
    ("I95", 0.04, 75, 10, 1.0, "fr", ""), ("E03", 0.10, 55, 15, 0.3, "", "H03AA01"),
    ("E04", 0.03, 50, 15, 0.3, "", ""), ("E55", 0.08, 60, 15, 0.8, "fr", ""),
    ("E53", 0.05, 70, 12, 1.0, "fr", ""), ("E79", 0.05, 60, 12, 3.0, "cm", "M04AA01"),
    ("E87", 0.08, 75, 10, 1.0, "fr", ""), ("D50", 0.08, 65, 15, 0.5, "", ""),
    ("D64", 0.10, 75, 10, 1.0, "fr", ""), ("D69", 0.02, 65, 15, 1.0, "", ""),
    ("M10", 0.05, 62, 12, 3.0, "cm", "M04AA01"), ("M17", 0.20, 65, 10, 0.7, "cm", "M01AE01"),
    ("M16", 0.10, 68, 10, 0.8, "", "N02BE01"), ("M19", 0.12, 65, 10, 0.8, "", ""),
    ("M15", 0.06, 68, 10, 0.7, "", ""), ("M54", 0.30, 50, 15, 1.0, "", "N02BE01"),
    ("M47", 0.10, 65, 10, 1.0, "", ""), ("M48", 0.06, 70, 10, 1.0, "fr", ""),
    ("M51", 0.06, 50, 12, 1.2, "", "N03AX16"), ("M75", 0.08, 55, 12, 1.0, "", ""),
    ("M79", 0.10, 55, 15, 0.7, "mh", ""), ("M81", 0.12, 70, 10, 0.2, "fr", "M05BA04"),
    ("M06", 0.02, 55, 15, 0.4, "", ""), ("L40", 0.03, 45, 15, 1.0, "", "D07AC01"),
    ("L30", 0.10, 55, 20, 1.0, "", "D07AC01"), ("L57", 0.08, 70, 10, 1.8, "", ""),
    ("L82", 0.10, 65, 12, 1.0, "", ""), ("L89", 0.02, 82, 7, 1.0, "fr", ""),
    ("K21", 0.18, 55, 15, 1.0, "cm", "A02BC01"), ("K29", 0.06, 55, 15, 1.0, "", "A02BC01"),
    ("K57", 0.10, 68, 10, 1.0, "", ""), ("K58", 0.05, 45, 15, 0.5, "mh", ""),
    ("K59", 0.12, 70, 15, 0.8, "fr", ""), ("K80", 0.08, 58, 15, 0.5, "cm", ""),
    ("K76", 0.06, 55, 12, 1.2, "cm", ""), ("K44", 0.05, 65, 10, 1.0, "", ""),
    ("K64", 0.06, 55, 15, 1.0, "", ""), ("J44", 0.08, 67, 10, 1.4, "fr", "R03AK06"),
    ("J45", 0.07, 45, 20, 0.7, "", "R03AC02"), ("J30", 0.08, 40, 15, 1.0, "", "R06AE07"),
    ("J32", 0.04, 50, 15, 1.0, "", ""), ("N40", 0.30, 68, 8, _INF, "", "G04CA02"),
    ("R32", 0.06, 76, 8, 0.6, "fr", ""), ("N95", 0.15, 50, 4, 0.0, "", ""),
    ("N81", 0.05, 65, 10, 0.0, "", ""), ("N20", 0.04, 50, 15, 1.8, "", ""),
    ("H25", 0.30, 72, 8, 1.0, "", ""), ("H26", 0.05, 70, 10, 1.0, "", ""),
    ("H40", 0.07, 70, 10, 1.0, "", "S01ED01"), ("H35", 0.08, 76, 8, 1.0, "", ""),
    ("H52", 0.20, 50, 20, 1.0, "", ""), ("H61", 0.10, 65, 15, 1.2, "", ""),
    ("H81", 0.06, 62, 12, 0.7, "", ""), ("H93", 0.05, 62, 12, 1.2, "", ""),
    ("G43", 0.06, 40, 12, 0.4, "mh", ""), ("G40", 0.015, 50, 20, 1.2, "", ""),
    ("G56", 0.04, 55, 12, 0.5, "", ""), ("G62", 0.05, 70, 10, 1.3, "cm", "N03AX16"),
    ("G25", 0.03, 60, 12, 0.8, "", ""), ("F51", 0.06, 60, 15, 0.8, "mh", "N05CF01"),
    ("F41", 0.10, 45, 15, 0.5, "mh", "N06AB10"), ("F43", 0.05, 45, 15, 0.6, "mh", ""),
    ("Z92", 0.10, 65, 10, 1.0, "", ""), ("Z95", 0.04, 72, 9, 1.8, "cm", ""),
    ("Z96", 0.08, 70, 10, 0.8, "", ""), ("Z88", 0.10, 50, 20, 0.7, "", ""),
    ("Z86", 0.08, 60, 15, 1.0, "", ""), ("C61", 0.04, 70, 8, _INF, "", ""),
    ("C50", 0.04, 62, 12, 0.0, "", ""), ("C18", 0.015, 70, 10, 1.2, "", ""),
    ("C44", 0.08, 72, 10, 1.5, "", ""), ("C34", 0.015, 70, 8, 1.5, "", ""),
    ("D12", 0.10, 62, 10, 1.2, "", ""), ("D22", 0.05, 45, 15, 1.0, "", ""),
    ("B35", 0.06, 65, 15, 1.2, "", ""), ("I49", 0.06, 70, 10, 1.0, "", ""),
    ("I44", 0.03, 75, 8, 1.3, "", ""), ("I80", 0.02, 65, 15, 1.0, "", ""),
    ("R73", 0.06, 60, 10, 1.1, "cm", ""), ("R60", 0.05, 76, 8, 0.8, "cm", "C03CA01"),
    ("R26", 0.06, 78, 8, 1.0, "fr", ""),
)  # fmt: skip
_NOISE_LOAD = {"": (0.0, 0.0, 0.0), "cm": (0.6, 0.0, 0.0), "mh": (0.0, 0.6, 0.0),
               "fr": (0.0, 0.0, 0.6)}  # fmt: skip

# Acute / administrative codes drawn per visit: code, relative weight, log-weight change per
# decade of age, drug sometimes prescribed at the same visit.
ACUTE_NOISE_CODES: tuple[tuple[str, float, float, str], ...] = (
    ("J06", 8.0, -0.2, ""), ("J20", 3.0, 0.0, "J01CA04"), ("J18", 1.5, 0.4, "J01CA04"),
    ("J01", 2.0, -0.2, "J01CA04"), ("J02", 2.0, -0.3, ""), ("J03", 0.5, -0.4, "J01CA04"),
    ("J11", 1.0, 0.0, ""), ("J40", 1.0, 0.1, ""), ("J22", 1.5, 0.2, "J01CA04"),
    ("N39", 3.0, 0.4, "J01XE01"), ("N30", 2.0, 0.2, "J01XE01"), ("A09", 2.0, 0.0, ""),
    ("K52", 1.0, 0.0, ""), ("K30", 1.5, 0.0, "A02BC01"), ("K92", 0.5, 0.3, ""),
    ("R10", 3.0, 0.0, ""), ("R07", 3.0, 0.1, ""), ("R05", 4.0, 0.0, ""), ("R06", 2.0, 0.3, ""),
    ("R51", 2.0, -0.3, "N02BE01"), ("R42", 2.5, 0.3, ""), ("R55", 1.0, 0.4, ""),
    ("R50", 1.0, 0.0, ""), ("R53", 2.0, 0.3, ""), ("R63", 1.0, 0.4, ""), ("R11", 1.0, 0.0, ""),
    ("R19", 1.0, 0.0, ""), ("R31", 0.6, 0.2, ""), ("R39", 1.0, 0.3, ""),
    ("R52", 1.0, 0.0, "N02AX02"), ("M25", 4.0, 0.0, "M01AE01"), ("M62", 1.0, 0.0, ""),
    ("M77", 1.0, -0.1, ""), ("M65", 0.7, -0.1, ""), ("S00", 0.8, 0.3, ""), ("S52", 0.4, 0.3, ""),
    ("S72", 0.3, 0.8, "N02AX02"), ("S42", 0.3, 0.2, ""), ("S82", 0.3, 0.0, ""),
    ("S93", 0.6, -0.3, ""), ("S61", 0.5, 0.0, ""), ("S80", 0.4, 0.2, ""), ("T14", 0.5, 0.0, ""),
    ("T78", 0.4, 0.0, "R06AE07"), ("T88", 0.3, 0.2, ""), ("L03", 1.2, 0.3, "J01CA04"),
    ("L02", 0.6, 0.0, ""), ("L08", 0.4, 0.1, ""), ("L23", 0.5, 0.0, ""), ("L29", 0.7, 0.2, ""),
    ("L50", 0.5, -0.1, "R06AE07"), ("B02", 0.8, 0.3, ""), ("B34", 1.5, -0.2, ""),
    ("B37", 0.6, 0.1, ""), ("B00", 0.3, 0.0, ""), ("H10", 1.2, 0.0, ""), ("H60", 0.6, 0.0, ""),
    ("H66", 0.5, -0.5, "J01CA04"), ("H00", 0.3, -0.2, ""), ("H57", 0.3, 0.0, ""),
    ("H92", 0.4, -0.1, ""), ("K08", 0.4, 0.0, ""), ("K12", 0.3, 0.0, ""),
    ("N41", 0.3, 0.0, "J01MA02"), ("N23", 0.3, -0.2, ""), ("E86", 0.6, 0.6, ""),
    ("Z00", 6.0, 0.0, ""), ("Z01", 2.0, 0.0, ""), ("Z12", 2.0, -0.1, ""), ("Z23", 4.0, 0.2, ""),
    ("Z76", 3.0, 0.2, ""), ("Z71", 1.0, 0.0, ""), ("Z13", 1.0, 0.0, ""), ("Z09", 1.5, 0.1, ""),
    ("Z51", 0.5, 0.2, ""), ("Z48", 0.4, 0.2, ""), ("G44", 0.5, -0.2, ""), ("A08", 0.8, 0.0, ""),
    ("A46", 0.3, 0.4, "J01CA04"), ("A49", 0.4, 0.2, ""), ("J15", 0.3, 0.6, "J01CA04"),
    ("G45", 0.4, 0.6, "B01AC06"), ("R40", 0.2, 0.6, ""), ("R45", 0.4, 0.0, ""),
    ("I26", 0.15, 0.3, "B01AF02"),
)  # fmt: skip
# Long tail of real WHO ICD-10 3-character categories (chapters A-N, R, S, T, Z; pregnancy,
# perinatal, congenital and external-cause chapters, exotic infections and codes used above
# left out). With the tables above the generator emits ~1,150 distinct 3-character codes, close
# to the 1,167 first-occurrence features of the UK Biobank study (arXiv 2606.10279). Each
# category is a chronic-or-episodic condition whose onset age, sex ratio and latent-factor
# loading come from its chapter profile (below); its lifetime prevalence is log-uniform in
# TAIL_P_EVER, drawn once with a fixed seed so the table does not depend on the study seed.
_TAIL_CODES_TEXT = """
    A15 A16 A17 A18 A19 A40 A41 B15 B16 B17 B18 B19 B20 B21 B22 B23 B24 B36 B90 B91 B92 B94
    B95 B96 B97 B98 B99 C00 C01 C02 C03 C04 C05 C06 C07 C08 C09 C10 C11 C12 C13 C14 C15 C16
    C17 C19 C20 C21 C22 C23 C24 C25 C26 C30 C31 C32 C33 C37 C38 C39 C40 C41 C43 C51 C52 C53
    C54 C55 C56 C57 C58 C60 C62 C63 C64 C65 C66 C67 C68 C69 C70 C71 C72 C73 C74 C75 C76 C77
    C78 C79 C80 C81 C82 C83 C84 C85 C86 C88 C90 C91 C92 C93 C94 C95 C96 C97 D00 D01 D02 D03
    D04 D05 D06 D07 D09 D10 D11 D13 D14 D15 D16 D17 D18 D19 D20 D21 D23 D24 D25 D26 D27 D28
    D29 D30 D31 D32 D33 D34 D35 D36 D51 D52 D53 D55 D56 D57 D58 D59 D60 D61 D62 D63 D65 D66
    D67 D68 D70 D71 D72 D73 D74 D75 D76 D77 D80 D81 D82 D83 D84 D86 D89 E00 E01 E02 E05 E06
    E07 E10 E12 E13 E14 E15 E16 E20 E21 E22 E23 E24 E25 E26 E27 E28 E29 E30 E31 E32 E34 E35
    E40 E41 E42 E43 E44 E45 E46 E50 E51 E52 E54 E56 E58 E59 E60 E61 E63 E64 E65 E67 E68 F04
    F05 F07 F09 F11 F12 F13 F14 F15 F16 F18 F19 F20 F21 F22 F23 F24 F25 F28 F29 F30 F31 F34
    F38 F39 F40 F42 F44 F45 F48 F50 F52 F53 F54 F55 F59 F60 F61 F62 F63 F64 F65 F66 F68 F69
    F70 F71 F72 F73 F78 F79 F99 G00 G01 G02 G03 G04 G05 G06 G07 G08 G09 G10 G11 G12 G13 G14
    G20 G21 G22 G23 G24 G26 G32 G35 G36 G37 G41 G46 G50 G51 G52 G53 G54 G55 G57 G58 G59 G60
    G61 G63 G64 G70 G71 G72 G73 G80 G81 G82 G83 G90 G91 G92 G93 G94 G95 G96 G97 G98 G99 H01
    H02 H03 H04 H05 H06 H11 H13 H15 H16 H17 H18 H19 H20 H21 H22 H27 H28 H30 H31 H32 H33 H34
    H36 H42 H43 H44 H45 H46 H47 H48 H49 H50 H51 H53 H55 H58 H59 H62 H65 H67 H68 H69 H70 H71
    H72 H73 H74 H75 H80 H82 H83 H94 H95 I00 I01 I02 I05 I06 I07 I08 I09 I21 I22 I23 I24 I27
    I28 I30 I31 I32 I33 I36 I37 I38 I39 I40 I41 I42 I43 I45 I46 I47 I51 I52 I60 I61 I62 I65
    I66 I67 I68 I71 I72 I74 I77 I78 I79 I81 I82 I85 I86 I87 I88 I89 I97 I98 I99 J00 J04 J05
    J09 J10 J12 J13 J14 J16 J17 J21 J31 J33 J34 J35 J36 J37 J38 J39 J41 J42 J43 J46 J47 J60
    J61 J62 J63 J64 J65 J66 J67 J68 J69 J70 J80 J81 J82 J84 J85 J86 J90 J91 J92 J93 J94 J95
    J96 J98 J99 K20 K22 K23 K25 K26 K27 K28 K31 K35 K36 K37 K38 K40 K41 K42 K43 K45 K46 K50
    K51 K55 K56 K60 K61 K62 K63 K65 K66 K67 K70 K71 K72 K73 K74 K75 K77 K81 K82 K83 K85 K86
    K87 K90 K91 K93 L00 L01 L04 L05 L10 L11 L12 L13 L14 L20 L21 L22 L24 L25 L26 L27 L28 L41
    L42 L43 L44 L45 L51 L52 L53 L54 L55 L56 L58 L59 L60 L62 L63 L64 L65 L66 L67 L68 L70 L71
    L72 L73 L74 L75 L80 L81 L83 L84 L85 L86 L87 L88 L90 L91 L92 L93 L94 L95 L97 L98 L99 M00
    M01 M02 M03 M05 M07 M08 M09 M11 M12 M13 M14 M18 M20 M21 M22 M23 M24 M30 M31 M32 M33 M34
    M35 M36 M40 M41 M42 M43 M45 M46 M49 M50 M53 M60 M61 M63 M66 M67 M68 M70 M71 M72 M73 M76
    M80 M82 M83 M84 M85 M86 M87 M88 M89 M90 M91 M92 M93 M94 M95 M96 M99 N00 N01 N02 N03 N04
    N05 N06 N07 N08 N10 N11 N12 N13 N14 N15 N16 N17 N19 N21 N22 N25 N26 N27 N28 N29 N31 N32
    N33 N34 N35 N36 N37 N42 N43 N44 N45 N46 N47 N48 N49 N50 N51 N60 N61 N62 N63 N64 N70 N71
    N72 N73 N74 N75 N76 N77 N80 N82 N83 N84 N85 N86 N87 N88 N89 N90 N91 N92 N93 N94 N96 N97
    N98 N99 R00 R01 R02 R03 R04 R09 R12 R13 R14 R15 R16 R17 R18 R20 R21 R22 R23 R25 R27 R30
    R33 R34 R35 R36 R43 R44 R46 R47 R48 R49 R54 R56 R57 R58 R59 R61 R62 R64 R65 R68 R69 R70
    R71 R72 R74 R75 R76 R77 R78 R79 R80 R81 R82 R83 R84 R85 R86 R87 R89 R90 R91 R92 R93 R94
    R95 R96 R98 R99 S01 S02 S03 S04 S05 S07 S08 S09 S20 S21 S22 S23 S24 S25 S26 S27 S28 S29
    S40 S41 S43 S44 S45 S46 S47 S48 S49 S50 S51 S53 S54 S55 S56 S57 S58 S59 S60 S62 S63 S64
    S65 S66 S67 S68 S69 S70 S71 S73 S74 S75 S76 S77 S78 S79 S81 S83 S84 S85 S86 S87 S88 S89
    S90 S91 S92 S94 S95 S96 S97 S98 S99 T15 T16 T17 T18 T19 T66 T67 T68 T69 T70 T71 T73 T74
    T75 T76 T79 T80 T81 T82 T83 T84 T85 T86 T87 T90 T91 T92 T93 T94 T95 T96 T97 T98 Z02 Z03
    Z04 Z08 Z10 Z11 Z40 Z41 Z42 Z43 Z44 Z45 Z46 Z47 Z49 Z50 Z52 Z53 Z54 Z55 Z56 Z57 Z58 Z59
    Z61 Z62 Z63 Z64 Z65 Z70 Z73 Z74 Z75 Z80 Z81 Z82 Z83 Z84 Z85 Z87 Z89 Z90 Z91 Z93 Z94 Z97
    Z98 Z99
"""
TAIL_CODES: tuple[str, ...] = tuple(_TAIL_CODES_TEXT.split())
TAIL_P_EVER = (0.0005, 0.02)
_TAIL_TABLE_SEED = 0x1CD10
# (first code, last code) -> onset mean, onset sd, male OR (0 women only, inf men only),
# loading on (cardiometabolic, mental health, frailty), years to first code, recurrence.
# The most specific (shortest) range containing a code wins.
_Profile = tuple[float, float, float, tuple[float, float, float], float, float]
_TAIL_PROFILES: tuple[tuple[str, str, *_Profile], ...] = (
    ("A00", "B99", 62, 20, 1.2, (0.0, 0.1, 0.4), 0.2, 0.05),
    ("C00", "C97", 68, 10, 1.3, (0.1, 0.0, 0.2), 0.5, 0.3),
    ("C51", "C58", 64, 12, 0.0, (0.1, 0.0, 0.1), 0.5, 0.3),
    ("C60", "C63", 66, 12, _INF, (0.0, 0.0, 0.1), 0.5, 0.3),
    ("D00", "D36", 60, 13, 1.0, (0.0, 0.0, 0.0), 0.5, 0.08),
    ("D25", "D28", 45, 10, 0.0, (0.0, 0.0, 0.0), 0.5, 0.08),
    ("D29", "D29", 60, 12, _INF, (0.0, 0.0, 0.0), 0.5, 0.08),
    ("D50", "D89", 68, 14, 0.8, (0.1, 0.0, 0.5), 0.7, 0.15),
    ("E00", "E90", 58, 15, 0.8, (0.6, 0.0, 0.1), 0.8, 0.2),
    ("E28", "E28", 35, 10, 0.0, (0.4, 0.0, 0.0), 0.8, 0.2),
    ("E29", "E29", 60, 12, _INF, (0.3, 0.0, 0.1), 0.8, 0.2),
    ("F04", "F99", 42, 16, 0.9, (0.0, 0.9, 0.1), 1.0, 0.2),
    ("G00", "G99", 60, 16, 1.0, (0.1, 0.1, 0.4), 0.8, 0.15),
    ("H00", "H59", 66, 14, 0.9, (0.1, 0.0, 0.3), 0.5, 0.1),
    ("H60", "H95", 60, 16, 1.1, (0.0, 0.0, 0.3), 0.5, 0.08),
    ("I00", "I99", 70, 11, 1.4, (0.8, 0.0, 0.3), 0.5, 0.2),
    ("J00", "J99", 62, 16, 1.1, (0.2, 0.0, 0.4), 0.4, 0.1),
    ("K00", "K93", 58, 16, 1.0, (0.2, 0.1, 0.1), 0.5, 0.1),
    ("L00", "L99", 58, 18, 1.0, (0.1, 0.1, 0.1), 0.3, 0.08),
    ("M00", "M99", 60, 14, 0.8, (0.2, 0.1, 0.4), 0.8, 0.15),
    ("N00", "N99", 66, 14, 1.0, (0.3, 0.0, 0.3), 0.5, 0.15),
    ("N40", "N51", 62, 14, _INF, (0.1, 0.0, 0.1), 0.5, 0.1),
    ("N60", "N64", 50, 14, 0.05, (0.0, 0.0, 0.0), 0.3, 0.05),
    ("N70", "N98", 45, 14, 0.0, (0.0, 0.1, 0.0), 0.3, 0.05),
    ("R00", "R99", 68, 14, 0.9, (0.1, 0.1, 0.5), 0.2, 0.05),
    ("S00", "T98", 62, 22, 1.3, (0.0, 0.1, 0.5), 0.02, 0.02),
    ("Z00", "Z99", 62, 15, 1.0, (0.1, 0.1, 0.2), 0.5, 0.1),
)  # fmt: skip
ACUTE_CODES_PER_VISIT = 0.8
ACUTE_DRUG_PROB = 0.5

# Observation and utilisation.
ENTRY_AGE_MEAN, ENTRY_AGE_SD = 69.0, 7.0  # age at data_start
P_MALE = 0.45
P_LATE_ENTRY = 0.35  # enter uniformly over the window instead of near its start
P_LOST_TO_FOLLOW_UP = 0.3
LOST_TO_FOLLOW_UP_MEAN_YEARS = 6.0
VISIT_RATE_SHAPE, VISIT_RATE_MEAN = 2.5, 2.5  # gamma; per year before comorbidity
VISIT_LOG_RR_PER_CONDITION = 0.08
VISIT_RR_ADRD = 1.4
P_INPATIENT = 0.03
P_DRUG_REFILL = 0.6  # per later visit
# Mortality: Gompertz, doubling ~ every 8 years; base for a 65-year-old without comorbidity.
DEATH_BASE_HAZARD_AT_65 = 0.008
DEATH_GOMPERTZ_SLOPE = 0.087

_GRID_AGES = np.arange(30.0, 111.0)  # yearly hazard grid for ADRD and death


# ----------------------------------------------------------------------------------------
# Tables compiled once at import.


def _noise_conditions() -> tuple[_Cond, ...]:
    out = []
    for code, p, mu, sd, male_or, factor, drug in CHRONIC_NOISE_CONDITIONS:
        out.append(
            _Cond(
                f"noise_{code}",
                ((code, 1.0),),
                p,
                (mu, sd),
                _NOISE_LOAD[factor],
                male_or,
                0.8,
                1.0,
                0.15,
                drugs=((drug, 1.0),) if drug else (),
                p_treat=0.5 if drug else 0.0,
            )
        )
    return tuple(out)


def _tail_profile(code: str) -> _Profile:
    ranges = [r for r in _TAIL_PROFILES if r[0] <= code <= r[1]]
    if not ranges:
        raise ValueError(f"TAIL_CODES: {code} has no chapter profile in _TAIL_PROFILES")
    # Most specific range: the one that starts latest, then ends earliest.
    best = max(ranges, key=lambda r: (r[0], [-ord(ch) for ch in r[1]]))
    return best[2:]


def _tail_conditions() -> tuple[_Cond, ...]:
    """One condition per TAIL_CODES category, with per-code jitter around its chapter profile."""
    rng = np.random.default_rng(_TAIL_TABLE_SEED)
    lo, hi = TAIL_P_EVER
    p_ever = np.exp(rng.uniform(math.log(lo), math.log(hi), len(TAIL_CODES)))
    onset_shift = rng.normal(0.0, 4.0, len(TAIL_CODES))
    or_jitter = np.exp(rng.normal(0.0, 0.25, len(TAIL_CODES)))
    out = []
    for i, code in enumerate(TAIL_CODES):
        mu, sd, male_or, load, delay, p_recur = _tail_profile(code)
        if 0.0 < male_or < _INF:
            male_or *= float(or_jitter[i])
        out.append(
            _Cond(
                f"tail_{code}",
                ((code, 1.0),),
                float(p_ever[i]),
                (mu + float(onset_shift[i]), sd),
                load,
                male_or,
                0.7,
                delay,
                p_recur,
            )
        )
    return tuple(out)


# Column order of the condition table: risk factors, noise, long tail, prodromal, ADRD (last).
_STD = RISK_CONDITIONS + _noise_conditions() + _tail_conditions()
_ALL = _STD + _PRODROMAL + (_ADRD,)
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


def _arr(attr: str, conds: Sequence[_Cond] = _ALL) -> np.ndarray:
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
_PROD_LOGIT = np.log(_arr("p_ever", _PRODROMAL) / (1 - _arr("p_ever", _PRODROMAL)))
_PROD_LOAD = np.array([c.load for c in _PRODROMAL])
_PROD_ONSET = np.array([c.onset for c in _PRODROMAL])
_PROD_LOG_OR = np.log(_arr("male_or", _PRODROMAL))
_PROD_LINK = np.array([PRODROMAL_LINK[c.name] for c in _PRODROMAL])

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


def _simulate(rng: np.random.Generator, n: int, start_d: float, end_excl: float) -> _Latent:
    """Demographics, latent factors, condition onsets, ADRD, death and observation window."""

    # --- Demographics and latent health factors (shared component -> correlated factors).
    male = rng.random(n) < P_MALE
    age0 = np.clip(rng.normal(ENTRY_AGE_MEAN, ENTRY_AGE_SD, n), 35.0, 95.0)
    birth = np.floor(start_d - age0 * YEAR)
    shared = rng.standard_normal(n)
    z = (0.5 * shared[:, None] + math.sqrt(0.75) * rng.standard_normal((n, 3))).astype(np.float32)

    # --- Observation window: first visit, loss to follow-up.
    span = end_excl - start_d
    late = rng.random(n) < P_LATE_ENTRY
    entry = start_d + np.where(late, rng.random(n) * (span - YEAR), rng.exponential(1.0 * YEAR, n))
    entry = _clinic_hours(rng, np.minimum(entry, end_excl - 0.5 * YEAR))
    lost = rng.random(n) < P_LOST_TO_FOLLOW_UP
    ltfu = np.where(lost, entry + rng.exponential(LOST_TO_FOLLOW_UP_MEAN_YEARS * YEAR, n), np.inf)
    entry_age = (entry - birth) / YEAR

    # --- Standard conditions (risk factors + noise): sparse instances of onset ages.
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

    # --- ADRD onset: age-doubling hazard x risk-factor HRs x unobserved frailty.
    log_hr = np.zeros((n, _GRID_AGES.size))
    for col, lhr in zip(_ADRD_HR_COLS, _ADRD_LOG_HR, strict=True):
        log_hr += lhr * _present_on_grid(risk_onset[:, col])
    frailty = rng.normal(-0.5 * ADRD_FRAILTY_SD**2, ADRD_FRAILTY_SD, n)
    frailty += 0.15 * z[:, 2] + np.where(male, 0.0, math.log(ADRD_FEMALE_HR))
    age_term = (_GRID_AGES + 0.5 - 80.0) * math.log(2.0) / ADRD_AGE_DOUBLING_YEARS
    adrd_h = ADRD_BASE_HAZARD_AT_80 * np.exp(age_term[None, :] + log_hr + frailty[:, None])
    adrd_onset = _first_passage(np.minimum(adrd_h, 2.0), rng.exponential(1.0, n))
    del adrd_h, log_hr  # the (n, grid) arrays dominate memory for large chunks

    # --- Death: Gompertz x comorbidity HRs x ADRD, conditional on being alive at entry.
    log_hr = np.zeros((n, _GRID_AGES.size))
    for col in range(_N_RISK):
        log_hr += _DEATH_LOG_HR[col] * _present_on_grid(risk_onset[:, col])
    log_hr += math.log(_ADRD.death_hr) * _present_on_grid(adrd_onset)
    log_hr += 0.3 * z[:, 2:3]
    death_h = DEATH_BASE_HAZARD_AT_65 * np.exp(
        DEATH_GOMPERTZ_SLOPE * (_GRID_AGES + 0.5 - 65.0)[None, :] + log_hr
    )
    target = rng.exponential(1.0, n) + _cum_hazard_at(death_h, entry_age)
    death_age = _first_passage(death_h, target)
    del death_h, log_hr
    # Past the grid (very old entrants): die soon, but never before the first visit.
    fallback = np.maximum(_GRID_AGES[-1] + 1.0, entry_age + 1.0)
    death_age = np.where(np.isfinite(death_age), death_age, fallback)
    death = birth + death_age * YEAR
    obs_end = np.minimum(np.minimum(death, ltfu), end_excl)
    died = death < np.minimum(ltfu, end_excl)
    adrd_onset = np.where(adrd_onset < death_age, adrd_onset, np.inf)

    # --- Prodromal signals: background onset, or 0.5-4 years before ADRD onset.
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
    prod_onset = np.minimum(prod_onset, np.where(linked_on, linked, np.inf))
    return _Latent(
        male, birth, z, entry, obs_end, died, death, death_age, risk_onset, adrd_onset,
        frailty, prod_onset, s_std, c_std, onset_std,
    )  # fmt: skip


def _generate_chunk(
    rng: np.random.Generator, first_subject_id: int, n: int, start: date, end: date
) -> pl.DataFrame:
    """Simulate ``n`` subjects; returns their events sorted by subject and time."""
    start_d = float((start - _EPOCH).days)
    end_excl = float((end - _EPOCH).days + 1)  # events must fall on or before ``end``
    lat = _simulate(rng, n, start_d, end_excl)
    male, birth, z, entry, obs_end, died, death = (
        lat.male, lat.birth, lat.z, lat.entry, lat.obs_end, lat.died, lat.death
    )  # fmt: skip
    risk_onset, adrd_onset, prod_onset = lat.risk_onset, lat.adrd_onset, lat.prod_onset
    s_std, c_std, onset_std = lat.s_std, lat.c_std, lat.onset_std

    # All condition instances: (subject, column, onset age).
    dense = np.concatenate([prod_onset, adrd_onset[:, None]], axis=1)
    s_d, c_d = np.nonzero(np.isfinite(dense))
    inst_s = np.concatenate([s_std, s_d])
    inst_c = np.concatenate([c_std, c_d + _N_STD])
    inst_onset = birth[inst_s] + np.concatenate([onset_std, dense[s_d, c_d]]) * YEAR

    # --- Visits: yearly Poisson counts, rate rising with comorbidity and ADRD.
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
    p_inp = np.clip(P_INPATIENT * np.exp(0.4 * z[v_s, 2] + 0.03 * (v_age - 70.0)), 0.0, 0.3)
    v_inp |= rng.random(v_s.size) < p_inp
    v_end = np.searchsorted(v_s, np.arange(n), side="right")

    # --- Diagnosis codes: first code after a detection delay, then random recurrences.
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

    # --- Drugs follow diagnoses (sometimes a few visits later) and are refilled.
    treat = rng.random(inst_s.size) < _P_TREAT[inst_c]
    d_s, d_c = inst_s[treat], inst_c[treat]
    d_start = first[treat] + np.where(rng.random(d_s.size) < 0.6, 0, rng.geometric(0.5, d_s.size))
    ok = d_start < v_end[d_s]
    d_s, d_c, d_start = d_s[ok], d_c[ok], d_start[ok]
    d_code = _pick(rng, _DRUG_IDS, _DRUG_CUM, d_c)
    rep, refill = _later_visits(rng, d_start, v_end[d_s], np.full(d_s.size, P_DRUG_REFILL))
    rx_visit = np.concatenate([d_start, refill])
    rx_code = np.concatenate([d_code, d_code[rep]])

    # --- Acute/administrative codes per visit (age-dependent mix), some with a drug.
    n_acute = rng.poisson(ACUTE_CODES_PER_VISIT, v_s.size)
    a_visit = np.repeat(np.arange(v_s.size), n_acute)
    band = np.clip(((v_age[a_visit] - _ACUTE_BANDS[0]) // 5).astype(np.int64), 0, None)
    band = np.minimum(band, _ACUTE_BANDS.size - 1)
    group = band + male[v_s[a_visit]] * _ACUTE_BANDS.size
    pos = np.searchsorted(_ACUTE_CUM_FLAT, group + rng.random(a_visit.size), side="right")
    a_idx = pos - group * _ACUTE_IDS.size
    a_drug = _ACUTE_DRUG_IDS[a_idx]
    with_drug = (a_drug >= 0) & (rng.random(a_idx.size) < ACUTE_DRUG_PROB)
    dx_visit = np.concatenate([dx_visit, a_visit])
    dx_code = np.concatenate([dx_code, _ACUTE_IDS[a_idx]])
    rx_visit = np.concatenate([rx_visit, a_visit[with_drug]])
    rx_code = np.concatenate([rx_code, a_drug[with_drug]])

    # --- Labs/vitals: values follow the latent state, disease and treatment.
    lab_visit, lab_code, lab_value = _labs(
        rng, n, z, (inst_s, inst_c, first), (d_s, d_c, d_start), risk_onset, v_s, v_min, v_age
    )

    # --- Assemble.
    subj = np.concatenate(
        [
            np.arange(n),
            np.arange(n),
            v_s,
            v_s[dx_visit],
            v_s[rx_visit],
            v_s[lab_visit],
            np.flatnonzero(died),
        ]
    )
    birth_min = _to_minutes(birth)
    minute = np.concatenate(
        [
            birth_min,
            birth_min,
            v_min,
            v_min[dx_visit],
            v_min[rx_visit],
            v_min[lab_visit],
            _to_minutes(death[died]),
        ]
    )
    code = np.concatenate(
        [
            np.full(n, _ID_BIRTH),
            np.where(male, _ID_M, _ID_F),
            np.where(v_inp, _ID_INP, _ID_OUT),
            dx_code,
            rx_code,
            lab_code,
            np.full(int(died.sum()), _ID_DEATH),
        ]
    ).astype(np.int32)
    rank = np.concatenate(
        [
            np.full(n, _RANK_BIRTH),
            np.full(n, _RANK_SEX),
            np.full(v_s.size, _RANK_VISIT),
            np.full(dx_visit.size, _RANK_DX),
            np.full(rx_visit.size, _RANK_DRUG),
            np.full(lab_visit.size, _RANK_LAB),
            np.full(int(died.sum()), _RANK_DEATH),
        ]
    ).astype(np.int8)
    value = np.concatenate(
        [np.full(subj.size - lab_visit.size - int(died.sum()), np.nan), lab_value,
         np.full(int(died.sum()), np.nan)]
    ).astype(np.float32)  # fmt: skip
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
