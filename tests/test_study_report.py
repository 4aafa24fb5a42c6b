"""Study report: paired statistics, across-configuration summary, headline, error analysis."""

from __future__ import annotations

import json
import math
import zlib
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from scipy import special, stats

from rationale_bench.evaluate import metrics
from rationale_bench.report.error_analysis import matched_error_analysis
from rationale_bench.report.mechanism import mechanism_table
from rationale_bench.report.names import paired_factors
from rationale_bench.report.prose import headline, validity_sentences
from rationale_bench.report.statistics import (
    baseline_table,
    paired_differences,
    summary_across_configurations,
)
from rationale_bench.report.study_report import write_study_report
from rationale_bench.report.tables import (
    RunOutputs,
    available_outputs,
    config_id,
    load_metrics_table,
    load_predictions,
    missing_cells,
)
from rationale_bench.text.formats import FORMATS

N_SUBJECTS = 120
# How much signal each format's scores carry in the synthetic grid (label-only is best).
SIGNAL = {"label_only": 1.6, "free_form": 0.9, "step_by_step": 0.7, "logistic_regression": 1.2}

# --------------------------------------------------------------------------------------
# A synthetic study grid, shared with test_figures.py
# --------------------------------------------------------------------------------------


def grid_configurations(
    models=("tiny", "small"),
    formats=("label_only", "free_form", "step_by_step"),
    sizes=(50, 200),
    seeds=(1, 2),
) -> list[dict]:
    return [
        {"model": m, "format": f, "n_train": n, "seed": s}
        for m in models
        for f in formats
        for n in sizes
        for s in seeds
    ]


def labels(n: int = N_SUBJECTS, seed: int = 0) -> np.ndarray:
    y = np.zeros(n, dtype=bool)
    y[np.random.default_rng(seed).choice(n, size=n // 4, replace=False)] = True
    return y


def predictions_for(configuration: dict, y: np.ndarray) -> pl.DataFrame:
    """Held-out and tuning predictions in the evaluate.py schema, with format-dependent signal."""
    rng = np.random.default_rng(zlib.crc32(json.dumps(configuration, sort_keys=True).encode()))
    n = y.size
    signal = SIGNAL.get(configuration["format"], 1.0) * (1 + np.log10(configuration["n_train"]) / 4)
    p = special.expit(-1.2 + signal * y + rng.normal(size=n))
    ids = np.arange(1000, 1000 + n)
    frame = pl.DataFrame(
        {
            "subject_id": ids,
            "prediction_time": [datetime(2015, 1, 1)] * n,
            "boolean_value": y,
            "predicted_boolean_value": p >= 0.4,
            "predicted_boolean_probability": p,
            "split": ["held_out"] * n,
            "scoring_mode": ["label_logprob"] * n,
            "forced_answer": [False] * n,
            "generated_text": [f"text {i}" for i in ids],
        }
    )
    tuning = frame.head(10).with_columns(
        pl.col("subject_id") + 10_000, pl.lit("tuning").alias("split")
    )
    return pl.concat([frame, tuning])


def write_grid(root: Path, configurations: list[dict], with_runs: bool = True) -> list[RunOutputs]:
    """Write predictions.parquet, metrics.json and run.json for each configuration."""
    y = labels()
    entries = []
    for c in configurations:
        d = root / config_id(c)
        d.mkdir(parents=True, exist_ok=True)
        preds = predictions_for(c, y)
        preds.write_parquet(d / "predictions.parquet")
        held = preds.filter(pl.col("split") == "held_out")
        yy = held["boolean_value"].to_numpy()
        pp = held["predicted_boolean_probability"].to_numpy()
        auc = metrics.auroc(yy, pp)
        m = {
            "n": int(yy.size),
            "n_pos": int(yy.sum()),
            "prevalence": float(yy.mean()),
            "auroc": auc,
            "auroc_bootstrap": {"ci_low": auc - 0.05, "ci_high": min(1.0, auc + 0.05)},
            "auroc_delong": {"ci_low": auc - 0.06, "ci_high": min(1.0, auc + 0.06)},
            "auprc": metrics.auprc(yy, pp),
            "brier": metrics.brier(yy, pp),
            "scoring_mode": "label_logprob",
            "threshold": 0.4,
            "forced_answer_rate": 0.0,
        }
        (d / "metrics.json").write_text(json.dumps(m))
        run_path = None
        if with_runs and c["format"] != "logistic_regression":
            share = 1.0 if c["format"] == "label_only" else 0.02 + 0.1 * (c["seed"] % 3)
            run = {
                "optimizer_steps": 10,
                "tokens_trained": 1000 * c["n_train"],
                "mean_completion_tokens": 3.0 if c["format"] == "label_only" else 80.0,
                "mean_label_loss_share": share,
                "final_loss": 0.3,
                "wall_s": 1.0,
            }
            run_path = d / "run.json"
            run_path.write_text(json.dumps(run))
        entries.append(RunOutputs(c, d / "predictions.parquet", d / "metrics.json", run_path))
    return entries


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> dict:
    """Full 2 x 3 x 2 x 2 grid written to disk, plus loaded tables."""
    root = tmp_path_factory.mktemp("grid")
    configurations = grid_configurations()
    entries = write_grid(root, configurations)
    preds = load_predictions(entries)
    table = load_metrics_table(entries)
    paired = paired_differences(preds, n_boot=200)
    return {"entries": entries, "preds": preds, "table": table, "paired": paired}


def hand_preds(scores: dict[str, np.ndarray], y: np.ndarray, **factors) -> pl.DataFrame:
    """A long predictions table for one matched group with the given per-format scores."""
    frames = []
    for fmt, s in scores.items():
        frames.append(
            pl.DataFrame(
                {
                    "subject_id": np.arange(y.size),
                    "boolean_value": y,
                    "predicted_boolean_value": s >= 0.5,
                    "predicted_boolean_probability": s,
                }
            ).with_columns(
                *[pl.lit(v).alias(k) for k, v in {"model": "m", "n_train": 10, "seed": 1}.items()],
                pl.lit(fmt).alias("format"),
                *[pl.lit(v).alias(k) for k, v in factors.items()],
            )
        )
    return pl.concat(frames)


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


def test_load_predictions_keeps_held_out_with_factors(grid):
    preds = grid["preds"]
    assert preds.height == 24 * N_SUBJECTS
    assert set(preds["split"]) == {"held_out"}
    assert {"model", "format", "n_train", "seed", "config_id"} <= set(preds.columns)
    assert preds["n_train"].dtype == grid["table"]["n_train"].dtype == pl.Int64


def test_metrics_table_tolerates_missing_run_json(tmp_path):
    configs = grid_configurations(models=("tiny",), sizes=(50,), seeds=(1,))
    configs.append({"model": "tiny", "format": "logistic_regression", "n_train": 50, "seed": 1})
    entries = write_grid(tmp_path, configs)
    table = load_metrics_table(entries)
    assert table.height == 4
    lr = table.filter(pl.col("format") == "logistic_regression")
    assert lr["mean_label_loss_share"].is_null().all()
    assert lr["auroc"].is_not_null().all()
    assert table.filter(pl.col("format") == "label_only")["mean_label_loss_share"][0] == 1.0


def test_available_outputs_and_missing_cells(tmp_path):
    configs = grid_configurations(models=("tiny",), sizes=(50,), seeds=(1, 2))
    entries = write_grid(tmp_path, configs)
    (entries[1].predictions).unlink()
    present, missing = available_outputs(entries)
    assert len(present) == 5
    assert missing == [config_id(configs[1])]
    assert missing[0] == "model=tiny/format=label_only/n_train=50/seed=2"
    table = load_metrics_table(present)
    assert missing_cells(configs, table) == missing
    assert missing_cells(configs, [configs[0]]) == [config_id(c) for c in configs[1:]]
    with pytest.raises(FileNotFoundError, match="available_outputs"):
        load_predictions(entries)


# --------------------------------------------------------------------------------------
# Paired differences
# --------------------------------------------------------------------------------------


def test_identical_scores_give_zero_difference():
    y = labels(80, seed=1)
    s = special.expit(np.random.default_rng(0).normal(size=80) + y)
    paired = paired_differences(hand_preds({"label_only": s, "free_form": s.copy()}, y), n_boot=200)
    row = paired.row(0, named=True)
    assert paired.height == 1
    assert row["format"] == "free_form" and row["reference"] == "label_only"
    assert row["n"] == 80 and row["n_pos"] == int(y.sum())
    for m in ("auroc", "auprc", "brier"):
        assert row[f"{m}_diff"] == 0.0
        assert row[f"{m}_ci_low"] <= 0.0 <= row[f"{m}_ci_high"]
        assert row[f"{m}_reference"] == row[f"{m}_format"]
    assert row["auroc_p_value"] == 1.0
    assert row["match_id"] == "model=m/n_train=10/seed=1"


def test_better_scores_give_positive_difference_with_ci_above_zero():
    y = labels(200, seed=2)
    rng = np.random.default_rng(3)
    weak = special.expit(0.3 * y + rng.normal(size=200))
    strong = special.expit(4.0 * y + rng.normal(size=200))
    paired = paired_differences(
        hand_preds({"label_only": weak, "step_by_step": strong}, y), n_boot=300, seed=5
    )
    row = paired.row(0, named=True)
    assert row["auroc_diff"] == pytest.approx(metrics.auroc(y, strong) - metrics.auroc(y, weak))
    assert row["auroc_diff"] > 0 and row["auroc_ci_low"] > 0
    assert row["auroc_p_value"] < 0.001
    expected = metrics.delong_paired_test(y, strong, weak)["p_value"]
    assert row["auroc_p_value"] == pytest.approx(expected)
    # Same seed, same resamples: the CI equals paired_bootstrap_diff called directly.
    boot = metrics.paired_bootstrap_diff(y, strong, weak, metrics.auprc, n_boot=300, seed=5)
    assert row["auprc_ci_low"] == pytest.approx(boot["ci_low"])
    assert row["auprc_ci_high"] == pytest.approx(boot["ci_high"])
    assert row["brier_diff"] < 0  # a sharper model has a lower Brier score


def test_mismatched_subjects_are_an_error():
    y = labels(40)
    s = np.linspace(0.05, 0.95, 40)
    preds = hand_preds({"label_only": s, "free_form": s}, y)
    preds = preds.with_columns(
        pl.when((pl.col("format") == "free_form") & (pl.col("subject_id") == 0))
        .then(999)
        .otherwise(pl.col("subject_id"))
        .alias("subject_id")
    )
    with pytest.raises(ValueError, match="different held-out subjects"):
        paired_differences(preds, n_boot=50)


def test_paired_rows_match_within_groups_and_skip_groups_without_reference(grid):
    paired = grid["paired"]
    assert paired.height == 16  # 8 matched groups x 2 rationale formats
    assert set(paired["format"]) == {"free_form", "step_by_step"}
    assert paired_factors(paired) == ["model", "n_train", "seed"]
    preds = grid["preds"].filter(
        ~((pl.col("format") == "label_only") & (pl.col("model") == "tiny"))
    )
    partial = paired_differences(preds, n_boot=50)
    assert partial.height == 8 and set(partial["model"]) == {"small"}
    empty = paired_differences(preds.filter(pl.col("format") != "label_only"))
    assert empty.height == 0 and "auroc_diff" in empty.columns


def test_extra_factor_joins_the_matched_group():
    y = labels(60)
    s = special.expit(y + np.random.default_rng(1).normal(size=60))
    a = hand_preds({"label_only": s, "free_form": s}, y, teacher="t1")
    b = hand_preds({"label_only": s, "free_form": 1 - s}, y, teacher="t2")
    paired = paired_differences(pl.concat([a, b]), n_boot=50)
    assert paired.height == 2
    assert "teacher" in paired_factors(paired)
    assert paired.filter(pl.col("teacher") == "t1")["auroc_diff"][0] == 0.0


# --------------------------------------------------------------------------------------
# Summary across configurations
# --------------------------------------------------------------------------------------


def constructed_paired(diffs: dict[str, list[float]], ci_half: float = 0.02) -> pl.DataFrame:
    rows = []
    for fmt, ds in diffs.items():
        for i, d in enumerate(ds):
            rows.append(
                {
                    "model": "a" if i % 2 else "b",
                    "n_train": 100 * (1 + i % 3),
                    "seed": i,
                    "match_id": f"cfg{i}",
                    "format": fmt,
                    "reference": "label_only",
                    "auroc_reference": 0.75,
                    "auroc_format": 0.75 + d,
                    "auroc_diff": d,
                    "auroc_ci_low": d - ci_half,
                    "auroc_ci_high": d + ci_half,
                }
            )
    return pl.DataFrame(rows)


def test_summary_counts_and_wilcoxon_match_scipy():
    ff = [-0.10, -0.05, -0.01, 0.03, -0.08, -0.12, -0.015, -0.2]
    sbs = [0.01, -0.01, 0.02]
    summary = summary_across_configurations(
        constructed_paired({"free_form": ff, "step_by_step": sbs})
    )
    row = summary.filter((pl.col("by") == "all") & (pl.col("format") == "free_form")).row(
        0, named=True
    )
    d = np.array(ff)
    assert row["n_configurations"] == 8
    assert row["mean_diff"] == pytest.approx(d.mean())
    assert row["median_diff"] == pytest.approx(np.median(d))
    assert row["sd_diff"] == pytest.approx(d.std(ddof=1))
    assert row["n_worse"] == 7 and row["n_better"] == 1
    assert row["n_significantly_worse"] == 5  # CI upper = d + 0.02 < 0
    assert row["n_significantly_better"] == 1
    assert row["mean_format"] == pytest.approx(0.75 + d.mean())
    ref = stats.wilcoxon(d)
    assert row["wilcoxon_p_value"] == pytest.approx(ref.pvalue)
    assert row["wilcoxon_statistic"] == pytest.approx(ref.statistic)
    assert row["note"] == ""
    small = summary.filter((pl.col("by") == "all") & (pl.col("format") == "step_by_step"))
    assert math.isnan(small["wilcoxon_p_value"][0])
    assert "needs at least 6" in small["note"][0]


def test_summary_breaks_down_by_factor_and_handles_all_zero():
    summary = summary_across_configurations(constructed_paired({"free_form": [0.0] * 7}))
    overall = summary.filter(pl.col("by") == "all")
    assert math.isnan(overall["wilcoxon_p_value"][0])
    assert "all differences are zero" in overall["note"][0]
    assert set(summary["by"]) == {"all", "model", "n_train"}  # seed is not a breakdown
    by_size = summary.filter(pl.col("by") == "n_train")
    assert by_size["level"].to_list() == ["100", "200", "300"]
    assert by_size["n_configurations"].sum() == 7


def test_summary_on_the_grid_agrees_with_paired(grid):
    summary = summary_across_configurations(grid["paired"])
    ff = grid["paired"].filter(pl.col("format") == "free_form")
    row = summary.filter((pl.col("by") == "all") & (pl.col("format") == "free_form"))
    assert row["n_configurations"][0] == ff.height == 8
    assert row["n_worse"][0] == int((ff["auroc_diff"] < 0).sum())
    assert row["wilcoxon_p_value"][0] == pytest.approx(stats.wilcoxon(ff["auroc_diff"]).pvalue)
    by_model = summary.filter((pl.col("by") == "model") & (pl.col("format") == "free_form"))
    assert sorted(by_model["level"]) == ["small", "tiny"]


# --------------------------------------------------------------------------------------
# Headline
# --------------------------------------------------------------------------------------


def test_headline_states_computed_numbers():
    ff = [-0.10, -0.05, -0.01, 0.03, -0.08, -0.12, -0.015, -0.2]
    paired = constructed_paired({"free_form": ff, "step_by_step": [0.01, -0.01, 0.02]})
    summary = summary_across_configurations(paired)
    table = pl.DataFrame(
        {
            "model": ["a", "b", "a", "a"],
            "format": ["label_only", "label_only", "free_form", "logistic_regression"],
            "n_train": [100, 100, 100, 100],
            "seed": [1, 1, 1, 1],
            "auroc": [0.70, 0.76, 0.60, 0.69],
        }
    )
    text = headline(summary, table, missing=["model=a/format=x/n_train=1/seed=1"])
    p = stats.wilcoxon(ff).pvalue
    assert "label-only SFT reached a mean held-out AUROC of 0.730" in text
    assert f"{0.75 + np.mean(ff):.3f} against 0.750" in text
    assert f"mean ΔAUROC {np.mean(ff):+.3f}" in text
    assert "worse in 7 of 8" in text
    assert "significantly worse (paired 95% CI entirely below zero) in 5 of 8" in text
    assert f"p = {p:.3f}" in text
    assert ("Across configurations it is significantly worse" in text) == (p < 0.05)
    assert "Step-by-step rationale SFT" in text and "Not tested for significance" in text
    assert "Baseline logistic regression: mean held-out AUROC 0.690" in text
    assert "1 grid cell without results" in text


def test_headline_says_when_not_significant_and_when_reference_missing():
    rng = np.random.default_rng(0)
    diffs = list(rng.normal(0, 0.05, size=10))
    summary = summary_across_configurations(constructed_paired({"free_form": diffs}))
    p = summary["wilcoxon_p_value"][0]
    assert p >= 0.05
    table = pl.DataFrame({"format": ["label_only"], "auroc": [0.7], "model": ["a"]})
    assert "the difference is not significant" in headline(summary, table)
    empty = summary_across_configurations(constructed_paired({}))
    table = pl.DataFrame({"format": ["free_form"], "auroc": [0.6]})
    assert "No label-only SFT results" in headline(empty, table)


# --------------------------------------------------------------------------------------
# Error analysis and baselines
# --------------------------------------------------------------------------------------


def test_error_analysis_crosstab_on_hand_built_example():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0], dtype=bool)
    ref = np.array([0.9, 0.8, 0.2, 0.1, 0.1, 0.7, 0.2, 0.6])  # right: 0,1,3,4,6
    oth = np.array([0.9, 0.3, 0.7, 0.1, 0.8, 0.7, 0.2, 0.1])  # right: 0,2,3,6,7
    preds = hand_preds({"label_only": ref, "free_form": oth}, y)
    out = matched_error_analysis(preds, "label_only", "free_form")
    cross = {
        (r["reference_correct"], r["format_correct"]): r["n"]
        for r in out["crosstab"].iter_rows(named=True)
    }
    assert cross == {(True, True): 3, (True, False): 2, (False, True): 2, (False, False): 1}
    flips = out["flips"].row(0, named=True)
    assert flips["n_reference_only_correct"] == 2 and flips["n_format_only_correct"] == 2
    assert flips["accuracy_reference"] == flips["accuracy_format"] == 5 / 8
    assert flips["mcnemar_p_value"] == pytest.approx(1.0)
    subjects = out["subjects"].sort("subject_id")
    assert subjects["subject_id"].to_list() == [1, 2, 4, 7]
    assert subjects["flip"].to_list() == [
        "reference_only_correct",
        "format_only_correct",
        "reference_only_correct",
        "format_only_correct",
    ]
    # A threshold override re-labels the named configuration only.
    cid = "model=m/format=free_form/n_train=10/seed=1"
    preds = preds.with_columns(
        pl.concat_str(pl.lit("model=m/format="), "format", pl.lit("/n_train=10/seed=1")).alias(
            "config_id"
        )
    )
    out = matched_error_analysis(preds, "label_only", "free_form", {cid: 0.0})
    flips = out["flips"].row(0, named=True)
    assert flips["accuracy_format"] == 3 / 8  # everything predicted positive


def test_error_analysis_on_grid_with_missing_cells(grid):
    preds = grid["preds"].filter(
        pl.col("config_id") != "model=tiny/format=free_form/n_train=50/seed=1"
    )
    out = matched_error_analysis(preds, "label_only", ["free_form", "step_by_step"])
    assert out["flips"].height == 15
    assert out["crosstab"].height == 15 * 4
    assert (
        out["crosstab"].group_by("match_id", "format").agg(pl.col("n").sum())["n"] == N_SUBJECTS
    ).all()
    assert "generated_text" in out["subjects"].columns


def test_baseline_table(tmp_path):
    configs = grid_configurations(models=("tiny",), sizes=(50, 200), seeds=(1, 2))
    configs += [
        {"model": "tiny", "format": "logistic_regression", "n_train": n, "seed": s}
        for n in (50, 200)
        for s in (1, 2)
    ]
    table = load_metrics_table(write_grid(tmp_path, configs))
    out = baseline_table(table, ["logistic_regression"])
    assert out["format"][0] == "logistic_regression" and out["kind"][0] == "baseline"
    assert out.height == 4 * 3  # 4 formats x (2 sizes + all sizes)
    lr_all = out.filter((pl.col("format") == "logistic_regression") & pl.col("n_train").is_null())
    expected = table.filter(pl.col("format") == "logistic_regression")["auroc"].mean()
    assert lr_all["auroc_mean"][0] == pytest.approx(expected)
    assert lr_all["n_configurations"][0] == 4


def test_baseline_table_orders_formats_as_text_formats_defines_them(tmp_path):
    """Formats the report has no name for (the zero- and few-shot arms) come in the order of
    text.formats.FORMATS on every call; the grouped table's own row order is arbitrary."""
    configs = grid_configurations(models=("tiny",), sizes=(50,), seeds=(1,))
    configs += [
        {"model": "tiny", "format": fmt, "n_train": 50, "seed": 1}
        for fmt in ("zero_shot", "few_shot_labels", "logistic_regression")
    ]
    table = load_metrics_table(write_grid(tmp_path, configs))
    expected = ["zero_shot", "few_shot_labels"]
    assert [f for f in FORMATS if f in expected] == expected
    for _ in range(20):
        formats = baseline_table(table, ["logistic_regression"])["format"].to_list()
        assert [f for f in dict.fromkeys(formats) if "shot" in f] == expected


def test_mechanism_rows_follow_the_paired_table_for_unnamed_formats():
    paired = pl.DataFrame(
        {"format": ["zero_shot", "few_shot_labels"] * 3, "valid": [False] * 6},
        schema_overrides={"valid": pl.Boolean},
    ).with_columns(pl.lit(0.0).alias("auroc_diff"))
    table = pl.DataFrame({"format": ["label_only"], "valid": [True]})
    for _ in range(20):
        rows = mechanism_table(paired, table)["format"].to_list()
        assert rows == ["zero_shot", "few_shot_labels"]


def test_exclusion_reasons_are_listed_most_common_first_then_first_seen():
    """The headline lists why configurations were excluded, most common first and ties in the
    order first met, so that it does not change with Python's string hashing (it did)."""
    paired = pl.DataFrame({"format": ["free_form"], "valid": [False]})
    reasons = [
        "reached the answer slot unforced 0.1 (limit >= 0.95); answers failed to parse 0.9 "
        "(limit <= 0.5)",
        "most common generation 0.8 (limit <= 0.5); answers failed to parse 1 (limit <= 0.5)",
    ]
    table = pl.DataFrame({"valid": [False, False], "validity_reasons": reasons})
    _, exclusions = validity_sentences(paired, table)
    assert (
        "answers failed to parse (2 configurations), reached the answer slot unforced "
        "(1 configuration), most common generation (1 configuration)"
    ) in exclusions


def test_write_study_report_on_a_partial_grid(tmp_path, monkeypatch):
    from rationale_bench.report import figures

    monkeypatch.setattr(figures, "DPI", 60)
    configs = grid_configurations(models=("tiny",), sizes=(50,), seeds=(1, 2, 3))
    entries = write_grid(tmp_path / "runs", configs)
    entries[-1].predictions.unlink()  # a cell still running
    paths = write_study_report(entries, tmp_path / "report", n_boot=50)
    assert paths["missing"].read_text().strip() == config_id(configs[-1])
    assert "Partial report: 1 grid cell" in paths["headline"].read_text()
    assert pl.read_csv(paths["paired"]).height == 5
    for name in ("figure_paired_configurations", "figure_learning_curves"):
        assert paths[name].with_suffix(".png").stat().st_size > 0


def test_nothing_finished_yet():
    configs = grid_configurations(models=("tiny",), sizes=(50,), seeds=(1,))
    preds = load_predictions([])
    table = load_metrics_table([])
    paired = paired_differences(preds)
    summary = summary_across_configurations(paired)
    assert paired.height == table.height == summary.height == 0
    assert len(missing_cells(configs, table)) == 3
    text = headline(summary, table, missing=missing_cells(configs, table))
    assert "No label-only SFT results" in text and "3 grid cells without results" in text
    errors = matched_error_analysis(preds)
    assert errors["crosstab"].height == 0


def test_serialization_axis_is_a_matched_factor(tmp_path):
    """Formats are paired within a serialization variant, never across variants."""
    configs = [
        dict(c, serialization=v)
        for c in grid_configurations(models=("tiny",), sizes=(50,), seeds=(1,))
        for v in ("timeline_recent", "markdown_recent")
    ]
    entries = write_grid(tmp_path / "runs", configs)
    assert "serialization=markdown_recent" in str(entries[1].predictions)
    paths = write_study_report(entries, tmp_path / "report", n_boot=50)
    table = pl.read_csv(paths["metrics"])
    assert set(table["serialization"]) == {"timeline_recent", "markdown_recent"}
    paired = pl.read_csv(paths["paired"])
    assert paired.height == 2 * 2  # two rationale formats x two variants
    assert paired.group_by("serialization").len()["len"].to_list() == [2, 2]
    summary = pl.read_csv(paths["summary"])
    assert "serialization" in set(summary["by"])  # Δ by variant, too
