"""Fine-tuning: fair budgets, loss decomposition, checkpoint/resume determinism."""

from __future__ import annotations

import json

import polars as pl
import pytest
import torch

from rationale_bench import formats
from rationale_bench.finetune import (
    TrainingError,
    TrainingJob,
    batch_schedule,
    build_examples,
    segment_losses,
    train,
)
from rationale_bench.serialize import build_prompts
from rationale_bench.teacher import generate_rationales

TRAINING = {
    "method": "lora",
    "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"},
    "learning_rate": 0.002,
    "epochs": 1,
    "batch_size": 8,
    "gradient_accumulation_steps": 1,
    "warmup_ratio": 0.1,
    "weight_decay": 0.0,
    "max_grad_norm": 1.0,
    "max_grad_norm_abort": 1e6,
    "label_loss_weight": 1.0,
    "checkpoint_every": 3,
}


@pytest.fixture(scope="module")
def prompts(synthetic_histories, tiny_tokenizer):
    q = {
        "question": "Will this patient be diagnosed with dementia within 5 years? Answer Yes or No."
    }
    return build_prompts(synthetic_histories, tiny_tokenizer, q, max_prompt_tokens=256)


@pytest.fixture(scope="module")
def rationales(synthetic_histories, tmp_path_factory):
    cfg = {"name": "template", "backend": "template", "seed": 0}
    table, _ = generate_rationales(
        synthetic_histories, "free_form", cfg, tmp_path_factory.mktemp("cache") / "c.jsonl"
    )
    return table


def make_job(tmp_path, model_dir, fmt, name="run", **overrides):
    training = dict(TRAINING, **overrides)
    run_dir = tmp_path / name
    return TrainingJob(
        model_path=str(model_dir),
        fmt=fmt,
        n_train=48,
        seed=1,
        training=training,
        max_seq_len=512,
        out_dir=run_dir / "adapter",
        log_path=run_dir / "train_log.jsonl",
        run_path=run_dir / "run.json",
        checkpoint_dir=run_dir / "checkpoint",
    )


def test_segment_losses_split_the_completion_loss():
    torch.manual_seed(0)
    logits = torch.randn(1, 6, 11)
    labels = torch.tensor([[-100, -100, 3, 4, 5, 6]])
    segments = torch.tensor([[0, 0, 1, 1, 3, 4]])
    parts = segment_losses(logits, labels, segments, label_loss_weight=1.0)
    ce = torch.nn.functional.cross_entropy(
        logits[0, :-1], torch.tensor([-100, 3, 4, 5, 6]), reduction="none", ignore_index=-100
    )
    assert torch.isclose(parts["loss"], ce[1:].mean())
    # Targets shift by one: position 3 predicts token 4 (segment of token 4 = label).
    assert torch.isclose(parts["label_loss"], ce[3])
    assert torch.isclose(parts["label_share"], ce[3] / ce[1:].sum())
    heavy = segment_losses(logits, labels, segments, label_loss_weight=5.0)
    weights = torch.tensor([1.0, 1.0, 5.0, 1.0])
    assert torch.isclose(heavy["loss"], (ce[1:] * weights).sum() / weights.sum())


def test_every_format_gets_the_same_subjects_and_steps(prompts, synthetic_cohort, rationales):
    cohort, _ = synthetic_cohort
    label_only = build_examples(prompts, cohort, None, "label_only", 48, seed=1)
    free_form = build_examples(prompts, cohort, rationales, "free_form", 48, seed=1)
    assert label_only["subject_id"].to_list() == free_form["subject_id"].to_list()
    assert batch_schedule(48, 8, 2, seed=1) == batch_schedule(48, 8, 2, seed=1)
    assert batch_schedule(48, 8, 2, seed=1) != batch_schedule(48, 8, 2, seed=2)
    with pytest.raises(TrainingError, match="needs rationales"):
        build_examples(prompts, cohort, None, "free_form", 48, seed=1)


def test_train_logs_dilution_and_matches_budgets(
    tmp_path, tiny_model_dir, prompts, synthetic_cohort, rationales
):
    cohort, _ = synthetic_cohort
    runs = {}
    for fmt, rat in (("label_only", None), ("free_form", rationales)):
        runs[fmt] = train(make_job(tmp_path, tiny_model_dir, fmt, name=fmt), prompts, cohort, rat)
    assert runs["label_only"]["optimizer_steps"] == runs["free_form"]["optimizer_steps"] == 6
    assert runs["label_only"]["subjects_sha256"] == runs["free_form"]["subjects_sha256"]
    assert runs["free_form"]["tokens_trained"] > runs["label_only"]["tokens_trained"]
    log = [
        json.loads(x) for x in (tmp_path / "free_form" / "train_log.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in log] == list(range(1, 7))
    # Token dilution: the label is a small share of the rationale format's loss.
    assert (
        runs["free_form"]["mean_label_loss_share"]
        < 0.2
        < runs["label_only"]["mean_label_loss_share"]
    )
    assert (tmp_path / "free_form" / "adapter" / "adapter_config.json").exists()
    assert not (tmp_path / "free_form" / "checkpoint").exists()


def test_resume_after_sigterm_gives_identical_weights(
    tmp_path, tiny_model_dir, prompts, synthetic_cohort, monkeypatch
):
    cohort, _ = synthetic_cohort
    full = train(
        make_job(tmp_path, tiny_model_dir, "label_only", name="full"), prompts, cohort, None
    )

    from rationale_bench import finetune

    job = make_job(tmp_path, tiny_model_dir, "label_only", name="interrupted")
    real_step = torch.optim.AdamW.step
    calls = {"n": 0}

    def step_then_sigterm(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 4:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", step_then_sigterm)
    with pytest.raises(finetune.Preempted):
        train(job, prompts, cohort, None)
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    assert (job.checkpoint_dir / "state.pt").exists()
    job.log_path.unlink()  # Snakemake deletes a failed job's outputs, the step log among them
    resumed = train(job, prompts, cohort, None)
    assert resumed["resumed_from_step"] == 4
    log = [json.loads(x)["step"] for x in job.log_path.read_text().splitlines()]
    assert log == list(range(1, 7))
    from safetensors.torch import load_file

    a = load_file(tmp_path / "full" / "adapter" / "adapter_model.safetensors")
    b = load_file(job.out_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert full["final_loss"] == pytest.approx(resumed["final_loss"])


def test_divergence_stops_with_a_clear_error(tmp_path, tiny_model_dir, prompts, synthetic_cohort):
    cohort, _ = synthetic_cohort
    job = make_job(tmp_path, tiny_model_dir, "label_only", name="boom", max_grad_norm_abort=1e-9)
    with pytest.raises(TrainingError, match="training exploded"):
        train(job, prompts, cohort, None)


def test_loss_mask_of_real_batches_has_a_label_token(
    prompts, synthetic_cohort, rationales, tiny_tokenizer
):
    cohort, _ = synthetic_cohort
    frame = build_examples(prompts, cohort, rationales, "free_form", 48, seed=1)
    for row in frame.iter_rows(named=True):
        ex = formats.encode_example(
            tiny_tokenizer,
            row["prompt"],
            formats.completion_segments("free_form", row["label"], row["rationale"]),
            512,
        )
        assert formats.LABEL in ex.segments
        assert sum(1 for lab in ex.labels if lab != formats.IGNORE_INDEX) == ex.n_completion_tokens
    assert frame.filter(pl.col("rationale").is_null()).height == 0


def test_all_formats_share_subjects_steps_and_schedule(
    tmp_path, tiny_model_dir, prompts, synthetic_cohort, rationales
):
    cohort, _ = synthetic_cohort
    runs = {
        fmt: train(
            make_job(tmp_path, tiny_model_dir, fmt, name=fmt, checkpoint_every=0),
            prompts,
            cohort,
            rationales,
        )
        for fmt in formats.FORMATS
    }
    assert len({r["subjects_sha256"] for r in runs.values()}) == 1
    assert len({r["optimizer_steps"] for r in runs.values()}) == 1
    assert runs["multitask"]["n_examples"] == 2 * runs["multitask"]["n_subjects"]
    # Controls are as long as what they replace, but carry other (or no) content.
    assert runs["length_matched_filler"]["mean_completion_tokens"] == pytest.approx(
        runs["free_form"]["mean_completion_tokens"], rel=0.05
    )
