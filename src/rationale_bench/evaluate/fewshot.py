"""Few-shot in-context arms: the base model sees k solved training examples before each question.

The reference study found that the same teacher rationales that hurt as SFT targets help as
in-context demonstrations; these arms test that on the same splits. Demonstrations are drawn,
balanced by label and in a seeded order, from the configuration's own training subset (the
subjects its fine-tuned twins train on), so only training subjects' labels and teacher text
ever appear in a held-out prompt. Every prompt fits the model's context: demonstrations share
what the longest target prompt and the answer (or the model's own rationale) leave free.
"""

from __future__ import annotations

import random
from typing import Any

import polars as pl

from rationale_bench.cohort.build import training_subset
from rationale_bench.text import formats
from rationale_bench.text.serialize import history_of, question_block

DEMO_SEPARATOR = "\n\n"


class FewShotError(ValueError):
    """The demonstrations cannot be built as configured."""


def select_demonstrations(cohort: pl.DataFrame, n_train: int, seed: int, k: int) -> list[int]:
    """k subject ids from the training subset: half cases (rounded down), the rest non-cases,
    in a seeded order."""
    subset = training_subset(cohort, n_train, seed)
    cases = subset.filter(pl.col("label"))["subject_id"].to_list()
    controls = subset.filter(~pl.col("label"))["subject_id"].to_list()
    n_cases = k // 2
    if len(cases) < n_cases or len(controls) < k - n_cases:
        raise FewShotError(
            f"few-shot needs {n_cases} cases and {k - n_cases} non-cases in the training subset "
            f"(n_train={n_train}, seed={seed}), which has {len(cases)} and {len(controls)}. "
            "Lower evaluation.few_shot_k."
        )
    rng = random.Random(f"few-shot:{seed}:{n_train}")
    chosen = rng.sample(cases, n_cases) + rng.sample(controls, k - n_cases)
    rng.shuffle(chosen)
    return chosen


def _completion(
    label: bool, rationale: str | None, words: tuple[str, str] = formats.DEFAULT_ANSWER_WORDS
) -> str:
    answer = formats.ANSWER_PREFIX + formats.answer_words(words)[bool(label)]
    if rationale is None:
        return answer
    return formats.RATIONALE_PREFIX + rationale.strip() + "\n" + answer


def demonstration(
    row: dict[str, Any], question: str, completion: str, tokenizer: Any, budget: int
) -> str:
    """One solved example (a histories row) within ``budget`` tokens: the newest history lines
    that fit, in the row's serialization variant."""

    def text(n_lines: int) -> str:
        return history_of(row, n_lines) + question_block(question) + completion

    def n_tokens(n_lines: int) -> int:
        return len(tokenizer(text(n_lines), add_special_tokens=False)["input_ids"])

    if n_tokens(0) > budget:
        raise FewShotError(
            f"a demonstration needs at least {n_tokens(0)} tokens but has {budget}: raise the "
            "model's max_seq_len, lower evaluation.few_shot_k, or use shorter rationales."
        )
    # The most lines that fit (token counts grow with lines): binary search on the exact text.
    low, high = 0, len(row["lines"])
    while low < high:
        middle = (low + high + 1) // 2
        if n_tokens(middle) <= budget:
            low = middle
        else:
            high = middle - 1
    return text(low)


def few_shot_prompts(
    prompts: pl.DataFrame,
    histories: pl.DataFrame,
    demo_ids: list[int],
    rationales: pl.DataFrame | None,
    question: str,
    tokenizer: Any,
    max_seq_len: int,
    reserve: int,
    words: tuple[str, str] = formats.DEFAULT_ANSWER_WORDS,
) -> pl.DataFrame:
    """``prompts`` with the demonstrations put before each prompt, all within ``max_seq_len``.

    ``reserve`` tokens stay free after the longest prompt for the answer slot (and, for
    rationale demonstrations, the model's own rationale).
    """
    longest = int(prompts["n_tokens"].max())
    # Each demonstration's share, less the blank line that separates it from the next.
    budget = (max_seq_len - longest - reserve) // max(1, len(demo_ids)) - 2
    demos = histories.filter(pl.col("subject_id").is_in(demo_ids))
    by_id = {row["subject_id"]: row for row in demos.iter_rows(named=True)}
    text_of = (
        dict(rationales.select("subject_id", "rationale").iter_rows())
        if rationales is not None
        else {}
    )
    blocks = []
    for sid in demo_ids:
        row = by_id[sid]
        if row["split"] != "train":
            raise FewShotError(f"demonstration subject {sid} is not a training subject.")
        rationale = text_of.get(sid) if rationales is not None else None
        if rationales is not None and not rationale:
            raise FewShotError(f"demonstration subject {sid} has no teacher rationale.")
        completion = _completion(row["label"], rationale, words)
        blocks.append(demonstration(row, question, completion, tokenizer, budget))
    prefix = "".join(block + DEMO_SEPARATOR for block in blocks)
    return prompts.with_columns(prompt=prefix + pl.col("prompt"))
