"""Input files tracked by content, without polars (the Snakefile imports this at parse time).

- :func:`meds_files` / :func:`omop_files` list the files a dataset is read from, so the ingest
  rule depends on each shard (editing one reruns ingest) rather than on a folder, and files
  that do not belong in a MEDS ``data/`` folder stop the run instead of being skipped.
- :func:`write_manifest` records the row count and SHA-256 of each file a stage writes;
  :func:`check_manifest` in the next stage refuses a file that differs from what was recorded
  (replaced by hand, or left over from another run).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class InputError(ValueError):
    """An input file is missing, foreign or not the one the previous stage wrote."""


def meds_files(path: str | Path, require: bool = True) -> list[Path]:
    """Parquet shards of a MEDS dataset: its data/ folder if present, else the folder itself.

    metadata/ is not events. Hidden files and '_'-files (_SUCCESS, parquet summary files) are
    tool bookkeeping and ignored; any other non-parquet file (a shard saved as .csv) is an
    error listing them: skipping it would lose its subjects without a word. ``require``
    False returns an empty list for a missing or empty folder (the Snakefile's input list,
    where the ingest job reports it).
    """
    root = Path(path)
    if root.is_file():
        return [root]
    if not root.exists():
        if not require:
            return []
        raise InputError(
            f"data.meds.path '{root}' does not exist; point it at a MEDS dataset folder."
        )
    base = root / "data" if (root / "data").is_dir() else root
    entries = [
        f
        for f in sorted(base.rglob("*"))
        if f.is_file()
        and "metadata" not in f.relative_to(base).parts[:-1]
        and not f.name.startswith((".", "_"))
    ]
    files = [f for f in entries if f.suffix.lower() == ".parquet"]
    foreign = [f for f in entries if f.suffix.lower() != ".parquet"]
    if foreign:
        listed = ", ".join(str(f.relative_to(base)) for f in foreign[:10])
        raise InputError(
            f"data.meds.path '{root}': {len(foreign)} file(s) in {base} are not parquet shards "
            f"({listed}{', ...' if len(foreign) > 10 else ''}). MEDS data are parquet only; "
            "convert them to parquet or move them out of the folder."
        )
    if not files and require:
        raise InputError(f"data.meds.path '{root}': no .parquet files found under {base}.")
    return files


def omop_files(path: str | Path) -> list[Path]:
    """The files of an OMOP CDM folder (tables and parquet parts), or the DuckDB file."""
    root = Path(path)
    if root.is_file() or not root.exists():
        return [root]
    return [f for f in sorted(root.rglob("*")) if f.is_file() and not f.name.startswith((".", "_"))]


def ingest_input_files(data_cfg: Mapping[str, Any]) -> list[str]:
    """The files ingest reads, each one a rule input: editing one shard reruns ingest (a folder
    input would not notice it), and foreign files in a MEDS data/ folder stop at parse time."""
    source = data_cfg["source"]
    if source == "synthetic":
        return []
    path = data_cfg[source].get("path")
    if not path:
        return [f"MISSING: set data.{source}.path"]
    if source == "meds":
        return [str(f) for f in meds_files(path, require=False)] or [str(path)]
    if source == "omop":
        return [str(f) for f in omop_files(path)]
    return [str(path)]


def file_record(path: str | Path) -> dict[str, Any]:
    """``{"rows", "sha256", "bytes"}`` of a parquet file (rows from its footer)."""
    import pyarrow.parquet as pq

    path = Path(path)
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {
        "rows": pq.read_metadata(path).num_rows,
        "sha256": digest.hexdigest(),
        "bytes": path.stat().st_size,
    }


def write_manifest(
    path: str | Path, files: Mapping[str, str | Path], read: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Record each written file (name -> path) with its rows and digest, as JSON; ``read``
    (name -> record) adds what the stage read, under ``"read"``."""
    records: dict[str, Any] = {
        name: {"path": str(p), **file_record(p)} for name, p in files.items()
    }
    if read:
        records["read"] = dict(read)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(records, indent=2, sort_keys=True) + "\n")
    return records


def check_manifest(manifest: str | Path, name: str, path: str | Path, stage: str) -> dict:
    """Stop unless ``path`` is the file ``stage`` recorded under ``name`` in ``manifest``."""
    recorded = json.loads(Path(manifest).read_text()).get(name)
    if recorded is None:
        raise InputError(f"{manifest}: no record of '{name}'; rerun the {stage} step.")
    found = file_record(path)
    if (found["rows"], found["sha256"]) != (recorded["rows"], recorded["sha256"]):
        raise InputError(
            f"{path}: has {found['rows']} rows (sha256 {found['sha256'][:12]}), but the "
            f"{stage} step recorded {recorded['rows']} rows (sha256 {recorded['sha256'][:12]}) "
            f"in {manifest}: the file was changed or replaced after it was written. Rerun the "
            f"{stage} step (snakemake --forcerun {path}) instead of editing its output."
        )
    return found
