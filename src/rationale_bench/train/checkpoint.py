"""Checkpoints: save on schedule or SIGTERM, resume only the same job, early stopping."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rationale_bench.train.job import TrainingJob
from rationale_bench.train.launch import REPORTING_KEYS

log = logging.getLogger(__name__)


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v for k, v in model.state_dict().items() if k in names}


@dataclass
class EarlyStopping:
    """Stop when the tuning completion loss has not improved for ``patience`` evaluations (one
    per epoch), then restore the weights of the best evaluation."""

    patience: int
    best_loss: float = math.inf
    best_step: int = 0
    bad: int = 0
    evaluations: list[dict[str, float]] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] | None = None

    def update(self, model: Any, step: int, loss: float) -> bool:
        """Record an evaluation; True when training should stop."""
        self.evaluations.append({"step": step, "tuning_completion_loss": loss})
        if loss < self.best_loss:
            self.best_loss, self.best_step, self.bad = loss, step, 0
            self.best_state = {
                k: v.detach().cpu().clone() for k, v in trainable_state(model).items()
            }
        else:
            self.bad += 1
        return self.bad >= self.patience

    def restore_best(self, model: Any) -> None:
        if self.best_state is not None:
            model.load_state_dict(self.best_state, strict=False)


def fingerprint(job: TrainingJob, subject_ids: Sequence[int], examples_digest: str) -> str:
    """What a checkpoint must match to be resumed: settings, subjects and targets."""
    payload = json.dumps(
        {
            "model": job.model_path,
            "fmt": job.fmt,
            "n_train": job.n_train,
            "seed": job.seed,
            "training": {k: v for k, v in job.training.items() if k not in REPORTING_KEYS},
            "subjects": list(subject_ids),
            "examples": examples_digest,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def _save_checkpoint(
    path: Path,
    model: Any,
    optimization: Any,  # finetune.Optimization: what its state_dict() holds is saved
    step: int,
    fp: str,
    history: Sequence[Mapping[str, Any]],
    early: EarlyStopping | None = None,
) -> None:
    """Trainable weights, optimizer, schedule, RNG and the step log so far, replaced atomically.

    The step log comes from memory: Snakemake deletes a failed job's outputs (the output log
    included) when SIGTERM arrives, and a resumed run must still report every step once.
    """
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    trainable = trainable_state(model)
    torch.save(
        {
            "model": trainable,
            **optimization.state_dict(),
            "step": step,
            "fingerprint": fp,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
            "early_stopping": vars(early) if early is not None else None,
        },
        tmp / "state.pt",
    )
    _write_log(tmp / "train_log.jsonl", history)
    # Replace atomically so a kill during the write never leaves a half checkpoint.
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def _write_log(path: Path, history: Sequence[Mapping[str, Any]]) -> None:
    """The step log as JSON lines, replaced atomically."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(record) + "\n" for record in history))
    os.replace(tmp, path)


def _checkpoint_history(path: Path, start_step: int) -> list[dict[str, Any]]:
    """The steps logged up to the checkpoint (later ones are redone, so each appears once)."""
    saved = (path / "train_log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, saved) if r["step"] <= start_step]


def remove_checkpoints(path: Path) -> None:
    """The checkpoint and a half-written one (``.tmp``): after success neither is needed, and
    for a full fine-tune each holds the weights and the optimizer state."""
    for folder in (path, path.with_name(path.name + ".tmp")):
        shutil.rmtree(folder, ignore_errors=True)


def _load_checkpoint(path: Path, fp: str) -> dict[str, Any] | None:
    state_file = path / "state.pt"
    if not state_file.exists():
        return None
    state = torch.load(state_file, weights_only=False)
    if state.get("fingerprint") != fp:
        log.info("checkpoint at %s belongs to other settings; starting fresh", path)
        return None
    return state
