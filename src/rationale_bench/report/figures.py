"""Figures of the study report, each written as PNG and SVG next to each other.

Conventions, so that every figure reads on its own:

* colours are the Okabe-Ito colour-blind-safe palette, one fixed colour per format in every
  figure (label-only blue, free-form orange, step-by-step green, baselines grey);
* curves and groups are labelled directly (text next to the data, in the data's colour)
  rather than through a legend; titles say what is plotted and over which configurations;
* every function accepts a partial grid: absent formats or cells are skipped, and a figure
  with nothing to show says so in words instead of failing.

Figures are drawn on ``matplotlib.figure.Figure`` objects (the Agg canvas, no pyplot), so no
global state or open windows are left behind.  Every function takes a path *stem* (a
``.png``/``.svg`` suffix is dropped) and returns the two paths it wrote.
"""

from __future__ import annotations

import functools
import math
import textwrap
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import polars as pl
from matplotlib.figure import Figure
from scipy import stats

from rationale_bench.evaluate import metrics
from rationale_bench.report.names import (
    HIGHER_IS_BETTER,
    METRIC_NAMES,
    REFERENCE,
    format_name,
    format_order,
    paired_factors,
    table_factors,
)

# Okabe M, Ito K. Color universal design (2008): distinguishable with any colour vision.
FORMAT_COLOURS = {
    "label_only": "#0072B2",  # blue
    "free_form": "#E69F00",  # orange
    "step_by_step": "#009E73",  # bluish green
    "logistic_regression": "#666666",  # grey: baselines
}
SPARE_COLOURS = ("#CC79A7", "#D55E00", "#56B4E9", "#000000", "#999999")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
DPI = 150
FACTOR_NAMES = {"n_train": "training size (n_train)", "seed": "seed", "model": "model"}

STYLE = {
    "font.size": 8.5,
    "axes.titlesize": 9.5,
    "figure.titlesize": 10.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    # Reproducible SVG element ids and no timestamp, so reruns give identical files.
    "svg.hashsalt": "rationale-bench",
    "svg.fonttype": "path",
}


def colour_of(fmt: str, order: Sequence[str] = ()) -> str:
    """The fixed colour of a format (unknown formats take spare colours in ``order``)."""
    if fmt in FORMAT_COLOURS:
        return FORMAT_COLOURS[fmt]
    unknown = [f for f in order if f not in FORMAT_COLOURS]
    i = unknown.index(fmt) if fmt in unknown else zlib.crc32(fmt.encode())
    return SPARE_COLOURS[i % len(SPARE_COLOURS)]


def _styled(func: Callable[..., list[Path]]) -> Callable[..., list[Path]]:
    """Draw and save inside the report style (rc params are read at save time for SVG)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> list[Path]:
        with matplotlib.rc_context(STYLE):
            return func(*args, **kwargs)

    return wrapper


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def save_figure(fig: Figure, path: Path | str, dpi: int | None = None) -> list[Path]:
    """Write ``<stem>.png`` and ``<stem>.svg`` (PNG at ``dpi``, default ``DPI``); return both."""
    stem = Path(path)
    if stem.suffix.lower() in {".png", ".svg", ".pdf"}:
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for ext, meta in (("png", {"Software": None}), ("svg", {"Date": None})):
        target = stem.parent / f"{stem.name}.{ext}"
        fig.savefig(target, dpi=dpi or DPI, metadata=meta, bbox_inches="tight", pad_inches=0.05)
        out.append(target)
    return out


def _message_figure(path: Path | str, title: str, message: str) -> list[Path]:
    """A figure that says in words why there is nothing to plot (partial grids)."""
    fig = _figure(6.5, 1.8)
    ax = fig.add_subplot()
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.5, 0.45, textwrap.fill(message, 80), ha="center", va="center", color="0.3")
    return save_figure(fig, path)


def _spread(values: Sequence[float], gap: float) -> list[float]:
    """Nudge label positions apart so that neighbours are at least ``gap`` apart."""
    order = np.argsort(values)
    placed = np.asarray(values, dtype=float)[order].copy()
    for i in range(1, placed.size):
        placed[i] = max(placed[i], placed[i - 1] + gap)
    out = np.empty_like(placed)
    out[order] = placed
    return out.tolist()


def _label_line_ends(
    ax: Any, ends: Sequence[tuple[str, float, float]], gap: float, order: Sequence[str], offset: int
) -> None:
    """Name each format beside the end of its line (no legend), spread so labels never overlap.

    ``ends`` holds (format, x, y) of each line's last point.
    """
    ys = _spread([e[2] for e in ends], gap)
    for (fmt, xe, _), ye in zip(ends, ys, strict=True):
        ax.annotate(
            _short(fmt),
            (xe, ye),
            xytext=(offset, 0),
            textcoords="offset points",
            color=colour_of(fmt, order),
            va="center",
            weight="bold",
        )


def _short(fmt: str) -> str:
    """Format name without the trailing 'SFT' / 'rationale SFT' for tight labels."""
    return format_name(fmt).replace(" rationale SFT", "").replace(" SFT", "")


def _present_formats(frame: pl.DataFrame, formats: Sequence[str] | None) -> list[str]:
    present = frame["format"].unique(maintain_order=True).to_list() if frame.height else []
    if formats is None:
        return format_order(present)
    return [f for f in formats if f in set(present)] + [
        f for f in format_order(present) if f not in set(formats)
    ]


def _models(frame: pl.DataFrame) -> list[Any]:
    """Models present (non-null), or [None] when the table has no model column."""
    if "model" not in frame.columns:
        return [None]
    models = frame["model"].drop_nulls().unique(maintain_order=True).to_list()
    return models or [None]


def _for_model(frame: pl.DataFrame, model: Any) -> pl.DataFrame:
    """Rows of a model plus model-less rows (baselines are drawn with every model)."""
    if model is None or "model" not in frame.columns:
        return frame
    return frame.filter((pl.col("model") == model) | pl.col("model").is_null())


# --------------------------------------------------------------------------------------
# 1. Paired configurations
# --------------------------------------------------------------------------------------


def _mark_degenerate(ax: Any, pairs: pl.DataFrame, metric: str) -> int:
    """A red x over each pair with a degenerate configuration; returns how many."""
    if "valid" not in pairs.columns:
        return 0
    bad = pairs.filter(~(pl.col("valid").fill_null(False) & pl.col("valid_ref").fill_null(False)))
    if bad.height:
        ax.scatter(
            bad[f"{metric}_ref"].to_numpy(),
            bad[metric].to_numpy(),
            s=60,
            marker="x",
            color="red",
            lw=1.2,
            zorder=4,
            label="degenerate (excluded)",
        )
    return bad.height


def _paired_with_reference(
    metrics_table: pl.DataFrame, reference: str, others: Sequence[str], metric: str
) -> tuple[dict[str, pl.DataFrame], list[str]]:
    """Each other format's rows joined to the reference's on the matched factors (reference
    columns suffixed ``_ref``), and the CI columns present ([] when there are none)."""
    axes = [f for f in table_factors(metrics_table) if f != "format"]
    ci = [f"{metric}_ci_low", f"{metric}_ci_high"]
    has_ci = all(c in metrics_table.columns for c in ci)
    keep = [metric, *ci] if has_ci else [metric]
    if "valid" in metrics_table.columns:  # degenerate configurations are marked, not hidden
        keep.append("valid")
    ref = metrics_table.filter(pl.col("format") == reference).select(
        *axes, *[pl.col(c).alias(f"{c}_ref") for c in keep]
    )
    joined = {
        fmt: metrics_table.filter(pl.col("format") == fmt)
        .select(*axes, *keep)
        .join(ref, on=axes, how="inner", nulls_equal=True)
        .drop_nulls([metric, f"{metric}_ref"])
        for fmt in others
    }
    return joined, ci if has_ci else []


def _shared_limits(joined: Mapping[str, pl.DataFrame], metric: str) -> tuple[float, float]:
    """One range for both axes of every panel, padded, within [0, 1]."""
    values = np.concatenate(
        [np.r_[j[metric].to_numpy(), j[f"{metric}_ref"].to_numpy()] for j in joined.values()]
    )
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.4, 1.0)
    pad = max(0.05, 0.1 * (hi - lo))
    return (max(0.0, lo - pad), min(1.0, hi + pad))


def _diagonal_panel(
    ax: Any,
    lims: tuple[float, float],
    better_above: bool,
    fmt: str,
    reference: str,
    mname: str,
    colour: str,
) -> None:
    """The empty panel: the diagonal, the shaded "format worse" side, limits and labels."""
    ax.set_title(f"{format_name(fmt)} vs {_short(reference)}", color=colour)
    ax.plot(lims, lims, color="0.35", lw=0.9, ls="--", zorder=1)
    # Shade the "format worse" side of the diagonal.
    worse_y2 = lims[0] if better_above else lims[1]
    ax.fill_between(lims, lims, worse_y2, color="0.5", alpha=0.07, lw=0, zorder=0)
    ax.set_xlim(lims)
    ax.set_ylim(lims)
    ax.set_aspect("equal")
    ax.set_xlabel(f"{format_name(reference)} {mname} (held-out)")
    ax.set_ylabel(f"{format_name(fmt)} {mname} (held-out)")
    if lims[0] < 0.5 < lims[1]:
        ax.axhline(0.5, color="0.75", lw=0.6, ls=":")
        ax.axvline(0.5, color="0.75", lw=0.6, ls=":")


def _scatter_by_model(ax: Any, j: pl.DataFrame, metric: str, colour: str) -> int:
    """One marker shape per model; with several models each model's mean labelled by name.
    Returns the number of models."""
    models = j["model"].unique(maintain_order=True).to_list() if "model" in j.columns else [None]
    for i, model in enumerate(models):
        g = j if model is None else j.filter(pl.col("model").eq_missing(model))
        gx, gy = g[f"{metric}_ref"].to_numpy(), g[metric].to_numpy()
        marker = MARKERS[i % len(MARKERS)]
        ax.scatter(
            gx, gy, s=22, marker=marker, color=colour, alpha=0.8, ec="white", lw=0.4, zorder=2
        )
        if len(models) > 1:
            ax.scatter(
                gx.mean(), gy.mean(), s=70, marker=marker, color=colour, ec="black", zorder=3
            )
            ax.annotate(
                str(model),
                (gx.mean(), gy.mean()),
                xytext=(6, 4),
                textcoords="offset points",
                fontsize=8,
            )
    return len(models)


def _paired_points(
    ax: Any,
    fmt: str,
    j: pl.DataFrame,
    reference: str,
    metric: str,
    ci: Sequence[str],
    better_above: bool,
    colour: str,
) -> None:
    """The matched configurations of one format, with the worse/better counts in the title."""
    if j.height == 0:
        ax.text(0.5, 0.5, "no matched configurations yet", ha="center", transform=ax.transAxes)
        return
    x, y = j[f"{metric}_ref"].to_numpy(), j[metric].to_numpy()
    if ci:
        xerr = np.abs(np.vstack([x - j[f"{ci[0]}_ref"], j[f"{ci[1]}_ref"] - x]))
        yerr = np.abs(np.vstack([y - j[ci[0]], j[ci[1]] - y]))
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="none", ecolor="0.82", lw=0.6, zorder=1)
    n_models = _scatter_by_model(ax, j, metric, colour)
    n = x.size
    worse = int(np.sum(y < x)) if better_above else int(np.sum(y > x))
    better = int(np.sum(y > x)) if better_above else int(np.sum(y < x))
    degenerate = _mark_degenerate(ax, j, metric)
    # The counts go in the title so that they never cover a point.
    ax.set_title(
        f"{format_name(fmt)} vs {_short(reference)}\n"
        f"worse in {worse} of {n} (shaded side), better in {better}"
        + (f"\n{degenerate} degenerate (red x, excluded)" if degenerate else ""),
        color=colour,
    )
    ax.text(
        0.5,
        0.5,
        "equal",
        rotation=45,
        transform=ax.transAxes,
        color="0.35",
        ha="center",
        va="bottom",
        fontsize=7.5,
        rotation_mode="anchor",
    )
    if n_models == 1 and n > 1:
        ax.scatter(x.mean(), y.mean(), s=80, marker="X", color="black", zorder=3)
        ax.annotate(
            f"mean of {n}", (x.mean(), y.mean()), xytext=(6, -10), textcoords="offset points"
        )


@_styled
def paired_configurations(
    metrics_table: pl.DataFrame,
    formats: Sequence[str],
    path: Path | str,
    reference: str = REFERENCE,
    metric: str = "auroc",
) -> list[Path]:
    """Reference-format AUROC (x) vs each other format's AUROC (y), one point per matched config.

    Points below the diagonal are configurations where the format did worse than the
    reference on the same held-out subjects; the count is written in each panel.  Marker shape
    is the model; with several models each model's mean is labelled by name.
    """
    mname = METRIC_NAMES.get(metric, metric)
    title = (
        f"Held-out {mname}: {format_name(reference)} vs each other format, "
        "per matched configuration"
    )
    if metrics_table.height == 0 or metric not in metrics_table.columns:
        return _message_figure(path, title, "No configuration has results yet.")
    present = _present_formats(metrics_table, formats)
    others = [f for f in present if f != reference]
    if reference not in present:
        return _message_figure(
            path, title, f"No {format_name(reference)} results yet: nothing to pair."
        )
    if not others:
        return _message_figure(path, title, f"Only {format_name(reference)} results so far.")
    joined, ci = _paired_with_reference(metrics_table, reference, others, metric)
    lims = _shared_limits(joined, metric)
    better_above = HIGHER_IS_BETTER.get(metric, True)

    fig = _figure(3.5 * len(others) + 0.3, 3.9)
    panels = fig.subplots(1, len(others), squeeze=False)[0]
    for ax, fmt in zip(panels, others, strict=True):
        colour = colour_of(fmt, present)
        _diagonal_panel(ax, lims, better_above, fmt, reference, mname, colour)
        _paired_points(ax, fmt, joined[fmt], reference, metric, ci, better_above, colour)
    subtitle = "same model, training size and seed; bars: 95% bootstrap CIs"
    fig.suptitle(f"{title}\n({subtitle})")
    return save_figure(fig, path)


# --------------------------------------------------------------------------------------
# 2. Differences by factor
# --------------------------------------------------------------------------------------


def _mean_ci(d: np.ndarray) -> tuple[float, float]:
    """Mean and half-width of its 95% t interval across configurations (NaN below 2)."""
    if d.size < 2:
        return float(np.mean(d)) if d.size else math.nan, math.nan
    half = stats.t.ppf(0.975, d.size - 1) * np.std(d, ddof=1) / math.sqrt(d.size)
    return float(np.mean(d)), float(half)


def _factor_categories(
    paired: pl.DataFrame, factor: str, formats: Sequence[str]
) -> list[tuple[str, str, pl.DataFrame]]:
    """(label, format, rows) of one panel: each format, or each level of ``factor`` x format."""
    if factor == "format":
        return [(format_name(fmt), fmt, paired.filter(pl.col("format") == fmt)) for fmt in formats]
    cats = []
    for level in paired[factor].unique().sort(nulls_last=True).to_list():
        for fmt in formats:
            rows = paired.filter(pl.col(factor).eq_missing(level) & (pl.col("format") == fmt))
            if rows.height:
                cats.append((f"{factor} = {level} · {_short(fmt)}", fmt, rows))
    return cats


def _delta_row(
    ax: Any, yc: float, rows: pl.DataFrame, colour: str, metric: str, sign: float
) -> str:
    """One category at height ``yc``: its configurations with CIs and the mean with its t
    interval; returns the note written on the right."""
    diff = f"{metric}_diff"
    d = rows[diff].to_numpy().astype(float)
    lo = rows[f"{metric}_ci_low"].to_numpy().astype(float)
    hi = rows[f"{metric}_ci_high"].to_numpy().astype(float)
    ok = np.isfinite(d)
    d, lo, hi = d[ok], lo[ok], hi[ok]
    offsets = np.linspace(-0.3, 0.3, d.size) if d.size > 1 else np.zeros(d.size)
    ax.hlines(yc + offsets, lo, hi, color=colour, alpha=0.3 if d.size > 3 else 0.7, lw=0.7)
    ax.scatter(d, yc + offsets, s=7, color=colour, alpha=0.7, lw=0)
    mean, half = _mean_ci(d)
    if not d.size:
        return f"no defined Δ{METRIC_NAMES.get(metric, metric)}"
    ax.errorbar(
        mean,
        yc,
        xerr=None if math.isnan(half) else half,
        fmt="D",
        color="black",
        mfc=colour,
        ms=6,
        capsize=3,
        lw=1.2,
        zorder=3,
    )
    worse = int(np.sum(sign * d < 0))
    return f"mean {mean:+.3f}; worse {worse}/{d.size}"


def _factor_panel(
    ax: Any,
    factor: str,
    cats: Sequence[tuple[str, str, pl.DataFrame]],
    formats: Sequence[str],
    metric: str,
    sign: float,
) -> None:
    """One panel of delta_by_factor: a row per category, zero line, labels."""
    ticks = []
    for i, (label, fmt, rows) in enumerate(cats):
        yc = -i
        note = _delta_row(ax, yc, rows, colour_of(fmt, formats), metric, sign)
        ax.text(1.01, yc, note, transform=ax.get_yaxis_transform(), va="center", fontsize=7.5)
        ticks.append((yc, label))
    ax.axvline(0.0, color="0.3", lw=0.8)
    ax.set_yticks([t for t, _ in ticks], [label for _, label in ticks])
    ax.set_ylim(-len(cats) + 0.4, 0.6)
    ax.set_title(f"by {FACTOR_NAMES.get(factor, factor.replace('_', ' '))}", loc="left")
    ax.tick_params(axis="y", length=0)


@_styled
def delta_by_factor(
    paired: pl.DataFrame,
    factors: Sequence[str] | None,
    path: Path | str,
    metric: str = "auroc",
) -> list[Path]:
    """Paired ΔAUROC (format - reference) per configuration, grouped by each factor.

    One panel per factor (format, model, n_train, and teacher/serialization when present;
    ``factors=None`` picks these).  Small dots: configurations with their paired 95% bootstrap
    CI; diamond: mean with its 95% t interval across configurations; the text on the right
    gives the mean and how many configurations were worse.
    """
    mname = METRIC_NAMES.get(metric, metric)
    title = f"Paired Δ{mname} (format − reference) on the same held-out subjects, by factor"
    diff = f"{metric}_diff"
    if paired.height == 0 or diff not in paired.columns:
        return _message_figure(path, title, "No matched pair of formats has results yet.")
    reference = paired["reference"][0]
    if factors is None:
        factors = ["format", *[f for f in paired_factors(paired) if f != "seed"]]
    factors = [f for f in dict.fromkeys(factors) if f in paired.columns]
    formats = format_order(paired["format"].unique(maintain_order=True).to_list(), reference)
    sign = 1.0 if HIGHER_IS_BETTER.get(metric, True) else -1.0
    panels = [(factor, _factor_categories(paired, factor, formats)) for factor in factors]

    heights = [len(c) + 0.8 for _, c in panels]
    fig = _figure(7.6, 0.34 * sum(heights) + 1.4)
    axs = fig.subplots(len(panels), 1, squeeze=False, height_ratios=heights, sharex=True)[:, 0]
    for ax, (factor, cats) in zip(axs, panels, strict=True):
        _factor_panel(ax, factor, cats, formats, metric, sign)
    axs[-1].set_xlabel(
        f"Δ{mname} = format − {format_name(reference)}   (← format worse  |  format better →)"
    )
    subtitle = (
        "dots: matched configurations with paired 95% bootstrap CIs; "
        "diamonds: mean with 95% CI across configurations"
    )
    fig.suptitle(f"{title}\n({subtitle})")
    return save_figure(fig, path)


# --------------------------------------------------------------------------------------
# 3. Error analysis
# --------------------------------------------------------------------------------------


@_styled
def error_analysis(
    crosstab: pl.DataFrame | Mapping[str, pl.DataFrame], path: Path | str
) -> list[Path]:
    """Correct/incorrect cross-tab of reference vs each format, pooled over matched configs.

    ``crosstab`` is the ``"crosstab"`` table of ``error_analysis.matched_error_analysis`` (or the
    dict itself).  The off-diagonal cells are the flips: subjects one format gets right and
    the other wrong at each configuration's own threshold.
    """
    if isinstance(crosstab, Mapping):
        crosstab = crosstab["crosstab"]
    title = "Matched held-out predictions: subjects each format classifies correctly"
    if crosstab.height == 0 or int(crosstab["n"].sum()) == 0:
        return _message_figure(path, title, "No matched configuration with both formats yet.")
    pairs = crosstab.select("reference", "format").unique(maintain_order=True)
    formats = format_order(pairs["format"].to_list())
    pairs = sorted(pairs.iter_rows(), key=lambda r: formats.index(r[1]))
    fig = _figure(3.4 * len(pairs) + 0.3, 3.7)
    axs = fig.subplots(1, len(pairs), squeeze=False)[0]
    cmap = matplotlib.colormaps["cividis"]
    for ax, (reference, fmt) in zip(axs, pairs, strict=True):
        part = crosstab.filter((pl.col("reference") == reference) & (pl.col("format") == fmt))
        m = np.zeros((2, 2), dtype=np.int64)
        for rc, fc, n in part.select("reference_correct", "format_correct", "n").iter_rows():
            m[0 if rc else 1, 0 if fc else 1] += n
        total = int(m.sum())
        ax.imshow(m, cmap=cmap, vmin=0, vmax=max(int(m.max()), 1))
        for i in range(2):
            for k in range(2):
                share = m[i, k] / total if total else 0.0
                # Light text on the dark (low) end of cividis, dark text on the light end.
                colour = "white" if m[i, k] < 0.55 * m.max() else "black"
                ax.text(k, i, f"{m[i, k]:,}\n{share:.1%}", ha="center", va="center", color=colour)
        ax.set_xticks([0, 1], ["correct", "wrong"])
        ax.set_yticks([0, 1], ["correct", "wrong"])
        ax.spines[:].set_visible(False)
        n_cfg = part["match_id"].n_unique() if "match_id" in part.columns else 1
        ax.set_xlabel(
            f"{format_name(fmt)}\nflips: {m[0, 1]:,} right→wrong, {m[1, 0]:,} wrong→right",
            color=colour_of(fmt, formats),
        )
        ax.set_ylabel(format_name(reference), color=colour_of(reference, formats))
        ax.set_title(
            f"{_short(fmt)} vs {_short(reference)}: {n_cfg} configuration(s),\n"
            f"{total:,} subject-predictions"
        )
    fig.suptitle(
        f"{title}\n(counts and share, pooled over matched configurations; "
        "each configuration at its own threshold)"
    )
    return save_figure(fig, path)


# --------------------------------------------------------------------------------------
# 4. Token dilution
# --------------------------------------------------------------------------------------


def _with_loss_share(paired: pl.DataFrame, runs_table: pl.DataFrame, metric: str) -> pl.DataFrame:
    """Paired rows with the format's run ``mean_label_loss_share``; rows lacking either dropped."""
    diff = f"{metric}_diff"
    keys = [f for f in paired_factors(paired) if f in runs_table.columns] + ["format"]
    runs = runs_table.select(*keys, "mean_label_loss_share").unique(keys, keep="first")
    j = paired.join(runs, on=keys, how="left", nulls_equal=True).drop_nulls(
        ["mean_label_loss_share", diff]
    )
    return j.filter(pl.col(diff).is_not_nan() & pl.col("mean_label_loss_share").is_not_nan())


def _dilution_points(
    ax: Any, j: pl.DataFrame, formats: Sequence[str], metric: str
) -> list[tuple[str, str]]:
    """Each format's configurations with paired CIs; returns (format, label with Spearman's rho)."""
    labels = []
    for fmt in formats:
        g = j.filter(pl.col("format") == fmt)
        x = 100.0 * g["mean_label_loss_share"].to_numpy()
        y = g[f"{metric}_diff"].to_numpy()
        yerr = np.abs(np.vstack([y - g[f"{metric}_ci_low"], g[f"{metric}_ci_high"] - y]))
        colour = colour_of(fmt, formats)
        ax.errorbar(
            x,
            y,
            yerr=yerr,
            fmt="o",
            color=colour,
            ecolor=colour,
            elinewidth=0.6,
            alpha=0.75,
            ms=4.5,
            mec="white",
            mew=0.4,
        )
        if x.size >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0:
            rho = stats.spearmanr(x, y).statistic
            labels.append((fmt, f"{format_name(fmt)}: Spearman ρ = {rho:+.2f} (n = {x.size})"))
        else:
            labels.append((fmt, f"{format_name(fmt)}: n = {x.size} (too few for a correlation)"))
    return labels


def _label_formats_above(
    ax: Any, labels: Sequence[tuple[str, str]], formats: Sequence[str]
) -> None:
    """Coloured labels in headroom above the data, so that they never cover points."""
    lo_y, hi_y = ax.get_ylim()
    ax.set_ylim(lo_y, hi_y + (hi_y - lo_y) * 0.09 * (len(labels) + 0.5))
    for k, (fmt, text) in enumerate(labels):
        ax.text(
            0.02,
            0.97 - 0.065 * k,
            text,
            color=colour_of(fmt, formats),
            transform=ax.transAxes,
            va="top",
            fontsize=8.5,
            weight="bold",
        )


def _dilution_axes(ax: Any, j: pl.DataFrame, reference: str, mname: str, title: str) -> None:
    """Zero line, x range from the loss shares, axis labels and title."""
    ax.axhline(0.0, color="0.3", lw=0.8)
    ax.text(
        1.0,
        0.0,
        f"no difference from {_short(reference)} ",
        transform=ax.get_yaxis_transform(),
        ha="right",
        va="bottom",
        color="0.3",
        fontsize=7.5,
    )
    x_all = 100.0 * j["mean_label_loss_share"].to_numpy()
    ax.set_xlim(0.0, min(100.0, max(5.0, 1.15 * float(x_all.max()))))
    ax.set_xlabel(
        "answer tokens' mean share of the training loss (%, from run.json)\n"
        f"({format_name(reference)} trains on the answer only: 100%)"
    )
    ax.set_ylabel(f"Δ{mname} vs {format_name(reference)} (held-out, paired 95% CI)")
    ax.set_title(title)


@_styled
def token_dilution(
    paired: pl.DataFrame,
    runs_table: pl.DataFrame | None,
    path: Path | str,
    metric: str = "auroc",
) -> list[Path]:
    """ΔAUROC (y) vs the answer tokens' mean share of the training loss (x) of the format's run.

    ``runs_table`` has the configuration columns and ``mean_label_loss_share`` (the metrics
    table of ``tables.load_metrics_table`` does).  Spearman's rho per format is written
    next to the format's name.
    """
    mname = METRIC_NAMES.get(metric, metric)
    title = (
        f"Δ{mname} vs the answer tokens' share of the training loss (one point per configuration)"
    )
    if (
        paired.height == 0
        or runs_table is None
        or "mean_label_loss_share" not in runs_table.columns
    ):
        return _message_figure(path, title, "No paired results with training-run loss shares yet.")
    j = _with_loss_share(paired, runs_table, metric)
    if j.height == 0:
        return _message_figure(
            path, title, "The paired configurations have no run.json loss share."
        )
    reference = j["reference"][0]
    formats = format_order(j["format"].unique(maintain_order=True).to_list(), reference)
    fig = _figure(6.6, 4.3)
    ax = fig.add_subplot()
    labels = _dilution_points(ax, j, formats, metric)
    _label_formats_above(ax, labels, formats)
    _dilution_axes(ax, j, reference, mname, title)
    return save_figure(fig, path)


# --------------------------------------------------------------------------------------
# 5. ROC and calibration
# --------------------------------------------------------------------------------------


def _roc(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, s)
    return fpr, tpr


def _roc_curves(
    ax: Any, part: pl.DataFrame, group_cols: Sequence[str], grid: np.ndarray, colour: str
) -> list[float]:
    """A thin ROC curve per configuration of one format and a thick mean curve; returns the
    configurations' AUROCs (those with both classes)."""
    tprs, aucs = [], []
    configs = part.group_by(list(group_cols), maintain_order=True) if group_cols else [(0, part)]
    for _, g in configs:
        y = g["boolean_value"].to_numpy().astype(bool)
        s = g["predicted_boolean_probability"].to_numpy().astype(float)
        if y.all() or not y.any():
            continue  # ROC undefined with one class
        fpr, tpr = _roc(y, s)
        ax.plot(fpr, tpr, color=colour, alpha=0.18, lw=0.6)
        tprs.append(np.interp(grid, fpr, tpr))
        aucs.append(metrics.auroc(y, s))
    if tprs:
        mean_tpr = np.mean(tprs, axis=0)
        mean_tpr[0] = 0.0
        ax.plot(grid, mean_tpr, color=colour, lw=2.0)
    return aucs


def _calibration_line(
    ax: Any, part: pl.DataFrame, colour: str, n_bins: int
) -> tuple[np.ndarray, np.ndarray]:
    """Predictions pooled over a format's configurations, in quantile bins; returns (x, y)."""
    y_all = part["boolean_value"].to_numpy().astype(bool)
    s_all = part["predicted_boolean_probability"].to_numpy().astype(float)
    bins = metrics.calibration_bins(y_all, s_all, n_bins=n_bins, strategy="quantile")
    xp = np.array([b["mean_predicted"] for b in bins])
    yp = np.array([b["observed_rate"] for b in bins])
    ax.plot(xp, yp, marker="o", ms=3.5, color=colour, lw=1.4)
    return xp, yp


def _roc_axes(
    ax: Any, roc_labels: Sequence[tuple[str, str]], order: Sequence[str], label: str
) -> None:
    """Direct labels (a coloured line of text per format), chance line, limits and titles."""
    for k, (fmt, text) in enumerate(reversed(roc_labels)):
        ax.text(
            0.98,
            0.04 + 0.07 * k,
            text,
            color=colour_of(fmt, order),
            ha="right",
            transform=ax.transAxes,
            weight="bold",
        )
    ax.plot([0, 1], [0, 1], color="0.6", ls=":", lw=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false-positive rate (1 − specificity)")
    ax.set_ylabel("true-positive rate (sensitivity)")
    ax.set_title(f"{label}ROC (thin: each configuration; thick: mean curve)")


def _calibration_axes(
    ax: Any,
    cal_ends: Sequence[tuple[str, float, float]],
    cal_max: float,
    order: Sequence[str],
    label: str,
    n_bins: int,
) -> None:
    """Line-end labels, the perfect-calibration diagonal, limits and titles."""
    lim = min(1.0, 1.08 * cal_max)
    if cal_ends:
        _label_line_ends(ax, cal_ends, 0.06 * lim, order, offset=4)
    ax.plot([0, lim], [0, lim], color="0.6", ls=":", lw=0.8)
    ax.text(
        0.5 * lim,
        0.5 * lim,
        "perfect calibration",
        rotation=45,
        color="0.5",
        ha="center",
        va="bottom",
        rotation_mode="anchor",
        fontsize=7.5,
    )
    ax.set_xlim(0, lim)
    ax.set_ylim(0, lim)
    ax.set_aspect("equal")
    ax.set_xlabel("mean predicted 5-year ADRD risk (probability)")
    ax.set_ylabel("observed 5-year ADRD rate (proportion)")
    ax.set_title(f"{label}calibration ({n_bins} quantile bins, configurations pooled)")


@_styled
def roc_and_calibration(
    preds: pl.DataFrame,
    path: Path | str,
    formats: Sequence[str] | None = None,
    n_bins: int = 10,
) -> list[Path]:
    """Per model: ROC curves per format (thin: each configuration; thick: mean curve) and
    calibration curves (predictions pooled over the format's configurations, quantile bins).
    """
    title = "Held-out ROC and calibration per format"
    if "split" in preds.columns:
        preds = preds.filter(pl.col("split") == "held_out")
    if preds.height == 0:
        return _message_figure(path, title, "No held-out predictions yet.")
    order = _present_formats(preds, formats)
    models = _models(preds)
    # One ROC curve per configuration (config_id from load_predictions, else the factors).
    group_cols = ["config_id"] if "config_id" in preds.columns else table_factors(preds)
    grid = np.linspace(0.0, 1.0, 201)
    fig = _figure(8.6, 3.8 * len(models) + 0.4)
    axs = fig.subplots(len(models), 2, squeeze=False)
    for (ax_roc, ax_cal), model in zip(axs, models, strict=True):
        sub = _for_model(preds, model)
        roc_labels, cal_ends, cal_max = [], [], 0.05
        for fmt in order:
            part = sub.filter(pl.col("format") == fmt)
            if part.height == 0:
                continue
            colour = colour_of(fmt, order)
            aucs = _roc_curves(ax_roc, part, group_cols, grid, colour)
            if aucs:
                roc_labels.append(
                    (fmt, f"{_short(fmt)}: mean AUROC {np.mean(aucs):.3f}, {len(aucs)} config(s)")
                )
            xp, yp = _calibration_line(ax_cal, part, colour, n_bins)
            cal_max = max(cal_max, float(xp.max()), float(yp.max()))
            cal_ends.append((fmt, float(xp[-1]), float(yp[-1])))
        label = "" if model is None else f"{model}: "
        _roc_axes(ax_roc, roc_labels, order, label)
        _calibration_axes(ax_cal, cal_ends, cal_max, order, label, n_bins)
    fig.suptitle(title)
    return save_figure(fig, path)


# --------------------------------------------------------------------------------------
# 6. Learning curves
# --------------------------------------------------------------------------------------


@_styled
def learning_curves(
    metrics_table: pl.DataFrame,
    path: Path | str,
    formats: Sequence[str] | None = None,
    metric: str = "auroc",
) -> list[Path]:
    """Held-out AUROC vs training-set size per format (mean over seeds, min-max band), log x."""
    mname = METRIC_NAMES.get(metric, metric)
    title = f"Held-out {mname} vs number of training examples, per format"
    needed = {"format", "n_train", metric}
    if metrics_table.height == 0 or not needed <= set(metrics_table.columns):
        return _message_figure(path, title, "No configuration has results yet.")
    order = _present_formats(metrics_table, formats)
    models = _models(metrics_table)
    ncols = min(len(models), 3)
    nrows = math.ceil(len(models) / ncols)
    fig = _figure(4.2 * ncols + 0.3, 3.5 * nrows + 0.5)
    axs = fig.subplots(nrows, ncols, squeeze=False).ravel()
    sizes = sorted(metrics_table["n_train"].drop_nulls().unique().to_list())
    for ax, model in zip(axs, models, strict=False):
        sub = _for_model(metrics_table, model).drop_nulls([metric, "n_train"])
        ends = []
        for fmt in order:
            g = (
                sub.filter(pl.col("format") == fmt)
                .group_by("n_train")
                .agg(
                    pl.col(metric).mean().alias("mean"),
                    pl.col(metric).min().alias("min"),
                    pl.col(metric).max().alias("max"),
                )
                .sort("n_train")
            )
            if g.height == 0:
                continue
            colour = colour_of(fmt, order)
            n = g["n_train"].to_numpy().astype(float)
            baseline = (
                "model" in sub.columns
                and sub.filter(pl.col("format") == fmt)["model"].null_count() > 0
            )
            ax.fill_between(
                n, g["min"].to_numpy(), g["max"].to_numpy(), color=colour, alpha=0.18, lw=0
            )
            ax.plot(
                n,
                g["mean"].to_numpy(),
                color=colour,
                marker="o",
                ms=4,
                lw=1.6,
                ls="--" if baseline else "-",
            )
            ends.append((fmt, float(n[-1]), float(g["mean"][-1])))
        if not ends:
            ax.text(0.5, 0.5, "no results yet", transform=ax.transAxes, ha="center")
        lo, hi = ax.get_ylim()
        _label_line_ends(ax, ends, 0.055 * (hi - lo), order, offset=6)
        ax.set_xscale("log")
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.minorticks_off()
        # Room on the right of the last size for the direct labels.
        ax.set_xlim(min(sizes) / 1.4, max(sizes) * (3.2 if len(sizes) > 1 else 4.0))
        if lo < 0.5 < hi:
            ax.axhline(0.5, color="0.7", lw=0.7, ls=":")
        ax.set_xlabel("training examples (n_train, log scale)")
        ax.set_ylabel(f"held-out {mname}")
        label = "" if model is None else f"{model}: "
        ax.set_title(f"{label}mean over seeds (band: min–max)")
    for ax in axs[len(models) :]:
        ax.axis("off")
    fig.suptitle(title)
    return save_figure(fig, path)


# --------------------------------------------------------------------------------------
# 7. Cohort overview
# --------------------------------------------------------------------------------------


def _table_one_cells(table1: pl.DataFrame) -> tuple[list[str], list[str], list[list[str]]]:
    """Row labels, column labels and cells of the key Table-1 numbers that are present."""

    def age(r: dict[str, Any]) -> str:
        sd = r.get("age sd")
        return f"{r['age mean']:.1f}" + (f" ({sd:.1f})" if sd is not None else "")

    # (column label, Table-1 column it needs, how to render a row)
    wanted: list[tuple[str, str, Callable[[dict[str, Any]], str]]] = [
        ("n", "n", lambda r: f"{r['n']:,}"),
        ("age, years\nmean (SD)", "age mean", age),
        ("female\n%", "% female", lambda r: f"{r['% female']:.1f}"),
        (
            "follow-up, days\nmedian",
            "follow-up days median",
            lambda r: f"{r['follow-up days median']:,.0f}",
        ),
    ]
    cols = [w for w in wanted if w[1] in table1.columns]
    rows, cells = [], []
    for r in table1.iter_rows(named=True):
        parts = []
        if "split" in r:
            parts.append(str(r["split"]).replace("_", "-"))
        if "label" in r:
            parts.append("cases" if r["label"] else "non-cases")
        rows.append(", ".join(parts) or "all")
        # A suppressed small cell ("<10", cohort.small_cell_threshold) is shown as written.
        cells.append(
            [
                "–" if r[source] is None else r[source] if isinstance(r[source], str) else fn(r)
                for _, source, fn in cols
            ]
        )
    return rows, [label for label, _, _ in cols], cells


def _published_counts(column: pl.Series) -> tuple[np.ndarray, list[str | None]]:
    """Bar lengths and labels of a count column that may hold suppressed cells ("<10"): a
    suppressed cell is drawn as 0 and labelled as published."""
    lengths, labels = [], []
    for value in column.to_list():
        if value is None:
            lengths.append(0.0)
            labels.append(None)
        elif isinstance(value, str) and not value.replace(".", "", 1).isdigit():
            lengths.append(0.0)
            labels.append(value)
        else:
            lengths.append(float(value))
            labels.append(f"{float(value):,.0f}")
    return np.array(lengths, dtype=float), labels


@_styled
def cohort_overview(
    attrition_csv_df: pl.DataFrame | None,
    table1_df: pl.DataFrame | None,
    path: Path | str,
) -> list[Path]:
    """Cohort attrition as horizontal bars (subjects left after each step, cases overlaid)
    beside the key Table-1 numbers by split and outcome.
    """
    title = "Cohort: subjects remaining after each selection step, and Table 1"
    if attrition_csv_df is None or attrition_csv_df.height == 0:
        return _message_figure(path, title, "No attrition table yet.")
    att = attrition_csv_df
    has_t1 = table1_df is not None and table1_df.height > 0
    steps = (
        [str(s) for s in att["step"]]
        if "step" in att.columns
        else [str(i) for i in range(att.height)]
    )
    n, n_text = _published_counts(att["n_subjects"])
    cases, case_text = (
        _published_counts(att["n_cases"])
        if "n_cases" in att.columns
        else (np.zeros(att.height), [None] * att.height)
    )
    height = max(2.6, 0.5 * len(steps) + 1.4)
    fig = _figure(12.0 if has_t1 else 7.6, height)
    axs = fig.subplots(
        1, 2 if has_t1 else 1, squeeze=False, width_ratios=[1.3, 1] if has_t1 else [1]
    )[0]
    ax = axs[0]
    y = np.arange(len(steps))
    ax.barh(y, n, color="#56B4E9", height=0.65)
    ax.barh(y, cases, color="#D55E00", height=0.65)
    for yi, ni, label, case_label in zip(y, n, n_text, case_text, strict=True):
        text = f" {label}" + (f"  ({case_label} cases)" if case_label is not None else "")
        ax.text(ni, yi, text, va="center", fontsize=8)
    ax.set_yticks(y, [textwrap.fill(s, 42) for s in steps])
    ax.invert_yaxis()
    ax.set_xlim(0, float(n.max()) * 1.45 if n.size and n.max() > 0 else 1)
    ax.set_xlabel("subjects (n)")
    ax.set_title("Attrition (blue: subjects; orange: 5-year ADRD cases, once labelled)", loc="left")
    if has_t1:
        rows, cols, cells = _table_one_cells(table1_df)
        tax = axs[1]
        tax.axis("off")
        if cols:
            tbl = tax.table(
                cellText=cells, rowLabels=rows, colLabels=cols, loc="center", cellLoc="center"
            )
            tbl.auto_set_font_size(False)
            tbl.set_fontsize(8)
            tbl.auto_set_column_width(list(range(-1, len(cols))))
            tbl.scale(1.0, 1.35)
            for (r, _), cell in tbl.get_celld().items():
                if r == 0:  # two-line column headers
                    cell.set_height(cell.get_height() * 1.9)
        tax.set_title("Table 1, key numbers by split and outcome", loc="left")
    fig.suptitle(title)
    return save_figure(fig, path)


# --------------------------------------------------------------------------------------
# 8. Rationale QC
# --------------------------------------------------------------------------------------


@_styled
def rationale_qc(qc_df: pl.DataFrame | None, path: Path | str) -> list[Path]:
    """Teacher rationales: length distribution per style and grounding-fraction histogram.

    ``qc_df`` may hold any of ``style``, ``n_words``, ``grounded_fraction``; panels whose
    column is absent are left out.
    """
    title = "Teacher rationale quality checks, per rationale style"
    panels = [
        c
        for c in ("n_words", "grounded_fraction")
        if qc_df is not None and c in qc_df.columns and qc_df[c].drop_nulls().len()
    ]
    if not panels:
        return _message_figure(path, title, "No rationale length or grounding data yet.")
    qc = qc_df if "style" in qc_df.columns else qc_df.with_columns(pl.lit("all").alias("style"))
    styles = format_order(qc["style"].drop_nulls().unique(maintain_order=True).to_list())
    fig = _figure(4.4 * len(panels) + 0.3, 3.7)
    axs = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, col in zip(axs, panels, strict=True):
        values = qc[col].drop_nulls().to_numpy().astype(float)
        if col == "n_words":
            bins = np.histogram_bin_edges(values, bins=min(30, max(5, values.size // 5)))
        else:
            bins = np.linspace(0.0, 1.0, 11)
        labels = []
        for style in styles:
            v = qc.filter(pl.col("style") == style)[col].drop_nulls().to_numpy().astype(float)
            if v.size == 0:
                continue
            colour = colour_of(style, styles)
            ax.hist(v, bins=bins, histtype="step", lw=1.8, color=colour)
            if col == "n_words":
                med = float(np.median(v))
                ax.axvline(med, color=colour, ls="--", lw=0.9)
                labels.append(
                    (style, f"{style.replace('_', '-')}: median {med:.0f} words (n = {v.size})")
                )
            else:
                full = float(np.mean(v >= 1.0))
                labels.append(
                    (
                        style,
                        f"{style.replace('_', '-')}: mean {v.mean():.2f}; "
                        f"fully grounded {full:.0%}",
                    )
                )
        for k, (style, text) in enumerate(labels):
            ax.text(
                0.98 if col == "n_words" else 0.02,
                0.97 - 0.07 * k,
                text,
                color=colour_of(style, styles),
                transform=ax.transAxes,
                va="top",
                ha="right" if col == "n_words" else "left",
                weight="bold",
            )
        ax.set_ylabel("rationales (n)")
        ax.margins(y=0.25)
        if col == "n_words":
            ax.set_xlabel("rationale length (words)")
            ax.set_title("Length (dashed: median)")
        else:
            ax.set_xlabel("share of the risk factors named that are in the subject's record")
            ax.set_title("Grounding (1 = every named factor is in the record)")
    fig.suptitle(title)
    return save_figure(fig, path)
