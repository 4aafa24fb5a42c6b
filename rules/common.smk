# Validation, wildcard constraints and the named helpers every rule file uses.

import os
import sys

from snakemake.utils import validate

# The library lives in src/: importable here, and by the scripts inside conda envs and on
# cluster nodes (they inherit PYTHONPATH), whether or not the package is pip-installed.
LIBRARY = str(Path(workflow.basedir) / "src")
sys.path.insert(0, LIBRARY)
os.environ.update(
    PYTHONPATH=os.pathsep.join(filter(None, [LIBRARY, os.environ.get("PYTHONPATH")]))
)

from rationale_bench import study  # noqa: E402

validate(config, "../schemas/config.schema.yaml")
try:
    study.check_grid(config)
except ValueError as error:
    raise WorkflowError(str(error)) from None

CONFIGURATIONS = list(study.iter_configurations(config))
RUN_DIR = "results/runs/model={model}/format={format}/n_train={n_train}/seed={seed}"


wildcard_constraints:
    model="[A-Za-z0-9_.-]+",
    format="[a-z_]+",
    n_train=r"\d+",
    seed=r"\d+",
    style="[a-z_]+",
    teacher="[A-Za-z0-9_.-]+",
    serialization="[a-z_]+",


def get_final_outputs():
    return [
        "results/report/metrics.csv",
        "results/cohort/table1.csv",
        "results/report/figures/auroc_by_format.png",
    ]


def get_run_outputs(name):
    """One file (by name) of every configuration's run folder."""
    return [f"results/runs/{c.config_id}/{name}" for c in CONFIGURATIONS]


def get_model_source(wildcards):
    """Input files of a model: the built folder for local builds, none for HF ids and paths."""
    if study.is_built_model(config, wildcards.model):
        return f"results/models/{wildcards.model}"
    return []


def get_model_path(model):
    if study.is_built_model(config, model):
        return f"results/models/{model}"
    return config["models"][model]["source"]


def get_model_settings(wildcards):
    return study.model_settings(config, wildcards.model)


def get_build_settings(wildcards):
    settings = dict(config["models"][wildcards.model]["build"])
    settings["max_seq_len"] = config["models"][wildcards.model]["max_seq_len"]
    return study.canonical(settings)


def get_settings(*keys):
    """A config section as a job param, keys sorted so that only a real edit reruns the job."""
    section = config
    for key in keys:
        section = section[key]
    return study.canonical(section)


def get_serialization_settings():
    """How histories are written; the question is added later, by build_prompts."""
    return study.canonical(
        {k: v for k, v in config["serialization"].items() if k != "question"}
    )


def get_training_settings(wildcards):
    return study.training_settings(config, wildcards.model)


def get_rationales(wildcards):
    """The teacher output a format trains on, or nothing for label-only formats."""
    style = study.rationale_style(wildcards.format)
    if style is None:
        return []
    return f"results/rationales/{config['teacher']['name']}/{style}.parquet"


def get_prompts(wildcards):
    return f"results/prompts/{wildcards.model}/{config['serialization']['variant']}.parquet"


def get_teacher_settings(wildcards):
    """Only what changes the rationales of this style (so editing one prompt reruns one style)."""
    teacher = config["teacher"]
    if teacher["backend"] == "template":
        return study.canonical({k: teacher[k] for k in ("name", "backend", "seed")})
    settings = {
        k: v for k, v in teacher.items() if k not in ("prompts", "styles", "seed")
    }
    settings["prompts"] = {
        "system": teacher["prompts"]["system"],
        wildcards.style: teacher["prompts"][wildcards.style],
    }
    settings["question"] = config["serialization"]["question"]
    return study.canonical(settings)
