"""Tests for code lists, prefix matching and code descriptions."""

from __future__ import annotations

import dataclasses

import polars as pl
import pytest

from rationale_bench.data.codes import (
    ADRD_CODE_PREFIXES,
    ANTI_DEMENTIA_DRUG_PREFIXES,
    RISK_FACTORS,
    RiskFactor,
    code_in,
    describe,
    describe_many,
    matches_any,
)


def test_adrd_prefixes_match_by_prefix() -> None:
    for code in ("ICD10/F03.90", "ICD10/F03.A0", "ICD10/G30.9", "ICD10/G31.01", "ICD10/G31.83"):
        assert code_in(code, ADRD_CODE_PREFIXES), code
    for code in ("ICD10/G31.84", "ICD10/G31.2", "ICD10/R41.3", "ICD10/F32.9", "ATC/N06DA02"):
        assert not code_in(code, ADRD_CODE_PREFIXES), code
    assert code_in("ATC/N06DA02", ANTI_DEMENTIA_DRUG_PREFIXES)
    assert code_in("ATC/N06DX01", ANTI_DEMENTIA_DRUG_PREFIXES)
    assert not code_in("ATC/N06DX02", ANTI_DEMENTIA_DRUG_PREFIXES)  # ginkgo
    assert not code_in("ATC/N06AB06", ANTI_DEMENTIA_DRUG_PREFIXES)


def test_risk_factor_table() -> None:
    assert len(RISK_FACTORS) == 20
    for name, rf in RISK_FACTORS.items():
        assert isinstance(rf, RiskFactor) and rf.name == name
        assert rf.direction in ("risk", "prodromal")
        assert rf.prefixes and all(p.startswith("ICD10/") for p in rf.prefixes)
        assert rf.label and rf.note
        # Risk factors never overlap the outcome definition.
        assert not any(code_in(p, ADRD_CODE_PREFIXES) for p in rf.prefixes)
    prodromal = {n for n, rf in RISK_FACTORS.items() if rf.direction == "prodromal"}
    assert prodromal == {"memory_complaint", "cognitive_symptoms", "mci", "falls"}
    assert RISK_FACTORS["hypertension"].label == "hypertension"
    with pytest.raises(dataclasses.FrozenInstanceError):
        RISK_FACTORS["hypertension"].label = "x"  # type: ignore[misc]


def risk_factors_in(codes) -> list[str]:
    """The risk factors the consumers find (Table 1 and the template teacher match each
    factor's prefixes with code_in / matches_any), in RISK_FACTORS order."""
    codes = list(codes)
    return [
        name for name, rf in RISK_FACTORS.items() if any(code_in(c, rf.prefixes) for c in codes)
    ]


def test_risk_factors_are_stable_and_prefix_based() -> None:
    codes = ["ICD10/R41.3", "ICD10/F32.9", "ICD10/I10", "ATC/C10AA05", "ICD10/I10"]
    assert risk_factors_in(codes) == ["hypertension", "depression", "memory_complaint"]
    assert risk_factors_in(reversed(codes)) == risk_factors_in(codes)
    assert risk_factors_in(["ICD10/G31.84", "ICD10/R41.82", "ICD10/W19"]) == [
        "cognitive_symptoms",
        "mci",
        "falls",
    ]
    assert risk_factors_in(["ICD10/Z72.0"]) == ["smoking"]
    assert risk_factors_in(["ICD10/Z72.3"]) == ["physical_inactivity"]
    assert risk_factors_in(["ICD10/I20", "LAB/LDL", "MEDS_BIRTH"]) == []
    assert risk_factors_in([]) == []


def test_matches_any_vectorised() -> None:
    df = pl.DataFrame({"code": ["ICD10/F03.90", "ICD10/G31.84", None, "ICD10/G30.1", "ATC/X"]})
    out = df.select(matches_any(pl.col("code"), ADRD_CODE_PREFIXES).alias("m"))["m"]
    assert out.to_list() == [True, False, False, True, False]
    empty = df.select(matches_any(pl.col("code"), []).alias("m"))["m"]
    assert not empty.any()
    # Agrees with the scalar helper.
    codes = [c for c in df["code"].to_list() if c]
    lazy = pl.LazyFrame({"code": codes}).select(matches_any(pl.col("code"), ["ICD10/G3"]))
    assert lazy.collect().to_series().to_list() == [code_in(c, ["ICD10/G3"]) for c in codes]


def test_describe_icd10() -> None:
    assert describe("ICD10/I10") == "Essential (primary) hypertension"
    assert describe("ICD10/E11.9") == "Type 2 diabetes mellitus without complications"
    assert describe("ICD10/F03") == "Unspecified dementia"
    # ICD-10-CM codes unknown to WHO ICD-10: the ICD-10-CM package, with the 2023 severity codes.
    assert describe("ICD10/F03.90").startswith("Unspecified dementia, unspecified severity")
    assert describe("ICD10/G31.84") == "Mild cognitive impairment of uncertain or unknown etiology"
    assert "lewy" in describe("ICD10/G31.83").lower()
    assert describe("ICD10/F03.A0").startswith("Unspecified dementia, mild, without")
    assert describe("ICD10/F01.A11") == "Vascular dementia, mild, with agitation"
    assert describe("ICD10/E11.65") == "Type 2 diabetes mellitus with hyperglycemia"
    # In neither: the longest WHO parent.
    assert describe("ICD10/F03.Z9") == "Unspecified dementia"
    assert describe("ICD10/E11.699") == describe("ICD10/E11.6")


def test_describe_other_vocabularies() -> None:
    assert describe("ATC/N06DA02") == "donepezil"
    # A substance without a listed name: its therapeutic group, marked as such.
    assert describe("ATC/N06AB04") == "antidepressant (unlisted substance)"
    assert describe("ATC/C10AA99") == "lipid modifying agent (unlisted substance)"
    assert describe("ATC/Q01AA01") is None
    assert describe("ATC/N06DX01") == "memantine"
    assert describe("ATC/A10BA02") == "metformin"
    assert "LDL" in describe("LAB/LDL")
    assert describe("SEX/F") == "female sex"
    assert describe("MEDS_DEATH") == "death"
    assert describe("VISIT/INPATIENT") == "inpatient admission"


@pytest.mark.parametrize(
    "code", ["ICD10/XYZ", "ICD10/", "ATC/Z99ZZ99", "LAB/NOPE", "FOO/BAR", "", "I10", "SEX/X"]
)
def test_describe_unknown_is_none(code: str) -> None:
    assert describe(code) is None


def test_describe_many_and_cache() -> None:
    out = describe_many(["ICD10/I10", "ATC/N06DA02", "ICD10/I10", "BAD/1"])
    assert list(out) == ["ICD10/I10", "ATC/N06DA02", "BAD/1"]
    assert out["BAD/1"] is None
    describe("ICD10/I10")
    assert describe.cache_info().hits > 0
