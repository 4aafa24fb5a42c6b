"""Training examples: the subjects, their targets, tokens and the batch order."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from rationale_bench.cohort.build import training_subset
from rationale_bench.text import formats
from rationale_bench.text.templates import PLAIN, PromptTemplate
from rationale_bench.train.job import TrainingError


def build_examples(
    prompts: pl.DataFrame,
    cohort: pl.DataFrame,
    rationales: pl.DataFrame | None,
    fmt: str,
    n_train: int,
    seed: int,
) -> pl.DataFrame:
    """The training subjects of this configuration with prompt, label and (if needed) rationale.

    The subject list depends only on (n_train, seed), never on the format. For the shuffled
    control the rationale column already holds another same-label subject's rationale.
    """
    subset = training_subset(cohort, n_train, seed).select("subject_id")
    return _with_targets(subset, prompts, rationales, fmt, seed, "training")


def _with_targets(
    subset: pl.DataFrame,
    prompts: pl.DataFrame,
    rationales: pl.DataFrame | None,
    fmt: str,
    seed: int,
    which: str,
) -> pl.DataFrame:
    """Prompt, label and (if the format needs one) rationale of each subject in ``subset``."""
    frame = subset.join(
        prompts.select("subject_id", "prompt", "label"),
        on="subject_id",
        how="left",
        maintain_order="left",
    )
    if frame["prompt"].null_count():
        raise TrainingError(
            f"{frame['prompt'].null_count()} {which} subjects have no prompt; rerun serialization."
        )
    spec = formats.format_spec(fmt)
    if spec.target is None:
        return frame.with_columns(rationale=pl.lit(None, dtype=pl.String))
    if rationales is None:
        raise TrainingError(f"format '{fmt}' needs rationales, none were given.")
    frame = frame.join(
        rationales.select("subject_id", "rationale"),
        on="subject_id",
        how="left",
        maintain_order="left",
    )
    missing = frame["rationale"].null_count()
    if missing:
        raise TrainingError(
            f"{missing} {which} subjects have no '{fmt}' rationale; rerun the teacher."
        )
    if spec.target == "shuffled":
        shuffled = formats.shuffled_rationales(
            frame["subject_id"].to_list(),
            frame["label"].to_list(),
            frame["rationale"].to_list(),
            seed,
        )
        frame = frame.with_columns(rationale=pl.Series(shuffled, dtype=pl.String))
    return frame


def build_tuning_examples(
    prompts: pl.DataFrame,
    cohort: pl.DataFrame,
    rationales: pl.DataFrame | None,
    fmt: str,
    seed: int,
    limit: int,
) -> tuple[pl.DataFrame, int]:
    """Tuning-split subjects in this format, for the loss on unseen subjects (and early stopping).

    At most ``limit`` subjects, drawn by the seed alone (the same for every format). Subjects
    without a prompt or, for a rationale format, without a rationale are left out and counted.
    """
    tuning = cohort.filter(pl.col("split") == "tuning").select("subject_id").sort("subject_id")
    if tuning.height > limit:
        tuning = tuning.sample(n=limit, seed=seed).sort("subject_id")
    usable = tuning.join(prompts.select("subject_id"), on="subject_id", how="semi")
    if formats.format_spec(fmt).target is not None and rationales is not None:
        usable = usable.join(rationales.select("subject_id"), on="subject_id", how="semi")
    elif formats.format_spec(fmt).target is not None:
        usable = usable.clear()
    return _with_targets(
        usable, prompts, rationales, fmt, seed, "tuning"
    ), tuning.height - usable.height


def encode_examples(
    frame: pl.DataFrame,
    fmt: str,
    tokenizer: Any,
    max_seq_len: int,
    template: PromptTemplate = PLAIN,
) -> list[list[formats.EncodedExample]]:
    """Token-level examples per subject (several for multitask), with filler made to measure."""
    spec = formats.format_spec(fmt)
    words = template.answer_words
    per_subject = []
    for row in frame.iter_rows(named=True):
        text = row["rationale"]
        if spec.target == "filler":
            n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
            text = formats.filler_text(tokenizer, n)
        per_subject.append(
            [
                formats.encode_example(tokenizer, prompt, segments, max_seq_len, template)
                for prompt, segments in formats.training_examples(
                    fmt, row["prompt"], row["label"], text, words
                )
            ]
        )
    return per_subject


def batch_schedule(
    n_subjects: int,
    batch_size: int,
    epochs: int,
    seed: int,
    lengths: Sequence[int] | None = None,
) -> list[list[int]]:
    """Subject indices of every micro-batch, seeded by the configuration seed only.

    With ``lengths`` (one per subject), each epoch's shuffled order is cut into groups of
    ``GROUP_BATCHES`` micro-batches, each group sorted by length (longest first), then the
    micro-batches of the epoch are shuffled: batches of similar length, less padding. Every
    epoch still visits every subject once, and the number of micro-batches is the same as
    without grouping (groups hold a whole number of micro-batches).
    """
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(epochs):
        order = rng.permutation(n_subjects)
        if lengths is not None:
            group = batch_size * GROUP_BATCHES
            order = np.concatenate(
                [
                    sorted(order[i : i + group], key=lambda k: -lengths[k])
                    for i in range(0, n_subjects, group)
                ]
            ).astype(int)
        epoch = [order[i : i + batch_size].tolist() for i in range(0, n_subjects, batch_size)]
        if lengths is not None:
            epoch = [epoch[k] for k in rng.permutation(len(epoch))]
        batches += epoch
    return batches


def grouping_lengths(examples: Sequence[Sequence[formats.EncodedExample]]) -> list[int]:
    """What length grouping sorts by: the prompt tokens of each subject's first example.

    The prompt, unlike the completion, is the same in every format, so all formats of a matched
    configuration still get the same subjects in the same batches.
    """
    return [sum(1 for k in subject[0].segments if k == formats.PROMPT) for subject in examples]


# Micro-batches per length group: large enough to find similar lengths, small enough that the
# order stays random at the scale of an epoch (the choice of Hugging Face's length grouping).
GROUP_BATCHES = 50


def padding_fraction(
    batches: Sequence[Sequence[int]],
    example_lengths: Sequence[Sequence[int]],
    world_size: int = 1,
) -> float:
    """Share of the right-padded token slots that are padding, over a whole schedule.

    ``example_lengths`` holds the token lengths of each subject's examples; under data
    parallelism each process pads only its own shard of a micro-batch.
    """
    slots = real = 0
    for batch in batches:
        for rank in range(world_size):
            lens = [n for i in shard(batch, rank, world_size) for n in example_lengths[i]]
            if lens:
                slots += len(lens) * max(lens)
                real += sum(lens)
    return (slots - real) / max(1, slots)


def shard(micro_batch: Sequence[int], rank: int, world_size: int) -> list[int]:
    """This process's part of a micro-batch under data parallelism (disjoint, covering)."""
    return list(micro_batch[rank::world_size])


def epoch_end_steps(n_subjects: int, batch_size: int, accum: int, epochs: int) -> set[int]:
    """The optimizer steps that complete an epoch (where early stopping evaluates)."""
    per_epoch = math.ceil(n_subjects / batch_size)
    return {math.ceil(e * per_epoch / accum) for e in range(1, epochs + 1)}


def batch_order_digest(
    micro_batches: Sequence[Sequence[int]], accum: int, subject_ids: Sequence[int]
) -> str:
    """SHA-256 of the ordered subject ids of every optimizer step: equal for matched formats."""
    steps = [
        [int(subject_ids[i]) for micro in micro_batches[k : k + accum] for i in micro]
        for k in range(0, len(micro_batches), accum)
    ]
    return hashlib.sha256(json.dumps(steps).encode()).hexdigest()
