"""Figures of an analysis run, drawn from its tables only (so a figure never shows what no table holds).

Every figure is saved as PNG and SVG. Figures are built on :class:`matplotlib.figure.Figure` and saved
through the Agg canvas; pyplot and its global figure registry are never used, so the interactive backend
of the caller does not matter and no figure outlives the call. Output is byte-for-byte deterministic:
a fixed SVG hash salt and no creation dates in the metadata.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lstm_adv.config import AnalysisConfig
from lstm_adv.domain.perturbation import DIRECTION_LABELS, DIRECTIONS
from lstm_adv.domain.perturbation import EXAMPLES as WHICH
from lstm_adv.domain.shapes import N_CELLS, N_FEATURES, N_HOURS

FORMATS = ("png", "svg")
_METADATA = {"png": {"Software": None}, "svg": {"Date": None, "Creator": None}}
_COLORS = {"first": "tab:orange", "best": "tab:blue", "sparse": "tab:purple", "0to1": "tab:red", "1to0": "tab:green"}
_EMPTY = "no successful examples"


def write_figures(
    tables: Mapping[str, pd.DataFrame], folder: Path, config: AnalysisConfig, *, unit: str = "cell"
) -> list[str]:
    """Draw every figure into ``folder`` as PNG and SVG; returns the file paths relative to its parent.

    ``tables`` are an analysis run's tables by name (``examples``, ``cells``, ``features``, ``hours``,
    ``discovery``); ``unit`` is what the examples' L0 counts (``cell`` of the model input, or
    ``measurement`` of the record).
    """
    written = []
    with _style():
        for stem, figure in _figures(tables, config, unit):
            written += save_figure(figure, folder, stem, dpi=config.figure_dpi)
    return written


def save_figure(figure: Figure, folder: Path, stem: str, *, dpi: int) -> list[str]:
    """Write ``figure`` as ``folder/stem.png`` and ``.svg``; returns the paths relative to ``folder``'s parent."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    with _style():
        for fmt in FORMATS:
            path = folder / f"{stem}.{fmt}"
            figure.savefig(path, format=fmt, dpi=dpi, metadata=_METADATA[fmt])
            figure.set_layout_engine("none")  # keep the first save's layout for the second: layout is the slow part
            written.append(f"{folder.name}/{path.name}")
    return written


def _style() -> AbstractContextManager[None]:
    """Fixed SVG ids (hash salt), text kept as text in SVG, one font size."""
    return matplotlib.rc_context({"svg.hashsalt": "lstm-adv", "svg.fonttype": "none", "font.size": 9})


def _figures(tables: Mapping[str, pd.DataFrame], config: AnalysisConfig, unit: str) -> Iterator[tuple[str, Figure]]:
    examples, cells = tables["examples"], tables["cells"]
    l0 = "L0 (altered measurements of the record)" if unit == "measurement" else f"L0 (changed cells of {N_CELLS})"
    yield "l0_histogram", norm_histograms(examples, "l0", l0, config)
    yield "l1_histogram", norm_histograms(examples, "l1", "L1 = Σ|δ| (scaled units)", config)
    yield "discovery", discovery_curves(tables["discovery"], examples, config)
    for which in WHICH:
        yield f"heatmap_gpp_{which}", heatmaps(cells, "gpp", which, "GPP (fraction of examples with δ ≠ 0)")
        yield f"heatmap_gmp_{which}", heatmaps(cells, "gmp", which, "GMP (max |δ|, scaled units)")
        yield f"feature_ranking_{which}", feature_ranking(tables["features"], which)
        yield f"hour_susceptibility_{which}", hour_susceptibility(tables["hours"], which)


def _new(ncols: int, *, width: float = 10.0, height: float = 4.0) -> tuple[Figure, list[Axes]]:
    """A figure of ``ncols`` panels side by side; ``width`` is that of two panels (one panel gets 60 % of it)."""
    figure = Figure(figsize=(width * (0.6 if ncols == 1 else ncols / 2), height), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, ncols, squeeze=False)[0]
    return figure, list(axes)


def _rows(table: pd.DataFrame, which: str, direction: str) -> pd.DataFrame:
    return table[(table["which"] == which) & (table["direction"] == direction)]


def _empty(ax: Axes) -> None:
    ax.text(0.5, 0.5, _EMPTY, ha="center", va="center", transform=ax.transAxes)


def _directions(table: pd.DataFrame, which: str | None = None) -> tuple[list[str], str]:
    """The directions with successful examples in ``table`` (of one ``which``) and a note naming the others.

    A direction without successes gets no panel of its own (an empty panel reads as a drawing error); the
    note, added to the figure's title, says that it had none.
    """
    rows = table if which is None else table[table["which"] == which]
    present = [d for d in DIRECTIONS if (rows["direction"] == d).any()]
    missing = [DIRECTION_LABELS[d] for d in DIRECTIONS if d not in present]
    note = f"\n({', '.join(missing)}: {_EMPTY})" if missing else ""
    return present or [DIRECTIONS[0]], note


def norm_histograms(examples: pd.DataFrame, column: str, label: str, config: AnalysisConfig) -> Figure:
    """Histogram of one per-example norm, one panel per direction, first and best examples overlaid."""
    directions, note = _directions(examples)
    figure, axes = _new(len(directions))
    values = examples[column].to_numpy(dtype=np.float64)
    edges = np.histogram_bin_edges(values if values.size else np.zeros(1), bins=config.histogram_bins).tolist()
    for ax, direction in zip(axes, directions, strict=True):
        for which in WHICH:
            data = _rows(examples, which, direction)[column]
            style = {"histtype": "step", "linewidth": 1.5} if which == "first" else {"alpha": 0.6}
            ax.hist(data, bins=edges, color=_COLORS[which], label=f"{which} (n = {len(data)})", **style)
        ax.set(title=f"{DIRECTION_LABELS[direction]} flips", xlabel=label, ylabel="examples")
        ax.legend()
    figure.suptitle(f"{column.upper()} of successful perturbations{note}")
    return figure


def discovery_curves(discovery: pd.DataFrame, examples: pd.DataFrame, config: AnalysisConfig) -> Figure:
    """Cumulative share of attacked samples with a first success by iteration; where best examples were found."""
    figure, (left, right) = _new(2)
    budget = int(discovery["iteration"].max()) if len(discovery) else 1
    edges = np.linspace(0.5, budget + 0.5, min(config.histogram_bins, budget) + 1).tolist()
    directions, note = _directions(examples, "best")
    for direction in DIRECTIONS:
        rows = discovery[discovery["direction"] == direction]
        attacked = int(rows["n_attacked"].iloc[0]) if len(rows) else 0
        if attacked == 0:
            continue
        left.step(
            rows["iteration"],
            rows["cumulative_first_fraction"],
            where="post",
            color=_COLORS[direction],
            label=f"{DIRECTION_LABELS[direction]} ({attacked} attacked)",
        )
        if direction not in directions:
            continue
        best = _rows(examples, "best", direction)["iteration"]
        right.hist(
            best,
            bins=edges,
            alpha=0.6,
            color=_COLORS[direction],
            label=f"{DIRECTION_LABELS[direction]} (n = {len(best)})",
        )
    left.set(title="first success", xlabel="iteration", ylabel="fraction of attacked samples", ylim=(0, 1.02))
    right.set(title="best (smallest L1) success", xlabel="iteration found", ylabel="examples")
    left.legend()
    right.legend()
    if note:
        figure.suptitle(f"Discovery of successes{note}")
    return figure


def heatmaps(cells: pd.DataFrame, metric: str, which: str, label: str) -> Figure:
    """Hour × feature heatmap of one per-cell statistic, one panel per direction, stacked (features on the y axis).

    The panels fill the width of a page with labels at the body's size. The scale is sequential from a light tint
    (the smallest value above zero) to dark; cells at exactly zero stay white, so a rarely changed cell still shows.
    """
    directions, note = _directions(cells, which)
    figure = Figure(figsize=(7.5, 0.6 + 3.3 * len(directions)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = list(figure.subplots(len(directions), 1, squeeze=False)[:, 0])
    cmap = matplotlib.colormaps["YlOrRd"].with_extremes(bad="white")
    for ax, direction in zip(axes, directions, strict=True):
        rows = _rows(cells, which, direction)
        ax.set(title=f"{DIRECTION_LABELS[direction]} flips", xlabel="hour of the window")
        if rows.empty:
            _empty(ax)
            continue
        matrix = rows[metric].to_numpy(dtype=np.float64).reshape(N_HOURS, N_FEATURES)
        shown = np.ma.masked_where(~(matrix > 0), matrix)  # zero (and NaN) white; the scale starts above zero
        top = float(np.nanmax(matrix)) if np.isfinite(matrix).any() else 0.0
        image = ax.imshow(shown.T, aspect="auto", cmap=cmap, interpolation="nearest", vmin=0.0, vmax=max(top, 1e-12))
        ax.set_yticks(range(N_FEATURES), labels=list(rows["feature"].iloc[:N_FEATURES]), fontsize=8)
        ax.set_xticks(range(0, N_HOURS, 6))
        ax.tick_params(axis="x", labelsize=8)
        figure.colorbar(image, ax=ax, label=label, shrink=0.9)
        n = int(rows["n_examples"].iloc[0])
        ax.set_title(f"{DIRECTION_LABELS[direction]} flips (n = {n}; white: never changed)")
    figure.suptitle(f"{metric.upper()} per hour and feature, {which} examples{note}")
    return figure


def feature_ranking(features: pd.DataFrame, which: str) -> Figure:
    """Horizontal bars of feature susceptibility S_j, most susceptible on top, one panel per direction."""
    directions, note = _directions(features, which)
    figure, axes = _new(len(directions), height=5.0)
    for ax, direction in zip(axes, directions, strict=True):
        rows = _rows(features, which, direction).sort_values("rank")
        ax.set(title=f"{DIRECTION_LABELS[direction]} flips", xlabel="S_j = Σ_i GMP_ij·GPP_ij (scaled units)")
        if rows.empty:
            _empty(ax)
            continue
        ax.barh(rows["feature"], rows["susceptibility"], color=_COLORS[direction])
        ax.invert_yaxis()
    figure.suptitle(f"Feature susceptibility (Sun et al.), {which} examples{note}")
    return figure


def hour_susceptibility(hours: pd.DataFrame, which: str) -> Figure:
    """Bars of hour susceptibility Σ_j GMP_ij·GPP_ij over the window, one panel per direction."""
    directions, note = _directions(hours, which)
    figure, axes = _new(len(directions))
    for ax, direction in zip(axes, directions, strict=True):
        rows = _rows(hours, which, direction)
        ax.set(
            title=f"{DIRECTION_LABELS[direction]} flips",
            xlabel="hour of the window",
            ylabel="Σ_j GMP·GPP (scaled units)",
        )
        if rows.empty:
            _empty(ax)
            continue
        ax.bar(rows["hour"], rows["susceptibility"], color=_COLORS[direction])
    figure.suptitle(f"Hour susceptibility, {which} examples{note}")
    return figure
