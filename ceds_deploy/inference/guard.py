"""Checks before a folder run writes anything: the output folder is not the input's, is writable
and has room; our own outputs are never taken for scans; the model runs one window; the folder
holds no results of another model."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import torch

from ceds_deploy.backends.base import Backend
from ceds_deploy.errors import BackendError, CedsError, OutputError, ScanError
from ceds_deploy.inference.outputs import (
    CONFIDENCE_SUFFIX,
    PREVIEW_SUFFIX,
    PROBABILITIES_SUFFIX,
    is_segment_output,
    output_paths,
)
from ceds_deploy.inference.report import REPORT_CSV, REPORT_JSON, ok_cases, read_report
from ceds_deploy.io import DicomSeries, ScanSource, case_id
from ceds_deploy.io.atomic import write_probe

PROBE_PATTERN = r"\.ceds-probe\.[0-9]+\.[0-9a-f]{32}"  # the write probe's name, for remove_leftovers
SPACE_FACTOR = 2.0  # outputs need at most about this many times the input scans' bytes


def check_locations(input_path: Path, output: Path) -> None:
    """Refuse an output that would destroy or mix with the input, before anything is created.

    Raises `ScanError` for a missing input, `OutputError` for an output that is a file, equal to,
    inside or containing the input folder, or (for one scan) a folder where an output would
    overwrite the scan itself or another file ceds segment did not write (`foreign_mask`), even
    with --overwrite: that folder holds the user's scans.
    """
    input_path, output = Path(input_path), Path(output)
    if not input_path.exists():
        raise ScanError(input_path, "does not exist")
    if output.exists() and not output.is_dir():
        raise OutputError(f"{output}: output is a file; give a folder for the masks and the report")
    source, target = input_path.resolve(), output.resolve()
    if source.is_dir():
        if target == source or source in target.parents or target in source.parents:
            relation = "is" if target == source else ("is inside" if source in target.parents else "contains")
            raise OutputError(
                f"{output}: output folder {relation} the input folder {input_path}; masks would "
                f"overwrite or mix with the scans; choose a separate folder"
            )
        return
    if target == source.parent and source in output_paths(target, case_id(source)).values():
        raise OutputError(
            f"{output}: writing here would overwrite the scan {input_path} with its mask; choose another output folder"
        )
    if target == source.parent and (other := foreign_mask(target, case_id(source), ok_cases(target))):
        raise OutputError(
            f"{output}: writing here would overwrite {other.name}, which ceds segment did not write, with the "
            f"mask of {input_path.name}; choose another output folder"
        )


def foreign_mask(output: Path, case: str, recorded: set[str]) -> Path | None:
    """The case's mask path in `output` when a file is there that `ceds segment` did not write (a
    scan, say): its header does not say so, and the folder's report (`recorded`) has no row of the
    case. None when no file is there or it is ours."""
    mask = output_paths(output, case)["mask"]
    if not mask.is_file() or case in recorded or is_segment_output(mask):
        return None
    return mask


def own_output_reason(path: ScanSource) -> str | None:
    """Why `path` (an entry of an input folder) is one of our own outputs, not a scan; None otherwise."""
    name = Path(path).name
    if name.endswith(CONFIDENCE_SUFFIX) or name.endswith(PROBABILITIES_SUFFIX):
        return "an output of ceds segment (confidence map or probabilities), not a scan"
    if name.endswith(PREVIEW_SUFFIX):
        return "a preview written by ceds segment"
    if name in (REPORT_CSV, REPORT_JSON):
        return "a report written by ceds segment"
    return None


def input_bytes(scans: list[ScanSource]) -> int:
    """Bytes on disk of the scans (a DICOM folder or series: its files)."""
    total = 0
    for scan in scans:
        if isinstance(scan, DicomSeries):
            files = list(scan.files)
        elif scan.is_dir():
            files = [p for p in scan.iterdir() if p.is_file()]
        else:
            files = [scan]
        for file in files:
            try:
                total += file.stat().st_size
            except OSError:
                continue
    return total


def probe_output(output: Path, needed_bytes: int) -> None:
    """Write and remove a small file in `output`, then compare its free space with `needed_bytes`.
    Raises `OutputError` for a folder that cannot be written (read-only, permissions) or is too full."""
    try:
        write_probe(Path(output) / f".ceds-probe.{os.getpid()}.{uuid.uuid4().hex}")
    except OSError as err:
        raise OutputError(f"{output}: cannot write to the output folder: {err.strerror or err}") from None
    free = shutil.disk_usage(output).free
    if free < needed_bytes:
        raise OutputError(
            f"{output}: {free / 1e9:.2f} GB free, the outputs need about {needed_bytes / 1e9:.2f} GB "
            f"({SPACE_FACTOR:g}x the input scans); free some space or choose another folder"
        )


def check_backend_outputs(backend: Backend, batch: int = 1) -> None:
    """Run a blank batch of `batch` windows through an active backend, so a model with wrongly shaped
    outputs (or one that cannot run at all) is refused before any case: `BackendError` naming the
    artifact. At the run's own batch shape it is also the warm-up (first-call costs land here)."""
    window = torch.zeros((batch, 1, *backend.spec.roi_size), dtype=torch.float32)
    try:
        out = backend(window)
    except CedsError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure of the model is reported as the backend's
        raise BackendError(
            f"{backend.artifact or backend.name}: the model fails on one blank window: "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        ) from None
    if out.seg_logits.shape[1] != backend.spec.num_classes:
        raise BackendError(
            f"{backend.artifact or backend.name}: the model returns {out.seg_logits.shape[1]} "
            f"classes, its spec names {backend.spec.num_classes}"
        )


def model_digest(backend: Backend) -> str:
    """SHA-256 of the backend's model file (its spec's source digest for an in-memory network)."""
    return backend.artifact_digest() or backend.spec.source_sha256


def check_same_model(output: Path, model: str, overwrite: bool) -> None:
    """Refuse (`OutputError`) a folder whose report holds ok rows of another model, unless `overwrite`."""
    cases = read_report(output).get("cases", [])
    others = sorted(
        {
            str(r.get("model"))
            for r in cases
            if isinstance(r, dict) and r.get("status") == "ok" and r.get("model") and r.get("model") != model
        }
    )
    if others and not overwrite:
        raise OutputError(
            f"{output}: holds results of another model (sha256 {others[0][:12]}...; this one is "
            f"{model[:12]}...); use --overwrite to redo the cases with this model, or choose "
            f"another output folder"
        )
