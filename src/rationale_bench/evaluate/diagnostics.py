"""Mechanism diagnostics of one configuration's held-out predictions, and the validity gates.

A held-out AUROC means something only when the model behind it works as a model of its format:
it reaches the answer slot on its own, writes rationales that differ between patients, describes
the patient it was shown, and was trained until its losses came down. These diagnostics measure
each of those at evaluation (into metrics.json), and :func:`validity` turns them into a verdict
with reasons, from thresholds in the config (``validity.*``), so that the report can leave a
degenerate configuration out of its headline instead of averaging it in.

Measures (each a plain number; None where it does not apply, e.g. no rationale is generated):

* compliance: answer slot reached without forcing, parse failures at the slot, stated answers;
* collapse: distinct generations, the most common generation's share, distinct word bigrams
  (distinct-2), word-for-word copies of a training rationale, degenerate repetition loops;
* faithfulness of the model's own rationale: the patient's actual age and sex stated, named
  risk factors and drugs present in the prompt the model saw, and those absent (hallucinated);
* conclusion-answer agreement: the rationale's stated direction ("more/less likely") against
  the answer the model then gives;
* prediction spread: how much P(Yes) varies across patients;
* training adequacy (from run.json): final completion and answer-token losses, tuning losses.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from rationale_bench.data.codes import code_in

# "72-year-old", "72 year old", "aged 72", "age 72".
_AGE = re.compile(r"\b(\d{2,3})[- ]year[- ]old\b|\bage(?:d)?:? (\d{2,3})\b", re.IGNORECASE)
_SEX_WORDS = {
    "F": ("woman", "female", "lady"),
    "M": ("man", "male", "gentleman"),
}
_SEX = {
    sex: re.compile(r"\b(?:" + "|".join(words) + r")\b", re.IGNORECASE)
    for sex, words in _SEX_WORDS.items()
}
# A loop such as "pical pical pical" or "5.\n5.\n5.": one word repeated this many times in a row.
REPEAT_RUN = 4


def _normalise(text: str) -> str:
    return " ".join(text.split()).lower()


def _share(count: float, total: int) -> float | None:
    return float(count) / total if total else None


def compliance(
    forced: Sequence[bool], parsed: Sequence[bool | None], rationale_first: bool
) -> dict[str, Any]:
    """How often the model reached the answer slot itself and stated a parseable answer.

    ``forced[i]`` is True when the model never wrote the answer prefix and was forced to it;
    ``parsed[i]`` the greedy answer at the slot (None: neither answer word was the top token).
    """
    n = len(parsed)
    stated = Counter("none" if p is None else "yes" if p else "no" for p in parsed)
    return {
        "n_scored": n,
        "answer_slot_rate": _share(n - sum(map(bool, forced)), n) if rationale_first else 1.0,
        "parse_failure_rate": _share(stated["none"], n),
        "stated_yes_rate": _share(stated["yes"], n),
        "stated_no_rate": _share(stated["no"], n),
    }


def _has_repeat_loop(words: Sequence[str]) -> bool:
    run = 1
    for previous, word in zip(words, words[1:], strict=False):
        run = run + 1 if word == previous else 1
        if run >= REPEAT_RUN:
            return True
    return False


def collapse(texts: Sequence[str], training_texts: Iterable[str] = ()) -> dict[str, Any]:
    """Whether generations collapsed onto a few templates or loops.

    ``distinct_2`` is the number of distinct word bigrams over all bigrams (Li et al. 2016);
    ``training_copy_share`` the share of generations identical (whitespace and case aside) to
    a rationale the model was trained on.
    """
    if not texts:
        return {k: None for k in COLLAPSE_KEYS}
    normal = [_normalise(t) for t in texts]
    counts = Counter(normal)
    bigrams: Counter[tuple[str, str]] = Counter()
    loops = 0
    for text in normal:
        words = text.split()
        bigrams.update(zip(words, words[1:], strict=False))
        loops += _has_repeat_loop(words)
    training = {_normalise(t) for t in training_texts}
    n = len(normal)
    return {
        "distinct_generation_share": len(counts) / n,
        "top_generation_share": counts.most_common(1)[0][1] / n,
        "distinct_2": len(bigrams) / sum(bigrams.values()) if bigrams else 0.0,
        "training_copy_share": sum(t in training for t in normal) / n,
        "repetition_loop_share": loops / n,
        "empty_generation_share": sum(not t for t in normal) / n,
    }


COLLAPSE_KEYS = (
    "distinct_generation_share",
    "top_generation_share",
    "distinct_2",
    "training_copy_share",
    "repetition_loop_share",
    "empty_generation_share",
)


def stated_age(text: str) -> int | None:
    match = _AGE.search(text)
    if not match:
        return None
    return int(match.group(1) or match.group(2))


def stated_sex(text: str) -> str | None:
    """'F' or 'M' when the text names exactly one sex, else None."""
    found = [sex for sex, pattern in _SEX.items() if pattern.search(text)]
    return found[0] if len(found) == 1 else None


def faithfulness(
    texts: Sequence[str],
    ages: Sequence[float],
    sexes: Sequence[str],
    visible_codes: Sequence[Sequence[str]] | None,
) -> dict[str, Any]:
    """Does each rationale describe the patient the model was shown?

    ``visible_codes[i]`` are the codes in patient i's prompt (after truncation): a named risk
    factor or drug counts as present when one of its codes is among them, as hallucinated
    otherwise. Negated mentions ("no diabetes") claim nothing and are not counted. Without
    ``visible_codes`` only age and sex are checked.
    """
    from rationale_bench.teacher.qc import named_entities

    n = len(texts)
    if not n:
        return {k: None for k in FAITHFULNESS_KEYS}
    age_right = sum(stated_age(t) == math.floor(a) for t, a in zip(texts, ages, strict=True))
    sex_right = sum(stated_sex(t) == s for t, s in zip(texts, sexes, strict=True))
    out = {"age_correct_share": age_right / n, "sex_correct_share": sex_right / n}
    if visible_codes is None:
        return out | {k: None for k in FAITHFULNESS_KEYS[2:]}
    named = present = 0
    for text, codes in zip(texts, visible_codes, strict=True):
        for _, prefixes in named_entities(text):
            named += 1
            present += any(code_in(c, prefixes) for c in codes)
    return out | {
        "factors_named_per_text": named / n,
        "factor_precision": present / named if named else None,
        "hallucinated_factors_per_text": (named - present) / n,
    }


FAITHFULNESS_KEYS = (
    "age_correct_share",
    "sex_correct_share",
    "factors_named_per_text",
    "factor_precision",
    "hallucinated_factors_per_text",
)


def conclusion_agreement(texts: Sequence[str], parsed: Sequence[bool | None]) -> dict[str, Any]:
    """How often the answer follows the rationale's own conclusion ("more/less likely")."""
    from rationale_bench.teacher.qc import conclusion_direction

    pairs = [(conclusion_direction(t), p) for t, p in zip(texts, parsed, strict=True)]
    decided = [(c, p) for c, p in pairs if c is not None and p is not None]
    return {
        "conclusion_stated_share": _share(sum(c is not None for c, _ in pairs), len(pairs)),
        "conclusion_answer_agreement": _share(sum(c == p for c, p in decided), len(decided)),
    }


def prediction_spread(probabilities: Sequence[float]) -> dict[str, Any]:
    """Spread of P(Yes) across patients: a model that ignores its input gives ~one value."""
    p = np.asarray(probabilities, dtype=np.float64)
    if not p.size:
        return {"probability_sd": None, "probability_iqr": None, "probability_range": None}
    q75, q25 = np.percentile(p, [75, 25])
    return {
        "probability_sd": float(p.std()),
        "probability_iqr": float(q75 - q25),
        "probability_range": float(p.max() - p.min()),
    }


def diagnose(
    *,
    rationale_first: bool,
    forced: Sequence[bool],
    parsed: Sequence[bool | None],
    probabilities: Sequence[float],
    texts: Sequence[str | None],
    ages: Sequence[float],
    sexes: Sequence[str],
    visible_codes: Sequence[Sequence[str]] | None,
    training_texts: Iterable[str] = (),
) -> dict[str, Any]:
    """Every diagnostic of one configuration's held-out scoring, as one flat dictionary."""
    out = compliance(forced, parsed, rationale_first) | prediction_spread(probabilities)
    if rationale_first:
        own = [t or "" for t in texts]
        out |= collapse(own, training_texts)
        out |= faithfulness(own, ages, sexes, visible_codes)
        out |= conclusion_agreement(own, parsed)
    else:
        out |= {k: None for k in (*COLLAPSE_KEYS, *FAITHFULNESS_KEYS)}
        out |= {"conclusion_stated_share": None, "conclusion_answer_agreement": None}
    return out


# Training adequacy, read from run.json by the report (written by the fine-tuning job).
TRAINING_KEYS = (
    "final_completion_loss",
    "final_answer_loss",
    "tuning_completion_loss",
    "tuning_answer_loss",
    "steps_taken",
)
DIAGNOSTIC_KEYS = (
    "answer_slot_rate",
    "parse_failure_rate",
    "stated_yes_rate",
    "stated_no_rate",
    "probability_sd",
    "probability_iqr",
    "probability_range",
    *COLLAPSE_KEYS,
    *FAITHFULNESS_KEYS,
    "conclusion_stated_share",
    "conclusion_answer_agreement",
)


# --------------------------------------------------------------------------------------
# Validity gates
# --------------------------------------------------------------------------------------

# (diagnostic, comparison, setting, wording of a failure); a setting set to null disables it.
_GATES: tuple[tuple[str, str, str, str], ...] = (
    ("answer_slot_rate", ">=", "min_answer_slot_rate", "reached the answer slot unforced"),
    ("parse_failure_rate", "<=", "max_parse_failure_rate", "answers failed to parse"),
    ("top_generation_share", "<=", "max_top_generation_share", "most common generation"),
    ("training_copy_share", "<=", "max_training_copy_share", "copies of a training rationale"),
    ("repetition_loop_share", "<=", "max_repetition_loop_share", "generations in a loop"),
    ("final_answer_loss", "<=", "max_answer_loss", "final answer-token loss (nats)"),
)


def _fails(value: float, comparison: str, limit: float) -> bool:
    return value < limit if comparison == ">=" else value > limit


def validity(
    row: Mapping[str, Any], gates: Mapping[str, Any], reference: str = "label_only"
) -> tuple[bool, list[str]]:
    """(valid, reasons) of one configuration from its diagnostics, AUROC CI and run.json losses.

    A gate whose diagnostic is absent (None: not applicable, e.g. collapse for label-only, or
    not recorded) is not applied. The reference format must also beat chance: the lower bound
    of its AUROC's 95% CI above 0.5, so that a paired difference is measured against a model
    that learned something.
    """
    reasons = []
    for key, comparison, setting, wording in _GATES:
        value, limit = row.get(key), gates.get(setting)
        if value is None or limit is None or (isinstance(value, float) and math.isnan(value)):
            continue
        if _fails(float(value), comparison, float(limit)):
            reasons.append(f"{wording} {value:.3g} (limit {comparison} {limit:g})")
    low = row.get("auroc_ci_low")
    checks_chance = row.get("format") == reference and gates.get("reference_above_chance", False)
    if checks_chance and (low is None or not low > 0.5):
        shown = "undefined" if low is None else f"{low:.3f}"
        reasons.append(f"{reference} not above chance (AUROC 95% CI low {shown} <= 0.5)")
    return not reasons, reasons
