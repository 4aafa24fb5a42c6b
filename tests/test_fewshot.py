"""Few-shot arms: balanced training demonstrations, within the context, never held-out text."""

from __future__ import annotations

import polars as pl
import pytest

from rationale_bench.cohort.build import training_subset
from rationale_bench.evaluate import fewshot
from rationale_bench.teacher.generate import generate_rationales, teacher_inputs
from rationale_bench.text import formats
from rationale_bench.text.serialize import build_prompts

QUESTION = "Will this patient be diagnosed with dementia within 5 years? Answer Yes or No."


@pytest.fixture(scope="module")
def target_prompts(synthetic_histories, tiny_tokenizer):
    held = synthetic_histories.filter(pl.col("split") == "held_out").head(6)
    return build_prompts(held, tiny_tokenizer, {"question": QUESTION}, 200)


def test_demonstrations_are_balanced_seeded_and_from_the_training_subset(synthetic_cohort):
    cohort, _ = synthetic_cohort
    ids = fewshot.select_demonstrations(cohort, 200, seed=1, k=4)
    subset = training_subset(cohort, 200, seed=1)
    labels = dict(subset.select("subject_id", "label").iter_rows())
    assert set(ids) <= set(labels) and sum(labels[i] for i in ids) == 2
    assert ids == fewshot.select_demonstrations(cohort, 200, seed=1, k=4)
    assert ids != fewshot.select_demonstrations(cohort, 200, seed=2, k=4)
    with pytest.raises(fewshot.FewShotError, match="few_shot_k"):
        fewshot.select_demonstrations(cohort, 20, seed=1, k=40)


@pytest.mark.parametrize("with_rationales", [False, True])
def test_prompts_hold_k_solved_examples_within_the_context(
    synthetic_cohort, synthetic_histories, target_prompts, tiny_tokenizer, tmp_path, with_rationales
):
    cohort, _ = synthetic_cohort
    ids = fewshot.select_demonstrations(cohort, 200, seed=1, k=2)
    rationales = None
    if with_rationales:
        cfg = {"name": "template", "backend": "template", "seed": 0}
        rationales, _ = generate_rationales(
            teacher_inputs(synthetic_histories), "free_form", cfg, tmp_path / "c"
        )
    max_seq_len, reserve = 2048 if with_rationales else 768, 40
    out = fewshot.few_shot_prompts(
        target_prompts,
        synthetic_histories,
        ids,
        rationales,
        QUESTION,
        tiny_tokenizer,
        max_seq_len,
        reserve,
    )
    for original, prompt in zip(target_prompts["prompt"], out["prompt"], strict=True):
        assert prompt.endswith(original)  # the target's own prompt is intact, at the end
        demos = prompt[: -len(original)]
        assert demos.count(formats.ANSWER_PREFIX) == 2
        assert (formats.RATIONALE_PREFIX in demos) == with_rationales
        assert len(tiny_tokenizer(prompt)["input_ids"]) <= max_seq_len - reserve


def test_held_out_subjects_can_never_be_demonstrations(
    synthetic_histories, target_prompts, tiny_tokenizer
):
    held_id = target_prompts["subject_id"][0]
    with pytest.raises(fewshot.FewShotError, match="not a training subject"):
        fewshot.few_shot_prompts(
            target_prompts, synthetic_histories, [held_id], None, QUESTION, tiny_tokenizer, 768, 8
        )


def test_too_small_a_context_is_a_clear_error(
    synthetic_cohort, synthetic_histories, target_prompts, tiny_tokenizer
):
    cohort, _ = synthetic_cohort
    ids = fewshot.select_demonstrations(cohort, 200, seed=1, k=4)
    with pytest.raises(fewshot.FewShotError, match="raise the model's max_seq_len"):
        fewshot.few_shot_prompts(
            target_prompts, synthetic_histories, ids, None, QUESTION, tiny_tokenizer, 260, 8
        )
