"""Cohort: index time, exclusions, five-year labels, censoring, patient-level splits.

Follows OHDSI PatientLevelPrediction conventions (see ../shared/REFERENCES.md 7.1):
- the index is the first visit at which the subject is old enough and has enough prior
  observation; inputs are events strictly before the index time;
- the outcome window is (index, index + horizon]: nothing at the index time can be both
  input and outcome;
- subjects with the outcome or an anti-dementia drug at or before index are excluded;
- cases are kept whatever their follow-up, non-cases need full follow-up (death or the end of
  observation before the horizon drops them, and the attrition table counts them).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl

from rationale_bench.codes import RISK_FACTORS, matches_any

SPLITS = ("train", "tuning", "held_out")
DAYS_PER_YEAR = 365.25
EVENT_COLUMNS = {"subject_id": pl.Int64, "time": pl.Datetime, "code": pl.String}
# Codes that describe the person rather than an encounter; they do not open observation.
STATIC_CODES = ("MEDS_BIRTH", "SEX/")


class CohortError(ValueError):
    """The data or the cohort definition cannot give a valid cohort."""


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
    digest = hashlib.sha256(f"{seed}:{subject_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
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


def find_index_times(
    events: pl.LazyFrame, summary: pl.LazyFrame, cfg: Mapping[str, Any]
) -> pl.LazyFrame:
    """The first index-event time at which age and prior observation are both sufficient."""
    min_age_days = cfg["min_age"] * DAYS_PER_YEAR
    return (
        events.filter(matches_any(pl.col("code"), cfg["index_event_prefixes"]))
        .join(summary.select("subject_id", "birth_time", "observation_start"), on="subject_id")
        .filter(
            ((pl.col("time") - pl.col("birth_time")).dt.total_days() >= min_age_days)
            & (
                (pl.col("time") - pl.col("observation_start")).dt.total_days()
                >= cfg["min_prior_observation_days"]
            )
        )
        .group_by("subject_id")
        .agg(index_time=pl.col("time").min())
    )


def _first_time(events: pl.LazyFrame, prefixes: Sequence[str], name: str) -> pl.LazyFrame:
    return (
        events.filter(matches_any(pl.col("code"), prefixes))
        .group_by("subject_id")
        .agg(pl.col("time").min().alias(name))
    )


def _outcome_in_window(
    events: pl.LazyFrame, indexed: pl.LazyFrame, cfg: Mapping[str, Any]
) -> pl.LazyFrame:
    """Per indexed subject: outcome or drug at/before index, the label and the outcome time."""
    horizon = pl.duration(days=cfg["horizon_days"])
    outcome = (
        events.filter(matches_any(pl.col("code"), cfg["outcome_code_prefixes"]))
        .join(indexed.select("subject_id", "index_time"), on="subject_id")
        .group_by("subject_id")
        .agg(
            prior_outcome=(pl.col("time") <= pl.col("index_time")).any(),
            outcome_time=pl.col("time")
            .filter(
                (pl.col("time") > pl.col("index_time"))
                & (pl.col("time") <= pl.col("index_time") + horizon)
            )
            .min(),
        )
    )
    drug = (
        events.filter(matches_any(pl.col("code"), cfg["exclusion_drug_prefixes"]))
        .join(indexed.select("subject_id", "index_time"), on="subject_id")
        .group_by("subject_id")
        .agg(prior_drug=(pl.col("time") <= pl.col("index_time")).any())
    )
    return (
        indexed.join(outcome, on="subject_id", how="left")
        .join(drug, on="subject_id", how="left")
        .with_columns(
            pl.col("prior_outcome").fill_null(False),
            pl.col("prior_drug").fill_null(False),
            label=pl.col("outcome_time").is_not_null(),
        )
    )


def build_cohort(
    events: pl.LazyFrame | pl.DataFrame, cfg: Mapping[str, Any], check_splits: bool = True
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Build the cohort and its attrition table from MEDS events.

    Returns ``(cohort, attrition)``; cohort has one row per subject with columns
    ``subject_id, index_time, label, age, sex, followup_days, outcome_time, split``.
    ``check_splits`` requires cases and non-cases in every split (off only for tiny fixtures).
    """
    events = events.lazy()
    check_events_schema(events, "events")
    events = events.select("subject_id", pl.col("time").cast(pl.Datetime("us")), "code")
    summary = subject_summary(events).collect()
    n_all = summary.height
    if n_all == 0:
        raise CohortError("events: the data holds no subjects; check the input path.")

    steps: list[dict[str, Any]] = [
        {"step": "subjects in the data", "n_subjects": n_all, "n_cases": None, "n_noncases": None}
    ]

    def record(step: str, frame: pl.DataFrame, labelled: bool) -> None:
        n_cases = int(frame["label"].sum()) if labelled else None
        steps.append(
            {
                "step": step,
                "n_subjects": frame.height,
                "n_cases": n_cases,
                "n_noncases": frame.height - n_cases if labelled else None,
            }
        )

    known = summary.filter(pl.col("birth_time").is_not_null() & pl.col("sex").is_not_null())
    record("birth date and sex recorded", known, labelled=False)

    index_times = find_index_times(events, known.lazy(), cfg)
    indexed = known.lazy().join(index_times, on="subject_id")
    labelled = _outcome_in_window(events, indexed, cfg).collect()
    record(
        f"eligible index visit (age >= {cfg['min_age']}, >= {cfg['min_prior_observation_days']} "
        "days of prior observation)",
        labelled,
        labelled=True,
    )

    step = labelled.filter(~pl.col("prior_outcome"))
    record("no outcome code at or before index", step, labelled=True)
    step = step.filter(~pl.col("prior_drug"))
    record("no anti-dementia drug at or before index", step, labelled=True)

    horizon_end = pl.col("index_time") + pl.duration(days=cfg["horizon_days"])
    observed_until = pl.min_horizontal(pl.col("observation_end"), pl.col("death_time"))
    step = step.with_columns(
        followup_days=(observed_until - pl.col("index_time")).dt.total_days().cast(pl.Int32)
    )
    # Cases are kept whatever their follow-up; a non-case needs the whole horizon observed.
    died_early = pl.col("death_time").is_not_null() & (pl.col("death_time") <= horizon_end)
    step = step.filter(pl.col("label") | ~died_early)
    record("non-cases alive through the horizon (deaths before it dropped)", step, labelled=True)
    step = step.filter(pl.col("label") | (pl.col("observation_end") >= horizon_end))
    record("non-cases observed through the horizon", step, labelled=True)

    if step.height == 0:
        raise CohortError(
            "cohort: no subject passes the cohort definition; the attrition table shows where "
            "they are lost. Check cohort.min_age, min_prior_observation_days and horizon_days."
        )

    split_cfg = cfg["split"]
    cohort = (
        step.with_columns(
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
        .select(
            "subject_id",
            "index_time",
            "label",
            "age",
            "sex",
            "followup_days",
            "outcome_time",
            "split",
        )
        .sort("subject_id")
    )
    for split in SPLITS if check_splits else ():
        part = cohort.filter(pl.col("split") == split)
        if part.height == 0 or part["label"].sum() == 0 or part["label"].all():
            raise CohortError(
                f"cohort: split '{split}' has {part.height} subjects and "
                f"{int(part['label'].sum()) if part.height else 0} cases; every split needs cases "
                "and non-cases. Use more subjects or change cohort.split fractions."
            )
    attrition = pl.DataFrame(steps, schema_overrides={"n_cases": pl.Int64, "n_noncases": pl.Int64})
    attrition = attrition.with_columns(
        n_excluded=(pl.col("n_subjects").shift(1) - pl.col("n_subjects")).fill_null(0)
    )
    return cohort, attrition


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


def table_one(cohort: pl.DataFrame, history_codes: pl.DataFrame) -> pl.DataFrame:
    """Table 1 by split and label: size, age, sex, follow-up and risk-factor prevalence.

    ``history_codes`` holds ``subject_id, code`` of input events (strictly before index).
    """
    flags = []
    for name, factor in RISK_FACTORS.items():
        has = (
            history_codes.filter(matches_any(pl.col("code"), factor.prefixes))
            .select("subject_id")
            .unique()
            .with_columns(pl.lit(True).alias(name))
        )
        flags.append(has)
    table = cohort
    for flag in flags:
        table = table.join(flag, on="subject_id", how="left")
    factor_cols = [
        pl.col(name)
        .fill_null(False)
        .mean()
        .mul(100)
        .round(1)
        .alias(f"% {RISK_FACTORS[name].label}")
        for name in RISK_FACTORS
    ]
    return (
        table.group_by("split", "label")
        .agg(
            pl.len().alias("n"),
            pl.col("age").mean().round(1).alias("age mean"),
            pl.col("age").std().round(1).alias("age sd"),
            (pl.col("sex") == "F").mean().mul(100).round(1).alias("% female"),
            pl.col("followup_days").median().alias("follow-up days median"),
            *factor_cols,
        )
        .with_columns(pl.col("split").cast(pl.Enum(list(SPLITS))))
        .sort("split", "label")
        .with_columns(pl.col("split").cast(pl.String))
    )
