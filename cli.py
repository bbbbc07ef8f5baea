"""cdrl-bench: train, sample, evaluate and compare CDRL/DRL energy-based models.

A thin Typer app: every command (in ``cli_commands``) parses its options and calls one function of ``cdrl`` or
``benchmarks``. Problems with the user's input surface as ``error: ...`` on one line and exit status 2 (see
:class:`cdrl.errors.CdrlBenchError`).
"""

from __future__ import annotations

import typer
from rich.markup import escape
from typer.exceptions import TyperException

from cdrl.errors import CdrlBenchError
from cli_commands import models, suites
from cli_commands.common import HELP_WIDTH, console, error_console

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


def _print_version(requested: bool) -> None:
    if requested:
        import cdrl

        typer.echo(f"cdrl-bench {cdrl.__version__}")
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")) -> None:
    pass  # the options of `cdrl-bench` itself; its help is the app's


# The order of --help's command list.
for name, command in [("suites", suites.suites), ("presets", models.presets),
                      ("import-checkpoint", models.import_checkpoint), ("train", models.train),
                      ("sample", models.sample), ("eval", models.evaluate), ("score", models.score),
                      ("stats", models.stats), ("run", suites.run_suite), ("plan", suites.plan),
                      ("table", suites.table), ("check", suites.check), ("perf", models.perf)]:
    app.command(name)(command)


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
