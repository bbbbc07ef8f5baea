"""What the commands share: the consoles, the options several commands take (worded once) and the steps every
command begins with (threads and device, the tracking store, the data folder, the FID backend)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Literal

import typer
from rich.console import Console
from rich.markup import escape

from cdrl.errors import CdrlBenchError

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

TRACKING_URI = typer.Option(None, "--tracking-uri", help="MLflow store (default $MLFLOW_TRACKING_URI, "
                                                         "else sqlite:///mlflow.db).")
DEVICE = typer.Option(None, "--device", help="cpu or cuda[:N] (default: cuda when available).")
THREADS = typer.Option(None, "--threads", min=1, help="CPU threads of this process (default: torch's, all cores; on "
                                                      "a busy machine 1 is often fastest).")
SEED = typer.Option(0, "--seed", min=0, max=2**63 - 1, help="Sample i uses the noise stream of (seed, i): "
                                                            "independent of batching.")
SEEDS = typer.Option(None, "--seeds", min=1, max=10_000, help="Use seeds 0..N-1 instead of the suite's seeds.")
MODE = typer.Option(None, "--mode", help="Resize mode (default: the backend's).")
Split = Literal["train", "test"]
Pick = Literal["newest", "best"]
Mode = Literal["legacy_tensorflow", "clean"]
DATA_DIR = typer.Option(None, "--data-dir", help="Folder holding the dataset's files (default ./data).")
SUITE = typer.Option(..., "--suite", help="Suite name (benchmarks/suites/NAME.toml) or path of a suite file.")
QUICK = typer.Option(False, "--quick", help="The suite's quick profile: fewer iterations and samples, a smoke "
                                             "test (a 2-D row below chance is marked so in the table).")
QUICK_RUNS = typer.Option(False, "--quick", help="Use the runs of the suite's quick profile.")
CHECKPOINT = typer.Argument(..., help="Checkpoint file, run folder (its newest or best checkpoint: --pick) or MLflow run id.")
STEPS = typer.Option(None, "--steps", min=1, help="Langevin steps per noise level K (default: the preset's; the step "
                                            "size scales by sqrt(15/K)).")
SAMPLER_SET = typer.Option([], "--set", help="Sampler override sampler.X=value, e.g. sampler.tweedie_step=false "
                                              "(repeatable; recorded in the protocol).")
BATCH_SIZE = typer.Option(None, "--batch-size", min=1,
                           help="Samples drawn at once (memory only: the samples do not depend on it).")
GUIDANCE = typer.Option(0.0, "--guidance", min=0.0, max=1e6,
                         help="Classifier-free guidance weight w (conditional models).")
LIVE = typer.Option(False, "--live", help="Use the live weights instead of the EMA weights.")
# None: cdrl.evaluation.DEFAULT_BACKEND, looked up when the command runs (importing it here would load torch).
BACKEND = typer.Option(None, "--backend", help="Evaluation backend: torch-fidelity (the default) or clean-fid.")
RICH_OR_JSON = typer.Option("rich", "--format", help="Output format: rich (a table) or json (for scripts).")
PICK = typer.Option("newest", "--pick", help="With a run folder or MLflow run id: its newest checkpoint, or "
                                              "its best (best.pt, kept when trained with run.select_every).")
EXPERIMENT = typer.Option(None, "--experiment", help="MLflow experiment (default cdrl-bench).")
REFERENCE_SPLIT = typer.Option("train", "--reference-split", help="Reference split.")
N_REFERENCE = typer.Option(None, "--n-reference", min=2, help="Reference images (default: the whole split).")


def compute_setup(threads: int | None, device: str | None) -> str | None:
    """Before any work: this process's CPU threads (a warning on a busy machine) and the --device, checked."""
    from cdrl.distributed import checked_device
    from cdrl.performance import use_threads

    warning = use_threads(threads)
    if warning:
        error_console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    checked = checked_device(device)
    return None if checked is None else str(checked)


def data_folder(data_dir: Path | None) -> str | None:
    """--data-dir as the library takes it; a file there is refused (a missing folder is where a download goes)."""
    if data_dir is None:
        return None
    if data_dir.exists() and not data_dir.is_dir():
        raise CdrlBenchError(f"--data-dir {data_dir} is a file: pass the folder that holds the dataset's files")
    return str(data_dir)


def backend_name(name: str | None) -> str:
    """--backend, checked against the registered backends (also where a model's metrics need none)."""
    from cdrl.evaluation import DEFAULT_BACKEND
    from cdrl.evaluation.backends import backend

    return backend(DEFAULT_BACKEND if name is None else name).name


def check_store(tracking_uri: str | None):
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
def progress(ranks=None):
    """Bars on stderr (a line every 30 s in a log) of the steps that report to it: sampling, features."""
    from cdrl.progress import JobProgress, shown_in

    shown = ranks is None or ranks.is_main
    with JobProgress(console=error_console, disable=not shown, transient=True) as progress, shown_in(progress):
        yield
