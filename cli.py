"""cdrl-bench: train, sample, evaluate and compare CDRL/DRL energy-based models.

A thin Typer app: every command parses its options and calls one function of ``cdrl`` or
``benchmarks``. Problems with the user's input surface as ``error: ...`` on one line and
exit status 2 (see :class:`cdrl.errors.CdrlBenchError`).
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from cdrl.errors import CdrlBenchError

app = typer.Typer(
    help="Reproducibility benchmark harness for Cooperative Diffusion Recovery Likelihood (CDRL) "
         "and Diffusion Recovery Likelihood (DRL) energy-based models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
console = Console()
error_console = Console(stderr=True)


@app.command()
def presets() -> None:
    """List the model presets with their parameter counts."""
    from cdrl.config import PRESETS, parameter_counts

    table = Table(title="cdrl-bench presets")
    table.add_column("preset")
    table.add_column("energy network", justify="right")
    table.add_column("initializer", justify="right")
    table.add_column("description")
    for name, build in PRESETS.items():
        config = build()
        ebm_count, initializer_count = parameter_counts(config)
        table.add_row(name, f"{ebm_count:,}", f"{initializer_count:,}", config.description)
    console.print(table)


@app.command("import-checkpoint")
def import_checkpoint(
    path: Path = typer.Argument(..., help="Checkpoint saved by the authors' published CDRL code (.pth.tar)."),
    preset: str = typer.Option(..., "--preset", help="Preset whose networks the checkpoint holds, e.g. cifar10."),
    out: Path = typer.Option(..., "--out", help="Where to write the cdrl-bench checkpoint."),
) -> None:
    """Convert a published-code checkpoint (live and EMA weights) into cdrl-bench's format."""
    from cdrl.checkpoint import import_official_checkpoint, save_atomic

    payload = import_official_checkpoint(path, preset)
    save_atomic(payload, out)
    console.print(f"wrote {out} (preset {preset}, EMA weights: "
                  f"{'yes' if 'ebm_ema' in payload['trainer'] else 'no'})")


def main() -> None:
    try:
        app()
    except CdrlBenchError as error:
        error_console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
