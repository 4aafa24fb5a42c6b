"""Loss accounting: completion-only sums split into answer and rationale, per step."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from rationale_bench.text import formats
from rationale_bench.train.job import TrainingError
from rationale_bench.train.precision import autocast


def segment_sums(
    logits: torch.Tensor, labels: torch.Tensor, segments: torch.Tensor, label_loss_weight: float
) -> dict[str, torch.Tensor]:
    """Summed token losses of one batch by part, and their token counts.

    Sums, not means, so that a step's loss can be normalised over all its micro-batches (and
    processes) at once: 2 micro-batches of 8 then give the same step as 1 of 16. Shifted so
    position t predicts token t+1.
    """
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
    return {
        "weighted": (token_loss * weights).sum(),
        "weight": weights.sum(),
        "summed": (token_loss * in_loss).sum(),
        "label": (token_loss * is_label).sum(),
        "n_label": is_label.sum().float(),
        "rationale": (token_loss * is_rationale).sum(),
        "n_rationale": is_rationale.sum().float(),
        "n_loss_tokens": in_loss.sum().float(),
    }


def loss_weight_total(
    examples: Sequence[formats.EncodedExample], label_loss_weight: float
) -> float:
    """The denominator of a step's loss, known before any forward pass (same in every process)."""
    total = 0.0
    for e in examples:
        # Position t predicts token t+1: the first token is never a target.
        for label, kind in zip(e.labels[1:], e.segments[1:], strict=True):
            if label != formats.IGNORE_INDEX:
                total += label_loss_weight if kind == formats.LABEL else 1.0
    return total


@dataclass
class StepTotals:
    """Sums over a step's micro-batches (and processes), and the losses the step log reports.

    Summed on the device as one float64 vector (``as_vector``, in field order) so that a step
    needs one all_reduce and no host sync per micro-batch; read back with ``from_vector``.
    """

    weighted: float = 0.0  # token losses, the answer token's weighted by label_loss_weight
    weight: float = 0.0  # the weights: the loss denominator
    summed: float = 0.0  # unweighted completion-token losses
    label: float = 0.0  # answer-token losses
    n_label: float = 0.0
    rationale: float = 0.0  # rationale-token losses
    n_rationale: float = 0.0
    n_loss_tokens: float = 0.0
    tokens: float = 0.0  # real tokens in the padded batches
    padding: float = 0.0  # padding slots

    @staticmethod
    def as_vector(sums: Mapping[str, torch.Tensor], attention_mask: torch.Tensor) -> torch.Tensor:
        """One batch's totals (``segment_sums`` and its padding), in field order."""
        real = attention_mask.sum()
        values = {**sums, "tokens": real, "padding": attention_mask.numel() - real}
        return torch.stack([values[f.name].detach().double() for f in fields(StepTotals)])

    @classmethod
    def zeros(cls, device: torch.device) -> torch.Tensor:
        return torch.zeros(len(fields(cls)), dtype=torch.float64, device=device)

    @classmethod
    def from_vector(cls, vector: torch.Tensor) -> StepTotals:
        return cls(*vector.cpu().tolist())

    @property
    def loss(self) -> float:
        """What the optimizer minimises: the weighted mean over completion tokens."""
        return self.weighted / max(self.weight, 1e-12)

    @property
    def completion_loss(self) -> float:
        return self.summed / max(self.n_loss_tokens, 1.0)

    @property
    def label_loss(self) -> float:
        return self.label / max(self.n_label, 1.0)

    @property
    def rationale_loss(self) -> float:
        return self.rationale / max(self.n_rationale, 1.0)

    @property
    def label_loss_share(self) -> float:
        """The answer tokens' share of the summed loss (token dilution)."""
        return self.label / max(self.summed, 1e-12)


@torch.no_grad()
def completion_losses(
    model: Any,
    examples: Sequence[Sequence[formats.EncodedExample]],
    pad_token_id: int,
    device: torch.device,
    precision: str,
    batch_size: int,
) -> tuple[float | None, float | None]:
    """(completion-token loss, answer-token loss) of one no-grad pass; (None, None) if empty."""
    flat = [e for subject in examples for e in subject]
    if not flat:
        return None, None
    was_training = model.training
    model.eval()
    vector = StepTotals.zeros(device)
    for i in range(0, len(flat), batch_size):
        batch = {
            k: v.to(device)
            for k, v in formats.collate(flat[i : i + batch_size], pad_token_id).items()
        }
        with autocast(precision, device):
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        sums = segment_sums(out.logits, batch["labels"], batch["segments"], 1.0)
        vector += StepTotals.as_vector(sums, batch["attention_mask"])
    model.train(was_training)
    totals = StepTotals.from_vector(vector)
    return totals.completion_loss, totals.label_loss


def check_finite(loss: torch.Tensor, step: int) -> None:
    """Stop on a NaN or infinite loss rather than save a useless adapter."""
    if not torch.isfinite(loss):
        raise TrainingError(
            f"loss is {float(loss)} at step {step}: training diverged. "
            "Lower training.learning_rate or check the data."
        )


def final_losses(history: Sequence[Mapping[str, Any]], last_step: int, window: int) -> dict:
    """Mean completion and answer-token loss over the ``window`` steps up to ``last_step``
    (one epoch's worth: every training subject once)."""
    steps = [r for r in history if last_step - window < r["step"] <= last_step]
    return {
        "final_completion_loss": float(np.mean([r["completion_loss"] for r in steps])),
        "final_answer_loss": float(np.mean([r["label_loss"] for r in steps])),
    }
