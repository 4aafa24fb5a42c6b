"""Every benchmark runs in its --smoke mode (seconds, tiny sizes) and writes its JSON result, so
that a changed library API breaks the test suite, not a benchmark months later; the table of
figures in docs/benchmarks.md matches the stored results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import results_table  # noqa: E402

# benchmark -> figures its smoke result must hold (the ones docs/benchmarks.md quotes).
SMOKE_FIGURES = {
    "teacher_throughput": ["ours_vs_ideal", "bare_vs_ideal", "rerun_requests_sent"],
    "serialize_throughput": ["prompts_ours_vs_baseline", "same_kept_lines_share"],
    "cohort_scale": ["total_minutes", "cohort_time_ratio_vs_baseline", "max_peak_rss_gb"],
    "aces_crosscheck": ["ours_wall_s", "ours_peak_rss_mb"],
    "dryrun_overhead": ["jobs", "wall_ratio_vs_structured", "cpu_ratio_vs_plainest"],
    "trl_comparison": ["ratio_tokens_per_s", "max_step_loss_relative_difference"],
    "tiny_learnability": ["real_gap_vs_baseline", "real_auroc", "real_baseline_auroc", "recipes"],
}
RESULT_NAME = {
    "trl_comparison": "trl_comparison_tiny_full",
    "tiny_learnability": "tiny_learnability_default",
}


def run_smoke(name: str, results_dir: Path) -> dict:
    env = dict(os.environ, RATIONALE_BENCH_RESULTS_DIR=str(results_dir))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    # One thread each: the smoke runs check that the code runs, not how fast.
    env.update(OMP_NUM_THREADS="1", POLARS_MAX_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{name}.py"), "--smoke"],
        capture_output=True,
        text=True,
        env=env,
        cwd=results_dir,
        timeout=600,
    )
    assert proc.returncode == 0, (
        f"{name} --smoke failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    path = results_dir / f"{RESULT_NAME.get(name, name)}.smoke.json"
    assert path.exists(), f"{name} --smoke wrote no {path.name}:\n{proc.stdout[-2000:]}"
    record = json.loads(path.read_text())
    assert record["smoke"] is True and record["benchmark"] == RESULT_NAME.get(name, name)
    assert record["machine"]["cpu_count"] and record["arguments"]["smoke"] is True
    assert not (BENCHMARKS / "results" / path.name).exists(), "smoke results stay out of the repo"
    return record


@pytest.mark.parametrize("name", [n for n in SMOKE_FIGURES if n != "trl_comparison"])
def test_benchmark_smoke(name, tmp_path):
    record = run_smoke(name, tmp_path)
    figures = record["figures"]
    for key in SMOKE_FIGURES[name]:
        assert key in figures, (name, key, sorted(figures))
    # Without es-aces in its own venv the ACES side is skipped, and the result says so.
    if name == "aces_crosscheck" and "aces_wall_s" not in figures:
        assert figures["aces"].startswith("skipped: es-aces==")
    if name == "dryrun_overhead":
        # 2 models x 3 formats x 2 sizes x 1 seed, plus the rest (2 teacher shard jobs and sums)
        assert figures["jobs"] == 44
    if name == "teacher_throughput":
        assert figures["rerun_requests_sent"] == 0
    if name == "tiny_learnability":
        check_label_ladder(figures["recipes"]["config"]["labels"])


def check_label_ladder(labels: dict) -> None:
    """The ladder holds every label, each scored for the tiny model and the baseline; the rare
    age label is as rare as the real one, and a perfect reader of age ranks the age labels
    perfectly."""
    assert set(labels) == {"age_common", "age_rare", "age_noisy", "real"}
    for row in labels.values():
        assert 0 <= row["auroc"] <= 1 and 0 <= row["baseline_auroc"] <= 1
    assert labels["age_common"]["prevalence"] == pytest.approx(0.2, abs=0.03)
    assert labels["age_rare"]["prevalence"] == pytest.approx(labels["real"]["prevalence"], abs=0.02)
    assert labels["age_common"]["oracle_auroc"] == labels["age_rare"]["oracle_auroc"] == 1.0
    assert labels["real"]["oracle_auroc"] is None


def test_trl_comparison_smoke(tmp_path):
    pytest.importorskip("trl", reason="needs the 'bench' extra (trl==1.16.0, datasets==5.2.0)")
    pytest.importorskip("datasets", reason="needs the 'bench' extra (datasets==5.2.0)")
    figures = run_smoke("trl_comparison", tmp_path)["figures"]
    for key in SMOKE_FIGURES["trl_comparison"]:
        assert key in figures
    # Same weights, same batches: the per-step losses agree to float rounding.
    assert figures["max_step_loss_relative_difference"] < 1e-4
    assert figures["tail_losses_agree"] is True


def test_results_table_is_current():
    """docs/benchmarks.md's table is what benchmarks/results holds (no stale or missing figure)."""
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "results_table.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr


def test_a_quoted_figure_without_a_result_file_fails(tmp_path):
    results = results_table.load_results()
    name = next(iter(results_table.QUOTED))
    del results[name]
    with pytest.raises(results_table.MissingResult, match=f"{name}.json does not exist"):
        results_table.table(results)


def test_a_quoted_figure_missing_from_its_file_fails():
    results = results_table.load_results()
    name, quoted = next(iter(results_table.QUOTED.items()))
    results[name] = dict(results[name], figures={})
    with pytest.raises(results_table.MissingResult, match=quoted[0][0]):
        results_table.table(results)


def test_a_stale_doc_fails_the_check(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text(results_table.DOC.read_text().replace("| value |", "| old value |"))
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "results_table.py"), "--check", "--doc", str(doc)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1 and "stale" in proc.stderr
