"""Teacher rationales: why this patient did or did not develop ADRD, written for training.

The teacher is post-hoc and label-aware, as in the reference study: it sees the history and the
true outcome and explains it. It therefore only ever sees training and tuning subjects; held-out
subjects are refused here, not just filtered upstream.

Backends:
- ``template``: offline and deterministic, grounded in the risk factors present in the
  subject's own record; the embedded default.
- ``openai``: any OpenAI-compatible endpoint through ``teacher_client.run_chat_requests``
  (bounded concurrency, retries, persistent cache, PHI guard).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from rationale_bench.codes import RISK_FACTORS, code_in
from rationale_bench.serialize import history_text

STYLES = ("free_form", "step_by_step")
TEACHER_SPLITS = ("train", "tuning")
OUTCOME_WORDS = {
    True: "the patient received a diagnosis of Alzheimer's disease or a related dementia "
    "within 5 years",
    False: "the patient did not receive a diagnosis of Alzheimer's disease or a related "
    "dementia within 5 years",
}


class TeacherError(ValueError):
    """The teacher cannot produce rationales as configured."""


def teacher_inputs(histories: pl.DataFrame) -> pl.DataFrame:
    """The subjects a teacher may see: training and tuning only."""
    return histories.filter(pl.col("split").is_in(TEACHER_SPLITS))


def _check_splits(subjects: pl.DataFrame) -> None:
    leaked = subjects.filter(~pl.col("split").is_in(TEACHER_SPLITS)).height
    if leaked:
        raise TeacherError(
            f"{leaked} held-out subjects were passed to the teacher; held-out subjects must never "
            "reach a label-aware teacher. This is a bug in the caller."
        )


def _findings(codes: Sequence[str]) -> tuple[list[str], list[str]]:
    """Readable risk factors and prodromal signs present in a subject's input codes."""
    risk, prodromal = [], []
    for factor in RISK_FACTORS.values():
        hits = [c for c in codes if code_in(c, factor.prefixes)]
        if not hits:
            continue
        text = f"{factor.label} ({hits[0].split('/')[-1]})"
        (prodromal if factor.direction == "prodromal" else risk).append(text)
    return risk, prodromal


def _join(items: Sequence[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _pick(rng: random.Random, options: Sequence[str]) -> str:
    return options[rng.randrange(len(options))]


# Wording variants of the template teacher, chosen per subject by a seeded draw.
OPENINGS = (
    "This {a}-year-old {p}",
    "The record of this {a}-year-old {p}",
    "For this {a}-year-old {p}, the history",
)
RISK_COMMENTS = (
    "Vascular, metabolic and sensory risk factors such as these each add to the risk of "
    "cognitive decline.",
    "Each of these is a recognised modifiable risk factor in the Lancet Commission's list.",
    "These conditions are associated with damage to small cerebral vessels and reduced "
    "cognitive reserve.",
)
CLOSINGS = ("Taken together,", "Overall,", "Weighing these findings,")
AGE_NOTE_OLD = (
    "Age is the strongest single risk factor for dementia, and risk roughly doubles every "
    "five years after 65."
)
AGE_NOTE_YOUNGER = "At this age the background risk of dementia is still modest."


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def template_rationale(
    age: float, sex: str, codes: Sequence[str], label: bool, style: str, seed: int
) -> str:
    """A label-aware rationale grounded in the subject's own record, with varied wording."""
    rng = random.Random(seed)
    person = {"F": "woman", "M": "man"}.get(sex, "person")
    risk, prodromal = _findings(codes)
    years = int(age)
    age_note = AGE_NOTE_OLD if years >= 75 else AGE_NOTE_YOUNGER
    direction = "more likely" if label else "less likely"
    if style == "free_form":
        opening = _pick(rng, OPENINGS).format(a=years, p=person)
        if risk:
            parts = [f"{opening} documents {_join(risk)}.", age_note, _pick(rng, RISK_COMMENTS)]
        else:
            none = " documents none of the major modifiable risk factors for dementia."
            parts = [opening + none, age_note]
        if prodromal:
            parts.append(
                f"The record also mentions {_join(prodromal)}, which often precede a dementia "
                "diagnosis."
            )
        elif label:
            parts.append(
                "No cognitive symptoms are recorded yet, so the risk rests on age and comorbidity."
            )
        parts.append(
            f"{_pick(rng, CLOSINGS)} a dementia diagnosis within five years is {direction} than "
            "for a typical person of this age."
        )
        return " ".join(parts)
    if style == "step_by_step":
        steps = [
            f"1. Age and sex: {years}-year-old {person}. {age_note}",
            "2. Modifiable risk factors: " + (_join(risk) + "." if risk else "none recorded."),
            "3. Cognitive and prodromal signs: "
            + (_join(prodromal) + "." if prodromal else "none recorded."),
            f"4. Weighing the evidence: {_plural(len(risk), 'risk factor')} and "
            f"{_plural(len(prodromal), 'prodromal sign')} in the record.",
            f"5. Conclusion: a dementia diagnosis within five years is {direction} than average.",
        ]
        return "\n".join(steps)
    raise TeacherError(f"unknown rationale style '{style}'; known styles: {', '.join(STYLES)}")


def build_messages(
    row: Mapping[str, Any], style: str, cfg: Mapping[str, Any]
) -> list[dict[str, str]]:
    """Chat messages for one subject from the configured prompt templates."""
    prompts = cfg["prompts"]
    user = prompts[style].format(
        history=history_text(row["header"], list(row["lines"])[: cfg["max_history_lines"]]),
        question=cfg["question"],
        outcome=OUTCOME_WORDS[bool(row["label"])],
    )
    return [{"role": "system", "content": prompts["system"]}, {"role": "user", "content": user}]


def _subject_seed(subject_id: int, style: str, seed: int) -> int:
    return int.from_bytes(
        hashlib.sha256(f"{seed}:{style}:{subject_id}".encode()).digest()[:4], "big"
    )


def generate_rationales(
    histories: pl.DataFrame, style: str, cfg: Mapping[str, Any], cache_path: Path
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Rationales of one style for every training and tuning subject.

    Returns the rationale table and a usage summary (requests, cache hits, tokens) for the log.
    """
    if style not in STYLES:
        raise TeacherError(f"unknown rationale style '{style}'; known styles: {', '.join(STYLES)}")
    subjects = teacher_inputs(histories)
    _check_splits(subjects)
    backend = cfg["backend"]
    rows = subjects.select(
        "subject_id", "split", "label", "age", "sex", "codes", "header", "lines"
    ).to_dicts()
    if backend == "template":
        texts = [
            template_rationale(
                r["age"],
                r["sex"],
                r["codes"],
                r["label"],
                style,
                _subject_seed(r["subject_id"], style, cfg["seed"]),
            )
            for r in rows
        ]
        meta = {
            "backend": "template",
            "model": "template",
            "sampling": json.dumps({"seed": cfg["seed"]}),
        }
        usage: dict[str, Any] = {"requests_sent": 0, "generated": len(texts)}
    elif backend == "openai":
        from rationale_bench.teacher_client import ChatRequest, EndpointConfig, run_chat_requests

        api = cfg["openai"]
        endpoint = EndpointConfig(
            base_url=api["base_url"],
            model=api["model"],
            api_key_env=api.get("api_key_env"),
            temperature=api["temperature"],
            top_p=api["top_p"],
            max_tokens=api["max_tokens"],
            seed=api.get("seed"),
            concurrency=api["concurrency"],
            request_timeout_s=api["request_timeout_s"],
            max_attempts=api["max_attempts"],
            allowed_hosts=tuple(cfg.get("allowed_hosts", [])),
        )
        requests = [
            ChatRequest(
                key=f"{r['subject_id']}:{style}", messages=tuple(build_messages(r, style, cfg))
            )
            for r in rows
        ]
        results, summary = run_chat_requests(requests, endpoint, cache_path)
        texts = [results[q.key].content.strip() for q in requests]
        meta = {
            "backend": "openai",
            "model": api["model"],
            "sampling": json.dumps(endpoint.sampling(), sort_keys=True),
        }
        usage = summary.as_dict()
    else:
        raise TeacherError(f"teacher.backend '{backend}' is unknown; use 'template' or 'openai'.")
    empty = [r["subject_id"] for r, t in zip(rows, texts, strict=True) if not t.strip()]
    if empty:
        raise TeacherError(
            f"teacher returned empty rationales for {len(empty)} subjects (first: {empty[:5]})."
        )
    table = subjects.select("subject_id", "split", "label").with_columns(
        style=pl.lit(style),
        teacher=pl.lit(cfg["name"]),
        backend=pl.lit(meta["backend"]),
        teacher_model=pl.lit(meta["model"]),
        sampling=pl.lit(meta["sampling"]),
        rationale=pl.Series(texts, dtype=pl.String),
    )
    return table, usage


def grounded_fraction(rationale: str, codes: Sequence[str]) -> float:
    """Share of the risk factors a rationale names that are present in the subject's record."""
    named = [f for f in RISK_FACTORS.values() if f.label.lower() in rationale.lower()]
    if not named:
        return 1.0
    present = {f.label for f in named if any(code_in(c, f.prefixes) for c in codes)}
    return len(present) / len(named)


def conclusion_direction(rationale: str) -> bool | None:
    """True / False when the rationale's last sentence says the outcome is more / less likely."""
    sentences = [x for x in rationale.replace("\n", ". ").split(".") if x.strip()]
    last = sentences[-1].lower() if sentences else ""
    more, less = "more likely" in last, "less likely" in last
    return more if more != less else None


def quality_control(rationales: pl.DataFrame, histories: pl.DataFrame) -> pl.DataFrame:
    """Per rationale: length, grounding in the subject's record, agreement with its label."""
    codes = dict(histories.select("subject_id", "codes").iter_rows())
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
                "grounded_fraction": grounded_fraction(text, codes.get(sid, [])),
                "label_consistent": None if direction is None else direction == bool(label),
            }
        )
    return pl.DataFrame(
        rows,
        schema={
            "subject_id": pl.Int64,
            "style": pl.String,
            "label": pl.Boolean,
            "n_words": pl.Int32,
            "grounded_fraction": pl.Float64,
            "label_consistent": pl.Boolean,
        },
    )
