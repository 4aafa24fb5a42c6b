"""Study-level report: rationale formats against label-only SFT on the same held-out subjects.

The question of the benchmark is paired: does training on teacher rationales change the
held-out discrimination of *the same* model, trained on *the same* subjects with *the same*
seed, compared with training on the label alone?  So every comparison is made within a
matched group (all configuration factors equal except ``format``), on identical held-out
subjects, with a paired bootstrap (same resampled subjects for both formats) and DeLong's
paired test; the across-configuration summary then asks how consistent the sign is
(counts and a Wilcoxon signed-rank test over matched configurations).

Everything tolerates a partial grid: cells without outputs are listed by ``missing_cells`` and
simply absent from the tables; groups without a label-only run are skipped.

:func:`write_study_report` runs the steps in order, each in its own module:

* ``tables`` - load predictions, metrics.json and run.json of every configuration;
* ``validity`` - check matched training, flag degenerate configurations, gate the pairs;
* ``statistics`` - paired differences, the summary across configurations, baselines;
* ``error_analysis`` - correct/incorrect cross-tabs and per-subject flips;
* ``mechanism`` - which explanation of ΔAUROC the diagnostics support;
* ``prose`` - the headline; ``figures`` - every figure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from rationale_bench.report import figures
from rationale_bench.report.error_analysis import matched_error_analysis
from rationale_bench.report.mechanism import mechanism_markdown, mechanism_table
from rationale_bench.report.names import REFERENCE, format_order
from rationale_bench.report.prose import headline, validity_sentences
from rationale_bench.report.statistics import (
    baseline_table,
    paired_differences,
    summary_across_configurations,
)
from rationale_bench.report.tables import (
    Entry,
    as_outputs,
    available_outputs,
    config_id,
    load_metrics_table,
    load_predictions,
    missing_cells,
    thresholds_from_metrics,
)
from rationale_bench.report.validity import check_matched_training, gate_pairs, with_validity

# File name of each table the report writes, by the key write_study_report returns it under.
TABLE_FILES = {
    "metrics": "metrics.csv",
    "paired": "paired.csv",
    "summary": "summary.csv",
    "baselines": "baselines.csv",
    "baseline_metrics": "baseline_metrics.csv",
    "error_crosstab": "error_crosstab.csv",
    "error_flips": "error_flips.csv",
    "error_subjects": "error_subjects.csv",
    "missing": "missing.txt",
    "headline": "headline.md",
    "validity": "validity.csv",
    "mechanism": "mechanism.csv",
    "mechanism_text": "mechanism.md",
}
VALIDITY_COLUMNS = ["config_id", "format", "valid", "validity_reasons"]


@dataclass(frozen=True)
class StudyTables:
    """Everything the report computes before writing: tables, errors and what is missing."""

    table: pl.DataFrame  # one row per configuration, with validity
    preds: pl.DataFrame  # long held-out predictions
    paired: pl.DataFrame  # format - reference per matched configuration, gated
    summary: pl.DataFrame  # across configurations, valid pairs only
    mechanism: pl.DataFrame
    errors: dict[str, pl.DataFrame]  # crosstab, flips, subjects
    missing: list[str]  # config_ids without results
    formats: list[str]  # every format present, reference first


def study_tables(
    entries: list[Any],
    grid: list[Mapping[str, Any]],
    reference: str,
    baseline_formats: Sequence[str],
    n_boot: int,
    seed: int,
    gates: Mapping[str, Any],
) -> StudyTables:
    """Load the outputs that exist, check and gate them, and compute every table."""
    present, _ = available_outputs(entries)
    table = load_metrics_table(present)
    check_matched_training(table)
    table = with_validity(table, gates, reference)
    preds = load_predictions(present)
    missing = missing_cells(grid, [config_id(e.configuration) for e in present])
    paired = gate_pairs(
        paired_differences(preds, reference=reference, n_boot=n_boot, seed=seed), table
    )
    summary = summary_across_configurations(paired.filter(pl.col("valid")).drop("valid"))
    mechanism = mechanism_table(paired, table, reference)
    formats = format_order(table["format"].to_list() if table.height else [], reference)
    rationale_formats = [f for f in formats if f != reference and f not in baseline_formats]
    errors = matched_error_analysis(
        preds, reference, rationale_formats, thresholds_from_metrics(present)
    )
    return StudyTables(table, preds, paired, summary, mechanism, errors, missing, formats)


def write_tables(
    tables: StudyTables,
    paths: Mapping[str, Path],
    reference: str,
    baseline_formats: Sequence[str],
) -> None:
    """Every table, the headline and the mechanism section, at ``paths`` (TABLE_FILES)."""
    table = tables.table
    # metrics.csv: one row per fine-tuned configuration; baselines get their own table.
    is_baseline = pl.col("format").is_in(list(baseline_formats))
    table.filter(~is_baseline).write_csv(paths["metrics"])
    table.filter(is_baseline).write_csv(paths["baseline_metrics"])
    tables.paired.write_csv(paths["paired"])
    tables.summary.write_csv(paths["summary"])
    baseline_table(table, baseline_formats, reference).write_csv(paths["baselines"])
    tables.errors["crosstab"].write_csv(paths["error_crosstab"])
    tables.errors["flips"].write_csv(paths["error_flips"])
    tables.errors["subjects"].write_csv(paths["error_subjects"])
    paths["missing"].write_text("".join(f"{m}\n" for m in tables.missing))
    validity = validity_sentences(tables.paired, table.filter(~is_baseline))
    text = headline(
        tables.summary, table, reference, tables.missing, baseline_formats, validity=validity
    )
    paths["headline"].write_text(text + "\n")
    table.select(VALIDITY_COLUMNS).write_csv(paths["validity"])
    tables.mechanism.write_csv(paths["mechanism"])
    paths["mechanism_text"].write_text(mechanism_markdown(tables.mechanism))


def write_figures(
    tables: StudyTables,
    fig: Path,
    reference: str,
    baseline_formats: Sequence[str],
    attrition: pl.DataFrame | None,
    table1: pl.DataFrame | None,
    rationale_qc: pl.DataFrame | None,
) -> dict[str, Path]:
    """Every figure under ``fig``; returns ``figure_<name>`` -> path stem."""
    table, paired, formats = tables.table, tables.paired, tables.formats
    # Baselines are not matched to a fine-tuned model; their own table and curves show them.
    lm_formats = [f for f in formats if f not in baseline_formats]
    figures.paired_configurations(table, lm_formats, fig / "paired_configurations", reference)
    figures.delta_by_factor(paired, None, fig / "delta_by_factor")
    figures.error_analysis(tables.errors["crosstab"], fig / "error_analysis")
    figures.token_dilution(paired, table, fig / "token_dilution")
    figures.roc_and_calibration(tables.preds, fig / "roc_and_calibration", formats)
    figures.learning_curves(table, fig / "learning_curves", formats)
    names = ["paired_configurations", "delta_by_factor", "error_analysis", "token_dilution"]
    names += ["roc_and_calibration", "learning_curves"]
    if attrition is not None:
        figures.cohort_overview(attrition, table1, fig / "cohort_overview")
        names.append("cohort_overview")
    if rationale_qc is not None:
        figures.rationale_qc(rationale_qc, fig / "rationale_qc")
        names.append("rationale_qc")
    return {f"figure_{n}": fig / n for n in names}


def write_study_report(
    entries: Iterable[Entry],
    out_dir: Path,
    configurations: Iterable[Mapping[str, Any]] | None = None,
    reference: str = REFERENCE,
    baseline_formats: Sequence[str] = ("logistic_regression",),
    n_boot: int = 1000,
    seed: int = 0,
    attrition: pl.DataFrame | None = None,
    table1: pl.DataFrame | None = None,
    rationale_qc: pl.DataFrame | None = None,
    gates: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write every table, the headline and every figure for the outputs that exist.

    ``gates`` (the config's ``validity`` section) mark each configuration valid or degenerate;
    the headline and summary count only matched pairs of valid configurations, and say how many
    were excluded and why. Matched formats must have trained alike (check_matched_training).

    ``configurations`` (the full grid) defaults to the entries' configurations; cells whose
    predictions or metrics are missing are listed in missing.txt and in the headline.
    Returns name -> path of what was written (figure paths are stems, .png and .svg).
    """
    entries = [as_outputs(e) for e in entries]
    grid = [e.configuration for e in entries] if configurations is None else list(configurations)
    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    tables = study_tables(entries, grid, reference, baseline_formats, n_boot, seed, gates or {})
    paths = {key: out_dir / name for key, name in TABLE_FILES.items()}
    write_tables(tables, paths, reference, baseline_formats)
    figure_paths = write_figures(
        tables, out_dir / "figures", reference, baseline_formats, attrition, table1, rationale_qc
    )
    return paths | figure_paths
