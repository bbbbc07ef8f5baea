"""Paper-style tables of a suite: the paper's numbers beside the measured ones, from MLflow.

One row per evaluation point of the suite (model, steps per level, guidance weight) and
source (trained here, or a given checkpoint), in the suite's order; with ``context_rows``
the reference rows no model matches follow (the rest of the paper's table). Columns: the
paper's values as printed in ``results/paper/``, each measured metric as mean ± standard
error over seeds (:func:`benchmarks.regression.standard_error`, the regression check's
statistics) and the number of seeds. A setting every row shares (the evaluation protocol, the
batch, the checkpoint scored, the paper's confidence) is printed once under the table; CSV
and JSON keep it whole on every row. Each metric column says its direction (↓ lower is
better, ↑ higher) and its best value is bold. With no runs recorded the paper column is
still shown.
"""

from __future__ import annotations

import json
import math
import statistics
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from benchmarks.records import finished_eval_runs, latest_per_key
from benchmarks.regression import standard_error
from benchmarks.suite import (EvalJob, ModelSpec, SuiteError, Suite, config_delta, expand,
                              scoring_sampler_overrides)
from benchmarks.table_latex import latex_table
from cdrl.datasets import dataset_info
from cdrl.metrics import METRICS
from cdrl.store import Store
from cdrl.tags import TAG_GUIDANCE, TAG_MODEL, TAG_RUN_KEY, TAG_SOURCE, TAG_STEPS
from cdrl.toy_metrics import chance_metrics

FORMATS = ("rich", "markdown", "latex", "csv", "json")
MISSING = "—"
#: CSV and JSON carry two decimal places more than the table prints: enough to recompute, no float32 noise.
EXTRA_DECIMALS = 2
#: Columns that say how a row was obtained, and what each means: printed once under the table when
#: every row it applies to shares one value (the protocol alone made a row six lines tall).
SETTINGS = {
    "protocol": "samples, reference and backend of each evaluation",
    "batch": "the global training batch, all processes together",
    "checkpoint": "which checkpoint of each training is scored: the best by the named score, measured during "
                  "training, or the last",
    "confidence": "of the paper's values, as recorded in its CSV",
}


class ValueColumn(NamedTuple):
    """A display column that shows a metric: which metric, and the frame column holding its values."""

    metric: str
    frame_column: str
    #: The paper's value as printed (True), or a mean over seeds here (False).
    paper: bool


@dataclass
class SuiteTable:
    suite: Suite
    profile: str
    #: Numbers, what CSV and JSON write: ``paper_<metric>`` (NaN: not reported), ``<metric>`` (the mean over
    #: seeds) and ``<metric>_se`` (its standard error), ``n_seeds``, the whole ``protocol`` of every row...
    frame: pd.DataFrame
    #: Strings as printed: the paper's values exactly as in its CSV, mean ± standard error at each metric's decimals.
    display: pd.DataFrame
    #: The display columns that show a metric.
    value_columns: dict[str, ValueColumn]
    #: True where a display cell holds its column's best value (ties included): printed bold.
    best: pd.DataFrame
    #: Under the table: the shared settings first, then where the numbers come from.
    notes: list[str]
    n_runs: int
    #: What a model that learnt only a 2-D density's range scores, by metric (:func:`chance_level`); {} for images.
    chance: dict[str, float] = field(default_factory=dict)

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


def _points(suite: Suite, quick: bool) -> list[EvalJob]:
    """One evaluation job per table row (seed 0's) of the profile, in the suite's order."""
    seen, points = set(), []
    for job in expand(suite, quick=quick).evaluations:
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
    """Mean and standard error over seeds of each metric, rounded for CSV and JSON."""
    values: dict[str, object] = {"n_seeds": len(runs), "protocol": _protocol(runs)}
    generated = pd.to_numeric(runs.get("params.eval.n_generated", pd.Series(dtype=float)), errors="coerce").min()
    n_samples = None if pd.isna(generated) else int(generated)  # the binomial bound of a share of samples
    for metric in metrics:
        column = pd.to_numeric(runs.get(f"metrics.{metric}", pd.Series(dtype=float)), errors="coerce")
        finite = [float(value) for value in column if math.isfinite(value)]  # not finite: not reported
        places = METRICS[metric].decimals + EXTRA_DECIMALS
        values[metric] = round(statistics.fmean(finite), places) if finite else math.nan
        values[f"{metric}_se"] = round(standard_error(finite, metric, n_samples), places) if finite else math.nan
    return values


def build_table(suite: Suite, *, quick: bool = False, tracking_uri: str | None = None) -> SuiteTable:
    """The table of ``suite``'s finished evaluation runs (profile ``quick`` or ``full``) beside the paper's."""
    profile = "quick" if quick else "full"
    reference = read_reference(suite)
    paper_metrics = [metric for metric in METRICS if metric in reference]
    runs = latest_per_key(finished_eval_runs(suite.experiment, suite.name, suite.version, profile, tracking_uri))
    guided = any(len(model.guidance) > 1 or any(model.guidance) for model in suite.models)
    rows, matched = [], set()
    for job in _points(suite, quick):  # the profile's own jobs: their checkpoint rule is the profile's
        global_batch, selection = job.training_summary(suite.eval.checkpoint)
        base = {"method": job.model.label, "model": job.model.key, "floor": job.floor_config is not None,
                # Whether the row draws samples (not a floor's data, nor an OOD row's energies of images).
                "sampled": job.floor_config is None and job.model.ood is None,
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
            rows.append({"method": row.get("method", ""), "model": "", "floor": False,
                         **_paper_values(reference, index, paper_metrics), "source": "", "n_seeds": 0, "protocol": ""})
    printed = pd.DataFrame(rows)  # the paper's values still as printed, for the display
    display, value_columns = _display(suite, printed, paper_metrics, guided)
    frame = _numbers(printed, paper_metrics)
    best = _best_cells(frame, display, value_columns)
    display, setting_notes = _shared_settings(display)
    chance = chance_level(suite, quick)
    return SuiteTable(suite, profile, frame, display, value_columns, best.loc[:, display.columns],
                      setting_notes + _notes(suite, profile, runs, tracking_uri) + _chance_notes(frame, chance),
                      len(runs), chance)


def figure_stem(table: SuiteTable, out: Path | None, plot: Path | None) -> Path:
    """Where ``table``'s figure goes (as STEM.pdf and STEM.png): ``plot`` (its suffix dropped), else beside ``out``
    under another name (pdflatex of OUT.tex writes OUT.pdf), else runs/tables/SUITE-PROFILE (the profile in the
    name: a --quick table does not overwrite the full one's figure)."""
    if plot is not None:
        return plot.with_suffix("") if plot.suffix in (".pdf", ".png") else plot
    if out is not None:
        return out.with_name(f"{out.stem}-figure")
    return Path("runs") / "tables" / f"{table.suite.name}-{table.profile}"


def chance_level(suite: Suite, quick: bool = False) -> dict[str, float]:
    """The suite's 2-D metrics as an even spread over its density's square scores them
    (:func:`cdrl.toy_metrics.chance_metrics`); {} unless its 2-D rows share one density."""
    densities = set()
    for job in _points(suite, quick):
        config = job.floor_config or (job.training.config if job.training else job.checkpoint_config)
        if config is not None and not dataset_info(config.data.dataset).is_image:
            densities.add((config.data.dataset, config.data.toy_scale))
    if len(densities) != 1:
        return {}
    ((name, scale),) = densities
    return {metric: value for metric, value in chance_metrics(name, scale).items() if metric in suite.metrics}


def _chance_notes(frame: pd.DataFrame, chance: dict[str, float]) -> list[str]:
    """The chance level, and the rows that score worse: a smoke run, not a result."""
    if not chance:
        return []
    levels = ", ".join(f"{METRICS[metric].label} {value:.{METRICS[metric].decimals}f}"
                       for metric, value in chance.items())
    notes = [f"Chance: points spread evenly over the square that holds the density (a model that learnt only its "
             f"range) score {levels}; a dashed line in the figure."]
    below = []
    for _, row in frame.iterrows():
        worse = [METRICS[metric].label for metric, level in chance.items() if pd.notna(row.get(metric))
                 and (row[metric] < level if METRICS[metric].higher_is_better else row[metric] > level)]
        if worse:
            steps = f" {row['noise_levels']}×{row['steps_per_level']}" if row.get("steps_per_level") else ""
            below.append(f"{row['method']}{steps} ({', '.join(worse)})")
    if below:
        notes.append(f"Smoke (below chance): {'; '.join(below)} score worse than that even spread on the metrics "
                     "named: a smoke test there, not a result.")
    return notes


def _paper_values(reference: pd.DataFrame, index: int | None, paper_metrics: list[str]) -> dict[str, object]:
    row = reference.loc[index] if index is not None else {}
    values: dict[str, object] = {f"paper_{metric}": row.get(metric, "") for metric in paper_metrics}
    for column in ("confidence", "source"):
        if column in reference:
            values[f"paper_{column}"] = row.get(column, "")
    return values


def _numbers(printed: pd.DataFrame, paper_metrics: list[str]) -> pd.DataFrame:
    """The rows as numbers for CSV and JSON: the paper's values parsed, counts as integers (blank when absent)."""
    frame = printed.copy()
    for metric in paper_metrics:
        frame[f"paper_{metric}"] = pd.to_numeric(frame[f"paper_{metric}"], errors="coerce")
    for column in ("noise_levels", "steps_per_level", "total_steps", "n_seeds"):
        if column in frame:
            frame[column] = frame[column].astype("Int64")
    return frame


def _format(mean: float, error: float, decimals: int) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return MISSING
    return f"{mean:.{decimals}f}" + ("" if error is None or math.isnan(error) else f" ± {error:.{decimals}f}")


def _display(suite: Suite, frame: pd.DataFrame, paper_metrics: list[str], guided: bool
             ) -> tuple[pd.DataFrame, dict[str, ValueColumn]]:
    display = pd.DataFrame(index=frame.index)
    value_columns: dict[str, ValueColumn] = {}
    display["method"] = frame["method"]
    levels_steps = [f"{int(r.noise_levels)}×{int(r.steps_per_level)}" if r.model and r.sampled else ""
                    for r in frame.itertuples()]
    if any(levels_steps):  # a suite that scores the energy of data (OOD) samples nothing: no such column
        display["levels × steps"] = levels_steps
    if guided:
        display["w"] = [f"{r.guidance:g}" if isinstance(r.guidance, float) and not math.isnan(r.guidance)
                        and r.floor is not True else "" for r in frame.itertuples()]
    for metric in paper_metrics:
        header = f"{suite.reference_label} {METRICS[metric].heading}"
        display[header] = [value or MISSING for value in frame[f"paper_{metric}"]]
        value_columns[header] = ValueColumn(metric, f"paper_{metric}", paper=True)
    if "paper_confidence" in frame:
        display["confidence"] = frame["paper_confidence"].fillna("")
    for metric in suite.metrics:
        header = f"measured {METRICS[metric].heading}"
        display[header] = [_format(r[metric], r[f"{metric}_se"], METRICS[metric].decimals) if r["model"] else ""
                           for _, r in frame.iterrows()]
        value_columns[header] = ValueColumn(metric, metric, paper=False)
    display["seeds"] = [str(int(n)) if model else "" for n, model in zip(frame["n_seeds"], frame["model"])]
    display["batch"] = frame["global_batch"].fillna("")
    display["checkpoint"] = frame["checkpoint_selection"].fillna("")
    # Only when a given checkpoint was scored: a floor row's "data" is said by its checkpoint column already.
    if not frame["source"].fillna("").isin(["", "trained", "data"]).all():
        display["source"] = frame["source"].fillna("")
    display["protocol"] = frame["protocol"].fillna("")
    return display, value_columns


def _best_cells(frame: pd.DataFrame, display: pd.DataFrame, value_columns: dict[str, ValueColumn]) -> pd.DataFrame:
    """Where each metric column holds its best value as printed (ties included), in the metric's direction.

    Floor rows (real data scored as samples) are a bound, not a contender; a column with fewer
    than two values, or all of them equal, has nothing to rank.
    """
    best = pd.DataFrame(False, index=display.index, columns=display.columns)
    contenders = frame["floor"] != True  # noqa: E712 (context rows hold NaN)
    for header, column in value_columns.items():
        info = METRICS[column.metric]
        values = frame.loc[contenders, column.frame_column].astype(float)
        if not column.paper:
            values = values.round(info.decimals)  # as printed: equal in the table, equally bold
        values = values.dropna()
        if len(values) < 2:
            continue
        target = values.max() if info.higher_is_better else values.min()
        if (values != target).any():
            best.loc[values.index[values == target], header] = True
    return best


def _shared_settings(display: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Each setting column that one value fills (where it applies) moves under the table; a protocol
    that differs between rows stays as a letter per row, spelled out under the table."""
    notes = []
    for column, meaning in SETTINGS.items():
        if column not in display:
            continue
        distinct = list(dict.fromkeys(value for value in display[column] if value))
        if len(distinct) <= 1:
            display = display.drop(columns=column)
            if distinct:
                notes.append(f"{column} ({meaning}): {distinct[0]}.")
        elif column == "protocol":
            letters = {protocol: chr(ord("a") + index) for index, protocol in enumerate(distinct)}
            display[column] = display[column].map(lambda protocol: letters.get(protocol, ""))
            notes.append(f"protocol ({meaning}): " + "; ".join(f"({letter}) {protocol}"
                                                              for protocol, letter in letters.items()) + ".")
        else:
            notes.append(f"{column}: {meaning}.")
    return display, notes


def _unreported(runs: pd.DataFrame, metrics: tuple[str, ...]) -> list[str]:
    """"run key: metric, ..." for every run missing a metric that its row reports (another seed gave it).

    A metric no run of a row reports does not apply to it (FID of a 2-D model, in-support of digits) and is
    not missing; a run that reported no metric at all (a diverged run logs none) is named whatever its row.
    """
    values = pd.DataFrame({metric: pd.to_numeric(runs.get(f"metrics.{metric}", math.nan), errors="coerce")
                           for metric in metrics}, index=runs.index)
    reported = values.abs() < math.inf  # finite: neither NaN (absent) nor infinite
    row = [runs[f"tags.{tag}"] for tag in (TAG_MODEL, TAG_STEPS, TAG_GUIDANCE, TAG_SOURCE)]  # as build_table's rows
    row_reports = reported.groupby(row, dropna=False).transform("any")
    found = []
    for key, in_row, in_run in zip(runs[f"tags.{TAG_RUN_KEY}"], row_reports.itertuples(index=False),
                                   reported.itertuples(index=False)):
        missing = [METRICS[metric].label for metric, row_has, run_has in zip(metrics, in_row, in_run)
                   if row_has and not run_has]
        if missing or not any(in_run):
            found.append(f"{key}: {', '.join(missing) or 'no metric'}")
    return found


def _notes(suite: Suite, profile: str, runs: pd.DataFrame, tracking_uri: str | None) -> list[str]:
    notes = []
    if suite.reference:
        notes.append(f"{suite.reference_label}: results/paper/{suite.reference} (50,000-sample FIDs unless the CSV "
                     "says otherwise; confidence as recorded there).")
    if runs.empty:
        quick = " --quick" if profile == "quick" else ""
        note = (f"No finished runs of this suite ({profile}) in {Store.resolve(tracking_uri)} yet: "
                f"`cdrl-bench run --suite {suite.name}{quick}` measures them.")
        if profile == "full":  # the quick profile's runs are a flag away: say so rather than "nothing ran"
            quick_runs = latest_per_key(finished_eval_runs(suite.experiment, suite.name, suite.version, "quick",
                                                           tracking_uri))
            if not quick_runs.empty:
                note += (f" {len(quick_runs)} runs of its quick profile are there: `cdrl-bench table --suite "
                         f"{suite.name} --quick` shows them.")
        notes.append(note)
    else:
        shares = [METRICS[metric].label for metric in suite.metrics if METRICS[metric].proportion]
        binomial = (f"; for a share of samples ({', '.join(shares)}) at least the binomial sqrt(p(1-p)/n), which one "
                    "seed cannot measure" if shares else "")
        notes.append(f"measured: mean ± standard error over the seeds counted in the seeds column ({len(runs)} "
                     f"finished evaluation runs){binomial}. ↓ lower is better, ↑ higher; bold: the best of a column.")
        unreported = _unreported(runs, suite.metrics)
        if unreported:
            notes.append(f"Not finite, so left out of their rows' means (a diverged run reports none): "
                         f"{'; '.join(unreported)}. Those rows' means are over fewer seeds than the seeds column.")
        if any(model.floor for model in suite.models):
            notes.append("Floor rows score real data exactly as samples are scored (fresh draws of a 2-D density, "
                         "or the other split's images): the best each metric can read at this sample size.")
    if suite.notes:
        notes.append(suite.notes.strip())
    for model in suite.models:
        note = _model_note(suite, model, profile)
        if note:
            notes.append(f"{model.label or model.key}: {note}.")
    return notes


def _model_note(suite: Suite, model: ModelSpec, profile: str) -> str:
    """How a row's model differs from the suite's: what it trains or samples differently, and its own
    evaluation protocol; the label stays short and the table narrow."""
    parts = []
    if model.scores is not None:
        target = next(other for other in suite.models if other.key == model.scores)
        sampling = scoring_sampler_overrides(suite, model, profile)
        parts.append(f"scores the trainings of {target.label or target.key}"
                     + (f", sampled with {', '.join(sampling)}" if sampling else ""))
    elif model.checkpoint is None and not model.floor:
        parts.extend(config_delta(suite, model, profile))
    scored = []
    if model.n_samples is not None:
        scored.append(f"with {model.samples(suite.profiles[profile]):,} samples")
    if model.reference_split is not None or model.n_reference is not None:
        n_reference = model.n_reference or suite.profiles[profile].n_reference
        split = model.reference_split or suite.eval.reference_split
        scored.append(f"against {'the' if n_reference is None else f'the first {n_reference:,}'} images of the "
                      f"{split} split")
    reference = f"reference {', '.join(model.reference_overrides)}" if model.reference_overrides else ""
    if scored:
        parts.append("scored " + " ".join(scored) + (f" ({reference})" if reference else ""))
    elif reference:
        parts.append(f"scored against {reference}")
    return "; ".join(parts)


# --------------------------------------------------------------------------- rendering

def render(table: SuiteTable, output_format: str) -> str:
    """The table as markdown, LaTeX, CSV or JSON text (``rich`` prints through :func:`rich_table`)."""
    if output_format == "markdown":
        notes = "\n".join(f"- {note}" for note in table.notes)
        cells = table.display.mask(table.best, "**" + table.display + "**")
        markdown = cells.to_markdown(index=False, disable_numparse=True)  # keep "8.30" as printed
        return f"### {table.title}\n\n{markdown}\n\n{notes}\n"
    if output_format == "latex":
        return latex_table(table)
    if output_format == "csv":
        return table.frame.to_csv(index=False)
    if output_format == "json":
        return json.dumps(table_document(table), indent=1, ensure_ascii=False) + "\n"
    raise SuiteError(f"unknown table format {output_format!r}: choose one of {', '.join(FORMATS)}")


def table_document(table: SuiteTable) -> dict:
    """The table for programs: the suite, each metric's label and direction, the CSV's rows, the notes."""
    suite = table.suite
    metrics = dict.fromkeys([*suite.metrics, *(column.metric for column in table.value_columns.values())])
    return {"suite": suite.name, "suite_version": suite.version, "profile": table.profile, "title": suite.title,
            "reference": suite.reference, "reference_label": suite.reference_label,
            "metrics": {name: {"label": METRICS[name].label, "higher_is_better": METRICS[name].higher_is_better,
                               "decimals": METRICS[name].decimals} for name in metrics},
            "rows": json.loads(table.frame.to_json(orient="records")), "notes": table.notes}


def rich_table(table: SuiteTable):
    from rich.table import Table
    from rich.text import Text

    rich = Table(title=table.title, caption="\n".join(table.notes), caption_justify="left")
    for column in table.display.columns:
        if column in ("method", "source", "confidence", "checkpoint"):
            rich.add_column(column, justify="left", overflow="fold")
            continue
        # A heading wraps to its numbers' width, so that it does not widen the column past them: the numbers
        # keep a line each (a wrapped "0.461 ±" hides its error on the next line) and the names take the rest.
        widest = max([*map(len, table.display[column]), *map(len, column.split())])
        rich.add_column(textwrap.fill(column, widest, break_on_hyphens=False), justify="right")
    for (_, row), (_, best) in zip(table.display.iterrows(), table.best.iterrows()):
        rich.add_row(*(Text(str(cell), style="bold" if bold else "") for cell, bold in zip(row, best)))
    return rich
