"""Teacher rationales: why this patient did or did not develop ADRD, written for training.

The teacher is post-hoc and label-aware, as in the reference study: it sees the history and the
true outcome and explains it. It therefore only ever sees training and tuning subjects; held-out
subjects are refused here, not just filtered upstream.

Backends:
- ``template``: offline and deterministic, grounded in the risk factors present in the
  subject's own record; the embedded default.
- ``openai``: any OpenAI-compatible endpoint through ``teacher.client.run_chat_requests``
  (bounded concurrency, retries, persistent cache, PHI guard).

Each rationale is checked as it is drawn (:mod:`rationale_bench.teacher.qc`) and regenerated
while it fails. The steps of :func:`generate_rationales`: check the settings (``_plan``), pick
the backend, draw in phases (``_run_phase``: label-aware, or label-blind then rationalized),
settle who keeps a rationale (``_settle``), then the table and the report.
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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from rationale_bench.config_check import horizon_spoken, horizon_words
from rationale_bench.data.codes import RISK_FACTORS, code_in

# The teacher's config slices live in study.py (the Snakefile imports them without polars).
from rationale_bench.study import (
    check_label_blind_teacher,
    teacher_operational_settings,
)
from rationale_bench.teacher import TeacherError
from rationale_bench.teacher.qc import (
    QCSettings,
    flag_near_duplicates,
    ordered_reasons,
    qc_failures,
    split_answer,
)
from rationale_bench.text.serialize import history_of

if TYPE_CHECKING:  # the client needs openai, which the data environment lacks: imported lazily
    from rationale_bench.teacher.client import (
        ChatRequest,
        ChatResult,
        EndpointConfig,
        UsageSummary,
    )

logger = logging.getLogger("rationale_bench.teacher.generate")

STYLES = ("free_form", "step_by_step")
MODES = ("label_aware", "label_blind")
TEACHER_SPLITS = ("train", "tuning")
DEFAULT_HORIZON_DAYS = 1826  # five years, the reference study's window


def outcome_words(label: bool, horizon_days: int = DEFAULT_HORIZON_DAYS) -> str:
    """The known outcome as the label-aware teacher is told it, in the cohort's window."""
    did = "received" if label else "did not receive"
    return (
        f"the patient {did} a diagnosis of Alzheimer's disease or a related dementia within "
        f"{horizon_words(horizon_days)}"
    )


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


def read_teacher_view(histories: str | Path, prompts: str | Path | None) -> pl.DataFrame:
    """:func:`teacher_view` of a histories file and the prompts file (None or '' under
    teacher.view 'full_history'): what every teacher job and the QC read."""
    shown = pl.read_parquet(prompts) if prompts else None
    return teacher_view(pl.read_parquet(histories), shown)


def quiet_request_logs() -> None:
    """The teacher client's HTTP library logs every request at INFO: tens of thousands of lines
    in a job's log. The progress lines and the usage summary say what matters; its warnings
    still get through."""
    for name in ("httpx2", "httpcore2"):
        logging.getLogger(name).setLevel(logging.WARNING)


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


def endpoint_config(cfg: Mapping[str, Any]) -> EndpointConfig:
    """The endpoint of a teacher job's settings (:func:`run_settings`): where requests go, how
    they are sent, and the sampling of the first attempt."""
    from rationale_bench.teacher.client import EndpointConfig

    api = cfg["openai"]
    return EndpointConfig(
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


def regeneration_endpoint(
    endpoint: EndpointConfig, qc: QCSettings, attempt: int, longer: bool
) -> EndpointConfig:
    """Attempt 0 uses the configured sampling; a regeneration needs another draw, so it
    changes the seed and (if the configured one is lower) raises the temperature. A text
    cut off at max_tokens is regenerated with a larger budget."""
    if attempt == 0:
        return endpoint
    factor = qc.length_retry_factor**attempt if longer else 1.0
    return replace(
        endpoint,
        seed=(endpoint.seed or 0) + attempt,
        temperature=max(endpoint.temperature, qc.regenerate_temperature),
        max_tokens=int(round(endpoint.max_tokens * factor)),
    )


def _add_usage(total: UsageSummary, usage: UsageSummary | None) -> None:
    """Add one run's usage (None: a run that failed before sending) to ``total``."""
    if usage is None:
        return
    for name in ("requests_sent", "cache_hits", "retries", "failures"):
        setattr(total, name, getattr(total, name) + getattr(usage, name))
    total.prompt_tokens += usage.prompt_tokens
    total.completion_tokens += usage.completion_tokens
    total.wall_s += usage.wall_s


class _OpenAIBackend(_Backend):
    name = "openai"

    def __init__(
        self, cfg: Mapping[str, Any], qc: QCSettings, cache_path: Path, read_also: Sequence[Path]
    ) -> None:
        from rationale_bench.teacher.client import UsageSummary

        api = cfg["openai"]
        self.cfg = cfg
        self.qc = qc
        self.cache_path = cache_path
        self.read_also = tuple(read_also)
        self.model = api["model"]
        self.endpoint = endpoint_config(cfg)
        self.retry_rounds = int(api.get("retry_rounds", 3))
        self.round_backoff_s = float(api.get("round_backoff_s", 30.0))
        self.usage = UsageSummary()
        # Tokens of every answer used, cached or not: what these rationales cost in total.
        self.total_prompt_tokens = 0
        self.total_completion_tokens = 0

    def _answer_in_rounds(
        self, requests: list[ChatRequest], endpoint: EndpointConfig, description: str
    ) -> dict[str, ChatResult]:
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
                _add_usage(self.usage, getattr(error, "usage", None))
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
            _add_usage(self.usage, usage)
            return results
        raise AssertionError("unreachable")  # pragma: no cover

    def generate(
        self, rows: list[dict[str, Any]], style: str, prompt: str, attempt: int, longer: bool
    ) -> _Attempt:
        from rationale_bench.teacher.client import ChatRequest

        endpoint = regeneration_endpoint(self.endpoint, self.qc, attempt, longer)
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


@dataclass(frozen=True)
class _Plan:
    """What one generation job does, from its settings (checked before any draw)."""

    style: str
    mode: str  # label_aware | label_blind
    on_disagreement: str  # label_blind: rationalize | drop
    qc: QCSettings


def _plan(style: str, cfg: Mapping[str, Any]) -> _Plan:
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
    return _Plan(style, mode, on_disagreement, QCSettings.from_config(cfg))


def _backend(
    cfg: Mapping[str, Any], qc: QCSettings, cache_path: Path, read_also: Sequence[Path]
) -> _Backend:
    backend_name = cfg["backend"]
    if backend_name == "template":
        try:  # refused at parse time in the workflow; here for callers of the library
            check_label_blind_teacher(cfg)
        except ValueError as error:
            raise TeacherError(str(error)) from None
        return _TemplateBackend(cfg)
    if backend_name == "openai":
        return _OpenAIBackend(cfg, qc, cache_path, read_also)
    raise TeacherError(f"teacher.backend '{backend_name}' is unknown; use 'template' or 'openai'.")


# What a backend reads of a subject: its facts, and its history in whichever form is present.
_SUBJECT_COLUMNS = ("subject_id", "split", "label", "age", "sex", "codes")
_HISTORY_COLUMNS = ("variant", "header", "lines", "sections", "shown_history")


def _subjects(subjects: pl.DataFrame) -> list[_Subject]:
    history = (c for c in _HISTORY_COLUMNS if c in subjects.columns)
    rows = subjects.select(*_SUBJECT_COLUMNS, *history).to_dicts()
    return [_Subject(row=r) for r in rows]


def _take_draw(
    s: _Subject, raw: str, sampling: str, finish: str | None, plan: _Plan, prompt: str
) -> None:
    """Record one draw of subject ``s``: its text (and, label-blind, its answer) and the QC
    checks the text fails."""
    s.attempts += 1
    s.sampling = sampling
    s.finish_reason = finish
    label = bool(s.row["label"])
    facts = (s.row["codes"], plan.qc, s.row["age"], finish)
    if prompt == "label_blind":
        s.text, s.answer = split_answer(raw)
        failures = ["missing_answer"] if s.answer is None else []
        failures += qc_failures(s.text, plan.style, label, *facts)
    else:
        s.text = raw.strip()
        failures = qc_failures(s.text, plan.style, label, *facts)
    s.failures = failures


def _run_phase(
    backend: _Backend,
    todo: list[_Subject],
    plan: _Plan,
    prompt: str,
    accept_as: str,
    first_failures: Counter[str] | None,
) -> None:
    """Generate for `todo` until each is accepted or its attempts run out; in the blind
    phase a wrong answer also ends it (that is the teacher's prediction, not noise).
    ``first_failures``: where to count the first attempt's failures (None: not counted)."""
    for attempt in range(plan.qc.max_attempts):
        if not todo:
            return
        retry = []
        for s, raw, sampling, finish in _draw(backend, todo, plan.style, prompt, attempt):
            _take_draw(s, raw, sampling, finish, plan, prompt)
            if attempt == 0 and first_failures is not None:
                first_failures.update(s.failures)
            label = bool(s.row["label"])
            if prompt == "label_blind" and s.answer not in (None, label):
                s.disagreed = True
            elif s.failures:
                retry.append(s)
            else:
                s.source = accept_as
        todo = retry


def _generate(backend: _Backend, state: list[_Subject], plan: _Plan) -> Counter[str]:
    """Every subject's rationale, per the mode; returns the first attempt's QC failures."""
    first_failures: Counter[str] = Counter()
    if plan.mode == "label_aware":
        _run_phase(backend, state, plan, "label_aware", "label_aware", first_failures)
    else:
        _run_phase(backend, state, plan, "label_blind", "agreed", first_failures)
        if plan.on_disagreement == "rationalize":
            todo = [s for s in state if s.source is None]
            _run_phase(backend, todo, plan, "label_aware", "rationalized", None)
    return first_failures


@dataclass
class _Settled:
    """Which subjects keep a rationale, and why the others do not."""

    kept: list[_Subject] = field(default_factory=list)
    kept_failing: int = 0
    dropped_by: Counter[str] = field(default_factory=Counter)
    final_failures: Counter[str] = field(default_factory=Counter)


def _settle(state: list[_Subject], plan: _Plan) -> _Settled:
    """Keep every accepted rationale; keep the rest flagged or drop them, per the settings."""
    out = _Settled()
    for s in state:
        if s.source is not None:
            out.kept.append(s)
            continue
        out.final_failures.update(s.failures)
        if plan.mode == "label_blind" and s.disagreed and plan.on_disagreement == "drop":
            out.dropped_by["disagrees_with_label"] += 1
        elif plan.qc.on_failure == "drop" or not s.text.strip():
            # An empty text is never kept: no fine-tuning example can be built from it.
            out.dropped_by[s.failures[0] if s.failures else "empty"] += 1
        else:
            out.kept.append(s)
            out.kept_failing += 1
    return out


# The rationale table's columns after subject_id (whose type is the subjects' own).
_RATIONALE_COLUMNS: dict[str, Any] = {
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
}


def _rationale_table(
    kept: list[_Subject], plan: _Plan, teacher: str, backend: _Backend, id_type: Any
) -> pl.DataFrame:
    n = len(kept)
    return pl.DataFrame(
        {
            "subject_id": [s.row["subject_id"] for s in kept],
            "split": [s.row["split"] for s in kept],
            "label": [s.row["label"] for s in kept],
            "style": [plan.style] * n,
            "teacher": [teacher] * n,
            "backend": [backend.name] * n,
            "teacher_model": [backend.model] * n,
            "sampling": [s.sampling for s in kept],
            "mode": [plan.mode] * n,
            "source": [s.source or "failed_qc" for s in kept],
            "teacher_answer": [s.answer for s in kept],
            "attempts": [s.attempts for s in kept],
            "qc_pass": [s.source is not None for s in kept],
            "qc_failures": [",".join(s.failures) if s.source is None else None for s in kept],
            "finish_reason": [s.finish_reason for s in kept],
            "rationale": [s.text for s in kept],
        },
        schema={"subject_id": id_type, **_RATIONALE_COLUMNS},
    )


def _generation_report(
    state: list[_Subject],
    settled: _Settled,
    first_failures: Counter[str],
    plan: _Plan,
    header: Mapping[str, Any],
) -> dict[str, Any]:
    """The generation's counts; ``header``: teacher, style, mode and backend."""
    report: dict[str, Any] = {
        **header,
        "subjects": len(state),
        "kept": len(settled.kept),
        "dropped": len(state) - len(settled.kept),
        "qc_pass": sum(1 for s in state if s.source is not None),
        "kept_failing_qc": settled.kept_failing,
        "regenerated": sum(1 for s in state if s.attempts > 1),
        "recovered_by_regeneration": sum(
            1 for s in state if s.attempts > 1 and s.source is not None
        ),
        "requests_per_subject_max": max((s.attempts for s in state), default=0),
        "first_attempt_failures": ordered_reasons(first_failures),
        "final_failures": ordered_reasons(settled.final_failures),
        "dropped_by_reason": ordered_reasons(settled.dropped_by),
        "truncated": sum(1 for s in state if s.finish_reason == "length"),
    }
    if plan.mode == "label_blind":
        report["label_blind"] = {
            "agreed": sum(1 for s in state if s.source == "agreed"),
            "disagreed": sum(1 for s in state if s.disagreed),
            "rationalized": sum(1 for s in state if s.source == "rationalized"),
            "no_answer": sum(1 for s in state if s.answer is None),
            "on_disagreement": plan.on_disagreement,
        }
    return report


def _usage(backend: _Backend, state: list[_Subject]) -> dict[str, Any]:
    if isinstance(backend, _OpenAIBackend):
        usage = backend.usage.as_dict()
        usage.pop("cost", None)  # priced in the QC report, where a price change reruns nothing
        usage["total_prompt_tokens"] = backend.total_prompt_tokens
        usage["total_completion_tokens"] = backend.total_completion_tokens
        return usage
    return {"requests_sent": 0, "generated": sum(s.attempts for s in state)}


def generate_rationales(
    subjects: pl.DataFrame,
    style: str,
    cfg: Mapping[str, Any],
    cache_path: Path,
    *,
    cache_read_also: Sequence[Path] = (),
    whole_style: bool = True,
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Rationales of one style for the training and tuning subjects given.

    ``subjects``: training and tuning subjects only (:func:`teacher_view` or
    :func:`teacher_inputs`); any other split is refused with TeacherError. An optional
    ``shown_history`` column is what the teacher is shown (else the newest
    ``max_history_lines`` lines of the history); ``codes`` are the codes it may cite.

    Each rationale is checked (`qc_failures`); failures are regenerated with a new draw up to
    `teacher.qc.max_attempts` times, then kept (flagged) or dropped per `teacher.qc.on_failure`.
    In `label_blind` mode the teacher first predicts without the label; rationales whose answer
    agrees with the label are kept, the rest are rationalized with the label as a hint (STaR)
    or dropped, per `teacher.label_blind.on_disagreement`.

    Answers are appended to ``cache_path``, and read from it and from ``cache_read_also``. With
    ``whole_style`` (the subjects are the whole style, not one shard of it), near-duplicates
    are flagged too: a share of the style means nothing on part of it.

    Returns the rationale table and a report (counts per outcome and reason, usage) for the log
    and the QC report.
    """
    plan = _plan(style, cfg)
    _check_splits(subjects)
    backend = _backend(cfg, plan.qc, cache_path, cache_read_also)
    state = _subjects(subjects)
    first_failures = _generate(backend, state, plan)
    settled = _settle(state, plan)
    id_type = subjects.schema["subject_id"]
    table = _rationale_table(settled.kept, plan, cfg["name"], backend, id_type)
    header = {
        "teacher": cfg["name"],
        "style": style,
        "mode": plan.mode,
        "backend": backend.name,
    }
    report = _generation_report(state, settled, first_failures, plan, header)
    report["usage"] = _usage(backend, state)
    if whole_style:
        table, report = flag_near_duplicates(table, report, plan.qc)
    return table, report


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
