"""Experiment tracking (TensorBoard, Weights & Biases, MLflow), offline by default."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rationale_bench.train.job import TrainingError

TRACKERS = ("tensorboard", "wandb", "mlflow")


class Trackers:
    """Optional experiment tracking next to train_log.jsonl (which is always written)."""

    def __init__(
        self,
        report_to: Sequence[str],
        log_dir: Path,
        run_name: str,
        config: Mapping[str, Any],
        project: str,
        offline: bool,
    ) -> None:
        self.sinks: list[tuple[str, Any]] = []
        check_trackers(report_to)
        for name in report_to:
            module = _import_tracker(name)
            if name == "tensorboard":
                writer = module.SummaryWriter(log_dir=str(log_dir / "tensorboard"))
                writer.add_text("config", json.dumps(config, default=str))
                self.sinks.append((name, writer))
            elif name == "wandb":
                run = module.init(
                    project=project,
                    name=run_name,
                    config=dict(config),
                    dir=str(log_dir),
                    mode="offline" if offline else "online",
                    reinit=True,
                )
                self.sinks.append((name, run))
            else:  # mlflow
                if offline:
                    # A local file store: nothing leaves the machine.
                    module.set_tracking_uri((log_dir / "mlruns").resolve().as_uri())
                module.set_experiment(project)
                module.start_run(run_name=run_name)
                module.log_params({k: json.dumps(v, default=str) for k, v in config.items()})
                self.sinks.append((name, module))

    def log(self, record: Mapping[str, float], step: int) -> None:
        values = {k: float(v) for k, v in record.items() if k != "step"}
        for name, sink in self.sinks:
            if name == "tensorboard":
                for key, value in values.items():
                    sink.add_scalar(f"train/{key}", value, step)
            elif name == "wandb":
                sink.log({f"train/{k}": v for k, v in values.items()}, step=step)
            else:
                sink.log_metrics(values, step=step)

    def close(self) -> None:
        for name, sink in self.sinks:
            if name == "tensorboard":
                sink.close()
            elif name == "wandb":
                sink.finish()
            else:
                sink.end_run()
        self.sinks = []


def check_trackers(report_to: Sequence[str]) -> None:
    for name in report_to:
        if name not in TRACKERS:
            raise TrainingError(
                f"training.report_to '{name}' is unknown; use any of {', '.join(TRACKERS)}."
            )
        _import_tracker(name)


def _import_tracker(name: str) -> Any:
    import importlib

    module = {"tensorboard": "torch.utils.tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
    package = {"tensorboard": "tensorboard==2.21.0", "wandb": "wandb", "mlflow": "mlflow"}
    try:
        return importlib.import_module(module[name])
    except ImportError as err:
        raise TrainingError(
            f"training.report_to includes '{name}' but its package is not installed ({err}). "
            f"Install it (pip install {package[name]}; see the 'tracking' extra in "
            f"pyproject.toml) or remove '{name}' from training.report_to."
        ) from err
