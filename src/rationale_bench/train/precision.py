"""Numeric precision: what a device supports, and autocast for the chosen one."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from rationale_bench.train.job import TrainingError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision a job really uses: 'auto' is bf16 on a GPU that has it, else fp32."""
    if precision not in PRECISIONS:
        raise TrainingError(
            f"training.precision '{precision}' is unknown; use one of {', '.join(PRECISIONS)}."
        )
    if device.type == "cuda":
        has_bf16 = torch.cuda.is_bf16_supported()
        if precision == "auto":
            return "bf16" if has_bf16 else "fp32"
        if precision == "bf16" and not has_bf16:
            raise TrainingError(
                f"training.precision is bf16 but {torch.cuda.get_device_name(device)} has no "
                "bf16 support; use fp16 (with loss scaling) or fp32."
            )
        return precision
    # CPU autocast supports bf16 and fp16; 'auto' keeps the exact, reproducible fp32 path.
    return "fp32" if precision == "auto" else precision


def autocast(precision: str, device: torch.device) -> Any:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)
