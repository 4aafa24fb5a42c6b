"""Scoring: P(Yes)/(P(Yes)+P(No)) at the answer slot, own rationale first, forced when needed."""

from __future__ import annotations

import polars as pl
import pytest
import torch
from transformers import AutoModelForCausalLM

from rationale_bench.evaluate.scoring import (
    answer_probabilities,
    answer_slot_sequence,
    score_subjects,
)
from rationale_bench.teacher.generate import generate_rationales
from rationale_bench.text import formats
from rationale_bench.text.serialize import build_prompts


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
    from rationale_bench.evaluate.evaluation import parsed_summary

    labels = pl.Series([True, True, False, False])
    parsed = pl.Series([True, None, False, True], dtype=pl.Boolean)
    summary = parsed_summary(labels, parsed)
    assert summary["n_parse_failures"] == 1
    assert summary["accuracy"] == 0.5
    assert summary["sensitivity"] == 0.5 and summary["specificity"] == 0.5


# --- GPU-ready evaluation, tested on the CPU: device, precision, batches, OOM, processes ---


@pytest.fixture(scope="module")
def held_prompts(tiny_tokenizer, synthetic_histories):
    held = synthetic_histories.filter(pl.col("split") == "held_out").head(7)
    return build_prompts(held, tiny_tokenizer, {"question": "Q?"}, 200)


@pytest.mark.parametrize("fmt", ["label_only", "free_form"])
def test_probabilities_do_not_depend_on_the_batch_size(
    base_model, tiny_tokenizer, held_prompts, fmt
):
    runs = [
        score_subjects(
            base_model, tiny_tokenizer, held_prompts, fmt, {"max_new_tokens": 8, "batch_size": b}
        )
        for b in (1, 3, 7)
    ]
    reference = runs[0]["predicted_boolean_probability"].to_numpy()
    for other in runs[1:]:
        assert abs(other["predicted_boolean_probability"].to_numpy() - reference).max() < 1e-6
        assert other["generated_text"].to_list() == runs[0]["generated_text"].to_list()


class OutOfMemoryAbove(torch.nn.Module):
    """A model that fails like a full GPU for batches larger than ``limit``."""

    def __init__(self, model, limit: int):
        super().__init__()
        self.model, self.limit, self.config = model, limit, model.config
        self.sizes: list[int] = []

    def _check(self, input_ids):
        self.sizes.append(input_ids.shape[0])
        if input_ids.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (fake)")

    def forward(self, **kwargs):
        self._check(kwargs["input_ids"])
        return self.model(**kwargs)

    def generate(self, **kwargs):
        self._check(kwargs["input_ids"])
        return self.model.generate(**kwargs)


@pytest.mark.parametrize("fmt, stage", [("label_only", "answer"), ("free_form", "generation")])
def test_out_of_memory_batch_is_halved_and_logged(
    base_model, tiny_tokenizer, held_prompts, caplog, fmt, stage
):
    from rationale_bench.evaluate.scoring import InferenceRuntime

    cfg = {"max_new_tokens": 6, "batch_size": 7}
    expected = score_subjects(base_model, tiny_tokenizer, held_prompts, fmt, cfg)
    flaky = OutOfMemoryAbove(base_model, limit=2)
    runtime = InferenceRuntime(batch_size_setting=7)
    with caplog.at_level("WARNING", logger="rationale_bench.evaluate.scoring"):
        got = score_subjects(flaky, tiny_tokenizer, held_prompts, fmt, cfg, runtime=runtime)
    assert "out of memory at batch size 7; halving to 3" in caplog.text
    assert "out of memory at batch size 3; halving to 1" in caplog.text
    assert [h[1:] for h in runtime.oom_halvings][:2] == [(7, 3), (3, 1)]
    assert stage in runtime.oom_halvings[0][0]
    assert runtime.batch_size == 1 and max(flaky.sizes) == 7
    diff = got["predicted_boolean_probability"] - expected["predicted_boolean_probability"]
    assert diff.abs().max() < 1e-6


def test_a_batch_of_one_that_runs_out_of_memory_is_an_error(base_model, tiny_tokenizer):
    seqs = [tiny_tokenizer("hello Answer:")["input_ids"]]
    with pytest.raises(torch.OutOfMemoryError):
        answer_probabilities(
            OutOfMemoryAbove(base_model, 0), seqs, formats.answer_token_ids(tiny_tokenizer), 0, 1
        )


def test_device_and_precision_follow_the_training_rules():
    from rationale_bench.evaluate.scoring import ScoringError, inference_device, inference_precision

    cpu = torch.device("cpu")
    if not torch.cuda.is_available():
        assert inference_device() == cpu
    assert inference_precision("auto", cpu) == "fp32"  # exact, reproducible on the CPU
    assert inference_precision("bf16", cpu) == "bf16"
    with pytest.raises(ScoringError, match="evaluation.precision 'fp8' is unknown"):
        inference_precision("fp8", cpu)


def test_auto_batch_size_on_the_cpu_and_in_the_runtime_record(tiny_model_dir, held_prompts, caplog):
    from rationale_bench.evaluate.scoring import CPU_AUTO_BATCH, score_configuration

    cfg = {"max_new_tokens": 4, "batch_size": "auto", "precision": "auto"}
    with caplog.at_level("INFO", logger="rationale_bench.evaluate.scoring"):
        scored, runtime = score_configuration(
            str(tiny_model_dir), None, "none", held_prompts, "label_only", cfg, {}
        )
    assert scored.height == held_prompts.height
    assert runtime["device"] == "cpu" and runtime["precision"] == "fp32"
    assert runtime["batch_size"] == CPU_AUTO_BATCH and runtime["batch_size_setting"] == "auto"
    assert runtime["processes"] == 1 and runtime["oom_halvings"] == []
    assert "scoring 7 subjects on cpu in fp32" in caplog.text


def test_lora_adapter_is_merged_for_inference(tiny_model_dir, tmp_path, tiny_tokenizer):
    from peft import LoraConfig, PeftModel, get_peft_model

    from rationale_bench.evaluate.scoring import load_finetuned

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    for name, param in lora.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)  # a trained adapter changes the outputs
    lora.save_pretrained(tmp_path / "adapter")
    merged, _ = load_finetuned(str(tiny_model_dir), tmp_path / "adapter", "lora")
    assert not isinstance(merged, PeftModel)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    ids = torch.tensor([tiny_tokenizer("hello there Answer:")["input_ids"]])
    reference = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "adapter"
    ).eval()
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        want, got = reference(input_ids=ids).logits, merged(input_ids=ids).logits
        assert (want - plain(input_ids=ids).logits).abs().max() > 1e-3  # the adapter matters
    assert (want - got).abs().max() < 1e-5


def test_shards_partition_the_rows_and_balance_lengths():
    from rationale_bench.evaluate.scoring import shard_positions

    lengths = [50, 10, 40, 20, 30, 60, 5]
    shards = [shard_positions(lengths, r, 3) for r in range(3)]
    assert sorted(p for s in shards for p in s) == list(range(7))
    assert [len(s) for s in shards] == [3, 2, 2]


@pytest.mark.parametrize("fmt", ["label_only", "free_form"])
def test_two_processes_give_the_scores_of_one(tiny_model_dir, held_prompts, fmt):
    """Two gloo processes on the CPU (as torchrun starts one per GPU) against one process."""
    from rationale_bench.evaluate.scoring import score_configuration

    cfg = {"max_new_tokens": 6, "batch_size": 3, "precision": "auto"}
    args = (str(tiny_model_dir), None, "none", held_prompts, fmt, cfg, {})
    one, _ = score_configuration(*args, processes=1)
    two, runtime = score_configuration(*args, processes=2)
    assert runtime["processes"] == 2 and runtime["device"] == "cpu,cpu"
    assert two["subject_id"].to_list() == one["subject_id"].to_list()
    diff = two["predicted_boolean_probability"] - one["predicted_boolean_probability"]
    assert diff.abs().max() < 1e-6
    assert two["generated_text"].to_list() == one["generated_text"].to_list()
    assert two["forced_answer"].to_list() == one["forced_answer"].to_list()
