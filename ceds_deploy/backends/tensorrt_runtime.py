"""What running a TensorRT engine needs, without any build-time (export) code.

- `require_tensorrt`: the `tensorrt` module of a supported version on a CUDA machine, or one
  `BackendUnavailableError` line naming everything missing;
- `make_logger`, `runtime_info` / `RuntimeInfo`: the machine an engine is bound to;
- `BatchProfile`: an optimisation profile's batch sizes;
- engine sidecars: `sidecar_path`, `read_sidecar`, `check_sidecar`, `rebuild_hint`.

Supported TensorRT: 10.x from 10.0.1 (the first GA 10.x on PyPI; every call we make, and
`NetworkDefinitionCreationFlag.STRONGLY_TYPED`, is in its Python bindings) and 11.x (strongly
typed only; STRONGLY_TYPED is kept there and ignored). `tests/test_tensorrt_api.py` checks every
TensorRT attribute this package uses against both majors. Nothing here imports TensorRT at
module level.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ceds_deploy.errors import ArtifactError, BackendUnavailableError, ConfigError
from ceds_deploy.spec import ModelSpec

INSTALL_HINT = "pip install 'ceds-deploy[tensorrt]' on a machine with an NVIDIA GPU; on Jetson it comes with JetPack"
MIN_TENSORRT = (10, 0, 1)
SUPPORTED_MAJORS = (10, 11)
SUPPORTED_RANGE = "10.0.1 to 11.x"
SIDECAR_FORMAT = 2  # 2: strongly typed engines, precision read from the ONNX file's spec
_log = logging.getLogger("ceds_deploy.tensorrt")


# ------------------------------------------------------------------ TensorRT itself


def parse_version(text: str) -> tuple[int, ...]:
    """'10.3.0.26' -> (10, 3, 0, 26); '11.1.0rc1' -> (11, 1, 0); unreadable -> ()."""
    parts = []
    for piece in str(text).split("."):
        match = re.match(r"\d+", piece)
        if not match:
            break
        parts.append(int(match.group()))
        if match.end() != len(piece):
            break
    return tuple(parts)


def version_problem(version: str) -> str | None:
    """Why this TensorRT version is not supported, or None when it is."""
    parsed = parse_version(version)
    if not parsed or parsed[0] not in SUPPORTED_MAJORS or parsed < MIN_TENSORRT:
        return (
            f"TensorRT {SUPPORTED_RANGE} (found {version or 'an unknown version'}; "
            f"pip install 'tensorrt>=10.0.1,<12', or JetPack 6.1 or later)"
        )
    return None


def require_tensorrt(device: str = "cuda"):
    """The `tensorrt` module, or one `BackendUnavailableError` line naming everything missing."""
    if not str(device).startswith("cuda"):
        raise BackendUnavailableError(f"TensorRT runs on a CUDA GPU; use --device cuda (got {device!r})")
    missing = []
    trt: Any = None
    try:
        import tensorrt

        trt = tensorrt
    except ImportError:
        missing.append(f"the tensorrt package ({INSTALL_HINT})")
    if trt is not None:
        problem = version_problem(getattr(trt, "__version__", ""))
        if problem:
            missing.append(problem)
    import torch

    if not torch.cuda.is_available():
        missing.append("a CUDA GPU (torch.cuda.is_available() is False: no GPU, no driver, or a CPU-only PyTorch)")
    if missing:
        raise BackendUnavailableError("TensorRT cannot run here: missing " + " and ".join(missing))
    return trt


@dataclass(frozen=True)
class RuntimeInfo:
    """What an engine is bound to: the TensorRT version and the GPU."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "9.0"

    def describe(self) -> str:
        return f"TensorRT {self.tensorrt_version} on {self.gpu_name} (compute capability {self.compute_capability})"


def runtime_info(trt, device: str = "cuda") -> RuntimeInfo:
    import torch

    index = torch.device(device).index
    index = torch.cuda.current_device() if index is None else index
    major, minor = torch.cuda.get_device_capability(index)
    return RuntimeInfo(trt.__version__, torch.cuda.get_device_name(index), f"{major}.{minor}")


def make_logger(trt: Any) -> Any:
    """A TensorRT logger that forwards to Python logging and remembers the last error."""

    class _Logger(trt.ILogger):  # a class of the tensorrt module passed in
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.last_error = ""

        def log(self, severity, msg) -> None:
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.last_error = str(msg)
                _log.error("TensorRT: %s", msg)
            elif severity == trt.ILogger.Severity.WARNING:
                _log.warning("TensorRT: %s", msg)
            else:
                _log.debug("TensorRT: %s", msg)

    return _Logger()


# ------------------------------------------------------------------ profiles


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
    def parse(cls, text: str) -> BatchProfile:
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


# ------------------------------------------------------------------ sidecars


def sidecar_path(engine: Path) -> Path:
    from ceds_deploy.artifacts import engine_sidecar

    return engine_sidecar(Path(engine))


def built_for(sidecar: dict) -> RuntimeInfo:
    return RuntimeInfo(sidecar["tensorrt_version"], sidecar["gpu"]["name"], sidecar["gpu"]["compute_capability"])


def read_sidecar(engine: Path) -> dict:
    path = sidecar_path(engine)
    if not path.is_file():
        raise ArtifactError(
            f"{engine}: engine has no sidecar {path.name}; build engines with "
            "`ceds export model.onnx --tensorrt model.engine`"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        ModelSpec.from_dict(data["spec"])
        BatchProfile.parse(data["profile"]["batch"])
        built_for(data)
        _ = (data["onnx"]["sha256"], data["precision"])  # keys every reader needs
    except KeyError as err:
        raise ArtifactError(f"{path}: unreadable engine sidecar (no {err.args[0]!r} entry)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, ConfigError) as err:
        raise ArtifactError(f"{path}: unreadable engine sidecar ({type(err).__name__}: {err})") from None
    if int(data.get("format", 0)) > SIDECAR_FORMAT:
        raise ArtifactError(f"{path}: sidecar format {data['format']} is newer than this install reads")
    return data


def rebuild_hint(engine: Path, sidecar: dict) -> str:
    onnx_name = sidecar.get("onnx", {}).get("file") or "model.onnx"
    return (
        f"rebuild it on this machine: `ceds export {onnx_name} --tensorrt {Path(engine).name} "
        f"--batch {sidecar['profile']['batch']}` (the engine takes the ONNX file's precision, "
        f"{sidecar.get('precision', 'fp32')}), or give `ceds segment` the .onnx file with "
        "--backend tensorrt to build into the engine cache"
    )


def check_sidecar(engine: Path, sidecar: dict, runtime: RuntimeInfo) -> None:
    """Refuse an engine built for another TensorRT version or GPU."""
    built = built_for(sidecar)
    if built != runtime:
        raise ArtifactError(
            f"{engine}: built for {built.describe()}, but this machine has {runtime.describe()}; "
            f"TensorRT engines only run where they were built: {rebuild_hint(engine, sidecar)}"
        )
