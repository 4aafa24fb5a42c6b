"""Config checks at parse time, with short messages: the first problem and its key path.

The Snakefile first moves renamed keys to their new names (:func:`apply_renames`, with a
deprecation message), then validates the config against schemas/config.schema.yaml and fills
the defaults (:func:`validate_config`); when that fails, :func:`short_schema_error` gives one
line instead of the validator's dump of the schema. :func:`check_config` then runs every check
that spans several keys, before any job runs, so that a setting that cannot work stops now
rather than hours later in a training job. No polars here: the Snakefile imports this module on
every start.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rationale_bench import study


class ConfigError(ValueError):
    """A config value cannot work; the message names the key path and the fix."""


@dataclass(frozen=True)
class Rename:
    """A config key renamed: its old dotted path, the new one, and how an old value reads in
    the new key's terms (``convert``; unchanged for a plain rename)."""

    old: str
    new: str
    convert: Callable[[Any], Any] | None = None
    meaning: str = ""  # how the old value maps to the new key, when not unchanged


# The old names are accepted until the version named here, with a message naming the new key.
RENAMED_KEYS_REMOVED_IN = "0.3.0"
RENAMES: tuple[Rename, ...] = (
    Rename("teacher.openai.max_attempts", "teacher.openai.http_attempts"),
    Rename(
        "teacher.qc.max_attempts",
        "teacher.qc.regenerations",
        convert=lambda attempts: attempts - 1 if isinstance(attempts, int) else attempts,
        meaning="regenerations = max_attempts - 1 (the first generation is not one)",
    ),
    Rename("teacher.openai.seed", "teacher.seed"),
    Rename("cohort.index_event_prefixes", "cohort.index.event_prefixes"),
    Rename("cohort.outcome_code_prefixes", "cohort.outcome.code_prefixes"),
    Rename("cohort.exclusion_drug_prefixes", "cohort.exclusion.drug_prefixes"),
    Rename("cohort.outcome.drug_regex", "cohort.exclusion.drug_regex"),
    Rename("cohort.outcome.drug_concept_ids", "cohort.exclusion.drug_concept_ids"),
)

_MISSING = object()


def _pop_key(config: MutableMapping[str, Any], dotted: str) -> Any:
    """Remove and return the value at a dotted path (``_MISSING`` when absent); a mapping left
    empty by the removal stays, as an empty mapping means the defaults."""
    *parents, leaf = dotted.split(".")
    node: Any = config
    for part in parents:
        node = node.get(part) if isinstance(node, Mapping) else None
    if not isinstance(node, MutableMapping) or leaf not in node:
        return _MISSING
    return node.pop(leaf)


def _has_key(config: Mapping[str, Any], dotted: str) -> bool:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def _set_key(config: MutableMapping[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = config
    for part in parents:
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
    node[leaf] = value


def _move_key(config: MutableMapping[str, Any], rename: Rename) -> None:
    """Move the old key's (converted) value to the new key. Within the same mapping the new
    key takes the old one's place, so the mapping's order, and with it any job's params that
    hold it, stays what the old config gave."""
    *old_parents, old_leaf = rename.old.split(".")
    *new_parents, new_leaf = rename.new.split(".")
    convert = rename.convert or (lambda value: value)
    if old_parents != new_parents:
        _set_key(config, rename.new, convert(_pop_key(config, rename.old)))
        return
    parent: Any = config
    for part in old_parents:
        parent = parent[part]
    items = [(new_leaf, convert(v)) if k == old_leaf else (k, v) for k, v in parent.items()]
    parent.clear()
    parent.update(items)


def apply_renames(config: MutableMapping[str, Any]) -> list[str]:
    """Move every old key of :data:`RENAMES` present in ``config`` to its new key (in place);
    return one deprecation message per key moved. Giving both the old and the new key is an
    error naming both. Runs before schema validation, which would refuse the old key."""
    messages = []
    for rename in RENAMES:
        if not _has_key(config, rename.old):
            continue
        if _has_key(config, rename.new):
            raise ConfigError(
                f"config sets both {rename.old} (deprecated) and {rename.new}, its new name: "
                f"remove {rename.old}."
            )
        _move_key(config, rename)
        meaning = f"; {rename.meaning}" if rename.meaning else ""
        messages.append(
            f"config: {rename.old} is deprecated and will be refused from version "
            f"{RENAMED_KEYS_REMOVED_IN}: use {rename.new}{meaning}. Read as {rename.new}."
        )
    return messages


def _key_path(path: Any) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def _subschema(schema: Mapping[str, Any], path: Any) -> Mapping[str, Any]:
    """The schema node of a config path (properties only; enough for the hint)."""
    node = schema
    for part in path:
        props = node.get("properties", {})
        if part in props:
            node = props[part]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            return {}
    return node


def load_schema(schema_path: str | Path) -> dict[str, Any]:
    """The config schema, parsed by libyaml where PyYAML has it (10x faster than pure Python;
    the schema is read on every Snakemake start)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(Path(schema_path).read_text(), Loader=loader)  # noqa: S506 (a safe loader)


def _with_defaults(validate_properties: Callable) -> Callable:
    """A ``properties`` check that first fills each absent key's default (jsonschema's FAQ
    recipe, the one snakemake.utils.validate uses), so nested defaults are filled too."""

    def fill_then_check(validator: Any, properties: Any, instance: Any, schema: Any) -> Any:
        if isinstance(instance, MutableMapping):
            for key, subschema in properties.items():
                if "default" in subschema:
                    instance.setdefault(key, subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return fill_then_check


def validate_config(config: MutableMapping[str, Any], schema_path: str | Path) -> None:
    """Check ``config`` against the schema and fill every default, in place, as
    ``snakemake.utils.validate`` does (tests/test_study.py compares the two), but with the
    schema read once by libyaml; raises :class:`ConfigError` with :func:`short_schema_error`."""
    import jsonschema

    schema = load_schema(schema_path)
    base = jsonschema.Draft202012Validator
    filling = jsonschema.validators.extend(
        base, {"properties": _with_defaults(base.VALIDATORS["properties"])}
    )
    if next(filling(schema).iter_errors(config), None) is not None:
        raise ConfigError(short_schema_error(config, schema))


def short_schema_error(config: Mapping[str, Any], schema: str | Path | Mapping[str, Any]) -> str:
    """One line for the most relevant schema violation of ``config``: where and what.

    An unknown key gets the closest known keys; other errors say the expected type, value
    range or choices as JSON Schema words them, and the description of the key if it has one.
    ``schema`` is the schema or the path of its file.
    """
    import jsonschema

    if not isinstance(schema, Mapping):
        schema = load_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(dict(config)))
    if error is None:
        return "config: the schema check failed, but no single error was found."
    where = _key_path(error.absolute_path)
    if error.validator == "additionalProperties":
        node = _subschema(schema, error.absolute_path)
        known = sorted(node.get("properties", {}))
        extra = sorted(set(error.instance) - set(known))
        hints = []
        for key in extra:
            close = difflib.get_close_matches(key, known, n=2)
            hints.append(f"'{key}'" + (f" (did you mean {' or '.join(close)}?)" if close else ""))
        prefix = f"{where}." if error.absolute_path else ""
        return (
            f"config: unknown key {', '.join(prefix + h for h in hints)}; known keys under "
            f"{where}: {', '.join(known)}. See schemas/config.schema.yaml."
        )
    message = error.message if len(error.message) < 300 else error.message[:300] + " ..."
    description = _subschema(schema, error.absolute_path).get("description", "")
    about = f" ({' '.join(str(description).split())[:200]})" if description else ""
    return f"config: {where}: {message}{about}."


def check_config(config: Mapping[str, Any], cohort_path: str | Path) -> None:
    """Every check that spans several keys (JSON Schema checks one key at a time), run at parse
    time on the validated config: the grid against the models, formats and teacher styles,
    each model's prompt budget, the teacher's mode and view, and grid.n_train against an
    existing cohort (``cohort_path``). Raises ValueError (mostly :class:`ConfigError`) naming
    the keys and the fix."""
    check_grid(config)
    check_budgets(config)
    study.check_teacher_config(config)
    check_training_split(config, cohort_path)


def check_grid(config: Mapping[str, Any]) -> None:
    """The grid's models, formats and sizes: known, and taught by the configured styles."""
    grid = config["grid"]
    for model in grid["model"]:
        if model not in config["models"]:
            known = ", ".join(sorted(config["models"])) or "none"
            raise ConfigError(
                f"config grid.model lists '{model}', but models has no entry '{model}' "
                f"(known models: {known}). Add models.{model} or remove it from grid.model."
            )
    styles = set(config["teacher"]["styles"])
    for fmt in grid["format"]:
        if fmt not in study.RATIONALE_STYLE_OF_FORMAT:
            raise ConfigError(
                f"config grid.format lists unknown format '{fmt}'; "
                f"known formats: {', '.join(study.RATIONALE_STYLE_OF_FORMAT)}."
            )
        style = study.rationale_style(fmt)
        if style is not None and style not in styles:
            raise ConfigError(
                f"config grid.format lists '{fmt}', which trains on '{style}' rationales, "
                f"but teacher.styles does not include '{style}'. Add it to teacher.styles."
            )
    for size in grid["n_train"]:
        if int(size) <= 0:
            raise ConfigError(f"config grid.n_train must be positive, got {size}.")


def check_budgets(config: Mapping[str, Any]) -> None:
    """Each grid model's prompt budget must leave room for a completion in max_seq_len."""
    for name in config["grid"]["model"]:
        model = config["models"].get(name, {})
        prompt, total = model.get("max_prompt_tokens"), model.get("max_seq_len")
        if prompt is not None and total is not None and prompt >= total:
            raise ConfigError(
                f"config models.{name}.max_prompt_tokens ({prompt}) must be below "
                f"models.{name}.max_seq_len ({total}): the rest of max_seq_len holds the "
                "completion (answer or rationale). Lower max_prompt_tokens or raise max_seq_len."
            )


def check_training_split(config: Mapping[str, Any], cohort_path: str | Path) -> None:
    """When the cohort exists already, grid.n_train must fit its training split (a changed
    grid does not rerun the cohort job, which checks the same on its first run)."""
    path = Path(cohort_path)
    if not path.is_file():
        return
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        split = pq.read_table(path, columns=["split"])["split"]
    except Exception:  # unreadable or foreign: the cohort job's own checks will say so
        return
    n_train = pc.sum(pc.equal(split, "train")).as_py() or 0
    largest = max(int(n) for n in config["grid"]["n_train"])
    if largest > n_train:
        raise ConfigError(
            f"config grid.n_train asks for {largest} training subjects, but the training split "
            f"of {path} has {n_train}. Lower grid.n_train to at most {n_train}, or add subjects."
        )


_NUMBER_WORDS = {
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
}
_YEARS = re.compile(r"\b(\d+|" + "|".join(_NUMBER_WORDS) + r")[ -]years?\b", re.IGNORECASE)


def horizon_words(horizon_days: int) -> str:
    """``1826`` -> ``5 years``, ``3652`` -> ``10 years``, ``365`` -> ``1 year``; a horizon
    more than two days from whole years is said in days (``1000 days``)."""
    years = round(horizon_days / 365.25)
    if years >= 1 and abs(horizon_days - years * 365.25) <= 2:
        return f"{years} year{'s' if years != 1 else ''}"
    return f"{horizon_days} days"


def horizon_spoken(horizon_days: int) -> str:
    """The horizon as prose says it: ``1826`` -> ``five years`` (one to ten years spelled out),
    else as :func:`horizon_words`."""
    words = horizon_words(horizon_days)
    count, _, unit = words.partition(" ")
    spelled = {n: word for word, n in _NUMBER_WORDS.items()}
    if unit.startswith("year") and int(count) in spelled:
        return f"{spelled[int(count)]} {unit}"
    return words


def fill_horizon(question: str, horizon_days: int) -> str:
    """The question with ``{horizon}`` filled from cohort.horizon_days: the question (and so
    every teacher prompt, which quotes it) follows the cohort's outcome window. A question
    that names a number of years that is not the horizon stops, naming both keys."""
    words = horizon_words(horizon_days)
    filled = question.replace("{horizon}", words)
    for match in _YEARS.finditer(question):
        said = match.group(1).lower()
        n = _NUMBER_WORDS.get(said) or int(said)
        if f"{n} year" not in words:
            raise ConfigError(
                f"config serialization.question says '{match.group(0)}', but cohort.horizon_days "
                f"is {horizon_days} ({words}): the question would ask about another window than "
                "the labels. Write {horizon} in the question (filled from cohort.horizon_days)."
            )
    return filled


def check_yaml_file(path: str | Path) -> None:
    """Stop with the file, line and column of a YAML syntax error (Snakemake's own message
    names neither). A missing file is left to Snakemake, whose message is clear."""
    path = Path(path)
    if not path.is_file():
        return
    try:
        yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{path}{where}: not valid YAML: {problem}.") from None
