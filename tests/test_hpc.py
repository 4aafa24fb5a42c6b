"""Cluster-facing configuration, checked without a cluster: the paper grid, cost plans, model
sources, GPU request styles, the installed profile, and conda envs pinned like the project."""

from __future__ import annotations

import re
import shutil
import tomllib

import pytest
import yaml
from workflow_helpers import REPO, dry_run, planned_outputs, snakemake

from rationale_bench import cli
from rationale_bench.train import models


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
        "teacher_shard": 2,  # an OpenAI-compatible teacher, one shard per style
        "teacher_shards_done": 2,
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
    assert re.search(r"gpu=1, runtime=1440, attempt=1, mem_mb=96000", gpus)


def test_plan_prints_jobs_and_costs(tmp_path, paper_config, capsys):
    assert cli.main(["plan", "--configfile", str(paper_config), "--directory", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "504 configurations" in out
    assert re.search(r"finetune\s+504", out) and re.search(r"total\s+1060", out)
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


# ---- cluster faults without a cluster: the writer lock, the profile's status command, logs ----

FAKE_SQUEUE = """#!/bin/sh
# squeue -h --states=all -j ID -o %T, answering from FAKE_SLURM_STATES="id:STATE id:STATE"
for pair in $FAKE_SLURM_STATES; do
  if [ "${pair%%:*}" = "$4" ]; then echo "${pair#*:}"; exit 0; fi
done
echo "slurm_load_jobs error: Invalid job id specified" >&2
exit 1
"""


@pytest.fixture
def fake_squeue(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "squeue").write_text(FAKE_SQUEUE)
    (bin_dir / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.chdir(tmp_path)

    def states(**jobs):
        monkeypatch.setenv("FAKE_SLURM_STATES", " ".join(f"{k[1:]}:{v}" for k, v in jobs.items()))

    return states


WILDCARDS = type(
    "W", (), dict(model="tiny", serialization="s", format="label_only", n_train=64, seed=1)
)


def write_lock(holder):
    from rationale_bench.train import joblock

    path = joblock.lock_path(WILDCARDS)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(__import__("json").dumps(holder))
    return path


def test_a_live_slurm_job_keeps_its_lock(fake_squeue, caplog):
    from rationale_bench.train import joblock

    fake_squeue(j41="RUNNING")
    path = write_lock({"slurm_job_id": "41", "host": "n1", "pid": 7, "rule": "finetune"})
    with pytest.raises(joblock.WriterAlive, match=r"SLURM job 41 is RUNNING.*scancel 41"):
        joblock.hold_until_exit(WILDCARDS, "evaluate", __import__("logging").getLogger())
    assert '"41"' in path.read_text()  # untouched
    # The controller sees it too, before submitting anything.
    (refusal,) = joblock.live_writers()
    assert "scancel 41" in refusal and "seed=1.json" in refusal


@pytest.mark.parametrize("state", ["COMPLETED", "CANCELLED", "TIMEOUT", None])
def test_a_stale_lock_is_taken_over_and_logged(fake_squeue, caplog, monkeypatch, state):
    from rationale_bench.train import joblock

    fake_squeue(**({"j41": state} if state else {}))  # None: SLURM has forgotten the job
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    path = write_lock({"slurm_job_id": "41", "host": "n1", "pid": 7, "rule": "finetune"})
    with caplog.at_level("WARNING"):
        joblock.acquire(path, "finetune", __import__("logging").getLogger("t"))
    assert "stale lock" in caplog.text and "SLURM job 41" in caplog.text
    assert __import__("json").loads(path.read_text())["slurm_job_id"] == "42"
    assert joblock.live_writers() == []  # our own lock
    joblock.release(path)
    assert not path.exists()


def test_a_requeued_job_takes_back_its_own_lock(fake_squeue, caplog, monkeypatch):
    from rationale_bench.train import joblock

    fake_squeue(j41="RUNNING")
    monkeypatch.setenv("SLURM_JOB_ID", "41")
    path = write_lock({"slurm_job_id": "41", "host": "n1", "pid": 7, "rule": "finetune"})
    joblock.acquire(path, "finetune", __import__("logging").getLogger("t"))
    assert "stale" not in caplog.text


def test_a_live_local_process_keeps_its_lock(fake_squeue):
    import os
    import socket

    from rationale_bench.train import joblock

    here = socket.gethostname()
    path = write_lock({"slurm_job_id": None, "host": here, "pid": os.getppid(), "rule": "x"})
    with pytest.raises(joblock.WriterAlive, match=f"process {os.getppid()} on this host"):
        joblock.acquire(path, "finetune", __import__("logging").getLogger("t"))
    dead = write_lock({"slurm_job_id": None, "host": here, "pid": 2**22 + 12345, "rule": "x"})
    joblock.acquire(dead, "finetune", __import__("logging").getLogger("t"))


def test_install_profile_honours_xdg_config_home(tmp_path, monkeypatch):
    from rationale_bench import slurm_profile

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(slurm_profile, "slurm_config", lambda: None)
    assert cli.main(["install-profile", "--account", "a", "--partition", "p"]) == 0
    profile = yaml.safe_load((tmp_path / "xdg" / "snakemake" / "slurm" / "config.yaml").read_text())
    assert profile["default-resources"]["slurm_account"] == "a"
    # Unchecked (no cluster here): squeue, the only mode in which scancel fails a job.
    assert profile["slurm-status-command"] == "squeue"


@pytest.mark.parametrize(
    ("min_job_age", "command"), [("600 sec", "squeue"), ("300", "squeue"), ("120 sec", "sacct")]
)
def test_install_profile_picks_the_status_command_by_min_job_age(
    tmp_path, monkeypatch, capsys, min_job_age, command
):
    from rationale_bench import slurm_profile

    config = {"MinJobAge": min_job_age, "SelectType": "select/cons_tres", "GresTypes": "gpu"}
    monkeypatch.setattr(slurm_profile, "slurm_config", lambda: config)
    answers = {"sacctmgr": "a\n", "sinfo": "p*\ngpu\n"}
    monkeypatch.setattr(
        slurm_profile,
        "_run",
        lambda *cmd: __import__("subprocess").CompletedProcess(cmd, 0, answers.get(cmd[0], ""), ""),
    )
    target = tmp_path / "slurm"
    rc = cli.main(
        ["install-profile", "--account", "a", "--partition", "p", "--target", str(target)]
    )
    profile = yaml.safe_load((target / "config.yaml").read_text())
    assert profile["slurm-status-command"] == command
    out = capsys.readouterr().out
    assert "[ok] account 'a'" in out and "[ok] partition 'p'" in out
    assert ("scancel" in out) and (rc == 0)
    # --check finds a profile that does not fit the cluster
    profile["default-resources"]["slurm_partition"] = "nope"
    profile["slurm-status-command"] = "sacct" if command == "squeue" else "squeue"
    (target / "config.yaml").write_text(yaml.safe_dump(profile))
    assert cli.main(["install-profile", "--check", "--target", str(target)]) == 1
    out = capsys.readouterr().out
    assert "[PROBLEM] partition 'nope'" in out and "[PROBLEM] slurm-status-command" in out


def test_each_attempt_keeps_its_own_log(tmp_path, monkeypatch):
    from rationale_bench.workflow import open_attempt_log

    monkeypatch.setenv("SLURM_JOB_ID", "77")
    rule_log = tmp_path / "logs" / "seed=1.log"
    rule_log.parent.mkdir()
    first = open_attempt_log(rule_log, 1, "finetune")
    first.write("Traceback: the first attempt failed\n")
    first.close()
    rule_log.unlink()  # what Snakemake does before the next attempt
    monkeypatch.setenv("SLURM_JOB_ID", "78")
    second = open_attempt_log(rule_log, 2, "finetune")
    second.write("resumed\n")
    second.close()
    assert rule_log.read_text().startswith("# rule finetune, attempt 2 (SLURM job 78")
    kept = sorted((tmp_path / "logs" / "seed=1.log.attempts").glob("*.log"))
    assert [p.name.split("-", 1)[1] for p in kept] == [
        "attempt1-slurm77.log",
        "attempt2-slurm78.log",
    ]
    assert "the first attempt failed" in kept[0].read_text()
