"""Patient histories as text, and prompts that fit a model's token budget.

Two steps, two files:
- ``build_histories``: for each cohort subject, the input events (strictly before index), grouped
  by visit and rendered as lines, newest first, with a header that is never cut. Independent of
  any model, so the teacher and the tokenizer builder can read it.
- ``build_prompts``: for one model's tokenizer, drop the oldest lines until header, history and
  question fit ``max_prompt_tokens``. Truncation happens here, before any template or completion
  is added, so a training target can never be cut (REFERENCES.md: trl#6668 silent zero loss).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import polars as pl

from rationale_bench.codes import describe_many, matches_any
from rationale_bench.cohort import DAYS_PER_YEAR

SERIALIZATIONS = ("timeline_recent",)
# Codes that are not clinical history lines: demographics are in the header, visits are the
# grouping key, and death cannot precede the index of an included subject.
NON_HISTORY_PREFIXES = ("MEDS_BIRTH", "MEDS_DEATH", "SEX/", "VISIT/")
SEX_WORDS = {"F": "female", "M": "male"}


class SerializationError(ValueError):
    """A history cannot be serialized as configured."""


def input_events(
    events: pl.LazyFrame, cohort: pl.DataFrame, lookback_days: int | None
) -> pl.LazyFrame:
    """Events that a model may see: strictly before the subject's index time."""
    frame = events.join(cohort.lazy().select("subject_id", "index_time"), on="subject_id").filter(
        (pl.col("time") < pl.col("index_time")) & ~matches_any(pl.col("code"), NON_HISTORY_PREFIXES)
    )
    if lookback_days is not None:
        frame = frame.filter(
            pl.col("time") >= pl.col("index_time") - pl.duration(days=lookback_days)
        )
    return frame


def _event_text(description: pl.Expr, numeric_value: pl.Expr) -> pl.Expr:
    value = numeric_value.round(1).cast(pl.String)
    return (
        pl.when(numeric_value.is_not_null()).then(description + " " + value).otherwise(description)
    )


def build_histories(
    events: pl.LazyFrame | pl.DataFrame, cohort: pl.DataFrame, cfg: Mapping[str, Any]
) -> pl.DataFrame:
    """One row per cohort subject with the rendered header and history lines (newest first).

    Columns: ``subject_id, split, label, age, sex, header, lines, n_events, n_unknown_codes,
    codes``; ``codes`` are the distinct input codes (for grounding checks and Table 1).
    """
    if cfg["variant"] not in SERIALIZATIONS:
        raise SerializationError(
            f"serialization.variant '{cfg['variant']}' is unknown; "
            f"choose one of {', '.join(SERIALIZATIONS)}."
        )
    frame = input_events(events.lazy(), cohort, cfg.get("lookback_days")).collect()
    if frame["code"].null_count() or frame["time"].null_count():
        raise SerializationError(
            f"events: {frame['code'].null_count()} input events have no code and "
            f"{frame['time'].null_count()} no time; fix them in the data (MEDS requires both)."
        )
    names = describe_many(frame["code"].unique().to_list())
    lookup = pl.DataFrame(
        {"code": list(names), "description": [names[c] for c in names]},
        schema={"code": pl.String, "description": pl.String},
    )
    short = pl.col("code").str.split("/").list.last()
    frame = frame.join(lookup, on="code", how="left").with_columns(
        unknown=pl.col("description").is_null(),
        description=pl.coalesce(pl.col("description") + " (" + short + ")", pl.col("code")),
    )
    years_before = ((pl.col("index_time") - pl.col("time")).dt.total_days() / DAYS_PER_YEAR).round(
        1
    )
    visits = (
        frame.with_columns(
            text=_event_text(pl.col("description"), pl.col("numeric_value")), years=years_before
        )
        .group_by("subject_id", "time")
        .agg(pl.col("years").first(), pl.col("text").unique(maintain_order=True).sort())
        .sort("subject_id", "time", descending=[False, True])
        .with_columns(
            line="- "
            + pl.col("years").cast(pl.String)
            + " years before: "
            + pl.col("text").list.join("; ")
        )
    )
    per_subject = visits.group_by("subject_id", maintain_order=True).agg(lines=pl.col("line"))
    stats = frame.group_by("subject_id").agg(
        n_events=pl.len(),
        n_unknown_codes=pl.col("unknown").sum(),
        codes=pl.col("code").unique().sort(),
    )
    sex_word = pl.col("sex").replace_strict(SEX_WORDS, default=pl.col("sex"))
    return (
        cohort.select("subject_id", "split", "label", "age", "sex")
        .join(per_subject, on="subject_id", how="left")
        .join(stats, on="subject_id", how="left")
        .with_columns(
            header="## Patient\nAge at prediction time: "
            + pl.col("age").floor().cast(pl.Int32).cast(pl.String)
            + " years\nSex: "
            + sex_word
            + "\n## History (most recent first)\n",
            lines=pl.col("lines").fill_null([]),
            n_events=pl.col("n_events").fill_null(0).cast(pl.Int32),
            n_unknown_codes=pl.col("n_unknown_codes").fill_null(0).cast(pl.Int32),
            codes=pl.col("codes").fill_null([]),
        )
        .select(
            "subject_id",
            "split",
            "label",
            "age",
            "sex",
            "header",
            "lines",
            "n_events",
            "n_unknown_codes",
            "codes",
        )
        .sort("subject_id")
    )


def question_block(question: str) -> str:
    """The fixed text after the history: the same for every format and model."""
    return f"\nQuestion: {question}\n"


def history_text(header: str, lines: list[str]) -> str:
    return header + "".join(line + "\n" for line in lines)


def _count_tokens(tokenizer: Any, texts: list[str]) -> list[int]:
    if not texts:
        return []
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [len(ids) for ids in encoded]


def build_prompts(
    histories: pl.DataFrame, tokenizer: Any, cfg: Mapping[str, Any], max_prompt_tokens: int
) -> pl.DataFrame:
    """Fit each history to ``max_prompt_tokens`` of this tokenizer, dropping the oldest lines.

    Token counts of header, question and every line are computed in batches; the kept prefix of
    newest lines is chosen from their cumulative sum and then checked on the exact prompt (BPE
    merges across line breaks can differ from the sum), dropping one more line if needed.
    Columns: ``subject_id, split, label, age, sex, history_text, prompt, n_tokens, truncated,
    n_lines_dropped``.
    """
    question = question_block(cfg["question"])
    fixed_texts = [h + question for h in histories["header"].to_list()]
    fixed_tokens = _count_tokens(tokenizer, fixed_texts)
    special = len(tokenizer("", add_special_tokens=True)["input_ids"])
    all_lines = histories["lines"].to_list()
    flat = [line + "\n" for lines in all_lines for line in lines]
    flat_tokens = _count_tokens(tokenizer, flat)

    rows = []
    offset = 0
    for i, lines in enumerate(all_lines):
        line_tokens = flat_tokens[offset : offset + len(lines)]
        offset += len(lines)
        budget = max_prompt_tokens - fixed_tokens[i] - special
        if budget < 0:
            raise SerializationError(
                f"subject {histories['subject_id'][i]}: header and question alone take "
                f"{fixed_tokens[i] + special} tokens, more than "
                f"max_prompt_tokens={max_prompt_tokens}. "
                "Raise the model's max_seq_len or shorten serialization.question."
            )
        keep, used = 0, 0
        for n in line_tokens:
            if used + n > budget:
                break
            used += n
            keep += 1
        header = histories["header"][i]
        while True:
            history = history_text(header, lines[:keep])
            prompt = history + question
            n_tokens = len(tokenizer(prompt, add_special_tokens=True)["input_ids"])
            if n_tokens <= max_prompt_tokens or keep == 0:
                break
            keep -= 1
        if n_tokens > max_prompt_tokens:
            raise SerializationError(
                f"subject {histories['subject_id'][i]}: the prompt without history takes "
                f"{n_tokens} "
                f"tokens > max_prompt_tokens={max_prompt_tokens}."
            )
        rows.append((history, prompt, n_tokens, keep < len(lines), len(lines) - keep))
    extra = pl.DataFrame(
        rows,
        schema={
            "history_text": pl.String,
            "prompt": pl.String,
            "n_tokens": pl.Int32,
            "truncated": pl.Boolean,
            "n_lines_dropped": pl.Int32,
        },
        orient="row",
    )
    return pl.concat(
        [histories.select("subject_id", "split", "label", "age", "sex"), extra], how="horizontal"
    )
