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

import hashlib
import json
import logging
import math
import os
import random
import shutil
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from rationale_bench import formats
from rationale_bench.cohort import training_subset
from rationale_bench.templates import PromptTemplate, template_for_model

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on (diverged, or its inputs are inconsistent)."""


class Preempted(RuntimeError):
    """SIGTERM arrived; a checkpoint was written and a rerun will resume."""


@dataclass
class TrainingJob:
    model_path: str
    fmt: str
    n_train: int
    seed: int
    training: Mapping[str, Any]
    max_seq_len: int
    out_dir: Path
    log_path: Path
    run_path: Path
    checkpoint_dir: Path
    # The model's prompt template settings (chat_template, system_prompt); see templates.py.
    prompt_settings: Mapping[str, Any] = field(default_factory=dict)


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


def build_examples(
    prompts: pl.DataFrame,
    cohort: pl.DataFrame,
    rationales: pl.DataFrame | None,
    fmt: str,
    n_train: int,
    seed: int,
) -> pl.DataFrame:
    """The training subjects of this configuration with prompt, label and (if needed) rationale.

    The subject list depends only on (n_train, seed), never on the format. For the shuffled
    control the rationale column already holds another same-label subject's rationale.
    """
    subset = training_subset(cohort, n_train, seed).select("subject_id")
    frame = subset.join(
        prompts.select("subject_id", "prompt", "label"),
        on="subject_id",
        how="left",
        maintain_order="left",
    )
    if frame["prompt"].null_count():
        raise TrainingError(
            f"{frame['prompt'].null_count()} training subjects have no prompt; rerun serialization."
        )
    spec = formats.format_spec(fmt)
    if spec.target is None:
        return frame.with_columns(rationale=pl.lit(None, dtype=pl.String))
    if rationales is None:
        raise TrainingError(f"format '{fmt}' needs rationales, none were given.")
    frame = frame.join(
        rationales.select("subject_id", "rationale"),
        on="subject_id",
        how="left",
        maintain_order="left",
    )
    missing = frame["rationale"].null_count()
    if missing:
        raise TrainingError(
            f"{missing} training subjects have no '{fmt}' rationale; rerun the teacher."
        )
    if spec.target == "shuffled":
        shuffled = formats.shuffled_rationales(
            frame["subject_id"].to_list(),
            frame["label"].to_list(),
            frame["rationale"].to_list(),
            seed,
        )
        frame = frame.with_columns(rationale=pl.Series(shuffled, dtype=pl.String))
    return frame


def encode_examples(
    frame: pl.DataFrame,
    fmt: str,
    tokenizer: Any,
    max_seq_len: int,
    template: PromptTemplate | None = None,
) -> list[list[formats.EncodedExample]]:
    """Token-level examples per subject (several for multitask), with filler made to measure."""
    spec = formats.format_spec(fmt)
    words = template.answer_words if template is not None else formats.DEFAULT_ANSWER_WORDS
    per_subject = []
    for row in frame.iter_rows(named=True):
        text = row["rationale"]
        if spec.target == "filler":
            n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
            text = formats.filler_text(tokenizer, n)
        per_subject.append(
            [
                formats.encode_example(tokenizer, prompt, segments, max_seq_len, template)
                for prompt, segments in formats.training_examples(
                    fmt, row["prompt"], row["label"], text, words
                )
            ]
        )
    return per_subject


def batch_schedule(n_subjects: int, batch_size: int, epochs: int, seed: int) -> list[list[int]]:
    """Subject indices of every micro-batch, seeded by the configuration seed only."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(epochs):
        order = rng.permutation(n_subjects)
        batches += [order[i : i + batch_size].tolist() for i in range(0, n_subjects, batch_size)]
    return batches


def lr_lambda(total_steps: int, warmup_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def segment_losses(
    logits: torch.Tensor, labels: torch.Tensor, segments: torch.Tensor, label_loss_weight: float
) -> dict[str, torch.Tensor]:
    """Completion-only loss and its parts. Shifted so position t predicts token t+1."""
    logits = logits[:, :-1].float()
    targets = labels[:, 1:]
    kinds = segments[:, 1:]
    token_loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)),
        targets.reshape(-1),
        ignore_index=formats.IGNORE_INDEX,
        reduction="none",
    ).view_as(targets)
    in_loss = targets != formats.IGNORE_INDEX
    is_label = in_loss & (kinds == formats.LABEL)
    is_rationale = in_loss & (kinds == formats.RATIONALE)
    weights = in_loss.float() + is_label.float() * (label_loss_weight - 1.0)
    total = (token_loss * weights).sum() / weights.sum()
    summed = (token_loss * in_loss).sum()
    return {
        "loss": total,
        "label_loss": (token_loss * is_label).sum() / is_label.sum().clamp(min=1),
        "rationale_loss": (token_loss * is_rationale).sum() / is_rationale.sum().clamp(min=1),
        "label_share": (token_loss * is_label).sum() / summed.clamp(min=1e-12),
        "n_loss_tokens": in_loss.sum(),
        "n_label_tokens": is_label.sum(),
    }


def check_finite(loss: torch.Tensor, step: int) -> None:
    """Stop on a NaN or infinite loss rather than save a useless adapter."""
    if not torch.isfinite(loss):
        raise TrainingError(
            f"loss is {float(loss)} at step {step}: training diverged. "
            "Lower training.learning_rate or check the data."
        )


def load_model(model_path: str, training: Mapping[str, Any]) -> tuple[Any, Any]:
    """Base model and tokenizer; wrapped with LoRA adapters unless full fine-tuning is asked."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
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


def fingerprint(job: TrainingJob, subject_ids: Sequence[int], examples_digest: str) -> str:
    """What a checkpoint must match to be resumed: settings, subjects and targets."""
    payload = json.dumps(
        {
            "model": job.model_path,
            "fmt": job.fmt,
            "n_train": job.n_train,
            "seed": job.seed,
            "training": job.training,
            "subjects": list(subject_ids),
            "examples": examples_digest,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def _save_checkpoint(
    path: Path, model: Any, optimizer: Any, scheduler: Any, step: int, fp: str, log_path: Path
) -> None:
    """Trainable weights, optimizer, schedule, RNG and the step log so far, replaced atomically.

    The step log is kept here too: Snakemake deletes a failed job's outputs, the log included,
    and a resumed run must still report every step once.
    """
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    trainable = {k: v for k, v in model.state_dict().items() if k in names}
    torch.save(
        {
            "model": trainable,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": step,
            "fingerprint": fp,
            "torch_rng": torch.get_rng_state(),
        },
        tmp / "state.pt",
    )
    shutil.copyfile(log_path, tmp / "train_log.jsonl")
    # Replace atomically so a kill during the write never leaves a half checkpoint.
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def _load_checkpoint(path: Path, fp: str) -> dict[str, Any] | None:
    state_file = path / "state.pt"
    if not state_file.exists():
        return None
    state = torch.load(state_file, weights_only=False)
    if state.get("fingerprint") != fp:
        log.info("checkpoint at %s belongs to other settings; starting fresh", path)
        return None
    return state


def train(
    job: TrainingJob, prompts: pl.DataFrame, cohort: pl.DataFrame, rationales: pl.DataFrame | None
) -> dict[str, Any]:
    """Fine-tune one configuration and save the adapter (or full weights), log and run card."""
    t_start = time.time()
    cfg = job.training
    seed_everything(job.seed)
    model, tokenizer = load_model(job.model_path, cfg)
    frame = build_examples(prompts, cohort, rationales, job.fmt, job.n_train, job.seed)
    # One entry per subject: batches are drawn over subjects, so every format of a matched
    # configuration takes the same steps (a multitask subject brings its two examples along).
    template = template_for_model(tokenizer, job.prompt_settings)
    examples = encode_examples(frame, job.fmt, tokenizer, job.max_seq_len, template)
    flat = [e for subject in examples for e in subject]
    digest = hashlib.sha256(json.dumps([e.input_ids for e in flat]).encode()).hexdigest()
    fp = fingerprint(job, frame["subject_id"].to_list(), digest)

    micro_batches = batch_schedule(len(examples), cfg["batch_size"], cfg["epochs"], job.seed)
    accum = cfg["gradient_accumulation_steps"]
    total_steps = math.ceil(len(micro_batches) / accum)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg["learning_rate"], weight_decay=cfg["weight_decay"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(total_steps, int(cfg["warmup_ratio"] * total_steps))
    )

    start_step = 0
    state = _load_checkpoint(job.checkpoint_dir, fp)
    if state is not None:
        model.load_state_dict(state["model"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        start_step = state["step"]
        log.info("resuming from checkpoint at step %d/%d", start_step, total_steps)

    stop = {"sigterm": False}
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(sigterm=True))
    job.log_path.parent.mkdir(parents=True, exist_ok=True)
    if start_step:
        # Steps logged after the checkpoint are redone; drop them so each step appears once.
        saved = (job.checkpoint_dir / "train_log.jsonl").read_text().splitlines()
        kept = [line for line in saved if json.loads(line)["step"] <= start_step]
        job.log_path.write_text("".join(line + "\n" for line in kept))
    mode = "a" if start_step else "w"
    model.train()
    try:
        with job.log_path.open(mode) as log_file:
            for step in range(start_step, total_steps):
                t0 = time.time()
                parts_sum: dict[str, float] = {}
                n_tokens = 0
                for micro in micro_batches[step * accum : (step + 1) * accum]:
                    batch = formats.collate(
                        [e for i in micro for e in examples[i]], tokenizer.pad_token_id
                    )
                    out = model(
                        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                    )
                    parts = segment_losses(
                        out.logits, batch["labels"], batch["segments"], cfg["label_loss_weight"]
                    )
                    check_finite(parts["loss"], step + 1)
                    (parts["loss"] / accum).backward()
                    n_tokens += int(batch["attention_mask"].sum())
                    for key, value in parts.items():
                        parts_sum[key] = parts_sum.get(key, 0.0) + float(value.detach()) / accum
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg["max_grad_norm"]))
                if not math.isfinite(grad_norm) or grad_norm > cfg["max_grad_norm_abort"]:
                    raise TrainingError(
                        f"gradient norm {grad_norm:.3g} at step {step + 1} exceeds "
                        f"training.max_grad_norm_abort={cfg['max_grad_norm_abort']}: "
                        "training exploded."
                    )
                lr = scheduler.get_last_lr()[0]
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                elapsed = max(time.time() - t0, 1e-9)
                record = {
                    "step": step + 1,
                    "loss": parts_sum["loss"],
                    "label_loss": parts_sum["label_loss"],
                    "rationale_loss": parts_sum["rationale_loss"],
                    "label_loss_share": parts_sum["label_share"],
                    "learning_rate": lr,
                    "grad_norm": grad_norm,
                    "tokens": n_tokens,
                    "tokens_per_s": n_tokens / elapsed,
                }
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
                done = step + 1
                if stop["sigterm"] or (
                    cfg["checkpoint_every"]
                    and done % cfg["checkpoint_every"] == 0
                    and done < total_steps
                ):
                    _save_checkpoint(
                        job.checkpoint_dir, model, optimizer, scheduler, done, fp, job.log_path
                    )
                if stop["sigterm"]:
                    raise Preempted(
                        f"SIGTERM at step {done}/{total_steps}; checkpoint saved, rerun to resume."
                    )
    finally:
        signal.signal(signal.SIGTERM, previous)

    model.eval()
    job.out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(job.out_dir)
    final = [json.loads(line) for line in job.log_path.read_text().splitlines()]
    run = {
        "model_path": job.model_path,
        "format": job.fmt,
        "n_train": job.n_train,
        "seed": job.seed,
        "method": cfg["method"],
        "training": dict(cfg),
        "n_subjects": len(examples),
        "n_examples": len(flat),
        "n_cases": int(frame["label"].sum()),
        "optimizer_steps": total_steps,
        "resumed_from_step": start_step,
        "subjects_sha256": hashlib.sha256(
            json.dumps(frame["subject_id"].to_list()).encode()
        ).hexdigest(),
        "mean_completion_tokens": float(np.mean([e.n_completion_tokens for e in flat])),
        "tokens_trained": int(sum(r["tokens"] for r in final)),
        "final_loss": final[-1]["loss"],
        "mean_label_loss_share": float(np.mean([r["label_loss_share"] for r in final])),
        "wall_s": time.time() - t_start,
        # Where it ran: the devices SLURM granted (gres/--gpus) and the job id, for the run card.
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "versions": library_versions(),
    }
    job.run_path.write_text(json.dumps(run, indent=2, default=str))
    shutil.rmtree(job.checkpoint_dir, ignore_errors=True)
    return run


def library_versions() -> dict[str, str]:
    import peft
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }
