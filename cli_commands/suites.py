"""The commands of a benchmark suite: list the suites, run one, show its plan and cost, render its table and
figure, and check it against its stored baseline. Each parses its options and calls one function of
``benchmarks``, printing what that function's module renders."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from benchmarks.executors import EXECUTORS, executor_options
from cdrl.errors import CdrlBenchError
from cdrl.files import check_writable
from cli_commands.common import (DATA_DIR, DEVICE, QUICK, QUICK_RUNS, RICH_OR_JSON, SEEDS, SUITE, THREADS, TRACKING_URI,
                                 check_store, compute_setup, console, data_folder, error_console, with_options)


def suites(output_format: Literal["rich", "json"] = RICH_OR_JSON) -> None:
    """List the benchmark suites: name, version, title, models and the paper table each answers.

    Example: cdrl-bench suites   (then: cdrl-bench plan --suite NAME)
    """
    import json

    from benchmarks.suite import suite_listing, suites_table

    listed = suite_listing()
    if output_format == "json":
        typer.echo(json.dumps(listed, indent=2))
        return
    console.print(suites_table(listed))


#: The registered executors' names, as --executor's choices.
ExecutorName = Literal[tuple(EXECUTORS)]


def run_suite(
    suite: str = SUITE,
    quick: bool = QUICK,
    seeds: int = SEEDS,
    seed_offset: int = typer.Option(0, "--seed-offset", min=0, max=2**31, help="Add this to every seed (rerun on "
                                                                            "other seeds)."),
    from_checkpoint: Path = typer.Option(None, "--from-checkpoint", help="Evaluate this checkpoint (e.g. an imported "
                                         "official one) at each of the suite's points instead of training."),
    tracking_uri: str = TRACKING_URI,
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Where training run folders go."),
    only: str = typer.Option(None, "--only", help="Run one model of the suite, or one seed of it: MODEL or "
                                                  "MODEL/seedN."),
    shard: str = typer.Option(None, "--shard", help="Run the i-th of N disjoint parts of the suite: i/N (each "
                                                    "training with its evaluations), e.g. one per worker."),
    executor: ExecutorName = typer.Option("local", "--executor", help="Where the jobs run: " + "; ".join(
        f"{kind.name}: {kind.summary}" for kind in EXECUTORS.values()) + " (each one's options below)."),
    data_dir: Path = DATA_DIR,
    device: str = DEVICE,
    threads: int = THREADS,
    **given_executor_options,
) -> None:
    """Run a benchmark suite: train, score and log every run to MLflow; finished runs are skipped (resumable).

    Example: cdrl-bench run --suite toy-steps --quick   (then: cdrl-bench table --suite toy-steps --quick)

    On SLURM (a job per training, then one for its evaluations), one command:

    \b
      cdrl-bench run --suite cifar10-steps --executor submitit --processes-per-training 8 \\
        --partition gpu --tracking-uri http://MLFLOW-SERVER:5000

    On Ray: --executor ray --ray-address auto (same options otherwise).
    """
    from benchmarks.executors import JobSettings, build_executor
    from benchmarks.suite import parse_shard, select

    check_writable(runs_dir, "--runs-dir", folder=True)
    device = compute_setup(threads, device)
    store = check_store(tracking_uri)
    settings = JobSettings(suite, quick=quick, seeds=seeds, seed_offset=seed_offset,
                           checkpoint=str(from_checkpoint) if from_checkpoint else None, tracking_uri=store.uri,
                           runs_dir=str(runs_dir), data_dir=data_folder(data_dir), device=device, threads=threads)
    plan = select(settings.plan(), only=only, shard=parse_shard(shard) if shard is not None else None)
    runner, settings = build_executor(executor, given_executor_options, settings)
    try:
        line = runner.execute(plan, settings, console)
    except KeyboardInterrupt:
        error_console.print("interrupted: run the same command again to finish the remaining runs")
        raise SystemExit(130) from None
    if line:  # empty on the ranks other than 0 of a torchrun: rank 0 reports
        console.print(f"suite {plan.suite.name}: {line}; `cdrl-bench table --suite {suite}"
                      f"{' --quick' if quick else ''}` shows the table", highlight=False, soft_wrap=True)


# `run` takes every executor's options, declared beside each executor (benchmarks.executors.EXECUTORS).
run_suite.__signature__ = with_options(run_suite, executor_options())


def plan(
    suite: str = SUITE,
    quick: bool = QUICK,
    seeds: int = SEEDS,
    world_size: int = typer.Option(None, "--world-size", min=1,
                                   help="Processes per training (default $WORLD_SIZE, else 1): "
                                                              "sets the per-process batch shown."),
    tracking_uri: str = typer.Option(None, "--tracking-uri",
                                     help="Also price trainings by the speed of finished training runs of the same "
                                          "preset and networks in this MLflow store (default: no store is read)."),
    seconds_per_iteration: float = typer.Option(None, "--seconds-per-iteration", min=1e-9, max=1e6,
                                                help="Seconds per training iteration on --gpus GPUs, for every "
                                                     "training (default: measured, else stated by the suite file)."),
    gpus: int = typer.Option(None, "--gpus", min=1, max=1_000_000,
                             help="GPUs per training to price (default --world-size or $WORLD_SIZE when given, "
                                  "else the measured runs' or the suite file's cost gpus); seconds scale by each "
                                  "GPU's share of the batch."),
    output_format: Literal["rich", "json"] = RICH_OR_JSON,
) -> None:
    """Show what `run --suite` would run, without running it: trainings, batches, checkpoints, points, cost.

    Every training with its iterations, global batch and each process's share, and which of its
    checkpoints is scored; then its evaluation points. Then each training's cost: seconds per
    iteration (--seconds-per-iteration when given, else measured by finished runs in
    --tracking-uri, else stated in the suite file) x iterations x GPUs / 3600 = GPU-hours (a suite
    that trains on CPUs: x processes = CPU-hours), and the total.

    Example: cdrl-bench plan --suite cifar10-ablations --world-size 8 --tracking-uri sqlite:///mlflow.db
    """
    import json
    import os

    from benchmarks.suite import (cost_table, cost_total, expand, load_suite, measured_runs, plan_document, plan_rows,
                                  plan_table, training_costs)

    store = check_store(tracking_uri) if tracking_uri is not None else None
    planned = expand(load_suite(suite), quick=quick, seeds=seeds)
    processes = world_size or (int(os.environ["WORLD_SIZE"]) if os.environ.get("WORLD_SIZE") else None)
    world_size = processes or 1
    rows = plan_rows(planned, world_size)
    runs = (measured_runs(store, [job.config for job in planned.trainings])
            if store is not None and seconds_per_iteration is None else [])
    costs = training_costs(planned, runs=runs, seconds_per_iteration=seconds_per_iteration, gpus=gpus or processes)
    if output_format == "json":
        typer.echo(json.dumps(plan_document(planned, world_size, rows, costs), indent=2))
        return
    console.print(plan_table(planned, rows, world_size))
    if costs:
        console.print(cost_table(costs))
    console.print(cost_total(costs), highlight=False, soft_wrap=True)


def table(
    suite: str = SUITE,
    output_format: Literal["rich", "markdown", "latex", "csv", "json"] = typer.Option(
        "rich", "--format", help="Output format: rich (terminal), markdown, latex (booktabs + siunitx), csv or json "
                                 "(the CSV's rows with the metrics' directions and the notes)."),
    out: Path = typer.Option(None, "--out", help="Write the table to this file instead of printing it."),
    plot: Path = typer.Option(None, "--plot", help="Where the suite's figure goes, as PLOT.pdf and PLOT.png "
                                                   "(default: OUT-figure beside --out, else "
                                                   "runs/tables/SUITE-PROFILE)."),
    quick: bool = QUICK_RUNS,
    tracking_uri: str = TRACKING_URI,
) -> None:
    """Paper-style table of a suite: the paper's numbers beside the measured ones (mean ± standard error over seeds).

    Also draws the suite's figure (e.g. FID against total Langevin steps) as PDF and PNG.

    Example: cdrl-bench table --suite cifar10-steps --format latex --out steps.tex
    """
    from benchmarks.figures import save_suite_figure
    from benchmarks.suite import load_suite
    from benchmarks.tables import build_table, figure_stem, render, rich_table
    from cdrl.files import writing

    check_writable(out, "--out")
    check_writable(plot, "--plot")
    if plot is not None and plot.suffix not in ("", ".pdf", ".png"):
        raise CdrlBenchError(f"--plot {plot}: the figure is written as PLOT.pdf and PLOT.png; pass a name without a "
                             f"suffix, or ending in .pdf or .png, e.g. --plot {plot.with_suffix('')}")
    check_store(tracking_uri)
    result = build_table(load_suite(suite), quick=quick, tracking_uri=tracking_uri)
    if output_format == "rich":
        if out is not None:
            raise CdrlBenchError("--format rich prints to the terminal: with --out pass --format markdown, latex, csv "
                                 "or json")
        console.print(rich_table(result))
    elif out is not None:
        with writing(out):
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(render(result, output_format))
        console.print(f"wrote {out}", highlight=False)
    else:
        typer.echo(render(result, output_format), nl=False)
    stem = figure_stem(result, out, plot)
    with writing(stem):
        written = save_suite_figure(result, stem)
    if written:
        # stderr, so that a table printed to stdout stays clean to redirect
        error_console.print(f"figure: {', '.join(map(str, written))}", highlight=False)


def check(
    suite: str = SUITE,
    baseline: Path = typer.Option(None, "--baseline", help="Stored results to compare with (default: the suite's "
                                                          "shipped baseline, results/baselines/SUITE.json)."),
    results: Path = typer.Option(None, "--results", help="Compare this results file instead of the runs in MLflow."),
    k: float = typer.Option(None, "--k", max=1e6,
                            help="Standard errors of tolerance, above 0 (default: the k of the suite's "
                                 "check section)."),
    update: bool = typer.Option(False, "--update", help="Write the current MLflow results (and fingerprints) to "
                                                        "--baseline instead; refused below the suite's baseline seeds."),
    output_format: Literal["rich", "json"] = RICH_OR_JSON,
    quick: bool = QUICK_RUNS,
    tracking_uri: str = TRACKING_URI,
    threads: int = THREADS,
) -> None:
    """Regression check: exit 1 naming each metric, fingerprint, protocol or config that changed.

    The tolerance of each metric is derived from the seed-to-seed spread stored in the baseline:
    k * sigma * sqrt(1/n_baseline + 1/n_current); trained points fail when worse by more, points
    of fixed inputs (stored models, data floors) when they move by more in either direction.
    Suites with stored checkpoints also compare numerical fingerprints (fixed-seed samples, a few
    training steps) and, the gate, the ruler (metrics and dataset pipelines on fixed inputs) and
    the resolved config of every preset and suite model.

    Example: cdrl-bench check --suite gate
    """
    import json

    from benchmarks.regression import (current_results, judge, passed_line, print_failures, print_verdict,
                                       read_results, stored_baseline, update_baseline)
    from benchmarks.suite import load_suite

    compute_setup(threads, None)
    store = check_store(tracking_uri)
    definition = load_suite(suite)
    if k is not None and not k > 0:
        raise CdrlBenchError(f"--k must be positive, got {k}: it is the number of standard errors of tolerance")
    baseline = baseline or stored_baseline(definition)
    stored = None if update else read_results(baseline)  # a bad --baseline fails before the store is read
    current = current_results(definition, "quick" if quick else "full", results, store, named=suite)
    if update:
        console.print(update_baseline(definition, current, baseline), highlight=False)
        return
    verdict = judge(definition, stored, current, k)
    if output_format == "json":
        print(json.dumps(verdict.to_json(), indent=1))
    else:
        print_verdict(verdict, f"{definition.name} ({current['profile']}): current vs {baseline}", console)
    if verdict.failures:
        print_failures(verdict, stored, error_console)
        raise SystemExit(1)
    if output_format == "rich":
        console.print(passed_line(definition, verdict), highlight=False)
