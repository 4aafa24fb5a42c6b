"""Every report figure writes a PNG and an SVG, for a full, a partial and an empty grid; the SVG
is read back: axis labels, series (colour per format) and their point counts, and the "no data"
note of an empty grid."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from test_study_report import grid_configurations, write_grid

from rationale_bench.report import figures
from rationale_bench.report.error_analysis import matched_error_analysis
from rationale_bench.report.statistics import paired_differences
from rationale_bench.report.tables import load_metrics_table, load_predictions

# Cells dropped to mimic a grid that is still running: a whole label-only model/size block,
# one rationale cell and one seed.
DROPPED = (
    (pl.col("model") == "small") & (pl.col("format") == "label_only") & (pl.col("n_train") == 200)
    | (pl.col("config_id") == "model=tiny/format=step_by_step/n_train=50/seed=1")
    | (pl.col("config_id") == "model=tiny/format=free_form/n_train=200/seed=2")
)


def attrition() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "step": [
                "subjects in the data",
                "birth date and sex recorded",
                "eligible index visit (age >= 65, >= 730 days of prior observation)",
                "no outcome code at or before index",
                "non-cases observed through the horizon",
            ],
            "n_subjects": [5000, 4980, 3100, 3050, 2600],
            "n_cases": [None, None, 260, 240, 240],
            "n_noncases": [None, None, 2840, 2810, 2360],
            "n_excluded": [0, 20, 1880, 50, 450],
        },
        schema_overrides={"n_cases": pl.Int64, "n_noncases": pl.Int64},
    )


def table1() -> pl.DataFrame:
    rows = []
    for split in ("train", "tuning", "held_out"):
        for label in (False, True):
            rows.append(
                {
                    "split": split,
                    "label": label,
                    "n": 400 if not label else 40,
                    "age mean": 74.2,
                    "age sd": 6.1,
                    "% female": 55.0,
                    "follow-up days median": 1826.0,
                    "% Hypertension": 40.0,
                }
            )
    return pl.DataFrame(rows)


def qc_table(seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    n = 60
    return pl.DataFrame(
        {
            "style": ["free_form"] * n + ["step_by_step"] * n,
            "n_words": np.r_[rng.poisson(60, n), rng.poisson(110, n)],
            "grounded_fraction": np.clip(np.r_[rng.beta(8, 1, n), rng.beta(5, 1, n)], 0, 1),
        }
    )


@pytest.fixture(scope="module")
def tables(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("fig_grid")
    configs = grid_configurations()
    configs += [
        {"model": "tiny", "format": "logistic_regression", "n_train": n, "seed": s}
        for n in (50, 200)
        for s in (1, 2)
    ]
    entries = write_grid(root, configs)
    preds = load_predictions(entries)
    table = load_metrics_table(entries)
    return {"full": _derive(preds, table), "partial": _derive(preds.filter(~DROPPED), table)}


def _derive(preds: pl.DataFrame, table: pl.DataFrame) -> dict:
    table = table.filter(pl.col("config_id").is_in(preds["config_id"].unique().implode()))
    paired = paired_differences(preds, n_boot=100)
    errors = matched_error_analysis(preds, "label_only", ["free_form", "step_by_step"])
    return {"preds": preds, "table": table, "paired": paired, "errors": errors}


@pytest.fixture(autouse=True)
def low_resolution(monkeypatch):
    """Smaller PNGs keep the figure tests fast; what is drawn does not change."""
    monkeypatch.setattr(figures, "DPI", 60)


FORMATS = ["label_only", "free_form", "step_by_step", "logistic_regression"]

# name -> callable(tables of one grid, path stem)
DRAW = {
    "paired_configurations": lambda t, p: figures.paired_configurations(t["table"], FORMATS, p),
    "delta_by_factor": lambda t, p: figures.delta_by_factor(t["paired"], None, p),
    "error_analysis": lambda t, p: figures.error_analysis(t["errors"]["crosstab"], p),
    "token_dilution": lambda t, p: figures.token_dilution(t["paired"], t["table"], p),
    "roc_and_calibration": lambda t, p: figures.roc_and_calibration(t["preds"], p, FORMATS),
    "learning_curves": lambda t, p: figures.learning_curves(t["table"], p, FORMATS),
}


def assert_written(paths: list[Path], stem: Path) -> None:
    assert [p.name for p in paths] == [f"{stem.name}.png", f"{stem.name}.svg"]
    for p in paths:
        assert p.stat().st_size > 1000, p
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in paths[1].read_bytes()[:2000]


SVG = "{http://www.w3.org/2000/svg}"
# Text is drawn as paths (svg.fonttype "path"); matplotlib keeps each string as a comment.
TEXT = re.compile(r"<!-- (.*?) -->", re.DOTALL)
# name -> axis labels the figure must show, whatever the grid.
AXIS_LABELS = {
    "paired_configurations": [
        f"{figures.format_name(fmt)} AUROC (held-out)"
        for fmt in ("label_only", "free_form", "step_by_step")
    ],
    "roc_and_calibration": [
        "false-positive rate (1 − specificity)",
        "true-positive rate (sensitivity)",
        "mean predicted 5-year ADRD risk (probability)",
        "observed 5-year ADRD rate (proportion)",
    ],
    "learning_curves": ["training examples (n_train, log scale)", "held-out AUROC"],
}
# name -> the note an empty grid draws instead of data.
NO_DATA = {
    "paired_configurations": "No configuration has results yet.",
    "delta_by_factor": "No matched pair of formats has results yet.",
    "error_analysis": "No matched configuration with both formats yet.",
    "token_dilution": "No paired results with training-run loss shares yet.",
    "roc_and_calibration": "No held-out predictions yet.",
    "learning_curves": "No configuration has results yet.",
}


def svg_texts(path: Path) -> list[str]:
    return TEXT.findall(path.read_text())


def svg_series(path: Path) -> list[tuple[str, int]]:
    """(stroke colour, number of markers) of every line drawn with markers, in drawing order."""
    series = []
    for group in ET.parse(path).iter(f"{SVG}g"):
        if not group.get("id", "").startswith("line2d_"):
            continue
        line = group.find(f"{SVG}path")
        colour = line is not None and re.search(r"stroke: (#[0-9a-f]{6})", line.get("style", ""))
        markers = group.findall(f".//{SVG}use")
        if colour and markers:
            series.append((colour.group(1), len(markers)))
    return series


def expected_learning_curves(table: pl.DataFrame) -> list[tuple[str, int]]:
    """Per model (panel order) and format (FORMATS order): the format's colour, one point per
    training size that has a result."""
    out = []
    for model in figures._models(table):
        sub = figures._for_model(table, model)
        for fmt in figures._present_formats(table, FORMATS):
            sizes = sub.filter(pl.col("format") == fmt)["n_train"].n_unique()
            if sizes:
                out.append((figures.colour_of(fmt, FORMATS).lower(), sizes))
    return out


@pytest.mark.parametrize("grid", ["full", "partial"])
def test_learning_curves_svg_has_one_series_per_format_and_a_point_per_size(tables, tmp_path, grid):
    table = tables[grid]["table"]
    svg = DRAW["learning_curves"](tables[grid], tmp_path / "lc")[1]
    expected = expected_learning_curves(table)
    assert svg_series(svg) == expected
    if grid == "partial":  # the dropped label-only block of 'small' lost a point
        assert (figures.colour_of("label_only", FORMATS).lower(), 1) in expected
    texts = svg_texts(svg)
    for label in AXIS_LABELS["learning_curves"]:
        assert texts.count(label) == len(figures._models(table))  # one per panel
    for fmt in figures._present_formats(table, FORMATS):  # each line labelled at its end
        assert figures._short(fmt) in texts


@pytest.mark.parametrize("name", list(AXIS_LABELS))
def test_svg_axis_labels(tables, tmp_path, name):
    texts = svg_texts(DRAW[name](tables["full"], tmp_path / name)[1])
    for label in AXIS_LABELS[name]:
        assert label in texts, (label, texts)
    assert not any(note in texts for note in NO_DATA.values())


def test_roc_svg_has_a_curve_per_format(tables, tmp_path):
    svg = DRAW["roc_and_calibration"](tables["full"], tmp_path / "roc")[1]
    colours = {colour for colour, _ in svg_series(svg)}
    present = set(tables["full"]["preds"]["format"].unique())
    assert {figures.colour_of(f, FORMATS).lower() for f in present} <= colours


@pytest.mark.parametrize("name", list(DRAW))
def test_empty_grid_draws_the_no_data_note(tmp_path, name):
    empty = _derive(load_predictions([]), load_metrics_table([]))
    svg = DRAW[name](empty, tmp_path / name)[1]
    texts = svg_texts(svg)
    assert NO_DATA[name] in texts
    assert svg_series(svg) == []  # nothing plotted


@pytest.mark.parametrize("grid", ["full", "partial"])
@pytest.mark.parametrize("name", list(DRAW))
def test_study_figures(tables, tmp_path, name, grid):
    stem = tmp_path / name
    assert_written(DRAW[name](tables[grid], stem), stem)


def test_partial_grid_really_misses_cells(tables):
    full, partial = tables["full"], tables["partial"]
    assert partial["preds"]["config_id"].n_unique() < full["preds"]["config_id"].n_unique()
    assert partial["paired"].height < full["paired"].height


def test_figures_with_a_single_configuration_or_nothing(tables, tmp_path):
    one = tables["full"]["preds"].filter(
        pl.col("config_id").str.contains(
            "model=tiny/format=(label_only|free_form)/n_train=50/seed=1"
        )
    )
    single = _derive(one, tables["full"]["table"])
    assert single["paired"].height == 1
    for name, draw in DRAW.items():
        assert_written(draw(single, tmp_path / f"one_{name}"), tmp_path / f"one_{name}")
    # Nothing at all (no label-only yet): each figure still writes a "no data" notice.
    nothing = _derive(one.filter(pl.col("format") == "free_form"), tables["full"]["table"])
    nothing["table"] = nothing["table"].filter(pl.col("format") == "free_form")
    for name, draw in DRAW.items():
        assert_written(draw(nothing, tmp_path / f"none_{name}"), tmp_path / f"none_{name}")
    # Nothing has finished at all.
    empty = _derive(load_predictions([]), load_metrics_table([]))
    for name, draw in DRAW.items():
        assert_written(draw(empty, tmp_path / f"empty_{name}"), tmp_path / f"empty_{name}")


def test_suffix_in_path_is_a_stem(tables, tmp_path):
    paths = figures.learning_curves(tables["full"]["table"].head(0), tmp_path / "sub" / "lc.png")
    assert_written(paths, tmp_path / "sub" / "lc")


def test_cohort_overview_and_rationale_qc(tmp_path):
    assert_written(figures.cohort_overview(attrition(), table1(), tmp_path / "c1"), tmp_path / "c1")
    assert_written(figures.cohort_overview(attrition(), None, tmp_path / "c2"), tmp_path / "c2")
    assert_written(figures.cohort_overview(None, None, tmp_path / "c3"), tmp_path / "c3")
    assert_written(figures.rationale_qc(qc_table(), tmp_path / "q1"), tmp_path / "q1")
    # Only some columns present, one style only, or nothing.
    only_len = qc_table().select("n_words")
    assert_written(figures.rationale_qc(only_len, tmp_path / "q2"), tmp_path / "q2")
    one_style = qc_table().filter(pl.col("style") == "free_form").drop("n_words")
    assert_written(figures.rationale_qc(one_style, tmp_path / "q3"), tmp_path / "q3")
    assert_written(figures.rationale_qc(None, tmp_path / "q4"), tmp_path / "q4")


def test_cohort_overview_with_suppressed_small_cells(tmp_path):
    """Published tables with small cells suppressed ("<50") still give the figure."""
    from rationale_bench.cohort.build import (
        ATTRITION_COUNTS,
        TABLE_ONE_COUNTS,
        suppress_small_cells,
    )

    att = attrition()
    counts = [c for c in ATTRITION_COUNTS if c in att.columns]
    published = suppress_small_cells(att, counts, 50)
    t1 = table1().with_columns(n=pl.lit(30))
    t1 = suppress_small_cells(t1, [c for c in TABLE_ONE_COUNTS if c in t1.columns], 50)
    assert "<50" in published["n_excluded"].to_list() and t1["n"][0] == "<50"
    # Written as CSV and read back, as the report does: the columns are strings now.
    published.write_csv(tmp_path / "a.csv")
    t1.write_csv(tmp_path / "t.csv")
    written = figures.cohort_overview(
        pl.read_csv(tmp_path / "a.csv"), pl.read_csv(tmp_path / "t.csv"), tmp_path / "c"
    )
    assert_written(written, tmp_path / "c")
    assert "&lt;50" in written[1].read_text()  # the suppressed cell, as published


@pytest.mark.parametrize("name", sorted(DRAW))
def test_svg_is_reproducible(name, tables, tmp_path):
    """Every figure is drawn in the report style, whose SVG ids are salted: the same tables give
    the same bytes (paired_configurations once lost its style to a helper's decorator)."""
    a = DRAW[name](tables["partial"], tmp_path / "a")
    b = DRAW[name](tables["partial"], tmp_path / "b")
    assert a[1].read_bytes() == b[1].read_bytes()


def test_model_free_baseline_is_drawn_with_every_model(tmp_path):
    configs = grid_configurations(sizes=(50,), seeds=(1,))
    configs.append({"model": None, "format": "logistic_regression", "n_train": 50, "seed": 1})
    entries = write_grid(tmp_path / "runs", configs)
    preds = load_predictions(entries)
    t = _derive(preds, load_metrics_table(entries))
    assert set(t["paired"]["format"]) == {"free_form", "step_by_step"}  # no model to match
    for name, draw in DRAW.items():
        assert_written(draw(t, tmp_path / name), tmp_path / name)
