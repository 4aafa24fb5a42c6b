"""Supervised fine-tuning of one configuration, with a fair budget and a loss you can audit.

Fairness: every format of a matched (model, n_train, seed) trains on the same subjects, visits
them in the same order, and takes the same number of optimizer steps under the same schedule;
only the completion text differs. The loss is on completion tokens only. Each step's log splits
the loss into the answer word's and the rationale's part, and records the answer tokens' share
of the summed loss ("token dilution", the mechanism the reference study proposes).

A job checkpoints every ``checkpoint_every`` steps and on SIGTERM (what SLURM sends before a
time limit or a preemption); a rerun with the same settings resumes from the checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from rationale_bench.text import formats
from rationale_bench.text.templates import template_for_model
from rationale_bench.train.checkpoint import (
    EarlyStopping,
    _checkpoint_history,
    _load_checkpoint,
    _save_checkpoint,
    _write_log,
    fingerprint,
    remove_checkpoints,
)
from rationale_bench.train.distributed import DataParallel, data_parallel_from_env
from rationale_bench.train.examples import (
    batch_order_digest,
    batch_schedule,
    build_examples,
    build_tuning_examples,
    encode_examples,
    epoch_end_steps,
    grouping_lengths,
    padding_fraction,
    shard,
)
from rationale_bench.train.job import Preempted, TrainingError, TrainingJob
from rationale_bench.train.losses import (
    StepTotals,
    check_finite,
    completion_losses,
    final_losses,
    loss_weight_total,
    segment_sums,
)
from rationale_bench.train.precision import autocast, resolve_precision
from rationale_bench.train.tracking import Trackers, check_trackers

log = logging.getLogger(__name__)


def remove_stale_evaluation(paths: Sequence[str | Path]) -> None:
    """Delete the evaluation of an earlier training of this configuration.

    Snakemake removes the outputs of a failed job, but not what a downstream job made from its
    previous outputs; a retraining that fails must not leave old metrics looking current.
    """
    for path in paths:
        Path(path).unlink(missing_ok=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_lambda(total_steps: int, warmup_steps: int):
    """Learning-rate factor of each step: linear warm-up, then cosine decay to zero.

    Not ``transformers.get_cosine_schedule_with_warmup``: that one starts the warm-up at 0
    (step k gets k / warmup_steps), so its first step would not learn; here step k gets
    (k + 1) / warmup_steps. After the warm-up the two are the same number (a test checks both).
    """

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


BUDGETS = ("equal_steps", "early_stopping")


def load_model(model_path: str, training: Mapping[str, Any]) -> tuple[Any, Any]:
    """Base model and tokenizer; wrapped with LoRA adapters unless full fine-tuning is asked.

    Weights stay in fp32 (the optimizer's master copy); lower precision comes from autocast.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    if training.get("gradient_checkpointing"):
        # Non-reentrant: works with frozen inputs (LoRA) and with DDP, and keeps RNG state.
        model.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False}
        )
        model.config.use_cache = False
    if training["method"] == "lora":
        from peft import LoraConfig, get_peft_model

        lora = training["lora"]
        model = get_peft_model(
            model,
            LoraConfig(
                r=lora["r"],
                lora_alpha=lora["alpha"],
                lora_dropout=lora["dropout"],
                target_modules=lora["target_modules"],
                task_type="CAUSAL_LM",
            ),
        )
    elif training["method"] != "full":
        raise TrainingError(
            f"training.method '{training['method']}' is unknown; use 'lora' or 'full'."
        )
    return model, tokenizer


def train(
    job: TrainingJob, prompts: pl.DataFrame, cohort: pl.DataFrame, rationales: pl.DataFrame | None
) -> dict[str, Any]:
    """Fine-tune one configuration and save the adapter (or full weights), log and run card.

    Under a launcher (WORLD_SIZE > 1) every process builds the same schedule and trains on its
    shard of each micro-batch; the loss is normalised over the whole step of all processes, so
    the optimizer steps are those of one process with the same global batch. Only rank 0 writes.
    """
    dp = data_parallel_from_env()
    try:
        return _train(job, prompts, cohort, rationales, dp)
    finally:
        dp.close()


def _train(
    job: TrainingJob,
    prompts: pl.DataFrame,
    cohort: pl.DataFrame,
    rationales: pl.DataFrame | None,
    dp: DataParallel,
) -> dict[str, Any]:
    t_start = time.time()
    cfg = job.training
    if dp.is_main:
        check_trackers(cfg.get("report_to", []))  # before minutes of model loading
    seed_everything(job.seed)
    device = torch.device(f"cuda:{dp.local_rank}" if torch.cuda.is_available() else "cpu")
    precision = resolve_precision(cfg.get("precision", "auto"), device)
    model, tokenizer = load_model(job.model_path, cfg)
    model.to(device)
    data = prepare_data(job, prompts, cohort, rationales, tokenizer, dp)
    optimization = Optimization.create(model, cfg, data.total_steps, precision, device)
    run = TrainingRun(job, dp, device, precision, model, tokenizer.pad_token_id, data, optimization)
    run.restore()
    run.train_steps()
    return run.finish(t_start)


@dataclass
class TrainingData:
    """What the subjects and settings fix before the first step (the same in every process)."""

    frame: pl.DataFrame  # training subjects: subject_id, prompt, label, rationale
    # One entry per subject: batches are drawn over subjects, so every format of a matched
    # configuration takes the same steps (a multitask subject brings its two examples along).
    examples: list[list[formats.EncodedExample]]
    tuning: list[list[formats.EncodedExample]]
    tuning_dropped: int
    fingerprint: str
    budget: str
    stopping: Mapping[str, Any]
    epochs: int
    micro_batches: list[list[int]]
    accum: int
    padding: float
    padding_ungrouped: float

    @property
    def flat(self) -> list[formats.EncodedExample]:
        return [e for subject in self.examples for e in subject]

    @property
    def total_steps(self) -> int:
        return math.ceil(len(self.micro_batches) / self.accum)


def prepare_data(
    job: TrainingJob,
    prompts: pl.DataFrame,
    cohort: pl.DataFrame,
    rationales: pl.DataFrame | None,
    tokenizer: Any,
    dp: DataParallel,
) -> TrainingData:
    """Encoded training and tuning examples, the budget and the micro-batch schedule."""
    cfg = job.training
    frame = build_examples(prompts, cohort, rationales, job.fmt, job.n_train, job.seed)
    template = template_for_model(tokenizer, job.prompt_settings)
    examples = encode_examples(frame, job.fmt, tokenizer, job.max_seq_len, template)
    flat = [e for subject in examples for e in subject]
    digest = hashlib.sha256(json.dumps([e.input_ids for e in flat]).encode()).hexdigest()
    fp = fingerprint(job, frame["subject_id"].to_list(), digest)
    budget, stopping, epochs = training_budget(cfg)
    tuning_frame, tuning_dropped = build_tuning_examples(
        prompts, cohort, rationales, job.fmt, job.seed, cfg.get("tuning_eval_subjects", 256)
    )
    tuning = encode_examples(tuning_frame, job.fmt, tokenizer, job.max_seq_len, template)
    if budget == "early_stopping" and not tuning:
        raise TrainingError(
            f"training.budget is early_stopping but no tuning subject has a '{job.fmt}' example "
            f"({tuning_dropped} left out for a missing prompt or rationale); the tuning split "
            "must have subjects (cohort.split.tuning_fraction) with rationales."
        )
    micro_batches, padding, padding_ungrouped = micro_batch_schedule(
        examples, cfg, epochs, job.seed, dp
    )
    return TrainingData(
        frame=frame,
        examples=examples,
        tuning=tuning,
        tuning_dropped=tuning_dropped,
        fingerprint=fp,
        budget=budget,
        stopping=stopping,
        epochs=epochs,
        micro_batches=micro_batches,
        accum=cfg["gradient_accumulation_steps"],
        padding=padding,
        padding_ungrouped=padding_ungrouped,
    )


def training_budget(cfg: Mapping[str, Any]) -> tuple[str, Mapping[str, Any], int]:
    """(budget, early-stopping settings, epochs of the batch schedule)."""
    budget = cfg.get("budget", "equal_steps")
    if budget not in BUDGETS:
        raise TrainingError(f"training.budget '{budget}' is unknown; use one of {BUDGETS}.")
    stopping = cfg.get("early_stopping", {})
    # Under early stopping the schedule spans the maximum number of epochs; every format sees
    # the same batches in the same order and stops wherever its own tuning loss says.
    epochs = stopping["max_epochs"] if budget == "early_stopping" else cfg["epochs"]
    return budget, stopping, epochs


def micro_batch_schedule(
    examples: Sequence[Sequence[formats.EncodedExample]],
    cfg: Mapping[str, Any],
    epochs: int,
    seed: int,
    dp: DataParallel,
) -> tuple[list[list[int]], float, float]:
    """The micro-batches of the whole run, their padding and the padding without grouping."""
    prompt_lengths = grouping_lengths(examples)
    example_lengths = [[len(e.input_ids) for e in subject] for subject in examples]
    micro_batches = batch_schedule(
        len(examples),
        cfg["batch_size"],
        epochs,
        seed,
        prompt_lengths if cfg.get("group_by_length") else None,
    )
    padding = padding_fraction(micro_batches, example_lengths, dp.world_size)
    padding_ungrouped = padding_fraction(
        batch_schedule(len(examples), cfg["batch_size"], epochs, seed),
        example_lengths,
        dp.world_size,
    )
    if dp.is_main:
        log.info(
            "padding: %.1f%% of token slots (%.1f%% without length grouping; %.1f%% saved)",
            100 * padding,
            100 * padding_ungrouped,
            100 * (padding_ungrouped - padding),
        )
    return micro_batches, padding, padding_ungrouped


@dataclass
class Optimization:
    """AdamW on the trainable parameters, its schedule and (under fp16) the loss scaler."""

    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None

    @classmethod
    def create(
        cls,
        model: Any,
        cfg: Mapping[str, Any],
        total_steps: int,
        precision: str,
        device: torch.device,
    ) -> Optimization:
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params, lr=cfg["learning_rate"], weight_decay=cfg["weight_decay"]
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda(total_steps, int(cfg["warmup_ratio"] * total_steps))
        )
        # fp16 needs loss scaling (its range is too small for small gradients); bf16 does not.
        scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
        return cls(params, optimizer, scheduler, scaler)

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, cfg: Mapping[str, Any], step: int) -> tuple[float, float, bool]:
        """Clip, step, advance the schedule, zero the gradients: (lr used, grad norm, overflow)."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, cfg["max_grad_norm"]))
        # Under fp16 an infinite norm is an overflow: the scaler skips the step and lowers
        # its scale. Otherwise it means the training exploded.
        overflow = self.scaler is not None and not math.isfinite(grad_norm)
        if not overflow and (
            not math.isfinite(grad_norm) or grad_norm > cfg["max_grad_norm_abort"]
        ):
            raise TrainingError(
                f"gradient norm {grad_norm:.3g} at step {step + 1} exceeds "
                f"training.max_grad_norm_abort={cfg['max_grad_norm_abort']}: "
                "training exploded."
            )
        lr = self.scheduler.get_last_lr()[0]
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return lr, grad_norm, overflow


def step_record(
    done: int,
    totals: StepTotals,
    lr: float,
    grad_norm: float,
    elapsed: float,
    scaler: torch.amp.GradScaler | None,
    overflow: bool,
) -> dict[str, Any]:
    """One line of train_log.jsonl."""
    n_tokens, n_padding = int(totals.tokens), int(totals.padding)
    record = {
        "step": done,
        "loss": totals.loss,
        "completion_loss": totals.completion_loss,
        "label_loss": totals.label_loss,
        "rationale_loss": totals.rationale_loss,
        "label_loss_share": totals.label_loss_share,
        "learning_rate": lr,
        "grad_norm": grad_norm,
        "tokens": n_tokens,
        "tokens_per_s": n_tokens / elapsed,
        "padding_fraction": n_padding / max(1, n_tokens + n_padding),
    }
    if scaler is not None:
        record["loss_scale"] = scaler.get_scale()
        record["overflow"] = overflow
    return record


class TrainingRun:
    """The loop of one job, in nanoGPT's order: restore, then for each optimizer step its
    micro-steps, the optimizer step, a log line, early stopping and a checkpoint; then save."""

    def __init__(
        self,
        job: TrainingJob,
        dp: DataParallel,
        device: torch.device,
        precision: str,
        model: Any,
        pad_token_id: int,
        data: TrainingData,
        optimization: Optimization,
    ) -> None:
        self.job, self.cfg, self.dp, self.device = job, job.training, dp, device
        self.precision, self.model, self.pad_token_id = precision, model, pad_token_id
        self.data, self.opt = data, optimization
        self.early = (
            EarlyStopping(data.stopping["patience"]) if data.budget == "early_stopping" else None
        )
        self.evaluate_at = epoch_end_steps(
            len(data.examples), self.cfg["batch_size"], data.accum, data.epochs
        )
        # Each subject's share of a step's loss denominator, known before any forward pass.
        label_weight = self.cfg["label_loss_weight"]
        self.subject_weights = [loss_weight_total(s, label_weight) for s in data.examples]
        self.forward_model = model
        self.start_step = self.steps_taken = self.examples_seen = 0
        self.history: list[dict[str, Any]] = []
        self.sigterm = False

    def restore(self) -> None:
        """Resume from this configuration's checkpoint, if any; start the step log."""
        state = _load_checkpoint(self.job.checkpoint_dir, self.data.fingerprint)
        if state is not None:
            self.model.load_state_dict(state["model"], strict=False)
            self.opt.load_state_dict(state)
            torch.set_rng_state(state["torch_rng"])
            if state.get("cuda_rng") is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state(state["cuda_rng"], self.device)
            self.start_step = self.steps_taken = state["step"]
            if state.get("early_stopping") is not None:
                self.early = EarlyStopping(**state["early_stopping"])
            if self.dp.is_main:
                log.info(
                    "resuming from checkpoint at step %d/%d",
                    self.start_step,
                    self.data.total_steps,
                )
        # Wrapped after the restore: DDP copies rank 0's weights to every process.
        if self.dp.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.forward_model = DistributedDataParallel(
                self.model, device_ids=[self.dp.local_rank] if self.device.type == "cuda" else None
            )
        # The step log lives in memory and in the checkpoint, never read back from the output
        # path: Snakemake deletes a failed job's outputs as soon as SIGTERM arrives.
        if self.start_step:
            self.history = _checkpoint_history(self.job.checkpoint_dir, self.start_step)
        if self.dp.is_main:
            self.job.log_path.parent.mkdir(parents=True, exist_ok=True)
            _write_log(self.job.log_path, self.history)

    def train_steps(self) -> None:
        """Every optimizer step from the resumed one, until the end, early stopping or SIGTERM."""
        trackers = _trackers(self.job) if self.dp.is_main else None
        previous = signal.signal(signal.SIGTERM, lambda *_: setattr(self, "sigterm", True))
        self.model.train()
        log_file = None
        try:
            log_file = self.job.log_path.open("a") if self.dp.is_main else None
            for step in range(self.start_step, self.data.total_steps):
                t0 = time.time()
                totals = self.micro_steps(step)
                check_finite(torch.tensor(totals.loss), step + 1)
                lr, grad_norm, overflow = self.opt.step(self.cfg, step)
                elapsed = max(time.time() - t0, 1e-9)
                done = self.steps_taken = step + 1
                if self.dp.is_main:
                    record = step_record(
                        done, totals, lr, grad_norm, elapsed, self.opt.scaler, overflow
                    )
                    self.history.append(record)
                    log_file.write(json.dumps(record) + "\n")
                    log_file.flush()
                    trackers.log(record, done)
                if self.stops_early(done):
                    break
                self.checkpoint(done)
        finally:
            signal.signal(signal.SIGTERM, previous)
            if log_file is not None:
                log_file.close()
            if trackers is not None:
                trackers.close()

    def micro_steps(self, step: int) -> StepTotals:
        """Forward and backward of every micro-batch of one step; totals over all processes."""
        accum = self.data.accum
        step_batches = self.data.micro_batches[step * accum : (step + 1) * accum]
        # The step's loss is the token mean over all its micro-batches and processes.
        total_weight = sum(self.subject_weights[i] for micro in step_batches for i in micro)
        vector = StepTotals.zeros(self.device)
        for k, micro in enumerate(step_batches):
            vector += self.micro_step(micro, total_weight, last=k == len(step_batches) - 1)
        return StepTotals.from_vector(self.dp.all_sum(vector))

    def micro_step(self, micro: Sequence[int], total_weight: float, last: bool) -> torch.Tensor:
        """This process's shard of one micro-batch: loss, backward; its totals as a vector."""
        mine = shard(micro, self.dp.rank, self.dp.world_size)
        # A process with no subject in this micro-batch (the last one of an epoch can be smaller
        # than the world) still takes part in DDP's gradient exchange, with a zero-weighted copy
        # of an example.
        weight = 1.0 if mine else 0.0
        batch_examples = [e for i in (mine or micro[:1]) for e in self.data.examples[i]]
        batch = {
            key: value.to(self.device)
            for key, value in formats.collate(batch_examples, self.pad_token_id).items()
        }
        # Gradients are exchanged once per step, on its last micro-batch.
        sync = (
            self.forward_model.no_sync()
            if self.dp.world_size > 1 and not last
            else contextlib.nullcontext()
        )
        with sync:
            with autocast(self.precision, self.device):
                out = self.forward_model(
                    input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                )
            sums = segment_sums(
                out.logits, batch["labels"], batch["segments"], self.cfg["label_loss_weight"]
            )
            # DDP averages gradients over processes; scale so they add up instead.
            loss = sums["weighted"] * (weight * self.dp.world_size / total_weight)
            self.opt.backward(loss)
        self.examples_seen += len(batch_examples) if mine else 0
        return weight * StepTotals.as_vector(sums, batch["attention_mask"])

    def stops_early(self, done: int) -> bool:
        """At an epoch's end under early stopping: evaluate; True when training should stop."""
        if self.early is None or done not in self.evaluate_at:
            return False
        loss, _ = completion_losses(
            self.model,
            self.data.tuning if self.dp.is_main else [],
            self.pad_token_id,
            self.device,
            self.precision,
            self.cfg["batch_size"],
        )
        # Rank 0's loss decides for every process (they must stop at the same step).
        shared = self.dp.all_sum(
            torch.tensor([loss or 0.0], dtype=torch.float64, device=self.device)
        )
        return self.early.update(self.model, done, float(shared.item()))

    def checkpoint(self, done: int) -> None:
        """Save every ``checkpoint_every`` steps and on SIGTERM; after SIGTERM, stop."""
        # Every process must stop at the same step, whichever got the signal.
        flag = torch.tensor([float(self.sigterm)], device=self.device)
        preempted = bool(self.dp.all_sum(flag).item() > 0)
        every, total_steps = self.cfg["checkpoint_every"], self.data.total_steps
        if preempted or (every and done % every == 0 and done < total_steps):
            if self.dp.is_main:
                _save_checkpoint(
                    self.job.checkpoint_dir,
                    self.model,
                    self.opt,
                    done,
                    self.data.fingerprint,
                    self.history,
                    self.early,
                )
            self.dp.barrier()
        if preempted:
            raise Preempted(
                f"SIGTERM at step {done}/{total_steps}; checkpoint saved, rerun to resume."
            )

    def finish(self, t_start: float) -> dict[str, Any]:
        """Restore the best weights under early stopping; rank 0 saves weights, log, run card."""
        seen = self.dp.all_sum(
            torch.tensor([float(self.examples_seen)], dtype=torch.float64, device=self.device)
        )
        weights_step = self.steps_taken
        if self.early is not None and self.early.best_state is not None:
            self.early.restore_best(self.model)
            weights_step = self.early.best_step
        run = self.run_card(weights_step, int(seen.item()))
        if self.dp.is_main:
            self.save(run, weights_step, t_start)
        return run

    def run_card(self, weights_step: int, examples_trained: int) -> dict[str, Any]:
        """run.json's fields that every process knows (rank 0 adds the rest when it saves)."""
        data, early, flat = self.data, self.early, self.data.flat
        subject_ids = data.frame["subject_id"].to_list()
        return {
            "model_path": self.job.model_path,
            "format": self.job.fmt,
            "n_train": self.job.n_train,
            "seed": self.job.seed,
            "method": self.cfg["method"],
            "training": dict(self.cfg),
            "precision": self.precision,
            "world_size": self.dp.world_size,
            "n_subjects": len(data.examples),
            "n_examples": len(flat),
            "n_cases": int(data.frame["label"].sum()),
            "optimizer_steps": data.total_steps,
            "budget": data.budget,
            # Steps actually taken, and the step whose weights were saved (the best tuning loss
            # under early stopping).
            "steps_taken": self.steps_taken,
            "weights_step": weights_step,
            "early_stopping": (
                {"evaluations": early.evaluations, "best_step": early.best_step, **data.stopping}
                if early is not None
                else None
            ),
            "batch_order_sha256": batch_order_digest(data.micro_batches, data.accum, subject_ids),
            "resumed_from_step": self.start_step,
            # Examples the processes trained on in this run (since the resumed step), summed: an
            # epoch's worth each epoch, whatever the number of processes (disjoint, covering
            # shards).
            "examples_trained": examples_trained,
            "subjects_sha256": hashlib.sha256(json.dumps(subject_ids).encode()).hexdigest(),
            "mean_completion_tokens": float(np.mean([e.n_completion_tokens for e in flat])),
            "padding_fraction": data.padding,
            "padding_fraction_ungrouped": data.padding_ungrouped,
        }

    def save(self, run: dict[str, Any], weights_step: int, t_start: float) -> None:
        """Weights, the complete step log and run.json; then the checkpoint goes."""
        job, history = self.job, self.history
        self.model.eval()
        job.out_dir.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(job.out_dir)
        log.info(
            "saved the trained weights to %s (%d process(es))", job.out_dir, self.dp.world_size
        )
        # Rewritten from memory: complete even if something removed the file while training ran.
        _write_log(job.log_path, history)
        tuning_loss, tuning_answer = completion_losses(
            self.model,
            self.data.tuning,
            self.pad_token_id,
            self.device,
            self.precision,
            self.cfg["batch_size"],
        )
        steps_per_epoch = max(1, math.ceil(self.data.total_steps / self.data.epochs))
        run.update(
            {
                **final_losses(history, weights_step, steps_per_epoch),
                # One no-grad pass over tuning subjects of this format (null without any).
                "tuning_completion_loss": tuning_loss,
                "tuning_answer_loss": tuning_answer,
                "n_tuning_subjects": len(self.data.tuning),
                "tuning_subjects_left_out": self.data.tuning_dropped,
                "tokens_trained": int(sum(r["tokens"] for r in history)),
                "final_loss": history[-1]["loss"],
                "mean_label_loss_share": float(np.mean([r["label_loss_share"] for r in history])),
                "wall_s": time.time() - t_start,
                # Where it ran: the devices SLURM granted (gres/--gpus) and the job id.
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
                "device": self.device.type,
                "versions": library_versions(),
            }
        )
        job.run_path.write_text(json.dumps(run, indent=2, default=str))
        remove_checkpoints(job.checkpoint_dir)


def _trackers(job: TrainingJob) -> Trackers:
    cfg = job.training
    return Trackers(
        cfg.get("report_to", []),
        job.run_path.parent / "tracking",
        f"{job.fmt}-n{job.n_train}-s{job.seed}",
        cfg,
        cfg.get("tracking_project", "rationale-bench"),
        cfg.get("tracking_offline", True),
    )


def library_versions() -> dict[str, str]:
    """Installed versions, read from the package metadata: importing peft only to ask its
    version costs a third of a second in a full fine-tuning, which never uses it."""
    from importlib.metadata import version

    return {name: version(name) for name in ("torch", "transformers", "peft")}


def write_job_spec(
    path: Path,
    job: TrainingJob,
    prompts: str | Path,
    cohort: str | Path,
    rationales: str | Path | None,
) -> None:
    """Everything a launched training process needs, as JSON (paths, not data)."""
    fields = {k: str(v) if isinstance(v, Path) else v for k, v in vars(job).items()}
    spec = {
        "job": fields,
        "prompts": str(prompts),
        "cohort": str(cohort),
        "rationales": str(rationales) if rationales else None,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec, indent=2, default=str))


def train_from_spec(path: Path) -> dict[str, Any]:
    spec = json.loads(Path(path).read_text())
    fields = dict(spec["job"])
    for key in ("out_dir", "log_path", "run_path", "checkpoint_dir"):
        fields[key] = Path(fields[key])
    rationales = pl.read_parquet(spec["rationales"]) if spec["rationales"] else None
    return train(
        TrainingJob(**fields),
        pl.read_parquet(spec["prompts"]),
        pl.read_parquet(spec["cohort"]),
        rationales,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m rationale_bench.train.finetune --job spec.json``, one per GPU (launcher)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--job", required=True, type=Path, help="job spec from write_job_spec")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format=f"[rank {os.environ.get('RANK', '0')}] %(message)s"
    )
    try:
        train_from_spec(args.job)
    except Preempted as err:
        log.warning("%s", err)
        raise SystemExit(1) from err


if __name__ == "__main__":
    main()
