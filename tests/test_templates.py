"""Prompt templates: each supported family renders the history, rationale and answer exactly
once, masks the prompt, and scores the same answer-word tokens as training.

The families' chat templates are their published Jinja templates (Qwen's without the tool
branches), attached to the tiny test tokenizer with their special tokens, so no model is
downloaded.
"""

from __future__ import annotations

import copy

import pytest

from rationale_bench.text import formats
from rationale_bench.text.serialize import build_prompts
from rationale_bench.text.templates import (
    PLAIN,
    PromptTemplate,
    TemplateError,
    prompt_template,
    template_for_model,
)

LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)
# Qwen3: the system turn, then the assistant turn after the last query with its (here empty)
# thinking block; the generation prompt closes the block when enable_thinking is false.
QWEN3 = """{%- if messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- set ns = namespace(last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if message.role == "user" and ns.last_query_index == messages|length - 1 %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {%- set content = message.content %}
        {%- set reasoning_content = '' %}
        {%- if '</think>' in message.content %}
            {%- set content = (message.content.split('</think>')|last).lstrip('\\n') %}
            {%- set reasoning_content = (message.content.split('</think>')|first).rstrip('\\n') %}
            {%- set reasoning_content = (reasoning_content.split('<think>')|last).lstrip('\\n') %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\\n' + content }}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}"""  # noqa: E501
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)
FAMILIES = {
    "llama3": (
        LLAMA3,
        "<|begin_of_text|>",
        ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    ),
    "qwen3": (QWEN3, None, ["<|im_start|>", "<|im_end|>", "<think>", "</think>"]),
    "gemma": (GEMMA, "<bos>", ["<start_of_turn>", "<end_of_turn>"]),
    "tiny": (None, None, []),
}
END_OF_TURN = {"llama3": "<|eot_id|>", "qwen3": "<|im_end|>\n", "gemma": "<end_of_turn>\n"}
HISTORY = "## Patient\nAge at prediction time: 71 years\nSex: female\n## History\n- 0.4 years before: Essential (primary) hypertension (I10)\n"  # noqa: E501
QUESTION = (
    "\nQuestion: Will this patient be diagnosed with dementia within 5 years? Answer Yes or No.\n"  # noqa: E501
)
RATIONALE = "Hypertension is a modifiable risk factor, but there are no memory complaints."


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tiny_tokenizer):
    name = request.param
    template, bos, specials = FAMILIES[name]
    tokenizer = copy.deepcopy(tiny_tokenizer)
    if bos:
        tokenizer.add_special_tokens({"bos_token": bos})
    if specials:
        tokenizer.add_special_tokens({"additional_special_tokens": specials})
    tokenizer.chat_template = template
    return name, tokenizer


def official_text(tokenizer, user: str, completion: str, system: str | None = None) -> str:
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": completion}]
    if system:
        messages.insert(0, {"role": "system", "content": system})
    return tokenizer.apply_chat_template(messages, tokenize=False, enable_thinking=False)


@pytest.mark.parametrize("fmt", ["label_only", "free_form", "step_by_step"])
def test_training_text_matches_the_family_template(family, fmt):
    name, tokenizer = family
    template = template_for_model(tokenizer, {"chat_template": "auto"})
    assert template.is_chat == (name != "tiny")
    prompt = HISTORY + QUESTION
    segments = formats.completion_segments(fmt, True, RATIONALE)
    example = formats.encode_example(tokenizer, prompt, segments, 2048, template)
    text = tokenizer.decode(example.input_ids, skip_special_tokens=False)
    completion = "".join(t for _, t in segments)
    if name == "tiny":
        assert not template.is_chat and text.endswith(tokenizer.eos_token)
    else:
        # Our rendering is the family's own template applied to the same conversation.
        assert text == official_text(tokenizer, prompt, completion)
        assert text.endswith(completion + END_OF_TURN[name])
    # History slice, rationale and answer exactly once; the rationale only when trained on.
    assert text.count(HISTORY.strip()) == 1
    assert text.count(formats.ANSWER_PREFIX + " Yes") == 1
    assert text.count(RATIONALE) == (0 if fmt == "label_only" else 1)
    if name == "qwen3":
        assert text.count("<think>\n\n</think>\n\n") == 1  # thinking closed, before the answer


@pytest.mark.parametrize("label", [True, False])
def test_loss_covers_completion_and_end_of_turn_and_scores_the_answer_word(family, label):
    name, tokenizer = family
    template = template_for_model(tokenizer, {})
    segments = formats.completion_segments("free_form", label, RATIONALE)
    example = formats.encode_example(tokenizer, HISTORY + QUESTION, segments, 2048, template)
    prompt = formats.prompt_ids(tokenizer, HISTORY + QUESTION, template)
    n_prompt = len(prompt)
    # The scored prompt is exactly the training prompt: scoring reads the same tokens.
    assert example.input_ids[:n_prompt] == prompt
    assert all(x == formats.IGNORE_INDEX for x in example.labels[:n_prompt])
    assert example.labels[n_prompt:] == example.input_ids[n_prompt:]
    kinds = example.segments
    rationale = [t for t, k in zip(example.input_ids, kinds, strict=True) if k == formats.RATIONALE]
    assert RATIONALE in tokenizer.decode(rationale)
    word = [t for t, k in zip(example.input_ids, kinds, strict=True) if k == formats.LABEL]
    assert tokenizer.decode(word) == formats.answer_words()[label]
    assert len(word) == 1 and word[0] in formats.answer_token_ids(tokenizer)[label]
    end = [t for t, k in zip(example.input_ids, kinds, strict=True) if k == formats.EOS]
    assert end == template.end_token_ids(tokenizer) and end
    if template.is_chat:
        assert tokenizer.decode(end) == END_OF_TURN[name]
        assert end[0] in template.stop_token_ids(tokenizer)  # generation stops at end of turn


def test_system_prompt_in_the_system_turn_or_folded_into_the_user_turn(family):
    name, tokenizer = family
    system = "You are a careful clinical assistant."
    template = prompt_template(tokenizer, "auto", system)
    completion = formats.ANSWER_PREFIX + " No"
    ours = template.render(HISTORY + QUESTION) + completion + (template.end_of_turn or "")
    if name in ("llama3", "qwen3"):
        assert ours == official_text(tokenizer, HISTORY + QUESTION, completion, system)
    elif name == "gemma":  # no system role: it opens the user turn
        assert ours == official_text(tokenizer, system + "\n\n" + HISTORY + QUESTION, completion)
    else:
        assert ours.startswith(system + "\n\n" + HISTORY)
    assert ours.count(system) == 1


def test_none_and_override_settings(tiny_tokenizer, family):
    name, tokenizer = family
    assert prompt_template(tokenizer, "none") == PLAIN
    override = prompt_template(tiny_tokenizer, LLAMA3)
    assert override.is_chat and override.end_of_turn == "<|eot_id|>"
    assert override.after.endswith("assistant<|end_header_id|>\n\n")


def test_broken_template_is_a_clear_error(tiny_tokenizer):
    with pytest.raises(TemplateError, match="chat_template to 'none'"):
        prompt_template(tiny_tokenizer, "{{ raise_exception('no') }}")
    with pytest.raises(TemplateError, match="exactly once"):
        prompt_template(tiny_tokenizer, "{% for m in messages %}{% endfor %}fixed text")


def test_budget_counts_the_template(family, synthetic_histories):
    name, tokenizer = family
    template = template_for_model(tokenizer, {})
    cfg = {"question": "Will this patient develop dementia? Answer Yes or No."}
    prompts = build_prompts(synthetic_histories.head(40), tokenizer, cfg, 150, template)
    assert (prompts["n_tokens"] <= 150).all()
    rendered = [template.render(p) for p in prompts["prompt"].to_list()]
    exact = [
        len(tokenizer(r, add_special_tokens=not template.is_chat)["input_ids"]) for r in rendered
    ]
    assert exact == prompts["n_tokens"].to_list()


def test_plain_template_keeps_the_tokenizer_special_tokens(tiny_tokenizer):
    plain = PromptTemplate()
    ids = formats.prompt_ids(tiny_tokenizer, HISTORY, plain)
    assert ids == tiny_tokenizer(HISTORY, add_special_tokens=True)["input_ids"]
    assert formats.prompt_ids(tiny_tokenizer, HISTORY) == ids


def test_configured_answer_words_are_trained_and_scored(synthetic_histories):
    from rationale_bench.text.serialize import history_of
    from rationale_bench.train.tiny_model import train_tokenizer

    texts = [history_of(r) for r in synthetic_histories.head(200).iter_rows(named=True)]
    tokenizer = train_tokenizer(texts, 600, ("True", "False"))
    template = template_for_model(tokenizer, {"answer_words": ["True", "False"]})
    assert template.answer_words == ("True", "False")
    for label, word in ((True, " True"), (False, " False")):
        segments = formats.completion_segments("label_only", label, None, template.answer_words)
        example = formats.encode_example(tokenizer, HISTORY, segments, 1024, template)
        kinds = example.segments
        ids = [t for t, k in zip(example.input_ids, kinds, strict=True) if k == formats.LABEL]
        assert tokenizer.decode(ids) == word
        assert ids[0] in formats.answer_token_ids(tokenizer, template.answer_words)[label]


def test_answer_words_the_tokenizer_splits_are_a_clear_error(tiny_tokenizer):
    with pytest.raises(formats.FormatError, match="serialization.answer_words"):
        formats.answer_token_ids(tiny_tokenizer, ("Affirmativeness", "Negativeness"))
    with pytest.raises(TemplateError, match="two different single words"):
        prompt_template(tiny_tokenizer, "none", None, ("Yes", "Yes"))
