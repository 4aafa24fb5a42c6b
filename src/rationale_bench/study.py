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
    nothing. Nor does the hub cache (hub.cache_dir): where the weights of a hub model lie is
    read by the scripts from the config, since the same revision gives the same results."""
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


def build_settings(config: Mapping[str, Any], model: str) -> dict[str, Any]:
    """What build_tiny_model needs: the model's build block, its sequence length, and the
    answer words (the tokenizer must hold each as one token)."""
    entry = config["models"][model]
    settings = dict(entry["build"])
    settings["max_seq_len"] = entry["max_seq_len"]
    settings["answer_words"] = config["serialization"]["answer_words"]
    return canonical(settings)


def serialization_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """How histories are written: time encoding and look-back. The question, system prompt and
    answer words are added later (build_prompts, the model's settings), and which variant is
    the reference view changes no history."""
    serialization = config["serialization"]
    return canonical({k: serialization[k] for k in ("time_encoding", "lookback_days")})


def section_settings(
    config: Mapping[str, Any], *keys: str, operational: tuple[str, ...] = ()
) -> dict[str, Any]:
    """A config section as a job param, keys sorted so that only a real edit reruns the job.
    ``operational`` keys of the section change no output (the script reads them from the
    config), so they are left out and editing them reruns nothing."""
    section = config
    for key in keys:
        section = section[key]
    return canonical({k: v for k, v in section.items() if k not in operational})


def bootstrap_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The bootstrap of evaluation (resamples and seed): all the report and the baselines read
    of that section (the rest is the language models' scoring)."""
    evaluation = config["evaluation"]
    return {k: evaluation[k] for k in ("bootstrap_resamples", "bootstrap_seed")}


def baseline_runs(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every classical baseline run: one per kind, n_train and seed, shaped like a
    configuration (no model or serialization; the kind is its format)."""
    return [
        {"model": None, "serialization": None, "format": kind, "n_train": n_train, "seed": seed}
        for kind in config["baselines"]["kinds"]
        for n_train in config["grid"]["n_train"]
        for seed in config["grid"]["seed"]
    ]


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
    "http_attempts",
    "retry_rounds",
    "round_backoff_s",
)


def rationale_settings(config: Mapping[str, Any], style: str) -> dict[str, Any]:
    """The settings one style's rationale jobs get (their Snakemake params): only what changes
    those rationales, so editing another style's prompt, the shard count, the price table, the
    review settings or how requests are sent (endpoint, key variable, concurrency, timeouts,
    retries, allowed hosts: :func:`teacher_operational_settings`) reruns no teacher job. Keys
    sorted, so key order never does either."""
    teacher = config["teacher"]
    settings = {k: teacher[k] for k in ("name", "backend", "mode", "view")}
    settings["qc"] = qc_settings(config)
    # The outcome window the rationales speak of ("within five years"): the cohort's.
    settings["horizon_days"] = config["cohort"]["horizon_days"]
    if teacher["view"] == "student_prompt":
        settings["view_model"] = teacher_view_model(config)
    if teacher["backend"] == "template":
        # The template teacher always draws its wordings; null (no seed sent) draws with 0.
        seed = teacher["seed"] if teacher["seed"] is not None else 0
        return canonical({**settings, "seed": seed})
    if teacher["view"] == "full_history":
        settings["max_history_lines"] = teacher["max_history_lines"]
    settings["openai"] = {
        k: v for k, v in teacher["openai"].items() if k not in OPERATIONAL_OPENAI_KEYS
    }
    # The one teacher seed, sent with every request (regenerations add their number to it).
    settings["openai"]["seed"] = teacher["seed"]
    prompts = teacher["prompts"]
    settings["prompts"] = {"system": prompts["system"], style: prompts[style]}
    if teacher["mode"] == "label_blind":
        settings["label_blind"] = teacher["label_blind"]
        settings["prompts"][f"blind_{style}"] = prompts[f"blind_{style}"]
    settings["question"] = config["serialization"]["question"]
    return canonical(settings)


def qc_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """teacher.qc as the teacher jobs read it (``teacher.generate.QCSettings``): regenerations
    become max_attempts, the generations per subject and prompt with the first included. The
    jobs' params hence stay as they were before the key was renamed, and the rename reruns
    nothing."""
    # Key order kept (the merge job's param is not sorted, and order is part of its text).
    return {
        ("max_attempts" if key == "regenerations" else key): (
            value + 1 if key == "regenerations" else value
        )
        for key, value in config["teacher"]["qc"].items()
    }


def teacher_operational_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """How the teacher's requests are sent: read by the teacher script from the config, never a
    param, because none of it changes an answer (answers come from the cache, keyed by model,
    messages and sampling). http_attempts is passed as the client's max_attempts (attempts per
    request in one round)."""
    teacher = config["teacher"]
    api = teacher.get("openai") or {}
    settings = {k: api[k] for k in OPERATIONAL_OPENAI_KEYS if k in api}
    if "http_attempts" in settings:
        settings["max_attempts"] = settings.pop("http_attempts")
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


# --------------------------------------------------------------------------------------
# Ingest (rules/ingest.smk).

# The data.* keys every real-data adapter reads, besides its own section (data.<source>).
INGEST_SHARED_KEYS = (
    "source",
    "date_formats",
    "extra_vocabularies",
    "extraction_date",
    "timezone",
    "max_unparseable_fraction",
    "sex_values",
)


def ingest_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The data settings the ingest job receives: the shared keys and the configured source's
    own section only, so editing another source's keys reruns nothing; keys sorted
    (:func:`canonical`)."""
    data = config["data"]
    return canonical({key: data[key] for key in (*INGEST_SHARED_KEYS, data["source"])})
