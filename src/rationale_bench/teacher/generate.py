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

import copy
import hashlib
import json
import logging
import random
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import polars as pl

from rationale_bench.config_check import horizon_spoken, horizon_words
from rationale_bench.data.codes import ATC_DESCRIPTIONS, RISK_FACTORS, code_in

# The teacher's config slices live in study.py (the Snakefile imports them without polars).
from rationale_bench.study import (  # noqa: F401
    check_teacher_config,
    drops_subjects,
    rationale_settings,
    teacher_operational_settings,
)
from rationale_bench.text.serialize import history_of

logger = logging.getLogger("rationale_bench.teacher.generate")

STYLES = ("free_form", "step_by_step")
TEACHER_SPLITS = ("train", "tuning")
DEFAULT_HORIZON_DAYS = 1826  # five years, the reference study's window


def outcome_words(label: bool, horizon_days: int = DEFAULT_HORIZON_DAYS) -> str:
    """The known outcome as the label-aware teacher is told it, in the cohort's window."""
    did = "received" if label else "did not receive"
    return (
        f"the patient {did} a diagnosis of Alzheimer's disease or a related dementia within "
        f"{horizon_words(horizon_days)}"
    )


class TeacherError(ValueError):
    """The teacher cannot produce rationales as configured."""


def teacher_inputs(histories: pl.DataFrame) -> pl.DataFrame:
    """The subjects a teacher may see: training and tuning only. Callers filter with this;
    :func:`generate_rationales` then refuses any other split it is handed."""
    return histories.filter(pl.col("split").is_in(TEACHER_SPLITS))


def _check_splits(subjects: pl.DataFrame) -> None:
    leaked = subjects.filter(~pl.col("split").is_in(TEACHER_SPLITS))
    if leaked.height:
        splits = ", ".join(sorted(set(leaked["split"].cast(pl.String).fill_null("null"))))
        raise TeacherError(
            f"{leaked.height} subjects of split(s) {splits} (first: subject "
            f"{leaked['subject_id'][0]}) were passed to the teacher; only {TEACHER_SPLITS} "
            "subjects may reach a label-aware teacher. Filter with teacher_inputs() first; "
            "in the workflow this is a bug."
        )


# Tokens of a shown history: a code appears in it as its short form "(I10)", or bare when it
# has no known name ("ICD10CM/X99").
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9./_-]*[A-Za-z0-9]|[A-Za-z0-9]")


def visible_codes(codes: Sequence[str], shown: str) -> list[str]:
    """The codes of a record that a shown (possibly truncated) history mentions."""
    tokens = set(_TOKEN.findall(shown))
    return [c for c in codes if c in tokens or c.split("/")[-1] in tokens]


def teacher_view(histories: pl.DataFrame, prompts: pl.DataFrame | None) -> pl.DataFrame:
    """The training and tuning subjects as the teacher sees them.

    ``prompts`` (teacher.view 'student_prompt'): the student's prompts of the reference variant
    for the view model; each subject's ``shown_history`` is its prompt's (truncated) history and
    ``codes`` keeps only the codes that history mentions, so the template teacher and the QC
    grounding use what was shown. ``None`` ('full_history'): the histories as they are.
    """
    subjects = teacher_inputs(histories)
    if prompts is None:
        return subjects
    exact = "visible_codes" in prompts.columns  # the serializer's codes of the kept lines
    shown = prompts.select(
        "subject_id",
        shown_history="history_text",
        **({"shown_codes": "visible_codes"} if exact else {}),
    )
    joined = subjects.join(shown, on="subject_id", how="left")
    missing = joined.filter(pl.col("shown_history").is_null())
    if missing.height:
        raise TeacherError(
            f"{missing.height} teacher subjects (first: {missing['subject_id'][0]}) have no "
            "student prompt in the prompts file; rebuild the prompts (rule build_prompts) of "
            "teacher.view_model for serialization.reference_variant."
        )
    if exact:
        return joined.with_columns(pl.col("shown_codes").alias("codes")).drop("shown_codes")
    # Prompts written before the serializer recorded them: the codes the shown text mentions.
    codes = [
        visible_codes(c, text) for c, text in joined.select("codes", "shown_history").iter_rows()
    ]
    return joined.with_columns(pl.Series("codes", codes, dtype=joined.schema["codes"]))


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
    age: float,
    sex: str,
    codes: Sequence[str],
    label: bool,
    style: str,
    seed: int,
    horizon_days: int = DEFAULT_HORIZON_DAYS,
) -> str:
    """A label-aware rationale grounded in the subject's own record, with varied wording, about
    the cohort's outcome window (``horizon_days``)."""
    window = horizon_spoken(horizon_days)
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
            f"{_pick(rng, CLOSINGS)} a dementia diagnosis within {window} is {direction} than "
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
            f"5. Conclusion: a dementia diagnosis within {window} is {direction} than average.",
        ]
        return "\n".join(steps)
    raise TeacherError(f"unknown rationale style '{style}'; known styles: {', '.join(STYLES)}")


def _subject_seed(subject_id: int, style: str, seed: int | str) -> int:
    return int.from_bytes(
        hashlib.sha256(f"{seed}:{style}:{subject_id}".encode()).digest()[:4], "big"
    )


# --------------------------------------------------------------------------------------------
# Quality control of one rationale
# --------------------------------------------------------------------------------------------

MODES = ("label_aware", "label_blind")
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


# --------------------------------------------------------------------------------------------
# Backends: one generation attempt for a batch of subjects
# --------------------------------------------------------------------------------------------


@dataclass
class _Attempt:
    texts: list[str]
    sampling: list[str]  # JSON of the settings that produced each text
    finish_reasons: list[str | None]  # the server's ("stop", "length", ...), per text


class _Backend:
    name = ""
    model = ""

    def generate(
        self, rows: list[dict[str, Any]], style: str, prompt: str, attempt: int, longer: bool
    ) -> _Attempt:
        """One draw for ``rows``; ``longer``: their last draw was cut off at max_tokens."""
        raise NotImplementedError


class _TemplateBackend(_Backend):
    name = model = "template"

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        self.seed = int(cfg.get("seed", 0))
        self.horizon_days = int(cfg.get("horizon_days", DEFAULT_HORIZON_DAYS))

    def generate(
        self, rows: list[dict[str, Any]], style: str, prompt: str, attempt: int, longer: bool
    ) -> _Attempt:
        if prompt != "label_aware":
            raise TeacherError(
                "teacher.mode 'label_blind' needs a teacher that predicts the outcome; the "
                "'template' teacher only explains a known outcome. Use backend 'openai' or "
                "mode 'label_aware'."
            )
        # A regeneration draws another wording (attempt 0 keeps the historical draw).
        seed = self.seed if attempt == 0 else f"{self.seed}:{attempt}"
        sampling = {"seed": self.seed} if attempt == 0 else {"seed": self.seed, "attempt": attempt}
        texts = [
            template_rationale(
                r["age"],
                r["sex"],
                r["codes"],
                r["label"],
                style,
                _subject_seed(r["subject_id"], style, seed),
                self.horizon_days,
            )
            for r in rows
        ]
        return _Attempt(texts, [json.dumps(sampling)] * len(rows), ["stop"] * len(rows))


class _OpenAIBackend(_Backend):
    name = "openai"

    def __init__(
        self, cfg: Mapping[str, Any], qc: QCSettings, cache_path: Path, read_also: Sequence[Path]
    ) -> None:
        from rationale_bench.teacher.client import EndpointConfig, UsageSummary

        api = cfg["openai"]
        self.cfg = cfg
        self.qc = qc
        self.cache_path = cache_path
        self.read_also = tuple(read_also)
        self.model = api["model"]
        self.endpoint = EndpointConfig(
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
        self.retry_rounds = int(api.get("retry_rounds", 3))
        self.round_backoff_s = float(api.get("round_backoff_s", 30.0))
        self.usage = UsageSummary()
        # Tokens of every answer used, cached or not: what these rationales cost in total.
        self.total_prompt_tokens = 0
        self.total_completion_tokens = 0

    def _endpoint(self, attempt: int, longer: bool) -> Any:
        """Attempt 0 uses the configured sampling; a regeneration needs another draw, so it
        changes the seed and (if the configured one is lower) raises the temperature. A text
        cut off at max_tokens is regenerated with a larger budget."""
        if attempt == 0:
            return self.endpoint
        ep = self.endpoint
        factor = self.qc.length_retry_factor**attempt if longer else 1.0
        return replace(
            ep,
            seed=(ep.seed or 0) + attempt,
            temperature=max(ep.temperature, self.qc.regenerate_temperature),
            max_tokens=int(round(ep.max_tokens * factor)),
        )

    def _answer_in_rounds(self, requests: list[Any], endpoint: Any, description: str) -> Any:
        """Answers of every request. Requests that failed every attempt get further rounds
        after a doubling back-off (answers received meanwhile come from the cache, so no
        prompt is answered twice); errors every request would hit end it at once."""
        from rationale_bench.teacher.client import TeacherError as RequestError
        from rationale_bench.teacher.client import run_chat_requests

        for round_ in range(self.retry_rounds + 1):
            try:
                results, usage = run_chat_requests(
                    requests,
                    endpoint,
                    self.cache_path,
                    read_also=self.read_also,
                    description=description,
                )
            except RequestError as error:
                self._add_usage(getattr(error, "usage", None))
                if error.fatal or round_ == self.retry_rounds:
                    raise
                delay = self.round_backoff_s * 2**round_
                logger.warning(
                    "teacher round %d of %d left %d request(s) without an answer (%s); "
                    "round %d in %.0f s",
                    round_ + 1,
                    self.retry_rounds + 1,
                    len(error.failed_keys),
                    error.last_error,
                    round_ + 2,
                    delay,
                )
                time.sleep(delay)
                continue
            self._add_usage(usage)
            return results
        raise AssertionError("unreachable")  # pragma: no cover

    def _add_usage(self, usage: Any) -> None:
        if usage is None:
            return
        for name in ("requests_sent", "cache_hits", "retries", "failures"):
            setattr(self.usage, name, getattr(self.usage, name) + getattr(usage, name))
        self.usage.prompt_tokens += usage.prompt_tokens
        self.usage.completion_tokens += usage.completion_tokens
        self.usage.wall_s += usage.wall_s

    def generate(
        self, rows: list[dict[str, Any]], style: str, prompt: str, attempt: int, longer: bool
    ) -> _Attempt:
        from rationale_bench.teacher.client import ChatRequest

        endpoint = self._endpoint(attempt, longer)
        requests = [
            ChatRequest(
                key=f"{r['subject_id']}:{style}:{prompt}",
                messages=tuple(build_messages(r, style, self.cfg, prompt)),
            )
            for r in rows
        ]
        results = self._answer_in_rounds(
            requests, endpoint, f"{style} {prompt} attempt {attempt + 1}"
        )
        for res in results.values():
            self.total_prompt_tokens += res.prompt_tokens
            self.total_completion_tokens += res.completion_tokens
        sampling = json.dumps(endpoint.sampling(), sort_keys=True)
        return _Attempt(
            [results[q.key].content.strip() for q in requests],
            [sampling] * len(requests),
            [results[q.key].finish_reason for q in requests],
        )


def build_messages(
    row: Mapping[str, Any], style: str, cfg: Mapping[str, Any], prompt: str = "label_aware"
) -> list[dict[str, str]]:
    """Chat messages for one subject from the configured prompt templates.

    `prompt` 'label_aware' uses `prompts[style]` (the outcome is given: post-hoc explanation,
    or the hint of a STaR rationalization); 'label_blind' uses `prompts[blind_<style>]`, which
    must not mention the outcome.
    """
    prompts = cfg["prompts"]
    key = style if prompt == "label_aware" else f"blind_{style}"
    template = prompts.get(key)
    if template is None:
        raise TeacherError(f"teacher.prompts.{key} is not set; it is needed for mode {prompt!r}.")
    if prompt == "label_blind" and "{outcome}" in template:
        raise TeacherError(
            f"teacher.prompts.{key} contains {{outcome}}: a label-blind prompt must not show "
            "the teacher the outcome it is asked to predict."
        )
    if row.get("shown_history") is not None:  # teacher.view student_prompt: what was shown
        history = row["shown_history"]
    else:
        history = history_of(row, cfg["max_history_lines"])
    fill = {"history": history, "question": cfg["question"]}
    if prompt == "label_aware":
        fill["outcome"] = outcome_words(
            bool(row["label"]), cfg.get("horizon_days", DEFAULT_HORIZON_DAYS)
        )
    user = template.format(**fill)
    return [{"role": "system", "content": prompts["system"]}, {"role": "user", "content": user}]


# --------------------------------------------------------------------------------------------
# Generation with QC-driven regeneration and label-blind (STaR) mode
# --------------------------------------------------------------------------------------------


@dataclass
class _Subject:
    row: dict[str, Any]
    text: str = ""
    sampling: str = ""
    failures: list[str] = field(default_factory=list)
    attempts: int = 0
    answer: bool | None = None
    source: str | None = None  # label_aware | agreed | rationalized, once accepted
    disagreed: bool = False
    finish_reason: str | None = None


def _draw(
    backend: _Backend, todo: list[_Subject], style: str, prompt: str, attempt: int
) -> list[tuple[_Subject, str, str, str | None]]:
    """One draw for every subject of ``todo``: (subject, text, sampling, finish_reason). Texts
    cut off at max_tokens last time are drawn apart, with a larger budget."""
    drawn = []
    for longer in (False, True):
        group = [s for s in todo if ("truncated" in s.failures) == longer]
        if group:
            out = backend.generate([s.row for s in group], style, prompt, attempt, longer)
            drawn += zip(group, out.texts, out.sampling, out.finish_reasons, strict=True)
    return drawn


_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def near_duplicate_key(text: str) -> str:
    """The text with case, numbers and spacing made uniform: two rationales with the same key
    say the same thing whatever the patient's age or counts."""
    return " ".join(_NUMBER.sub("#", text.lower()).split())


def cache_path(cache_dir: Path, style: str, shard: int, n_shards: int) -> Path:
    """The cache file a shard appends to (unsharded runs keep the plain name)."""
    name = f"{style}.jsonl" if n_shards == 1 else f"{style}.shard{shard}of{n_shards}.jsonl"
    return Path(cache_dir) / name


def cache_files(cache_dir: Path, style: str) -> list[Path]:
    """Every cache file of one style, whatever shard layout wrote it (read by every shard,
    so changing `teacher.shards` never pays for an answer twice)."""
    return sorted(
        p
        for p in Path(cache_dir).glob(f"{style}*.jsonl")
        if p.name == f"{style}.jsonl" or p.name.startswith(f"{style}.shard")
    )


def shard_of(subjects: pl.DataFrame, shard: int, n_shards: int) -> pl.DataFrame:
    """Shard `shard` of `n_shards`: every n-th subject in subject order (balanced, stable)."""
    if n_shards < 1 or not 0 <= shard < n_shards:
        raise TeacherError(f"shard {shard} of {n_shards} does not exist (shards count from 0).")
    ordered = subjects.sort("subject_id")
    return ordered.filter(pl.int_range(pl.len()) % n_shards == shard)


def generate_rationales(
    subjects: pl.DataFrame,
    style: str,
    cfg: Mapping[str, Any],
    cache_path: Path,
    *,
    shard: int = 0,
    n_shards: int = 1,
    cache_read_also: Sequence[Path] = (),
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Rationales of one style for the training and tuning subjects of one shard.

    ``subjects``: training and tuning subjects only (:func:`teacher_view` or
    :func:`teacher_inputs`); any other split is refused with TeacherError. An optional
    ``shown_history`` column is what the teacher is shown (else the newest
    ``max_history_lines`` lines of the history); ``codes`` are the codes it may cite.

    Each rationale is checked (`qc_failures`); failures are regenerated with a new draw up to
    `teacher.qc.max_attempts` times, then kept (flagged) or dropped per `teacher.qc.on_failure`.
    In `label_blind` mode the teacher first predicts without the label; rationales whose answer
    agrees with the label are kept, the rest are rationalized with the label as a hint (STaR)
    or dropped, per `teacher.label_blind.on_disagreement`.

    Returns the rationale table and a report (counts per outcome and reason, usage) for the log
    and the QC report.
    """
    if style not in STYLES:
        raise TeacherError(f"unknown rationale style '{style}'; known styles: {', '.join(STYLES)}")
    mode = cfg.get("mode", "label_aware")
    if mode not in MODES:
        raise TeacherError(f"teacher.mode must be one of {MODES}, got {mode!r}")
    on_disagreement = (cfg.get("label_blind") or {}).get("on_disagreement", "rationalize")
    if on_disagreement not in ("rationalize", "drop"):
        raise TeacherError(
            "teacher.label_blind.on_disagreement must be 'rationalize' or 'drop', got "
            f"{on_disagreement!r}"
        )
    qc = QCSettings.from_config(cfg)
    _check_splits(subjects)
    subjects = shard_of(subjects, shard, n_shards)
    backend_name = cfg["backend"]
    backend: _Backend
    if backend_name == "template":
        backend = _TemplateBackend(cfg)
    elif backend_name == "openai":
        backend = _OpenAIBackend(cfg, qc, cache_path, cache_read_also)
    else:
        raise TeacherError(
            f"teacher.backend '{backend_name}' is unknown; use 'template' or 'openai'."
        )
    rows = subjects.select(
        "subject_id",
        "split",
        "label",
        "age",
        "sex",
        "codes",
        *(
            c
            for c in ("variant", "header", "lines", "sections", "shown_history")
            if c in subjects.columns
        ),
    ).to_dicts()
    state = [_Subject(row=r) for r in rows]
    first_failures: Counter[str] = Counter()

    def run_phase(todo: list[_Subject], prompt: str, accept_as: str, count_first: bool) -> None:
        """Generate for `todo` until each is accepted or its attempts run out; in the blind
        phase a wrong answer also ends it (that is the teacher's prediction, not noise)."""
        for attempt in range(qc.max_attempts):
            if not todo:
                return
            retry = []
            for s, raw, sampling, finish in _draw(backend, todo, style, prompt, attempt):
                s.attempts += 1
                s.sampling = sampling
                s.finish_reason = finish
                label = bool(s.row["label"])
                facts = (s.row["codes"], qc, s.row["age"], finish)
                if prompt == "label_blind":
                    s.text, s.answer = split_answer(raw)
                    failures = ["missing_answer"] if s.answer is None else []
                    failures += qc_failures(s.text, style, label, *facts)
                else:
                    s.text = raw.strip()
                    failures = qc_failures(s.text, style, label, *facts)
                s.failures = failures
                if attempt == 0 and count_first:
                    first_failures.update(failures)
                if prompt == "label_blind" and s.answer is not None and s.answer != label:
                    s.disagreed = True
                elif failures:
                    retry.append(s)
                else:
                    s.source = accept_as
            todo = retry

    if mode == "label_aware":
        run_phase(state, "label_aware", "label_aware", count_first=True)
    else:
        run_phase(state, "label_blind", "agreed", count_first=True)
        if on_disagreement == "rationalize":
            todo = [s for s in state if s.source is None]
            run_phase(todo, "label_aware", "rationalized", count_first=False)

    kept: list[_Subject] = []
    kept_failing = 0
    dropped_by: Counter[str] = Counter()
    final_failures: Counter[str] = Counter()
    for s in state:
        if s.source is not None:
            kept.append(s)
            continue
        final_failures.update(s.failures)
        if mode == "label_blind" and s.disagreed and on_disagreement == "drop":
            dropped_by["disagrees_with_label"] += 1
        elif qc.on_failure == "drop" or not s.text.strip():
            # An empty text is never kept: no fine-tuning example can be built from it.
            dropped_by[s.failures[0] if s.failures else "empty"] += 1
        else:
            kept.append(s)
            kept_failing += 1

    n_regenerated = sum(1 for s in state if s.attempts > 1)
    table = pl.DataFrame(
        {
            "subject_id": [s.row["subject_id"] for s in kept],
            "split": [s.row["split"] for s in kept],
            "label": [s.row["label"] for s in kept],
            "style": [style] * len(kept),
            "teacher": [cfg["name"]] * len(kept),
            "backend": [backend.name] * len(kept),
            "teacher_model": [backend.model] * len(kept),
            "sampling": [s.sampling for s in kept],
            "mode": [mode] * len(kept),
            "source": [s.source or "failed_qc" for s in kept],
            "teacher_answer": [s.answer for s in kept],
            "attempts": [s.attempts for s in kept],
            "qc_pass": [s.source is not None for s in kept],
            "qc_failures": [",".join(s.failures) if s.source is None else None for s in kept],
            "finish_reason": [s.finish_reason for s in kept],
            "rationale": [s.text for s in kept],
        },
        schema={
            "subject_id": subjects.schema["subject_id"],
            "split": pl.String,
            "label": pl.Boolean,
            "style": pl.String,
            "teacher": pl.String,
            "backend": pl.String,
            "teacher_model": pl.String,
            "sampling": pl.String,
            "mode": pl.String,
            "source": pl.String,
            "teacher_answer": pl.Boolean,
            "attempts": pl.Int32,
            "qc_pass": pl.Boolean,
            "qc_failures": pl.String,
            "finish_reason": pl.String,
            "rationale": pl.String,
        },
    )
    report: dict[str, Any] = {
        "teacher": cfg["name"],
        "style": style,
        "mode": mode,
        "backend": backend.name,
        "shards": n_shards,
        "subjects": len(state),
        "kept": len(kept),
        "dropped": len(state) - len(kept),
        "qc_pass": sum(1 for s in state if s.source is not None),
        "kept_failing_qc": kept_failing,
        "regenerated": n_regenerated,
        "recovered_by_regeneration": sum(
            1 for s in state if s.attempts > 1 and s.source is not None
        ),
        "requests_per_subject_max": max((s.attempts for s in state), default=0),
        "first_attempt_failures": _ordered(first_failures),
        "final_failures": _ordered(final_failures),
        "dropped_by_reason": _ordered(dropped_by),
        "truncated": sum(1 for s in state if s.finish_reason == "length"),
    }
    if mode == "label_blind":
        report["label_blind"] = {
            "agreed": sum(1 for s in state if s.source == "agreed"),
            "disagreed": sum(1 for s in state if s.disagreed),
            "rationalized": sum(1 for s in state if s.source == "rationalized"),
            "no_answer": sum(1 for s in state if s.answer is None),
            "on_disagreement": on_disagreement,
        }
    if isinstance(backend, _OpenAIBackend):
        usage = backend.usage.as_dict()
        usage.pop("cost", None)  # priced in the QC report, where a price change reruns nothing
        usage["total_prompt_tokens"] = backend.total_prompt_tokens
        usage["total_completion_tokens"] = backend.total_completion_tokens
    else:
        usage = {"requests_sent": 0, "generated": sum(s.attempts for s in state)}
    report["usage"] = usage
    if n_shards == 1:  # sharded: on the merged file (merge_shards), where the style is whole
        table, report = flag_near_duplicates(table, report, qc)
    return table, report


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
    out["final_failures"] = _ordered(final)
    if qc.on_failure == "drop":
        marked = marked.filter(~flagged)
        dropped = Counter(report.get("dropped_by_reason", {}))
        dropped["near_duplicate"] += n_flagged
        out.update(
            kept=marked.height,
            dropped=report["dropped"] + n_flagged,
            dropped_by_reason=_ordered(dropped),
        )
    else:
        out["kept_failing_qc"] = report["kept_failing_qc"] + passing
    return marked, out


def run_settings(job_settings: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """A teacher job's settings (its params, :func:`rationale_settings`) with how requests are
    sent (endpoint, key variable, concurrency, timeouts, retries, allowed hosts) from the
    config: those rerun nothing, so they are read here rather than passed as params."""
    cfg = copy.deepcopy(dict(job_settings))
    operational = teacher_operational_settings(config)
    cfg["allowed_hosts"] = operational.pop("allowed_hosts")
    if cfg.get("backend") == "openai":
        cfg["openai"] = {**cfg.get("openai", {}), **operational}
    return cfg


def check_training_pool(table: pl.DataFrame, report: Mapping[str, Any], n_train: int) -> None:
    """Refuse a style whose kept training subjects are fewer than the largest grid.n_train
    (drop mode): the fine-tunes would fail much later, far from the cause."""
    kept = table.filter(pl.col("split") == "train").height
    if kept >= n_train:
        return
    reasons = ", ".join(f"{k}: {v}" for k, v in report.get("dropped_by_reason", {}).items())
    raise TeacherError(
        f"teacher {report.get('teacher')!r} style {report.get('style')!r}: only {kept} training "
        f"subjects keep a rationale, fewer than the largest grid.n_train ({n_train}); dropped "
        f"by reason: {reasons or 'none'}. Set teacher.qc.on_failure to 'keep' (or "
        "teacher.label_blind.on_disagreement to 'rationalize'), fix the teacher's prompts, or "
        "lower grid.n_train."
    )


def _ordered(counts: Counter[str]) -> dict[str, int]:
    known = [r for r in (*QC_REASONS, "disagrees_with_label") if counts.get(r)]
    return {r: counts[r] for r in known + sorted(set(counts) - set(known))}


def eligible_subjects(tables: Sequence[pl.DataFrame]) -> pl.DataFrame:
    """Subjects (``subject_id, split``) with a non-empty rationale in every style table given.

    The training pool when the teacher drops subjects: the same subjects for every format.
    """
    if not tables:
        raise TeacherError("eligible_subjects needs at least one rationale table.")
    usable = [
        t.filter(pl.col("rationale").is_not_null() & (pl.col("rationale").str.strip_chars() != ""))
        .select("subject_id", "split")
        .unique()
        for t in tables
    ]
    common = usable[0]
    for other in usable[1:]:
        common = common.join(other.select("subject_id"), on="subject_id", how="semi")
    return common.sort("subject_id")


def merge_shards(
    tables: Sequence[pl.DataFrame],
    reports: Sequence[Mapping[str, Any]],
    qc: QCSettings | None = None,
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """One style's rationales and report from its shards; refuses overlapping or missing ones.
    Near-duplicates are flagged here, over the whole style (``qc``: the teacher's QC settings;
    defaults when None)."""
    if not tables or len(tables) != len(reports):
        raise TeacherError(f"got {len(tables)} shard tables and {len(reports)} shard reports.")
    shard_counts = {r.get("shards") for r in reports}
    if shard_counts != {len(tables)}:
        raise TeacherError(
            f"the shard reports say {sorted(map(str, shard_counts))} shards but {len(tables)} "
            "were given; rerun the rationale jobs so that every shard comes from one setting."
        )
    table = pl.concat(tables, how="vertical").sort("subject_id")
    dupes = table.height - table["subject_id"].n_unique()
    if dupes:
        raise TeacherError(f"{dupes} subjects appear in more than one shard; rerun the shards.")
    return flag_near_duplicates(table, _sum_reports(reports), qc or QCSettings())


def _sum_reports(reports: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for rep in reports:
        for key, value in rep.items():
            if isinstance(value, Mapping):
                out[key] = _sum_reports([out.get(key, {}), value])
            elif isinstance(value, bool) or not isinstance(value, int | float) or key == "shards":
                out.setdefault(key, value)  # a setting, the same in every shard
            elif key == "requests_per_subject_max":
                out[key] = max(out.get(key, 0), value)
            else:
                out[key] = out.get(key, 0) + value
    return out


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
