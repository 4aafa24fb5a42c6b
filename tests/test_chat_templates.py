"""The paper grid's chat templates, offline: each family's published Jinja template (shipped in
tests/fixtures/chat_templates, sources in docs/references.md) on the tiny test tokenizer with
the family's special tokens.

For every family: the training text is the family's own rendering of the conversation; the
loss covers exactly the completion (rationale, ``Answer:``, the answer word) and the end of
turn; scoring reads the answer word at the very position training put it; a reasoning model's
``<think>`` block is neither written nor trained (docs/gpu.md, "Chat templates").
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from rationale_bench.text import formats
from rationale_bench.text.templates import TEMPLATE_DATE, prompt_template, template_for_model

FIXTURES = Path(__file__).parent / "fixtures" / "chat_templates"
# family: (template file, BOS, EOS or None to keep the tokenizer's, special tokens, end of turn)
FAMILIES = {
    "qwen2.5": ("qwen2.5-instruct", None, None, ["<|im_start|>", "<|im_end|>"], "<|im_end|>\n"),
    "llama-3.1": (
        "llama-3.1-instruct",
        "<|begin_of_text|>",
        None,
        ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>"],
        "<|eot_id|>",
    ),
    "llama-3.2": (
        "llama-3.2-instruct",
        "<|begin_of_text|>",
        None,
        ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>"],
        "<|eot_id|>",
    ),
    "gemma-2": (
        "gemma-2-it",
        "<bos>",
        None,
        ["<start_of_turn>", "<end_of_turn>"],
        "<end_of_turn>\n",
    ),
    "deepseek-r1-distill-qwen": (
        "deepseek-r1-distill-qwen",
        "<｜begin▁of▁sentence｜>",
        "<｜end▁of▁sentence｜>",
        ["<｜User｜>", "<｜Assistant｜>", "<think>", "</think>"],
        "<｜end▁of▁sentence｜>",
    ),
}
HISTORY = "## Patient\nAge at prediction time: 71 years\nSex: female\n## History\n- 0.4 years before: Essential (primary) hypertension (I10)\n"  # noqa: E501
QUESTION = (
    "\nQuestion: Will this patient be diagnosed with dementia within 5 years? Answer Yes or No.\n"  # noqa: E501
)
RATIONALE = "Hypertension is a modifiable risk factor, but there are no memory complaints."
SYSTEM = "You are a careful clinical assistant."


def family_tokenizer(tiny_tokenizer, name: str):
    file, bos, eos, specials, end = FAMILIES[name]
    tokenizer = copy.deepcopy(tiny_tokenizer)
    if bos:
        tokenizer.add_special_tokens({"bos_token": bos})
    if eos:
        tokenizer.add_special_tokens({"eos_token": eos})
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    tokenizer.chat_template = (FIXTURES / f"{file}.jinja").read_text()
    return tokenizer


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tiny_tokenizer):
    name = request.param
    return name, family_tokenizer(tiny_tokenizer, name), FAMILIES[name][4]


def official(tokenizer, user: str, completion: str, system: str | None = None) -> str:
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": completion}]
    if system:
        messages.insert(0, {"role": "system", "content": system})
    return tokenizer.apply_chat_template(messages, tokenize=False, date_string=TEMPLATE_DATE)


def kinds_text(tokenizer, example, wanted) -> str:
    ids = [t for t, k in zip(example.input_ids, example.segments, strict=True) if k in wanted]
    return tokenizer.decode(ids, skip_special_tokens=False)


@pytest.mark.parametrize("fmt", ["label_only", "free_form", "step_by_step"])
def test_training_text_is_the_family_rendering(family, fmt):
    name, tokenizer, end = family
    template = template_for_model(tokenizer, {})
    assert template.is_chat and template.end_of_turn == end
    segments = formats.completion_segments(fmt, True, RATIONALE)
    example = formats.encode_example(tokenizer, HISTORY + QUESTION, segments, 4096, template)
    text = tokenizer.decode(example.input_ids, skip_special_tokens=False)
    completion = "".join(t for _, t in segments)
    assert text == official(tokenizer, HISTORY + QUESTION, completion)
    assert text.endswith(completion + end)
    assert text.count(HISTORY.strip()) == 1 and text.count(formats.ANSWER_PREFIX + " Yes") == 1
    assert text.count(RATIONALE) == (0 if fmt == "label_only" else 1)
    assert "<think>" not in text  # no reasoning block is written or trained (R1-distill)
    if name.startswith("llama"):  # the date line is pinned, so every job renders the same text
        assert f"Today Date: {TEMPLATE_DATE}\n" in text
    if name == "qwen2.5":  # the template's default system turn is part of the prompt
        assert text.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")


@pytest.mark.parametrize("label", [True, False])
def test_loss_covers_exactly_the_completion(family, label):
    name, tokenizer, end = family
    template = template_for_model(tokenizer, {})
    segments = formats.completion_segments("free_form", label, RATIONALE)
    example = formats.encode_example(tokenizer, HISTORY + QUESTION, segments, 4096, template)
    n_prompt = len(formats.prompt_ids(tokenizer, HISTORY + QUESTION, template))
    assert all(x == formats.IGNORE_INDEX for x in example.labels[:n_prompt])
    trained = [t for t in example.labels if t != formats.IGNORE_INDEX]
    assert trained == example.input_ids[n_prompt:]
    completion = "".join(t for _, t in segments)
    assert tokenizer.decode(trained, skip_special_tokens=False) == completion + end
    assert kinds_text(tokenizer, example, {formats.RATIONALE}).startswith(
        formats.RATIONALE_PREFIX + RATIONALE
    )
    assert kinds_text(tokenizer, example, {formats.EOS}) == end
    assert template.end_token_ids(tokenizer)[0] in template.stop_token_ids(tokenizer)


@pytest.mark.parametrize("fmt", ["label_only", "free_form"])
def test_scoring_reads_the_answer_where_training_wrote_it(family, fmt):
    name, tokenizer, _ = family
    template = template_for_model(tokenizer, {})
    segments = formats.completion_segments(fmt, False, RATIONALE)
    example = formats.encode_example(tokenizer, HISTORY + QUESTION, segments, 4096, template)
    prompt = formats.prompt_ids(
        tokenizer, formats.scoring_prompt(fmt, HISTORY + QUESTION), template
    )
    slot = tokenizer(formats.ANSWER_PREFIX, add_special_tokens=False)["input_ids"]
    if fmt == "label_only":
        scored = prompt + slot  # direct scoring: the answer slot right after the prompt
    else:  # after the model's own rationale (here: the trained one, as a perfect model writes)
        rationale = [
            t
            for t, k in zip(example.input_ids, example.segments, strict=True)
            if k == formats.RATIONALE
        ]
        scored = prompt + rationale + slot
    # The scored sequence is exactly the training text up to the answer word ...
    assert example.input_ids[: len(scored)] == scored
    # ... and the next token, where scoring reads P(Yes)/P(No), is the trained answer word.
    word = example.input_ids[len(scored)]
    assert example.segments[len(scored)] == formats.LABEL and example.labels[len(scored)] == word
    assert word in formats.answer_token_ids(tokenizer)[False]


def test_system_prompt_in_its_turn_or_folded(family):
    name, tokenizer, end = family
    template = prompt_template(tokenizer, "auto", SYSTEM)
    completion = formats.ANSWER_PREFIX + " No"
    ours = template.render(HISTORY + QUESTION) + completion + end
    if name == "gemma-2":  # no system role: it opens the user turn
        assert ours == official(tokenizer, SYSTEM + "\n\n" + HISTORY + QUESTION, completion)
    else:
        assert ours == official(tokenizer, HISTORY + QUESTION, completion, SYSTEM)
    assert ours.count(SYSTEM) == 1
    if name == "qwen2.5":  # a configured system prompt replaces Qwen's default one
        assert "You are Qwen" not in ours


def test_r1_distill_think_block_is_outside_what_is_trained(tiny_tokenizer):
    """R1-distill's template drops everything up to ``</think>`` from an assistant turn, so a
    reasoning block in a completion would silently vanish from its official rendering; our
    completions never contain one, and the scored prompt ends at ``<｜Assistant｜>`` exactly as
    in training (not at the ``<think>\\n`` opener later template revisions add to the generation
    prompt)."""
    tokenizer = family_tokenizer(tiny_tokenizer, "deepseek-r1-distill-qwen")
    dropped = official(tokenizer, "Q", "<think>\nhidden\n</think>\n\nAnswer: Yes")
    assert "hidden" not in dropped  # what the template does with a think block
    template = template_for_model(tokenizer, {})
    assert template.render("Q").endswith("<｜Assistant｜>")
    for fmt in ("free_form", "step_by_step", "label_only"):
        for _, text in formats.completion_segments(fmt, True, RATIONALE):
            assert "<think>" not in text and "</think>" not in text
