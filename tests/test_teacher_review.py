"""Clinician review of teacher rationales: blinded stratified sheets and reviewer agreement."""

from __future__ import annotations

import math
import random

import polars as pl
import pytest
from sklearn.metrics import cohen_kappa_score

from rationale_bench.cli import main
from rationale_bench.teacher.generate import generate_rationales, teacher_inputs
from rationale_bench.teacher.review import (
    CRITERIA,
    ReviewError,
    cohen_kappa,
    fleiss_kappa,
    read_review_sheet,
    review_agreement,
    review_sample,
    review_scores,
    write_review_sheet,
)


@pytest.fixture(scope="module")
def rationales(synthetic_histories, tmp_path_factory) -> pl.DataFrame:
    cfg = {"name": "template", "backend": "template", "seed": 0}
    cache = tmp_path_factory.mktemp("c")
    return pl.concat(
        [
            generate_rationales(teacher_inputs(synthetic_histories), style, cfg, cache)[0]
            for style in ("free_form", "step_by_step")
        ]
    )


def test_sample_is_stratified_blinded_and_seeded(rationales, synthetic_histories) -> None:
    sheet, key = review_sample(rationales, synthetic_histories, 4, seed=3, history_lines=5)
    assert sheet.height == key.height == 16  # 2 styles x 2 labels x 4
    assert key.group_by("style", "label").len()["len"].to_list() == [4] * 4
    assert set(sheet.columns) == {
        "item_id",
        "outcome",
        "history_excerpt",
        "rationale",
        *CRITERIA,
        "comments",
    }
    assert not {"teacher", "style", "subject_id", "label"} & set(sheet.columns)  # blinded
    assert sheet["item_id"].to_list() == key["item_id"].to_list()
    assert sheet[CRITERIA[0]].null_count() == sheet.height  # left for the reviewer
    again, _ = review_sample(rationales, synthetic_histories, 4, seed=3, history_lines=5)
    assert again.equals(sheet)
    other, _ = review_sample(rationales, synthetic_histories, 4, seed=4, history_lines=5)
    assert not other.equals(sheet)
    # each history excerpt is that subject's, cut to the configured lines
    hist = dict(synthetic_histories.select("subject_id", "header").iter_rows())
    for sid, excerpt in zip(key["subject_id"], sheet["history_excerpt"], strict=True):
        assert excerpt.startswith(hist[sid]) and excerpt.count("\n") <= hist[sid].count("\n") + 5
    # strata smaller than the request are taken whole
    few = rationales.filter(pl.col("style") == "free_form").head(3)
    small, _ = review_sample(few, synthetic_histories, 10, seed=0, history_lines=5)
    assert small.height == 3


def fill(sheet: pl.DataFrame, seed: int, noise: float) -> pl.DataFrame:
    """A reviewer: a shared 'true' quality per item plus personal noise."""
    rng = random.Random(seed)
    truth = random.Random(0)
    values = {c: [] for c in CRITERIA}
    for _ in range(sheet.height):
        for c in CRITERIA:
            base = truth.randint(1, 5)
            values[c].append(base if rng.random() > noise else rng.randint(1, 5))
    return sheet.with_columns(**{c: pl.Series(values[c]) for c in CRITERIA})


def test_written_sheets_round_trip_and_kappa_matches_sklearn(
    rationales, synthetic_histories, tmp_path
) -> None:
    sheet, key = review_sample(rationales, synthetic_histories, 10, seed=0, history_lines=8)
    paths = write_review_sheet(sheet, key, tmp_path / "review", scale_max=5)
    assert "1 (worst) to 5 (best)" in paths["instructions"].read_text()
    assert sheet["item_id"][0] in paths["markdown"].read_text()
    blank = pl.read_csv(paths["sheet"])
    a, b = fill(blank, 1, 0.3), fill(blank, 2, 0.5)
    a.write_csv(tmp_path / "alice.csv")
    b.write_csv(tmp_path / "bob.csv")
    ra, rb = (
        read_review_sheet(tmp_path / "alice.csv", 5),
        read_review_sheet(tmp_path / "bob.csv", 5),
    )
    for c in CRITERIA:
        x, y = ra[c].to_list(), rb[c].to_list()
        for weights in (None, "linear", "quadratic"):
            assert cohen_kappa(x, y, weights) == pytest.approx(
                cohen_kappa_score(x, y, weights=weights)
            )
    table = review_agreement({"alice": ra, "bob": rb})
    assert table.height == len(CRITERIA) and (table["n_items"] == sheet.height).all()
    kappa = table.filter(pl.col("criterion") == CRITERIA[0])["kappa"][0]
    assert kappa == pytest.approx(cohen_kappa_score(ra[CRITERIA[0]], rb[CRITERIA[0]]))
    assert 0 < kappa < 1

    scores = review_scores({"alice": ra, "bob": rb}, pl.read_csv(paths["key"]))
    assert set(scores["style"]) == {"free_form", "step_by_step"}
    assert scores["n_ratings"].sum() == 2 * len(CRITERIA) * sheet.height

    assert main(["review-kappa", str(tmp_path / "alice.csv"), str(tmp_path / "bob.csv")]) == 0


def test_cohen_kappa_textbook_value() -> None:
    """Cohen (1960)'s worked form: 50 items, agreement 35/50 = 0.70, chance agreement
    (25*30 + 25*20) / 50**2 = 0.50, so kappa = (0.70 - 0.50) / (1 - 0.50) = 0.40."""
    a = [1] * 20 + [1] * 5 + [2] * 10 + [2] * 15
    b = [1] * 20 + [2] * 5 + [1] * 10 + [2] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.40)
    # Quadratic weights on two categories equal the unweighted kappa.
    assert cohen_kappa(a, b, "quadratic") == pytest.approx(0.40)


def test_kappa_edge_cases_and_fleiss() -> None:
    assert cohen_kappa([1, 2, 3], [1, 2, 3]) == 1.0
    assert math.isnan(cohen_kappa([2, 2], [2, 2]))  # sklearn gives nan here too
    with pytest.raises(ReviewError, match="length"):
        cohen_kappa([1], [1, 2])
    # Fleiss' kappa, worked example (Fleiss 1971 / Wikipedia: 10 items, 14 raters) -> 0.210
    table = [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
    ratings = [[cat for cat, n in enumerate(row, 1) for _ in range(n)] for row in table]
    assert fleiss_kappa(ratings) == pytest.approx(0.210, abs=5e-4)
    # two raters: Fleiss' kappa is close to Cohen's (it pools the marginals)
    agreement = review_agreement(
        {
            n: pl.DataFrame({"item_id": ["a", "b", "c", "d"], **{c: v for c in CRITERIA}})
            for n, v in (("r1", [1, 2, 3, 3]), ("r2", [1, 2, 3, 2]), ("r3", [1, 2, 2, 3]))
        }
    )
    assert set(agreement["statistic"]) == {"cohen_kappa", "fleiss_kappa"}
    assert agreement.height == len(CRITERIA) * 4  # 3 pairs + Fleiss, per criterion


def test_bad_sheets_get_specific_errors(tmp_path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("item_id,medical_accuracy,faithful_grounding\nR001,4,7\n")
    with pytest.raises(ReviewError, match=r"faithful_grounding.*1 to 5.*R001.*'7'"):
        read_review_sheet(path, 5)
    path.write_text("item_id,medical_accuracy,faithful_grounding\nR001,good,3\n")
    with pytest.raises(ReviewError, match="medical_accuracy"):
        read_review_sheet(path, 5)
    path.write_text("item_id,medical_accuracy\nR001,3\n")
    with pytest.raises(ReviewError, match="missing columns"):
        read_review_sheet(path, 5)
    path.write_text("item_id,medical_accuracy,faithful_grounding,comments\nR001,,3,unsure\n")
    ok = read_review_sheet(path, 5)
    assert ok["medical_accuracy"][0] is None and ok["faithful_grounding"][0] == 3
    with pytest.raises(ReviewError, match="two reviewers"):
        review_agreement({"only": ok})
    assert main(["review-kappa", str(path)]) == 2


def test_summary_needs_sheets_and_handles_one_reviewer(tmp_path) -> None:
    from rationale_bench.teacher.review import summarize_review

    key = pl.DataFrame(
        {"item_id": ["R1", "R2"], "subject_id": [1, 2], "teacher": "t", "style": "free_form"}
    ).with_columns(label=pl.Series([True, False]))
    with pytest.raises(ReviewError, match="no filled review sheets"):
        summarize_review([], key, 5)
    path = tmp_path / "carol.csv"
    path.write_text("item_id,medical_accuracy,faithful_grounding\nR1,4,5\nR2,2,\n")
    scores, agreement = summarize_review([path], key, 5)
    assert agreement.is_empty()
    acc = scores.filter(pl.col("criterion") == "medical_accuracy").row(0, named=True)
    assert acc["mean"] == 3.0 and acc["n_ratings"] == 2
    path.write_text("item_id,medical_accuracy,faithful_grounding\nR9,4,5\n")
    with pytest.raises(ReviewError, match="not in the key"):
        summarize_review([path], key, 5)
