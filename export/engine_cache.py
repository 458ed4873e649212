"""Engine sidecars and the engine cache.

A TensorRT engine only runs on the TensorRT version and GPU it was built with. Every engine has
a sidecar `model.engine.json` saying what it was built from and for; an engine whose sidecar does
not match this machine is refused with the command that rebuilds it. `ceds segment --model
model.onnx --backend tensorrt` builds engines on first use into a cache folder keyed by
(ONNX sha256, TensorRT version, GPU, the ONNX file's precision, profile): copy the ONNX file to a Jetson, and the
first run builds the engine there.

Nothing here imports TensorRT: the machine's identity arrives as a `RuntimeInfo`. Reading and
checking a sidecar is runtime work and lives in `ceds_deploy.backends.tensorrt_runtime`; writing
one and the cache are build-time work and live here.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

# What running an engine needs lives with the runtime backend; re-exported here for the build side.
from ceds_deploy.backends.tensorrt_runtime import (  # noqa: F401
    SIDECAR_FORMAT,
    BatchProfile,
    RuntimeInfo,
    built_for,
    check_sidecar,
    read_sidecar,
    rebuild_hint,
    sidecar_path,
)
from ceds_deploy.errors import ArtifactError  # noqa: F401
from ceds_deploy.spec import ModelSpec

ENGINE_NAME = "model.engine"


@dataclass(frozen=True)
class EngineKey:
    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str  # the ONNX file's ("fp16" or "fp32"): a strongly typed engine runs the graph's types
    profile: str  # "1:4:8"
    roi: tuple[int, ...]

    def digest(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:20]


# ------------------------------------------------------------------ sidecars


def make_sidecar(
    *,
    spec: ModelSpec,
    runtime: RuntimeInfo,
    onnx_path: Path,
    onnx_sha256: str,
    profile: BatchProfile,
    build_seconds: float,
) -> dict:
    """The sidecar of a strongly typed engine: its precision is the ONNX file's (spec.precision)."""
    return {
        "format": SIDECAR_FORMAT,
        "spec": spec.to_dict(),
        "tensorrt_version": runtime.tensorrt_version,
        "gpu": {"name": runtime.gpu_name, "compute_capability": runtime.compute_capability},
        "onnx": {"file": Path(onnx_path).name, "sha256": onnx_sha256},
        "profile": {
            "input": "image",
            "batch": str(profile),
            **{k: list(v) for k, v in profile.shapes(spec.roi_size).items()},
        },
        "precision": spec.precision,  # read from the ONNX file's spec: the engine runs the graph's own types
        "strongly_typed": True,
        "build_seconds": round(build_seconds, 2),
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def write_sidecar(engine: Path, sidecar: dict) -> Path:
    from ceds_deploy.io import write_atomic_text

    path = sidecar_path(engine)
    write_atomic_text(path, json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    return path


# ------------------------------------------------------------------ the cache


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/ceds-deploy (~/.cache/ceds-deploy)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ceds-deploy"


def default_timing_cache(cache_dir: Path | None, runtime: RuntimeInfo) -> Path:
    """One timing cache per TensorRT version and GPU, shared by every model built here."""
    slug = "".join(c if c.isalnum() else "-" for c in runtime.gpu_name).strip("-").lower()
    return (
        Path(cache_dir or default_cache_dir())
        / "timing"
        / f"trt{runtime.tensorrt_version}-{slug}-sm{runtime.compute_capability}.cache"
    )


def engine_key(
    onnx_sha256: str, spec: ModelSpec, runtime: RuntimeInfo, precision: str, profile: BatchProfile
) -> EngineKey:
    return EngineKey(
        onnx_sha256,
        runtime.tensorrt_version,
        runtime.gpu_name,
        runtime.compute_capability,
        precision,
        str(profile),
        tuple(spec.roi_size),
    )


def cache_entry(cache_dir: Path | None, onnx_path: Path, key: EngineKey) -> Path:
    """Where the engine for `key` lives: <cache>/engines/<onnx stem>-<key digest>/model.engine."""
    return Path(cache_dir or default_cache_dir()) / "engines" / f"{Path(onnx_path).stem}-{key.digest()}" / ENGINE_NAME


def lookup(engine: Path, key: EngineKey, runtime: RuntimeInfo) -> bool:
    """True when `engine` exists with a sidecar matching `key` (a stale or foreign entry is rebuilt)."""
    if not Path(engine).is_file():
        return False
    try:
        sidecar = read_sidecar(engine)
        check_sidecar(engine, sidecar, runtime)
    except ArtifactError:
        return False
    return (
        sidecar["onnx"]["sha256"] == key.onnx_sha256
        and sidecar["precision"] == key.precision
        and sidecar["profile"]["batch"] == key.profile
        and bool(sidecar.get("strongly_typed"))
    )


def get_or_build(
    onnx_path: Path,
    spec: ModelSpec,
    runtime: RuntimeInfo,
    *,
    profile: BatchProfile,
    cache_dir: Path | None = None,
    workspace_gb: float = 4.0,
    device: str = "cuda",
    validate: bool = True,
    log=None,
) -> Path:
    """The cached engine for this ONNX file, TensorRT version, GPU, precision (the ONNX file's,
    `spec.precision`) and profile; built (and checked against ONNX Runtime) on first use."""
    from ceds_deploy.checkpoint import sha256_of

    onnx_path = Path(onnx_path)
    key = engine_key(sha256_of(onnx_path), spec, runtime, spec.precision, profile)
    engine = cache_entry(cache_dir, onnx_path, key)
    if lookup(engine, key, runtime):
        return engine
    from ceds_deploy.export.tensorrt_build import BuildOptions, build_checked_engine

    options = BuildOptions(
        batch=profile, workspace_gb=workspace_gb, timing_cache=default_timing_cache(cache_dir, runtime)
    )
    build_checked_engine(onnx_path, engine, options, device=device, validate=validate, log=log)
    return engine
