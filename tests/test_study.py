"""The grid: configuration ids, per-job config slices, cross-key checks, renamed keys."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from rationale_bench import config_check, study

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "schemas" / "config.schema.yaml"


def validated(config: dict) -> dict:
    """``config`` with its renamed keys moved and the schema's defaults filled in."""
    config = copy.deepcopy(config)
    config_check.apply_renames(config)
    validate(config, str(SCHEMA))
    return config


def test_configuration_ids_are_readable_paths(default_config):
    configs = list(study.iter_configurations(default_config))
    assert len(configs) == 12
    assert (
        configs[0].config_id
        == "model=tiny/serialization=timeline_recent/format=label_only/n_train=300/seed=1"
    )
    assert len({c.config_id for c in configs}) == 12


def test_model_training_overrides_merge_over_defaults():
    config = {
        "training": {"learning_rate": 1e-4, "lora": {"r": 16, "alpha": 32}, "epochs": 2},
        "models": {
            "a": {"source": "x", "training": {"learning_rate": 1e-3, "lora": {"r": 4}}},
            "b": {"source": "y"},
        },
    }
    a = study.training_settings(config, "a")
    assert a == {"learning_rate": 1e-3, "lora": {"r": 4, "alpha": 32}, "epochs": 2}
    assert study.training_settings(config, "b") == config["training"]
    assert config["training"]["lora"] == {"r": 16, "alpha": 32}  # not mutated
    assert "training" not in study.model_settings(config, "a")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["grid"].update(model=["nope"]), "models has no entry 'nope'"),
        (
            lambda c: (
                c["grid"].update(format=["free_form"])
                or c["teacher"].update(styles=["step_by_step"])
            ),
            "teacher.styles does not include 'free_form'",
        ),
        (lambda c: c["grid"].update(format=["cot"]), "unknown format 'cot'"),
    ],
)
def test_check_grid_names_the_problem(default_config, edit, message):
    config = copy.deepcopy(default_config)
    config.setdefault("teacher", {}).setdefault("styles", ["free_form", "step_by_step"])
    edit(config)
    with pytest.raises(config_check.ConfigError, match=message):
        config_check.check_grid(config)
    config = validated(default_config)  # the one parse-time check runs it
    edit(config)
    with pytest.raises(config_check.ConfigError, match=message):
        config_check.check_config(config, "no-cohort-here.parquet")


def test_check_config_runs_the_teacher_and_budget_checks(default_config):
    config = validated(default_config)
    config_check.check_config(config, "no-cohort-here.parquet")
    config["teacher"]["mode"] = "label_blind"  # the template teacher cannot predict
    with pytest.raises(ValueError, match="teacher.mode 'label_blind' needs a teacher"):
        config_check.check_config(config, "no-cohort-here.parquet")
    config = validated(default_config)
    config["models"]["tiny"]["max_prompt_tokens"] = 640
    with pytest.raises(config_check.ConfigError, match=r"models.tiny.max_prompt_tokens \(640\)"):
        config_check.check_config(config, "no-cohort-here.parquet")


def test_job_slices(default_config):
    config = validated(default_config)
    serialization = config["serialization"]
    assert study.serialization_settings(config) == {
        "lookback_days": serialization["lookback_days"],
        "time_encoding": serialization["time_encoding"],
    }
    build = study.build_settings(config, "tiny")
    assert build["max_seq_len"] == 640 and build["answer_words"] == serialization["answer_words"]
    assert list(build) == sorted(build)
    # Where the hub cache lies is read by the scripts: moving it reruns no model's jobs.
    config["hub"]["cache_dir"] = "/elsewhere"
    assert "cache_dir" not in json.dumps(study.model_settings(config, "tiny"))
    assert study.bootstrap_settings(config) == {
        "bootstrap_resamples": config["evaluation"]["bootstrap_resamples"],
        "bootstrap_seed": config["evaluation"]["bootstrap_seed"],
    }
    runs = study.baseline_runs(config)
    assert len(runs) == len(config["baselines"]["kinds"]) * 2 * 2
    assert runs[0] == {
        "model": None,
        "serialization": None,
        "format": config["baselines"]["kinds"][0],
        "n_train": 300,
        "seed": 1,
    }
    assert study.section_settings(config, "evaluation", operational=("batch_size",)).keys() == (
        set(config["evaluation"]) - {"batch_size"}
    )


# --------------------------------------------------------------------------- renamed keys

# Each rename: an old-style config fragment, and where its value must land.
OLD_KEYS = [
    ({"teacher": {"openai": {"max_attempts": 9}}}, ("teacher", "openai", "http_attempts"), 9),
    ({"teacher": {"qc": {"max_attempts": 4}}}, ("teacher", "qc", "regenerations"), 3),
    ({"teacher": {"openai": {"seed": 5}}}, ("teacher", "seed"), 5),
    ({"cohort": {"index_event_prefixes": ["V/"]}}, ("cohort", "index", "event_prefixes"), ["V/"]),
    (
        {"cohort": {"outcome_code_prefixes": ["ICD10/F0"]}},
        ("cohort", "outcome", "code_prefixes"),
        ["ICD10/F0"],
    ),
    (
        {"cohort": {"exclusion_drug_prefixes": ["ATC/N06"]}},
        ("cohort", "exclusion", "drug_prefixes"),
        ["ATC/N06"],
    ),
    ({"cohort": {"outcome": {"drug_regex": "^X"}}}, ("cohort", "exclusion", "drug_regex"), "^X"),
    (
        {"cohort": {"outcome": {"drug_concept_ids": [7]}}},
        ("cohort", "exclusion", "drug_concept_ids"),
        [7],
    ),
]


def _get(config, path):
    for key in path:
        config = config[key]
    return config


def test_every_rename_is_tested():
    tested = {".".join(path) for _, path, _ in OLD_KEYS}
    assert tested == {rename.new for rename in config_check.RENAMES}


@pytest.mark.parametrize("fragment, new_path, value", OLD_KEYS)
def test_an_old_key_is_moved_with_a_message_naming_the_new_key(
    default_config, fragment, new_path, value
):
    config = study.deep_merge(default_config, fragment)
    messages = config_check.apply_renames(config)
    new = ".".join(new_path)
    assert len(messages) == 1 and "is deprecated" in messages[0] and f"use {new}" in messages[0]
    assert _get(config, new_path) == value
    validate(config, str(SCHEMA))  # the schema refuses the old key: it is gone
    assert _get(config, new_path) == value


@pytest.mark.parametrize("fragment, new_path, value", OLD_KEYS)
def test_old_and_new_key_together_are_an_error_naming_both(
    default_config, fragment, new_path, value
):
    config = study.deep_merge(default_config, fragment)
    new_fragment: dict = {}
    node = new_fragment
    for key in new_path[:-1]:
        node = node.setdefault(key, {})
    node[new_path[-1]] = value
    config = study.deep_merge(config, new_fragment)
    old = next(r.old for r in config_check.RENAMES if r.new == ".".join(new_path))
    with pytest.raises(config_check.ConfigError, match=rf"both {old} .* and {'.'.join(new_path)}"):
        config_check.apply_renames(config)


def test_the_new_teacher_keys_are_read(default_config):
    config = validated(default_config)
    template = study.rationale_settings(config, "free_form")
    assert template["seed"] == 0 and template["qc"]["max_attempts"] == 3  # the defaults as before
    config["teacher"]["seed"] = 7
    config["teacher"]["qc"]["regenerations"] = 4
    template = study.rationale_settings(config, "free_form")
    assert template["seed"] == 7 and template["qc"]["max_attempts"] == 5
    assert "regenerations" not in template["qc"]
    config["teacher"]["backend"] = "openai"
    config["teacher"]["openai"]["http_attempts"] = 2
    api = study.rationale_settings(config, "free_form")["openai"]
    assert api["seed"] == 7 and "http_attempts" not in api  # sent; operational: no param
    assert study.teacher_operational_settings(config)["max_attempts"] == 2
    config["teacher"]["seed"] = None  # no seed sent; the template teacher draws with 0
    assert study.rationale_settings(config, "free_form")["openai"]["seed"] is None
    config["teacher"]["backend"] = "template"
    assert study.rationale_settings(config, "free_form")["seed"] == 0


def test_the_new_cohort_keys_are_read(default_config):
    import polars as pl

    from rationale_bench.cohort.build import drug_expr, outcome_prefixes, resolve_definition

    cohort = {
        "outcome": {"code_prefixes": ["ICD10/F0"]},
        "exclusion": {"drug_prefixes": ["ATC/X"], "drug_regex": "^Y$"},
    }
    defn = resolve_definition(validated({**default_config, "cohort": cohort})["cohort"])
    assert outcome_prefixes(defn) == ("ICD10/F0",)
    codes = pl.DataFrame({"code": ["ATC/X1", "Y", "ATC/N06DA02"]})
    assert codes.select(drug_expr(defn))["code"].to_list() == [True, True, False]


def test_shipped_configs_use_no_renamed_key():
    repo = SCHEMA.parents[1]
    files = [repo / "config.yaml", *(repo / "configs").glob("*.yaml")]
    files += (repo / "tests" / "configs").glob("*.yaml")
    for path in files:
        assert config_check.apply_renames(yaml.safe_load(path.read_text()) or {}) == [], path


@pytest.mark.parametrize(
    "study", ["config.yaml", *sorted(p.name for p in (REPO / "configs").glob("*.yaml"))]
)
def test_validate_config_fills_what_snakemake_validate_fills(study):
    """The Snakefile's own validation equals snakemake.utils.validate: same defaults, same
    config; and it refuses what Snakemake refuses, with one short line."""
    path = REPO / study if study == "config.yaml" else REPO / "configs" / study
    ours, theirs = (yaml.safe_load(path.read_text()) for _ in range(2))
    config_check.apply_renames(ours)
    config_check.apply_renames(theirs)
    config_check.validate_config(ours, SCHEMA)
    validate(theirs, str(SCHEMA))
    assert ours == theirs
    bad = {**yaml.safe_load(path.read_text()), "grid": {"model": "tiny"}}
    with pytest.raises(config_check.ConfigError, match=r"^config: grid") as error:
        config_check.validate_config(bad, SCHEMA)
    assert "\n" not in str(error.value)


def test_a_rename_within_one_mapping_keeps_the_key_in_place():
    """The new key takes the old one's place, so the mapping (and any params holding it) keeps
    the order the old config gave: renaming reruns nothing."""
    config = {"teacher": {"qc": {"on_failure": "drop", "max_attempts": 4, "min_words": 5}}}
    config_check.apply_renames(config)
    assert list(config["teacher"]["qc"].items()) == [
        ("on_failure", "drop"),
        ("regenerations", 3),
        ("min_words", 5),
    ]
