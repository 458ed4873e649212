"""The `ceds` command line. Each command lives in its own module and imports heavy packages lazily,
so `ceds --help` stays fast."""

from __future__ import annotations

import sys

import typer

from ceds_deploy import __version__
from ceds_deploy.cli import evaluate as evaluate_cmd
from ceds_deploy.cli import segment as segment_cmd

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
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """CEDS: confidence-enhanced semi-supervised segmentation of mediastinal tumours in chest CT."""


app.command("segment")(segment_cmd.segment)
app.command("evaluate")(evaluate_cmd.evaluate)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: the project's own errors become one red line and exit code 1."""
    from ceds_deploy.errors import CedsError

    try:
        code = app(args=argv, standalone_mode=False)
    except CedsError as err:
        from rich.console import Console

        Console(stderr=True).print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        return 1
    except typer.Exit as done:
        return done.exit_code
    except (typer.Abort, KeyboardInterrupt):
        return 130
    except Exception as err:  # click's usage errors arrive here in non-standalone mode
        import click

        if isinstance(err, click.exceptions.ClickException):
            err.show()
            return err.exit_code
        raise
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
