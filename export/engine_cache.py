"""Engine sidecars and the engine cache.

A TensorRT engine only runs on the TensorRT version and GPU it was built with. Every engine has
a sidecar `model.engine.json` saying what it was built from and for; an engine whose sidecar does
not match this machine is refused with the command that rebuilds it. `ceds segment --model
model.onnx --backend tensorrt` builds engines on first use into a cache folder keyed by
(ONNX sha256, TensorRT version, GPU, precision, profile): copy the ONNX file to a Jetson, and the
first run builds the engine there.

Nothing here imports TensorRT: the machine's identity arrives as a `RuntimeInfo`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from ceds_deploy.errors import ArtifactError, ConfigError
from ceds_deploy.spec import ModelSpec

SIDECAR_FORMAT = 1
ENGINE_NAME = "model.engine"


@dataclass(frozen=True)
class RuntimeInfo:
    """What an engine is bound to: the TensorRT version and the GPU."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "9.0"

    def describe(self) -> str:
        return f"TensorRT {self.tensorrt_version} on {self.gpu_name} (compute capability {self.compute_capability})"


@dataclass(frozen=True)
class BatchProfile:
    """An optimisation profile's batch sizes (min:opt:max); the spatial shape is the spec's ROI."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ConfigError(f"batch profile needs 1 <= min <= opt <= max, got {self}")

    @classmethod
    def parse(cls, text: str) -> "BatchProfile":
        """'1:4:8' -> BatchProfile(1, 4, 8); a single number N means 1:N:N."""
        try:
            parts = [int(p) for p in str(text).split(":")]
        except ValueError:
            parts = []
        if len(parts) == 1:
            parts = [1, parts[0], parts[0]]
        if len(parts) != 3:
            raise ConfigError(f"batch must look like MIN:OPT:MAX (for example 1:4:8), got {text!r}")
        return cls(*parts)

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"

    def shapes(self, roi: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        """Input shapes of the profile for `image` (batch, 1, *roi)."""
        return {name: (n, 1, *roi) for name, n in (("min", self.min), ("opt", self.opt), ("max", self.max))}


@dataclass(frozen=True)
class EngineKey:
    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str  # "fp16" or "fp32"
    profile: str  # "1:4:8"
    roi: tuple[int, ...]

    def digest(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:20]


# ------------------------------------------------------------------ sidecars


def sidecar_path(engine: Path) -> Path:
    from ceds_deploy.artifacts import engine_sidecar

    return engine_sidecar(Path(engine))


def make_sidecar(*, spec: ModelSpec, runtime: RuntimeInfo, onnx_path: Path, onnx_sha256: str, profile: BatchProfile,
                 precision: str, fp32_layers: int, build_seconds: float) -> dict:
    return {
        "format": SIDECAR_FORMAT,
        "spec": spec.to_dict(),
        "tensorrt_version": runtime.tensorrt_version,
        "gpu": {"name": runtime.gpu_name, "compute_capability": runtime.compute_capability},
        "onnx": {"file": Path(onnx_path).name, "sha256": onnx_sha256},
        "profile": {"input": "image", "batch": str(profile), **{k: list(v) for k, v in profile.shapes(spec.roi_size).items()}},
        "precision": precision,  # what the builder was allowed: fp16 or fp32
        "fp32_layers": fp32_layers,  # layers pinned to fp32 by precision constraints (0: none)
        "build_seconds": round(build_seconds, 2),
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def write_sidecar(engine: Path, sidecar: dict) -> Path:
    from ceds_deploy.io import write_atomic_text

    path = sidecar_path(engine)
    write_atomic_text(path, json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    return path


def read_sidecar(engine: Path) -> dict:
    path = sidecar_path(engine)
    if not path.is_file():
        raise ArtifactError(f"{engine}: engine has no sidecar {path.name}; build engines with "
                            "`ceds export model.onnx --tensorrt model.engine`")
    try:
        data = json.loads(path.read_text())
        ModelSpec.from_dict(data["spec"])
        BatchProfile.parse(data["profile"]["batch"])
        built_for(data)
        _ = (data["onnx"]["sha256"], data["precision"])  # keys every reader needs
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ConfigError) as err:
        raise ArtifactError(f"{path}: unreadable engine sidecar ({type(err).__name__}: {err})") from None
    if int(data.get("format", 0)) > SIDECAR_FORMAT:
        raise ArtifactError(f"{path}: sidecar format {data['format']} is newer than this install reads")
    return data


def rebuild_hint(engine: Path, sidecar: dict) -> str:
    onnx_name = sidecar.get("onnx", {}).get("file") or "model.onnx"
    flags = " --fp16" if sidecar.get("precision") == "fp16" else ""
    flags += " --fp32-head" if sidecar.get("fp32_layers") else ""
    return (f"rebuild it on this machine: `ceds export {onnx_name} --tensorrt {Path(engine).name}{flags} "
            f"--batch {sidecar['profile']['batch']}`, or give `ceds segment` the .onnx file with "
            "--backend tensorrt to build into the engine cache")


def built_for(sidecar: dict) -> RuntimeInfo:
    return RuntimeInfo(sidecar["tensorrt_version"], sidecar["gpu"]["name"], sidecar["gpu"]["compute_capability"])


def check_sidecar(engine: Path, sidecar: dict, runtime: RuntimeInfo) -> None:
    """Refuse an engine built for another TensorRT version or GPU."""
    built = built_for(sidecar)
    if built != runtime:
        raise ArtifactError(f"{engine}: built for {built.describe()}, but this machine has {runtime.describe()}; "
                            f"TensorRT engines only run where they were built: {rebuild_hint(engine, sidecar)}")


# ------------------------------------------------------------------ the cache


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/ceds-deploy (~/.cache/ceds-deploy)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ceds-deploy"


def default_timing_cache(cache_dir: Path | None, runtime: RuntimeInfo) -> Path:
    """One timing cache per TensorRT version and GPU, shared by every model built here."""
    slug = "".join(c if c.isalnum() else "-" for c in runtime.gpu_name).strip("-").lower()
    return Path(cache_dir or default_cache_dir()) / "timing" / \
        f"trt{runtime.tensorrt_version}-{slug}-sm{runtime.compute_capability}.cache"


def engine_key(onnx_sha256: str, spec: ModelSpec, runtime: RuntimeInfo, precision: str,
               profile: BatchProfile) -> EngineKey:
    return EngineKey(onnx_sha256, runtime.tensorrt_version, runtime.gpu_name, runtime.compute_capability,
                     precision, str(profile), tuple(spec.roi_size))


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
    return sidecar["onnx"]["sha256"] == key.onnx_sha256 and sidecar["precision"] == key.precision \
        and sidecar["profile"]["batch"] == key.profile


def get_or_build(onnx_path: Path, spec: ModelSpec, runtime: RuntimeInfo, *, profile: BatchProfile,
                 fp16: bool = True, cache_dir: Path | None = None, workspace_gb: float = 4.0,
                 device: str = "cuda", validate: bool = True, log=None) -> Path:
    """The cached engine for this ONNX file, TensorRT version, GPU, precision and profile;
    built (and checked against ONNX Runtime) on first use."""
    from ceds_deploy.checkpoint import sha256_of

    onnx_path = Path(onnx_path)
    precision = "fp16" if fp16 else "fp32"
    key = engine_key(sha256_of(onnx_path), spec, runtime, precision, profile)
    engine = cache_entry(cache_dir, onnx_path, key)
    if lookup(engine, key, runtime):
        return engine
    from ceds_deploy.export.tensorrt_build import BuildOptions, build_checked_engine

    options = BuildOptions(fp16=fp16, batch=profile, workspace_gb=workspace_gb,
                           timing_cache=default_timing_cache(cache_dir, runtime))
    build_checked_engine(onnx_path, engine, options, device=device, validate=validate, log=log)
    return engine
