"""The `ceds` command line. Each command lives in its own module and imports heavy packages lazily,
so `ceds --help` stays fast."""

from __future__ import annotations

import gc
import logging
import os
import sys
import warnings

import typer

from ceds_deploy import __version__
from ceds_deploy.cli import calibrate as calibrate_cmd
from ceds_deploy.cli import demo as demo_cmd
from ceds_deploy.cli import evaluate as evaluate_cmd
from ceds_deploy.cli import export as export_cmd
from ceds_deploy.cli import info as info_cmd
from ceds_deploy.cli import phantoms as phantoms_cmd
from ceds_deploy.cli import segment as segment_cmd
from ceds_deploy.cli import sigterm_as_interrupt
from ceds_deploy.cli import train as train_cmd
from ceds_deploy.machine import usable_cores

app = typer.Typer(
    name="ceds",
    help="CEDS mediastinal tumour segmentation: make phantoms, train, export, segment, evaluate.",
    rich_markup_mode="rich",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ceds-deploy {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show the library's debug messages."),
) -> None:
    """CEDS: confidence-enhanced semi-supervised segmentation of mediastinal tumours in chest CT."""
    from ceds_deploy.cli.display import configure_logging

    configure_logging(logging.DEBUG if verbose else logging.INFO)


app.command("phantoms")(phantoms_cmd.phantoms)
app.command("train")(train_cmd.train)
app.command("calibrate")(calibrate_cmd.calibrate)
app.command("export")(export_cmd.export)
app.command("info")(info_cmd.info)
app.command("segment")(segment_cmd.segment)
app.command("evaluate")(evaluate_cmd.evaluate)
app.command("demo")(demo_cmd.demo)


INTERRUPTED = 130  # the exit code of a command stopped by Ctrl-C (128 + SIGINT), as shells report it
BUSY_LOAD_PER_CORE = 0.5  # a 1-minute load average above this per usable core: other jobs are running


def patient_openmp_threads(load: float | None = None, cores: int | None = None) -> bool:
    """On a machine other jobs keep busy, let idle OpenMP threads sleep instead of spinning
    (OMP_WAIT_POLICY=PASSIVE), unless the user chose a policy; returns whether it did.

    Spinning threads fight the other jobs for the cores: a demo training step took 1.33 s spinning
    against 1.06 s sleeping beside two busy loops, and several times longer on a more crowded
    machine, while on an idle one spinning is faster (0.37 s against 0.47 s; benchmarks/RESULTS.md),
    so the choice follows the load when `ceds` starts. The arithmetic is the same either way. Only the
    command-line process does this, before torch loads its OpenMP runtime; library code never
    touches the environment."""
    if "OMP_WAIT_POLICY" in os.environ:
        return False
    load = os.getloadavg()[0] if load is None else load
    if cores is None:
        cores = usable_cores()
    if load <= BUSY_LOAD_PER_CORE * cores:
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


def main(argv: list[str] | None = None) -> int:
    """Console entry point: the project's own errors become one red line and exit code 1;
    usage errors exit 2 (Typer's standalone mode prints them)."""
    patient_openmp_threads()
    # pydicom warns, with its source line, of each header value outside the standard; the scan's own
    # checks say what stops it. The command line's process only.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")
    from ceds_deploy.errors import CedsError

    try:
        with sigterm_as_interrupt():  # a scheduler's or container's stop ends any command as Ctrl-C does
            app(args=argv, prog_name="ceds", standalone_mode=True)
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        if code == INTERRUPTED:  # Typer's exit for a KeyboardInterrupt
            _print_interrupted()
        return code
    except CedsError as err:
        _print_error(str(err))
        return 1
    except OSError as err:  # a file system failure outside the library's checks: still one line naming the file
        where = f"{err.filename}: " if err.filename else ""
        _print_error(f"{where}{err.strerror or err}")
        return 1
    except KeyboardInterrupt:
        _print_interrupted()
        return INTERRUPTED
    return 0


def console_main() -> None:
    """The `ceds` executable: `main()`, then exit. Everything is written and closed by then; the
    objects left are frozen out of the garbage collections Python's shutdown runs, which otherwise
    walk every object of torch's import (about 0.4 s of each run; benchmarks/results/exit_cost.json)."""
    code = main()
    gc.freeze()
    sys.exit(code)


def _print_interrupted() -> None:
    """Ctrl-C (or SIGTERM, which `main` turns into one): what finished is kept."""
    from rich.console import Console

    Console(stderr=True).print("[bold yellow]interrupted[/]: stopped before the end", highlight=False)


def _print_error(text: str) -> None:
    """One red line on stderr; the message's own brackets are not rich markup."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True).print(f"[bold red]error:[/] {escape(text)}", highlight=False, soft_wrap=True)


if __name__ == "__main__":
    console_main()
