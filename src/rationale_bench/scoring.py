"""Scoring held-out subjects: P(Yes) / (P(Yes) + P(No)) at the answer slot.

Label-only models are read right after the prompt (``Answer:`` appended). Rationale models
first write their own greedy rationale (left-padded batches, KV cache); the probability is read
where they write ``Answer:``. A model that never reaches the answer slot within
``max_new_tokens`` is forced to it, and that is counted. No teacher text is ever used here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl
import torch

from rationale_bench import formats
from rationale_bench.templates import PLAIN, PromptTemplate

log = logging.getLogger(__name__)


def load_finetuned(model_path: str, adapter_dir: Path | None, method: str) -> tuple[Any, Any]:
    """The model for inference: base + LoRA adapter, the saved full weights, or (without an
    adapter folder) the base model itself."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if adapter_dir is None:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    elif method == "lora":
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        model = PeftModel.from_pretrained(base, adapter_dir)
    else:
        model = AutoModelForCausalLM.from_pretrained(adapter_dir, dtype=torch.float32)
    model.eval()
    return model, tokenizer


def _left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = [[pad_id] * (width - len(s)) + list(s) for s in sequences]
    mask = [[0] * (width - len(s)) + [1] * len(s) for s in sequences]
    return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}


@torch.inference_mode()
def answer_probabilities(
    model: Any,
    sequences: Sequence[Sequence[int]],
    answer_ids: dict[bool, list[int]],
    pad_id: int,
    batch_size: int,
) -> tuple[list[float], list[bool | None]]:
    """At the next token after each sequence (ending in ``Answer:``): P(Yes) / (P(Yes) + P(No)),
    and the greedy answer (True/False, or None when the top token is neither, a parse failure).

    Sequences are sorted by length so batches waste little padding, and only the last
    position's logits are computed (``logits_to_keep=1``): with a large vocabulary the full
    logits of a long history would dominate memory.
    """
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    probs = [0.0] * len(sequences)
    parsed: list[bool | None] = [None] * len(sequences)
    yes, no = answer_ids[True], answer_ids[False]
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = _left_pad([sequences[i] for i in chunk], pad_id)
        logits = model(**batch, logits_to_keep=1).logits[:, -1].float()
        logp = torch.log_softmax(logits, dim=-1)
        log_yes = torch.logsumexp(logp[:, yes], dim=-1)
        log_no = torch.logsumexp(logp[:, no], dim=-1)
        p = torch.sigmoid(log_yes - log_no)
        top = logits.argmax(dim=-1).tolist()
        for i, value, token in zip(chunk, p.tolist(), top, strict=True):
            probs[i] = value
            parsed[i] = True if token in yes else False if token in no else None
    return probs, parsed


def _find(haystack: Sequence[int], needle: Sequence[int]) -> int:
    n = len(needle)
    for i in range(len(haystack) - n + 1):
        if list(haystack[i : i + n]) == list(needle):
            return i
    return -1


@torch.inference_mode()
def generate_rationales(
    model: Any,
    tokenizer: Any,
    prompt_ids: Sequence[Sequence[int]],
    max_new_tokens: int,
    batch_size: int,
    stop_ids: set[int] | None = None,
) -> list[list[int]]:
    """Greedy continuations of each prompt, stopped once every sequence wrote ``Answer:`` (or
    ended its turn: EOS, or a chat template's end-of-turn token, in ``stop_ids``)."""
    eos = sorted((stop_ids or {tokenizer.eos_token_id}) - {None, tokenizer.pad_token_id})
    from transformers import StoppingCriteria, StoppingCriteriaList

    slot = tokenizer(formats.ANSWER_PREFIX, add_special_tokens=False)["input_ids"]

    class AnswerSlotReached(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
            tail = input_ids[:, -len(slot) :]
            return (tail == torch.tensor(slot)).all(dim=-1)

    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    outputs: list[list[int]] = [[] for _ in prompt_ids]
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = _left_pad([prompt_ids[i] for i in chunk], tokenizer.pad_token_id)
        generated = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=eos or tokenizer.eos_token_id,
            stopping_criteria=StoppingCriteriaList([AnswerSlotReached()]),
        )
        width = batch["input_ids"].shape[1]
        for i, row in zip(chunk, generated[:, width:].tolist(), strict=True):
            outputs[i] = row
    return outputs


def answer_slot_sequence(
    prompt: Sequence[int], generated: Sequence[int], slot: Sequence[int], stop_ids: set[int]
) -> tuple[list[int], bool]:
    """Prompt + own rationale up to and including ``Answer:``; forced if never reached."""
    at = _find(generated, slot)
    if at >= 0:
        return list(prompt) + list(generated[:at]) + list(slot), False
    kept = []
    for token in generated:
        if token in stop_ids:
            break
        kept.append(token)
    return list(prompt) + kept + list(slot), True


def score_subjects(
    model: Any,
    tokenizer: Any,
    prompts: pl.DataFrame,
    fmt: str,
    cfg: dict[str, Any],
    template: PromptTemplate = PLAIN,
) -> pl.DataFrame:
    """Score every row of ``prompts``; returns probability, forced flag and generated text.

    ``template`` wraps each prompt as in training (the model's chat template, or plain text).
    """
    answer_ids = formats.answer_token_ids(tokenizer, template.answer_words)
    slot = tokenizer(formats.ANSWER_PREFIX, add_special_tokens=False)["input_ids"]
    prompt_ids = [
        formats.prompt_ids(tokenizer, formats.scoring_prompt(fmt, p), template)
        for p in prompts["prompt"].to_list()
    ]
    if formats.format_spec(fmt).rationale_first:
        stop_ids = {tokenizer.pad_token_id, *template.stop_token_ids(tokenizer)}
        generated = generate_rationales(
            model, tokenizer, prompt_ids, cfg["max_new_tokens"], cfg["batch_size"], stop_ids
        )
        built = [
            answer_slot_sequence(p, g, slot, stop_ids)
            for p, g in zip(prompt_ids, generated, strict=True)
        ]
        sequences = [b[0] for b in built]
        forced = [b[1] for b in built]
        texts = tokenizer.batch_decode(
            [s[len(p) :] for s, p in zip(sequences, prompt_ids, strict=True)],
            skip_special_tokens=True,
        )
        mode = "after_rationale"
    else:
        sequences = [p + slot for p in prompt_ids]
        forced = [False] * len(sequences)
        texts = [None] * len(sequences)
        mode = "direct"
    probs, parsed = answer_probabilities(
        model, sequences, answer_ids, tokenizer.pad_token_id, cfg["batch_size"]
    )
    return prompts.select("subject_id", "label", "age", "sex").with_columns(
        predicted_boolean_probability=pl.Series(probs, dtype=pl.Float64),
        forced_answer=pl.Series(forced, dtype=pl.Boolean),
        parsed_answer=pl.Series(parsed, dtype=pl.Boolean),
        generated_text=pl.Series(texts, dtype=pl.String),
        scoring_mode=pl.lit(mode),
    )
