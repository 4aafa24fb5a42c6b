# Validation, wildcard constraints and the named helpers every rule file uses.

import functools
import os
import re
import sys

from snakemake.logging import logger

# The library lives in src/: importable here, and by the scripts inside conda envs and on
# cluster nodes (they inherit PYTHONPATH), whether or not the package is pip-installed.
LIBRARY = str(Path(workflow.basedir) / "src")
sys.path.insert(0, LIBRARY)
os.environ.update(
    PYTHONPATH=os.pathsep.join(filter(None, [LIBRARY, os.environ.get("PYTHONPATH")]))
)

from rationale_bench import config_check  # noqa: E402

from rationale_bench.data import inputs

from rationale_bench.train import models

from rationale_bench import study

# Renamed keys first: the schema knows only the new names.
try:
    for message in config_check.apply_renames(config):
        logger.warning(message)
except config_check.ConfigError as error:
    raise WorkflowError(str(error)) from None
try:
    # Like snakemake.utils.validate (defaults filled), but one line with the key path instead
    # of the whole schema, and the schema parsed by libyaml.
    config_check.validate_config(
        config, Path(workflow.basedir) / "schemas" / "config.schema.yaml"
    )
except config_check.ConfigError as error:
    raise WorkflowError(str(error)) from None
try:
    config_check.check_config(config, "results/cohort/cohort.parquet")
    config["serialization"]["question"] = config_check.fill_horizon(
        config["serialization"]["question"], config["cohort"]["horizon_days"]
    )
    for name in config["grid"]["model"]:
        models.source_kind(config["models"][name]["source"])
except ValueError as error:
    raise WorkflowError(str(error)) from None

CONFIGURATIONS = list(study.iter_configurations(config))
RUN_DIR = "results/runs/model={model}/serialization={serialization}/format={format}/n_train={n_train}/seed={seed}"
# The histories the teacher, the baselines, Table 1 and the tiny model's tokenizer read: one
# view, whatever variants the grid's students read.
REFERENCE_HISTORIES = (
    f"results/histories/{config['serialization']['reference_variant']}.parquet"
)
# What the teacher is shown (teacher.view student_prompt): the student's prompts of the
# reference variant under the view model's budget; none under full_history.
try:
    TEACHER_PROMPTS = (
        "results/prompts/{model}/{serialization}.parquet".format(
            model=study.teacher_view_model(config),
            serialization=config["serialization"]["reference_variant"],
        )
        if config["teacher"]["view"] == "student_prompt"
        else []
    )
except ValueError as error:
    raise WorkflowError(str(error)) from None


wildcard_constraints:
    model="[A-Za-z0-9_.-]+",
    format="[a-z_]+",
    n_train=r"\d+",
    seed=r"\d+",
    style="[a-z_]+",
    teacher="[A-Za-z0-9_.-]+",
    kind="[a-z_]+",
    serialization="[a-z_]+",


BASELINE_DIR = "results/baselines/{kind}/n_train={n_train}/seed={seed}"
BASELINES = study.baseline_runs(config)
RUN_FILES = ("predictions.parquet", "metrics.json", "run.json")
REPORT_TABLES = [
    "metrics",
    "paired",
    "summary",
    "baselines",
    "error_flips",
    "truncation",
]
REPORT_FIGURES = [
    "paired_configurations",
    "delta_by_factor",
    "learning_curves",
    "token_dilution",
    "error_analysis",
    "roc_and_calibration",
    "cohort_overview",
    "rationale_qc",
]


def get_final_outputs():
    return [
        "results/report/README.md",
        "results/report/run_card.md",
        "results/report/figures/auroc_by_format.png",
    ]


def get_run_outputs(name, trained_only=False):
    """One file (by name) of every configuration's run folder (of fine-tuned ones only)."""
    return [
        f"results/runs/{c.config_id}/{name}"
        for c in CONFIGURATIONS
        if study.is_trained(c.format) or not trained_only
    ]


def get_trained_model(wildcards):
    """What a configuration is evaluated with besides its prompts: the adapter and run card of
    a fine-tuned one (and the rationales it trained on), the histories (and teacher rationales)
    of few-shot demonstrations.
    """
    if study.is_trained(wildcards.format):
        folder = RUN_DIR.format(**wildcards)
        inputs = {"adapter": f"{folder}/adapter", "run": f"{folder}/run.json"}
        # The teacher's rationales, to count word-for-word copies among the model's own.
        rationales = get_rationales(wildcards)
        if rationales:
            inputs["rationales"] = rationales
        return inputs
    if not study.is_few_shot(wildcards.format):
        return {}
    inputs = {"histories": f"results/histories/{wildcards.serialization}.parquet"}
    rationales = get_rationales(wildcards)
    if rationales:
        inputs["rationales"] = rationales
    return inputs


def get_baseline_folder(baseline):
    return BASELINE_DIR.format(
        kind=baseline["format"], n_train=baseline["n_train"], seed=baseline["seed"]
    )


def get_baseline_outputs(name):
    return [f"{get_baseline_folder(b)}/{name}" for b in BASELINES]


def get_report_entries():
    """(configuration, predictions, metrics, run) of every LM configuration and baseline."""
    lm = [
        (
            c.as_dict(),
            *(f"results/runs/{c.config_id}/{name}" for name in RUN_FILES[:2]),
            (
                f"results/runs/{c.config_id}/run.json"
                if study.is_trained(c.format)
                else None
            ),
        )
        for c in CONFIGURATIONS
    ]
    base = [
        (b, *(f"{get_baseline_folder(b)}/{name}" for name in RUN_FILES[:2]), None)
        for b in BASELINES
    ]
    return lm + base


def get_rationale_files(suffix=".parquet"):
    """The teacher outputs the grid's formats use (suffix ".qc.parquet": their QC tables)."""
    styles = {study.rationale_style(f) for f in config["grid"]["format"]} - {None}
    teacher = config["teacher"]["name"]
    return [f"results/rationales/{teacher}/{style}{suffix}" for style in sorted(styles)]


def get_review_files():
    """The human-review summary, once reviewers' filled sheets are in review.filled_dir."""
    filled = Path(config["teacher"]["review"]["filled_dir"])
    if any(filled.glob("*.csv")):
        return ["results/review/scores.csv", "results/review/agreement.csv"]
    return []


def get_prompt_files():
    """Every model's prompts in every serialization of the grid (for the truncation table)."""
    return expand(
        "results/prompts/{model}/{serialization}.parquet",
        model=config["grid"]["model"],
        serialization=config["grid"]["serialization"],
    )


ELIGIBLE_SUBJECTS = (
    f"results/rationales/{config['teacher']['name']}/eligible_subjects.parquet"
)


def get_eligible_subjects():
    """The training pool file when the teacher can drop subjects and the grid uses rationales
    (every fine-tune and baseline then waits for it), else nothing."""
    if study.drops_subjects(config["teacher"]) and get_rationale_files():
        return ELIGIBLE_SUBJECTS
    return []


def model_source_input():
    """The model input of a model's jobs: a plain pattern when every grid model has the same kind
    of source (a function costs time for each of a grid's jobs), else :func:`get_model_source`.
    """
    kinds = {
        models.source_kind(config["models"][m]["source"])
        for m in config["grid"]["model"]
    }
    if kinds <= {"built", "gguf"}:
        return "results/models/{model}"
    if kinds == {"hub"}:
        return ancient(HUB_MANIFEST)
    return get_model_source


# A hub model's jobs wait for its fetch, but a new fetch of the same revision (into a moved
# hub.cache_dir) changes no result: the manifest is read as ancient, so it reruns nothing.
HUB_MANIFEST = "results/hub/{model}.json"


def get_model_source(wildcards):
    """What a model's jobs wait for: its built or converted folder, its local folder, or its
    fetch."""
    source = config["models"][wildcards.model]["source"]
    kind = models.source_kind(source)
    if kind in ("built", "gguf"):
        return f"results/models/{wildcards.model}"
    if kind == "local":
        return source
    return ancient(HUB_MANIFEST.format(model=wildcards.model))


def get_model_settings(wildcards):
    return model_settings_of(wildcards.model)


@functools.cache
def model_settings_of(model):
    """A model's settings for its jobs' params (computed once per model, not per job)."""
    return study.model_settings(config, model)


def get_models_pattern(kind):
    """A wildcard constraint matching the grid's models of one source kind: build_tiny_model
    and convert_gguf write the same folder pattern, each for its own models."""
    names = [
        name
        for name in config["grid"]["model"]
        if models.source_kind(config["models"][name]["source"]) == kind
    ]
    return "|".join(re.escape(name) for name in names) or "(?!)"


def get_gguf_file(wildcards):
    """The GGUF file a model is converted from (a path, or found inside its Python package)."""
    try:
        return str(models.gguf_file(config["models"][wildcards.model]["source"]))
    except models.ModelSourceError as error:
        raise WorkflowError(str(error)) from None


def get_job_resource(name, scale_with_attempt=False):
    """A resource of a model's fine-tuning/evaluation jobs, from the model registry."""

    def resource(wildcards, attempt):
        value = config["models"][wildcards.model]["resources"][name]
        return value * attempt if scale_with_attempt else value

    return resource


def get_gpu_resources():
    """GPU resources of fine-tuning/evaluation jobs, in the request style the profile chose.

    Only the resources the chosen style uses are declared: each one is a function evaluated for
    every job, and a 504-configuration dry run should stay fast.
    """
    execution = config["execution"]

    def count(wildcards):
        return config["models"][wildcards.model]["resources"]["gpu"]

    def gres(wildcards):
        n = count(wildcards)
        model = execution["gpu_model"]
        return (f"gpu:{model}:{n}" if model else f"gpu:{n}") if n else ""

    if execution["gpu_request"] == "gres":
        chosen = {"gres": gres}
    elif execution["gpu_model"]:
        chosen = {"gpu": count, "gpu_model": execution["gpu_model"]}
    else:
        chosen = {"gpu": count}
    if execution["gpu_partition"]:
        chosen["slurm_partition"] = execution["gpu_partition"]
    return chosen


def get_job_threads(wildcards):
    return config["models"][wildcards.model]["resources"]["cpus_per_task"]


def get_build_settings(wildcards):
    return study.build_settings(config, wildcards.model)


def get_settings(*keys, operational=()):
    return study.section_settings(config, *keys, operational=operational)


def get_bootstrap_settings():
    return study.bootstrap_settings(config)


def get_serialization_settings():
    return study.serialization_settings(config)


@functools.cache
def training_settings_of(model):
    return study.training_settings(config, model)


def get_result_settings(wildcards):
    return result_settings_of(wildcards.model)


@functools.cache
def result_settings_of(model):
    """The training settings that shape a model's weights (computed once per model)."""
    from rationale_bench.train.launch import result_settings

    return result_settings(training_settings_of(model))


def get_rationales(wildcards):
    """The teacher output a format trains on, or nothing for label-only formats."""
    style = study.rationale_style(wildcards.format)
    if style is None:
        return []
    return f"results/rationales/{config['teacher']['name']}/{style}.parquet"


# Plain patterns, not functions: functions cost time for every one of a grid's jobs.
PROMPTS = "results/prompts/{model}/{serialization}.parquet"
MODEL_SOURCE = model_source_input()
