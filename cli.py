"""cdrl-bench: train, sample, evaluate and compare CDRL/DRL energy-based models.

A thin Typer app: every command parses its options and calls one function of ``cdrl`` or
``benchmarks``. Problems with the user's input surface as ``error: ...`` on one line and
exit status 2 (see :class:`cdrl.errors.CdrlBenchError`).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.exceptions import TyperException

from benchmarks.executors import EXECUTORS, executor_options
from cdrl.errors import CdrlBenchError
from cdrl.files import check_writable
from cdrl.typed import key_values

#: Columns of the console when output goes to no terminal: wider than any table, so each takes its natural
#: width (a table never pads itself to the console's width; only long text lines are wrapped there).
LOG_WIDTH = 10_000
#: Columns of --help in a log or a pipe: every command's one-line summary whole.
HELP_WIDTH = 160


def _console(stderr: bool = False) -> Console:
    """The terminal's console; in a log or a pipe, one as wide as any table's natural width.

    rich squeezes output that goes to no terminal into 80 columns, which cut names and numbers in
    every table (`toy-cd…`, `0.…`), and CI logs are where verdicts are read (issue #30).
    """
    terminal = Console(stderr=stderr)
    return terminal if terminal.is_terminal else Console(stderr=stderr, width=LOG_WIDTH)


console = _console()
error_console = _console(stderr=True)
app = typer.Typer(
    help="Reproducibility benchmark harness for Cooperative Diffusion Recovery Likelihood (CDRL) "
         "and Diffusion Recovery Likelihood (DRL) energy-based models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    # Help in boxes on a terminal; in a log or a pipe click's plain help, which wraps and never cuts (typer's boxes
    # at 80 columns cut option texts to `performance.channels_las…`).
    rich_markup_mode="rich" if console.is_terminal else None,
    # In a log or a pipe, wide enough that click's command list keeps each summary whole (at 80 columns it cut
    # them to "List the benchmark suites: name, version, title,...").
    context_settings={} if console.is_terminal else {"terminal_width": HELP_WIDTH, "max_content_width": HELP_WIDTH},
)

# Options that several commands share, worded once.
_TRACKING_URI = typer.Option(None, "--tracking-uri", help="MLflow store (default $MLFLOW_TRACKING_URI, "
                                                         "else sqlite:///mlflow.db).")
_DEVICE = typer.Option(None, "--device", help="cpu or cuda[:N] (default: cuda when available).")
_THREADS = typer.Option(None, "--threads", min=1, help="CPU threads of this process (default: torch's, all cores; on "
                                                      "a busy machine 1 is often fastest).")
_SEED = typer.Option(0, "--seed", min=0, max=2**63 - 1, help="Sample i uses the noise stream of (seed, i): "
                                                            "independent of batching.")
_SEEDS = typer.Option(None, "--seeds", min=1, max=10_000, help="Use seeds 0..N-1 instead of the suite's seeds.")
_MODE = typer.Option(None, "--mode", help="Resize mode (default: the backend's).")
Split = Literal["train", "test"]
Pick = Literal["newest", "best"]
Mode = Literal["legacy_tensorflow", "clean"]
_DATA_DIR = typer.Option(None, "--data-dir", help="Folder holding the dataset's files (default ./data).")
_SUITE = typer.Option(..., "--suite", help="Suite name (benchmarks/suites/NAME.toml) or path of a suite file.")
_QUICK = typer.Option(False, "--quick", help="The suite's quick profile: fewer iterations and samples, a smoke "
                                             "test (a 2-D row below chance is marked so in the table).")
_QUICK_RUNS = typer.Option(False, "--quick", help="Use the runs of the suite's quick profile.")
_CHECKPOINT = typer.Argument(..., help="Checkpoint file, run folder (its newest or best checkpoint: --pick) or MLflow run id.")
_STEPS = typer.Option(None, "--steps", min=1, help="Langevin steps per noise level K (default: the preset's; the step "
                                            "size scales by sqrt(15/K)).")
_SAMPLER_SET = typer.Option([], "--set", help="Sampler override sampler.X=value, e.g. sampler.tweedie_step=false "
                                              "(repeatable; recorded in the protocol).")
_BATCH_SIZE = typer.Option(None, "--batch-size", min=1,
                           help="Samples drawn at once (memory only: the samples do not depend on it).")
_GUIDANCE = typer.Option(0.0, "--guidance", min=0.0, max=1e6,
                         help="Classifier-free guidance weight w (conditional models).")
_LIVE = typer.Option(False, "--live", help="Use the live weights instead of the EMA weights.")
# None: cdrl.evaluation.DEFAULT_BACKEND, looked up when the command runs (importing it here would load torch).
_BACKEND = typer.Option(None, "--backend", help="Evaluation backend: torch-fidelity (the default) or clean-fid.")
_RICH_OR_JSON = typer.Option("rich", "--format", help="Output format: rich (a table) or json (for scripts).")
_PICK = typer.Option("newest", "--pick", help="With a run folder or MLflow run id: its newest checkpoint, or "
                                              "its best (best.pt, kept when trained with run.select_every).")


def _compute_setup(threads: int | None, device: str | None) -> str | None:
    """Before any work: this process's CPU threads (a warning on a busy machine) and the --device, checked."""
    from cdrl.distributed import checked_device
    from cdrl.performance import use_threads

    warning = use_threads(threads)
    if warning:
        error_console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    checked = checked_device(device)
    return None if checked is None else str(checked)


def _data_folder(data_dir: Path | None) -> str | None:
    """--data-dir as the library takes it; a file there is refused (a missing folder is where a download goes)."""
    if data_dir is None:
        return None
    if data_dir.exists() and not data_dir.is_dir():
        raise CdrlBenchError(f"--data-dir {data_dir} is a file: pass the folder that holds the dataset's files")
    return str(data_dir)


def _backend(name: str | None) -> str:
    """--backend, checked against the registered backends (also where a model's metrics need none)."""
    from cdrl.evaluation import DEFAULT_BACKEND
    from cdrl.evaluation.backends import backend

    return backend(DEFAULT_BACKEND if name is None else name).name


def _check_store(tracking_uri: str | None):
    """The tracking store (:class:`cdrl.store.Store`), resolved once here: one that cannot be used fails before
    any work, not after it."""
    from cdrl.store import checked_store

    return checked_store(tracking_uri)


def with_options(command, options: dict):
    """``command``'s signature with ``options`` (name -> (type, typer.Option)) in place of its ``**kwargs``:
    how a command takes options declared elsewhere."""
    import inspect

    signature = inspect.signature(command)
    fixed = [parameter for parameter in signature.parameters.values() if parameter.kind is not parameter.VAR_KEYWORD]
    added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind)
             for name, (kind, option) in options.items()]
    return signature.replace(parameters=fixed + added)


@contextlib.contextmanager
def _progress(ranks=None):
    """Bars on stderr (a line every 30 s in a log) of the steps that report to it: sampling, features."""
    from cdrl.progress import JobProgress, shown_in

    shown = ranks is None or ranks.is_main
    with JobProgress(console=error_console, disable=not shown, transient=True) as progress, shown_in(progress):
        yield


def _print_version(requested: bool) -> None:
    if requested:
        import cdrl

        typer.echo(f"cdrl-bench {cdrl.__version__}")
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")) -> None:
    pass  # the options of `cdrl-bench` itself; its help is the app's


@app.command()
def suites(output_format: Literal["rich", "json"] = _RICH_OR_JSON) -> None:
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


@app.command()
def presets(output_format: Literal["rich", "json"] = _RICH_OR_JSON) -> None:
    """List the model presets with their parameter counts.

    Example: cdrl-bench presets --format json
    """
    import json

    from cdrl.config import PRESETS, parameter_counts

    listed = []
    for name, build in PRESETS.items():
        config = build()
        ebm_count, initializer_count = parameter_counts(config)
        listed.append({"preset": name, "energy_network_parameters": ebm_count,
                       "initializer_parameters": initializer_count, "description": config.description})
    if output_format == "json":
        typer.echo(json.dumps(listed, indent=2))
        return
    table = Table(title="cdrl-bench presets")
    table.add_column("preset")
    table.add_column("energy network", justify="right")
    table.add_column("initializer", justify="right")
    table.add_column("description")
    for row in listed:
        table.add_row(row["preset"], f"{row['energy_network_parameters']:,}", f"{row['initializer_parameters']:,}",
                      row["description"])
    console.print(table)


@app.command("import-checkpoint")
def import_checkpoint(
    path: Path = typer.Argument(..., help="Checkpoint saved by the authors' published CDRL code (.pth.tar)."),
    preset: str = typer.Option(..., "--preset", help="Preset whose networks the checkpoint holds, e.g. cifar10."),
    out: Path = typer.Option(..., "--out", help="Where to write the cdrl-bench checkpoint."),
    class_map_from: Path = typer.Option(
        None, "--class-map-from", help="Class-conditional ImageNet only: the published code's class order, Keras' "
                                       "imagenet_class_index.json (WNIDs sorted). With --class-map-to, the "
                                       "checkpoint's classes are reordered to our npz labels, so that --class c "
                                       "draws npz label c + 1; without both, they stay in the published order."),
    class_map_to: Path = typer.Option(
        None, "--class-map-to", help="Class-conditional ImageNet only: our class order, the map_clsloc.txt that "
                                     "numbers the downsampled-ImageNet npz labels (lines 'n02119789 1 kit_fox')."),
) -> None:
    """Convert a published-code checkpoint (live and EMA weights) into cdrl-bench's format.

    Example: cdrl-bench import-checkpoint best.pth.tar --preset cifar10 --out cifar10.pt
    """
    from cdrl.checkpoint import import_official_checkpoint, save_atomic
    from cdrl.imagenet_classes import load_class_map

    check_writable(out, "--out")
    if (class_map_from is None) != (class_map_to is None):
        raise CdrlBenchError("--class-map-from and --class-map-to go together: pass imagenet_class_index.json "
                             "and map_clsloc.txt, or neither")
    class_map = load_class_map(class_map_from, class_map_to) if class_map_from is not None else None
    payload = import_official_checkpoint(path, preset, class_map)
    save_atomic(payload, out)
    classes = f", classes: {payload['class_order']['description']}" if "class_order" in payload else ""
    console.print(f"wrote {out} (preset {preset}, EMA weights: "
                  f"{'yes' if 'ebm_ema' in payload['trainer'] else 'no'}{classes})", highlight=False, soft_wrap=True)


@app.command()
def train(
    preset: str = typer.Option(None, "--preset", help="Preset to train, e.g. tiny, digits, toy-checkerboard, cifar10."),
    overrides: list[str] = typer.Option([], "--set", help="Config override key=value, e.g. training.ebm_lr=2e-4 "
                                                          "or run.checkpoint_every=500 (repeatable)."),
    data_dir: Path = _DATA_DIR,
    iterations: int = typer.Option(None, "--iterations", min=1, help="Training iterations (training.iterations)."),
    out: Path = typer.Option(None, "--out", help="Run folder (default runs/PRESET-TIMESTAMP)."),
    resume: str = typer.Option(None, "--resume", help="Continue a run: a checkpoint, a run folder or an MLflow run id."),
    tracking_uri: str = _TRACKING_URI,
    experiment: str = typer.Option(None, "--experiment", help="MLflow experiment (default cdrl-bench)."),
    tags: list[str] = typer.Option([], "--tag", help="Extra MLflow tag key=value, e.g. cdrl.suite=toy (repeatable)."),
    device: str = typer.Option(None, "--device", help="cpu or cuda[:N] (default: this rank's GPU if any)."),
    threads: int = typer.Option(None, "--threads", min=1, help="CPU threads of each process "
                                                              "(performance.threads; default: torch's, all cores)."),
) -> None:
    """Train a preset (or resume a run) with MLflow tracking and resumable checkpoints; works under torchrun.

    Example: cdrl-bench train --preset toy-checkerboard --set run.select_every=500 --set run.select_samples=1000
    """
    from cdrl.config import ConfigError, preset as build_preset
    from cdrl.train_loop import train as run_training

    if preset is not None and resume is not None:
        raise ConfigError("--preset and --resume exclude each other: a resumed run keeps its preset")
    settings = list(overrides)
    if data_dir is not None:
        settings.append(f"data.data_dir={_data_folder(data_dir)}")
    if iterations is not None:
        settings.append(f"training.iterations={iterations}")
    if threads is not None:
        settings.append(f"performance.threads={threads}")
    check_writable(out, "--out", folder=True)
    device = _compute_setup(None, device)
    extra_tags = dict(key_values(tags, "--tag", "cdrl.suite=toy"))
    result = run_training(build_preset(preset) if preset is not None else None, resume=resume, overrides=settings,
                          out=out, tracking_uri=tracking_uri, experiment_name=experiment, tags=extra_tags,
                          device=device)
    if result.run_id is not None:
        console.print(f"trained {result.iteration} iterations into {result.run_dir} "
                      f"(checkpoint {result.checkpoint}, MLflow run {result.run_id})", highlight=False, soft_wrap=True)


@app.command()
def sample(
    checkpoint: str = _CHECKPOINT,
    steps: int = _STEPS,
    n: int = typer.Option(64, "--n-samples", "--n", min=1, max=10**9, help="Number of samples (--n for short, "
                                                                       "except under torchrun, whose own options "
                                                                       "begin with --n)."),
    out: Path = typer.Option(..., "--out", help="Folder of lossless PNGs, or FILE.npz (uint8 images / 2-D points)."),
    seed: int = _SEED,
    batch_size: int = _BATCH_SIZE,
    guidance: float = _GUIDANCE,
    class_label: int = typer.Option(None, "--class", min=0, help="Class to draw (0-based; default: all classes in "
                                                                  "turn)."),
    live: bool = _LIVE,
    device: str = _DEVICE,
    tracking_uri: str = typer.Option(None, "--tracking-uri", help="MLflow store, to resolve a run id (default "
                                                                  "$MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)."),
    pick: Pick = _PICK,
    sampler_overrides: list[str] = _SAMPLER_SET,
    threads: int = _THREADS,
) -> None:
    """Draw samples from a checkpoint (EMA weights by default) and save them losslessly.

    Example: cdrl-bench sample runs/digits-cond --n 64 --steps 5 --guidance 2 --class 7 --out sevens/
    """
    from cdrl.distributed import process_group
    from cdrl.datasets import dataset_info
    from cdrl.generation import check_sample_output, save_samples
    from cdrl.run_folder import locate_checkpoint
    from cdrl.scoring import SamplingRequest, draw_samples

    check_writable(out, "--out", folder=out.suffix != ".npz")  # a folder of PNGs, or one FILE.npz

    def is_image(config) -> bool:
        return dataset_info(config.data.dataset).is_image

    device = _compute_setup(threads, device)
    store = _check_store(tracking_uri)
    located = locate_checkpoint(checkpoint, store, pick)
    request = SamplingRequest(located.path, n, steps, seed, batch_size, guidance, class_label, not live,
                              tuple(sampler_overrides))
    # Under torchrun every rank draws its share of the samples; rank 0 writes them.
    with process_group(device) as (ranks, device), _progress(ranks):
        samples, config, protocol = draw_samples(request, device=device,
                                                 check_config=lambda config: check_sample_output(out, is_image(config)))
    if not ranks.is_main:
        return
    written = save_samples(samples, out, is_image(config), {**protocol, "checkpoint_selection": located.selection})
    console.print(f"wrote {n} samples to {written} ({protocol['noise_levels']}x{protocol['steps_per_level']} steps, "
                  f"{protocol['weights']} weights, seed {seed})", highlight=False, soft_wrap=True)


@app.command("eval")
def evaluate(
    checkpoint: str = _CHECKPOINT,
    steps: int = _STEPS,
    n_samples: int = typer.Option(5000, "--n-samples", min=2, max=10**9, help="Generated images (the paper's tables "
                                                                              "use 50,000)."),
    backend: str = _BACKEND,
    mode: Mode = _MODE,
    reference_split: Split = typer.Option("train", "--reference-split", help="Reference split."),
    n_reference: int = typer.Option(None, "--n-reference", min=2, help="Reference images (default: the whole split)."),
    seed: int = _SEED,
    batch_size: int = _BATCH_SIZE,
    guidance: float = _GUIDANCE,
    class_label: int = typer.Option(None, "--class", min=0, help="Score one class only (0-based)."),
    live: bool = _LIVE,
    data_dir: Path = typer.Option(None, "--data-dir", help="Folder holding the reference dataset's files "
                                                                             "(default ./data)."),
    device: str = _DEVICE,
    tracking_uri: str = _TRACKING_URI,
    experiment: str = typer.Option(None, "--experiment", help="MLflow experiment for the score (default cdrl-bench)."),
    pick: Pick = _PICK,
    sampler_overrides: list[str] = _SAMPLER_SET,
    threads: int = _THREADS,
) -> None:
    """Score a checkpoint: FID/KID (IS when the extractor has logits), or exact metrics for 2-D toys; logs to MLflow.

    Example: cdrl-bench eval runs/c10 --n-samples 50000 --steps 15 --data-dir ~/data
    """
    from cdrl.distributed import process_group
    from cdrl.run_folder import locate_checkpoint
    from cdrl.scoring import Recording, SamplingRequest, ScoringRequest, score_checkpoint

    device = _compute_setup(threads, device)
    store = _check_store(tracking_uri)
    located = locate_checkpoint(checkpoint, store, pick)
    sampling = SamplingRequest(located.path, n_samples, steps, seed, batch_size, guidance, class_label, not live,
                               tuple(sampler_overrides))
    protocol = ScoringRequest(reference_split=reference_split, n_reference=n_reference, backend=_backend(backend),
                              mode=mode, data_dir=_data_folder(data_dir))
    # Under torchrun every rank draws its share of the samples; rank 0 scores them and logs one run.
    with process_group(device) as (ranks, device), _progress(ranks):
        result = score_checkpoint(sampling, protocol, device=device, checkpoint_selection=located.selection,
                                  record=Recording(store, experiment))
    if result is not None:
        console.print(result.protocol_line, highlight=False, soft_wrap=True)
        console.print(f"MLflow run {result.run_id}", highlight=False)


@app.command()
def score(
    samples: Path = typer.Argument(..., help="A folder of PNGs, a .npz (uint8 'images' N x H x W x C, or 'arr_0') or "
                                             "a .pt tensor (float N x C x H x W in [-1, 1], or uint8)."),
    dataset: str = typer.Option(..., "--dataset", help="Reference dataset the samples are of, e.g. cifar10 (its "
                                                       "image size and channels are the samples')."),
    backend: str = _BACKEND,
    mode: Mode = _MODE,
    reference_split: Split = typer.Option("train", "--reference-split", help="Reference split."),
    n_reference: int = typer.Option(None, "--n-reference", min=2, help="Reference images (default: the whole split)."),
    seed: int = typer.Option(0, "--seed", min=0, max=2**63 - 1, help="Seed of KID's subsets (eval's --seed)."),
    reference_overrides: list[str] = typer.Option([], "--set", help="Reference data setting data.X=value, e.g. "
                                                                    "data.imagenet_source=npz64-resized (repeatable)."),
    data_dir: Path = _DATA_DIR,
    log: bool = typer.Option(False, "--log", help="Also record the score as an MLflow run (--tracking-uri)."),
    tracking_uri: str = _TRACKING_URI,
    experiment: str = typer.Option(None, "--experiment", help="MLflow experiment for the score (default cdrl-bench)."),
    device: str = _DEVICE,
    threads: int = _THREADS,
) -> None:
    """Score samples from files (another model's, the authors' released ones) under eval's protocol.

    Example: cdrl-bench score samples/ --dataset cifar10 --data-dir ~/data --log
    """
    from cdrl.sample_files import score_sample_file
    from cdrl.scoring import Recording, ScoringRequest

    device = _compute_setup(threads, device)
    # A store given by mistake without --log is refused too.
    store = _check_store(tracking_uri) if log or tracking_uri is not None else None
    protocol = ScoringRequest(reference_split=reference_split, n_reference=n_reference, backend=_backend(backend),
                              mode=mode, reference_overrides=tuple(reference_overrides),
                              data_dir=_data_folder(data_dir))
    with _progress():
        result = score_sample_file(samples, dataset, protocol, seed=seed, device=device,
                                   record=Recording(store, experiment) if log else None)
    console.print(result.protocol_line, highlight=False, soft_wrap=True)
    if result.run_id:
        console.print(f"MLflow run {result.run_id}", highlight=False)


@app.command()
def stats(
    dataset: str = typer.Option(..., "--dataset", help="Dataset whose reference statistics to build, e.g. cifar10."),
    split: Split = typer.Option("train", "--split", help="Dataset split."),
    n_images: int = typer.Option(None, "--n", min=2, help="Use the first N images (default: the whole split)."),
    backend: str = _BACKEND,
    mode: Mode = _MODE,
    data_dir: Path = typer.Option(None, "--data-dir", help="Folder holding the dataset's files (default ./data)."),
    device: str = _DEVICE,
    threads: int = _THREADS,
) -> None:
    """Build and cache FID reference statistics for (dataset, split, backend, mode, weights, N).

    Example: cdrl-bench stats --dataset cifar10 --data-dir ~/data
    """
    from cdrl.scoring import build_statistics

    device = _compute_setup(threads, device)
    with _progress():
        statistics = build_statistics(dataset, split=split, n_images=n_images, backend=_backend(backend), mode=mode,
                                      data_dir=_data_folder(data_dir), device=device)
    console.print(f"cached reference statistics {statistics.key.filename()} "
                  f"({statistics.key.n_images} images, {statistics.extractor_name})", highlight=False)


#: The registered executors' names, as --executor's choices.
ExecutorName = Literal[tuple(EXECUTORS)]


def run_suite(
    suite: str = _SUITE,
    quick: bool = _QUICK,
    seeds: int = _SEEDS,
    seed_offset: int = typer.Option(0, "--seed-offset", min=0, max=2**31, help="Add this to every seed (rerun on "
                                                                            "other seeds)."),
    from_checkpoint: Path = typer.Option(None, "--from-checkpoint", help="Evaluate this checkpoint (e.g. an imported "
                                         "official one) at each of the suite's points instead of training."),
    tracking_uri: str = _TRACKING_URI,
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Where training run folders go."),
    only: str = typer.Option(None, "--only", help="Run one model of the suite, or one seed of it: MODEL or "
                                                  "MODEL/seedN."),
    shard: str = typer.Option(None, "--shard", help="Run the i-th of N disjoint parts of the suite: i/N (each "
                                                    "training with its evaluations), e.g. one per worker."),
    executor: ExecutorName = typer.Option("local", "--executor", help="Where the jobs run: " + "; ".join(
        f"{kind.name}: {kind.summary}" for kind in EXECUTORS.values()) + " (each one's options below)."),
    data_dir: Path = _DATA_DIR,
    device: str = _DEVICE,
    threads: int = _THREADS,
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
    device = _compute_setup(threads, device)
    store = _check_store(tracking_uri)
    settings = JobSettings(suite, quick=quick, seeds=seeds, seed_offset=seed_offset,
                           checkpoint=str(from_checkpoint) if from_checkpoint else None, tracking_uri=store.uri,
                           runs_dir=str(runs_dir), data_dir=_data_folder(data_dir), device=device, threads=threads)
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
app.command("run")(run_suite)


@app.command()
def plan(
    suite: str = _SUITE,
    quick: bool = _QUICK,
    seeds: int = _SEEDS,
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
    output_format: Literal["rich", "json"] = _RICH_OR_JSON,
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

    store = _check_store(tracking_uri) if tracking_uri is not None else None
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


@app.command()
def table(
    suite: str = _SUITE,
    output_format: Literal["rich", "markdown", "latex", "csv", "json"] = typer.Option(
        "rich", "--format", help="Output format: rich (terminal), markdown, latex (booktabs + siunitx), csv or json "
                                 "(the CSV's rows with the metrics' directions and the notes)."),
    out: Path = typer.Option(None, "--out", help="Write the table to this file instead of printing it."),
    plot: Path = typer.Option(None, "--plot", help="Where the suite's figure goes, as PLOT.pdf and PLOT.png "
                                                   "(default: OUT-figure beside --out, else "
                                                   "runs/tables/SUITE-PROFILE)."),
    quick: bool = _QUICK_RUNS,
    tracking_uri: str = _TRACKING_URI,
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
    _check_store(tracking_uri)
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


@app.command()
def check(
    suite: str = _SUITE,
    baseline: Path = typer.Option(None, "--baseline", help="Stored results to compare with (default: the suite's "
                                                          "shipped baseline, results/baselines/SUITE.json)."),
    results: Path = typer.Option(None, "--results", help="Compare this results file instead of the runs in MLflow."),
    k: float = typer.Option(None, "--k", max=1e6,
                            help="Standard errors of tolerance, above 0 (default: the k of the suite's "
                                 "check section)."),
    update: bool = typer.Option(False, "--update", help="Write the current MLflow results (and fingerprints) to "
                                                        "--baseline instead; refused below the suite's baseline seeds."),
    output_format: Literal["rich", "json"] = _RICH_OR_JSON,
    quick: bool = _QUICK_RUNS,
    tracking_uri: str = _TRACKING_URI,
    threads: int = _THREADS,
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

    _compute_setup(threads, None)
    store = _check_store(tracking_uri)
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


@app.command()
def perf(
    preset: str = typer.Option("tiny", "--preset", help="Preset to time, e.g. tiny or cifar10."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Training batch size (and sampling batch by "
                                                                  "default)."),
    overrides: list[str] = typer.Option([], "--set", help="Config override key=value, e.g. "
                                                          "performance.channels_last=true (repeatable)."),
    device: str = _DEVICE,
    threads: int = _THREADS,
    warmup: int = typer.Option(1, "--warmup", min=0,
                               help="Untimed training iterations first (compilation happens here)."),
    iterations: int = typer.Option(2, "--iterations", min=1, help="Timed training iterations."),
    sampling_steps: str = typer.Option("15,5", "--sampling-steps", help="K of each timed 6xK sampling run; "
                                                                        "'' for none."),
    sample_batch: int = typer.Option(None, "--sample-batch", min=1,
                                     help="Samples per sampling run (default: batch size)."),
    inception: bool = typer.Option(False, "--inception", help="Also time Inception features (cdrl.evaluation)."),
    inception_images: int = typer.Option(32, "--inception-images", min=1, help="Images of the timed Inception pass."),
    breakdown: bool = typer.Option(False, "--breakdown", help="Profile one more iteration: time and GFLOP/s by "
                                                              "kind of operation (convolutions, matmuls, other)."),
    peak_tflops: float = typer.Option(None, "--peak-tflops", min=1e-9, max=1e6,
                                      help="Peak TFLOP/s to compare with (default: "
                                                                  "datasheet for H100/H200; on CPU the measured "
                                                                  "FMA peak, benchmarks.speed.cpu_peak)."),
    options_matrix: bool = typer.Option(False, "--options-matrix",
                                        help="Time the exact path, each speed option alone and all but bfloat16 "
                                             "together; print a table."),
    json_out: Path = typer.Option(None, "--json", help="Also write the report as JSON here."),
    compiled: bool = typer.Option(False, "--compile", help="Pairs of training iterations, eager and "
                                                          "performance.chain_compile=inductor, in one process: "
                                                          "speed-up, compile time, % of peak of each."),
    pairs: int = typer.Option(5, "--pairs", min=1, max=1000, help="Pairs of iterations timed by --compile or "
                                                                   "--published."),
    published: Path = typer.Option(None, "--published", help="A checkout of the authors' code "
                                                             "(github.com/AlvinZhuyx/CDRL): time its training "
                                                             "iteration and sampler beside ours, same inputs and "
                                                             "threads, and print the ratio."),
) -> None:
    """Training s/iteration, Langevin steps/s, sampling images/s, FLOPs and the fraction of peak of a preset.

    Example: cdrl-bench perf --preset digits --iterations 5
    """
    import torch

    from benchmarks.speed.perf import PerfSettings, execute, parse_sampling_steps

    device = _compute_setup(None, device)
    check_writable(json_out, "--json")
    settings = PerfSettings(
        preset=preset, batch_size=batch_size, overrides=tuple(overrides),
        device=device or ("cuda" if torch.cuda.is_available() else "cpu"), threads=threads, warmup=warmup,
        iterations=iterations, sampling_steps=parse_sampling_steps(sampling_steps), sample_batch=sample_batch,
        inception=inception,
        inception_images=inception_images, peak_tflops=peak_tflops, breakdown=breakdown)
    console.print(execute(settings, options_matrix=options_matrix, compiled=compiled, published=published,
                          pairs=pairs, json_path=json_out), highlight=False, soft_wrap=True)


def main() -> None:
    """Run the command line; bad input of any kind ends as one ``error: ...`` line and exit status 2."""
    import sys

    try:
        if len(sys.argv) > 1 and not {"--help", "--version"} & set(sys.argv[1:]):  # help stays instant (no torch)
            from cdrl.environment import check_environment

            check_environment()  # a bad variable is refused before any command works
        status = app(standalone_mode=False)
    except TyperException as error:  # a value of the wrong type or range, an unknown or missing option
        context = getattr(error, "ctx", None)
        command = context.command_path if context is not None else "cdrl-bench"
        if error.format_message():  # empty after `cdrl-bench` alone, which prints the help instead
            error_console.print(f"[bold red]error:[/] {escape(error.format_message())} (see {command} --help)",
                                highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
    except (typer.Abort, KeyboardInterrupt):  # Ctrl-C: tracked runs have closed KILLED on the way out
        error_console.print("interrupted", highlight=False)
        raise SystemExit(130) from None
    except CdrlBenchError as error:
        # The message is plain text: "[train]" in it is a TOML table, not console markup.
        error_console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
    if isinstance(status, int) and status:
        raise SystemExit(status)


if __name__ == "__main__":
    main()
