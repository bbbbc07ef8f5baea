"""What a reader gets from a suite: its table (terminal, markdown, LaTeX, CSV, JSON), its figure, sample figures.

Tables are built from made-up finished runs (``finished_eval_runs`` replaced), so the tests take
seconds; LaTeX is compiled when pdflatex is installed (skipped otherwise).
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

import benchmarks.tables as tables
from benchmarks.figures import CHANCE_LABEL, suite_figure, suite_panels
from benchmarks.regression import standard_error
from benchmarks.suite import available_suites, expand, load_suite
from cdrl.config import PRESETS
from cdrl.figures import SUPPORT_COLOUR, save_image_grid, toy_scatter_figure, upscale_factor
from cdrl.tags import TAG_GUIDANCE, TAG_MODEL, TAG_RUN_KEY, TAG_SEED, TAG_SOURCE, TAG_STEPS
from cdrl.toy_metrics import chance_metrics
from cli import app

PROTOCOL_PARAMS = {"params.eval.n_generated": "1000", "params.eval.n_reference": "1000",
                   "params.eval.reference": "toy-checkerboard", "params.eval.reference_split": "fresh draws",
                   "params.eval.backend": "exact-2d"}


def made_up_runs(suite_name: str, values, seeds: int = 3, params=None) -> pd.DataFrame:
    """Finished evaluation runs of every point of a suite: ``values(job, seed)`` gives each run's metrics;
    its protocol params are :data:`PROTOCOL_PARAMS`, updated by ``params`` (a dict) or ``params(job)``."""
    suite = load_suite(suite_name)
    rows = []
    for job in expand(suite, seeds=seeds).evaluations:
        seed = job.key.rsplit("seed", 1)[1]
        protocol = {**PROTOCOL_PARAMS, **(params(job) if callable(params) else params or {})}
        rows.append({f"tags.{TAG_RUN_KEY}": job.key, f"tags.{TAG_MODEL}": job.model.key,
                     f"tags.{TAG_STEPS}": str(job.steps_per_level), f"tags.{TAG_GUIDANCE}": f"{job.guidance:g}",
                     f"tags.{TAG_SOURCE}": "trained", f"tags.{TAG_SEED}": seed, **protocol,
                     **{f"metrics.{name}": value for name, value in values(job, int(seed)).items()}})
    return pd.DataFrame(rows)


def toy_values(job, seed):
    """Energy distance falls with steps (best: CDRL 6x15); in-support best for CDRL without initializer.

    The in-support fraction goes through float32, as MLflow's store gives it back.
    """
    distance = {("cdrl", 15): 0.07, ("cdrl", 8): 0.073, ("cdrl", 5): 0.09, ("cdrl", 3): 0.13,
                ("drl", 30): 0.38, ("drl", 5): 0.42, ("cdrl-no-initializer", 30): 0.1}[job.model.key,
                                                                                       job.steps_per_level]
    support = 0.47 if job.model.key == "cdrl-no-initializer" else 0.43
    return {"energy_distance": distance + 0.001 * seed, "mode_coverage": 0.875,
            "in_support_fraction": float(np.float32(support + 0.011 * seed))}


@pytest.fixture
def toy_steps(monkeypatch):
    runs = made_up_runs("toy-steps", toy_values)
    monkeypatch.setattr(tables, "finished_eval_runs", lambda *args, **kwargs: runs)
    return tables.build_table(load_suite("toy-steps"), quick=True)


def _row(table, model: str, steps: int) -> int:
    frame = table.frame
    return frame.index[(frame["model"] == model) & (frame["steps_per_level"] == steps)][0]


# --------------------------------------------------------------------------- tables

def test_protocol_is_printed_once_under_the_table_and_kept_whole_in_csv_and_json(toy_steps):
    protocol = "1000 samples vs 1000 toy-checkerboard/fresh draws, exact-2d"
    assert "protocol" not in toy_steps.display
    assert [note for note in toy_steps.notes if protocol in note] == [
        f"protocol (samples, reference and backend of each evaluation): {protocol}."]
    assert set(pd.read_csv(io.StringIO(tables.render(toy_steps, "csv")))["protocol"]) == {protocol}
    assert {row["protocol"] for row in json.loads(tables.render(toy_steps, "json"))["rows"]} == {protocol}
    for shared in ("batch", "checkpoint", "confidence"):  # one value in every row: under the table too
        assert shared not in toy_steps.display
        assert any(note.startswith(f"{shared} (") for note in toy_steps.notes)
    # The quick profile's own checkpoint rule (the full one's is 1k every 200 it).
    assert any(note.endswith("best energy distance (500 every 50 it).") for note in toy_steps.notes)


def test_rows_of_two_protocols_name_them_by_letter(monkeypatch):
    def protocol(job):
        return {"params.eval.n_generated": "500" if job.model.key == "drl" else "1000"}

    runs = made_up_runs("toy-steps", toy_values, params=protocol)
    monkeypatch.setattr(tables, "finished_eval_runs", lambda *args, **kwargs: runs)
    table = tables.build_table(load_suite("toy-steps"))
    assert list(table.display["protocol"]) == ["a", "a", "b", "b", "b", "b", "b"]
    (note,) = [note for note in table.notes if note.startswith("protocol")]
    assert "(a) 500 samples vs 1000" in note and "(b) 1000 samples vs 1000" in note


def test_terminal_table_fits_100_columns_a_row_on_a_line(toy_steps):
    console = Console(width=100, record=True, color_system=None)
    console.print(tables.rich_table(toy_steps))
    lines = console.export_text().splitlines()
    assert max(map(len, lines)) <= 100
    body = [line for line in lines if line.startswith("│")]
    # Seven rows: one line each, and one more where "CDRL without initializer" wraps.
    assert len(body) <= len(toy_steps.display) + 1, "\n".join(lines)
    assert sum(len(re.findall(r"\d ± \d", line)) for line in body) == 3 * 7  # each mean beside its error


def test_measured_cells_are_mean_and_standard_error_as_the_gate_computes_them(toy_steps):
    row = _row(toy_steps, "cdrl", 15)
    distances = [0.07, 0.071, 0.072]
    se = standard_error(distances, "energy_distance")
    assert toy_steps.frame.loc[row, "energy_distance_se"] == pytest.approx(se, abs=1e-6)
    assert toy_steps.display.loc[row, "measured energy distance ↓"] == f"0.0710 ± {se:.4f}"
    assert toy_steps.frame.loc[row, "n_seeds"] == 3 and toy_steps.display.loc[row, "seeds"] == "3"


def test_one_seed_of_a_share_of_samples_gets_its_binomial_error(monkeypatch):
    runs = made_up_runs("toy-steps", toy_values, seeds=1)
    monkeypatch.setattr(tables, "finished_eval_runs", lambda *args, **kwargs: runs)
    table = tables.build_table(load_suite("toy-steps"))
    row = _row(table, "cdrl", 15)
    assert table.display.loc[row, "measured in-support ↑"] == f"0.430 ± {(0.43 * 0.57 / 1000) ** 0.5:.3f}"
    assert table.display.loc[row, "measured energy distance ↓"] == "0.0700"  # one seed: no spread to show


def test_best_value_of_each_column_is_bold_in_the_metrics_direction(toy_steps):
    best = toy_steps.best
    bold = {column: list(toy_steps.frame.loc[best[column], "model"] + "/K"
                         + toy_steps.frame.loc[best[column], "steps_per_level"].astype(str))
            for column in best if best[column].any()}
    assert bold == {"paper CIFAR-10 FID ↓": ["cdrl/K15"],           # lowest FID of the paper column
                    "measured energy distance ↓": ["cdrl/K15"],     # lower is better
                    "measured in-support ↑": ["cdrl-no-initializer/K30"]}  # higher is better; coverage: all tie
    markdown = tables.render(toy_steps, "markdown")
    assert "**4.31**" in markdown and "**0.0710 ± 0.0006**" in markdown and "**0.38" not in markdown


def test_ties_as_printed_are_all_bold_floors_never_and_a_column_all_equal_not_at_all(monkeypatch):
    def values(job, seed):
        # K15 and K8 print as 0.500 (a tie); the floors read higher, but are a bound, not a method.
        support = {"toy-floor": 0.9, "toy-cdrl": 0.4 + 0.1 * (job.steps_per_level >= 8) + 0.00001 * job.steps_per_level}
        return {"in_support_fraction": support.get(job.model.key, 0.4), "mode_coverage": 1.0}

    runs = made_up_runs("gate", values, seeds=1)
    monkeypatch.setattr(tables, "finished_eval_runs", lambda *args, **kwargs: runs)
    table = tables.build_table(load_suite("gate"))
    bold = table.frame.loc[table.best["measured in-support ↑"], "model"] + "/K" + table.frame.loc[
        table.best["measured in-support ↑"], "steps_per_level"].astype(str)
    assert list(bold) == ["toy-cdrl/K15", "toy-cdrl/K8"]
    assert not table.best["measured mode coverage ↑"].any()


def test_latex_is_booktabs_with_decimal_aligned_bold_best_and_the_notes_as_caption(toy_steps):
    latex = tables.render(toy_steps, "latex")
    assert latex.isascii()
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert rule in latex
    column_format = re.search(r"\\begin\{tabular\}\{(.*)\}\n", latex)[1]
    assert re.findall(r"S(?:\[[^]]*\])?|[lr]", column_format) == [
        "l", "r", "S[table-format=1.2]", "S[table-format=1.3(1)]", "S[table-format=1.3(1)]",
        "S[table-format=1.4(1)]", "r"]  # the widest integer part, decimals and error digits (compact: 0.009 -> 9)
    assert r"\sisetup{mode=text, detect-weight=true, uncertainty-mode=separate" in latex
    assert r"{FID $\downarrow$}" in latex and r"{in-support $\uparrow$}" in latex
    cdrl_15 = next(line for line in latex.splitlines() if line.startswith(r"CDRL & 6$\times$15"))
    assert r"\bfseries 4.31" in cdrl_15 and r"\bfseries 0.0710 \pm 0.0006" in cdrl_15
    drl_30 = next(line for line in latex.splitlines() if line.startswith(r"DRL & 6$\times$30"))
    assert r"\bfseries" not in drl_30 and r"0.3810 \pm 0.0006" in drl_30
    caption = re.search(r"\\caption\[[^]]*\]\{(.*)\}\n", latex)[1]
    assert "shown for its trend only" in caption and r"1000 samples vs 1000 toy-checkerboard/fresh draws" in caption


def _every_suites_latex(toy_steps, tmp_path, monkeypatch) -> list[str]:
    latex = [tables.render(toy_steps, "latex")]
    monkeypatch.undo()  # the other suites as they print with no runs: the paper's columns only
    absent = f"sqlite:///{tmp_path / 'absent.db'}"
    return latex + [tables.render(tables.build_table(load_suite(name), tracking_uri=absent), "latex")
                    for name in available_suites()]


def test_every_suites_latex_table_is_ascii(toy_steps, tmp_path, monkeypatch):
    """pdflatex stops at a character it has no definition for ("A∧B" in digits-compose's notes did)."""
    for table in _every_suites_latex(toy_steps, tmp_path, monkeypatch):
        assert table.isascii(), sorted({character for character in table if not character.isascii()})


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed")
def test_every_suites_latex_table_compiles(toy_steps, tmp_path, monkeypatch):
    latex = _every_suites_latex(toy_steps, tmp_path, monkeypatch)
    document = tmp_path / "tables.tex"
    document.write_text("\\documentclass{article}\n\\usepackage[margin=2cm]{geometry}\n\\usepackage{booktabs}\n"
                        "\\usepackage{siunitx}\n\\begin{document}\n" + "\n\\clearpage\n".join(latex)
                        + "\n\\end{document}\n")
    result = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", document.name],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:]
    assert (tmp_path / "tables.pdf").stat().st_size > 0


def test_csv_and_json_hold_clean_numbers_named_by_metric(toy_steps, monkeypatch):
    csv = tables.render(toy_steps, "csv")
    assert "0.4410000" not in csv and ",0.441," in csv  # float32 0.441 rounded at 3 + 2 decimals
    rows = pd.read_csv(io.StringIO(csv))
    assert {"energy_distance", "energy_distance_se", "in_support_fraction_se", "paper_fid", "n_seeds"} <= set(rows)
    document = json.loads(tables.render(toy_steps, "json"))
    assert document["metrics"]["energy_distance"] == {"label": "energy distance", "higher_is_better": False,
                                                      "decimals": 4}
    assert list(document["rows"][0]) == list(rows.columns) and len(document["rows"]) == len(rows)
    for column in ("energy_distance", "in_support_fraction_se", "paper_fid", "total_steps"):
        assert [row[column] for row in document["rows"]] == [None if pd.isna(value) else value
                                                              for value in rows[column]], column
    assert document["notes"] == toy_steps.notes

    runs = made_up_runs("cifar10-steps", lambda job, seed: {"fid": 5.0 + seed, "kid_mean": 0.002,
                                                             "inception_score": 8.0}, seeds=2)
    monkeypatch.setattr(tables, "finished_eval_runs", lambda *args, **kwargs: runs)
    columns = tables.build_table(load_suite("cifar10-steps")).frame.columns
    assert "kid_mean" in columns and "kid_mean_se" in columns and not any("_mean_mean" in c for c in columns)


def test_table_command_writes_json(tmp_path):
    result = CliRunner().invoke(app, ["table", "--suite", "toy-steps", "--format", "json", "--tracking-uri",
                                      f"sqlite:///{tmp_path / 'absent.db'}", "--plot", str(tmp_path / "figure")])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["suite"] == "toy-steps" and [row["paper_fid"] for row in document["rows"]][:1] == [9.58]


#: A suite whose one point name is longer than the 150 columns `check` asks for, with the metrics' names.
_LONG_NAMED_SUITE = """
name = "long-names"
version = 1
metrics = ["in_support_fraction", "energy_distance"]

[train]
preset = "toy-checkerboard"
global_batch = 256

[eval]
checkpoint = "last"

[profiles.full]
iterations = 3
n_samples = 64
seeds = [0]

[[models]]
key = "cdrl-without-initializer-noise-variance-reduction-loss-weighting-or-ema-warm-up"
steps = [15]
"""


_END = "--- end of command ---"


def test_piped_commands_print_every_table_whole(tmp_path):
    """In a log (stdout a pipe), rich squeezed every table into 80 columns and cut names: `toy-cd…`, `0.…`."""
    suite = tmp_path / "long-names.toml"
    suite.write_text(_LONG_NAMED_SUITE)
    point = "cdrl-without-initializer-noise-variance-reduction-loss-weighting-or-ema-warm-up/K15"
    values = {"in_support_fraction": [0.90, 0.91, 0.92], "energy_distance": [0.010, 0.012, 0.011]}
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"suite": "long-names", "suite_version": 1, "profile": "full", "format": 2,
                                   "points": {point: {"seeds": [0, 1, 2], "metrics": values}}}))
    empty_store = f"sqlite:///{tmp_path / 'empty.db'}"
    commands = {  # each command, and names it printed cut at 80 columns
        "presets": (["presets"], ["toy-checkerboard-published", "published 2-D toy example (MLP networks, batch 2500"]),
        "suites": (["suites"], ["energy-not-divided-by-step-size", "Regression gate: stored CDRL and DRL models"]),
        "plan": (["plan", "--suite", "gate"], ["digits-cond (checkpoint-", "training steps measured 2026-12-07"]),
        "table": (["table", "--suite", "gate", "--tracking-uri", empty_store, "--plot", str(tmp_path / "figure")],
                  ["CDRL without initializer (stored)", "in-support"]),
        "check": (["check", "--suite", str(suite), "--baseline", str(results), "--results", str(results)],
                  [point, "in_support_fraction", "energy_distance"]),
        "help": (["perf", "--help"], ["performance.channels_last=true", "Example: cdrl-bench perf"]),
    }
    # One process runs each command line in turn, its stdout a pipe as in CI (importing torch once, not five times).
    driver = ("import json, sys, cli\n"
              "for arguments in json.loads(sys.argv[1]):\n"
              "    sys.argv = ['cdrl-bench', *arguments]\n"
              "    try:\n        cli.main()\n    except SystemExit as stop:\n        assert not stop.code, stop.code\n"
              f"    print({_END!r}, flush=True)\n")
    completed = subprocess.run([sys.executable, "-c", driver, json.dumps([arguments for arguments, _ in
                                                                          commands.values()])],
                               capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert completed.returncode == 0, completed.stderr
    printed = completed.stdout.split(_END)
    for (name, (_, names)), output in zip(commands.items(), printed):
        assert "…" not in output, f"{name} cut a cell:\n{output}"
        for whole in names:
            assert any(whole in line for line in output.splitlines()), f"{name} lacks {whole!r} on a line:\n{output}"


def test_presets_and_suites_list_as_json():
    presets = json.loads(CliRunner().invoke(app, ["presets", "--format", "json"]).stdout)
    assert [row["preset"] for row in presets] == list(PRESETS)
    cifar10 = next(row for row in presets if row["preset"] == "cifar10")
    assert (cifar10["energy_network_parameters"], cifar10["initializer_parameters"]) == (34_833_152, 3_769_795)
    suites = json.loads(CliRunner().invoke(app, ["suites", "--format", "json"]).stdout)
    assert [row["suite"] for row in suites] == available_suites()
    gate = next(row for row in suites if row["suite"] == "gate")
    assert "digits-floor" in gate["models"] and gate["paper_table"] is None


# --------------------------------------------------------------------------- suite figures

def _series(panel, paper: bool) -> list[str]:
    return [series.label for series in panel.series if series.paper == paper]


def test_step_figure_puts_another_datasets_trend_in_its_own_panel_never_a_twin_axis(toy_steps):
    measured, trend = suite_panels(toy_steps)
    assert measured.y_label == "energy distance (lower is better)" and not _series(measured, paper=True)
    assert _series(trend, paper=False) == [] and _series(trend, paper=True) == [
        "paper CIFAR-10: DRL", "paper CIFAR-10: CDRL"]
    cdrl = next(series for series in measured.series if series.label == "CDRL")
    assert cdrl.x == [18, 30, 48, 90] and cdrl.y == pytest.approx([0.131, 0.091, 0.074, 0.071])
    assert cdrl.yerr == pytest.approx([standard_error([0.07, 0.071, 0.072], "energy_distance")] * 4, abs=1e-6)
    figure = suite_figure(toy_steps)
    axes = figure.axes
    assert len(axes) == 2
    for one in axes:  # a twin axis shares its x axis with the panel it sits on
        assert one.get_shared_x_axes().get_siblings(one) == [one]
    assert len({tuple(one.get_position().bounds) for one in axes}) == 2


def test_paper_points_share_the_axes_only_when_they_measure_the_same(monkeypatch, tmp_path):
    absent = f"sqlite:///{tmp_path / 'absent.db'}"
    (same,) = suite_panels(tables.build_table(load_suite("cifar10-steps"), tracking_uri=absent))
    assert same.y_label == "FID (lower is better)" and _series(same, paper=True) == ["paper: DRL", "paper: CDRL"]
    runs = made_up_runs("digits-steps", lambda job, seed: {"fid": 20.0 + seed, "kid_mean": 0.01})
    monkeypatch.setattr(tables, "finished_eval_runs", lambda *args, **kwargs: runs)
    digits, cifar = suite_panels(tables.build_table(load_suite("digits-steps")))  # digits FID is not CIFAR-10's
    assert not _series(digits, paper=True) and cifar.title.startswith("paper CIFAR-10")


def test_guidance_sweeps_draw_the_trade_off_curve(monkeypatch, tmp_path):
    runs = made_up_runs("digits-cfg", lambda job, seed: {"fid": 30 - 4 * job.guidance + 3 * job.guidance ** 2,
                                                          "class_accuracy": 0.6 + 0.1 * job.guidance})
    monkeypatch.setattr(tables, "finished_eval_runs", lambda *args, **kwargs: runs)
    fid, accuracy, trade_off = suite_panels(tables.build_table(load_suite("digits-cfg")))
    assert (fid.x_label, accuracy.y_label) == ("guidance weight w", "class accuracy (higher is better)")
    (curve,) = trade_off.series
    assert curve.x == pytest.approx([0.6, 0.65, 0.7, 0.8, 0.9]) and curve.point_labels[-1] == "w=3"
    assert curve.xerr is not None and curve.yerr is not None
    monkeypatch.undo()
    absent = f"sqlite:///{tmp_path / 'absent.db'}"
    _, paper_trade_off = suite_panels(tables.build_table(load_suite("imagenet32-cfg"), tracking_uri=absent))
    assert paper_trade_off.x_label == "IS (higher is better)" and len(paper_trade_off.series) == 1
    assert paper_trade_off.series[0].x[:2] == [7.92, 8.32]  # the paper's IS at w = 0, 0.1


PLOTTED_SUITES = [name for name in available_suites() if load_suite(name).plot is not None]


@pytest.mark.parametrize("suite_name", PLOTTED_SUITES)
def test_nothing_in_a_suite_figure_is_cut_and_every_line_is_named(suite_name, monkeypatch):
    """The gate's one-panel figure cut its three-column legend at both edges, and its floor line had no name."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    suite = load_suite(suite_name)
    runs = made_up_runs(suite_name, lambda job, seed: {
        metric: 1 + 0.01 * job.steps_per_level + 0.1 * job.guidance + 0.001 * seed for metric in suite.metrics})
    monkeypatch.setattr(tables, "finished_eval_runs", lambda *args, **kwargs: runs)
    table = tables.build_table(suite)
    figure = suite_figure(table)
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    # Each panel with everything drawn on and around it (titles, labels, the ticks drawn, floor names), each legend.
    for artist, box in [*((axes, axes.get_tightbbox(renderer)) for axes in figure.axes),
                        *((legend, legend.get_window_extent(renderer)) for legend in figure.legends)]:
        assert (box.x0 >= -0.5 and box.y0 >= -0.5 and box.x1 <= figure.bbox.x1 + 0.5
                and box.y1 <= figure.bbox.y1 + 0.5), f"{artist} at {box.bounds} outside {figure.bbox.bounds}"
    (legend,) = figure.legends
    named = {text.get_text() for text in legend.get_texts()}
    panels = suite_panels(table)
    assert named == {series.label for panel in panels for series in panel.series} | {
        label for panel in panels for _, label in panel.references}
    for axes, panel in zip(figure.axes, panels):  # a floor or chance line is named on the line too
        assert {label for _, label in panel.references} <= {text.get_text() for text in axes.texts}


def test_a_series_names_its_checkpoint_only_to_tell_two_of_one_method_apart(monkeypatch):
    """The gate's legend read "CDRL (stored) (checkpoint-51a27581ee54)": the hash told nothing apart."""
    runs = made_up_runs("toy-steps", toy_values)
    runs.loc[runs[f"tags.{TAG_MODEL}"] == "drl", f"tags.{TAG_SOURCE}"] = "checkpoint-51a27581ee54"
    monkeypatch.setattr(tables, "finished_eval_runs", lambda *args, **kwargs: runs)
    (measured, *_) = suite_panels(tables.build_table(load_suite("toy-steps")))
    assert _series(measured, paper=False) == ["DRL", "CDRL without initializer", "CDRL"]
    trained = made_up_runs("toy-steps", toy_values)
    trained[f"tags.{TAG_RUN_KEY}"] += "/trained"
    both = pd.concat([runs, trained])  # DRL given as a file and trained here: two series of one method
    monkeypatch.setattr(tables, "finished_eval_runs", lambda *args, **kwargs: both)
    (measured, *_) = suite_panels(tables.build_table(load_suite("toy-steps")))
    assert {"DRL", "DRL (checkpoint-51a27581ee54)"} <= set(_series(measured, paper=False))


def test_figure_files_are_pdf_and_png_named_by_profile(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'absent.db'}"
    for flags in ([], ["--quick"]):
        result = CliRunner().invoke(app, ["table", "--suite", "cifar10-steps", "--format", "csv",
                                          "--tracking-uri", uri, *flags])
        assert result.exit_code == 0, result.output
    assert sorted(path.name for path in (tmp_path / "runs" / "tables").iterdir()) == [
        "cifar10-steps-full.pdf", "cifar10-steps-full.png", "cifar10-steps-quick.pdf", "cifar10-steps-quick.png"]
    assert (tmp_path / "runs" / "tables" / "cifar10-steps-full.pdf").read_bytes().startswith(b"%PDF")



def test_only_metrics_a_row_reports_are_named_missing_in_the_gates_mixed_rows(monkeypatch):
    """The gate's toy rows report no FID and its digits rows no in-support: neither is missing there."""
    def values(job, seed):
        if job.model.key.startswith("toy"):
            measured = {"in_support_fraction": 0.9, "mode_coverage": 1.0, "energy_distance": 0.01}
        else:
            measured = {"fid": 30.0, **({"class_accuracy": 0.8} if job.model.key == "digits-cond" else {})}
        if (job.model.key, job.steps_per_level, seed) == ("toy-cdrl", 8, 1):
            measured = {}  # diverged: no metric
        if job.model.key == "digits-cond" and seed == 2:
            measured["class_accuracy"] = float("nan")  # the classifier failed at one seed
        return measured

    runs = made_up_runs("gate", values)
    monkeypatch.setattr(tables, "finished_eval_runs", lambda *args, **kwargs: runs)
    table = tables.build_table(load_suite("gate"))
    assert [note for note in table.notes if note.startswith("Not finite")] == [
        "Not finite, so left out of their rows' means (a diverged run reports none): toy-cdrl/K8/seed1: in-support, "
        "mode coverage, energy distance; digits-cond/K15/w1/seed2: class accuracy. Those rows' means are over fewer "
        "seeds than the seeds column."]
    clean = made_up_runs("gate", lambda job, seed: values(job, 0))
    monkeypatch.setattr(tables, "finished_eval_runs", lambda *args, **kwargs: clean)
    assert not any(note.startswith("Not finite") for note in tables.build_table(load_suite("gate")).notes)


def test_toy_tables_state_chance_and_call_rows_below_it_smoke(monkeypatch):
    """toy-steps --quick printed in-support 0.34-0.44, below the 0.5 an even spread scores, and bolded a "best"."""
    def values(job, seed):
        if (job.model.key, job.steps_per_level) == ("cdrl", 15):
            return {"in_support_fraction": 0.9, "mode_coverage": 1.0, "energy_distance": 0.01}
        return {**toy_values(job, seed), "energy_distance": 0.01}  # in-support 0.43-0.49: below chance only there

    runs = made_up_runs("toy-steps", values)
    monkeypatch.setattr(tables, "finished_eval_runs", lambda *args, **kwargs: runs)
    table = tables.build_table(load_suite("toy-steps"), quick=True)
    assert table.chance == {"in_support_fraction": 0.5, "energy_distance": pytest.approx(0.0277, abs=1e-4)}
    (chance,) = [note for note in table.notes if note.startswith("Chance: ")]
    assert "in-support 0.500, energy distance 0.0277" in chance
    (smoke,) = [note for note in table.notes if note.startswith("Smoke (below chance): ")]
    assert "DRL 6×30 (in-support)" in smoke and "CDRL 6×8 (in-support)" in smoke and "CDRL 6×15" not in smoke
    chance_lines = [panel.references for panel in suite_panels(table) if panel.y_label.startswith("energy distance")]
    assert chance_lines == [[(table.chance["energy_distance"], CHANCE_LABEL)]]  # drawn in the figure too
    assert tables.build_table(load_suite("digits-cfg")).chance == {}  # images have no such level


def test_chance_is_what_an_even_spread_scores():
    assert chance_metrics("toy-checkerboard")["in_support_fraction"] == 0.5  # half the square is support
    assert "mode_coverage" not in chance_metrics("toy-8gaussians")  # an even spread covers every mode


def test_a_full_table_with_only_quick_runs_points_to_quick(monkeypatch):
    runs = made_up_runs("toy-steps", toy_values)
    monkeypatch.setattr(tables, "finished_eval_runs", lambda experiment, name, version, profile, uri=None:
                        runs if profile == "quick" else pd.DataFrame())
    (note,) = [note for note in tables.build_table(load_suite("toy-steps")).notes if note.startswith("No finished")]
    assert note.endswith("21 runs of its quick profile are there: `cdrl-bench table --suite toy-steps --quick` shows "
                         "them.")

# --------------------------------------------------------------------------- sample figures

def test_image_grids_are_upscaled_by_whole_pixels(tmp_path):
    digits = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    path = save_image_grid(digits, tmp_path / "grid.png")
    factor = upscale_factor(8, 4)
    assert factor == 12
    grid = np.asarray(Image.open(path).convert("L")).astype(int)
    assert grid.shape == (4 * (8 * factor + 2) + 2,) * 2
    first = grid[2:2 + 8 * factor, 2:2 + 8 * factor]
    blocks = first.reshape(8, factor, 8, factor)
    assert (blocks == blocks[:, :1, :, :1]).all()  # nearest neighbour: every source pixel a flat square
    expected = (digits[0, 0].add(1).div(2).mul(255).add(0.5).clamp(0, 255).to(torch.uint8)).numpy()
    assert np.array_equal(blocks[:, 0, :, 0], expected)
    assert upscale_factor(32, 8) == 3 and upscale_factor(32, 71) == 1  # 5,000 CIFAR images stay under 2,048 px


def test_toy_scatter_draws_the_true_support_under_the_samples():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure = toy_scatter_figure(torch.zeros(0, 2), "toy-checkerboard", 4.0, "no samples")
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())[..., :3].astype(int)
    axes = figure.axes[0]

    def colour(x: float, y: float) -> np.ndarray:
        column, row = axes.transData.transform((x, y))
        return pixels[pixels.shape[0] - int(round(row)), int(round(column))]

    support = np.array([int(SUPPORT_COLOUR[i:i + 2], 16) for i in (1, 3, 5)])
    for inside in ((6.0, 2.0), (-6.0, -2.0), (2.0, 6.0)):  # squares (1, 2, 0, 1), (-2, -1, -1, 0), (0, 1, 1, 2)
        assert np.abs(colour(*inside) - support).max() <= 2, inside
    for outside in ((2.0, 2.0), (6.0, -2.0), (-2.0, -2.0)):
        assert (colour(*outside) >= 250).all(), outside


def test_progress_in_a_log_is_a_plain_line_with_rate_and_eta_at_each_interval():
    from rich.console import Console

    from cdrl.progress import JobProgress

    def lines(every: float) -> list[str]:
        stream = io.StringIO()
        with JobProgress(console=Console(file=stream, force_terminal=False, width=300), every=every) as progress:
            task = progress.add_task("cdrl/seed0", total=10, losses="ebm +0.1000")
            for _ in range(4):
                progress.advance(task)
        return [line for line in stream.getvalue().splitlines() if line.startswith("cdrl/seed0:")]

    reported = lines(every=0.0)
    assert reported[-1].startswith("cdrl/seed0: 4/10 (40%), ") and " elapsed, ETA " in reported[-1]
    assert reported[-1].endswith("| ebm +0.1000")
    quiet = lines(every=3600.0)  # at most one line per interval: none until the end, then the last state
    assert len(quiet) == 1 and quiet[0].startswith("cdrl/seed0: 4/10 (40%), ")


def test_a_progress_in_a_log_leaves_nothing_but_whole_plain_lines():
    """A command's error must stay the one line it is in CI logs: rich ends any display on a
    non-interactive console with a blank line (transient) or its last frame at the console's width,
    which cut a training's bar to "6000/6… 4.36 it/s ETA 0:00:…" in a pipe."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn

    from cdrl.progress import JobProgress

    def written(transient: bool, steps: int) -> str:
        stream = io.StringIO()
        with JobProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                         TextColumn("{task.fields[losses]}"), console=Console(file=stream, force_terminal=False),
                         every=0.0, transient=transient) as progress:
            task = progress.add_task("digits-colour-cond", total=6000, losses="ebm +0.0236 init 42.2943")
            for _ in range(steps):
                progress.advance(task, 3000)
        return stream.getvalue()

    for transient in (True, False):
        halfway = written(transient, steps=1)  # reported already: no second line at the end
        assert halfway.count("\n") == 1 and halfway.startswith("digits-colour-cond: 3,000/6,000 (50%), ")
        finished = written(transient, steps=2).splitlines()  # a finished task ends with its whole last line
        assert finished[-1].startswith("digits-colour-cond: 6,000/6,000 (100%), ")
        assert finished[-1].endswith("| ebm +0.0236 init 42.2943") and "━" not in "".join(finished)


def test_a_seed_that_reported_no_finite_metric_is_named_under_the_table(monkeypatch, toy_steps):
    """A diverged run finishes without metrics: its row's mean is over fewer seeds, and the table says so."""
    def values(job, seed):
        measured = toy_values(job, seed)
        if (job.model.key, job.steps_per_level, seed) == ("cdrl", 15, 2):
            measured["energy_distance"] = float("nan")
        return measured

    runs = made_up_runs("toy-steps", values)
    monkeypatch.setattr(tables, "finished_eval_runs", lambda *args, **kwargs: runs)
    table = tables.build_table(load_suite("toy-steps"), quick=True)
    assert [note for note in table.notes if note.startswith("Not finite")] == [
        "Not finite, so left out of their rows' means (a diverged run reports none): cdrl/K15/seed2: energy distance. "
        "Those rows' means are over fewer seeds than the seeds column."]
    assert not any(note.startswith("Not finite") for note in toy_steps.notes)
