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
from typing import TYPE_CHECKING, Any

from rationale_bench.text.templates import DEFAULT_ANSWER_WORDS, PLAIN, PromptTemplate

if TYPE_CHECKING:
    import torch

ANSWER_PREFIX = "Answer:"


def answer_words(words: Sequence[str] = DEFAULT_ANSWER_WORDS) -> dict[bool, str]:
    """The answer word of each label as written after ``Answer:`` (with its leading space)."""
    yes, no = words
    return {True: f" {yes}", False: f" {no}"}


RATIONALE_PREFIX = "Reasoning: "

# Segment kinds; the ids appear in the per-token segment tensor of an encoded example.
PROMPT, RATIONALE, ANSWER_SLOT, LABEL, EOS = 0, 1, 2, 3, 4
IGNORE_INDEX = -100


class FormatError(ValueError):
    """A training example cannot be built as configured."""


EXPLANATION_PREFIX = "\nExplanation: "
# Multitask (distilling step-by-step, Hsieh et al. 2023): the same prompt with a task prefix.
PREDICT_PREFIX = "Task: predict the outcome.\n"
EXPLAIN_PREFIX = "Task: explain the risk.\n"
FILLER_SENTENCE = "The record lists the visits, diagnoses, medications and measurements above. "


@dataclass(frozen=True)
class FormatSpec:
    """A training format: the rationale style it needs and how scoring reads it.

    ``rationale_first``: the model writes text before the answer slot, so scoring lets it
    generate first. ``target``: which text fills the rationale slot (``rationale``, a
    same-label ``shuffled`` one, or length-matched ``filler``), or None. ``trained``: False
    for arms that score the base model as it is; ``few_shot`` arms put solved training
    examples (with the teacher rationale when ``style`` is set) before the question.
    """

    style: str | None
    rationale_first: bool
    target: str | None = "rationale"
    multitask: bool = False
    trained: bool = True
    few_shot: bool = False


# Every training format, in one place (the grid's `format` values).
FORMATS: dict[str, FormatSpec] = {
    "label_only": FormatSpec(style=None, rationale_first=False, target=None),
    "free_form": FormatSpec(style="free_form", rationale_first=True),
    "step_by_step": FormatSpec(style="step_by_step", rationale_first=True),
    "label_first": FormatSpec(style="free_form", rationale_first=False),
    "multitask": FormatSpec(style="free_form", rationale_first=False, multitask=True),
    "shuffled_rationale": FormatSpec(style="free_form", rationale_first=True, target="shuffled"),
    "length_matched_filler": FormatSpec(style="free_form", rationale_first=True, target="filler"),
    # Arm without fine-tuning: the base model asked the same question, read at the same slot.
    "zero_shot": FormatSpec(style=None, rationale_first=False, target=None, trained=False),
    "few_shot_labels": FormatSpec(
        style=None, rationale_first=False, target=None, trained=False, few_shot=True
    ),
    "few_shot_rationales": FormatSpec(
        style="free_form", rationale_first=True, trained=False, few_shot=True
    ),
}


def format_spec(fmt: str) -> FormatSpec:
    if fmt not in FORMATS:
        raise FormatError(f"unknown training format '{fmt}'; known: {', '.join(FORMATS)}.")
    return FORMATS[fmt]


def completion_segments(
    fmt: str,
    label: bool,
    rationale: str | None,
    words: Sequence[str] = DEFAULT_ANSWER_WORDS,
) -> list[tuple[int, str]]:
    """The typed text segments of a format's (predict) example, in order; EOS comes at encoding.

    ``rationale`` is the text of the rationale slot: the subject's rationale, another subject's
    (shuffled control) or filler, as :func:`training_examples` chose. ``words``: the (yes, no)
    answer words.
    """
    spec = format_spec(fmt)
    answer = [(ANSWER_SLOT, ANSWER_PREFIX), (LABEL, answer_words(words)[bool(label)])]
    if spec.target is None or spec.multitask:
        return answer
    if not rationale or not rationale.strip():
        raise FormatError(f"format '{fmt}' needs a rationale, got an empty one.")
    if spec.rationale_first:
        return [(RATIONALE, RATIONALE_PREFIX + rationale.strip() + "\n"), *answer]
    return [*answer, (RATIONALE, EXPLANATION_PREFIX + rationale.strip())]


def scoring_prompt(fmt: str, prompt: str) -> str:
    """The prompt a format is scored with (multitask models get the predict task prefix)."""
    return PREDICT_PREFIX + prompt if format_spec(fmt).multitask else prompt


def training_examples(
    fmt: str,
    prompt: str,
    label: bool,
    rationale: str | None,
    words: Sequence[str] = DEFAULT_ANSWER_WORDS,
) -> list[tuple[str, list[tuple[int, str]]]]:
    """(prompt, segments) of every training example of one subject (two for multitask)."""
    spec = format_spec(fmt)
    if not spec.multitask:
        return [(prompt, completion_segments(fmt, label, rationale, words))]
    if not rationale or not rationale.strip():
        raise FormatError(f"format '{fmt}' needs a rationale, got an empty one.")
    return [
        (PREDICT_PREFIX + prompt, completion_segments(fmt, label, None, words)),
        (EXPLAIN_PREFIX + prompt, [(RATIONALE, RATIONALE_PREFIX + rationale.strip())]),
    ]


def shuffled_rationales(
    subject_ids: Sequence[int], labels: Sequence[bool], rationales: Sequence[str], seed: int
) -> list[str]:
    """Each subject gets another subject's rationale with the same label (a seeded derangement).

    The control keeps the rationales' language and label-related content but breaks their link
    to the subject's own record.
    """
    import random

    out = list(rationales)
    rng = random.Random(seed)
    for value in (True, False):
        idx = [i for i, lab in enumerate(labels) if bool(lab) == value]
        if len(idx) < 2:
            continue
        order = idx[:]
        rng.shuffle(order)
        # Rotating a shuffled order by one gives a derangement: nobody keeps their own.
        for a, b in zip(order, order[1:] + order[:1], strict=True):
            out[a] = rationales[b]
    return out


def filler_text(tokenizer: Any, n_tokens: int) -> str:
    """Neutral text of exactly (or, at a token boundary, about) ``n_tokens`` tokens."""
    if n_tokens <= 0:
        return FILLER_SENTENCE.strip()
    unit = tokenizer(FILLER_SENTENCE, add_special_tokens=False)["input_ids"]
    ids = (unit * (n_tokens // max(1, len(unit)) + 1))[:n_tokens]
    return tokenizer.decode(ids, skip_special_tokens=True).strip() or FILLER_SENTENCE.strip()


@dataclass
class EncodedExample:
    input_ids: list[int]
    labels: list[int]
    segments: list[int]

    @property
    def n_completion_tokens(self) -> int:
        return sum(1 for s in self.segments if s != PROMPT)


def prompt_ids(tokenizer: Any, prompt: str, template: PromptTemplate = PLAIN) -> list[int]:
    """Token ids of a prompt as the model reads it (in its chat template, if it has one)."""
    text = template.render(prompt)
    return list(tokenizer(text, add_special_tokens=template.add_special_tokens)["input_ids"])


def encode_example(
    tokenizer: Any,
    prompt: str,
    segments: Sequence[tuple[int, str]],
    max_seq_len: int,
    template: PromptTemplate = PLAIN,
) -> EncodedExample:
    """Token ids, loss labels (prompt masked) and segment kinds of one training example.

    The completion is the assistant's turn: its segments, then the end of turn (the template's
    end-of-turn text, or the EOS token), which is in the loss so the model learns to stop.
    """
    input_ids = prompt_ids(tokenizer, prompt, template)
    kinds = [PROMPT] * len(input_ids)
    for kind, text in segments:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        input_ids += ids
        kinds += [kind] * len(ids)
    end = template.end_token_ids(tokenizer)
    input_ids += end
    kinds += [EOS] * len(end)
    # Every example that has an answer slot must carry the answer word in its loss (only the
    # multitask "explain" example has no answer slot, by design).
    if ANSWER_SLOT in kinds and LABEL not in kinds:
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
    import torch  # here, not at import: the Snakefile imports this module to know the formats

    width = max(len(e.input_ids) for e in examples)

    def pad(values: list[int], fill: int) -> list[int]:
        return values + [fill] * (width - len(values))

    return {
        "input_ids": torch.tensor([pad(e.input_ids, pad_id) for e in examples]),
        "attention_mask": torch.tensor([pad([1] * len(e.input_ids), 0) for e in examples]),
        "labels": torch.tensor([pad(e.labels, IGNORE_INDEX) for e in examples]),
        "segments": torch.tensor([pad(e.segments, PROMPT) for e in examples]),
    }


def answer_token_ids(
    tokenizer: Any, words: Sequence[str] = DEFAULT_ANSWER_WORDS
) -> dict[bool, list[int]]:
    """Token ids whose probability counts as Yes / No at the answer slot.

    The trained answer word (" Yes") plus its single-token variants ("Yes", " yes"); variants
    that split into several tokens are left out, as their first piece is not an answer.
    """
    trained = answer_words(words)
    variants = {
        value: [word, word.strip(), " " + word.strip().lower()] for value, word in trained.items()
    }
    ids: dict[bool, list[int]] = {}
    for value, words in variants.items():
        found = []
        for word in words:
            encoded = tokenizer(word, add_special_tokens=False)["input_ids"]
            if len(encoded) == 1 and encoded[0] not in found:
                found.append(encoded[0])
        if not found:
            raise FormatError(
                f"the tokenizer has no single token for the answer word {trained[value]!r}; "
                "choose serialization.answer_words that this model's tokenizer keeps whole."
            )
        ids[value] = found
    if set(ids[True]) & set(ids[False]):
        raise FormatError("the Yes and No answer tokens overlap in this tokenizer.")
    return ids
