"""What kind of model artifact a path is, and the `ModelSpec` it carries."""

from __future__ import annotations

from pathlib import Path

from ceds_deploy.errors import ArtifactError
from ceds_deploy.spec import ENGINE_SIDECAR_SUFFIX, ONNX_SPEC_KEY, ModelSpec

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")
ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def artifact_kind(path: Path) -> str:
    """'checkpoint', 'onnx' or 'engine', from the file suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if path.is_dir():
        raise ArtifactError(f"{path}: is a folder; give the model file (.pt, .onnx or .engine)")
    if not path.is_file():
        raise ArtifactError(f"{path}: model file does not exist")
    if path.stat().st_size == 0:
        raise ArtifactError(f"{path}: file is empty (0 bytes)")
    if suffix in CHECKPOINT_SUFFIXES:
        return "checkpoint"
    if suffix in ONNX_SUFFIXES:
        return "onnx"
    if suffix in ENGINE_SUFFIXES:
        return "engine"
    raise ArtifactError(
        f"{path}: unknown model file type {suffix!r}; expected a checkpoint "
        f"({', '.join(CHECKPOINT_SUFFIXES)}), an ONNX file (.onnx) or a TensorRT engine "
        f"({', '.join(ENGINE_SUFFIXES)})"
    )


def engine_sidecar(path: Path) -> Path:
    return Path(str(path) + ENGINE_SIDECAR_SUFFIX)


def read_onnx_metadata(path: Path) -> dict[str, str]:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # onnx raises DecodeError and friends for corrupt files
        raise ArtifactError(
            f"{path}: not a readable ONNX model (corrupt or truncated?): "
            f"{str(err).splitlines()[0] if str(err) else type(err).__name__}"
        ) from None
    return {p.key: p.value for p in model.metadata_props}


def read_spec(path: Path) -> ModelSpec:
    """The `ModelSpec` an artifact carries; an `ArtifactError` when it has none."""
    path = Path(path)
    kind = artifact_kind(path)
    if kind == "checkpoint":
        from ceds_deploy.checkpoint import checkpoint_spec, load_checkpoint

        return checkpoint_spec(load_checkpoint(path, mmap=True), path)  # mapped: tensors not read
    if kind == "onnx":
        meta = read_onnx_metadata(path)
        if ONNX_SPEC_KEY not in meta:
            raise ArtifactError(f"{path}: ONNX file has no {ONNX_SPEC_KEY!r} metadata; export it with `ceds export`")
        try:
            return ModelSpec.from_json(meta[ONNX_SPEC_KEY])
        except ArtifactError as err:
            raise ArtifactError(f"{path}: {err}") from None
    sidecar = engine_sidecar(path)
    if not sidecar.is_file():
        raise ArtifactError(f"{path}: engine has no sidecar {sidecar.name}; build it with `ceds export --tensorrt`")
    import json

    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
        return ModelSpec.from_dict(data["spec"])
    except ArtifactError as err:
        raise ArtifactError(f"{sidecar}: {err}") from None
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ArtifactError(f"{sidecar}: unreadable engine sidecar: {err}") from None
