"""The model registry: where each model's weights come from, and fetching them once.

A model's ``source`` is ``build_tiny`` (built by a rule), an existing local folder, or a Hugging
Face id. Compute nodes on clusters often have no internet: Hugging Face models are fetched once,
by a local rule, into a configured cache, and every training or evaluation job then loads them
with the hub offline (``local_files_only``), so a job can never start a download.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

BUILT_SOURCES = ("build_tiny",)
HF_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


class ModelSourceError(ValueError):
    """A model source cannot be resolved as configured."""


def source_kind(source: str) -> str:
    """``built``, ``local`` (an existing folder) or ``hub`` (a Hugging Face id)."""
    if source in BUILT_SOURCES:
        return "built"
    if Path(source).is_dir():
        return "local"
    if HF_ID.match(source) and not source.startswith((".", "/")):
        return "hub"
    raise ModelSourceError(
        f"model source '{source}' is neither 'build_tiny', an existing local folder, nor a "
        "Hugging Face id of the form 'organisation/name'. Fix models.<name>.source."
    )


def fetch(
    source: str, revision: str | None, cache_dir: str | None, token_env: str
) -> dict[str, Any]:
    """Download a Hugging Face model snapshot once; return its manifest (no weights inside)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    token = os.environ.get(token_env) or None
    try:
        path = snapshot_download(
            repo_id=source,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"],
        )
    except GatedRepoError as error:
        hint = "" if token else f" No token was found in the environment variable {token_env}."
        raise ModelSourceError(
            f"'{source}' is a gated model: accept its licence on huggingface.co and export a "
            f"token with access in {token_env}.{hint}"
        ) from error
    except RepositoryNotFoundError as error:
        raise ModelSourceError(
            f"'{source}' was not found on the Hugging Face hub (or is private and "
            f"{token_env} lacks access). Check models.<name>.source."
        ) from error
    return {"source": source, "revision": revision, "cache_dir": cache_dir, "snapshot": path}


def resolve(source: str, revision: str | None = None, cache_dir: str | None = None) -> str:
    """The local folder a job loads a model from; never downloads.

    Built and local models are their folder; hub models are looked up in the cache that
    ``fetch`` filled, with a clear error if they are not there.
    """
    if source_kind(source) != "hub":
        return source
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(
            repo_id=source, revision=revision, cache_dir=cache_dir, local_files_only=True
        )
    except LocalEntryNotFoundError as error:
        raise ModelSourceError(
            f"'{source}' (revision {revision or 'main'}) is not in the model cache "
            f"{cache_dir or '(default)'}; run the fetch_model rule on a node with internet."
        ) from error


def resolve_model(settings: Mapping[str, Any]) -> str:
    """What a job passes to ``from_pretrained``, from the model's registry entry (its params):
    the built folder, the local folder, or the cached snapshot of a hub id (offline)."""
    if settings["source"] in BUILT_SOURCES:
        return f"results/models/{settings['name']}"
    return resolve(settings["source"], settings.get("revision"), settings.get("cache_dir"))


def write_manifest(manifest: Mapping[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(manifest), indent=2))
