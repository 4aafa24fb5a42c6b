"""Quality control of teacher rationales: what a usable rationale is, and how good a finished
rationale file is.

- While generating (:mod:`rationale_bench.teacher.generate`): :class:`QCSettings`
  (``teacher.qc``), :func:`qc_failures` (every check one rationale fails, from
  :data:`QC_REASONS`), :func:`split_answer` (the label-blind teacher's answer line) and
  :func:`flag_near_duplicates` (one text written for many patients).
- On a finished file (rule rationale_qc): :func:`quality_control` (length, grounding in the
  record shown, agreement with the label, per rationale) and :func:`qc_report`.

Grounding (:func:`grounded_fraction`) counts the conditions, drugs and ages a rationale states
that the record holds; a rationale stating none is ungrounded.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import polars as pl

from rationale_bench.data.codes import ATC_DESCRIPTIONS, RISK_FACTORS, code_in
from rationale_bench.teacher import TeacherError

# --------------------------------------------------------------------------------------------
# Quality control of one rationale
# --------------------------------------------------------------------------------------------

# Why a rationale is rejected, in the order they are checked and reported.
QC_REASONS = (
    "empty",
    "refusal",
    "missing_answer",
    "label_leak",
    "too_short",
    "too_long",
    "no_conclusion",
    "ungrounded",
    "label_inconsistent",
    "truncated",
    "near_duplicate",
)
# The teacher refused or answered as a chatbot instead of reasoning about the record.
_REFUSAL = re.compile(
    r"\b(?:i'?m sorry|i am sorry|i (?:cannot|can't|can ?not|am unable to|'m unable to|am not "
    r"able to) (?:provide|help|assist|give|make|determine|answer)|as an (?:ai|artificial "
    r"intelligence|language model))\b",
    re.IGNORECASE,
)
# The rationale states the outcome itself (what the answer after it must carry), rather than
# reasoning towards it: a model trained on it learns to assert outcomes, and the label then
# appears before the reasoning.
_LABEL_LEAK = re.compile(
    r"\b(?:(?:actual|true|known|real) outcome|the outcome (?:was|is)|(?:went on to|later|"
    r"eventually|subsequently) (?:develop|be diagnosed|was diagnosed|received a diagnosis)|"
    r"(?:received|receives|got|was given) a (?:diagnosis|dx) of (?:alzheimer|dementia|adrd)|"
    r"(?:did not|didn't|never) (?:receive|develop|get) (?:a diagnosis|alzheimer|dementia|adrd)|"
    r"was (?:later )?diagnosed with (?:alzheimer|dementia|adrd))",
    re.IGNORECASE,
)
_ANSWER_LINE = re.compile(
    r"^\W*(?:final\s+)?(?:answer|prediction)\W*\s*[:\-]?\s*\**\s*(yes|no)\b", re.IGNORECASE
)
# "Yes." / "No, ..." as the opening words: the answer given before any reasoning. ("No
# cognitive symptoms..." is reasoning, hence the punctuation.)
_OPENS_WITH_ANSWER = re.compile(r"^\W*(?:yes|no)\s*[.,:;!\n]", re.IGNORECASE)
_CONCLUSION_STEP = re.compile(r"^\s*\d+\s*[.)]\s*\**\s*conclusion\b", re.IGNORECASE)


@dataclass(frozen=True)
class QCSettings:
    """`teacher.qc` in the config: what a usable rationale is and what to do with the rest."""

    min_words: int = 20
    max_words: int = 400
    min_grounded_fraction: float = 1.0
    max_attempts: int = 3  # generations per subject and prompt, the first included
    regenerate_temperature: float = 0.7
    on_failure: str = "keep"  # keep (flagged qc_pass=false) or drop
    max_duplicate_share: float = 0.05  # near-duplicates above this share of a style: flagged
    length_retry_factor: float = 2.0  # max_tokens x this per regeneration of a cut-off text

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> QCSettings:
        qc = dict(cfg.get("qc") or {})
        unknown = set(qc) - {f.name for f in fields(cls)}
        if unknown:
            raise TeacherError(f"teacher.qc has unknown keys {sorted(unknown)}")
        settings = cls(**qc)
        if settings.on_failure not in ("keep", "drop"):
            raise TeacherError(
                f"teacher.qc.on_failure must be 'keep' or 'drop', got {settings.on_failure!r}"
            )
        if settings.max_attempts < 1 or settings.min_words > settings.max_words:
            raise TeacherError(
                "teacher.qc needs max_attempts >= 1 and min_words <= max_words "
                f"(got {settings.max_attempts}, {settings.min_words}, {settings.max_words})"
            )
        return settings


def split_answer(text: str) -> tuple[str, bool | None]:
    """(rationale without its final 'Answer: Yes/No' line, the answer or None if absent)."""
    lines = text.rstrip().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if lines:
        match = _ANSWER_LINE.match(lines[-1])
        if match:
            return "\n".join(lines[:-1]).strip(), match.group(1).lower() == "yes"
    return text.strip(), None


def qc_failures(
    text: str,
    style: str,
    label: bool,
    codes: Sequence[str],
    settings: QCSettings,
    age: float | None = None,
    finish_reason: str | None = None,
) -> list[str]:
    """Every QC check a rationale fails (names from QC_REASONS); empty when it is usable.

    ``codes`` and ``age`` are what the teacher was shown; a rationale naming none of them
    fails grounding. ``finish_reason`` 'length' (cut off at max_tokens) fails as truncated.
    """
    if not text.strip():
        return ["empty"]
    failures = []
    if _REFUSAL.search(text):
        failures.append("refusal")
    if _LABEL_LEAK.search(text) or _OPENS_WITH_ANSWER.match(text) or _ANSWER_LINE.match(text):
        failures.append("label_leak")
    words = len(text.split())
    if words < settings.min_words:
        failures.append("too_short")
    if words > settings.max_words:
        failures.append("too_long")
    if style == "step_by_step":
        lines = [x for x in text.strip().splitlines() if x.strip()]
        if not lines or not _CONCLUSION_STEP.match(lines[-1]):
            failures.append("no_conclusion")
    if grounded_fraction(text, codes, age) < settings.min_grounded_fraction:
        failures.append("ungrounded")
    direction = conclusion_direction(text)
    if direction is not None and direction != bool(label):
        failures.append("label_inconsistent")
    if finish_reason == "length":
        failures.append("truncated")
    return failures


_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def near_duplicate_key(text: str) -> str:
    """The text with case, numbers and spacing made uniform: two rationales with the same key
    say the same thing whatever the patient's age or counts."""
    return " ".join(_NUMBER.sub("#", text.lower()).split())


def flag_near_duplicates(
    table: pl.DataFrame, report: Mapping[str, Any], qc: QCSettings
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Flag every rationale whose near-duplicate group (:func:`near_duplicate_key`) holds more
    than ``qc.max_duplicate_share`` of the style's rationales: it fails QC as
    'near_duplicate', and is kept flagged or dropped per ``qc.on_failure``. Not regenerated: a
    teacher that writes one text for many patients needs other prompts, not another draw."""
    keys = table["rationale"].map_elements(near_duplicate_key, return_dtype=pl.String)
    sizes = keys.to_frame("key").group_by("key").len()
    size = keys.to_frame("key").join(sizes, on="key", how="left")["len"]
    flagged = size > max(1.0, qc.max_duplicate_share * table.height)
    out = dict(report)
    n_flagged = int(flagged.sum())
    out["near_duplicates"] = n_flagged
    if not n_flagged:
        return table, out
    failures = (
        pl.when(pl.col("qc_failures").is_null())
        .then(pl.lit("near_duplicate"))
        .otherwise(pl.col("qc_failures") + ",near_duplicate")
    )
    passing = int((table["qc_pass"] & flagged).sum())
    marked = table.with_columns(
        qc_pass=pl.when(flagged).then(False).otherwise(pl.col("qc_pass")),
        qc_failures=pl.when(flagged).then(failures).otherwise(pl.col("qc_failures")),
        source=pl.when(flagged).then(pl.lit("failed_qc")).otherwise(pl.col("source")),
    )
    out["qc_pass"] = report["qc_pass"] - passing
    final = Counter(report.get("final_failures", {}))
    final["near_duplicate"] += n_flagged
    out["final_failures"] = ordered_reasons(final)
    if qc.on_failure == "drop":
        marked = marked.filter(~flagged)
        dropped = Counter(report.get("dropped_by_reason", {}))
        dropped["near_duplicate"] += n_flagged
        out.update(
            kept=marked.height,
            dropped=report["dropped"] + n_flagged,
            dropped_by_reason=ordered_reasons(dropped),
        )
    else:
        out["kept_failing_qc"] = report["kept_failing_qc"] + passing
    return marked, out


def ordered_reasons(counts: Counter[str]) -> dict[str, int]:
    """Counts per reason, the known reasons first in their order, then any others sorted."""
    known = [r for r in (*QC_REASONS, "disagrees_with_label") if counts.get(r)]
    return {r: counts[r] for r in known + sorted(set(counts) - set(known))}


def usage_cost(usage: Mapping[str, Any], price: Mapping[str, float] | None) -> dict[str, Any]:
    """Cost of this run's tokens and of all tokens behind the rationales, per million tokens."""
    if not price or all(price.get(k) is None for k in ("input", "output")):
        return {"cost_this_run": None, "cost_total": None}
    per_input, per_output = price.get("input") or 0.0, price.get("output") or 0.0

    def cost(prompt: int, completion: int) -> float:
        return round((prompt * per_input + completion * per_output) / 1e6, 6)

    return {
        "cost_this_run": cost(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)),
        "cost_total": cost(
            usage.get("total_prompt_tokens", 0), usage.get("total_completion_tokens", 0)
        ),
    }


# --------------------------------------------------------------------------------------------
# QC table of a finished rationale file
# --------------------------------------------------------------------------------------------
# How rationales (an LLM's above all) name the risk factors, besides their labels. Matched as
# whole words, case-insensitively.
_RISK_WORDINGS: dict[str, tuple[str, ...]] = {
    "hypertension": ("high blood pressure", "hypertensive"),
    "type2_diabetes": ("diabetes", "diabetic", "t2dm"),
    "hyperlipidaemia": (
        "hyperlipidaemia",
        "hyperlipidemia",
        "dyslipidaemia",
        "dyslipidemia",
        "high cholesterol",
        "hypercholesterolaemia",
        "hypercholesterolemia",
    ),
    "obesity": ("obese",),
    "depression": ("depressive",),
    "hearing_loss": ("hearing impairment", "deafness"),
    "vision_loss": ("visual impairment", "blindness"),
    "stroke": ("cerebral infarction", "cerebrovascular accident"),
    "tbi": ("head injury", "tbi"),
    "smoking": ("smoker", "tobacco"),
    "alcohol": ("alcohol",),
    "atrial_fibrillation": ("afib",),
    "ckd": ("ckd", "kidney disease"),
    "sleep_apnoea": ("sleep apnea",),
    "social_isolation": ("socially isolated",),
    "physical_inactivity": ("sedentary",),
    "memory_complaint": ("memory complaints", "memory loss", "forgetfulness"),
    "cognitive_symptoms": ("disorientation", "amnesia", "altered mental status"),
    "mci": ("mci",),
}
# Drug names (and a few classes) a rationale may cite -> the ATC prefixes that ground them.
_DRUG_WORDINGS: dict[str, tuple[str, ...]] = {
    "statin": ("ATC/C10AA",),
    "anticoagulant": ("ATC/B01AA", "ATC/B01AF"),
    "antidepressant": ("ATC/N06A",),
    "cholinesterase inhibitor": ("ATC/N06DA",),
    "aspirin": ("ATC/B01AC06",),
    "nitroglycerin": ("ATC/C01DA02",),
    "alendronate": ("ATC/M05BA04",),
    "insulin": ("ATC/A10A",),
}
for _code, _name in ATC_DESCRIPTIONS.items():
    for _part in re.split(r" and | \(|\)", _name):
        _word = _part.strip().removesuffix(" sodium")
        if len(_word) > 3 and _word not in ("eye drops", "topical"):  # forms, not drugs
            _DRUG_WORDINGS.setdefault(_word, ())
            _DRUG_WORDINGS[_word] += (f"ATC/{_code}",)
_NEGATION = re.compile(
    r"\b(?:no|not|without|absence of|absent|denies|negative for|none of|free of|lacks?|never)\b",
    re.IGNORECASE,
)


def _mention_pattern(words: Sequence[str]) -> re.Pattern[str]:
    alternatives = sorted({w.lower() for w in words}, key=len, reverse=True)
    return re.compile(
        r"(?<![\w-])(?:" + "|".join(re.escape(w) for w in alternatives) + r")(?![\w-])",
        re.IGNORECASE,
    )


_MENTIONS: list[tuple[str, re.Pattern[str], tuple[str, ...]]] = [
    (f"risk:{f.name}", _mention_pattern([f.label, *_RISK_WORDINGS.get(f.name, ())]), f.prefixes)
    for f in RISK_FACTORS.values()
] + [(f"drug:{w}", _mention_pattern([w]), prefixes) for w, prefixes in _DRUG_WORDINGS.items()]


def _asserted(text: str, start: int) -> bool:
    """False when the mention is negated in its own clause ("no history of stroke")."""
    before = re.split(r"[.;:!?\n]", text[max(0, start - 60) : start])[-1]
    return not _NEGATION.search(before)


def named_entities(rationale: str) -> list[tuple[str, tuple[str, ...]]]:
    """The conditions and drugs a rationale says the patient has: (name, grounding prefixes).
    Negated mentions ("no diabetes") claim nothing and are left out."""
    return [
        (name, prefixes)
        for name, pattern, prefixes in _MENTIONS
        if any(_asserted(rationale, m.start()) for m in pattern.finditer(rationale))
    ]


# "72-year-old", "72 year old", "aged 72", "age 72", "age of 72": the age a rationale states.
_AGE_STATED = re.compile(
    r"\b(\d{2,3})[- ]years?[- ]old\b|\baged? (?:of )?(\d{2,3})\b", re.IGNORECASE
)


def stated_ages(rationale: str) -> list[int]:
    return [int(a or b) for a, b in _AGE_STATED.findall(rationale)]


def grounded_fraction(rationale: str, codes: Sequence[str], age: float | None = None) -> float:
    """Share of the facts a rationale states about the patient that the record shown holds:
    the conditions and drugs it names (risk factors by their label or a common wording, drugs
    from the code dictionary), each present in ``codes``, and, when ``age`` is given, each age
    it states (within a year of ``age``).

    0.0 when it states no such fact: a rationale that could be about anyone ("age and
    comorbidity raise the risk") explains nothing about this patient.
    """
    named = named_entities(rationale)
    present = sum(1 for _, prefixes in named if any(code_in(c, prefixes) for c in codes))
    ages = stated_ages(rationale) if age is not None else []
    right_ages = sum(1 for a in ages if abs(a - float(age)) < 1.5)  # type: ignore[arg-type]
    if not named and not ages:
        return 0.0
    return (present + right_ages) / (len(named) + len(ages))


def conclusion_direction(rationale: str) -> bool | None:
    """True / False when the rationale's last sentence says the outcome is more / less likely."""
    sentences = [x for x in rationale.replace("\n", ". ").split(".") if x.strip()]
    last = sentences[-1].lower() if sentences else ""
    more, less = "more likely" in last, "less likely" in last
    return more if more != less else None


def quality_control(rationales: pl.DataFrame, histories: pl.DataFrame) -> pl.DataFrame:
    """Per rationale: length, grounding in the subject's record, agreement with its label, and
    (for files written by `generate_rationales`) the generation's QC verdict and attempts."""
    codes = dict(histories.select("subject_id", "codes").iter_rows())
    ages = dict(histories.select("subject_id", "age").iter_rows())
    groups = Counter(near_duplicate_key(t) for t in rationales["rationale"])
    rows = []
    for sid, style, label, text in rationales.select(
        "subject_id", "style", "label", "rationale"
    ).iter_rows():
        direction = conclusion_direction(text)
        rows.append(
            {
                "subject_id": sid,
                "style": style,
                "label": label,
                "n_words": len(text.split()),
                "grounded_fraction": grounded_fraction(text, codes.get(sid, []), ages.get(sid)),
                "label_consistent": None if direction is None else direction == bool(label),
                "duplicate_share": groups[near_duplicate_key(text)] / max(1, rationales.height),
            }
        )
    table = pl.DataFrame(
        rows,
        schema={
            "subject_id": pl.Int64,
            "style": pl.String,
            "label": pl.Boolean,
            "n_words": pl.Int32,
            "grounded_fraction": pl.Float64,
            "label_consistent": pl.Boolean,
            "duplicate_share": pl.Float64,
        },
    )
    verdict = {
        "source": pl.String,
        "attempts": pl.Int32,
        "qc_pass": pl.Boolean,
        "qc_failures": pl.String,
        "finish_reason": pl.String,
    }
    extra = [
        (rationales[c] if c in rationales.columns else pl.Series(c, [None] * table.height))
        .cast(dtype)
        .alias(c)
        for c, dtype in verdict.items()
    ]
    return table.with_columns(extra)


def qc_report(
    qc: pl.DataFrame,
    generation: Mapping[str, Any],
    price: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The QC report of one teacher/style: the generation's counts (kept, regenerated, dropped
    per reason, label-blind outcomes), usage and cost, and the distribution of the checks."""
    words = qc["n_words"].cast(pl.Float64)
    consistent = qc["label_consistent"].drop_nulls()
    report = dict(generation)
    report["usage"] = {**dict(generation.get("usage") or {})}
    report["usage"].update(usage_cost(report["usage"], price))
    report["distribution"] = {
        "rationales": qc.height,
        "words_mean": _round(words.mean()),
        "words_p05": _round(words.quantile(0.05)),
        "words_median": _round(words.median()),
        "words_p95": _round(words.quantile(0.95)),
        "grounded_fraction_mean": _round(qc["grounded_fraction"].mean()),
        "fully_grounded_share": _round((qc["grounded_fraction"] >= 1.0).mean()),
        "label_consistent_share": _round(consistent.mean()) if consistent.len() else None,
        "conclusion_undetermined": qc.height - consistent.len(),
        "naming_no_fact": int((qc["grounded_fraction"] == 0.0).sum()),
        "largest_duplicate_share": _round(qc["duplicate_share"].max()),
        "truncated": int((qc["finish_reason"] == "length").sum()),
    }
    return report


def _round(value: Any) -> float | None:
    return None if value is None else round(float(value), 4)
