"""Cohort: index time, exclusions, five-year labels, censoring, patient-level splits.

Follows OHDSI PatientLevelPrediction conventions (docs/references.md):
- the index is one time per subject chosen by ``cohort.index.strategy`` (default: the first
  visit at which the subject is old enough and has enough prior observation); inputs are
  events strictly before ``input_end_time`` (= the index time, or earlier with a blackout);
- the outcome window is (index, index + horizon]: nothing at the index time can be both
  input and outcome;
- subjects with the outcome or an anti-dementia drug at or before index are excluded;
- cases are kept whatever their follow-up, non-cases need full follow-up (death or the end of
  observation before the horizon drops them, and the attrition table counts them).

A partial cohort mapping (as in the tests) is completed with the ``cohort`` defaults of
schemas/config.schema.yaml, the one place defaults are written, so it means the same as the
config.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from rationale_bench.data.codes import (
    DATE_UNKNOWN_PREFIX,
    OUTCOME_TIERS,
    RISK_FACTORS,
    describe_many,
    matches_any,
    normalize_codes,
)
from rationale_bench.data.inputs import check_manifest
from rationale_bench.errors import CohortError

SPLITS = ("train", "tuning", "held_out")
# The columns of cohort.parquet, in order.
COHORT_COLUMNS = (
    "subject_id",
    "index_time",
    "input_end_time",
    "label",
    "age",
    "sex",
    "followup_days",
    "outcome_time",
    "split",
)
DAYS_PER_YEAR = 365.25
EVENT_COLUMNS = {"subject_id": pl.Int64, "time": pl.Datetime, "code": pl.String}
# Codes that describe the person rather than an encounter; they do not open observation.
STATIC_CODES = ("MEDS_BIRTH", "SEX/")
# OMOP concepts in MEDS events (ingest writes ``OMOP/<concept_id>`` for unmapped concepts).
OMOP_PREFIX = "OMOP/"
INDEX_STRATEGIES = ("first_visit", "fixed_age", "baseline_date", "random_visit")
CONFIRMATION_RULES = ("none", "two_codes", "code_plus_drug")
# Count columns of the attrition table (small-cell suppression applies to these).
ATTRITION_COUNTS = (
    "n_subjects",
    "n_cases",
    "n_noncases",
    "n_excluded",
    "n_cases_excluded",
    "n_noncases_excluded",
    "n_died_in_window",
)

# Table 1 lists the cohort's most prevalent ICD-10 3-character categories in fixed slots
# ("condition k", "n condition k", "% condition k"), so its count columns are known in advance.
TOP_CONDITIONS = 10
ICD10_CATEGORY = r"^ICD10/([A-Z][0-9][0-9A-Z])"
# Count columns of Table 1 (small-cell suppression applies to these).
TABLE_ONE_COUNTS = ("n", *(f"n condition {k}" for k in range(1, TOP_CONDITIONS + 1)))
# Percentages computed from a Table 1 count: blanked when that count is suppressed.
TABLE_ONE_PERCENTS = {f"% condition {k}": f"n condition {k}" for k in range(1, TOP_CONDITIONS + 1)}

SCHEMA_FILE = Path(__file__).resolve().parents[3] / "schemas" / "config.schema.yaml"


def schema_defaults(node: Mapping[str, Any]) -> Any:
    """The defaults a validator fills in for a schema node, objects expanded property by
    property (an object without properties, a free-form table, keeps its own default)."""
    if node.get("type") == "object" and "properties" in node:
        return {key: schema_defaults(child) for key, child in node["properties"].items()}
    return node["default"]


@functools.cache
def _cohort_defaults() -> dict[str, Any]:
    if not SCHEMA_FILE.is_file():
        raise CohortError(
            f"{SCHEMA_FILE} is missing: the cohort's defaults are read from the repository's "
            "schema, so the library runs from a checkout (pip install -e .), as the workflow does."
        )
    schema = yaml.safe_load(SCHEMA_FILE.read_text())
    return schema_defaults(schema["properties"]["cohort"])


def canonical_codes(events: pl.LazyFrame) -> pl.LazyFrame:
    """Events with every code in canonical form (:func:`codes.normalize_code`). Ingest already
    writes canonical codes; this makes a cohort built from other events match the same way.
    Only the distinct codes are normalised, so canonical data cost one pass."""
    distinct = events.select(pl.col("code").unique()).collect()["code"].to_list()
    mapping = normalize_codes(distinct)
    return events.with_columns(pl.col("code").replace(mapping)) if mapping else events


def outcome_absent_message(events: pl.LazyFrame, defn: Mapping[str, Any]) -> str:
    """Why no event matches the outcome definition: the data's code systems, and a hint."""
    systems = (
        events.select(
            vocabulary=pl.when(pl.col("code").str.contains("/", literal=True))
            .then(pl.col("code").str.extract(r"^([^/]*)/"))
            .otherwise(pl.col("code"))
        )
        .group_by("vocabulary")
        .len()
        .sort("len", descending=True)
        .head(6)
        .collect()
    )
    seen = ", ".join(f"{v} ({n} events)" for v, n in systems.iter_rows())
    wanted = sorted({p.split("/")[0] for p in outcome_prefixes(defn)})
    hint = ""
    if not any(v in wanted for v in systems["vocabulary"].to_list()):
        hint = (
            " The data's codes look like another vocabulary than the outcome's "
            f"({', '.join(wanted)}): for OMOP data set cohort.outcome.concept_ids, or map the "
            "codes in your ETL."
        )
    return (
        "cohort: no event matches the outcome codes "
        f"(cohort.outcome.tier '{defn['outcome']['tier']}', outcome.code_prefixes, outcome.regex, "
        f"outcome.concept_ids); nothing could be a case. Code systems in the data: {seen}.{hint}"
    )


def check_events_schema(events: pl.LazyFrame | pl.DataFrame, source: str) -> None:
    """Fail with a specific message when the MEDS columns are missing or mistyped."""
    schema = events.collect_schema() if isinstance(events, pl.LazyFrame) else events.schema
    for column, dtype in EVENT_COLUMNS.items():
        if column not in schema:
            raise CohortError(
                f"{source}: column '{column}' is missing; MEDS events need columns "
                f"subject_id, time, code, numeric_value (found: {', '.join(schema.names())})."
            )
        if dtype is pl.Datetime:
            ok = isinstance(schema[column], pl.Datetime)
        else:
            ok = schema[column] == dtype or (dtype is pl.Int64 and schema[column].is_integer())
        if not ok:
            raise CohortError(
                f"{source}: column '{column}' has type {schema[column]}, expected {dtype}. "
                "Convert it in your ETL (MEDS uses int64 subject_id, datetime time, string code)."
            )


def split_of(subject_id: int, seed: int, tuning_fraction: float, held_out_fraction: float) -> str:
    """Deterministic split of one subject from a SHA-256 hash of (seed, subject_id).

    The split depends on nothing but the subject and the seed, so adding subjects to the data
    never moves anyone between splits (femr-style hashing).
    """
    u = _unit_hash(f"{seed}:{subject_id}")
    if u < held_out_fraction:
        return "held_out"
    if u < held_out_fraction + tuning_fraction:
        return "tuning"
    return "train"


def subject_summary(events: pl.LazyFrame) -> pl.LazyFrame:
    """One row per subject: birth, sex, death, observation start and end."""
    is_static = matches_any(pl.col("code"), STATIC_CODES)
    return events.group_by("subject_id").agg(
        birth_time=pl.col("time").filter(pl.col("code") == "MEDS_BIRTH").min(),
        sex=pl.col("code").filter(pl.col("code").str.starts_with("SEX/")).first().str.slice(4),
        death_time=pl.col("time").filter(pl.col("code") == "MEDS_DEATH").min(),
        observation_start=pl.col("time")
        .filter(~is_static & (pl.col("code") != "MEDS_DEATH"))
        .min(),
        observation_end=pl.col("time").filter(~is_static).max(),
    )


def _merge(default: Any, given: Any, path: str) -> Any:
    """``given`` over ``default``, recursively for mappings; unknown keys are errors."""
    # An empty default mapping (risk_factor_codes) is a free-form table, not a key list.
    if not isinstance(default, dict) or given is None or default == {}:
        return copy.deepcopy(given)
    if not isinstance(given, Mapping):
        raise CohortError(f"{path} must be a mapping, got {given!r}.")
    unknown = sorted(set(given) - set(default))
    if unknown:
        raise CohortError(
            f"{path}: unknown key(s) {unknown}; known keys: {', '.join(default)} "
            "(see schemas/config.schema.yaml)."
        )
    merged = copy.deepcopy(default)
    for key, value in given.items():
        merged[key] = _merge(default[key], value, f"{path}.{key}")
    return merged


def resolve_definition(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The cohort section with defaults filled in, checked for values the schema cannot catch."""
    defn = _merge(_cohort_defaults(), cfg, "cohort")
    index, outcome = defn["index"], defn["outcome"]
    if index["strategy"] not in INDEX_STRATEGIES:
        raise CohortError(
            f"cohort.index.strategy '{index['strategy']}' is unknown; "
            f"choose one of {', '.join(INDEX_STRATEGIES)}."
        )
    if index["strategy"] == "fixed_age":
        age = index["fixed_age"]
        if age is None or age < defn["min_age"]:
            raise CohortError(
                f"cohort.index.fixed_age is {age!r}: the fixed_age strategy needs an age in years "
                f"at or above cohort.min_age ({defn['min_age']})."
            )
    if outcome["tier"] not in OUTCOME_TIERS:
        raise CohortError(
            f"cohort.outcome.tier '{outcome['tier']}' is unknown; "
            f"choose one of {', '.join(OUTCOME_TIERS)}."
        )
    rule = outcome["confirmation"]["rule"]
    if rule not in CONFIRMATION_RULES:
        raise CohortError(
            f"cohort.outcome.confirmation.rule '{rule}' is unknown; "
            f"choose one of {', '.join(CONFIRMATION_RULES)}."
        )
    if outcome["confirmation"]["within_days"] < 1:
        raise CohortError("cohort.outcome.confirmation.within_days must be at least 1.")
    for section, key in (("outcome", "regex"), ("exclusion", "drug_regex")):
        pattern = defn[section][key]
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as error:
                raise CohortError(
                    f"cohort.{section}.{key} '{pattern}' is not a valid regex: {error}."
                ) from None
    if defn["blackout_days"] < 0:
        raise CohortError("cohort.blackout_days must be 0 or more days.")
    ratio = defn["case_control"]["controls_per_case"]
    if ratio is not None and ratio <= 0:
        raise CohortError("cohort.case_control.controls_per_case must be positive (or null).")
    if not (outcome_prefixes(defn) or outcome["regex"] or outcome["concept_ids"]):
        raise CohortError(
            "cohort: the outcome code set is empty (outcome.code_prefixes is [] and neither "
            "outcome.regex nor outcome.concept_ids is set); nothing could be a case."
        )
    return defn


def outcome_prefixes(defn: Mapping[str, Any]) -> tuple[str, ...]:
    """The outcome prefix list: ``outcome.code_prefixes`` when set, else the tier's list."""
    explicit = defn["outcome"]["code_prefixes"]
    if explicit is not None:
        return tuple(explicit)
    return OUTCOME_TIERS[defn["outcome"]["tier"]]


def concept_codes(concept_ids: Sequence[int], codes: pl.DataFrame | None = None) -> list[str]:
    """``OMOP/<id>`` of each concept and every code below one of them, sorted.

    "Below" reads the ``parent_codes`` column of the ingest's codes table (MEDS
    codes.parquet convention; for OMOP written from concept_ancestor, already transitive), so
    configured concept ids also match their descendants and the codes mapped from them.
    Without ``codes`` (or without the column) only the concepts themselves match.
    """
    own = {f"{OMOP_PREFIX}{int(c)}" for c in concept_ids}
    if not own or codes is None or "parent_codes" not in codes.columns:
        return sorted(own)
    below = (
        codes.select("code", "parent_codes")
        .explode("parent_codes")
        .filter(pl.col("parent_codes").is_in(list(own)))
        .get_column("code")
    )
    return sorted(own | set(below.to_list()))


def code_set(
    expr: pl.Expr,
    prefixes: Sequence[str],
    regex: str | None = None,
    concept_ids: Sequence[int] = (),
    codes: pl.DataFrame | None = None,
) -> pl.Expr:
    """Codes matching any prefix, the regex (searched, anchor it with ^) or an OMOP concept id
    (with its descendants when ``codes`` carries parent_codes, see :func:`concept_codes`)."""
    parts = [matches_any(expr, prefixes)]
    if regex:
        parts.append(expr.str.contains(regex).fill_null(False))
    if concept_ids:
        parts.append(expr.is_in(concept_codes(concept_ids, codes)).fill_null(False))
    return pl.any_horizontal(parts)


def outcome_code_expr(
    defn: Mapping[str, Any], codes: pl.DataFrame | None = None, expr: pl.Expr | None = None
) -> pl.Expr:
    """True for events carrying an outcome (diagnosis) code (``expr``: the code, by default
    the ``code`` column)."""
    o = defn["outcome"]
    expr = pl.col("code") if expr is None else expr
    return code_set(expr, outcome_prefixes(defn), o["regex"], o["concept_ids"], codes)


def unknown_date_expr(defn: Mapping[str, Any], codes: pl.DataFrame | None = None) -> pl.Expr:
    """True for ``DATE_UNKNOWN/<code>`` events whose code is an outcome or exclusion drug."""
    marked = pl.col("code").str.starts_with(DATE_UNKNOWN_PREFIX)
    inner = pl.col("code").str.strip_prefix(DATE_UNKNOWN_PREFIX)
    return marked & (outcome_code_expr(defn, codes, inner) | drug_expr(defn, codes, inner))


def drug_expr(
    defn: Mapping[str, Any], codes: pl.DataFrame | None = None, expr: pl.Expr | None = None
) -> pl.Expr:
    """True for events carrying an anti-dementia drug code."""
    drugs = defn["exclusion"]
    return code_set(
        pl.col("code") if expr is None else expr,
        drugs["drug_prefixes"],
        drugs["drug_regex"],
        drugs["drug_concept_ids"],
        codes,
    )


def _unit_hash(text: str) -> float:
    """A uniform number in [0, 1) from SHA-256: stable across machines and library versions."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64


def index_step_name(defn: Mapping[str, Any]) -> str:
    """The attrition-table wording of the index step."""
    index = defn["index"]
    prior = f">= {defn['min_prior_observation_days']} days of prior observation"
    criteria = f"(age >= {defn['min_age']}, {prior})"
    if index["strategy"] == "fixed_age":
        return f"observed and alive at the fixed index age {index['fixed_age']} ({prior})"
    if index["strategy"] == "baseline_date":
        return f"eligible baseline event {list(index['baseline_code_prefixes'])} {criteria}"
    if index["strategy"] == "random_visit":
        return f"random eligible index visit, seed {index['seed']} {criteria}"
    return f"eligible index visit {criteria}"


def find_index_times(
    events: pl.LazyFrame, summary: pl.LazyFrame, cfg: Mapping[str, Any]
) -> pl.LazyFrame:
    """One index time per subject who has one, by ``cohort.index.strategy``.

    ``first_visit`` / ``baseline_date``: the first index event (or baseline event) at which age
    and prior observation are both sufficient; ``random_visit``: one of those eligible events
    drawn from a hash of (seed, subject_id), so it never depends on other subjects;
    ``fixed_age``: birth + the fixed age, for subjects observed then (enough prior
    observation, a record at or after that date) and alive.
    """
    defn = resolve_definition(cfg)
    index = defn["index"]
    strategy = index["strategy"]
    prior_days = defn["min_prior_observation_days"]
    people = summary.select(
        "subject_id", "birth_time", "observation_start", "observation_end", "death_time"
    )
    if strategy == "fixed_age":
        # Whole days, rounded up, so the age at index is never below fixed_age.
        days = math.ceil(index["fixed_age"] * DAYS_PER_YEAR)
        at = pl.col("index_time")
        return (
            people.with_columns(index_time=pl.col("birth_time") + pl.duration(days=days))
            .filter(
                ((at - pl.col("observation_start")).dt.total_days() >= prior_days)
                & (pl.col("observation_end") >= at)
                & (pl.col("death_time").is_null() | (pl.col("death_time") > at))
            )
            .select("subject_id", "index_time")
        )
    prefixes = (
        index["baseline_code_prefixes"] if strategy == "baseline_date" else index["event_prefixes"]
    )
    eligible = (
        events.filter(matches_any(pl.col("code"), prefixes))
        .join(people, on="subject_id")
        .filter(
            (
                (pl.col("time") - pl.col("birth_time")).dt.total_days()
                >= defn["min_age"] * DAYS_PER_YEAR
            )
            & ((pl.col("time") - pl.col("observation_start")).dt.total_days() >= prior_days)
        )
    )
    if strategy != "random_visit":
        return eligible.group_by("subject_id").agg(index_time=pl.col("time").min())
    seed = index["seed"]
    return (
        eligible.group_by("subject_id")
        .agg(times=pl.col("time").unique().sort())
        .with_columns(
            u=pl.col("subject_id").map_elements(
                lambda s: _unit_hash(f"index:{seed}:{s}"), return_dtype=pl.Float64
            )
        )
        .select(
            "subject_id",
            index_time=pl.col("times").list.get(
                (pl.col("u") * pl.col("times").list.len()).floor().cast(pl.Int64)
            ),
        )
    )


def _outcome_in_window(
    events: pl.LazyFrame,
    indexed: pl.LazyFrame,
    defn: Mapping[str, Any],
    codes: pl.DataFrame | None = None,
) -> pl.LazyFrame:
    """Per indexed subject: outcome or drug at/before index, the label and the outcome time.

    The outcome time is the first qualifying event in (index, index + horizon]. With
    ``confirmation.rule`` ``two_codes`` a qualifying event counts only when another one (at a
    later time) follows within ``within_days``; with ``code_plus_drug`` a diagnosis code counts
    only when an anti-dementia drug lies within ``within_days`` before or after it. The
    confirming event may fall after the horizon: it confirms, the onset stays the first code.
    """
    o = defn["outcome"]
    horizon = pl.duration(days=defn["horizon_days"])
    within = pl.duration(days=o["confirmation"]["within_days"])
    rule = o["confirmation"]["rule"]
    is_code, is_drug = outcome_code_expr(defn, codes), drug_expr(defn, codes)
    tagged = (
        events.filter(is_code | is_drug)
        .with_columns(is_code=is_code, is_drug=is_drug)
        .join(indexed.select("subject_id", "index_time"), on="subject_id")
    )
    at_or_before = pl.col("time") <= pl.col("index_time")
    prior = tagged.group_by("subject_id").agg(
        prior_outcome=(pl.col("is_code") & at_or_before).any(),
        prior_drug=(pl.col("is_drug") & at_or_before).any(),
    )
    in_window = (pl.col("time") > pl.col("index_time")) & (
        pl.col("time") <= pl.col("index_time") + horizon
    )
    counts = pl.col("is_code") | pl.col("is_drug") if o["drugs_as_outcome"] else pl.col("is_code")
    if rule == "two_codes":
        later = (
            tagged.filter(counts & ~at_or_before)
            .select("subject_id", "index_time", "time")
            .unique(["subject_id", "time"])
            .sort("subject_id", "time")
            .with_columns(next_time=pl.col("time").shift(-1).over("subject_id"))
        )
        qualifying = later.filter(in_window & (pl.col("next_time") - pl.col("time") <= within))
    elif rule == "code_plus_drug":
        codes = tagged.filter(pl.col("is_code") & in_window).select("subject_id", "time")
        drugs = tagged.filter(pl.col("is_drug")).select("subject_id", drug_time=pl.col("time"))
        qualifying = codes.join(drugs, on="subject_id").filter(
            (pl.col("drug_time") >= pl.col("time") - within)
            & (pl.col("drug_time") <= pl.col("time") + within)
        )
    else:
        qualifying = tagged.filter(counts & in_window)
    onset = qualifying.group_by("subject_id").agg(outcome_time=pl.col("time").min())
    return (
        indexed.join(prior, on="subject_id", how="left")
        .join(onset, on="subject_id", how="left")
        .with_columns(
            pl.col("prior_outcome").fill_null(False),
            pl.col("prior_drug").fill_null(False),
            label=pl.col("outcome_time").is_not_null(),
        )
    )


def _sample_train_controls(
    frame: pl.DataFrame, controls_per_case: float, seed: int
) -> pl.DataFrame:
    """Keep every training case and ``controls_per_case`` non-cases per case (hash-ranked).

    Only the train split is touched: tuning and held_out keep their natural prevalence.
    """
    train = pl.col("split") == "train"
    n_cases = int(frame.filter(train & pl.col("label")).height)
    n_keep = math.floor(controls_per_case * n_cases)
    keep = (
        frame.filter(train & ~pl.col("label"))
        .with_columns(
            _h=pl.col("subject_id").map_elements(
                lambda s: hashlib.sha256(f"case_control:{seed}:{s}".encode()).hexdigest(),
                return_dtype=pl.String,
            )
        )
        .sort("_h")
        .head(n_keep)["subject_id"]
    )
    return frame.filter(~train | pl.col("label") | pl.col("subject_id").is_in(keep.implode()))


class _Attrition:
    """The attrition steps so far, and the error that carries them when the cohort fails."""

    def __init__(self, n_all: int, horizon_days: int) -> None:
        horizon_end = pl.col("index_time") + pl.duration(days=horizon_days)
        self.died_in_window = (
            pl.col("death_time").is_not_null()
            & (pl.col("death_time") > pl.col("index_time"))
            & (pl.col("death_time") <= horizon_end)
        )
        self.steps: list[dict[str, Any]] = [
            {
                "step": "subjects in the data",
                "n_subjects": n_all,
                "n_cases": None,
                "n_noncases": None,
            }
        ]

    def record(self, step: str, frame: pl.DataFrame, labelled: bool) -> None:
        n_cases = int(frame["label"].sum()) if labelled else None
        died = int(frame.select(self.died_in_window.sum()).item()) if labelled else None
        self.steps.append(
            {
                "step": step,
                "n_subjects": frame.height,
                "n_cases": n_cases,
                "n_noncases": frame.height - n_cases if labelled else None,
                "n_died_in_window": died,
            }
        )

    def fail(self, message: str) -> CohortError:
        return CohortError(message, self.table())

    def table(self) -> pl.DataFrame:
        return _attrition_table(self.steps)


def build_cohort(
    events: pl.LazyFrame | pl.DataFrame,
    cfg: Mapping[str, Any],
    check_splits: bool = True,
    codes: pl.DataFrame | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Build the cohort and its attrition table from MEDS events.

    Returns ``(cohort, attrition)``; cohort has one row per subject with columns
    ``subject_id, index_time, input_end_time, label, age, sex, followup_days, outcome_time,
    split``. Inputs are the events strictly before ``input_end_time`` (the index time minus
    ``cohort.blackout_days``); the outcome window is (index_time, index_time + horizon].
    ``check_splits`` requires cases and non-cases in every split (off only for tiny fixtures).
    ``codes`` is the ingest's codes table: with ``parent_codes``, ``outcome.concept_ids`` and
    ``exclusion.drug_concept_ids`` also match every descendant code (OMOP concept_ancestor).
    Attrition: one row per step, the first row is the input, counts never increase.
    """
    defn = resolve_definition(cfg)
    events = _cohort_events(events)
    summary = subject_summary(events).collect()
    if summary.height == 0:
        raise CohortError("events: the data holds no subjects; check the input path.")
    attrition = _Attrition(summary.height, defn["horizon_days"])
    known = _with_birth_and_sex(summary, attrition)
    labelled = _indexed_and_labelled(events, known, defn, codes, attrition)
    eligible = _exclusions_applied(events, labelled, defn, codes, attrition)
    followed = _followup_applied(eligible, defn, attrition)
    if check_splits and followed["label"].sum() == 0:
        raise _no_case_error(events, defn, codes, attrition)
    cohort = _split_and_sampled(followed, defn, attrition)
    if check_splits:
        _check_every_split(cohort, attrition)
    return cohort, attrition.table()


def _cohort_events(events: pl.LazyFrame | pl.DataFrame) -> pl.LazyFrame:
    """The events the cohort reads: checked, microsecond times, canonical codes."""
    events = events.lazy()
    check_events_schema(events, "events")
    return canonical_codes(
        events.select("subject_id", pl.col("time").cast(pl.Datetime("us")), "code")
    )


def _with_birth_and_sex(summary: pl.DataFrame, attrition: _Attrition) -> pl.DataFrame:
    known = summary.filter(pl.col("birth_time").is_not_null() & pl.col("sex").is_not_null())
    attrition.record("birth date and sex recorded", known, labelled=False)
    if known.height == 0:
        raise attrition.fail(
            "cohort: no subject has both a birth date (MEDS_BIRTH) and a sex (SEX/F or SEX/M); "
            "all were lost at step 'birth date and sex recorded'. See data_quality.csv for "
            "'subject without birth' / 'subject without sex' / 'unknown sex value' and map the "
            "codes at ingest (data.sex_values)."
        )
    return known


def _indexed_and_labelled(
    events: pl.LazyFrame,
    known: pl.DataFrame,
    defn: Mapping[str, Any],
    codes: pl.DataFrame | None,
    attrition: _Attrition,
) -> pl.DataFrame:
    """Subjects with an index time, labelled by the outcome window (plausible ages only)."""
    index_times = find_index_times(events, known.lazy(), defn)
    indexed = known.lazy().join(index_times, on="subject_id")
    labelled = _outcome_in_window(events, indexed, defn, codes).collect()
    attrition.record(index_step_name(defn), labelled, labelled=True)
    if labelled.height == 0:
        raise attrition.fail(
            f"cohort: no subject passes the index step under cohort.index.strategy "
            f"'{defn['index']['strategy']}' ({index_step_name(defn)}); check the index codes "
            "are in the data, cohort.min_age and cohort.min_prior_observation_days."
        )
    age_at_index = (pl.col("index_time") - pl.col("birth_time")).dt.total_days() / DAYS_PER_YEAR
    plausible = labelled.filter(age_at_index <= defn["max_age_at_index"])
    if plausible.height < labelled.height:
        attrition.record(
            f"age at index at most {defn['max_age_at_index']} years "
            "(implausible ages, cohort.max_age_at_index, dropped)",
            plausible,
            labelled=True,
        )
    return plausible


def _exclusions_applied(
    events: pl.LazyFrame,
    labelled: pl.DataFrame,
    defn: Mapping[str, Any],
    codes: pl.DataFrame | None,
    attrition: _Attrition,
) -> pl.DataFrame:
    """No outcome or anti-dementia drug at or before index, nor one of unknown date."""
    step = labelled.filter(~pl.col("prior_outcome"))
    attrition.record("no outcome code at or before index", step, labelled=True)
    step = step.filter(~pl.col("prior_drug"))
    attrition.record("no anti-dementia drug at or before index", step, labelled=True)
    unknown_date = unknown_date_expr(defn, codes)
    undated = events.filter(unknown_date).select("subject_id").unique().collect()
    if undated.height:
        step = step.filter(~pl.col("subject_id").is_in(undated["subject_id"].implode()))
        attrition.record(
            "no outcome code or anti-dementia drug of unknown date (timing unknown: excluded, "
            "not kept as a control)",
            step,
            labelled=True,
        )
    return step


def _followup_applied(
    step: pl.DataFrame, defn: Mapping[str, Any], attrition: _Attrition
) -> pl.DataFrame:
    """Follow-up in days; cases are kept whatever their follow-up, a non-case needs the whole
    horizon observed and lived."""
    horizon_end = pl.col("index_time") + pl.duration(days=defn["horizon_days"])
    observed_until = pl.min_horizontal(pl.col("observation_end"), pl.col("death_time"))
    step = step.with_columns(
        followup_days=(observed_until - pl.col("index_time")).dt.total_days().cast(pl.Int32)
    )
    died_early = pl.col("death_time").is_not_null() & (pl.col("death_time") <= horizon_end)
    step = step.filter(pl.col("label") | ~died_early)
    attrition.record(
        "non-cases alive through the horizon (deaths before it dropped)", step, labelled=True
    )
    step = step.filter(pl.col("label") | (pl.col("observation_end") >= horizon_end))
    attrition.record("non-cases observed through the horizon", step, labelled=True)
    if step.height == 0:
        raise attrition.fail(
            "cohort: no subject passes the cohort definition; "
            f"{_where_lost(attrition.steps, 'n_subjects')}. The attrition table (results/cohort/"
            "attrition.csv) shows every step. Check cohort.min_age, min_prior_observation_days "
            "and horizon_days."
        )
    return step


def _no_case_error(
    events: pl.LazyFrame,
    defn: Mapping[str, Any],
    codes: pl.DataFrame | None,
    attrition: _Attrition,
) -> CohortError:
    """Why no case is left: no outcome code in the data at all, or none in the window."""
    any_outcome = outcome_code_expr(defn, codes) | unknown_date_expr(defn, codes)
    if events.filter(any_outcome).head(1).collect().height == 0:
        return attrition.fail(outcome_absent_message(events, defn))
    return attrition.fail(
        f"cohort: no case is left; {_where_lost(attrition.steps, 'n_cases')}. Outcome codes "
        "exist in the data but none falls in the window (index, index + cohort.horizon_days]: "
        "check the index strategy and horizon, or whether the outcome codes only appear before "
        "index (prior outcomes are excluded)."
    )


def _split_and_sampled(
    step: pl.DataFrame, defn: Mapping[str, Any], attrition: _Attrition
) -> pl.DataFrame:
    """Input end, age and split per subject; training non-cases sampled when asked."""
    split_cfg = defn["split"]
    step = step.with_columns(
        input_end_time=pl.col("index_time") - pl.duration(days=defn["blackout_days"]),
        age=((pl.col("index_time") - pl.col("birth_time")).dt.total_days() / DAYS_PER_YEAR)
        .round(2)
        .cast(pl.Float64),
        split=pl.col("subject_id").map_elements(
            lambda s: split_of(
                s,
                split_cfg["seed"],
                split_cfg["tuning_fraction"],
                split_cfg["held_out_fraction"],
            ),
            return_dtype=pl.String,
        ),
    )
    ratio = defn["case_control"]["controls_per_case"]
    if ratio is not None:
        step = _sample_train_controls(step, ratio, defn["case_control"]["seed"])
        attrition.record(
            f"train split only: non-cases sampled to {ratio} per case "
            f"(seed {defn['case_control']['seed']}); tuning and held_out untouched",
            step,
            labelled=True,
        )
    return step.select(*COHORT_COLUMNS).sort("subject_id")


def _check_every_split(cohort: pl.DataFrame, attrition: _Attrition) -> None:
    for split in SPLITS:
        part = cohort.filter(pl.col("split") == split)
        if part.height == 0 or part["label"].sum() == 0 or part["label"].all():
            raise attrition.fail(
                f"cohort: split '{split}' has {part.height} subjects and "
                f"{int(part['label'].sum()) if part.height else 0} cases (the cohort has "
                f"{cohort.height} subjects, {int(cohort['label'].sum())} cases); every split needs "
                "cases and non-cases. Use more subjects or change cohort.split fractions."
            )


def _where_lost(steps: list[dict[str, Any]], column: str) -> str:
    """Which attrition step removed the most of ``column`` (subjects or cases), in words."""
    worst, lost = None, 0
    for before, after in zip(steps, steps[1:], strict=False):
        a, b = before.get(column), after.get(column)
        if a is None and column == "n_cases" and b == 0:
            return f"no subject had an outcome in the window at step '{after['step']}'"
        if a is not None and b is not None and a - b > lost:
            worst, lost = after["step"], a - b
    if worst is None:
        return "no step removed them"
    what = "cases" if column == "n_cases" else "subjects"
    return f"most {what} ({lost}) were lost at step '{worst}'"


def check_training_size(cohort: pl.DataFrame, n_train: Sequence[int]) -> None:
    """The largest grid.n_train must fit the training split: checked in the cohort job, so
    that no history, teacher or training job starts on a grid that cannot run."""
    if not n_train:
        return
    available = cohort.filter(pl.col("split") == "train").height
    largest = max(int(n) for n in n_train)
    if largest > available:
        raise CohortError(
            f"grid.n_train asks for {largest} training subjects, but the cohort's training split "
            f"has {available} (of {cohort.height} subjects). Lower grid.n_train to at most "
            f"{available}, add subjects, or change cohort.split fractions."
        )


def run_cohort_stage(
    events_path: str | Path,
    codes_path: str | Path,
    ingest_manifest: str | Path,
    settings: Mapping[str, Any],
    n_train: Sequence[int],
    attrition_path: str | Path,
    failed_attrition_path: str | Path,
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, Any]]:
    """The cohort job: check ingest's files against its manifest, build the cohort, check
    the grid's n_train, write the attrition table with exact counts (table_one publishes it
    with small cells suppressed: :func:`publish_attrition`); returns the cohort, the attrition
    table and the records (rows, digest) of the files read.

    When the cohort fails, the attrition table up to the failing step is written to
    ``failed_attrition_path`` (Snakemake deletes a failed job's outputs), suppressed per
    ``settings["small_cell_threshold"]`` as it is shown to the user, and the error names it.
    """
    read = {
        name: check_manifest(ingest_manifest, name, path, "ingest")
        for name, path in (("events", events_path), ("codes", codes_path))
    }
    events = pl.scan_parquet(events_path)
    # parent_codes of the ingest's code table extend outcome.concept_ids to their descendants.
    codes = pl.read_parquet(codes_path)
    threshold = settings["small_cell_threshold"]
    attrition = None
    try:
        cohort, attrition = build_cohort(events, settings, codes=codes)
        check_training_size(cohort, n_train)
    except CohortError as error:
        table = error.attrition if error.attrition is not None else attrition
        if table is None:
            raise
        Path(failed_attrition_path).parent.mkdir(parents=True, exist_ok=True)
        suppress_small_cells(table, ATTRITION_COUNTS, threshold).write_csv(failed_attrition_path)
        raise CohortError(
            f"{error} The attrition table up to this point: {failed_attrition_path}.", table
        ) from None
    Path(attrition_path).parent.mkdir(parents=True, exist_ok=True)
    attrition.write_csv(attrition_path)
    Path(failed_attrition_path).unlink(missing_ok=True)
    return cohort, attrition, read


def publish_attrition(
    exact_path: str | Path, threshold: int | None, published_path: str | Path
) -> pl.DataFrame:
    """attrition.csv as published: the cohort job's exact counts with small cells suppressed
    (:func:`suppress_small_cells`). A job of its own (table_one's), so that changing
    cohort.small_cell_threshold rewrites the published tables and reruns no cohort."""
    counts = {column: pl.Int64 for column in ATTRITION_COUNTS}
    exact = pl.read_csv(exact_path, schema_overrides={"step": pl.String, **counts})
    published = suppress_small_cells(exact, ATTRITION_COUNTS, threshold)
    published.write_csv(published_path)
    return published


def _attrition_table(steps: list[dict[str, Any]]) -> pl.DataFrame:
    """Steps as a table, with the subjects, cases and non-cases each step removed."""
    given = ("n_subjects", "n_cases", "n_noncases", "n_died_in_window")
    frame = pl.DataFrame(
        [{"step": s["step"], **{c: s.get(c) for c in given}} for s in steps],
        schema={"step": pl.String, **dict.fromkeys(given, pl.Int64)},
    )

    def removed(column: str) -> pl.Expr:
        return pl.col(column).shift(1) - pl.col(column)

    return frame.with_columns(
        n_excluded=removed("n_subjects").fill_null(0),
        n_cases_excluded=removed("n_cases"),
        n_noncases_excluded=removed("n_noncases"),
    ).select("step", *ATTRITION_COUNTS)


def training_subset(cohort: pl.DataFrame, n_train: int, seed: int) -> pl.DataFrame:
    """The first ``n_train`` training subjects of a seeded, label-stratified order.

    Subjects are ordered by a hash of (seed, id) within each label and the two classes are
    interleaved by rank, so every prefix keeps the training prevalence and smaller subsets are
    nested in larger ones: data scale is the only thing that changes between sizes.
    """
    train = cohort.filter(pl.col("split") == "train")
    if n_train > train.height:
        raise CohortError(
            f"grid.n_train asks for {n_train} training subjects, but the training split has only "
            f"{train.height}. Lower grid.n_train or add subjects."
        )
    keyed = train.with_columns(
        _hash=pl.col("subject_id").map_elements(
            lambda s: hashlib.sha256(f"subset:{seed}:{s}".encode()).hexdigest(),
            return_dtype=pl.String,
        )
    )
    keyed = keyed.with_columns(
        _rank=(pl.col("_hash").rank("ordinal").over("label") - 0.5) / pl.len().over("label")
    )
    return keyed.sort("_rank", "label", "_hash").head(n_train).drop("_hash", "_rank")


def restrict_training(cohort: pl.DataFrame, eligible: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """The cohort whose train split keeps only ``eligible`` subjects (a ``subject_id`` frame).

    Used when the teacher drops subjects (no usable rationale in some style): every format and
    baseline of a matched configuration must still train on the same subjects, so the subjects
    go from the training pool of all of them. Tuning and held_out are never touched, so the
    evaluation set stays the same. Returns the cohort and how many train subjects left.
    """
    keep = pl.col("subject_id").is_in(eligible["subject_id"].implode())
    removed = cohort.filter((pl.col("split") == "train") & ~keep).height
    return cohort.filter((pl.col("split") != "train") | keep), removed


def top_conditions(
    cohort: pl.DataFrame, history_codes: pl.DataFrame, n: int = TOP_CONDITIONS
) -> pl.DataFrame:
    """``category, name, n_subjects``: the ``n`` ICD-10 3-character categories (``I10``) that
    the most cohort subjects have among their input events; ties by category code."""
    categories = (
        history_codes.join(cohort.select("subject_id"), on="subject_id", how="semi")
        .select("subject_id", category=pl.col("code").str.extract(ICD10_CATEGORY, 1))
        .drop_nulls()
        .unique()
    )
    top = (
        categories.group_by("category")
        .agg(n_subjects=pl.len().cast(pl.Int64))
        .sort(["n_subjects", "category"], descending=[True, False])
        .head(n)
    )
    names = describe_many(f"ICD10/{c}" for c in top["category"])
    return top.with_columns(
        name=pl.col("category").map_elements(
            lambda c: names.get(f"ICD10/{c}") or c, return_dtype=pl.String
        )
    ).select("category", "name", "n_subjects")


def table_one(
    cohort: pl.DataFrame,
    history_codes: pl.DataFrame,
    risk_factor_codes: Mapping[str, Sequence[str]] | None = None,
) -> pl.DataFrame:
    """Table 1 by split and label: size, age, sex, follow-up, risk-factor prevalence and the
    cohort's most frequent conditions.

    ``history_codes`` holds ``subject_id, code`` of input events (strictly before index).
    Risk factors match their ICD-10 prefixes (:data:`codes.RISK_FACTORS`) plus any codes
    ``risk_factor_codes`` adds per factor (``cohort.risk_factor_codes``: OMOP concepts or
    another vocabulary's codes). A factor that cannot be matched in these data (no ICD-10 code
    in any history and no added codes for it) is null, shown as n/a, never 0%.
    Conditions: the :data:`TOP_CONDITIONS` ICD-10 3-character categories most prevalent in the
    whole cohort (:func:`top_conditions`), the same in every row, as ``condition k`` (code and
    name), ``n condition k`` and ``% condition k`` (subjects of the row with the category);
    unused slots (fewer categories in the data) are null.
    """
    extra = risk_factor_codes or {}
    table, factor_cols = _with_risk_factors(cohort, history_codes, extra)
    table, condition_cols = _with_top_conditions(table, cohort, history_codes)
    return (
        table.group_by("split", "label")
        .agg(
            pl.len().alias("n"),
            pl.col("age").mean().round(1).alias("age mean"),
            pl.col("age").std().round(1).alias("age sd"),
            (pl.col("sex") == "F").mean().mul(100).round(1).alias("% female"),
            pl.col("followup_days").median().alias("follow-up days median"),
            *factor_cols,
            *condition_cols,
        )
        .with_columns(pl.col("split").cast(pl.Enum(list(SPLITS))))
        .sort("split", "label")
        .with_columns(pl.col("split").cast(pl.String))
    )


def _with_risk_factors(
    cohort: pl.DataFrame, history_codes: pl.DataFrame, extra: Mapping[str, Sequence[str]]
) -> tuple[pl.DataFrame, list[pl.Expr]]:
    """The cohort with a flag per risk factor, and each factor's % column (null when these
    data cannot show the factor)."""
    unknown = sorted(set(extra) - set(RISK_FACTORS))
    if unknown:
        raise CohortError(
            f"cohort.risk_factor_codes: unknown risk factor(s) {unknown}; known: "
            f"{', '.join(RISK_FACTORS)}."
        )
    has_icd10 = bool(history_codes["code"].str.starts_with("ICD10/").any())
    mappable = {name: has_icd10 or bool(extra.get(name)) for name in RISK_FACTORS}
    table = cohort
    for name, factor in RISK_FACTORS.items():
        prefixes = [*factor.prefixes, *extra.get(name, [])]
        has = (
            history_codes.filter(matches_any(pl.col("code"), prefixes))
            .select("subject_id")
            .unique()
            .with_columns(pl.lit(True).alias(name))
        )
        table = table.join(has, on="subject_id", how="left")
    factor_cols = [
        (
            pl.col(name).fill_null(False).mean().mul(100).round(1)
            if mappable[name]
            else pl.lit(None, dtype=pl.Float64)
        ).alias(f"% {RISK_FACTORS[name].label}")
        for name in RISK_FACTORS
    ]
    return table, factor_cols


def _with_top_conditions(
    table: pl.DataFrame, cohort: pl.DataFrame, history_codes: pl.DataFrame
) -> tuple[pl.DataFrame, list[pl.Expr]]:
    """``table`` with a flag per top condition, and the name, n and % columns of each slot
    (null in the slots the data cannot fill)."""
    top = top_conditions(cohort, history_codes)
    condition_cols: list[pl.Expr] = []
    for k in range(1, TOP_CONDITIONS + 1):
        if k > top.height:
            condition_cols += [
                pl.lit(None, dtype=pl.String).alias(f"condition {k}"),
                pl.lit(None, dtype=pl.Int64).alias(f"n condition {k}"),
                pl.lit(None, dtype=pl.Float64).alias(f"% condition {k}"),
            ]
            continue
        category, name = top["category"][k - 1], top["name"][k - 1]
        has = (
            history_codes.filter(pl.col("code").str.extract(ICD10_CATEGORY, 1) == category)
            .select("subject_id")
            .unique()
            .with_columns(pl.lit(True).alias(f"_c{k}"))
        )
        table = table.join(has, on="subject_id", how="left")
        flag = pl.col(f"_c{k}").fill_null(False)
        condition_cols += [
            pl.lit(f"{category} {name}" if name != category else category).alias(f"condition {k}"),
            flag.sum().cast(pl.Int64).alias(f"n condition {k}"),
            flag.mean().mul(100).round(1).alias(f"% condition {k}"),
        ]
    return table, condition_cols


def suppress_table_one(table: pl.DataFrame, threshold: int | None) -> pl.DataFrame:
    """Table 1 as published: small counts shown as ``"<threshold>"`` (:func:`suppress_small_cells`
    on :data:`TABLE_ONE_COUNTS`) and the percentage of each suppressed condition count blanked,
    since the row's n would give the count back."""
    if threshold is None or threshold <= 1:
        return table
    small = {
        pct: (pl.col(count) > 0) & (pl.col(count) < threshold)
        for pct, count in TABLE_ONE_PERCENTS.items()
        if pct in table.columns
    }
    blanked = table.with_columns(
        pl.when(hidden).then(None).otherwise(pl.col(pct)).alias(pct)
        for pct, hidden in small.items()
    )
    return suppress_small_cells(blanked, TABLE_ONE_COUNTS, threshold)


def suppress_small_cells(
    frame: pl.DataFrame, columns: Sequence[str], threshold: int | None
) -> pl.DataFrame:
    """Counts from 1 to ``threshold - 1`` in ``columns`` shown as ``"<threshold>"``.

    The listed columns become strings (other counts printed as integers, nulls kept); zero is
    not a small cell and stays "0". ``threshold`` null (or 1) returns the frame unchanged.
    This is primary suppression only: a suppressed cell can still be derived from totals
    shown elsewhere (for example n_subjects minus n_noncases), so check published tables.
    """
    if threshold is None or threshold <= 1:
        return frame
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise CohortError(
            f"small-cell suppression: column(s) {missing} are not in the table "
            f"(columns: {', '.join(frame.columns)})."
        )
    small = f"<{threshold}"
    return frame.with_columns(
        pl.when(pl.col(c).is_null())
        .then(pl.lit(None, dtype=pl.String))
        .when((pl.col(c) > 0) & (pl.col(c) < threshold))
        .then(pl.lit(small))
        .otherwise(pl.col(c).round(0).cast(pl.Int64).cast(pl.String))
        .alias(c)
        for c in columns
    )
