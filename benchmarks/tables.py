"""Paper-style tables of a suite: the paper's numbers beside the measured ones, from MLflow.

One row per evaluation point of the suite (model, steps per level, guidance weight) and
source (trained here, or a given checkpoint), in the suite's order; with ``context_rows``
the reference rows no model matches follow (the rest of the paper's table). Columns: the
paper's values as printed in ``results/paper/`` (with their confidence), each measured
metric as mean ± standard error over seeds, the number of seeds and the evaluation protocol (samples,
reference, backend). With no runs recorded the paper column is still shown.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from benchmarks.records import TAG_GUIDANCE, TAG_MODEL, TAG_SOURCE, TAG_STEPS, finished_eval_runs, latest_per_key
from benchmarks.suite import EvalJob, SuiteError, Suite, config_delta, expand
from cdrl.metrics import METRICS
from cdrl.tracking import resolve_tracking_uri

FORMATS = ("rich", "markdown", "latex", "csv")
MISSING = "—"


@dataclass
class SuiteTable:
    suite: Suite
    profile: str
    #: Numbers: ``paper_<metric>`` (float), ``<metric>_mean``/``_std``, ``n_seeds``, ``protocol``...
    frame: pd.DataFrame
    #: Strings, as printed (mean ± std, the paper's values exactly as in the CSV).
    display: pd.DataFrame
    notes: list[str]
    n_runs: int

    @property
    def title(self) -> str:
        return f"{self.suite.title} (suite {self.suite.name} v{self.suite.version}, {self.profile})"


def read_reference(suite: Suite) -> pd.DataFrame:
    """The suite's paper table, every cell a string exactly as in the CSV (empty: not reported)."""
    if suite.reference_path is None:
        return pd.DataFrame()
    return pd.read_csv(suite.reference_path, dtype=str, keep_default_na=False)


def _reference_row(reference: pd.DataFrame, job: EvalJob) -> int | None:
    """Index of the CSV row of an evaluation point: the model's ``paper`` columns plus steps or guidance."""
    if reference.empty or (not job.model.paper and "guidance_w" not in reference):
        return None
    mask = pd.Series(True, index=reference.index)
    for column, value in job.model.paper.items():
        if column not in reference:
            raise SuiteError(f"{job.model.key}: paper column {column!r} is not in the reference CSV "
                             f"({', '.join(reference.columns)}): fix the suite's [[models]] paper table")
        mask &= reference[column] == value
    if "steps_per_level" in reference:
        mask &= pd.to_numeric(reference["steps_per_level"], errors="coerce") == job.steps_per_level
    if "guidance_w" in reference:
        mask &= (pd.to_numeric(reference["guidance_w"], errors="coerce") - job.guidance).abs() < 1e-9
    matches = reference.index[mask]
    return int(matches[0]) if len(matches) == 1 else None


def _points(suite: Suite) -> list[EvalJob]:
    """One evaluation job per table row (seed 0's), in the suite's order."""
    seen, points = set(), []
    for job in expand(suite).evaluations:
        if job.point not in seen:
            seen.add(job.point)
            points.append(job)
    return points


def _protocol(runs: pd.DataFrame) -> str:
    def describe(run: pd.Series) -> str:
        def value(name: str):
            found = run.get(f"params.eval.{name}")
            return None if found is None or (isinstance(found, float) and math.isnan(found)) else found

        reference = value("reference_name") or value("reference")
        return (f"{value('n_generated') or value('n_samples')} samples vs {value('n_reference')} {reference}/"
                f"{value('reference_split')}, {value('backend')}")
    return "; ".join(dict.fromkeys(describe(run) for _, run in runs.iterrows()))


def _measured(runs: pd.DataFrame, metrics: tuple[str, ...]) -> dict[str, object]:
    values: dict[str, object] = {"n_seeds": len(runs), "protocol": _protocol(runs)}
    for metric in metrics:
        column = runs.get(f"metrics.{metric}")
        finite = column.dropna() if column is not None else pd.Series(dtype=float)
        values[f"{metric}_mean"] = float(finite.mean()) if len(finite) else math.nan
        values[f"{metric}_std"] = float(finite.std(ddof=1)) if len(finite) > 1 else math.nan
        values[f"{metric}_sem"] = values[f"{metric}_std"] / math.sqrt(len(finite)) if len(finite) > 1 else math.nan
    return values


def build_table(suite: Suite, *, quick: bool = False, tracking_uri: str | None = None) -> SuiteTable:
    """The table of ``suite``'s finished evaluation runs (profile ``quick`` or ``full``) beside the paper's."""
    profile = "quick" if quick else "full"
    reference = read_reference(suite)
    paper_metrics = [metric for metric in METRICS if metric in reference]
    runs = latest_per_key(finished_eval_runs(suite.experiment, suite.name, suite.version, profile, tracking_uri))
    guided = any(len(model.guidance) > 1 or any(model.guidance) for model in suite.models)
    rows, matched = [], set()
    for job in _points(suite):
        global_batch, selection = job.training_summary(suite.checkpoint_selection)
        base = {"method": job.model.label, "model": job.model.key, "floor": job.floor_config is not None,
                "global_batch": global_batch, "checkpoint_selection": selection, "noise_levels": job.noise_levels,
                "steps_per_level": job.steps_per_level, "total_steps": job.noise_levels * job.steps_per_level}
        if guided:
            base["guidance"] = job.guidance
        index = _reference_row(reference, job)
        if index is not None:
            matched.add(index)
        base.update(_paper_values(reference, index, paper_metrics))
        group = runs
        if not runs.empty:
            group = runs[(runs[f"tags.{TAG_MODEL}"] == job.model.key)
                         & (runs[f"tags.{TAG_STEPS}"] == str(job.steps_per_level))
                         & (runs[f"tags.{TAG_GUIDANCE}"] == f"{job.guidance:g}")]
        if group.empty:
            rows.append({**base, "source": "", **_measured(group, suite.metrics)})
        sources = group.groupby(f"tags.{TAG_SOURCE}") if not group.empty else ()
        for source, by_source in sorted(sources, key=lambda item: (item[0] != "trained", item[0])):
            rows.append({**base, "source": source, **_measured(by_source, suite.metrics)})
    if suite.context_rows:
        for index in reference.index.difference(sorted(matched)):
            row = reference.loc[index]
            rows.append({"method": row.get("method", ""), "model": "", **_paper_values(reference, index, paper_metrics),
                         "source": "", "n_seeds": 0, "protocol": ""})
    frame = pd.DataFrame(rows)
    return SuiteTable(suite, profile, frame, _display(suite, frame, paper_metrics, guided),
                      _notes(suite, profile, reference, runs, tracking_uri), len(runs))


def _paper_values(reference: pd.DataFrame, index: int | None, paper_metrics: list[str]) -> dict[str, object]:
    row = reference.loc[index] if index is not None else {}
    values: dict[str, object] = {f"paper_{metric}": row.get(metric, "") for metric in paper_metrics}
    for column in ("confidence", "source"):
        if column in reference:
            values[f"paper_{column}"] = row.get(column, "")
    return values


def _format(mean: float, std: float, decimals: int) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return MISSING
    return f"{mean:.{decimals}f}" + ("" if std is None or math.isnan(std) else f" ± {std:.{decimals}f}")


def _display(suite: Suite, frame: pd.DataFrame, paper_metrics: list[str], guided: bool) -> pd.DataFrame:
    display = pd.DataFrame(index=frame.index)
    display["method"] = frame["method"]
    display["levels × steps"] = [f"{int(r.noise_levels)}×{int(r.steps_per_level)}" if r.model and not r.floor
                                 else "" for r in frame.itertuples()]
    if guided:
        display["w"] = [f"{r.guidance:g}" if isinstance(r.guidance, float) and not math.isnan(r.guidance)
                        and r.floor is not True else "" for r in frame.itertuples()]
    for metric in paper_metrics:
        display[f"{suite.reference_label} {METRICS[metric].label}"] = [value or MISSING
                                                                       for value in frame[f"paper_{metric}"]]
    if "paper_confidence" in frame:
        display["confidence"] = frame["paper_confidence"].fillna("")
    for metric in suite.metrics:
        info = METRICS[metric]
        display[f"{info.label} (measured)"] = [
            _format(r[f"{metric}_mean"], r[f"{metric}_sem"], info.decimals) if r["model"] else ""
            for _, r in frame.iterrows()]
    display["seeds"] = [str(int(n)) if model else "" for n, model in zip(frame["n_seeds"], frame["model"])]
    display["batch"] = frame["global_batch"].fillna("")
    display["checkpoint"] = frame["checkpoint_selection"].fillna("")
    if not frame["source"].fillna("").isin(["", "trained"]).all():  # only when a given checkpoint was scored
        display["source"] = frame["source"].fillna("")
    display["protocol"] = frame["protocol"].fillna("")
    return display


def _notes(suite: Suite, profile: str, reference: pd.DataFrame, runs: pd.DataFrame,
           tracking_uri: str | None) -> list[str]:
    notes = []
    if suite.reference:
        notes.append(f"{suite.reference_label}: results/paper/{suite.reference} (50,000-sample FIDs unless the CSV "
                     "says otherwise; confidence as recorded there).")
    if runs.empty:
        quick = " --quick" if profile == "quick" else ""
        notes.append(f"No finished runs of this suite ({profile}) in {resolve_tracking_uri(tracking_uri)} yet: "
                     f"`cdrl-bench run --suite {suite.name}{quick}` measures them.")
    else:
        notes.append(f"Measured: mean ± standard error over seeds of {len(runs)} finished evaluation runs; "
                     "protocol per row (samples, reference images, backend).")
        if any(model.floor for model in suite.models):
            notes.append("Floor rows score real data exactly as samples are scored (fresh draws of a 2-D density, "
                         "or the other split's images): the best each metric can read at this sample size.")
    if suite.notes:
        notes.append(suite.notes.strip())
    notes.append("batch: the global training batch (all processes together); checkpoint: which checkpoint of each "
                 "training is scored (the best by the named score, measured during training, or the last).")
    for model in suite.models:
        if model.checkpoint is None and not model.floor and model.scores is None:
            delta = config_delta(suite, model)
            if delta:
                notes.append(f"{model.label}: {', '.join(delta)}.")
    return notes


# --------------------------------------------------------------------------- rendering

_LATEX_SPECIALS = {"&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "±": r"$\pm$", "×": r"$\times$",
                   "—": "---", "≈": r"$\approx$"}


def _latex_cell(value: object) -> str:
    return "".join(_LATEX_SPECIALS.get(character, character) for character in str(value))


def render(table: SuiteTable, output_format: str) -> str:
    """The table as markdown, LaTeX or CSV text (``rich`` prints through :func:`rich_table`)."""
    if output_format == "markdown":
        notes = "\n".join(f"- {note}" for note in table.notes)
        markdown = table.display.to_markdown(index=False, disable_numparse=True)  # keep "8.30" as printed
        return f"### {table.title}\n\n{markdown}\n\n{notes}\n"
    if output_format == "latex":
        cells = table.display.map(_latex_cell).rename(columns=_latex_cell)
        return cells.to_latex(index=False, caption=_latex_cell(table.title), label=f"tab:{table.suite.name}")
    if output_format == "csv":
        return table.frame.to_csv(index=False)
    raise SuiteError(f"unknown table format {output_format!r}: choose one of {', '.join(FORMATS)}")


def rich_table(table: SuiteTable):
    from rich.table import Table

    rich = Table(title=table.title, caption="\n".join(table.notes), caption_justify="left")
    for column in table.display.columns:
        rich.add_column(column, justify="left" if column in ("method", "protocol", "source", "confidence")
                        else "right", overflow="fold")
    for row in table.display.itertuples(index=False):
        rich.add_row(*map(str, row))
    return rich


def save_plot(table: SuiteTable, path: Path) -> Path | None:
    """The suite's plot (a metric against total Langevin steps or the guidance weight, the paper's values
    beside it, on a second axis when they are another metric); None when the suite has none or nothing to draw."""
    spec = table.suite.plot
    frame = table.frame[table.frame["model"] != ""] if not table.frame.empty else table.frame
    floors = frame[frame["floor"] == True] if "floor" in frame else frame.iloc[:0]  # noqa: E712 (NaN-safe)
    frame = frame.drop(floors.index)
    if spec is None or frame.empty:
        return None
    from matplotlib.figure import Figure  # a bare Figure renders with Agg: no display needed

    figure = Figure(figsize=(6.4, 4.4))
    axes = figure.subplots()
    info = METRICS[spec.metric]
    # One colour per method: its measured line and its paper line match.
    colours = {label: f"C{index}" for index, label in enumerate(dict.fromkeys(frame["method"]))}
    lines = []
    for label, rows in frame.dropna(subset=[f"{spec.metric}_mean"]).groupby("method", sort=False):
        rows = rows.sort_values(spec.x)
        lines.append(axes.errorbar(rows[spec.x], rows[f"{spec.metric}_mean"],
                                   yerr=rows[f"{spec.metric}_sem"].fillna(0), marker="o", capsize=3,
                                   color=colours[label], label=f"{label} {info.label} (measured)"))
    for row in floors.dropna(subset=[f"{spec.metric}_mean"]).itertuples():
        axes.axhline(getattr(row, f"{spec.metric}_mean"), color="grey", linestyle=":", linewidth=1)
        axes.annotate(f"{row.method}", (0, getattr(row, f"{spec.metric}_mean")), xycoords=("axes fraction", "data"),
                      textcoords="offset points", xytext=(3, 3), fontsize=7, color="grey")
    if spec.secondary and f"{spec.secondary}_mean" in frame:
        secondary_axes, secondary = axes.twinx(), METRICS[spec.secondary]
        for label, rows in frame.dropna(subset=[f"{spec.secondary}_mean"]).groupby("method", sort=False):
            rows = rows.sort_values(spec.x)
            lines.append(secondary_axes.errorbar(rows[spec.x], rows[f"{spec.secondary}_mean"],
                                                 yerr=rows[f"{spec.secondary}_sem"].fillna(0), marker="^",
                                                 linestyle="-.", capsize=3, color=colours[label],
                                                 label=f"{label} {secondary.label} (measured)"))
        secondary_axes.set_ylabel(f"{secondary.label} ({'higher' if secondary.higher_is_better else 'lower'} "
                                  "is better)")
    paper_column = f"paper_{spec.paper}" if spec.paper else None
    if paper_column in frame:
        paper_axes = axes if spec.paper == spec.metric else axes.twinx()
        paper = frame.assign(paper=pd.to_numeric(frame[paper_column], errors="coerce")).dropna(subset=["paper"])
        for label, rows in paper.groupby("method", sort=False):
            rows = rows.sort_values(spec.x)
            lines += paper_axes.plot(rows[spec.x], rows["paper"], linestyle="--", marker="s", fillstyle="none",
                                     color=colours[label], label=f"{label} ({table.suite.reference_label})")
        if paper_axes is not axes:
            paper_axes.set_ylabel(f"{table.suite.reference_label} {METRICS[spec.paper].label}")
    if not lines:
        return None
    if spec.x == "total_steps":
        for row in frame.itertuples():
            axes.annotate(f"{row.noise_levels}×{row.steps_per_level}", (row.total_steps, 0),
                          xycoords=("data", "axes fraction"), textcoords="offset points", xytext=(0, 3), fontsize=7,
                          ha="center")
    axes.set_xlabel("total Langevin steps (levels × steps per level)" if spec.x == "total_steps"
                    else "guidance weight w")
    axes.set_ylabel(f"{info.label} ({'higher' if info.higher_is_better else 'lower'} is better)")
    axes.legend(lines, [line.get_label() for line in lines], fontsize=8)
    axes.set_title(textwrap.fill(table.suite.title, 80), fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path
