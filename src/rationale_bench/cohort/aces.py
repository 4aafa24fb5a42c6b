"""The cohort definition as an ACES task configuration (github.com/justin13601/ACES).

ACES ("Automatic Cohort Extraction System", PyPI ``es-aces``) extracts labelled prediction
times from MEDS data with a YAML of ``predicates`` (code matchers), a ``trigger`` predicate
and ``windows`` around it (``start``/``end`` relative to the trigger or another window,
inclusivity flags, ``has`` count constraints, one ``label`` and one ``index_timestamp``).
:func:`aces_task` writes our cohort definition in that language so other MEDS tools can
cross-check it. Two differences are inherent and written into the file as comments:

- ACES returns every trigger that passes the windows; rationale-bench keeps one per subject
  (the first for ``first_visit`` / ``baseline_date``, a seeded one for ``random_visit``).
  Because "no outcome at or before index" and "follow-up to the horizon" only get harder at
  later triggers, the first ACES row of a subject is our first-visit index.
- ACES has no per-label constraint, so the follow-up window applies to cases too; we keep
  cases whatever their follow-up (PLP ``includeAllOutcomes``). On the subjects both keep, the
  labels agree; the subjects only we keep are cases with short follow-up.

With the ingest's codes table (``codes``), ``outcome.concept_ids`` and
``exclusion.drug_concept_ids`` are written as the exact list of codes they match (the concepts
and their descendants through parent_codes), since ACES has no concept hierarchy of its own.

Case:control sampling and splits are not part of a task definition and are not exported.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from rationale_bench.cohort.build import (
    DAYS_PER_YEAR,
    OMOP_PREFIX,
    STATIC_CODES,
    concept_codes,
    outcome_prefixes,
    resolve_definition,
)


def prefix_regex(
    prefixes: Sequence[str],
    regex: str | None = None,
    concept_ids: Sequence[int] = (),
    codes: pl.DataFrame | None = None,
) -> str:
    """One regex (searched, as ACES does with polars ``str.contains``) for a code set.

    With ``codes`` (parent_codes), concept ids match their descendant codes as well.
    """
    parts = []
    if prefixes:
        parts.append("^(?:" + "|".join(re.escape(p) for p in prefixes) + ")")
    if regex:
        parts.append(f"(?:{regex})")
    if concept_ids:
        ids = "|".join(str(int(c)) for c in concept_ids)
        parts.append(f"^{re.escape(OMOP_PREFIX)}(?:{ids})$")
        own = {f"{OMOP_PREFIX}{int(c)}" for c in concept_ids}
        below = [c for c in concept_codes(concept_ids, codes) if c not in own]
        if below:
            parts.append("^(?:" + "|".join(re.escape(c) for c in below) + ")$")
    if not parts:
        raise ValueError("an ACES predicate needs at least one prefix, regex or concept id.")
    return "|".join(parts)


def not_prefix_regex(prefixes: Iterable[str], exact: Iterable[str] = ()) -> str:
    """A regex matching codes that start with none of ``prefixes`` and equal none of ``exact``.

    ACES evaluates regexes with polars (Rust ``regex``), which has no look-around, so the
    complement is spelt out over the trie of the banned strings: at each node, either the code
    ends there (unless that is an ``exact`` code) or its next character leaves the trie.
    """
    banned, words = set(prefixes), set(exact)
    alternatives: list[str] = []

    def walk(stem: str) -> None:
        children = sorted(
            {w[len(stem)] for w in banned | words if w.startswith(stem) and w != stem}
        )
        if stem not in words:
            alternatives.append(re.escape(stem) + "$")
        leave = "[^" + "".join(re.escape(c) for c in children) + "]" if children else "."
        alternatives.append(re.escape(stem) + leave)
        for child in children:
            if stem + child not in banned:
                walk(stem + child)

    walk("")
    return "^(?:" + "|".join(alternatives) + ")"


def _days(n: int) -> str:
    return f"{n} days"


def aces_task(cfg: Mapping[str, Any], codes: pl.DataFrame | None = None) -> dict[str, Any]:
    """The ACES task configuration (predicates, trigger, windows) of a cohort definition.

    ``codes`` (the ingest's codes table) expands concept ids to their descendant codes.
    """
    defn = resolve_definition(cfg)
    predicates, label = _predicates(defn, codes)
    if defn["index"]["strategy"] == "fixed_age":
        trigger, at, windows = "birth", "to_index_age.end", _fixed_age_windows(defn)
    else:
        predicates["index_event"] = {"code": {"regex": prefix_regex(_index_prefixes(defn))}}
        trigger, at, windows = "index_event", "trigger", _index_event_windows(defn)
    windows |= _eligibility_windows(defn, at)
    windows |= _label_windows(defn, at, label)
    return {"predicates": predicates, "trigger": trigger, "windows": windows}


def _predicates(defn: Mapping[str, Any], codes: pl.DataFrame | None) -> tuple[dict[str, Any], str]:
    """The code predicates every task uses, and the name of the one that is the label."""
    outcome = defn["outcome"]
    predicates: dict[str, Any] = {
        "birth": {"code": "MEDS_BIRTH"},
        "death": {"code": "MEDS_DEATH"},
        # Events that open observation (not birth, sex or death) and any record at all.
        "observed": {"code": {"regex": not_prefix_regex(STATIC_CODES, ["MEDS_DEATH"])}},
        "recorded": {"code": {"regex": not_prefix_regex(STATIC_CODES)}},
        "outcome_code": {
            "code": {
                "regex": prefix_regex(
                    outcome_prefixes(defn), outcome["regex"], outcome["concept_ids"], codes
                )
            }
        },
        "anti_dementia_drug": {
            "code": {
                "regex": prefix_regex(
                    defn["exclusion"]["drug_prefixes"],
                    defn["exclusion"]["drug_regex"],
                    defn["exclusion"]["drug_concept_ids"],
                    codes,
                )
            }
        },
    }
    if not outcome["drugs_as_outcome"]:
        return predicates, "outcome_code"
    predicates["outcome_or_drug"] = {"expr": "or(outcome_code, anti_dementia_drug)"}
    return predicates, "outcome_or_drug"


def _index_prefixes(defn: Mapping[str, Any]) -> Sequence[str]:
    """The codes an index event starts with: the baseline visit or any eligible event."""
    index = defn["index"]
    if index["strategy"] == "baseline_date":
        return index["baseline_code_prefixes"]
    return index["event_prefixes"]


def _fixed_age_windows(defn: Mapping[str, Any]) -> dict[str, Any]:
    """fixed_age: the index is birth plus the age; the subject must be recorded from then on."""
    days = math.ceil(defn["index"]["fixed_age"] * DAYS_PER_YEAR)
    return {
        "to_index_age": {
            "start": "trigger",
            "end": f"start + {_days(days)}",
            "start_inclusive": True,
            "end_inclusive": True,
        },
        "observed_at_or_after_index": {
            "start": "to_index_age.end",
            "end": None,
            "start_inclusive": True,
            "end_inclusive": True,
            "has": {"recorded": "(1, None)"},
        },
    }


def _index_event_windows(defn: Mapping[str, Any]) -> dict[str, Any]:
    """Index on an event: born at least cohort.min_age before it (no window when 0)."""
    age_days = math.ceil(defn["min_age"] * DAYS_PER_YEAR)
    if age_days <= 0:
        return {}
    return {
        "born_min_age_before": {
            "start": None,
            "end": f"trigger - {_days(age_days)}",
            "start_inclusive": True,
            "end_inclusive": True,
            "has": {"birth": "(1, None)"},
        }
    }


def _eligibility_windows(defn: Mapping[str, Any], at: str) -> dict[str, Any]:
    """Observed long enough before the index ``at``, and no outcome (or anti-dementia drug;
    for fixed_age no death either) at or before it."""
    prior_days = defn["min_prior_observation_days"]
    no_prior = {"outcome_code": "(None, 0)", "anti_dementia_drug": "(None, 0)"}
    if defn["index"]["strategy"] == "fixed_age":
        no_prior["death"] = "(None, 0)"
    return {
        "prior_observation": {
            "start": None,
            "end": f"{at} - {_days(prior_days)}" if prior_days > 0 else at,
            "start_inclusive": True,
            "end_inclusive": True,
            "has": {"observed": "(1, None)"},
        },
        "no_prior_outcome": {
            "start": None,
            "end": at,
            "start_inclusive": True,
            "end_inclusive": True,
            "has": no_prior,
        },
    }


def _label_windows(defn: Mapping[str, Any], at: str, label: str) -> dict[str, Any]:
    """Inputs strictly before index minus the blackout, the ``label`` over the horizon after
    the index ``at``, and a record after the horizon (follow-up)."""
    blackout = defn["blackout_days"]
    return {
        "input": {
            "start": None,
            "end": f"{at} - {_days(blackout)}" if blackout > 0 else at,
            "start_inclusive": True,
            "end_inclusive": False,
        },
        "target": {
            "start": at,
            "end": f"start + {_days(defn['horizon_days'])}",
            "start_inclusive": False,
            "end_inclusive": True,
            "label": label,
            "index_timestamp": "start",
        },
        "follow_up": {
            "start": "target.end",
            "end": None,
            "start_inclusive": True,
            "end_inclusive": True,
            "has": {"recorded": "(1, None)"},
        },
    }


def _header(defn: Mapping[str, Any]) -> str:
    rule = defn["outcome"]["confirmation"]["rule"]
    lines = [
        "ACES task configuration exported by rationale-bench from the cohort section of the",
        "config (https://github.com/justin13601/ACES, configuration language of es-aces 0.7).",
        f"Index strategy: {defn['index']['strategy']}. ACES returns every trigger that passes",
        "the windows; rationale-bench keeps one per subject (the first, or for random_visit a",
        "seeded draw). index_timestamp = the index time; inputs are events strictly before",
        "input.end (index - cohort.blackout_days).",
        "Difference: follow_up applies to cases too in ACES; rationale-bench keeps cases whatever",
        "their follow-up, so compare labels on the subjects both keep.",
    ]
    if rule != "none":
        lines.append(
            f"Not expressible in ACES and not exported: confirmation rule '{rule}' "
            f"(within {defn['outcome']['confirmation']['within_days']} days)."
        )
    if defn["case_control"]["controls_per_case"] is not None:
        lines.append("Not exported: the case:control sampling of the train split.")
    return "".join(f"# {line}\n" for line in lines)


def write_aces_task(
    cfg: Mapping[str, Any], path: str | Path, codes: pl.DataFrame | None = None
) -> Path:
    """Write :func:`aces_task` as YAML with a header on what ACES cannot express."""
    defn = resolve_definition(cfg)
    text = _header(defn) + yaml.safe_dump(aces_task(defn, codes), sort_keys=False, width=100)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return out


def compare_labels(
    ours: pl.DataFrame, aces_labels: pl.DataFrame, horizon_days: int
) -> dict[str, Any]:
    """Agreement of our cohort with ACES output on the same MEDS data and task.

    ``ours``: ``subject_id, index_time, label, followup_days`` (cohort.parquet);
    ``aces_labels``: ACES's MEDS label file (``subject_id, prediction_time, boolean_value``),
    one row per eligible trigger: each subject's first is taken (see the module docstring).
    Returns the subject counts of each side, the labels compared on the subjects both keep
    (exact match rate and a confusion table keyed ``"ours=<bool> aces=<bool>"``) and the
    reason for every difference:

    - ``index differs``: both keep the subject at different index times;
    - ``label differs at the same index``: both keep it at the same time, the labels differ;
    - ``only ours: case with short follow-up``: expected (ACES applies follow-up to cases);
    - ``only ours: other`` and ``only ACES``: unexpected, the definitions disagree.
    """
    first = (
        aces_labels.select(
            "subject_id",
            aces_time=pl.col("prediction_time").cast(pl.Datetime("us")),
            aces_label=pl.col("boolean_value").cast(pl.Boolean),
        )
        .sort("subject_id", "aces_time")
        .unique("subject_id", keep="first", maintain_order=True)
    )
    mine = ours.select(
        "subject_id",
        index_time=pl.col("index_time").cast(pl.Datetime("us")),
        label=pl.col("label").cast(pl.Boolean),
        followup_days="followup_days",
    )
    both = mine.join(first, on="subject_id", how="inner")
    only_ours = mine.join(first, on="subject_id", how="anti")
    only_aces = first.join(mine, on="subject_id", how="anti")
    same_index = pl.col("index_time") == pl.col("aces_time")
    confusion = {
        f"ours={a} aces={b}": both.filter(
            (pl.col("label") == a) & (pl.col("aces_label") == b)
        ).height
        for a in (True, False)
        for b in (True, False)
    }
    short_case = pl.col("label") & (pl.col("followup_days") < horizon_days)
    reasons = {
        "index differs": both.filter(~same_index).height,
        "label differs at the same index": both.filter(
            same_index & (pl.col("label") != pl.col("aces_label"))
        ).height,
        "only ours: case with short follow-up": only_ours.filter(short_case).height,
        "only ours: other": only_ours.filter(~short_case).height,
        "only ACES": only_aces.height,
    }
    agree = both.filter(pl.col("label") == pl.col("aces_label")).height
    return {
        "n_ours": mine.height,
        "n_aces_rows": aces_labels.height,
        "n_aces_subjects": first.height,
        "n_compared": both.height,
        "n_same_index": both.filter(same_index).height,
        "label_agreement": agree / both.height if both.height else float("nan"),
        "confusion": confusion,
        "reasons": reasons,
        "examples": {
            "index differs": both.filter(~same_index)["subject_id"].head(5).to_list(),
            "label differs at the same index": both.filter(
                same_index & (pl.col("label") != pl.col("aces_label"))
            )["subject_id"]
            .head(5)
            .to_list(),
            "only ours: other": only_ours.filter(~short_case)["subject_id"].head(5).to_list(),
            "only ACES": only_aces["subject_id"].head(5).to_list(),
        },
    }
