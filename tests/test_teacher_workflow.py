"""The teacher stage as a workflow: sharded DAG, global resource, and a real sharded run
against the fault-injecting fake server (resharding reuses every cached answer and reruns
nothing after the shards)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from workflow_helpers import REPO, dry_run, snakemake, study_with_teacher

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_openai_server import FakeOpenAIServer, mixed_faults  # noqa: E402

write_config = study_with_teacher


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    shutil.copy(REPO / "config.yaml", tmp_path / "config.yaml")
    return tmp_path


def endpoint_teacher(workdir: Path, shards: int) -> Path:
    """The default study with an OpenAI-compatible teacher on loopback (dry runs send nothing)."""
    openai = {"base_url": "http://127.0.0.1:9/v1", "model": "teacher"}
    return write_config(workdir, name="llm", backend="openai", shards=shards, openai=openai)


def test_shards_are_separate_jobs_under_the_global_teacher_resource(workdir: Path) -> None:
    path = endpoint_teacher(workdir, shards=3)
    result = snakemake(workdir, "-n", configfile=path)
    out = result.stdout + result.stderr
    counts = dry_run(workdir, configfile=path)
    assert counts["teacher_shard"] == 6  # 2 styles x 3 shards
    assert counts["teacher_shards_done"] == counts["generate_rationales"] == 2
    assert counts["rationale_qc"] == 2 and counts["finetune"] == 12  # downstream unchanged
    jobs = out.split("rule teacher_shard:")[1:]
    outputs = sorted(j.split("output: ")[1].split(",")[0].split("\n")[0] for j in jobs)
    assert outputs == sorted(
        f"results/rationales/llm/shards/{style}/{i}-of-3.json"
        for style in ("free_form", "step_by_step")
        for i in range(3)
    )
    # every job that may ask the endpoint holds one unit of the global resource the profile
    # caps (teacher_jobs: 1)
    for rule in ("teacher_shard", "generate_rationales"):
        for job in out.split(f"rule {rule}:")[1:]:
            assert "teacher_jobs=1" in job.split("resources:")[1].splitlines()[0]
    assert "teacher_jobs: 1" in (REPO / "profiles/default/config.yaml").read_text()


def test_the_template_teacher_has_no_shard_jobs(workdir: Path) -> None:
    counts = dry_run(workdir, configfile=write_config(workdir, shards=3))
    assert counts["generate_rationales"] == 2 and "teacher_shard" not in counts


def test_label_blind_template_is_refused_before_any_job(workdir: Path) -> None:
    path = write_config(workdir, mode="label_blind")
    result = snakemake(workdir, "-n", configfile=path, check=False)
    assert result.returncode != 0
    assert "'label_blind' needs a teacher that predicts" in result.stdout + result.stderr


def test_unknown_qc_key_is_a_config_error(workdir: Path) -> None:
    path = write_config(workdir, qc={"max_attempt": 2})
    result = snakemake(workdir, "-n", configfile=path, check=False)
    assert result.returncode != 0 and "max_attempt" in result.stdout + result.stderr


SECRET = "sk-workflow-SECRET-4711"


@pytest.mark.slow
def test_sharded_run_with_faults_then_reshard_sends_nothing(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two shards against a faulty endpoint that wants an API key; QC report with counts and
    cost; then three shards: every answer comes from the two-shard caches, and the rationales
    and everything after them stay as they are. The key appears in no output, cache or log."""
    monkeypatch.setenv("RB_TEACHER_KEY", SECRET)
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["data"]["synthetic"]["n_subjects"] = 400
    config["grid"]["n_train"] = [50]  # within this small cohort's training split
    target = "results/rationales/fake/free_form.qc.json"
    with FakeOpenAIServer(
        faults=mixed_faults(0.2), max_faults_per_content=2, stall_s=1.5, require_api_key=SECRET
    ) as srv:
        config["teacher"].update(
            name="fake",
            backend="openai",
            shards=2,
            qc={"max_attempts": 2},
            price_per_million_tokens={"input": 1.0, "output": 2.0},
            openai={
                "base_url": srv.base_url,
                "request_timeout_s": 1,
                "concurrency": 8,
                "api_key_env": "RB_TEACHER_KEY",
            },
        )
        path = workdir / "fake.yaml"
        path.write_text(yaml.safe_dump(config))
        snakemake(workdir, "-c2", target, configfile=path)
        report = json.loads((workdir / target).read_text())
        sent = srv.requests_received
        # the fake's echo answers are too short: every subject is regenerated once, then kept
        # The fake teacher's short generic reply names no fact of the record either.
        n = report["subjects"]
        assert report["first_attempt_failures"] == {"too_short": n, "ungrounded": n}
        assert report["kept_failing_qc"] == report["subjects"] == report["kept"]
        assert report["usage"]["requests_sent"] == sent  # retries included
        assert report["usage"]["cache_hits"] == 0 and report["usage"]["cost_total"] > 0
        srv.reset_counters()
        before = {p: p.read_bytes() for p in (workdir / "results/rationales/fake").glob("*.*")}
        config["teacher"]["shards"] = 3
        path.write_text(yaml.safe_dump(config))
        # A new shard count runs the new layout's shard jobs and nothing after them.
        assert dry_run(workdir, target, configfile=path) == {
            "teacher_shard": 3,
            "teacher_shards_done": 1,
        }
        snakemake(workdir, "-c2", target, configfile=path)
        assert srv.requests_received == 0
    after = {p: p.read_bytes() for p in (workdir / "results/rationales/fake").glob("*.*")}
    assert after == before  # the rationales, their reports and QC: untouched
    shards = json.loads((workdir / "results/rationales/fake/shards/free_form.json").read_text())
    assert shards["shards"] == 3 and shards["usage"]["requests_sent"] == 0
    assert shards["usage"]["cache_hits"] == 2 * report["subjects"]  # first draw + regeneration
    assert "Nothing to be done" in snakemake(workdir, "-n", target, configfile=path).stdout
    logs = "".join(p.read_text() for p in (workdir / "results/logs").rglob("*.log"))
    assert "HTTP Request" not in logs  # no per-request lines from the HTTP library
    assert "attempt 1" in logs and "req/s" in logs  # progress lines
    for path in workdir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_filled_review_sheets_feed_the_report(workdir: Path) -> None:
    filled = workdir / "review" / "filled"
    filled.mkdir(parents=True)
    (filled / "ann.csv").write_text("item_id\n")
    out = snakemake(workdir, "-n", configfile=write_config(workdir))
    counts = dry_run(workdir, configfile=write_config(workdir))
    assert counts["review_sheet"] == 1 and counts["review_summary"] == 1
    report_job = (out.stdout + out.stderr).split("\nrule report:")[1].split("output:")[0]
    assert "results/review/scores.csv" in report_job
    assert "results/review/agreement.csv" in report_job


def test_view_model_outside_the_grid_is_refused_before_any_job(workdir: Path) -> None:
    path = write_config(workdir, view_model="nope")
    result = snakemake(workdir, "-n", configfile=path, check=False)
    assert result.returncode != 0
    assert "teacher.view_model is 'nope', which is not in grid.model" in (
        result.stdout + result.stderr
    )


def test_the_teacher_reads_the_students_prompt_of_the_view_model(workdir: Path) -> None:
    result = snakemake(workdir, "-n", configfile=write_config(workdir))
    job = (result.stdout + result.stderr).split("rule generate_rationales:")[1].split("\n\n")[0]
    assert "results/prompts/tiny/timeline_recent.parquet" in job
    full = snakemake(workdir, "-n", configfile=write_config(workdir, view="full_history"))
    job = (full.stdout + full.stderr).split("rule generate_rationales:")[1].split("\n\n")[0]
    assert "results/prompts/" not in job


@pytest.mark.slow
def test_a_failed_teacher_job_says_why_in_one_console_line(workdir: Path) -> None:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["data"]["synthetic"]["n_subjects"] = 300
    config["grid"]["n_train"] = [50]  # within this small cohort's training split
    with FakeOpenAIServer(force_status=401) as srv:
        config["teacher"].update(
            name="fake", backend="openai", view="full_history", openai={"base_url": srv.base_url}
        )
        path = workdir / "fake.yaml"
        path.write_text(yaml.safe_dump(config))
        target = "results/rationales/fake/free_form.parquet"
        result = snakemake(workdir, "-c2", target, configfile=path, check=False)
    assert result.returncode != 0
    lines = [x for x in result.stderr.splitlines() if x.startswith("teacher_shard failed:")]
    assert len(lines) == 1 and "401" in lines[0] and "every request" in lines[0]
