"""Fine-tuning: fair budgets, loss decomposition, checkpoint/resume determinism."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest
import torch

from rationale_bench.teacher.generate import generate_rationales, teacher_inputs
from rationale_bench.text import formats
from rationale_bench.text.serialize import build_prompts
from rationale_bench.train.finetune import (
    StepTotals,
    TrainingError,
    TrainingJob,
    batch_schedule,
    build_examples,
    lr_lambda,
    segment_sums,
    train,
)

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
        teacher_inputs(synthetic_histories),
        "free_form",
        cfg,
        tmp_path_factory.mktemp("cache") / "c.jsonl",
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


def step_totals(logits, labels, segments, label_loss_weight):
    """The totals the training loop logs, for one batch (no padding)."""
    sums = segment_sums(logits, labels, segments, label_loss_weight)
    return sums, StepTotals.from_vector(StepTotals.as_vector(sums, torch.ones_like(labels)))


def test_the_loss_has_the_rationale_and_label_tokens_and_the_log_splits_it():
    torch.manual_seed(0)
    logits = torch.randn(1, 6, 11)
    labels = torch.tensor([[-100, -100, 3, 4, 5, 6]])
    p, r, a = formats.PROMPT, formats.RATIONALE, formats.LABEL
    segments = torch.tensor([[p, p, r, r, a, formats.EOS]])
    sums, totals = step_totals(logits, labels, segments, label_loss_weight=1.0)
    ce = torch.nn.functional.cross_entropy(
        logits[0, :-1], torch.tensor([-100, 3, 4, 5, 6]), reduction="none", ignore_index=-100
    )
    # Completion tokens only: two rationale tokens, the label token and the end token.
    assert (totals.n_loss_tokens, totals.n_rationale, totals.n_label) == (4, 2, 1)
    assert torch.isclose(sums["weighted"] / sums["weight"], ce[1:].mean())
    assert totals.loss == pytest.approx(float(ce[1:].mean()), rel=1e-6)
    assert totals.completion_loss == pytest.approx(float(ce[1:].mean()), rel=1e-6)
    # Targets shift by one: position 3 predicts token 4 (segment of token 4 = label).
    assert totals.label_loss == pytest.approx(float(ce[3]), rel=1e-6)
    assert totals.rationale_loss == pytest.approx(float(ce[1:3].mean()), rel=1e-6)
    assert totals.label_loss_share == pytest.approx(float(ce[3] / ce[1:].sum()), rel=1e-6)
    assert (totals.tokens, totals.padding) == (6, 0)
    heavy, heavy_totals = step_totals(logits, labels, segments, label_loss_weight=5.0)
    weights = torch.tensor([1.0, 1.0, 5.0, 1.0])
    expected = (ce[1:] * weights).sum() / weights.sum()
    assert torch.isclose(heavy["weighted"] / heavy["weight"], expected)
    assert heavy_totals.loss == pytest.approx(float(expected), rel=1e-6)


def hand_written_cosine(total_steps, warmup_steps):
    """The schedule as first written in the training loop: the reference for lr_lambda."""

    def factor(step):
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


@pytest.mark.parametrize("warmup,total", [(0, 4), (0, 6), (1, 10), (3, 20), (5, 100), (10, 10)])
def test_learning_rates_match_the_reference_and_transformers_after_warmup(warmup, total):
    from transformers import get_cosine_schedule_with_warmup

    def rates(make_scheduler):
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.002)
        scheduler = make_scheduler(optimizer)
        out = []
        for _ in range(total):
            out.append(scheduler.get_last_lr()[0])
            optimizer.step()
            scheduler.step()
        return out

    ours = rates(lambda o: torch.optim.lr_scheduler.LambdaLR(o, lr_lambda(total, warmup)))
    reference = [0.002 * hand_written_cosine(total, warmup)(k) for k in range(total)]
    hf = rates(lambda o: get_cosine_schedule_with_warmup(o, warmup, total))
    assert ours == reference
    # transformers' warm-up is one step behind (its first step has learning rate 0); after the
    # warm-up it is the same number. So training keeps its own schedule.
    assert ours[warmup:] == hf[warmup:]
    assert ours[:warmup] == [0.002 * ((k + 1) / warmup) for k in range(warmup)]
    assert hf[:warmup] == [0.002 * (k / warmup) for k in range(warmup)]


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
    # What the validity gates read: equal budgets and batch order, losses on train and tuning.
    a, b = runs["label_only"], runs["free_form"]
    assert a["batch_order_sha256"] == b["batch_order_sha256"]
    assert a["steps_taken"] == a["optimizer_steps"] == b["steps_taken"]
    assert a["budget"] == b["budget"] == "equal_steps"
    for run in (a, b):
        assert run["n_tuning_subjects"] > 0
        for key in ("final_completion_loss", "final_answer_loss", "tuning_completion_loss"):
            assert 0 < run[key] < 20, (key, run[key])
        assert 0 <= run["tuning_answer_loss"] < 20
    # The answer loss is the answer token's alone: in label-only it is most of the completion.
    assert b["final_completion_loss"] != pytest.approx(b["final_answer_loss"])


def test_early_stopping_restores_the_best_weights(
    tmp_path, tiny_model_dir, prompts, synthetic_cohort, rationales, monkeypatch
):
    """Tuning losses 3.0, 2.0, 2.5, 2.6 at the ends of epochs 1-4 with patience 2: training
    stops after epoch 4 and the saved weights are those of epoch 2."""
    from safetensors.torch import load_file

    from rationale_bench.train import finetune
    from rationale_bench.train.checkpoint import trainable_state

    cohort, _ = synthetic_cohort
    real = finetune.completion_losses
    planned = [3.0, 2.0, 2.5, 2.6]
    seen = []

    def scripted(model, examples, *args):
        if len(seen) < len(planned):  # evaluations during training
            seen.append({k: v.clone() for k, v in trainable_state(model).items()})
            return planned[len(seen) - 1], None
        return real(model, examples, *args)  # the final pass on the restored weights

    monkeypatch.setattr(finetune, "completion_losses", scripted)
    job = make_job(
        tmp_path,
        tiny_model_dir,
        "free_form",
        budget="early_stopping",
        early_stopping={"patience": 2, "max_epochs": 8},
        checkpoint_every=0,
    )
    run = train(job, prompts, cohort, rationales)
    assert [e["tuning_completion_loss"] for e in run["early_stopping"]["evaluations"]] == planned
    assert run["steps_taken"] == 4 * 6 < run["optimizer_steps"] == 8 * 6
    assert run["weights_step"] == run["early_stopping"]["best_step"] == 2 * 6
    saved = load_file(job.out_dir / "adapter_model.safetensors")
    best, last = ({k.replace(".default", ""): v for k, v in w.items()} for w in (seen[1], seen[3]))
    assert saved.keys() == best.keys()
    for key in saved:
        assert torch.equal(saved[key], best[key]), key
    assert any(not torch.equal(saved[k], last[k]) for k in saved)  # training went on after it
    # The losses reported are those of the restored weights: the step log's last epoch up to
    # the best step, and a real pass over the tuning subjects.
    log = read_log(job)
    assert [r["step"] for r in log] == list(range(1, 25))
    expected = np.mean([r["completion_loss"] for r in log if 6 < r["step"] <= 12])
    assert run["final_completion_loss"] == pytest.approx(expected)
    assert run["tuning_completion_loss"] > 0


@pytest.mark.parametrize("every", [0, 3])
def test_resume_after_sigterm_gives_identical_weights(
    tmp_path, tiny_model_dir, prompts, synthetic_cohort, monkeypatch, every
):
    cohort, _ = synthetic_cohort
    full = train(
        make_job(tmp_path, tiny_model_dir, "label_only", name="full"), prompts, cohort, None
    )

    from rationale_bench.train import finetune

    job = make_job(
        tmp_path, tiny_model_dir, "label_only", name="interrupted", checkpoint_every=every
    )
    real_step = torch.optim.AdamW.step
    calls = {"n": 0}

    def step_then_sigterm(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 4:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGTERM)
            # What Snakemake in a SLURM job does on SIGTERM, before the checkpoint is written:
            # it deletes the job's outputs, the step log among them.
            job.log_path.unlink()
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", step_then_sigterm)
    with pytest.raises(finetune.Preempted):
        train(job, prompts, cohort, None)
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    assert (job.checkpoint_dir / "state.pt").exists()
    job.log_path.unlink(missing_ok=True)
    # A half-written checkpoint of an earlier kill must not survive the success either.
    (tmp_path / "interrupted" / "checkpoint.tmp").mkdir()
    resumed = train(job, prompts, cohort, None)
    # "checkpoint_every: 0" means on SIGTERM only: the job resumes at the step it stopped at.
    assert resumed["resumed_from_step"] == 4
    assert not job.checkpoint_dir.exists()
    assert not (tmp_path / "interrupted" / "checkpoint.tmp").exists()
    log = [json.loads(x) for x in job.log_path.read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 7))
    # The schedule resumes where it stopped (the checkpoint holds the scheduler's state).
    uninterrupted = [json.loads(x) for x in (tmp_path / "full" / "train_log.jsonl").open()]
    assert [r["learning_rate"] for r in log] == [r["learning_rate"] for r in uninterrupted]
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


def read_log(job):
    return [json.loads(x) for x in job.log_path.read_text().splitlines()]


def adapter_weights(job):
    from safetensors.torch import load_file

    return load_file(job.out_dir / "adapter_model.safetensors")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_trains_close_to_fp32(
    tmp_path, tiny_model_dir, prompts, synthetic_cohort, precision
):
    cohort, _ = synthetic_cohort
    ref_job = make_job(tmp_path, tiny_model_dir, "label_only", name="ref")
    ref = train(ref_job, prompts, cohort, None)
    job = make_job(tmp_path, tiny_model_dir, "label_only", name=precision, precision=precision)
    run = train(job, prompts, cohort, None)
    assert ref["precision"] == "fp32"  # 'auto' on CPU
    assert run["precision"] == precision
    log = read_log(job)
    assert len(log) == run["optimizer_steps"] == ref["optimizer_steps"]
    # Autocast really ran in low precision (the losses differ), and still trained sensibly.
    assert log[0]["loss"] != pytest.approx(read_log(ref_job)[0]["loss"])
    assert run["final_loss"] == pytest.approx(ref["final_loss"], rel=0.05)
    if precision == "fp16":
        assert all(r["loss_scale"] > 0 for r in log)
        assert not all(r["overflow"] for r in log)
    else:
        assert "loss_scale" not in log[0]


def test_unknown_precision_is_refused():
    from rationale_bench.train.finetune import resolve_precision

    with pytest.raises(TrainingError, match="precision 'fp8' is unknown"):
        resolve_precision("fp8", torch.device("cpu"))
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"


def test_gradient_checkpointing_recomputes_and_gives_the_same_gradients(
    tiny_model_dir, prompts, synthetic_cohort, rationales, tiny_tokenizer
):
    from rationale_bench.train.finetune import encode_examples, load_model

    cohort, _ = synthetic_cohort
    frame = build_examples(prompts, cohort, rationales, "free_form", 8, seed=1)
    batch = formats.collate(
        [e for s in encode_examples(frame, "free_form", tiny_tokenizer, 512) for e in s],
        tiny_tokenizer.pad_token_id,
    )
    results = {}
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model, _ = load_model(
            str(tiny_model_dir), dict(TRAINING, gradient_checkpointing=checkpointing)
        )
        model.train()
        calls = {"n": 0}
        layer = model.base_model.model.model.layers[0].self_attn
        layer.register_forward_hook(lambda *_, c=calls: c.update(n=c["n"] + 1))
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        sums = segment_sums(out.logits, batch["labels"], batch["segments"], 1.0)
        loss = sums["weighted"] / sums["weight"]
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results[checkpointing] = (float(loss.detach()), grads, calls["n"])
    (loss_a, grads_a, calls_a), (loss_b, grads_b, calls_b) = results[False], results[True]
    # Checkpointing is on: the attention runs again during the backward pass (torch stops the
    # recomputation once it has the tensors it needs, so the MLP is not a reliable witness).
    assert (calls_a, calls_b) == (1, 2)
    assert loss_a == pytest.approx(loss_b, rel=1e-6)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-5, atol=1e-7)


def test_accumulation_of_two_micro_batches_equals_one_double_batch(
    tmp_path, tiny_model_dir, prompts, synthetic_cohort, rationales
):
    cohort, _ = synthetic_cohort
    # free_form: examples of different lengths, so a per-micro-batch mean would not match.
    one = make_job(tmp_path, tiny_model_dir, "free_form", name="1x16", batch_size=16)
    two = make_job(
        tmp_path,
        tiny_model_dir,
        "free_form",
        name="2x8",
        batch_size=8,
        gradient_accumulation_steps=2,
    )
    a, b = (train(j, prompts, cohort, rationales) for j in (one, two))
    assert a["optimizer_steps"] == b["optimizer_steps"] == 3
    for ra, rb in zip(read_log(one), read_log(two), strict=True):
        assert ra["tokens"] == rb["tokens"]
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5)
        assert ra["grad_norm"] == pytest.approx(rb["grad_norm"], rel=1e-4)
    wa, wb = adapter_weights(one), adapter_weights(two)
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-4, atol=1e-6)


def test_accumulation_keeps_steps_equal_across_formats(
    tmp_path, tiny_model_dir, prompts, synthetic_cohort, rationales
):
    cohort, _ = synthetic_cohort
    steps = {
        fmt: train(
            make_job(
                tmp_path,
                tiny_model_dir,
                fmt,
                name=fmt,
                batch_size=5,
                gradient_accumulation_steps=2,
                epochs=2,
                checkpoint_every=0,
            ),
            prompts,
            cohort,
            rationales,
        )["optimizer_steps"]
        for fmt in ("label_only", "free_form", "multitask")
    }
    # 48 subjects: 10 micro-batches an epoch, 20 in 2 epochs, 10 steps of 2.
    assert set(steps.values()) == {10}


def test_length_grouping_keeps_each_epoch_and_cuts_padding():
    from rationale_bench.train.finetune import padding_fraction

    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 400, size=203).tolist()
    plain = batch_schedule(203, 8, 3, seed=4)
    grouped = batch_schedule(203, 8, 3, seed=4, lengths=lengths)
    assert grouped == batch_schedule(203, 8, 3, seed=4, lengths=lengths)
    assert len(grouped) == len(plain) == 3 * 26
    for epoch in range(3):
        seen = [i for b in grouped[epoch * 26 : (epoch + 1) * 26] for i in b]
        assert sorted(seen) == list(range(203))
    per_subject = [[n] for n in lengths]
    assert padding_fraction(grouped, per_subject) < 0.5 * padding_fraction(plain, per_subject)


def test_length_grouping_in_training_is_shared_by_formats(
    tmp_path, tiny_model_dir, prompts, synthetic_cohort, rationales, caplog
):
    cohort, _ = synthetic_cohort
    runs = {}
    with caplog.at_level("INFO", logger="rationale_bench.train.finetune"):
        for fmt in ("label_only", "free_form"):
            job = make_job(tmp_path, tiny_model_dir, fmt, name=fmt, group_by_length=True)
            runs[fmt] = (train(job, prompts, cohort, rationales), read_log(job))
    run, log = runs["label_only"]
    assert run["padding_fraction"] < run["padding_fraction_ungrouped"]
    assert "saved" in caplog.text and "without length grouping" in caplog.text
    assert run["examples_trained"] == 48
    assert runs["free_form"][0]["optimizer_steps"] == run["optimizer_steps"]
    assert (
        runs["free_form"][0]["padding_fraction"]
        < runs["free_form"][0]["padding_fraction_ungrouped"]
    )
    assert all(0 <= r["padding_fraction"] < 1 for r in log)


def test_length_grouping_gives_every_format_the_same_batches(
    prompts, synthetic_cohort, rationales, tiny_tokenizer
):
    from rationale_bench.train.finetune import encode_examples, grouping_lengths

    cohort, _ = synthetic_cohort
    schedules = []
    for fmt in ("label_only", "free_form", "step_by_step"):
        frame = build_examples(prompts, cohort, rationales, fmt, 48, seed=1)
        keys = grouping_lengths(encode_examples(frame, fmt, tiny_tokenizer, 512))
        assert len(set(keys)) > 5  # the prompts really differ in length
        schedules.append(batch_schedule(48, 8, 2, seed=1, lengths=keys))
    assert schedules[0] == schedules[1] == schedules[2]


def test_tensorboard_receives_every_step(tmp_path, tiny_model_dir, prompts, synthetic_cohort):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cohort, _ = synthetic_cohort
    job = make_job(tmp_path, tiny_model_dir, "label_only", report_to=["tensorboard"])
    run = train(job, prompts, cohort, None)
    events = EventAccumulator(str(tmp_path / "run" / "tracking" / "tensorboard"))
    events.Reload()
    losses = events.Scalars("train/loss")
    assert [e.step for e in losses] == list(range(1, run["optimizer_steps"] + 1))
    assert losses[-1].value == pytest.approx(run["final_loss"], rel=1e-5)


def test_missing_tracker_package_is_a_clear_error(
    tmp_path, tiny_model_dir, prompts, synthetic_cohort, monkeypatch
):
    import sys

    cohort, _ = synthetic_cohort
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` fail
    job = make_job(tmp_path, tiny_model_dir, "label_only", report_to=["wandb"])
    with pytest.raises(TrainingError, match="'wandb' but its package is not installed"):
        train(job, prompts, cohort, None)
    assert not job.log_path.exists()


def test_wandb_and_mlflow_are_fed_offline(tmp_path, monkeypatch):
    import sys
    import types

    from rationale_bench.train.finetune import Trackers

    calls = []
    run = types.SimpleNamespace(
        log=lambda values, step: calls.append(("wandb.log", step, values["train/loss"])),
        finish=lambda: calls.append(("wandb.finish",)),
    )
    wandb = types.SimpleNamespace(init=lambda **kw: calls.append(("wandb.init", kw)) or run)
    mlflow = types.SimpleNamespace(
        set_tracking_uri=lambda uri: calls.append(("mlflow.uri", uri)),
        set_experiment=lambda name: calls.append(("mlflow.experiment", name)),
        start_run=lambda run_name: calls.append(("mlflow.start", run_name)),
        log_params=lambda params: calls.append(("mlflow.params", sorted(params))),
        log_metrics=lambda values, step: calls.append(("mlflow.log", step, values["loss"])),
        end_run=lambda: calls.append(("mlflow.end",)),
    )
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    monkeypatch.setitem(sys.modules, "mlflow", mlflow)
    trackers = Trackers(["wandb", "mlflow"], tmp_path, "r1", {"lr": 1}, "proj", offline=True)
    trackers.log({"step": 3, "loss": 0.5}, 3)
    trackers.close()
    init = calls[0][1]
    assert init["mode"] == "offline" and init["project"] == "proj" and init["name"] == "r1"
    assert ("mlflow.uri", (tmp_path / "mlruns").resolve().as_uri()) in calls
    assert ("wandb.log", 3, 0.5) in calls and ("mlflow.log", 3, 0.5) in calls
    assert calls[-2:] == [("wandb.finish",), ("mlflow.end",)]


def test_shards_are_disjoint_and_cover_the_batch():
    from rationale_bench.train.finetune import shard

    micro = [7, 3, 9, 1, 4]
    parts = [shard(micro, r, 2) for r in range(2)]
    assert parts == [[7, 9, 4], [3, 1]]
    assert shard([5], 1, 2) == []


def test_two_processes_train_like_one(tmp_path, tiny_model_dir, prompts, synthetic_cohort):
    """torchrun, 2 CPU processes (gloo): same steps and weights as one process."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from rationale_bench.train.finetune import write_job_spec

    cohort, _ = synthetic_cohort
    prompts.write_parquet(tmp_path / "prompts.parquet")
    cohort.write_parquet(tmp_path / "cohort.parquet")
    # 47 per micro-batch: 24 + 23 subjects per process, then a lone subject that leaves the
    # second process with an empty shard; accumulation exercises DDP's no_sync.
    settings = {"batch_size": 47, "gradient_accumulation_steps": 2, "epochs": 2}
    single = make_job(tmp_path, tiny_model_dir, "label_only", name="single", **settings)
    ddp = make_job(tmp_path, tiny_model_dir, "label_only", name="ddp", **settings)
    spec = tmp_path / "job.json"
    write_job_spec(spec, ddp, tmp_path / "prompts.parquet", tmp_path / "cohort.parquet", None)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = dict(os.environ, PYTHONPATH=src, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        + ["-m", "rationale_bench.train.finetune", "--job", str(spec)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    run_1 = train(single, prompts, cohort, None)
    run_2 = json.loads(ddp.run_path.read_text())
    assert run_2["world_size"] == 2 and run_1["world_size"] == 1
    # The shards add up to every example once an epoch: disjoint and covering.
    assert run_2["examples_trained"] == run_1["examples_trained"] == 2 * 48
    assert run_2["optimizer_steps"] == run_1["optimizer_steps"] == 2
    # Only rank 0 writes.
    assert "[rank 0] saved the trained weights" in out.stderr
    assert "[rank 1] saved" not in out.stderr
    for a, b in zip(read_log(single), read_log(ddp), strict=True):
        assert a["tokens"] == b["tokens"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    wa, wb = adapter_weights(single), adapter_weights(ddp)
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-4, atol=1e-6)


FINETUNE_PARAMS = """
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import (
    ConfigSettings, DAGSettings, OutputSettings, ResourceSettings, StorageSettings,
)
workdir, snakefile = Path(sys.argv[1]), Path(sys.argv[2])
with SnakemakeApi(OutputSettings()) as api:
    workflow = api.workflow(
        resource_settings=ResourceSettings(),
        config_settings=ConfigSettings(configfiles=[workdir / "config.yaml"]),
        storage_settings=StorageSettings(),
        snakefile=snakefile,
        workdir=workdir,
    )
    dag = workflow.dag(DAGSettings())
    dag.execute_workflow(executor="dryrun")
    jobs = [j for j in dag.workflow_api._workflow.dag.jobs if j.rule.name == "finetune"]
    print("PARAMS=" + json.dumps([
        {"training": dict(j.params.training), "params": sorted(j.params.keys()),
         "gpu": j.resources.get("gpu")}
        for j in jobs
    ]))
"""


@pytest.mark.parametrize(
    "gpus, launcher, command",
    [
        (0, "torchrun", []),
        (1, "torchrun", []),
        (4, "torchrun", ["torchrun", "--standalone", "--nproc_per_node=4"]),
        (
            2,
            "accelerate",
            ["accelerate", "launch", "--multi_gpu", "--num_processes=2", "--num_machines=1"],
        ),
    ],
)
def test_finetune_rule_builds_the_launch_command(tmp_path, gpus, launcher, command):
    """Dry run: the rule's launch command and GPU request follow models.<m>.resources.gpu."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    repo = Path(__file__).resolve().parents[1]
    config = yaml.safe_load((repo / "config.yaml").read_text())
    config["models"]["tiny"]["resources"] = {"gpu": gpus}
    config["models"]["tiny"]["training"].update(launcher=launcher, report_to=["tensorboard"])
    config["grid"].update(format=["label_only"], n_train=[300], seed=[1])
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    out = subprocess.run(
        [sys.executable, "-c", FINETUNE_PARAMS, str(tmp_path), str(repo / "Snakefile")],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(repo / "src")),
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("PARAMS="))
    (job,) = json.loads(line[len("PARAMS=") :])
    assert job["gpu"] == gpus
    # Tracking, launcher and GPU count are not params (a change in params reruns the job): the
    # script reads them from the config.
    assert "report_to" not in job["training"] and "launcher" not in job["training"]
    assert not {"launch", "reporting"} & set(job["params"])
    assert job["training"]["precision"] == "auto"
    from rationale_bench.cli import load_config
    from rationale_bench.study import training_settings
    from rationale_bench.train.launch import job_runtime

    validated = load_config(tmp_path / "config.yaml")  # what the script's snakemake.config is
    reporting, launch = job_runtime(validated, "tiny")
    assert launch == {"command": command, "processes": max(1, gpus)}
    assert reporting["report_to"] == ["tensorboard"] and reporting["launcher"] == launcher
    assert dict(job["training"], **reporting) == training_settings(validated, "tiny")


def test_smollm2_config_is_valid_and_uses_the_training_switches():
    from pathlib import Path

    from rationale_bench.cli import load_config
    from rationale_bench.study import training_settings

    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "smollm2.yaml")
    (name,) = config["grid"]["model"]
    assert config["models"][name]["source"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    settings = training_settings(config, name)
    assert settings["method"] == "lora" and settings["group_by_length"] is True
    assert settings["batch_size"] * settings["gradient_accumulation_steps"] == 16


def test_finetune_rule_launches_two_processes(tmp_path, tiny_model_dir, prompts, synthetic_cohort):
    """The rule itself with resources.gpu: 2: its script starts torchrun (2 gloo processes)."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    repo = Path(__file__).resolve().parents[1]
    cohort, _ = synthetic_cohort
    results = tmp_path / "results"
    (results / "prompts" / "tiny").mkdir(parents=True)
    (results / "cohort").mkdir()
    shutil.copytree(tiny_model_dir, results / "models" / "tiny")
    prompts.write_parquet(results / "prompts" / "tiny" / "timeline_recent.parquet")
    cohort.write_parquet(results / "cohort" / "cohort.parquet")
    config = yaml.safe_load((repo / "config.yaml").read_text())
    config["models"]["tiny"].update(max_seq_len=512, resources={"gpu": 2, "cpus_per_task": 2})
    config["models"]["tiny"]["training"].update(epochs=1, batch_size=8)
    config["grid"].update(format=["label_only"], n_train=[48], seed=[1])
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    run_dir = (
        results
        / "runs"
        / "model=tiny"
        / "serialization=timeline_recent"
        / "format=label_only"
        / "n_train=48"
        / "seed=1"
    )
    bin_dir = str(Path(sys.executable).parent)  # where torchrun is installed
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", str((run_dir / "run.json").relative_to(tmp_path))]
        + ["--snakefile", str(repo / "Snakefile"), "--directory", str(tmp_path)]
        + ["--configfile", str(tmp_path / "config.yaml"), "--cores", "2"]
        + ["--allowed-rules", "finetune"],
        capture_output=True,
        text=True,
        env=dict(
            os.environ, PYTHONPATH=str(repo / "src"), PATH=bin_dir + os.pathsep + os.environ["PATH"]
        ),
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    log = next((results / "logs" / "finetune").rglob("*.log")).read_text()
    launch = "launching: torchrun --standalone --nproc_per_node=2 -m rationale_bench.train.finetune"
    assert launch in log
    assert "[rank 0] saved the trained weights" in log and "(2 process(es))" in log
    run = json.loads((run_dir / "run.json").read_text())
    assert run["world_size"] == 2 and run["examples_trained"] == 48
    assert (run_dir / "adapter" / "model.safetensors").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_auto_precision_trains_in_bf16_on_a_gpu(
    tmp_path, tiny_model_dir, prompts, synthetic_cohort
):
    cohort, _ = synthetic_cohort
    job = make_job(tmp_path, tiny_model_dir, "label_only", precision="auto")
    run = train(job, prompts, cohort, None)
    assert run["device"] == "cuda"
    assert run["precision"] == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")
    assert all(np.isfinite(r["loss"]) for r in read_log(job))
    fp16 = make_job(tmp_path, tiny_model_dir, "label_only", name="fp16", precision="fp16")
    assert train(fp16, prompts, cohort, None)["precision"] == "fp16"
    assert read_log(fp16)[-1]["loss_scale"] > 0
