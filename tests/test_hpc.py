"""Cluster-facing configuration, checked without a cluster: the paper grid, cost plans, model
sources, GPU request styles, the installed profile, and conda envs pinned like the project."""

from __future__ import annotations

import re
import shutil
import tomllib

import pytest
import yaml
from workflow_helpers import REPO, dry_run, planned_outputs, snakemake

from rationale_bench import cli, models


@pytest.fixture
def paper_config(tmp_path):
    (tmp_path / "meds").mkdir()
    text = (REPO / "configs" / "paper.yaml").read_text()
    path = tmp_path / "paper.yaml"
    path.write_text(text.replace("/path/to/your/meds_dataset", str(tmp_path / "meds")))
    return path


def test_paper_grid_has_504_configurations_and_fetches_each_model_once(tmp_path, paper_config):
    counts = dry_run(tmp_path, configfile=paper_config)
    assert counts == {
        "fetch_model": 7,
        "ingest_meds": 1,
        "build_cohort": 1,
        "build_histories": 1,
        "table_one": 1,
        "build_prompts": 7,
        "generate_rationales": 2,
        "rationale_qc": 2,
        "baseline": 24,
        "finetune": 504,
        "evaluate": 504,
        "report": 1,
        "all": 1,
    }


def test_paper_grid_jobs_request_gpus_in_the_profile_style(tmp_path, paper_config):
    gpus = snakemake(tmp_path, "-n", configfile=paper_config).stdout
    gres = snakemake(
        tmp_path,
        "-n",
        "--config",
        "execution={'gpu_request': 'gres', 'gpu_model': 'a100'}",
        configfile=paper_config,
    ).stdout
    assert re.search(r"resources: .*gpu=1, runtime=", gpus) and "gres=" not in gpus
    assert re.search(r"resources: .*gres=gpu:a100:1, runtime=", gres) and "gpu=1" not in gres
    # Attempt-scaled memory and runtime come from the model registry.
    assert re.search(r"gpu=1, runtime=1440, mem_mb=96000", gpus)


def test_plan_prints_jobs_and_costs(tmp_path, paper_config, capsys):
    assert cli.main(["plan", "--configfile", str(paper_config), "--directory", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "504 configurations" in out
    assert re.search(r"finetune\s+504", out) and re.search(r"total\s+1056", out)
    config = cli.load_config(paper_config)
    cost = cli.estimate(config)
    assert f"{cost['gpu_hours_total']:,.1f}" in out
    # Rationale formats cost more GPU time than label-only: the estimate must see that.
    config["grid"]["format"] = ["label_only"]
    assert cli.estimate(config)["gpu_hours"]["finetune"] < cost["gpu_hours"]["finetune"] / 2


def test_model_sources_are_classified_and_hub_models_load_offline(tmp_path):
    assert models.source_kind("build_tiny") == "built"
    assert models.source_kind(str(tmp_path)) == "local"
    assert models.source_kind("Qwen/Qwen2.5-0.5B-Instruct") == "hub"
    with pytest.raises(models.ModelSourceError, match="neither"):
        models.source_kind("not a model")
    with pytest.raises(models.ModelSourceError, match="not in the model cache.*fetch_model"):
        models.resolve("Qwen/Qwen2.5-0.5B-Instruct", None, str(tmp_path / "empty_cache"))


def test_missing_models_show_in_a_dry_run(tmp_path):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["models"]["hub_model"] = {"source": "Org/Some-Model", "resources": {"gpu": 1}}
    config["grid"]["model"] = ["tiny", "hub_model"]
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "-n", configfile=path)
    assert "results/hub/hub_model.json" in planned_outputs(result.stdout)


def test_install_profile_fills_account_partition_and_gpu_style(tmp_path):
    target = tmp_path / "slurm"
    args = [
        "install-profile",
        "--account",
        "lab42",
        "--partition",
        "cpu",
        "--gpu-partition",
        "gpu",
        "--gpu-request",
        "gres",
        "--target",
        str(target),
    ]
    assert cli.main(args) == 0
    profile = yaml.safe_load((target / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert profile["default-resources"]["slurm_account"] == "lab42"
    assert profile["default-resources"]["slurm_partition"] == "cpu"
    assert profile["config"] == ["execution={'gpu_request': 'gres', 'gpu_partition': 'gpu'}"]
    # and the jobs really get it (a set-resources here would be overridden by profiles/default)
    shutil.copy(REPO / "config.yaml", tmp_path / "config.yaml")
    text = snakemake(tmp_path, "-n", "--profile", str(target)).stdout
    finetune = text[text.index("rule finetune:") :].split("\n\n")[0]
    assert "slurm_partition=gpu" in finetune


def pinned(requirement: str) -> tuple[str, str]:
    name, version = requirement.split("==")
    return name.strip().lower(), version.strip()


def test_conda_envs_pin_the_project_versions():
    project = dict(
        pinned(r)
        for r in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    )
    seen = set()
    for env_file in sorted((REPO / "envs").glob("*.yaml")):
        env = yaml.safe_load(env_file.read_text())
        pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
        for requirement in pip:
            name, version = pinned(requirement)
            seen.add(name)
            if name in project:
                assert project[name] == version, (
                    f"{env_file.name}: {name}=={version}, project {project[name]}"
                )
    assert {"torch", "transformers", "peft", "polars", "openai", "matplotlib"} <= seen
