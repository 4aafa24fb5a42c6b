"""Workarounds for Snakemake costs that grow with the number of jobs, applied by the Snakefile.

Each one is a pure speed-up: it changes no DAG, no output and no message. benchmarks/
dryrun_overhead.py measures them (docs/benchmarks.md).
"""

from __future__ import annotations

import functools
from typing import Any


def cache_source_path_parsing() -> bool:
    """Memoise the URI parsing behind Snakemake's per-job check of a rule's ``script:``.

    For every job of a ``script:`` rule, Snakemake's DAG check and its source cache parse the
    script's path three times with ``smart_open.parse_uri``, which builds a new namedtuple class
    (an ``eval``) on each call: about a quarter of a 1,000-job dry run. The parse is a pure
    function of the path string and its result is immutable, so caching it is safe. Returns
    whether the patch applied (False when a Snakemake version no longer has this function).
    """
    from snakemake import sourcecache

    return _remember_answers((sourcecache,), "parse_uri")


def check_each_script_once() -> bool:
    """Check that a rule's ``script:`` is readable once per rule, not once per job.

    Snakemake's DAG check reads the script through its source cache for every job (1,000 reads
    of the same eight files in the paper grid's dry run). A script path without wildcards is the
    same file for every job of its rule, so one check per rule says the same. The check also
    evaluated each job's params; Snakemake evaluates them again later in the same dry run, so a
    failing params function still stops it (tests/test_snakemake_patches.py). Paths with
    wildcards are still checked job by job. Returns whether the patch applied.
    """
    import snakemake.api  # noqa: F401  (imports snakemake.dag the way snakemake does)
    from snakemake import dag

    processor = getattr(dag, "ScriptProcessor", None)
    check_job = getattr(processor, "process_job", None)
    if check_job is None or getattr(check_job, "checks_each_script_once", False):
        return check_job is not None

    @functools.wraps(check_job)
    def check_rule_script_once(self, job) -> None:
        entry = str(getattr(job.rule, self.script_type, None))
        if "{" in entry:
            return check_job(self, job)
        checked = self.__dict__.setdefault("_checked_rule_scripts", set())
        if (job.rule.name, entry) not in checked:
            check_job(self, job)
            checked.add((job.rule.name, entry))

    check_rule_script_once.checks_each_script_once = True
    processor.process_job = check_rule_script_once
    return True


def cache_function_signatures() -> bool:
    """Inspect each input, params and resource function's signature once, not once per job.

    Snakemake calls ``inspect.signature`` on these functions for every job, to pass only the
    arguments each takes (wildcards, attempt, threads, ...): about a tenth of a 1,000-job dry
    run. A function's signature does not change, so the answer is kept per function object
    (an unhashable callable is inspected every time, as before). Snakemake's modules import the
    function by name, so each module's reference is replaced. Returns whether the patch applied.
    """
    from snakemake import common, jobs, rules

    return _remember_answers((common, rules, jobs), "get_function_params")


def _remember_answers(modules: tuple, name: str) -> bool:
    """Replace the one-argument function ``name`` of ``modules[0]``, in every module of
    ``modules`` that holds it, by one that keeps its answer per argument (an unhashable
    argument is answered afresh each time). True when the function exists, patched now or
    before; False when this Snakemake has no such function."""
    original = getattr(modules[0], name, None)
    if original is None:
        return False
    if getattr(original, "remembers_answers", False):
        return True
    known: dict = {}

    def remembered(argument: Any) -> Any:
        try:
            return known[argument]
        except KeyError:
            answer = known[argument] = original(argument)
            return answer
        except TypeError:
            return original(argument)

    remembered.remembers_answers = True
    for module in modules:
        if getattr(module, name, None) is original:
            setattr(module, name, remembered)
    return True


def speed_up_dry_runs() -> dict[str, bool]:
    """Apply every patch above; which ones applied (all True on the pinned Snakemake)."""
    return {
        "cache_source_path_parsing": cache_source_path_parsing(),
        "check_each_script_once": check_each_script_once(),
        "cache_function_signatures": cache_function_signatures(),
    }
