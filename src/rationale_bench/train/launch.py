"""How a fine-tuning job is started: one process, or one per GPU under a launcher.

Kept free of torch so that the Snakefile can import it to build commands for a whole grid.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Training settings that change what is reported or how processes start, not what is trained:
# left out of the finetune rule's params and of the checkpoint fingerprint, so switching them
# reruns nothing and a resumed job still finds its checkpoint.
REPORTING_KEYS = ("report_to", "tracking_project", "tracking_offline", "launcher")

LAUNCHERS = ("torchrun", "accelerate")


class LaunchError(ValueError):
    """The launch settings cannot start a job."""


def launch_command(n_processes: int, launcher: str = "torchrun") -> list[str]:
    """The command prefix that starts one training process per GPU ([] for one process).

    Single node: a multi-GPU job is one SLURM task holding all its GPUs; the launcher starts the
    processes and sets RANK / WORLD_SIZE / LOCAL_RANK, which the training loop reads.
    """
    if n_processes <= 1:
        return []
    if launcher == "torchrun":
        return ["torchrun", "--standalone", f"--nproc_per_node={n_processes}"]
    if launcher == "accelerate":
        return [
            "accelerate",
            "launch",
            "--multi_gpu",
            f"--num_processes={n_processes}",
            "--num_machines=1",
        ]
    raise LaunchError(
        f"training.launcher '{launcher}' is unknown; use one of {', '.join(LAUNCHERS)}."
    )


def job_launch(n_gpus: int, training: Mapping[str, Any]) -> dict[str, Any]:
    """What the finetune rule passes its script: the launch command and the process count."""
    return {
        "command": launch_command(n_gpus, training.get("launcher", "torchrun")),
        "processes": max(1, n_gpus),
    }


def job_runtime(config: Mapping[str, Any], model: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(reporting settings, launch) of a model's fine-tuning jobs, from the whole config.

    The finetune script reads these from the config, not from its params: Snakemake reruns a job
    whose params changed, and switching a tracker, the launcher or the GPU count (data parallel:
    the same weights) must not retrain anything.
    """
    from rationale_bench.study import training_settings

    training = training_settings(config, model)
    gpus = int(config["models"][model]["resources"]["gpu"])
    return reporting_settings(training), job_launch(gpus, training)


def result_settings(training: Mapping[str, Any]) -> dict[str, Any]:
    """The training settings that shape the trained weights."""
    return {k: v for k, v in training.items() if k not in REPORTING_KEYS}


def reporting_settings(training: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in training.items() if k in REPORTING_KEYS}
