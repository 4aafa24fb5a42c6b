"""The clinical tables of the synthetic generator (:mod:`rationale_bench.data.synthetic`).

Conditions with their codes, prevalences, onset ages, latent-factor loadings, drugs and hazard
ratios; the ADRD hazard model's parameters; prodromal signals; the background chronic, acute and
long-tail ICD-10 codes; observation, utilisation and mortality parameters. Sources:
docs/references.md (the Lancet Commission 2024). The values were tuned so that a 5-year
prediction task built on the data is realistically hard (logistic-regression AUROC ~0.75) with
5-10 % cases; changing any of them changes every synthetic dataset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Condition:
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


_FR = (0.0, 0.0, 1.0)  # loads on the frailty factor only

# --- Risk-factor conditions (docs/references.md, EHR proxies; prevalences are rough population
# figures for people reaching old age, onset ages from typical epidemiology).
RISK_CONDITIONS: tuple[Condition, ...] = (
    Condition("hypertension", (("I10", 0.9), ("I11.9", 0.05), ("I12.9", 0.05)), 0.55, (58, 12),
              (0.8, 0.0, 0.2), 1.2, 0.9, 0.5, 0.4,
              drugs=(("C09AA05", 0.35), ("C08CA01", 0.35), ("C03AA03", 0.15), ("C09CA01", 0.15)),
              p_treat=0.8, death_hr=1.1),
    Condition("type2_diabetes", (("E11.9", 0.8), ("E11.2", 0.1), ("E11.4", 0.1)), 0.22, (60, 11),
              (1.0, 0.0, 0.2), 1.3, 0.9, 0.5, 0.45,
              drugs=(("A10BA02", 0.75), ("A10BB12", 0.15), ("A10AE04", 0.1)), p_treat=0.85,
              death_hr=1.4),
    Condition("hyperlipidaemia", (("E78.5", 0.7), ("E78.0", 0.2), ("E78.2", 0.1)), 0.45, (57, 11),
              (0.7, 0.0, 0.0), 1.1, 0.8, 1.0, 0.3,
              drugs=(("C10AA05", 0.7), ("C10AA01", 0.3)), p_treat=0.7),
    Condition("obesity", (("E66.9", 0.8), ("E66.0", 0.2)), 0.3, (50, 14), (0.9, 0.2, 0.0), 1.0,
              0.6, 1.0, 0.25, death_hr=1.1),
    Condition("depression", (("F32.9", 0.6), ("F33.9", 0.2), ("F32.1", 0.2)), 0.2, (50, 16),
              (0.0, 1.0, 0.2), 0.55, 0.8, 1.0, 0.3,
              drugs=(("N06AB06", 0.5), ("N06AB10", 0.35), ("N06AX11", 0.15)), p_treat=0.7,
              death_hr=1.2),
    Condition("hearing_loss", (("H90.3", 0.4), ("H91.9", 0.35), ("H91.1", 0.25)), 0.3, (72, 9),
              (0.0, 0.0, 0.5), 1.4, 0.5, 1.5, 0.15),
    Condition("vision_loss", (("H54.2", 0.7), ("H54.4", 0.3)), 0.1, (76, 9), (0.2, 0.0, 0.6), 1.0,
              0.6, 1.0, 0.15, death_hr=1.1),
    Condition("stroke", (("I63.9", 0.7), ("I64", 0.3)), 0.12, (75, 10), (0.8, 0.0, 0.4), 1.3,
              0.95, 0.5, 0.25, followup=(("I69.3", 0.6), ("I69.4", 0.4)),
              drugs=(("B01AC06", 0.6), ("B01AC04", 0.4)), p_treat=0.85, acute=True, death_hr=1.8),
    Condition("tbi", (("S06.0", 0.7), ("S06.9", 0.3)), 0.06, (60, 22), (0.0, 0.3, 0.5), 1.6, 0.9,
              0.5, 0.05, acute=True, death_hr=1.2),
    Condition("smoking", (("F17.2", 0.5), ("Z72.0", 0.5)), 0.25, (22, 5), (0.3, 0.5, 0.0), 1.5,
              0.6, 2.0, 0.2, drugs=(("N07BA01", 1.0),), p_treat=0.15, death_hr=1.6),
    Condition("alcohol", (("F10.2", 0.5), ("F10.1", 0.5)), 0.07, (40, 12), (0.0, 0.8, 0.2), 2.5,
              0.6, 2.0, 0.2, death_hr=1.6),
    Condition("atrial_fibrillation", (("I48.9", 0.7), ("I48.0", 0.3)), 0.14, (75, 9),
              (0.6, 0.0, 0.3), 1.5, 0.9, 0.5, 0.35,
              drugs=(("B01AF01", 0.4), ("B01AF02", 0.3), ("B01AA03", 0.3)), p_treat=0.75,
              death_hr=1.4),
    Condition("ckd", (("N18.3", 0.6), ("N18.4", 0.1), ("N18.9", 0.3)), 0.15, (74, 9),
              (0.8, 0.0, 0.4), 1.1, 0.7, 1.0, 0.3, death_hr=1.6),
    Condition("sleep_apnoea", (("G47.3", 1.0),), 0.08, (55, 12), (0.8, 0.0, 0.0), 2.2, 0.7, 1.0,
              0.2),
    Condition("social_isolation", (("Z60.2", 0.7), ("Z60.4", 0.3)), 0.1, (72, 10), (0.0, 0.7, 0.4),
              1.0, 0.35, 1.0, 0.1, death_hr=1.2),
    Condition("physical_inactivity", (("Z72.3", 1.0),), 0.15, (60, 15), (0.5, 0.3, 0.3), 1.0, 0.3,
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
ADRD_CONDITION = Condition(
    "adrd", ADRD_DIAGNOSIS_CODES, 0.0, (0.0, 0.0), p_coded=0.9, delay=1.0, p_recur=0.5,
    drugs=ANTI_DEMENTIA_DRUGS, p_treat=0.55, death_hr=2.2,
)  # fmt: skip

# Prodromal signals (docs/references.md): a background onset for everybody plus a "linked"
# onset 0.5-4 years before ADRD onset with the given probability.
PRODROMAL_CONDITIONS: tuple[Condition, ...] = (
    Condition("memory_complaint", (("R41.3", 1.0),), 0.06, (76, 8), _FR, 1.0, 0.8, 0.3, 0.2),
    Condition("cognitive_symptoms", (("R41.0", 0.4), ("R41.82", 0.4), ("R41.8", 0.2)), 0.04,
              (78, 8), _FR, 1.0, 0.8, 0.3, 0.15),
    Condition("mci", (("G31.84", 0.6), ("F06.7", 0.4)), 0.02, (75, 7), _FR, 1.0, 0.8, 0.3, 0.25),
    Condition("falls", (("R29.6", 0.4), ("W19", 0.6)), 0.15, (78, 8), (0.0, 0.0, 0.8), 0.8, 0.7,
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
NOISE_FACTOR_LOADINGS = {"": (0.0, 0.0, 0.0), "cm": (0.6, 0.0, 0.0), "mh": (0.0, 0.6, 0.0),
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
TAIL_TABLE_SEED = 0x1CD10
# (first code, last code) -> onset mean, onset sd, male OR (0 women only, inf men only),
# loading on (cardiometabolic, mental health, frailty), years to first code, recurrence.
# The most specific (shortest) range containing a code wins.
TailProfile = tuple[float, float, float, tuple[float, float, float], float, float]
TAIL_PROFILES: tuple[tuple[str, str, *TailProfile], ...] = (
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


def noise_conditions() -> tuple[Condition, ...]:
    out = []
    for code, p, mu, sd, male_or, factor, drug in CHRONIC_NOISE_CONDITIONS:
        out.append(
            Condition(
                f"noise_{code}",
                ((code, 1.0),),
                p,
                (mu, sd),
                NOISE_FACTOR_LOADINGS[factor],
                male_or,
                0.8,
                1.0,
                0.15,
                drugs=((drug, 1.0),) if drug else (),
                p_treat=0.5 if drug else 0.0,
            )
        )
    return tuple(out)


def tail_profile(code: str) -> TailProfile:
    ranges = [r for r in TAIL_PROFILES if r[0] <= code <= r[1]]
    if not ranges:
        raise ValueError(f"TAIL_CODES: {code} has no chapter profile in TAIL_PROFILES")
    # Most specific range: the one that starts latest, then ends earliest.
    best = max(ranges, key=lambda r: (r[0], [-ord(ch) for ch in r[1]]))
    return best[2:]


def tail_conditions() -> tuple[Condition, ...]:
    """One condition per TAIL_CODES category, with per-code jitter around its chapter profile."""
    rng = np.random.default_rng(TAIL_TABLE_SEED)
    lo, hi = TAIL_P_EVER
    p_ever = np.exp(rng.uniform(math.log(lo), math.log(hi), len(TAIL_CODES)))
    onset_shift = rng.normal(0.0, 4.0, len(TAIL_CODES))
    or_jitter = np.exp(rng.normal(0.0, 0.25, len(TAIL_CODES)))
    out = []
    for i, code in enumerate(TAIL_CODES):
        mu, sd, male_or, load, delay, p_recur = tail_profile(code)
        if 0.0 < male_or < _INF:
            male_or *= float(or_jitter[i])
        out.append(
            Condition(
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
