"""Loss masks: the completion carries the loss, the prompt never does, the label always does."""

from __future__ import annotations

import pytest

from rationale_bench.text import formats
from rationale_bench.text.formats import FormatError, completion_segments, encode_example

PROMPT = (
    "## Patient\nAge at prediction time: 77 years\nSex: female\n"
    "## History (most recent first)\n"
    "- 1.2 years before: Essential (primary) hypertension (I10)\n"
    "\nQuestion: Will this patient be diagnosed? Answer Yes or No.\n"
)
RATIONALE = (
    "1. Age and sex: 77-year-old woman.\n2. Modifiable risk factors: hypertension.\n"
    "5. Conclusion: more likely than average."
)


@pytest.mark.parametrize("fmt", ["label_only", "free_form", "step_by_step"])
@pytest.mark.parametrize("label", [True, False])
def test_loss_mask_covers_completion_only(tiny_tokenizer, fmt, label):
    segments = completion_segments(fmt, label, RATIONALE)
    ex = encode_example(tiny_tokenizer, PROMPT, segments, max_seq_len=512)
    prompt_ids = tiny_tokenizer(PROMPT, add_special_tokens=True)["input_ids"]
    n_prompt = len(prompt_ids)
    assert ex.input_ids[:n_prompt] == prompt_ids
    # No prompt token is in the loss; every completion token is.
    assert all(lab == formats.IGNORE_INDEX for lab in ex.labels[:n_prompt])
    assert ex.labels[n_prompt:] == ex.input_ids[n_prompt:]
    # Exactly one answer word, and it is the trained " Yes" / " No" token.
    label_ids = [t for t, k in zip(ex.input_ids, ex.segments, strict=True) if k == formats.LABEL]
    assert (
        label_ids
        == tiny_tokenizer(formats.answer_words()[label], add_special_tokens=False)["input_ids"]
    )
    rationale_ids = [
        t for t, k in zip(ex.input_ids, ex.segments, strict=True) if k == formats.RATIONALE
    ]
    if fmt == "label_only":
        assert rationale_ids == []
    else:
        expected = tiny_tokenizer(
            formats.RATIONALE_PREFIX + RATIONALE + "\n", add_special_tokens=False
        )["input_ids"]
        assert rationale_ids == expected
        # The rationale's text survives tokenization intact and appears once.
        decoded = tiny_tokenizer.decode(ex.input_ids[n_prompt:], skip_special_tokens=True)
        assert decoded.count(RATIONALE) == 1
    assert ex.segments[-1] == formats.EOS


def test_too_long_example_is_an_error_not_a_silent_cut(tiny_tokenizer):
    segments = completion_segments("free_form", True, "word " * 400)
    with pytest.raises(FormatError, match="completion is too long"):
        encode_example(tiny_tokenizer, PROMPT, segments, max_seq_len=128)


def test_rationale_formats_need_a_rationale():
    with pytest.raises(FormatError, match="needs a rationale"):
        completion_segments("free_form", True, "  ")
    with pytest.raises(FormatError, match="unknown training format"):
        completion_segments("nonsense", True, None)


def test_answer_token_ids_are_single_distinct_tokens(tiny_tokenizer):
    ids = formats.answer_token_ids(tiny_tokenizer)
    yes = tiny_tokenizer(" Yes", add_special_tokens=False)["input_ids"]
    no = tiny_tokenizer(" No", add_special_tokens=False)["input_ids"]
    assert ids[True][0] == yes[0] and ids[False][0] == no[0]
    assert not set(ids[True]) & set(ids[False])


def test_collate_pads_without_loss(tiny_tokenizer):
    a = encode_example(tiny_tokenizer, PROMPT, completion_segments("label_only", True, None), 512)
    b = encode_example(
        tiny_tokenizer, PROMPT, completion_segments("free_form", False, RATIONALE), 512
    )
    batch = formats.collate([a, b], tiny_tokenizer.pad_token_id)
    pad = batch["attention_mask"] == 0
    assert (batch["labels"][pad] == formats.IGNORE_INDEX).all()
    assert batch["input_ids"].shape[1] == len(b.input_ids)


@pytest.mark.parametrize("fmt", sorted(formats.FORMATS))
def test_every_format_puts_the_answer_word_in_the_loss(tiny_tokenizer, fmt):
    examples = formats.training_examples(fmt, PROMPT, True, RATIONALE)
    encoded = [encode_example(tiny_tokenizer, p, seg, 512) for p, seg in examples]
    yes = tiny_tokenizer(" Yes", add_special_tokens=False)["input_ids"]
    predict = encoded[0]
    assert [
        t for t, k in zip(predict.input_ids, predict.segments, strict=True) if k == formats.LABEL
    ] == yes
    for ex, (prompt, _) in zip(encoded, examples, strict=True):
        n_prompt = len(tiny_tokenizer(prompt)["input_ids"])
        assert all(lab == formats.IGNORE_INDEX for lab in ex.labels[:n_prompt])
        assert ex.labels[n_prompt:] == ex.input_ids[n_prompt:]
    spec = formats.format_spec(fmt)
    if spec.target is not None:  # the rationale slot is trained too
        assert any(formats.RATIONALE in ex.segments for ex in encoded)
    if fmt == "label_first":
        kinds = predict.segments
        assert kinds.index(formats.LABEL) < kinds.index(formats.RATIONALE)
    if fmt == "multitask":
        assert len(encoded) == 2 and formats.LABEL not in encoded[1].segments
        assert examples[0][0].startswith(formats.PREDICT_PREFIX)
        assert formats.scoring_prompt(fmt, PROMPT) == examples[0][0]


def test_shuffled_rationales_keep_label_and_never_the_own():
    ids = list(range(10))
    labels = [i % 3 == 0 for i in ids]
    texts = [f"rationale of {i}" for i in ids]
    shuffled = formats.shuffled_rationales(ids, labels, texts, seed=1)
    for i, text in enumerate(shuffled):
        source = int(text.split()[-1])
        assert source != i and labels[source] == labels[i]
    assert shuffled == formats.shuffled_rationales(ids, labels, texts, seed=1)


def test_filler_matches_the_rationale_length(tiny_tokenizer):
    n = len(tiny_tokenizer(RATIONALE, add_special_tokens=False)["input_ids"])
    filler = formats.filler_text(tiny_tokenizer, n)
    m = len(tiny_tokenizer(filler, add_special_tokens=False)["input_ids"])
    assert abs(m - n) <= 2
    assert "hypertension" not in filler
