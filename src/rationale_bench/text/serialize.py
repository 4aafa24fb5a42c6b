"""Patient histories as text, and prompts that fit a model's token budget.

Two steps, two files:
- ``build_histories``: for each cohort subject, the input events (strictly before the end of its
  input window: the index time, or earlier with a blackout) rendered as lines by one of the
  named variants, with a header that is never cut. Independent of any model, so the teacher,
  the baselines and the tokenizer builder can read it.
- ``build_prompts``: for one model's tokenizer, drop the oldest lines until header, history and
  question (and the chat template around them, when the model has one) fit
  ``max_prompt_tokens``. Truncation happens here, before any completion is added, so a training
  target can never be cut (trl#6668 silent zero loss; docs/references.md).

Every variant stores its lines newest first (the order in which they are kept), whatever order
it shows them in, so one truncation rule serves all: keep the first k lines.

Variants (the grid's ``serialization`` axis):
- ``timeline_recent``: one line per visit, newest first, with the time before prediction.
- ``markdown_recent``: EHRSHOT-style sections (conditions, medications, procedures,
  measurements, other); each code once, with its count and first and latest times, newest first;
  measurements with their latest value and a low / normal / high flag where a reference
  range is known.
- ``chronological``: one event per line, oldest first.
- ``first_occurrence``: one line per code at its first occurrence, oldest first ("at age 58.3:
  Essential (primary) hypertension (I10)"), like the UK-Biobank-style input.
- ``codes_only``: one line per visit with bare codes, for ablations.

Time encodings: years or days before prediction time, age at the event, none, or calendar dates.
Calendar dates are never the default: they leak secular trends and coding changes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

from rationale_bench.cohort.build import DAYS_PER_YEAR
from rationale_bench.data.codes import LAB_REFERENCE_RANGES, describe_many, matches_any
from rationale_bench.text.templates import PLAIN, PromptTemplate

log = logging.getLogger(__name__)

SERIALIZATIONS = (
    "timeline_recent",
    "markdown_recent",
    "chronological",
    "first_occurrence",
    "codes_only",
)
TIME_ENCODINGS = ("relative_years", "relative_days", "age", "none", "calendar_date")
# A variant's natural time encoding when serialization.time_encoding is null.
DEFAULT_TIME_ENCODING = {"first_occurrence": "age"}
OLDEST_FIRST = frozenset({"chronological", "first_occurrence"})
# Codes that are not clinical history lines: demographics are in the header, visits are the
# grouping key, observation periods are bookkeeping, and death cannot precede the index of an
# included subject.
NON_HISTORY_PREFIXES = ("MEDS_BIRTH", "MEDS_DEATH", "SEX/", "VISIT/", "OBSERVATION_PERIOD/")
SEX_WORDS = {"F": "female", "M": "male"}

# markdown_recent sections, in the order shown, and the vocabularies that fall in each; a
# code with a numeric value is a measurement whatever its vocabulary.
SECTION_TITLES = {
    "conditions": "Conditions",
    "medications": "Medications",
    "procedures": "Procedures",
    "measurements": "Measurements",
    "other": "Other",
}
SECTION_VOCABULARIES = {
    "conditions": ("ICD10", "ICD10CM", "ICD9", "ICD9CM", "SNOMED", "READ"),
    "medications": ("ATC", "RXNORM", "NDC", "DRUG"),
    "procedures": ("PROC", "CPT", "CPT4", "HCPCS", "OPCS4", "ICD10PCS", "ICD9PROC"),
    "measurements": ("LAB", "LOINC", "VITAL"),
}

HISTORY_COLUMNS = [
    "subject_id",
    "split",
    "label",
    "age",
    "sex",
    "variant",
    "header",
    "lines",
    "sections",
    "line_events",
    "line_codes",
    "n_events",
    "n_unknown_codes",
    "codes",
]


class SerializationError(ValueError):
    """A history cannot be serialized as configured."""


def time_encoding_of(cfg: Mapping[str, Any]) -> str:
    """The configured time encoding, or the variant's natural one when unset."""
    encoding = cfg.get("time_encoding") or DEFAULT_TIME_ENCODING.get(
        cfg["variant"], "relative_years"
    )
    if encoding not in TIME_ENCODINGS:
        raise SerializationError(
            f"serialization.time_encoding '{encoding}' is unknown; "
            f"choose one of {', '.join(TIME_ENCODINGS)}."
        )
    return encoding


def input_events(
    events: pl.LazyFrame, cohort: pl.DataFrame, lookback_days: int | None
) -> pl.LazyFrame:
    """Events that a model may see: strictly before the subject's input end.

    The input end is ``input_end_time`` when the cohort has one (a blackout window before
    index), else the index time; an event at the index time itself is never an input.
    """
    end = "input_end_time" if "input_end_time" in cohort.columns else "index_time"
    subjects = cohort.lazy().select(
        "subject_id", "index_time", "age", pl.col(end).alias("input_end")
    )
    frame = events.join(subjects, on="subject_id").filter(
        (pl.col("time") < pl.col("input_end"))
        & (pl.col("time") < pl.col("index_time"))
        & ~matches_any(pl.col("code"), NON_HISTORY_PREFIXES)
    )
    if lookback_days is not None:
        frame = frame.filter(
            pl.col("time") >= pl.col("index_time") - pl.duration(days=lookback_days)
        )
    return frame.drop("input_end")


def _time_label(encoding: str, time: str = "time") -> pl.Expr | None:
    """Text of an event time under ``encoding`` (None: no time is shown)."""
    years = (pl.col("index_time") - pl.col(time)).dt.total_days() / DAYS_PER_YEAR
    if encoding == "relative_years":
        return years.round(1).cast(pl.String) + " years before"
    if encoding == "relative_days":
        return (pl.col("index_time") - pl.col(time)).dt.total_days().cast(
            pl.String
        ) + " days before"
    if encoding == "age":
        return "at age " + (pl.col("age") - years).round(1).cast(pl.String)
    if encoding == "calendar_date":
        return pl.col(time).dt.strftime("%Y-%m-%d")
    return None


def _with_time(text: pl.Expr, label: pl.Expr | None) -> pl.Expr:
    return "- " + (text if label is None else label + ": " + text)


def _value_text(numeric_value: pl.Expr) -> pl.Expr:
    return numeric_value.round(1).cast(pl.String)


def _event_text(description: pl.Expr, numeric_value: pl.Expr) -> pl.Expr:
    return (
        pl.when(numeric_value.is_not_null())
        .then(description + " " + _value_text(numeric_value))
        .otherwise(description)
    )


def _section(code: pl.Expr, numeric_value: pl.Expr) -> pl.Expr:
    vocab = code.str.split("/").list.first().str.to_uppercase()
    expr = pl.when(numeric_value.is_not_null()).then(pl.lit("measurements"))
    for section, vocabularies in SECTION_VOCABULARIES.items():
        expr = expr.when(vocab.is_in(vocabularies)).then(pl.lit(section))
    return expr.otherwise(pl.lit("other"))


def _reference_flag(code: pl.Expr, value: pl.Expr) -> pl.Expr:
    """' (low)' / ' (normal)' / ' (high)' against the known reference range, else ''."""
    low = code.replace_strict(
        {f"LAB/{k}": lo for k, (lo, _) in LAB_REFERENCE_RANGES.items()},
        default=None,
        return_dtype=pl.Float64,
    )
    high = code.replace_strict(
        {f"LAB/{k}": hi for k, (_, hi) in LAB_REFERENCE_RANGES.items()},
        default=None,
        return_dtype=pl.Float64,
    )
    known = low.is_not_null() | high.is_not_null()
    return (
        pl.when(~known | value.is_null())
        .then(pl.lit(""))
        .when(low.is_not_null() & (value < low))
        .then(pl.lit(" (low)"))
        .when(high.is_not_null() & (value > high))
        .then(pl.lit(" (high)"))
        .otherwise(pl.lit(" (normal)"))
    )


def _describe(frame: pl.DataFrame, code_names: pl.DataFrame | None) -> pl.DataFrame:
    """Add ``description`` ("name (CODE)", or the bare code when unknown) and ``unknown``.

    Names from the data's own code table (OMOP concept names, a MEDS metadata/codes.parquet)
    come first; the rest from the maintained vocabularies in :mod:`rationale_bench.data.codes`.
    """
    distinct = frame["code"].unique().to_list()
    names = describe_many(distinct)
    lookup = pl.DataFrame(
        {"code": list(names), "name": [names[c] for c in names]},
        schema={"code": pl.String, "name": pl.String},
    )
    if code_names is not None and code_names.height:
        given = code_names.select(
            pl.col("code").cast(pl.String), pl.col("description").cast(pl.String).alias("given")
        ).unique("code", keep="first")
        lookup = lookup.join(given, on="code", how="left").select(
            "code", name=pl.coalesce("given", "name")
        )
    short = pl.col("code").str.split("/").list.last()
    return frame.join(lookup, on="code", how="left").with_columns(
        unknown=pl.col("name").is_null(),
        short=short,
        description=pl.coalesce(pl.col("name") + " (" + short + ")", pl.col("code")),
    )


def _visit_lines(frame: pl.DataFrame, label: pl.Expr | None, text: pl.Expr) -> pl.DataFrame:
    """One line per (subject, time), its events sorted and de-duplicated, newest first."""
    return (
        frame.with_columns(text=text)
        .group_by("subject_id", "time")
        .agg(
            pl.col("text").unique().sort(),
            pl.len().alias("n"),
            pl.col("code").unique().sort().alias("line_codes"),
            *([label.first().alias("when")] if label is not None else []),
        )
        .sort("subject_id", "time", descending=[False, True])
        .select(
            "subject_id",
            line=_with_time(
                pl.col("text").list.join("; "), pl.col("when") if label is not None else None
            ),
            section=pl.lit(""),
            n="n",
            line_codes="line_codes",
        )
    )


def _event_lines(frame: pl.DataFrame, label: pl.Expr | None) -> pl.DataFrame:
    """One line per distinct (subject, time, event), newest first (shown oldest first)."""
    return (
        frame.with_columns(text=_event_text(pl.col("description"), pl.col("numeric_value")))
        .with_columns(line=_with_time(pl.col("text"), label))
        .group_by("subject_id", "time", "line")
        .agg(n=pl.len(), line_codes=pl.col("code").unique().sort())
        .sort("subject_id", "time", "line", descending=[False, True, True])
        .select("subject_id", "line", "line_codes", section=pl.lit(""), n="n")
    )


def _first_occurrence_lines(frame: pl.DataFrame, label: pl.Expr | None) -> pl.DataFrame:
    """One line per (subject, code) at its first occurrence, newest first (shown oldest first)."""
    return (
        frame.group_by("subject_id", "code")
        .agg(
            pl.col("time").min(),
            pl.col("description").first(),
            pl.col("index_time").first(),
            pl.col("age").first(),
            n=pl.len(),
        )
        .with_columns(line=_with_time(pl.col("description"), label))
        .sort("subject_id", "time", "line", descending=[False, True, True])
        .select("subject_id", "line", section=pl.lit(""), n="n", line_codes=pl.concat_list("code"))
    )


def _markdown_lines(frame: pl.DataFrame, encoding: str) -> pl.DataFrame:
    """One line per (subject, code): count, latest and first times, latest value and flag."""
    per_code = (
        frame.sort("time")
        .group_by("subject_id", "code")
        .agg(
            n=pl.len(),
            first_time=pl.col("time").first(),
            time=pl.col("time").last(),
            value=pl.col("numeric_value").drop_nulls().last(),
            description=pl.col("description").first(),
            index_time=pl.col("index_time").first(),
            age=pl.col("age").first(),
        )
        .with_columns(section=_section(pl.col("code"), pl.col("value")))
    )
    latest, first = _time_label(encoding, "time"), _time_label(encoding, "first_time")
    n_text = pl.col("n").cast(pl.String)
    measured = (
        pl.col("description")
        + ": "
        + _value_text(pl.col("value"))
        + _reference_flag(pl.col("code"), pl.col("value"))
    )
    if latest is None:
        condition = (
            pl.when(pl.col("n") > 1)
            .then(pl.col("description") + " (" + n_text + " records)")
            .otherwise(pl.col("description"))
        )
        measurement = measured + pl.when(pl.col("n") > 1).then(
            " (" + n_text + " measurements)"
        ).otherwise(pl.lit(""))
    else:
        condition = (
            pl.when(pl.col("n") > 1)
            .then(
                pl.col("description")
                + ": "
                + n_text
                + " records, latest "
                + latest
                + ", first "
                + first
            )
            .otherwise(pl.col("description") + ": " + latest)
        )
        measurement = (
            measured
            + ", "
            + latest
            + pl.when(pl.col("n") > 1).then(" (" + n_text + " measurements)").otherwise(pl.lit(""))
        )
    text = pl.when(pl.col("value").is_not_null()).then(measurement).otherwise(condition)
    return (
        per_code.with_columns(line="- " + text)
        .sort("subject_id", "time", "line", descending=[False, True, False])
        .select("subject_id", "line", "section", "n", line_codes=pl.concat_list("code"))
    )


def _codes_only_text() -> pl.Expr:
    """The code without its vocabulary (with it when the code is unknown), and its value."""
    code = pl.when(pl.col("unknown")).then(pl.col("code")).otherwise(pl.col("short"))
    value = pl.col("numeric_value")
    return pl.when(value.is_not_null()).then(code + " " + _value_text(value)).otherwise(code)


def _header(variant: str) -> pl.Expr:
    age = pl.col("age").floor().cast(pl.Int32).cast(pl.String)
    sex = pl.col("sex").replace_strict(SEX_WORDS, default=pl.col("sex"))
    if variant == "markdown_recent":
        return "# Patient\n- Age at prediction time: " + age + " years\n- Sex: " + sex + "\n"
    title = {
        "timeline_recent": "History (most recent first)",
        "codes_only": "Codes (most recent first)",
        "chronological": "History (oldest first)",
        "first_occurrence": "First occurrence of each code (oldest first)",
    }[variant]
    return "## Patient\nAge at prediction time: " + age + " years\nSex: " + sex + f"\n## {title}\n"


def build_histories(
    events: pl.LazyFrame | pl.DataFrame,
    cohort: pl.DataFrame,
    cfg: Mapping[str, Any],
    code_names: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """One row per cohort subject with the rendered header and history lines (newest first).

    ``cfg``: ``variant``, ``time_encoding`` (null: the variant's own), ``lookback_days``.
    ``code_names``: the data's own ``code, description`` table (may be None).
    Columns: :data:`HISTORY_COLUMNS`; ``lines`` newest first, ``sections`` the markdown section of
    each line (empty strings for other variants), ``line_events`` the input events each line
    stands for (a visit's events, a code's records), ``codes`` the distinct input codes (for
    grounding checks, baselines and Table 1), ``n_unknown_codes`` input events whose code has
    no known name (kept as the bare code).
    """
    variant = cfg["variant"]
    if variant not in SERIALIZATIONS:
        raise SerializationError(
            f"serialization variant '{variant}' is unknown; "
            f"choose one of {', '.join(SERIALIZATIONS)}."
        )
    encoding = time_encoding_of(cfg)
    frame = input_events(events.lazy(), cohort, cfg.get("lookback_days")).collect()
    if frame["code"].null_count() or frame["time"].null_count():
        raise SerializationError(
            f"events: {frame['code'].null_count()} input events have no code and "
            f"{frame['time'].null_count()} no time; fix them in the data (MEDS requires both)."
        )
    frame = _describe(frame, code_names)
    label = _time_label(encoding)
    if variant == "timeline_recent":
        lines = _visit_lines(
            frame, label, _event_text(pl.col("description"), pl.col("numeric_value"))
        )
    elif variant == "codes_only":
        lines = _visit_lines(frame, label, _codes_only_text())
    elif variant == "chronological":
        lines = _event_lines(frame, label)
    elif variant == "first_occurrence":
        lines = _first_occurrence_lines(frame, label)
    else:
        lines = _markdown_lines(frame, encoding)
    per_subject = lines.group_by("subject_id", maintain_order=True).agg(
        lines=pl.col("line"),
        sections=pl.col("section"),
        line_events=pl.col("n").cast(pl.Int32),
        line_codes=pl.col("line_codes"),
    )
    stats = frame.group_by("subject_id").agg(
        n_events=pl.len(),
        n_unknown_codes=pl.col("unknown").sum(),
        codes=pl.col("code").unique().sort(),
    )
    return (
        cohort.select("subject_id", "split", "label", "age", "sex")
        .join(per_subject, on="subject_id", how="left")
        .join(stats, on="subject_id", how="left")
        .with_columns(
            variant=pl.lit(variant),
            header=_header(variant),
            lines=pl.col("lines").fill_null([]),
            sections=pl.col("sections").fill_null([]),
            line_events=pl.col("line_events").fill_null([]),
            line_codes=pl.col("line_codes").fill_null([]),
            n_events=pl.col("n_events").fill_null(0).cast(pl.Int32),
            n_unknown_codes=pl.col("n_unknown_codes").fill_null(0).cast(pl.Int32),
            codes=pl.col("codes").fill_null([]),
        )
        .select(HISTORY_COLUMNS)
        .sort("subject_id")
    )


def unknown_code_summary(
    events: pl.LazyFrame | pl.DataFrame, code_names: pl.DataFrame | None = None, limit: int = 10
) -> pl.DataFrame:
    """Vocabularies of codes without a known name, with event and code counts (for the log)."""
    frame = events.lazy().filter(~matches_any(pl.col("code"), NON_HISTORY_PREFIXES)).collect()
    names = describe_many(frame["code"].unique().to_list())
    given = set() if code_names is None else set(code_names.drop_nulls("description")["code"])
    unknown = [c for c, name in names.items() if name is None and c not in given]
    return (
        frame.filter(pl.col("code").is_in(unknown))
        .group_by(vocabulary=pl.col("code").str.split("/").list.first())
        .agg(n_events=pl.len(), n_codes=pl.col("code").n_unique())
        .sort("n_events", descending=True)
        .head(limit)
    )


def question_block(question: str) -> str:
    """The fixed text after the history: the same for every format and model."""
    return f"\nQuestion: {question}\n"


def history_text(
    header: str,
    lines: Sequence[str],
    sections: Sequence[str] | None = None,
    variant: str = "timeline_recent",
) -> str:
    """The shown history of kept ``lines`` (newest first, as stored) in the variant's layout."""
    shown = list(reversed(lines)) if variant in OLDEST_FIRST else list(lines)
    if variant != "markdown_recent":
        return header + "".join(line + "\n" for line in shown)
    by_section: dict[str, list[str]] = {s: [] for s in SECTION_TITLES}
    for line, section in zip(shown, sections or [], strict=True):
        by_section[section].append(line)
    blocks = [
        f"## {SECTION_TITLES[s]}\n" + "".join(line + "\n" for line in kept)
        for s, kept in by_section.items()
        if kept
    ]
    return header + "".join(blocks)


def history_of(row: Mapping[str, Any], n_lines: int | None = None) -> str:
    """The history of a histories row with its newest ``n_lines`` lines (all when None)."""
    lines = list(row["lines"])[:n_lines]
    sections = list(row.get("sections") or [])[: len(lines)] or None
    return history_text(row["header"], lines, sections, row.get("variant", "timeline_recent"))


class TokenCounter:
    """Token counts of texts under one tokenizer, in batches, each distinct text counted once.

    Uses the fast tokenizer's backend directly when there is one (HF's ``__call__`` builds a
    Python encoding object per text, which costs more than the tokenization itself here).
    """

    def __init__(self, tokenizer: Any, add_special_tokens: bool = False) -> None:
        self.tokenizer = tokenizer
        self.add_special_tokens = add_special_tokens
        self.backend = getattr(tokenizer, "backend_tokenizer", None)
        if self.backend is not None:
            # As HF does before every call: a tokenizer.json may ship with truncation or
            # padding set, which would silently change the counts.
            self.backend.no_truncation()
            self.backend.no_padding()
        self.cache: dict[str, int] = {}

    def _encode(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        if self.backend is not None:
            encoded = self.backend.encode_batch(texts, add_special_tokens=self.add_special_tokens)
            return [len(e.ids) for e in encoded]
        ids = self.tokenizer(texts, add_special_tokens=self.add_special_tokens)["input_ids"]
        return [len(x) for x in ids]

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        new = [t for t in dict.fromkeys(texts) if t not in self.cache]
        self.cache.update(zip(new, self._encode(new), strict=True))
        return np.fromiter((self.cache[t] for t in texts), dtype=np.int64, count=len(texts))

    def uncached(self, texts: Sequence[str]) -> np.ndarray:
        """Counts of texts that are each seen once (whole prompts): no cache."""
        return np.array(self._encode(list(texts)), dtype=np.int64)


def _kept_lines(
    histories: pl.DataFrame, counter: TokenCounter, budget: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per subject, how many of its newest lines fit ``budget`` by the sum of their tokens.

    Returns that count, and the token count of every line (-1 where not counted) with each
    subject's first line's offset in it, for prefix sums later.

    Lines are counted in rounds, newest first, only as far as a subject's budget reaches: a long
    record is not tokenized to the end just to be dropped.
    """
    n = histories.height
    # Every line holds at least one token, so no more than budget lines can ever fit: the rest
    # of a long record is never looked at.
    cap = int(budget.max(initial=0)) + 1
    lines = histories["lines"].list.head(cap)
    n_lines = lines.list.len().fill_null(0).to_numpy().astype(np.int64)
    texts = (lines.explode().drop_nulls() + "\n").to_list()
    starts = np.concatenate([[0], np.cumsum(n_lines)[:-1]]).astype(np.int64)
    tokens = np.full(len(texts), -1, dtype=np.int64)
    if not texts:
        return np.zeros(n, dtype=np.int64), tokens, starts
    step = max(1, len(texts) // 1000)
    per_line = max(1.0, float(counter(texts[::step]).mean()))
    want = np.minimum(n_lines, (budget / per_line * 1.25).astype(np.int64) + 4)
    counted = np.zeros(n, dtype=np.int64)
    used = np.zeros(n, dtype=np.int64)
    todo = np.flatnonzero(want > 0)
    while todo.size:
        lengths = want[todo] - counted[todo]
        first = starts[todo] + counted[todo]
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        index = np.repeat(first, lengths) + offsets
        tokens[index] = counter([texts[i] for i in index])
        used[todo] += np.add.reduceat(tokens[index], np.cumsum(lengths) - lengths)
        counted[todo] = want[todo]
        todo = todo[(used[todo] <= budget[todo]) & (counted[todo] < n_lines[todo])]
        want[todo] = np.minimum(n_lines[todo], 2 * counted[todo])
    counted_rows = np.repeat(np.arange(n), counted)
    counted_index = np.repeat(starts, counted) + (
        np.arange(counted.sum()) - np.repeat(np.cumsum(counted) - counted, counted)
    )
    frame = pl.DataFrame({"row": counted_rows, "n": tokens[counted_index]})
    fits = (
        frame.with_columns(cum=pl.col("n").cum_sum().over("row"))
        .filter(pl.col("cum") <= pl.lit(pl.Series(budget)).gather(pl.col("row")))
        .group_by("row")
        .len()
    )
    keep = np.zeros(n, dtype=np.int64)
    keep[fits["row"].to_numpy()] = fits["len"].to_numpy()
    return keep, tokens, starts


def build_prompts(
    histories: pl.DataFrame,
    tokenizer: Any,
    cfg: Mapping[str, Any],
    max_prompt_tokens: int,
    template: PromptTemplate = PLAIN,
    chunk_size: int = 50_000,
) -> pl.DataFrame:
    """Fit each history to ``max_prompt_tokens`` of this tokenizer, dropping the oldest lines.

    Subjects are fitted ``chunk_size`` at a time, so memory stays bounded for any cohort size;
    see :func:`_fit_prompts` for how. Columns: ``subject_id, split, label, age, sex,
    history_text, prompt, n_tokens, truncated, n_lines_dropped, n_events_dropped``.
    """
    return pl.concat(
        [
            _fit_prompts(
                histories.slice(start, chunk_size), tokenizer, cfg, max_prompt_tokens, template
            )
            for start in range(0, max(1, histories.height), chunk_size)
        ]
    )


def _fit_prompts(
    histories: pl.DataFrame,
    tokenizer: Any,
    cfg: Mapping[str, Any],
    max_prompt_tokens: int,
    template: PromptTemplate = PLAIN,
) -> pl.DataFrame:
    """Fit each history to ``max_prompt_tokens`` of this tokenizer, dropping the oldest lines.

    ``prompt`` is the user text (history and question); ``n_tokens`` counts it as the model reads
    it, wrapped in ``template`` (the model's chat template, or plain text with the tokenizer's
    special tokens), so the template's tokens count against the budget too.

    All token counts are batched: the distinct headers and lines are tokenized once, the kept
    prefix of newest lines comes from their cumulative sum, and every prompt is then checked
    exactly (BPE merges across line breaks can differ from the sum), dropping one more line
    from the prompts that are over, batch by batch, and giving lines back where the sum
    overestimated.
    """
    counter = TokenCounter(tokenizer)
    prompts = _Prompts(histories, tokenizer, question_block(cfg["question"]), template)
    fixed = _fixed_tokens(prompts, counter)
    budget = max_prompt_tokens - fixed
    over = np.flatnonzero(budget < 0)
    if over.size:
        i = int(over[0])
        raise SerializationError(
            f"{over.size} subjects (first: {histories['subject_id'][i]}): header and question "
            f"alone take {int(fixed[i])} tokens, more than "
            f"max_prompt_tokens={max_prompt_tokens}. "
            "Raise the model's max_seq_len or shorten serialization.question."
        )
    keep, line_tokens, starts = _kept_lines(histories, counter, budget)
    n_lines = histories["lines"].list.len().to_numpy().astype(np.int64)
    rendered, n_tokens = _drop_lines_until_prompts_fit(prompts, keep, max_prompt_tokens)
    # The sum can also overestimate (headings of markdown sections the kept lines no longer
    # reach, merges across line breaks in tokenizers without pre-tokenization): where it did for
    # a prompt, give lines back while the exact prompt still fits. Where the sum was exact, the
    # next line did not fit by it, and is not tried.
    summed = np.array(
        [fixed[i] + line_tokens[starts[i] : starts[i] + keep[i]].sum() for i in range(prompts.n)],
        dtype=np.int64,
    )
    markdown = np.array(prompts.markdown, dtype=bool)
    todo = np.flatnonzero((keep < n_lines) & ((summed > n_tokens) | markdown))
    _give_lines_back(prompts, todo, keep, n_lines, rendered, n_tokens, max_prompt_tokens)
    return _prompt_frame(histories, rendered, n_tokens, keep, n_lines)


class _Prompts:
    """Renders and counts the prompts of one chunk of histories with a given number of lines."""

    def __init__(
        self, histories: pl.DataFrame, tokenizer: Any, question: str, template: PromptTemplate
    ) -> None:
        self.histories, self.question, self.template = histories, question, template
        self.n = histories.height
        self.counter = TokenCounter(tokenizer, add_special_tokens=template.add_special_tokens)
        self.overhead = int(self.counter.uncached([template.render("")])[0])
        self.variants = (
            histories["variant"].to_list()
            if "variant" in histories.columns
            else ["timeline_recent"] * self.n
        )
        self.markdown = [v == "markdown_recent" for v in self.variants]
        self.rows = histories.select(
            "header",
            "lines",
            "sections" if "sections" in histories.columns else pl.lit(None).alias("sections"),
        ).rows()

    def render(self, i: int, n_kept: int) -> tuple[str, str]:
        """(history text, prompt) of subject ``i`` with its ``n_kept`` newest lines."""
        header, lines, sections = self.rows[i]
        kept = list(lines[:n_kept])
        shown = list(sections[:n_kept]) if sections else None
        history = history_text(header, kept, shown, self.variants[i])
        return history, history + self.question

    def count(self, prompts: Sequence[str]) -> np.ndarray:
        """Exact token counts of prompts as the model reads them (in the template)."""
        return self.counter.uncached([self.template.render(p) for p in prompts])


def _fixed_tokens(prompts: _Prompts, counter: TokenCounter) -> np.ndarray:
    """Tokens of each prompt without its lines: template, header, question, markdown headings."""
    histories = prompts.histories
    fixed = counter((histories["header"] + prompts.question).to_list()) + prompts.overhead
    # markdown_recent adds one heading per section shown; count them all up front.
    headings = dict(
        zip(SECTION_TITLES, counter([f"## {t}\n" for t in SECTION_TITLES.values()]), strict=True)
    )
    sections_col = (
        histories["sections"] if "sections" in histories.columns else pl.Series([[]] * prompts.n)
    )
    heading_tokens = np.array(
        [
            sum(int(headings[s]) for s in set(secs)) if md else 0
            for secs, md in zip(sections_col.to_list(), prompts.markdown, strict=True)
        ],
        dtype=np.int64,
    )
    return fixed + heading_tokens


def _drop_lines_until_prompts_fit(
    prompts: _Prompts, keep: np.ndarray, max_prompt_tokens: int
) -> tuple[list[tuple[str, str]], np.ndarray]:
    """Count every prompt exactly; drop one more line from those that are over, batch by batch.

    Lowers ``keep`` in place; returns the rendered (history, prompt) pairs and their counts.
    """
    rendered = [prompts.render(i, int(keep[i])) for i in range(prompts.n)]
    n_tokens = np.zeros(prompts.n, dtype=np.int64)
    todo = np.arange(prompts.n)
    while todo.size:
        n_tokens[todo] = prompts.count([rendered[i][1] for i in todo])
        over = todo[n_tokens[todo] > max_prompt_tokens]
        stuck = over[keep[over] == 0]
        if stuck.size:
            i = int(stuck[0])
            raise SerializationError(
                f"subject {prompts.histories['subject_id'][i]}: the prompt without history "
                f"takes {int(n_tokens[i])} tokens > max_prompt_tokens={max_prompt_tokens}."
            )
        keep[over] -= 1
        for i in over:
            rendered[i] = prompts.render(int(i), int(keep[i]))
        todo = over
    return rendered, n_tokens


def _give_lines_back(
    prompts: _Prompts,
    todo: np.ndarray,
    keep: np.ndarray,
    n_lines: np.ndarray,
    rendered: list[tuple[str, str]],
    n_tokens: np.ndarray,
    max_prompt_tokens: int,
) -> None:
    """Add lines back to the ``todo`` prompts one at a time while the exact prompt fits.

    Updates ``keep``, ``rendered`` and ``n_tokens`` in place.
    """
    while todo.size:
        trials = [prompts.render(int(i), int(keep[i]) + 1) for i in todo]
        counts = prompts.count([t[1] for t in trials])
        fits = counts <= max_prompt_tokens
        for j in np.flatnonzero(fits):
            i = todo[j]
            keep[i] += 1
            rendered[i] = trials[j]
            n_tokens[i] = counts[j]
        todo = todo[fits]
        todo = todo[keep[todo] < n_lines[todo]]


def _prompt_frame(
    histories: pl.DataFrame,
    rendered: Sequence[tuple[str, str]],
    n_tokens: np.ndarray,
    keep: np.ndarray,
    n_lines: np.ndarray,
) -> pl.DataFrame:
    """The prompts table: subject columns, texts, token counts and what truncation dropped."""
    extra = pl.DataFrame(
        {
            "history_text": [r[0] for r in rendered],
            "prompt": [r[1] for r in rendered],
            "n_tokens": n_tokens,
            "truncated": keep < n_lines,
            "n_lines_dropped": n_lines - keep,
            "n_events_dropped": _events_after(histories, keep),
            "visible_codes": _codes_kept(histories, keep),
        },
        schema={
            "history_text": pl.String,
            "prompt": pl.String,
            "n_tokens": pl.Int32,
            "truncated": pl.Boolean,
            "n_lines_dropped": pl.Int32,
            "n_events_dropped": pl.Int32,
            "visible_codes": pl.List(pl.String),
        },
    )
    return pl.concat(
        [histories.select("subject_id", "split", "label", "age", "sex"), extra], how="horizontal"
    )


def _codes_kept(histories: pl.DataFrame, keep: np.ndarray) -> pl.Series:
    """The distinct codes behind each subject's kept lines: what the model can read.

    Rationale grounding and faithfulness are checked against these, not the full history.
    """
    if "line_codes" not in histories.columns:
        return pl.Series([None] * histories.height, dtype=pl.List(pl.String))
    frame = pl.DataFrame({"codes": histories["line_codes"], "keep": keep})
    kept = frame.select(
        pl.col("codes").list.slice(0, pl.col("keep")).list.eval(pl.element().explode())
    )
    return kept.to_series().list.unique().list.sort()


def _events_after(histories: pl.DataFrame, keep: np.ndarray) -> np.ndarray:
    """Input events behind each subject's dropped lines (its lines after the first ``keep``)."""
    if "line_events" not in histories.columns:
        return (histories["lines"].list.len().to_numpy() - keep).astype(np.int64)
    frame = pl.DataFrame({"events": histories["line_events"], "keep": keep})
    dropped = frame.select(pl.col("events").list.slice(pl.col("keep")).list.sum())
    return dropped.to_series().fill_null(0).to_numpy().astype(np.int64)


def truncation_summary(prompts: pl.DataFrame) -> dict[str, float]:
    """Share of prompts truncated and token statistics of one model's prompts (for the report)."""
    return {
        "n_prompts": prompts.height,
        "truncation_rate": float(prompts["truncated"].mean() or 0.0),
        "mean_lines_dropped": float(prompts["n_lines_dropped"].mean() or 0.0),
        "mean_events_dropped": float(prompts["n_events_dropped"].mean() or 0.0)
        if "n_events_dropped" in prompts.columns
        else float("nan"),
        "mean_tokens": float(prompts["n_tokens"].mean() or 0.0),
        "max_tokens": int(prompts["n_tokens"].max() or 0),
    }
