"""What one training job is, and the errors that end it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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
