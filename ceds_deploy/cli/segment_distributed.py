"""`ceds segment` on more than one GPU or machine: under torchrun, and on a Ray cluster (`--ray`).

Under torchrun (RANK, WORLD_SIZE, LOCAL_RANK in the environment, WORLD_SIZE > 1) each rank runs
`run_segment` on its shard (the split of `--shard I/N`, with I = RANK and N = WORLD_SIZE) on
cuda:LOCAL_RANK (with --device cuda), and rank 0 merges the launch's report when every rank is done
or lost (`inference.ranks`). The ranks agree on a key for their status files through one gloo
broadcast at start (torchrun's run id is "none" unless --rdzv-id is given); the process group is
left right after, so a rank busy for hours holds no collective that could time out.
Ranks other than 0 exit 0 once their shard is recorded (a non-zero exit would make torchrun stop
rank 0 before it merges); rank 0's exit code says whether any case or rank failed.

This is the only place that connects to Ray (`ray.init`) or joins a process group; the library's
runners assume the connection exists.
"""

from __future__ import annotations

import functools
import os
import uuid
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from ceds_deploy.inference import SegmentOptions


@dataclass(frozen=True)
class TorchrunRank:
    rank: int
    world_size: int
    local_rank: int


def torchrun_rank() -> TorchrunRank | None:
    """This process's place in a torchrun launch (the environment torchrun sets: RANK, WORLD_SIZE,
    LOCAL_RANK); None outside torchrun or for a world of one."""
    try:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1 or "RANK" not in os.environ:
            return None
        rank = int(os.environ["RANK"])
        return TorchrunRank(rank, world_size, int(os.environ.get("LOCAL_RANK", rank)))
    except ValueError:
        raise typer.BadParameter(
            "RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun sets them)", param_hint="environment"
        ) from None


def rank_device(device: str, local_rank: int) -> str:
    """cuda -> cuda:LOCAL_RANK (one GPU per rank on a node); cpu or an explicit cuda:N as given."""
    return f"cuda:{local_rank}" if device == "cuda" else device


def run_distributed(
    input_path: Path,
    output: Path,
    model: Path,
    engine: dict[str, Any],
    options: SegmentOptions,
    *,
    console: Console,
    ray: str | None,
    ray_cpus: float,
    rank: TorchrunRank | None,
    rank_timeout: float,
) -> int:
    """`ceds segment` with --ray or under torchrun; returns the number of failed cases (and ranks)."""
    if options.shard != (0, 1):
        raise typer.BadParameter(
            "--shard splits the folder by hand; with --ray or torchrun the split is automatic", param_hint="--shard"
        )
    if ray is not None and rank is not None:
        raise typer.BadParameter("use --ray or torchrun, not both", param_hint="--ray")
    if ray is not None:
        return run_ray(input_path, output, model, engine, options, console=console, address=ray, cpus=ray_cpus)
    assert rank is not None
    return run_torchrun_rank(
        input_path, output, model, engine, options, console=console, rank=rank, timeout=rank_timeout
    )


def shared_key(rank: TorchrunRank, timeout_s: float) -> str:
    """A key unique to this launch that every rank knows: rank 0's, broadcast over gloo (the
    process group is joined and left here; a rank missing for `timeout_s` ends it with a `CedsError`)."""
    import torch.distributed as dist

    from ceds_deploy.errors import CedsError

    try:
        return _broadcast_key(dist, rank, timeout_s)
    except (RuntimeError, OSError, ValueError) as err:  # gloo or the store cannot reach rank 0
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CedsError(
            f"rank {rank.rank}: the torchrun ranks could not meet at start ({type(err).__name__}: {first}); "
            f"check that every node reaches MASTER_ADDR:MASTER_PORT ({os.environ.get('MASTER_ADDR')}:"
            f"{os.environ.get('MASTER_PORT')})"
        ) from None


def _broadcast_key(dist: Any, rank: TorchrunRank, timeout_s: float) -> str:
    dist.init_process_group("gloo", rank=rank.rank, world_size=rank.world_size, timeout=timedelta(seconds=timeout_s))
    try:
        box = [uuid.uuid4().hex[:16] if rank.rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
    finally:
        dist.destroy_process_group()
    return str(box[0])


def run_torchrun_rank(
    input_path: Path,
    output: Path,
    model: Path,
    engine: dict[str, Any],
    options: SegmentOptions,
    *,
    console: Console,
    rank: TorchrunRank,
    timeout: float,
) -> int:
    """This rank's shard; on rank 0 then the wait for the others and the merged report."""
    from ceds_deploy.cli.segment import run_segment
    from ceds_deploy.errors import CedsError
    from ceds_deploy.inference.ranks import RankStatus, merge_rank_runs, wait_for_ranks

    key = shared_key(rank, timeout)
    here = f"rank {rank.rank}/{rank.world_size}"
    mine = replace(options, shard=(rank.rank, rank.world_size), html=False)  # rank 0 writes the page at the end
    with RankStatus(output, key, rank.rank) as status:
        try:
            failed = run_segment(
                input_path,
                output,
                model,
                options=mine,
                console=console,
                show_progress=rank.rank == 0,
                run_info={"torchrun": {"key": key, "rank": rank.rank, "world_size": rank.world_size}},
                **{**engine, "device": rank_device(engine["device"], rank.local_rank)},
            )
            status.finish("done", failed_cases=failed)
        except (CedsError, OSError) as err:  # recorded for rank 0: exiting 1 would make torchrun stop it
            text = str(err) if isinstance(err, CedsError) else f"{err.filename or ''}: {err.strerror or err}"
            console.print(f"[bold red]{here} failed:[/] {text}", highlight=False)
            status.finish("failed", error=text)
    if rank.rank != 0:
        return 0
    console.print(f"{here}: waiting for the other ranks (lost after {timeout:.0f} s without a sign of life)")
    states = wait_for_ranks(output, key, rank.world_size, timeout_s=timeout)
    (report, _), info = merge_rank_runs(output, key, states, options)
    return _print_launch(console, output, info, report)


def _print_launch(console: Console, output: Path, info: dict[str, Any], report: Path) -> int:
    """Rank 0's summary of the launch: the folder report's counts, the cases this launch failed and
    each rank that failed or was lost; returns their number."""
    from ceds_deploy.inference.report import read_report

    document = read_report(output)
    run_ids = {r["run_id"] for r in info["ranks"] if r["run_id"]}
    failed = [r for r in document.get("cases", []) if r.get("run_id") in run_ids and r.get("status") == "failed"]
    bad = [r for r in info["ranks"] if r["state"] != "done"]
    counts = document.get("counts", {})
    console.print(
        f"torchrun: {info['world_size']} ranks, {info['world_size'] - len(bad)} done; the folder's report: "
        f"{counts.get('ok', 0)} ok, {counts.get('failed', 0)} failed, {counts.get('skipped', 0)} skipped, "
        f"{len(document.get('needs_review', []))} need review: {report}"
    )
    for row in failed:
        console.print(f"[red]failed[/] {row['case']}: {row['error']}", highlight=False)
    for rank in bad:
        console.print(f"[red]rank {rank['rank']} {rank['state']}[/]: {rank['error']}", highlight=False)
    return len(failed) + len(bad)


def run_ray(
    input_path: Path,
    output: Path,
    model: Path,
    engine: dict[str, Any],
    options: SegmentOptions,
    *,
    console: Console,
    address: str,
    cpus: float,
) -> int:
    """Connect to Ray (`address`: auto, local or ray://...), run the folder as one task per scan,
    print the summary; returns the number of failed cases."""
    from ceds_deploy.cli.display import SegmentDisplay, print_summary
    from ceds_deploy.models import open_backend

    if engine["device"].startswith("cuda:"):
        raise typer.BadParameter("with --ray use --device cuda: Ray gives each task its GPU", param_hint="--device")
    try:
        import ray
    except ImportError:
        raise typer.BadParameter("Ray is not installed; pip install 'ceds-deploy[ray]'", param_hint="--ray") from None
    from ceds_deploy.inference.ray_runner import segment_folder_ray

    opener = functools.partial(open_backend, model, max_batch_size=options.batch_size, **engine)
    ray.init(address=address, log_to_driver=False)
    try:
        with SegmentDisplay(console) as progress:
            run, facts = segment_folder_ray(
                input_path,
                output,
                opener,
                options,
                gpu=engine["device"] == "cuda",
                cpus_per_task=cpus,
                progress=progress,
                run_info={"model": str(model), "ray_address": address},
            )
    finally:
        ray.shutdown()
    console.print(f"backend on the workers: [bold]{facts.description}[/] ({facts.why}); Ray at {address}")
    print_summary(console, run.rows, run.report_paths[0] if run.report_paths else output)
    return run.failed
