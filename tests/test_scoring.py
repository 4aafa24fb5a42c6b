"""Scoring: P(Yes)/(P(Yes)+P(No)) at the answer slot, own rationale first, forced when needed."""

from __future__ import annotations

import polars as pl
import pytest
import torch
from transformers import AutoModelForCausalLM

from rationale_bench import formats
from rationale_bench.scoring import answer_probabilities, answer_slot_sequence, score_subjects
from rationale_bench.serialize import build_prompts
from rationale_bench.teacher import generate_rationales


@pytest.fixture(scope="module")
def base_model(tiny_model_dir):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


def test_answer_probability_matches_a_manual_softmax(base_model, tiny_tokenizer):
    ids = formats.answer_token_ids(tiny_tokenizer)
    seqs = [
        tiny_tokenizer("hello Answer:")["input_ids"],
        tiny_tokenizer("a much longer text here Answer:")["input_ids"],
    ]
    probs, parsed = answer_probabilities(
        base_model, seqs, ids, tiny_tokenizer.pad_token_id, batch_size=2
    )
    for seq, p in zip(seqs, probs, strict=True):
        with torch.no_grad():
            logits = base_model(input_ids=torch.tensor([seq])).logits[0, -1]
        soft = torch.softmax(logits, -1)
        yes, no = soft[ids[True]].sum(), soft[ids[False]].sum()
        assert p == pytest.approx(float(yes / (yes + no)), abs=1e-5)  # left padding changes nothing
    for seq, answer in zip(seqs, parsed, strict=True):
        with torch.no_grad():
            top = int(base_model(input_ids=torch.tensor([seq])).logits[0, -1].argmax())
        expected = True if top in ids[True] else False if top in ids[False] else None
        assert answer is expected


def test_answer_slot_found_or_forced():
    slot = [7, 8]
    seq, forced = answer_slot_sequence([1, 2], [5, 6, 7, 8, 9], slot, stop_ids={0})
    assert seq == [1, 2, 5, 6, 7, 8] and not forced
    seq, forced = answer_slot_sequence([1, 2], [5, 6, 0, 0], slot, stop_ids={0})
    assert seq == [1, 2, 5, 6, 7, 8] and forced


class RecordingTokenizer:
    """The tokenizer, recording every text it is asked to encode (all the model ever reads)."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self.texts: list[str] = []

    def __call__(self, text, *args, **kwargs):
        self.texts += [text] if isinstance(text, str) else list(text)
        return self._tokenizer(text, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


def test_score_subjects_uses_no_teacher_text(
    base_model, tiny_tokenizer, synthetic_histories, tmp_path
):
    """Held-out prompts come with the teacher's rationales attached (as a careless join would
    leave them): scoring gives the same result as without, and no teacher sentence ever reaches
    the tokenizer, in the direct or in the own-rationale-first formats."""
    held = synthetic_histories.filter(pl.col("split") == "held_out").head(6)
    # The template teacher writes for training subjects only: ask it as if these were training.
    rationales, _ = generate_rationales(
        held.with_columns(split=pl.lit("train")),
        "free_form",
        {"name": "template", "backend": "template", "seed": 0},
        tmp_path / "teacher_cache.jsonl",
    )
    teacher_text = rationales.select("subject_id", teacher_rationale="rationale")
    assert teacher_text.height == held.height
    assert teacher_text["teacher_rationale"].str.len_chars().min() > 40
    prompts = build_prompts(held, tiny_tokenizer, {"question": "Q?"}, 200)
    with_teacher = prompts.join(teacher_text, on="subject_id", how="left")
    assert with_teacher["teacher_rationale"].null_count() == 0
    settings = {"max_new_tokens": 12, "batch_size": 4}
    for fmt, mode in (("label_only", "direct"), ("free_form", "after_rationale")):
        torch.manual_seed(0)
        clean = score_subjects(base_model, tiny_tokenizer, prompts, fmt, settings)
        recorder = RecordingTokenizer(tiny_tokenizer)
        torch.manual_seed(0)
        dirty = score_subjects(base_model, recorder, with_teacher, fmt, settings)
        assert dirty.equals(clean), fmt
        assert dirty["scoring_mode"].unique().to_list() == [mode]
        assert dirty["predicted_boolean_probability"].is_between(0, 1).all()
        read = "\n".join(recorder.texts)
        assert all(p in read for p in prompts["prompt"])  # the recorder saw the prompts
        for rationale in teacher_text["teacher_rationale"]:
            # Any sentence of the teacher's would show; none does.
            for sentence in filter(None, (x.strip() for x in rationale.split(". "))):
                if len(sentence) > 20:
                    assert sentence not in read, (fmt, sentence)
    # An untrained model rarely writes "Answer:" within 12 tokens: it is forced there and counted.
    assert dirty["forced_answer"].sum() >= 1
    assert dirty["generated_text"].str.ends_with(formats.ANSWER_PREFIX).all()


@pytest.mark.parametrize(
    "fmt, mode",
    [
        ("label_first", "direct"),
        ("multitask", "direct"),
        ("shuffled_rationale", "after_rationale"),
        ("length_matched_filler", "after_rationale"),
    ],
)
def test_each_format_is_read_where_it_answers(
    base_model, tiny_tokenizer, synthetic_histories, fmt, mode
):
    held = synthetic_histories.filter(pl.col("split") == "held_out").head(4)
    prompts = build_prompts(held, tiny_tokenizer, {"question": "Q?"}, 200)
    scored = score_subjects(
        base_model, tiny_tokenizer, prompts, fmt, {"max_new_tokens": 6, "batch_size": 4}
    )
    assert scored["scoring_mode"].unique().to_list() == [mode]
    assert scored["predicted_boolean_probability"].is_between(0, 1).all()


def test_parsed_summary_counts_failures_as_wrong():
    from rationale_bench.evaluate import parsed_summary

    labels = pl.Series([True, True, False, False])
    parsed = pl.Series([True, None, False, True], dtype=pl.Boolean)
    summary = parsed_summary(labels, parsed)
    assert summary["n_parse_failures"] == 1
    assert summary["accuracy"] == 0.5
    assert summary["sensitivity"] == 0.5 and summary["specificity"] == 0.5
