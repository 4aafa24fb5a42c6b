"""The Snakefile's speed-ups of Snakemake's per-job work: they apply on the pinned Snakemake,
answer exactly what the unpatched functions answer, and keep Snakemake's checks working."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

from rationale_bench import snakemake_patches

SRC = Path(__file__).resolve().parents[1] / "src"


def test_every_patch_applies_to_the_pinned_snakemake_and_only_once():
    first = snakemake_patches.speed_up_dry_runs()
    assert first == dict.fromkeys(first, True)
    from snakemake import common, rules, sourcecache

    wrapped = (sourcecache.parse_uri, common.get_function_params)
    assert snakemake_patches.speed_up_dry_runs() == first
    assert (sourcecache.parse_uri, common.get_function_params) == wrapped
    assert rules.get_function_params is common.get_function_params


def test_cached_uri_parsing_answers_like_smart_open():
    from smart_open import parse_uri
    from snakemake import sourcecache

    snakemake_patches.cache_source_path_parsing()
    for path in ("/work/workflow_scripts/evaluate.py", "scripts/a b.py", "file:///x/y.py"):
        assert sourcecache.parse_uri(path) == parse_uri(path)


def test_remembered_signatures_answer_like_inspect():
    from snakemake import common

    snakemake_patches.cache_function_signatures()

    def resource(wildcards, attempt):
        return attempt

    class Unhashable:
        __hash__ = None

        def __call__(self, wildcards, threads):
            return threads

    for func in (resource, lambda wildcards: 1, Unhashable()):
        expected = inspect.signature(func).parameters
        assert common.get_function_params(func) == expected
        assert common.get_function_params(func) == expected  # the remembered answer


def run_dry(tmp_path: Path, script: str, params: str = "1") -> subprocess.CompletedProcess:
    (tmp_path / "Snakefile").write_text(
        f"import sys\nsys.path.insert(0, {str(SRC)!r})\n"
        "from rationale_bench.snakemake_patches import speed_up_dry_runs\n"
        "speed_up_dry_runs()\n\n"
        "rule all:\n    input: expand('out/{i}.txt', i=range(3))\n\n"
        f"rule make:\n    output: 'out/{{i}}.txt'\n    params: p={params}\n"
        f"    script: {script!r}\n"
    )
    cmd = [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--quiet", "rules"]
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)


def test_a_missing_script_is_still_reported(tmp_path):
    """One check per rule still checks: a rule whose script is absent stops the dry run."""
    result = run_dry(tmp_path, "missing.py")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "No such file or directory" in output and "missing.py" in output


def test_a_present_script_plans_every_job(tmp_path):
    (tmp_path / "make.py").write_text("")
    result = run_dry(tmp_path, "make.py")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "make 3" in " ".join((result.stdout + result.stderr).split())


def test_a_failing_params_function_of_a_later_job_still_stops_the_dry_run(tmp_path):
    """The script is checked once per rule, but every job's params are still evaluated, as
    Snakemake's own check does: the third job's failing params function is reported."""
    (tmp_path / "make.py").write_text("")
    result = run_dry(tmp_path, "make.py", params="lambda w: 1 // (int(w.i) - 2)")
    assert result.returncode != 0
    assert "ZeroDivisionError" in result.stdout + result.stderr
