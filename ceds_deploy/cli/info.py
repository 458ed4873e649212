"""`ceds info`: what a checkpoint, ONNX file or TensorRT engine is, from the artifact alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def info(
    artifact: Annotated[Path, typer.Argument(help="A checkpoint (.pt), an ONNX file or a TensorRT engine.")],
) -> None:
    """Print the model spec an artifact carries and what it was made from and with."""
    from rich.console import Console

    from ceds_deploy.artifacts import artifact_kind, read_spec
    from ceds_deploy.checkpoint import sha256_of

    kind = artifact_kind(artifact)
    spec = read_spec(artifact)
    console = Console(highlight=False)

    spec_table = _table(f"model spec of {artifact.name}")
    for key, value in spec.to_dict().items():
        spec_table.add_row(key, _text(value))
    details = _table(kind)
    details.add_row("path", str(artifact))
    details.add_row("size", f"{artifact.stat().st_size / 1e6:.2f} MB")
    details.add_row("sha256", sha256_of(artifact))
    rows = {"checkpoint": _checkpoint_rows, "onnx": _onnx_rows, "engine": _engine_rows}[kind](artifact)
    for key, value in rows:
        details.add_row(key, _text(value))
    console.print(spec_table)
    console.print(details)


def _table(title: str):
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")  # digests and JSON wrap instead of being cut off
    return table


def _text(value) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, tuple):
        return ", ".join(map(str, value))
    return str(value)


def _checkpoint_rows(path: Path) -> list[tuple[str, object]]:
    from ceds_deploy.checkpoint import load_checkpoint

    payload = load_checkpoint(path)
    rows: list[tuple[str, object]] = [
        ("format", payload.get("format")),
        ("weights", ", ".join(k for k in ("teacher", "student") if k in payload)),
        ("net_config", payload.get("net_config")),
    ]
    for key, value in payload.items():
        if key not in ("format", "kind", "spec", "net_config") and isinstance(value, (int, float, str, bool)):
            rows.append((key, value))
    return rows


def _dims(value_info) -> str:
    dims = [d.dim_param or str(d.dim_value) for d in value_info.type.tensor_type.shape.dim]
    return f"{value_info.name} ({', '.join(dims)})"


def _onnx_rows(path: Path) -> list[tuple[str, object]]:
    import onnx

    from ceds_deploy.export.onnx_export import EXPORT_META_KEY, VALIDATION_META_KEY
    from ceds_deploy.export.operators import node_histogram
    from ceds_deploy.spec import ONNX_SPEC_KEY

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # onnx raises DecodeError and friends for corrupt files
        from ceds_deploy.errors import ArtifactError

        raise ArtifactError(f"{path}: not a readable ONNX model: {type(err).__name__}") from None
    meta = {p.key: p.value for p in model.metadata_props}
    histogram = node_histogram(model)
    rows: list[tuple[str, object]] = [
        ("opset", ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in model.opset_import)),
        ("ir_version", model.ir_version),
        ("producer", f"{model.producer_name} {model.producer_version}".strip()),
        ("inputs", "; ".join(_dims(i) for i in model.graph.input)),
        ("outputs", "; ".join(_dims(o) for o in model.graph.output)),
        ("nodes", f"{sum(histogram.values())}: " + ", ".join(f"{op} {n}" for op, n in histogram.items())),
    ]
    if EXPORT_META_KEY in meta:
        rows.append(("export", json.loads(meta[EXPORT_META_KEY])))
    if VALIDATION_META_KEY in meta:
        report = json.loads(meta[VALIDATION_META_KEY])
        rows.append(
            (
                "validation",
                f"{report.get('label')}: {'passed' if report.get('passed') else 'FAILED'}, "
                f"max |diff| probabilities {report.get('max_prob_diff', float('nan')):.2e} on "
                f"{report.get('windows')} windows",
            )
        )
    rows.extend(
        (key, value) for key, value in meta.items() if key not in (ONNX_SPEC_KEY, EXPORT_META_KEY, VALIDATION_META_KEY)
    )
    return rows


def _engine_rows(path: Path) -> list[tuple[str, object]]:
    from ceds_deploy.export.engine_cache import read_sidecar

    sidecar = read_sidecar(path)
    rows: list[tuple[str, object]] = [(key, value) for key, value in sidecar.items() if key != "spec"]
    rows.append(("runs here", _engine_runs_here(path, sidecar)))
    return rows


def _engine_runs_here(path: Path, sidecar: dict) -> str:
    from ceds_deploy.errors import ArtifactError, BackendUnavailableError
    from ceds_deploy.export.engine_cache import check_sidecar
    from ceds_deploy.export.tensorrt_build import require_tensorrt, runtime_info

    try:
        runtime = runtime_info(require_tensorrt("cuda"), "cuda")
        check_sidecar(path, sidecar, runtime)
    except BackendUnavailableError as err:
        return f"cannot tell: {err}"
    except ArtifactError as err:
        return f"no: {err}"
    return f"yes ({runtime.describe()})"
