"""Clinician review of teacher rationales (the reference study's expert annotation).

A seeded, stratified sample (per teacher, style and label) is exported as a blinded sheet: the
reviewer sees an item id, the outcome the rationale explains, an excerpt of the history and the
rationale, never which teacher or style wrote it (that is in a separate key file). Each item is
rated on the two criteria of the reference study, medical accuracy and faithful grounding in
patient-specific evidence, from 1 to `scale_max`, with free comments. Filled sheets from one or
more reviewers give mean scores per teacher and style and the agreement between reviewers
(Cohen's kappa for each pair, Fleiss' kappa across all).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import polars as pl

from rationale_bench.text.serialize import history_of

CRITERIA = ("medical_accuracy", "faithful_grounding")
CRITERIA_TEXT = {
    "medical_accuracy": "Is the medical reasoning correct (facts, risk factors, their direction)?",
    "faithful_grounding": (
        "Does the rationale rest on evidence actually present in this patient's history, "
        "without inventing findings?"
    ),
}
OUTCOME_TEXT = {
    True: "ADRD diagnosis within 5 years",
    False: "no ADRD diagnosis within 5 years",
}
KEY_COLUMNS = ("item_id", "subject_id", "teacher", "style", "label")


class ReviewError(ValueError):
    """A review sheet or sample cannot be used as given."""


def review_sample(
    rationales: pl.DataFrame,
    histories: pl.DataFrame,
    per_stratum: int,
    seed: int,
    history_lines: int,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(blinded sheet, key): up to `per_stratum` rationales per (teacher, style, label), in a
    seeded random order that mixes strata, so position gives nothing away."""
    needed = {"subject_id", "label", "style", "teacher", "rationale"}
    missing = needed - set(rationales.columns)
    if missing:
        raise ReviewError(f"rationale table lacks columns {sorted(missing)}")
    if rationales.is_empty():
        raise ReviewError("no rationales to sample for review")
    parts = []
    for i, (_, group) in enumerate(
        sorted(
            rationales.sort("subject_id").group_by(["teacher", "style", "label"]),
            key=lambda kv: tuple(str(k) for k in kv[0]),
        )
    ):
        parts.append(group.sample(n=min(per_stratum, group.height), seed=seed + i))
    sample = pl.concat(parts).sample(fraction=1.0, shuffle=True, seed=seed)
    width = max(3, len(str(sample.height)))
    sample = sample.with_columns(
        item_id=pl.format("R{}", (pl.int_range(pl.len()) + 1).cast(pl.String).str.zfill(width))
    )
    text = {
        row["subject_id"]: history_of(row, history_lines) for row in histories.iter_rows(named=True)
    }
    absent = [s for s in sample["subject_id"] if s not in text]
    if absent:
        raise ReviewError(f"{len(absent)} sampled subjects have no history (first: {absent[:5]})")
    sheet = sample.select(
        "item_id",
        outcome=pl.col("label").replace_strict(OUTCOME_TEXT, return_dtype=pl.String),
        history_excerpt=pl.col("subject_id").replace_strict(text, return_dtype=pl.String),
        rationale="rationale",
        **{c: pl.lit(None, dtype=pl.Int64) for c in CRITERIA},
        comments=pl.lit(None, dtype=pl.String),
    )
    return sheet, sample.select(KEY_COLUMNS)


def instructions(scale_max: int, n_items: int) -> str:
    lines = [
        "# Rationale review: instructions",
        "",
        f"The sheet holds {n_items} rationales, each written to explain the outcome shown next",
        "to it for the patient whose (recent) history is excerpted. Which model and prompt",
        "style wrote an item is hidden; please do not try to find out.",
        "",
        f"Rate every item on both criteria, from 1 (worst) to {scale_max} (best), as a whole",
        "number in its column; leave a cell empty only if you cannot judge it, and say why in",
        "`comments`.",
        "",
    ]
    lines += [f"- `{c}`: {CRITERIA_TEXT[c]}" for c in CRITERIA]
    lines += [
        "",
        "Save the sheet as CSV under a name of your own (e.g. `reviewer_a.csv`) in the folder",
        "`teacher.review.filled_dir` names. Do not edit `item_id`. The key file (`key.csv`) maps",
        "items to teachers and styles; it is for the analysis, not for reviewers.",
    ]
    return "\n".join(lines) + "\n"


def sheet_markdown(sheet: pl.DataFrame) -> str:
    """The sheet for reading on screen or paper (ratings go into the CSV)."""
    out = []
    for row in sheet.iter_rows(named=True):
        history = "\n".join("    " + line for line in row["history_excerpt"].splitlines())
        out += [
            f"## {row['item_id']}",
            "",
            f"**Outcome:** {row['outcome']}",
            "",
            "**History (excerpt):**",
            "",
            history,
            "",
            "**Rationale:**",
            "",
            row["rationale"],
            "",
            " | ".join(f"{c}: ___" for c in CRITERIA) + " | comments: ___",
            "",
        ]
    return "\n".join(out)


def write_review_sheet(
    sheet: pl.DataFrame, key: pl.DataFrame, out_dir: Path, scale_max: int
) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "sheet": out_dir / "sheet.csv",
        "markdown": out_dir / "sheet.md",
        "key": out_dir / "key.csv",
        "instructions": out_dir / "instructions.md",
    }
    sheet.write_csv(paths["sheet"])
    paths["markdown"].write_text(sheet_markdown(sheet))
    key.write_csv(paths["key"])
    paths["instructions"].write_text(instructions(scale_max, sheet.height))
    return paths


def read_review_sheet(path: Path | str, scale_max: int) -> pl.DataFrame:
    """A filled sheet: item_id, one integer rating (or null) per criterion, comments."""
    path = Path(path)
    try:
        frame = pl.read_csv(path, infer_schema=False)
    except (pl.exceptions.ComputeError, OSError) as exc:
        raise ReviewError(f"{path}: cannot read as CSV ({exc})") from None
    missing = [c for c in ("item_id", *CRITERIA) if c not in frame.columns]
    if missing:
        raise ReviewError(
            f"{path}: missing columns {missing}; start from the exported sheet.csv and keep its "
            "header"
        )
    dupes = frame.height - frame["item_id"].n_unique()
    if dupes:
        raise ReviewError(f"{path}: {dupes} item_id values appear more than once")
    out = frame.select(
        "item_id",
        *[pl.col(c).str.strip_chars().replace("", None) for c in CRITERIA],
        comments=pl.col("comments") if "comments" in frame.columns else pl.lit(None),
    )
    for c in CRITERIA:
        values = out[c]
        as_int = values.cast(pl.Int64, strict=False)
        bad = out.filter(
            values.is_not_null() & (as_int.is_null() | ~as_int.is_between(1, scale_max))
        )
        if bad.height:
            first = bad.row(0, named=True)
            raise ReviewError(
                f"{path}: column {c!r} has {bad.height} ratings that are not whole numbers from "
                f"1 to {scale_max} (first: item {first['item_id']}, value {first[c]!r})"
            )
        out = out.with_columns(as_int.alias(c))
    return out


def cohen_kappa(a: Sequence[int], b: Sequence[int], weights: str | None = None) -> float:
    """Cohen's kappa of two raters (weights None, 'linear' or 'quadratic'): scikit-learn's
    ``cohen_kappa_score``, with our errors for unusable input. NaN when chance agreement is
    perfect (both raters used one and the same category), where kappa is undefined."""
    from sklearn.metrics import cohen_kappa_score

    if len(a) != len(b):
        raise ReviewError(f"rater lists differ in length ({len(a)} vs {len(b)})")
    if not a:
        raise ReviewError("no items rated by both raters")
    if weights not in (None, "linear", "quadratic"):
        raise ReviewError(f"weights must be None, 'linear' or 'quadratic', got {weights!r}")
    if len(set(a) | set(b)) == 1:
        return math.nan
    return float(cohen_kappa_score(list(a), list(b), weights=weights))


def fleiss_kappa(ratings: Sequence[Sequence[int]]) -> float:
    """Fleiss' kappa; `ratings[i]` holds every rater's category for item i (same count)."""
    if not ratings:
        raise ReviewError("no items rated by every reviewer")
    n = len(ratings[0])
    if n < 2 or any(len(r) != n for r in ratings):
        raise ReviewError("Fleiss' kappa needs the same number (>= 2) of ratings per item")
    cats = sorted({c for r in ratings for c in r})
    counts = np.array([[list(r).count(c) for c in cats] for r in ratings], dtype=float)
    p_item = ((counts**2).sum(1) - n) / (n * (n - 1))
    p_cat = counts.sum(0) / counts.sum()
    p_e = float((p_cat**2).sum())
    if p_e == 1.0:
        return math.nan
    return float((p_item.mean() - p_e) / (1.0 - p_e))


def review_agreement(sheets: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    """Per criterion and reviewer pair: Cohen's kappa (unweighted and quadratic), on the items
    both rated; with three or more reviewers also Fleiss' kappa on items all of them rated."""
    if len(sheets) < 2:
        raise ReviewError(f"agreement needs at least two reviewers' sheets, got {len(sheets)}")
    rows = []
    names = sorted(sheets)
    for criterion in CRITERIA:
        rated = {
            n: dict(
                sheets[n]
                .filter(pl.col(criterion).is_not_null())
                .select("item_id", criterion)
                .iter_rows()
            )
            for n in names
        }
        for x, y in itertools.combinations(names, 2):
            items = sorted(set(rated[x]) & set(rated[y]))
            a = [rated[x][i] for i in items]
            b = [rated[y][i] for i in items]
            rows.append(
                {
                    "criterion": criterion,
                    "reviewers": f"{x} vs {y}",
                    "n_items": len(items),
                    "statistic": "cohen_kappa",
                    "kappa": cohen_kappa(a, b) if items else None,
                    "kappa_quadratic": cohen_kappa(a, b, "quadratic") if items else None,
                }
            )
        if len(names) >= 3:
            common = sorted(set.intersection(*(set(r) for r in rated.values())))
            rows.append(
                {
                    "criterion": criterion,
                    "reviewers": " + ".join(names),
                    "n_items": len(common),
                    "statistic": "fleiss_kappa",
                    "kappa": fleiss_kappa([[rated[n][i] for n in names] for i in common])
                    if common
                    else None,
                    "kappa_quadratic": None,
                }
            )
    return pl.DataFrame(rows, schema_overrides={"kappa": pl.Float64, "kappa_quadratic": pl.Float64})


def review_scores(sheets: Mapping[str, pl.DataFrame], key: pl.DataFrame) -> pl.DataFrame:
    """Mean and SD of each criterion per teacher and style, over all reviewers' ratings."""
    unknown = set()
    long = []
    for name, sheet in sheets.items():
        unknown |= set(sheet["item_id"]) - set(key["item_id"])
        long.append(
            sheet.unpivot(
                index="item_id", on=list(CRITERIA), variable_name="criterion"
            ).with_columns(reviewer=pl.lit(name))
        )
    if unknown:
        raise ReviewError(
            f"{len(unknown)} item ids in the filled sheets are not in the key "
            f"(first: {sorted(unknown)[:5]}); were the sheets exported by another run?"
        )
    ratings = pl.concat(long).drop_nulls("value").join(key, on="item_id")
    return (
        ratings.group_by("teacher", "style", "criterion")
        .agg(
            n_ratings=pl.len(),
            n_items=pl.col("item_id").n_unique(),
            mean=pl.col("value").mean(),
            sd=pl.col("value").std(),
        )
        .sort("teacher", "style", "criterion")
    )


def summarize_review(
    sheet_paths: Sequence[Path | str], key: pl.DataFrame, scale_max: int
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(scores per teacher/style/criterion, agreement) from reviewers' filled sheets, one file
    per reviewer named after them. With a single reviewer the agreement table is empty."""
    if not sheet_paths:
        raise ReviewError(
            "no filled review sheets found; save each reviewer's copy of sheet.csv as "
            "<reviewer>.csv in the folder teacher.review.filled_dir names"
        )
    sheets = {Path(p).stem: read_review_sheet(p, scale_max) for p in sheet_paths}
    if len(sheets) != len(sheet_paths):
        raise ReviewError("two filled sheets share a file name; use one name per reviewer")
    scores = review_scores(sheets, key)
    if len(sheets) < 2:
        agreement = pl.DataFrame(
            schema={
                "criterion": pl.String,
                "reviewers": pl.String,
                "n_items": pl.Int64,
                "statistic": pl.String,
                "kappa": pl.Float64,
                "kappa_quadratic": pl.Float64,
            }
        )
    else:
        agreement = review_agreement(sheets)
    return scores, agreement
