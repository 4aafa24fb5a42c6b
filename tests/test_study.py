"""The grid: configuration ids, per-job config slices, cross-key checks."""

from __future__ import annotations

import copy

import pytest

from rationale_bench import study


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
    with pytest.raises(ValueError, match=message):
        study.check_grid(config)
