"""`ceds train`: CEDS semi-supervised training (or its mean-teacher / supervised ablations)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from ceds_deploy.cli.options import check_device

_BUDGET = "Budget (one of them)"
_MODEL = "Model and patches"


def train(
    data_dir: Annotated[
        Path | None,
        typer.Argument(
            help="Dataset folder: dataset.json (Decathlon style, 'training' pairs + 'unlabeled' images) or "
            "imagesTr/ + labelsTr/ (images without a label count as unlabeled).",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Run folder: checkpoints/, metrics.csv, curves.png, config.yaml.", show_default=False
        ),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="Continue the run in this folder from its checkpoints/last.pt, with its saved settings.",
            show_default=False,
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", help="YAML or TOML file of settings; options given here override it.", show_default=False
        ),
    ] = None,
    method: Annotated[
        str | None,
        typer.Option(
            help="[bold]ceds[/] (default), [bold]mean-teacher[/] (no "
            "confidence gate or head) or [bold]supervised[/] (labeled "
            "data only).",
            show_default=False,
        ),
    ] = None,
    labeled: Annotated[
        int | None,
        typer.Option(
            help="Keep only K labels for training; the other labeled images are used as unlabeled.", show_default=False
        ),
    ] = None,
    val_fraction: Annotated[
        float | None,
        typer.Option(help="Fraction of the labeled cases held out for validation (default 0.2).", show_default=False),
    ] = None,
    width: Annotated[
        int | None,
        typer.Option(help="Network base width (paper: 16; 4-8 on a CPU).", rich_help_panel=_MODEL, show_default=False),
    ] = None,
    patch: Annotated[
        tuple[int, int, int] | None,
        typer.Option(
            help="Training patch = inference window, voxels along x y z, multiples of 16 (paper: 112 112 80).",
            metavar="X Y Z",
            rich_help_panel=_MODEL,
            show_default=False,
        ),
    ] = None,
    spacing: Annotated[
        float | None,
        typer.Option(help="Isotropic model spacing in mm (paper: 1.0).", rich_help_panel=_MODEL, show_default=False),
    ] = None,
    iterations: Annotated[
        int | None, typer.Option(help="Training steps in all.", rich_help_panel=_BUDGET, show_default=False)
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option(
            help="Passes over the labeled training cases (paper: 8000).", rich_help_panel=_BUDGET, show_default=False
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            help="Volumes per step and process, half of them labeled (default 2; supervised: all labeled).",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of every random choice (default 0).", show_default=False)
    ] = None,
    device: Annotated[str | None, typer.Option(help="cpu (default), cuda or cuda:N.", show_default=False)] = None,
    precision: Annotated[
        str | None,
        typer.Option(
            help="Arithmetic of the training steps: [bold]auto[/] (default: mixed precision on a GPU, bf16 where "
            "it is supported, else fp16 with loss scaling; fp32 on the CPU), fp32, bf16 (also on the CPU) or "
            "fp16 (GPU only). Losses and the EMA teacher stay fp32.",
            show_default=False,
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
    allow_outside: Annotated[
        bool, typer.Option("--allow-outside", help="Let dataset.json name files outside DATA_DIR (refused by default).")
    ] = False,
) -> None:
    """Train the CEDS network: a student and its EMA teacher, checkpointed every epoch.

    Runs unchanged under [bold]torchrun --nproc_per_node N[/] (gloo on CPUs, NCCL on GPUs).
    """
    if device is not None:
        check_device(device)
    if iterations is not None and epochs is not None:
        raise typer.BadParameter("give --iterations or --epochs, not both", param_hint="--iterations/--epochs")
    settings = {
        "method": method,
        "labeled": labeled,
        "val_fraction": val_fraction,
        "width": width,
        "patch": patch,
        "spacing": None if spacing is None else (spacing,) * 3,
        "iterations": iterations,
        "epochs": epochs,
        "batch_size": batch_size,
        "seed": seed,
        "precision": precision,
        "allow_outside": allow_outside or None,
    }
    if resume is not None:
        given = [f"--{k.replace('_', '-')}" for k, v in settings.items() if v is not None]
        given += [name for name, v in (("DATA_DIR", data_dir), ("--out", out), ("--config", config)) if v is not None]
        if given:
            raise typer.BadParameter(
                f"--resume continues with the run's saved settings; drop {', '.join(given)} (only --device may change)",
                param_hint="--resume",
            )
        from ceds_deploy.training.loop import resume_training

        with _display(quiet) as progress, _resume_hint(resume):
            summary = resume_training(resume, device=device, progress=progress)
    else:
        summary = _new_run(data_dir, out, config, {**settings, "device": device}, quiet=quiet)
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun, rank 0 reports
    best = ", ".join(
        f"{k} {summary.best[k]:.4f} (epoch {summary.best[k + '_epoch']})"
        for k in ("student", "teacher")
        if k in summary.best
    )
    typer.echo(
        f"trained {summary.steps} steps ({summary.epochs} epochs); best validation Dice: {best or 'n/a'}; "
        f"checkpoints in {summary.run_dir / 'checkpoints'}"
    )


@contextmanager
def _resume_hint(run_dir: Path) -> Iterator[None]:
    """Ctrl-C or SIGTERM (a scheduler's stop; `ceds` turns it into Ctrl-C) ends training cleanly;
    where an epoch's checkpoint was saved, say how to go on from it."""
    try:
        yield
    except KeyboardInterrupt:
        from ceds_deploy.training.loop import CHECKPOINT_DIR
        from ceds_deploy.training.state import LAST

        if (run_dir / CHECKPOINT_DIR / LAST).is_file() and os.environ.get("RANK", "0") == "0":
            typer.echo(f"interrupted; `ceds train --resume {run_dir}` goes on from the last saved epoch", err=True)
        raise


def _display(quiet: bool):
    """The training progress display (on stderr; nothing drawn with --quiet or on other ranks)."""
    from rich.console import Console

    from ceds_deploy.cli.display import TrainDisplay

    return TrainDisplay(Console(stderr=True), enabled=not quiet and os.environ.get("RANK", "0") == "0")


def _new_run(data_dir: Path | None, out: Path | None, config: Path | None, settings: dict, quiet: bool):
    from ceds_deploy.errors import ConfigError
    from ceds_deploy.training.config import CLI_SOURCE, resolve_config
    from ceds_deploy.training.loop import start_training

    if out is None:
        raise typer.BadParameter("a new run needs --out RUN_DIR (or --resume RUN_DIR)", param_hint="--out")
    if data_dir is not None:
        settings = {**settings, "data_dir": str(data_dir.resolve())}
    try:
        resolved = resolve_config(config, settings)
    except ConfigError as err:  # a bad option value is a usage error (exit 2); a bad config file is not
        if str(err).startswith(f"{CLI_SOURCE}: "):
            raise typer.BadParameter(str(err).removeprefix(f"{CLI_SOURCE}: ")) from None
        raise
    if not resolved.data_dir:
        raise typer.BadParameter("a new run needs DATA_DIR (or data_dir in --config)", param_hint="DATA_DIR")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder for the run")
    with _display(quiet) as progress, _resume_hint(out):
        return start_training(resolved, out, progress=progress)
