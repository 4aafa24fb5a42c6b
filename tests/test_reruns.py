"""The rerun matrix: for every leaf key of the schema, what a config edit reruns.

The study of tests/configs/reruns.yaml is run once (a module fixture); then each row of
tests/rerun_matrix.py applies its representative edit and a dry run must schedule exactly the
row's jobs per rule. Keys are grouped: each row lists the leaf keys that share the
representative's effect (190 leaves, 32 rows), and only the representative is dry-run (one dry
run per row, two at a time): the other keys of a row are NOT dry-run, they are grouped by
reading which params slice holds them. Every schema leaf must belong to a row. The same table
generates docs/reruns.md, and the test fails while that file is stale.

Cost, measured on 2 cores shared with other jobs (load about 8): the 32 dry runs took 5.4 min
of wall time but 48 s of CPU, so about a minute on two free cores; the fixture's study run
comes on top (the whole file took 8.4 min under that load), which is why the dry-run test is
marked slow.
"""

from __future__ import annotations

import concurrent.futures
import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import TINY_BUILD
from rerun_matrix import DOC, ROWS, STUDY, apply_edit, leaf_keys, render, row_of
from workflow_helpers import run_study, snakemake

from rationale_bench.cli import job_counts


def test_every_schema_leaf_key_has_a_row() -> None:
    missing = [key for key in leaf_keys() if row_of(key) is None]
    assert not missing, f"add these keys to a row of tests/rerun_matrix.py: {missing}"


def test_the_doc_is_generated_from_the_table() -> None:
    assert DOC.read_text() == render(), "docs/reruns.md is stale: run python tests/rerun_matrix.py"


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reruns")
    config = run_study(workdir, STUDY)
    assert "Nothing to be done" in _dry_run(workdir, config.read_text(), "base")
    return workdir


def _dry_run(workdir, text: str, name: str) -> str:
    path = workdir / f"{name}.yaml"
    path.write_text(text)
    result = snakemake(workdir, "-n", "--nolock", configfile=path)
    return result.stdout + result.stderr


@pytest.mark.slow
def test_each_edit_reruns_exactly_its_row(finished_study) -> None:
    workdir = finished_study
    base = yaml.safe_load(STUDY.read_text())

    def planned(index: int) -> dict[str, int]:
        study = apply_edit(yaml.safe_load(yaml.safe_dump(base)), ROWS[index].edit)
        return dict(job_counts(_dry_run(workdir, yaml.safe_dump(study), f"edit{index}")))

    # Dry runs read the finished study and write nothing: two at a time are safe.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        actual = list(pool.map(planned, range(len(ROWS))))
    wrong = {
        ", ".join(row.edit): {"expected": row.reruns, "dry run": got}
        for row, got in zip(ROWS, actual, strict=True)
        if got != row.reruns
    }
    assert not wrong, yaml.safe_dump(wrong, sort_keys=False)


def _hub_cache_with_model(cache: Path, repo_id: str, model_dir: Path) -> None:
    """A Hugging Face cache holding ``model_dir`` as ``repo_id``'s main revision, laid out as
    the hub client writes it (refs/main naming a snapshot folder)."""
    revision = "0" * 40
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(model_dir, repo / "snapshots" / revision)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)


@pytest.mark.slow
def test_moving_the_hub_cache_refetches_and_reruns_nothing_after(
    tmp_path, monkeypatch, tiny_model_dir
) -> None:
    """A hub model's study, run offline from a prepared cache; then hub.cache_dir moves to a
    copy: only fetch_model runs again (into the new cache), no prompt, fine-tune, evaluation or
    report."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the hub client answers from the cache alone
    _hub_cache_with_model(tmp_path / "cache_a", "org/tiny", tiny_model_dir)
    shutil.copytree(tmp_path / "cache_a", tmp_path / "cache_b")
    study = yaml.safe_load(STUDY.read_text())
    study["models"] = {
        "hubtiny": {
            "source": "org/tiny",
            "max_seq_len": TINY_BUILD["max_seq_len"],
            "max_prompt_tokens": 256,
            "training": {"method": "full", "learning_rate": 0.001},
        }
    }
    study["grid"].update(model=["hubtiny"], format=["label_only"])
    study["hub"] = {"cache_dir": str(tmp_path / "cache_a")}
    workdir = tmp_path / "work"
    workdir.mkdir()
    config = workdir / "study.yaml"
    config.write_text(yaml.safe_dump(study))
    snakemake(workdir, "--cores", "2", configfile=config)
    study["hub"]["cache_dir"] = str(tmp_path / "cache_b")
    config.write_text(yaml.safe_dump(study))
    assert dict(job_counts(_dry_run(workdir, config.read_text(), "moved"))) == {"fetch_model": 1}
    manifest = json.loads((workdir / "results/hub/hubtiny.json").read_text())
    assert manifest["cache_dir"] == str(tmp_path / "cache_a")  # not yet fetched again
