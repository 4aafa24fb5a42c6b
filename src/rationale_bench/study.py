"""The study grid: configurations, their ids, and the slice of config each job sees.

Snakemake passes each job only the part of config it depends on (its ``params``), so that
editing one setting reruns exactly the jobs it affects. These functions compute those slices
from the validated config dictionary; ``rules/common.smk`` only calls them.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from rationale_bench.text.formats import FORMATS
from rationale_bench.text.templates import DEFAULT_ANSWER_WORDS

# The order of the grid axes is the order of the parts of a config_id path.
GRID_AXES: tuple[str, ...] = ("model", "serialization", "format", "n_train", "seed")

# The rationale style each training format needs (None: no teacher text).
RATIONALE_STYLE_OF_FORMAT: dict[str, str | None] = {
    name: spec.style for name, spec in FORMATS.items()
}


@dataclass(frozen=True)
class Configuration:
    """One point of the study grid."""

    model: str
    serialization: str
    format: str
    n_train: int
    seed: int

    @property
    def config_id(self) -> str:
        """A readable, path-safe id:
        ``model=tiny/serialization=timeline_recent/format=free_form/n_train=200/seed=1``."""
        return "/".join(f"{axis}={getattr(self, axis)}" for axis in GRID_AXES)

    def as_dict(self) -> dict[str, Any]:
        return {axis: getattr(self, axis) for axis in GRID_AXES}


def iter_configurations(config: Mapping[str, Any]) -> Iterator[Configuration]:
    """All configurations of the grid, in a stable order."""
    grid = config["grid"]
    for model, serialization, fmt, n_train, seed in itertools.product(
        grid["model"], grid["serialization"], grid["format"], grid["n_train"], grid["seed"]
    ):
        yield Configuration(
            model=model,
            serialization=serialization,
            format=fmt,
            n_train=int(n_train),
            seed=int(seed),
        )


def check_grid(config: Mapping[str, Any]) -> None:
    """Cross-key checks that JSON Schema cannot express; raise ValueError naming the key."""
    grid = config["grid"]
    for model in grid["model"]:
        if model not in config["models"]:
            known = ", ".join(sorted(config["models"])) or "none"
            raise ValueError(
                f"config grid.model lists '{model}', but models has no entry '{model}' "
                f"(known models: {known}). Add models.{model} or remove it from grid.model."
            )
    styles = set(config["teacher"]["styles"])
    for fmt in grid["format"]:
        style = RATIONALE_STYLE_OF_FORMAT.get(fmt)
        if fmt not in RATIONALE_STYLE_OF_FORMAT:
            raise ValueError(
                f"config grid.format lists unknown format '{fmt}'; "
                f"known formats: {', '.join(RATIONALE_STYLE_OF_FORMAT)}."
            )
        if style is not None and style not in styles:
            raise ValueError(
                f"config grid.format lists '{fmt}', which trains on '{style}' rationales, "
                f"but teacher.styles does not include '{style}'. Add it to teacher.styles."
            )
    for size in grid["n_train"]:
        if int(size) <= 0:
            raise ValueError(f"config grid.n_train must be positive, got {size}.")


def is_trained(fmt: str) -> bool:
    """Whether a format's configurations are fine-tuned (zero_shot scores the base model)."""
    return FORMATS[fmt].trained


def is_few_shot(fmt: str) -> bool:
    return FORMATS[fmt].few_shot


def rationale_style(fmt: str) -> str | None:
    """The rationale style a training format needs, or None for label-only formats."""
    return RATIONALE_STYLE_OF_FORMAT[fmt]


def canonical(value: Any) -> Any:
    """A copy with every mapping's keys sorted, recursively.

    Snakemake compares a job's params by their text, so two equal settings written in another
    key order (a config rewritten by a tool, say) must not look like a change and rerun jobs.
    """
    if isinstance(value, Mapping):
        return {key: canonical(value[key]) for key in sorted(value)}
    if isinstance(value, list | tuple):
        return [canonical(v) for v in value]
    return value


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge ``override`` into a copy of ``base`` (override wins)."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def training_settings(config: Mapping[str, Any], model: str) -> dict[str, Any]:
    """Training hyperparameters of one model: the study defaults with the model's overrides."""
    return canonical(deep_merge(config["training"], config["models"][model].get("training", {})))


def model_settings(config: Mapping[str, Any], model: str) -> dict[str, Any]:
    """What a job needs to load a model. Training overrides have their own slice; the cluster
    resources and the cost-planning assumptions change no result, so editing them reruns
    nothing."""
    settings = {
        k: v
        for k, v in config["models"][model].items()
        if k not in ("training", "resources", "parameters")
    }
    settings["name"] = model
    # The system prompt shapes every prompt the model reads, so it is part of the model's slice.
    serialization = config.get("serialization", {})
    settings["system_prompt"] = serialization.get("system_prompt")
    settings["answer_words"] = serialization.get("answer_words", list(DEFAULT_ANSWER_WORDS))
    return canonical(settings)


def check_teacher_config(config: Mapping[str, Any]) -> None:
    """Settings the schema cannot rule out; raised before any job runs."""
    teacher = config["teacher"]
    check_label_blind_teacher(teacher)
    if teacher.get("view", "student_prompt") == "student_prompt":
        teacher_view_model(config)


def check_label_blind_teacher(teacher: Mapping[str, Any]) -> None:
    """A label-blind teacher predicts the outcome, which the template teacher cannot. The
    teacher's settings, whole or its jobs' slice; the teacher checks its slice too."""
    if teacher.get("mode") == "label_blind" and teacher.get("backend") == "template":
        raise ValueError(
            "teacher.mode 'label_blind' needs a teacher that predicts the outcome; the "
            "'template' teacher only explains a known one. Set teacher.backend to 'openai' or "
            "teacher.mode to 'label_aware'."
        )


# Settings of the openai block that decide how requests are sent, not what is answered: the
# teacher script reads them from the config, so editing them reruns nothing (the cache answers).
OPERATIONAL_OPENAI_KEYS = (
    "base_url",
    "api_key_env",
    "concurrency",
    "request_timeout_s",
    "max_attempts",
    "retry_rounds",
    "round_backoff_s",
)
TEACHER_VIEWS = ("student_prompt", "full_history")


def rationale_settings(config: Mapping[str, Any], style: str) -> dict[str, Any]:
    """The settings one style's rationale jobs get (their Snakemake params): only what changes
    those rationales, so editing another style's prompt, the shard count, the price table, the
    review settings or how requests are sent (endpoint, key variable, concurrency, timeouts,
    retries, allowed hosts: :func:`teacher_operational_settings`) reruns no teacher job. Keys
    sorted, so key order never does either."""
    teacher = config["teacher"]
    keys = ["name", "backend", "mode", "qc", "view"]
    settings = {k: teacher[k] for k in keys}
    # The outcome window the rationales speak of ("within five years"): the cohort's.
    settings["horizon_days"] = config["cohort"]["horizon_days"]
    if teacher["view"] == "student_prompt":
        settings["view_model"] = teacher_view_model(config)
    if teacher["backend"] == "template":
        return canonical({**settings, "seed": teacher["seed"]})
    if teacher["view"] == "full_history":
        settings["max_history_lines"] = teacher["max_history_lines"]
    settings["openai"] = {
        k: v for k, v in teacher["openai"].items() if k not in OPERATIONAL_OPENAI_KEYS
    }
    prompts = teacher["prompts"]
    settings["prompts"] = {"system": prompts["system"], style: prompts[style]}
    if teacher["mode"] == "label_blind":
        settings["label_blind"] = teacher["label_blind"]
        settings["prompts"][f"blind_{style}"] = prompts[f"blind_{style}"]
    settings["question"] = config["serialization"]["question"]
    return canonical(settings)


def teacher_operational_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """How the teacher's requests are sent: read by the teacher script from the config, never a
    param, because none of it changes an answer (answers come from the cache, keyed by model,
    messages and sampling)."""
    teacher = config["teacher"]
    api = teacher.get("openai") or {}
    settings = {k: api[k] for k in OPERATIONAL_OPENAI_KEYS if k in api}
    settings["allowed_hosts"] = list(teacher.get("allowed_hosts") or [])
    return settings


def teacher_view_model(config: Mapping[str, Any]) -> str:
    """The grid model whose prompts the teacher reads (teacher.view: student_prompt).

    teacher.view_model when set; else the grid model with the smallest max_prompt_tokens (the
    first such in grid order): every student then sees at least as many history lines as the
    teacher was shown (exactly so when the models share a tokenizer), so no rationale cites
    evidence its student cannot read.
    """
    chosen = config["teacher"].get("view_model")
    grid = list(config["grid"]["model"])
    if chosen is not None:
        if chosen not in grid:
            raise ValueError(
                f"config teacher.view_model is '{chosen}', which is not in grid.model "
                f"({', '.join(grid)}). Name a grid model, or set it to null for the grid model "
                "with the smallest max_prompt_tokens."
            )
        return chosen
    return min(grid, key=lambda m: (config["models"][m]["max_prompt_tokens"], grid.index(m)))


def drops_subjects(teacher: Mapping[str, Any]) -> bool:
    """Whether the teacher settings can leave a subject without a rationale of some style."""
    blind_drop = (teacher.get("mode") == "label_blind") and (
        (teacher.get("label_blind") or {}).get("on_disagreement") == "drop"
    )
    return blind_drop or (teacher.get("qc") or {}).get("on_failure") == "drop"
