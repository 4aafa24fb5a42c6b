"""Scoring: P(Yes)/(P(Yes)+P(No)) at the answer slot, own rationale first, forced when needed."""

from __future__ import annotations

import polars as pl
import pytest
import torch
from transformers import AutoModelForCausalLM

from rationale_bench import formats
from rationale_bench.scoring import answer_probabilities, answer_slot_sequence, score_subjects
from rationale_bench.serialize import build_prompts


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


def test_score_subjects_uses_no_teacher_text(base_model, tiny_tokenizer, synthetic_histories):
    prompts = build_prompts(
        synthetic_histories.filter(pl.col("split") == "held_out").head(8),
        tiny_tokenizer,
        {"question": "Q?"},
        200,
    )
    direct = score_subjects(
        base_model, tiny_tokenizer, prompts, "label_only", {"max_new_tokens": 12, "batch_size": 4}
    )
    assert direct["scoring_mode"].unique().to_list() == ["direct"]
    assert direct["predicted_boolean_probability"].is_between(0, 1).all()
    own = score_subjects(
        base_model, tiny_tokenizer, prompts, "free_form", {"max_new_tokens": 12, "batch_size": 4}
    )
    assert own["scoring_mode"].unique().to_list() == ["after_rationale"]
    # An untrained model rarely writes "Answer:" within 12 tokens: it is forced there and counted.
    assert own["forced_answer"].sum() >= 1
    assert own["generated_text"].str.ends_with(formats.ANSWER_PREFIX).all()


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
