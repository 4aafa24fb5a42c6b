"""Training formats: what the model is taught to write after the prompt.

Every format shares the prompt (history + question) and ends with the same answer slot,
``Answer:`` followed by the answer word, so that one scoring rule reads P(Yes) at the same
place for all of them. A completion is a list of typed segments; each segment is tokenized on
its own and concatenated, so the tokens of the answer word are known exactly (for the loss
breakdown and the tests) and scoring can rebuild the same token sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

ANSWER_PREFIX = "Answer:"
ANSWER_WORDS = {True: " Yes", False: " No"}
RATIONALE_PREFIX = "Reasoning: "

# Segment kinds; the ids appear in the per-token segment tensor of an encoded example.
PROMPT, RATIONALE, ANSWER_SLOT, LABEL, EOS = 0, 1, 2, 3, 4
SEGMENT_NAMES = {
    PROMPT: "prompt",
    RATIONALE: "rationale",
    ANSWER_SLOT: "answer_slot",
    LABEL: "label",
    EOS: "eos",
}
IGNORE_INDEX = -100


class FormatError(ValueError):
    """A training example cannot be built as configured."""


def completion_segments(fmt: str, label: bool, rationale: str | None) -> list[tuple[int, str]]:
    """The typed text segments a format trains on, in order (EOS is added at encoding)."""
    answer = [(ANSWER_SLOT, ANSWER_PREFIX), (LABEL, ANSWER_WORDS[bool(label)])]
    if fmt == "label_only":
        return answer
    if fmt in ("free_form", "step_by_step"):
        if not rationale or not rationale.strip():
            raise FormatError(f"format '{fmt}' needs a rationale, got an empty one.")
        return [(RATIONALE, RATIONALE_PREFIX + rationale.strip() + "\n"), *answer]
    raise FormatError(f"unknown training format '{fmt}'.")


@dataclass
class EncodedExample:
    input_ids: list[int]
    labels: list[int]
    segments: list[int]

    @property
    def n_completion_tokens(self) -> int:
        return sum(1 for s in self.segments if s != PROMPT)


def encode_example(
    tokenizer: Any, prompt: str, segments: Sequence[tuple[int, str]], max_seq_len: int
) -> EncodedExample:
    """Token ids, loss labels (prompt masked) and segment kinds of one training example."""
    input_ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    kinds = [PROMPT] * len(input_ids)
    for kind, text in segments:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        input_ids += ids
        kinds += [kind] * len(ids)
    if tokenizer.eos_token_id is not None:
        input_ids.append(tokenizer.eos_token_id)
        kinds.append(EOS)
    if LABEL not in kinds:
        raise FormatError("the encoded completion has no answer-word token; check the tokenizer.")
    if len(input_ids) > max_seq_len:
        n_completion = sum(1 for k in kinds if k != PROMPT)
        raise FormatError(
            f"a training example has {len(input_ids)} tokens > max_seq_len={max_seq_len} "
            f"({n_completion} of them completion). The history was already fitted to "
            "max_prompt_tokens, so the completion is too long: raise the model's max_seq_len, "
            "lower max_prompt_tokens, or shorten the rationales (teacher max_tokens)."
        )
    labels = [IGNORE_INDEX if k == PROMPT else t for t, k in zip(input_ids, kinds, strict=True)]
    return EncodedExample(input_ids=input_ids, labels=labels, segments=kinds)


def collate(examples: Sequence[EncodedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch tensors; padding carries no loss and no attention."""
    width = max(len(e.input_ids) for e in examples)

    def pad(values: list[int], fill: int) -> list[int]:
        return values + [fill] * (width - len(values))

    return {
        "input_ids": torch.tensor([pad(e.input_ids, pad_id) for e in examples]),
        "attention_mask": torch.tensor([pad([1] * len(e.input_ids), 0) for e in examples]),
        "labels": torch.tensor([pad(e.labels, IGNORE_INDEX) for e in examples]),
        "segments": torch.tensor([pad(e.segments, PROMPT) for e in examples]),
    }


def answer_token_ids(tokenizer: Any) -> dict[bool, list[int]]:
    """Token ids whose probability counts as Yes / No at the answer slot.

    The trained answer word (" Yes") plus its single-token variants ("Yes", " yes"); variants
    that split into several tokens are left out, as their first piece is not an answer.
    """
    variants = {True: [" Yes", "Yes", " yes"], False: [" No", "No", " no"]}
    ids: dict[bool, list[int]] = {}
    for value, words in variants.items():
        found = []
        for word in words:
            encoded = tokenizer(word, add_special_tokens=False)["input_ids"]
            if len(encoded) == 1 and encoded[0] not in found:
                found.append(encoded[0])
        if not found:
            raise FormatError(
                f"the tokenizer has no single token for the answer word {ANSWER_WORDS[value]!r}."
            )
        ids[value] = found
    if set(ids[True]) & set(ids[False]):
        raise FormatError("the Yes and No answer tokens overlap in this tokenizer.")
    return ids
