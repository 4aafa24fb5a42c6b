"""How a prompt is shown to a model: plain text for base models, its chat template otherwise.

The prompts file holds the *user text* (history and question, plus few-shot demonstrations or a
multitask prefix where a format adds them). A :class:`PromptTemplate` wraps it the same way in
training, in the token budget and in scoring, so the three can never disagree:

    before + user text + after | completion segments | end of turn

``before``/``after`` and the end-of-turn text come from rendering the model's own chat template
once around sentinel strings (system prompt, user turn, then an assistant turn), so any Jinja
template works, including Llama-3, Qwen (with its thinking block closed, ``enable_thinking`` off)
and Gemma (which has no system role: the system prompt then opens the user turn). The
completion (rationale, ``Answer:``, `` Yes``/`` No``) is the assistant's content, so the scored
answer word is the same token with or without a template.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# The default (positive, negative) answer words (serialization.answer_words).
DEFAULT_ANSWER_WORDS: tuple[str, str] = ("Yes", "No")
USER_SENTINEL = "\u2063USER\u2063"
ASSISTANT_SENTINEL = "\u2063ASSISTANT\u2063"
# Llama-3.1/3.2 templates write "Today Date: <date>" into the system turn, Llama-3.2's from the
# clock (strftime_now) when no date is passed: a job run on another day would score a prompt
# the model was not trained on. Every rendering passes this date (Llama-3.1's own default).
TEMPLATE_DATE = "26 Jul 2024"


class TemplateError(ValueError):
    """A model's prompt template cannot be used as configured."""


@dataclass(frozen=True)
class PromptTemplate:
    """Text around the user text and after the completion (None: the tokenizer's EOS token).

    ``strip_user``: the template trims message content (Llama-3's ``| trim``), so the user text is
    trimmed too, to match what the model saw in its own instruction tuning.
    """

    name: str = "plain"
    before: str = ""
    after: str = ""
    end_of_turn: str | None = None
    strip_user: bool = False
    # The (yes, no) words written after "Answer:" and scored there (serialization.answer_words).
    answer_words: tuple[str, str] = DEFAULT_ANSWER_WORDS

    @property
    def is_chat(self) -> bool:
        return self.name != "plain"

    @property
    def add_special_tokens(self) -> bool:
        """Plain prompts get the tokenizer's BOS; a chat template writes its own."""
        return not self.is_chat

    def render(self, user_text: str) -> str:
        return self.before + (user_text.strip() if self.strip_user else user_text) + self.after

    def end_token_ids(self, tokenizer: Any) -> list[int]:
        """Tokens that end a completion: the end-of-turn text's, or the EOS token."""
        if self.end_of_turn is None:
            return [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
        return list(tokenizer(self.end_of_turn, add_special_tokens=False)["input_ids"])

    def stop_token_ids(self, tokenizer: Any) -> list[int]:
        """Tokens at which generation stops: EOS and the first token of the end of turn."""
        ids = {tokenizer.eos_token_id} - {None}
        end = self.end_token_ids(tokenizer)
        if end:
            ids.add(end[0])
        return sorted(ids)


PLAIN = PromptTemplate()


def _render(tokenizer: Any, template: str, messages: list[dict[str, str]], **kwargs: Any) -> str:
    return tokenizer.apply_chat_template(
        messages,
        chat_template=template,
        tokenize=False,
        enable_thinking=False,
        date_string=TEMPLATE_DATE,
        **kwargs,
    )


def _conversation(
    tokenizer: Any, template: str, system_prompt: str | None
) -> tuple[str, str | None]:
    """Render system + user + assistant sentinels; fold the system prompt into the user turn
    when the template rejects a system role (Gemma). Returns the text and the folded prefix."""
    user = {"role": "user", "content": USER_SENTINEL}
    assistant = {"role": "assistant", "content": ASSISTANT_SENTINEL}
    if system_prompt:
        try:
            system = {"role": "system", "content": system_prompt}
            return _render(tokenizer, template, [system, user, assistant]), None
        except Exception:  # noqa: BLE001 - jinja raise_exception: no system role here
            pass
    return _render(tokenizer, template, [user, assistant]), system_prompt or None


def _trims_content(tokenizer: Any, template: str) -> bool:
    padded = {"role": "user", "content": f"\n {USER_SENTINEL} \n"}
    text = _render(tokenizer, template, [padded], add_generation_prompt=True)
    return f"\n {USER_SENTINEL} \n" not in text


def prompt_template(
    tokenizer: Any,
    chat_template: str = "auto",
    system_prompt: str | None = None,
    answer_words: Sequence[str] = DEFAULT_ANSWER_WORDS,
) -> PromptTemplate:
    """The template of one model: ``chat_template`` is 'auto' (the tokenizer's own chat template
    when it has one, else plain text), 'none' (plain text) or a Jinja template (an override)."""
    if chat_template == "none":
        template = None
    elif chat_template == "auto":
        template = getattr(tokenizer, "chat_template", None)
    else:
        template = chat_template
    words = _answer_words(answer_words)
    if not template:
        before = f"{system_prompt.strip()}\n\n" if system_prompt else ""
        return PromptTemplate(name="plain", before=before, answer_words=words)
    try:
        text, folded = _conversation(tokenizer, template, system_prompt)
    except Exception as error:  # noqa: BLE001 - any Jinja failure is a config problem
        raise TemplateError(
            f"the chat template could not render a user and an assistant turn ({error}); "
            "set the model's chat_template to 'none' for plain text, or give a working template."
        ) from error
    if text.count(USER_SENTINEL) != 1 or text.count(ASSISTANT_SENTINEL) != 1:
        raise TemplateError(
            "the chat template does not show the user and assistant messages exactly once; "
            "set the model's chat_template to 'none' or override it."
        )
    before, rest = text.split(USER_SENTINEL)
    after, end_of_turn = rest.split(ASSISTANT_SENTINEL)
    if folded:
        before += folded.strip() + "\n\n"
    return PromptTemplate(
        name="chat",
        before=before,
        after=after,
        end_of_turn=end_of_turn,
        strip_user=_trims_content(tokenizer, template),
        answer_words=words,
    )


def _answer_words(words: Sequence[str]) -> tuple[str, str]:
    yes, no = (str(w).strip() for w in words)
    if not yes or not no or yes == no or " " in yes or " " in no:
        raise TemplateError(
            f"serialization.answer_words must be two different single words, got {list(words)}."
        )
    return yes, no


def template_for_model(tokenizer: Any, model_settings: Mapping[str, Any]) -> PromptTemplate:
    """The template a model's settings ask for (``chat_template``, ``system_prompt``,
    ``answer_words``)."""
    return prompt_template(
        tokenizer,
        model_settings.get("chat_template", "auto") or "auto",
        model_settings.get("system_prompt"),
        tuple(model_settings.get("answer_words") or DEFAULT_ANSWER_WORDS),
    )
