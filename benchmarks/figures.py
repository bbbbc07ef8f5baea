"""The figure of a suite's table, as a paper would print it: one quantity per panel, never a twin axis.

Drawn from a :class:`benchmarks.tables.SuiteTable`, so the figure shows the table's rows, means
and standard errors. Panels, left to right:

- the suite's metric (``[plot] metric``) against total Langevin steps (the step study) or the
  guidance weight w: a line per method, error bars of one standard error over seeds, floor rows as
  dotted lines and a 2-D metric's chance level as a dashed one, each named on its line, and the
  paper's points on the same axes when they measure the same thing (the same metric on the suite's
  own data, i.e. ``reference_label`` left at "paper");
- ``[plot] secondary``, a second measured metric, on its own axes;
- the paper's trend when it was measured on other data (toy-steps: the paper's CIFAR-10 FID): its
  own panel, titled as such, never a second y axis over the measured one;
- for a guidance sweep, the trade-off as the paper draws it: the metric against the other side
  (class accuracy, Inception Score), one point per w.

The legend goes under the panels in as many columns as fit the figure. Written as PDF (for a paper)
and PNG (to look at), both named by suite and profile.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from benchmarks.tables import SuiteTable
from cdrl.metrics import METRICS

#: The line of a 2-D metric's chance level (:func:`benchmarks.tables.chance_level`).
CHANCE_LABEL = "chance (an even spread over the square)"
X_LABELS = {"total_steps": "total Langevin steps (levels × steps per level)", "guidance": "guidance weight w"}


@dataclass
class Series:
    """One line of a panel: a method's measured means (with standard errors) or the paper's values."""

    label: str
    method: str
    x: list[float]
    y: list[float]
    paper: bool
    xerr: list[float] | None = None
    yerr: list[float] | None = None
    #: Text beside each point (the guidance weight on a trade-off curve).
    point_labels: list[str] | None = None


@dataclass
class Panel:
    title: str
    x_label: str
    y_label: str
    x_kind: str
    series: list[Series] = field(default_factory=list)
    #: Horizontal reference lines: (value, label), real data scored as samples ("… (floor)", dotted) or an
    #: even spread over a 2-D density's square ("chance", dashed).
    references: list[tuple[float, str]] = field(default_factory=list)


def _axis_label(metric: str, prefix: str = "") -> str:
    info = METRICS[metric]
    return f"{prefix}{info.label} ({'higher' if info.higher_is_better else 'lower'} is better)"


def paper_measures_the_same(table: SuiteTable, metric: str) -> bool:
    """Whether the paper's column of ``metric`` measures what the suite measures: the same metric on the
    suite's own data (a suite studying a trend on other data labels its paper columns, e.g. "paper CIFAR-10")."""
    return table.suite.reference_label == "paper" and f"paper_{metric}" in table.frame


def trade_off_metric(table: SuiteTable) -> str | None:
    """The other side of a guidance sweep's trade-off: ``[plot] secondary``, else the suite's first metric
    of the opposite direction (imagenet32-cfg: the Inception Score against FID); None for a step study."""
    spec = table.suite.plot
    if spec is None or spec.x != "guidance":
        return None
    if spec.secondary:
        return spec.secondary
    direction = METRICS[spec.metric].higher_is_better
    return next((metric for metric in table.suite.metrics
                 if metric != spec.metric and METRICS[metric].higher_is_better != direction), None)


def _model_rows(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows of methods, floor rows): rows of the suite's models; the paper's context rows have no x."""
    rows = frame[frame["model"].fillna("") != ""]
    floors = rows[rows["floor"] == True]  # noqa: E712 (NaN-safe)
    return rows.drop(floors.index), floors


def _measured_series(rows: pd.DataFrame, x: str, y: str, *, x_error: bool = False,
                     point_labels: str | None = None) -> list[Series]:
    """One series per method and source: the mean of ``y`` (error bars: its standard error) against ``x``,
    itself a measured metric with error bars when ``x_error``."""
    found = []
    if any(column not in rows for column in (x, y, f"{y}_se", *([f"{x}_se"] if x_error else []))):
        return found
    sources = rows.groupby("method", sort=False)["source"].nunique()
    for (method, source), group in rows.groupby([rows["method"], rows["source"].fillna("")], sort=False):
        group = group.dropna(subset=[x, y]).sort_values(x)
        if group.empty:
            continue
        # The checkpoint's name only where it tells two series of one method apart (trained and a given file).
        label = method if source in ("", "trained") or sources[method] == 1 else f"{method} ({source})"
        found.append(Series(label, method, group[x].astype(float).tolist(), group[y].astype(float).tolist(), False,
                            xerr=group[f"{x}_se"].fillna(0).tolist() if x_error else None,
                            yerr=group[f"{y}_se"].fillna(0).tolist(),
                            point_labels=_weight_labels(group[point_labels]) if point_labels else None))
    return found


def _weight_labels(weights: pd.Series) -> list[str]:
    """'w=0.5' beside the points at multiples of 0.5 (a sweep in steps of 0.1 would print its labels on each other)."""
    return [f"w={weight:g}" if (2 * weight).is_integer() else "" for weight in weights]


def _paper_series(rows: pd.DataFrame, x: str, y: str, reference_label: str,
                  point_labels: str | None = None) -> list[Series]:
    """The paper's values of ``y`` against ``x``, one series per method (named by it when there are several);
    a method repeating another's points (one paper row matched by two models) is drawn once."""
    groups, seen = [], set()
    if x not in rows or y not in rows:
        return []
    for method, group in rows.groupby("method", sort=False):
        group = group.dropna(subset=[x, y]).drop_duplicates(subset=[x, y]).sort_values(x)
        points = tuple(zip(group[x], group[y]))
        if not group.empty and points not in seen:
            seen.add(points)
            groups.append((method, group))
    return [Series(f"{reference_label}: {method}" if len(groups) > 1 else reference_label, method,
                   group[x].astype(float).tolist(), group[y].astype(float).tolist(), True,
                   point_labels=_weight_labels(group[point_labels]) if point_labels else None)
            for method, group in groups]


def suite_panels(table: SuiteTable) -> list[Panel]:
    """The figure's panels that have something to draw, left to right."""
    spec = table.suite.plot
    if spec is None or table.frame.empty:
        return []
    rows, floor_rows = _model_rows(table.frame)
    reference = table.suite.reference_label
    x_label = X_LABELS[spec.x]
    panels = []
    for metric in dict.fromkeys([spec.metric, *([spec.secondary] if spec.secondary else [])]):
        measured = _measured_series(rows, spec.x, metric)
        paper = _paper_series(rows, spec.x, f"paper_{metric}", reference) if paper_measures_the_same(
            table, metric) else []
        title = " and ".join(part for part, shown in (("measured (mean ± s.e. over seeds)", measured),
                                                       (f"the {reference}'s values", paper)) if shown)
        panel = Panel(title, x_label, _axis_label(metric), spec.x, measured + paper)
        if metric in floor_rows:
            panel.references = [(value, f"{method} (floor)") for value, method in
                                zip(floor_rows[metric], floor_rows["method"]) if pd.notna(value)]
        if metric in table.chance:
            panel.references.append((table.chance[metric], CHANCE_LABEL))
        panels.append(panel)
    if spec.paper and not paper_measures_the_same(table, spec.paper) and f"paper_{spec.paper}" in rows:
        # Another dataset's numbers: a trend to compare shapes with, on its own axes.
        panels.append(Panel(f"{reference} (other data: the trend only)", x_label,
                            _axis_label(spec.paper, f"{reference} "), spec.x,
                            _paper_series(rows, spec.x, f"paper_{spec.paper}", reference)))
    partner = trade_off_metric(table)
    if partner is not None:
        panel = Panel("trade-off over the guidance weight w", _axis_label(partner), _axis_label(spec.metric), partner,
                      _measured_series(rows, partner, spec.metric, x_error=True, point_labels="guidance"))
        if paper_measures_the_same(table, spec.metric) and paper_measures_the_same(table, partner):
            panel.series += _paper_series(rows, f"paper_{partner}", f"paper_{spec.metric}", reference,
                                          point_labels="guidance")
        panels.append(panel)
    return [panel for panel in panels if panel.series]


def _draw(axes, panel: Panel, colours: dict[str, str], rows: pd.DataFrame) -> None:
    for series in panel.series:
        colour = colours[series.method]
        if series.paper:
            axes.plot(series.x, series.y, linestyle="--", marker="s", fillstyle="none", color=colour,
                      label=series.label)
        else:
            axes.errorbar(series.x, series.y, xerr=series.xerr, yerr=series.yerr, marker="o", capsize=3,
                          color=colour, label=series.label)
        for x, y, text in zip(series.x, series.y, series.point_labels or []):
            if text:
                axes.annotate(text, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=colour)
    for value, label in panel.references:
        axes.axhline(value, color="grey", linestyle="--" if label == CHANCE_LABEL else ":", linewidth=1, label=label)
        # Named on the line too: a grey line is the one series a reader cannot match to the legend by colour.
        axes.annotate(label, (1, value), xycoords=axes.get_yaxis_transform(), xytext=(-3, 2),
                      textcoords="offset points", ha="right", va="bottom", fontsize=7, color="dimgrey")
    if panel.x_kind == "total_steps":
        # The step counts themselves as ticks, each with its split into levels x steps per level.
        ticks = rows.dropna(subset=["total_steps"]).groupby("total_steps")
        axes.set_xscale("log")
        axes.set_xticks([float(total) for total, _ in ticks], [
            f"{int(total)}\n" + "/".join(dict.fromkeys(f"{int(r.noise_levels)}×{int(r.steps_per_level)}"
                                                       for r in group.itertuples()))
            for total, group in ticks])
        axes.minorticks_off()
    axes.margins(0.08)  # room for the labels of the outermost points
    axes.set(title=panel.title, xlabel=panel.x_label, ylabel=panel.y_label)
    axes.title.set_fontsize(9)
    axes.grid(alpha=0.3)


def suite_figure(table: SuiteTable):
    """The suite's figure (a matplotlib Figure, one panel per quantity); None when the suite has none or
    nothing to draw."""
    panels = suite_panels(table)
    if not panels:
        return None
    from matplotlib.figure import Figure  # a bare Figure renders with Agg: no display needed

    rows, _ = _model_rows(table.frame)
    # A method keeps its colour in every panel, and in every figure of the suite, measured or not yet.
    colours = {method: f"C{index % 10}" for index, method in enumerate(dict.fromkeys(rows["method"]))}
    figure = Figure(figsize=(4.6 * len(panels), 4.2), layout="constrained")
    all_axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for axes, panel in zip(all_axes, panels):
        _draw(axes, panel, colours, rows)
    handles = {}
    for axes in all_axes:
        for handle, label in zip(*axes.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    _legend_that_fits(figure, handles)
    return figure


def _legend_that_fits(figure, handles: dict) -> None:
    """The legend under the panels, in as many columns (at most 3) as fit the figure's width: a wider legend
    is cut at both edges (the gate's one panel lost half of its three columns)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(figure).get_renderer()
    for columns in range(min(len(handles), 3), 0, -1):
        legend = figure.legend(handles.values(), handles.keys(), loc="outside lower center", ncols=columns,
                               fontsize=8, frameon=False)
        if columns == 1 or legend.get_window_extent(renderer).width <= figure.bbox.width:
            return
        legend.remove()


def save_suite_figure(table: SuiteTable, stem: Path) -> list[Path]:
    """Draw the suite's figure to ``stem``.pdf and ``stem``.png; [] when the suite has none or nothing to draw."""
    figure = suite_figure(table)
    if figure is None:
        return []
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix in (".pdf", ".png"):
        path = stem.with_name(stem.name + suffix)
        figure.savefig(path, dpi=200, metadata={"Title": table.title})
        written.append(path)
    return written
