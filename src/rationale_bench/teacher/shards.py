"""Teacher shards: an OpenAI-compatible teacher's requests cut into jobs that fill the cache,
before each style's one job assembles its rationales from that cache.

Why this layout: the shard count decides how the work is cut (how many cluster jobs, each with
its own time limit, share the endpoint), never what the rationales say, so it must not decide
which job writes the rationale files either. A shard job (every n-th subject) draws its
subjects' rationales exactly as the style's job will, QC and regenerations included, so it asks
every request the style's job would ask, and keeps only its cache file and a report. The
style's job (``generate_rationales``) reads every cache file of its style and sends only what
none of them holds: normally nothing. A new shard count thus runs the new layout's shard jobs,
which find every answer cached, and nothing after them (rules/rationales.smk depends on the
shards through one summary file marked ancient).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from rationale_bench.teacher import TeacherError
from rationale_bench.teacher.generate import generate_rationales

# Usage counts of requests actually sent: a shard job's are added to the style's. Cache hits
# are not among them: the style's own job finds every shard's answer in the cache again.
SENT = ("requests_sent", "retries", "failures", "prompt_tokens", "completion_tokens", "wall_s")


def cache_path(cache_dir: Path, style: str, shard: int | None = None, n_shards: int = 1) -> Path:
    """The cache file a job appends to: one per shard of a layout, and the style job's own."""
    name = f"{style}.jsonl" if shard is None else f"{style}.shard{shard}of{n_shards}.jsonl"
    return Path(cache_dir) / name


def cache_files(cache_dir: Path, style: str) -> list[Path]:
    """Every cache file of one style, whatever shard layout wrote it (read by every job of the
    style, so changing `teacher.shards` never pays for an answer twice)."""
    return sorted(
        p
        for p in Path(cache_dir).glob(f"{style}*.jsonl")
        if p.name == f"{style}.jsonl" or p.name.startswith(f"{style}.shard")
    )


def shard_of(subjects: pl.DataFrame, shard: int, n_shards: int) -> pl.DataFrame:
    """Shard `shard` of `n_shards`: every n-th subject in subject order (balanced, stable)."""
    if n_shards < 1 or not 0 <= shard < n_shards:
        raise TeacherError(f"shard {shard} of {n_shards} does not exist (shards count from 0).")
    ordered = subjects.sort("subject_id")
    return ordered.filter(pl.int_range(pl.len()) % n_shards == shard)


def ask_shard(
    subjects: pl.DataFrame,
    style: str,
    cfg: Mapping[str, Any],
    cache_dir: Path,
    shard: int,
    n_shards: int,
) -> dict[str, Any]:
    """Draw one shard's rationales into its cache file; returns the shard's generation report.
    The rationales themselves are not kept: the style's job rebuilds them from the cache."""
    _, report = generate_rationales(
        shard_of(subjects, shard, n_shards),
        style,
        cfg,
        cache_path(cache_dir, style, shard, n_shards),
        cache_read_also=cache_files(cache_dir, style),
        whole_style=False,
    )
    return {**report, "shard": shard, "shards": n_shards}


def sum_shard_reports(reports: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One style's shard reports summed (counts added, settings kept); refuses a mixed or
    incomplete layout, whose sums would mean nothing."""
    layouts = {(r.get("shards"), r.get("style")) for r in reports}
    shards = sorted(r.get("shard", -1) for r in reports)
    if len(layouts) != 1 or shards != list(range(len(reports))):
        raise TeacherError(
            f"expected shards 0..{len(reports) - 1} of one style and layout, got shards {shards} "
            f"of {sorted(map(str, layouts))}; rerun the teacher's shard jobs."
        )
    summed = _sum(reports)
    summed.pop("shard", None)
    return summed


def _sum(reports: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for rep in reports:
        for key, value in rep.items():
            if isinstance(value, Mapping):
                out[key] = _sum([out.get(key, {}), value])
            elif isinstance(value, bool) or not isinstance(value, int | float) or key == "shards":
                out.setdefault(key, value)  # a setting, the same in every shard
            elif key == "requests_per_subject_max":
                out[key] = max(out.get(key, 0), value)
            else:
                out[key] = out.get(key, 0) + value
    return out


def usage_with_shards(own: Mapping[str, Any], shards: Mapping[str, Any]) -> dict[str, Any]:
    """A style's usage: what its shard jobs sent, plus what its own job had to send beyond them
    (``sent_by_style_job``, normally 0), plus the shards' cache hits (answers of an earlier run).
    The tokens of all answers used (the cost basis) are the style job's own count."""
    usage = {key: shards.get(key, 0) + own.get(key, 0) for key in SENT}
    usage["cache_hits"] = shards.get("cache_hits", 0)
    usage["sent_by_style_job"] = own.get("requests_sent", 0)
    for key in ("total_prompt_tokens", "total_completion_tokens"):
        usage[key] = own.get(key, 0)
    return usage
