"""ONNX -> TensorRT engine with the TensorRT 10 Python API, plus its sidecar and timing cache.

builder -> network (explicit batch, the only mode in TensorRT 10) -> ONNX parser -> builder
config (FP16, workspace limit, one optimisation profile over the batch axis at the spec's ROI,
a timing cache loaded from and saved to a file) -> build_serialized_network. After the build
the engine is compared with ONNX Runtime; if FP16 fails that check, the engine is rebuilt once
with the entropy and confidence head pinned to FP32 (precision constraints), then either passes
or is deleted.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from ceds_deploy.errors import ArtifactError, BackendUnavailableError
from ceds_deploy.export.engine_cache import BatchProfile, RuntimeInfo, make_sidecar, sidecar_path, write_sidecar
from ceds_deploy.spec import ModelSpec

INPUT_NAME = "image"
HEAD_OUTPUT = "seg_logits"  # every layer downstream of it (entropy, confidence head) may stay fp32
INSTALL_HINT = "pip install 'ceds-deploy[tensorrt]' on a machine with an NVIDIA GPU; on Jetson it comes with JetPack"
_log = logging.getLogger("ceds_deploy.tensorrt")


@dataclass(frozen=True)
class BuildOptions:
    fp16: bool = False
    batch: BatchProfile = BatchProfile(1, 4, 8)
    workspace_gb: float = 4.0
    timing_cache: Path | None = None
    fp32_head: bool = False  # pin the entropy and confidence head to fp32 (only matters with fp16)

    def __post_init__(self) -> None:
        if not self.workspace_gb > 0:
            raise ValueError(f"workspace must be > 0 GB, got {self.workspace_gb}")


@dataclass
class BuildResult:
    engine: Path
    sidecar: dict
    seconds: float
    timing_cache: Path | None
    timing_cache_loaded_bytes: int
    fp32_layers: int
    parity: object | None = field(default=None)  # ParityReport


def require_tensorrt(device: str = "cuda"):
    """The `tensorrt` module, or one `BackendUnavailableError` line naming everything missing."""
    if not str(device).startswith("cuda"):
        raise BackendUnavailableError(f"TensorRT runs on a CUDA GPU; use --device cuda (got {device!r})")
    missing = []
    trt = None
    try:
        import tensorrt as trt
    except ImportError:
        missing.append(f"the tensorrt package ({INSTALL_HINT})")
    if trt is not None and int(trt.__version__.split(".")[0]) < 10:
        missing.append(f"TensorRT 10 or later (found {trt.__version__}; {INSTALL_HINT})")
    import torch

    if not torch.cuda.is_available():
        missing.append("a CUDA GPU (torch.cuda.is_available() is False: no GPU, no driver, or a CPU-only PyTorch)")
    if missing:
        raise BackendUnavailableError("TensorRT cannot run here: missing " + " and ".join(missing))
    return trt


def runtime_info(trt, device: str = "cuda") -> RuntimeInfo:
    import torch

    index = torch.device(device).index
    index = torch.cuda.current_device() if index is None else index
    major, minor = torch.cuda.get_device_capability(index)
    return RuntimeInfo(trt.__version__, torch.cuda.get_device_name(index), f"{major}.{minor}")


def make_logger(trt):
    """A TensorRT logger that forwards to Python logging and remembers the last error."""

    class _Logger(trt.ILogger):
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


def keep_head_fp32(trt, network) -> int:
    """Pin every layer downstream of `seg_logits` (softmax/log entropy, CBAM, confidence output)
    to fp32; decoder 2 and the encoder stay fp16. Returns the number of layers pinned."""
    tainted = {HEAD_OUTPUT}
    pinned = 0
    for i in range(network.num_layers):  # the parser adds layers in topological order
        layer = network.get_layer(i)
        inputs = [layer.get_input(j) for j in range(layer.num_inputs)]
        if not any(t is not None and t.name in tainted for t in inputs):
            continue
        outputs = [layer.get_output(j) for j in range(layer.num_outputs)]
        tainted.update(t.name for t in outputs)
        if all(t.dtype == trt.float32 for t in outputs):  # shape and index tensors keep their type
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)
            pinned += 1
    return pinned


def _timing_cache(trt, config, path: Path | None) -> int:
    """Attach a timing cache (from `path` if it exists); returns the bytes loaded."""
    data = Path(path).read_bytes() if path is not None and Path(path).is_file() else b""
    try:
        cache = config.create_timing_cache(data)
        attached = cache is not None and config.set_timing_cache(cache, False)  # False: no mismatch allowed
    except (RuntimeError, TypeError, ValueError):
        attached = False
    if not attached:
        # A cache from another TensorRT version or GPU is not an error, just not useful.
        _log.warning("ignoring timing cache %s (made by another TensorRT version or GPU?)", path)
        data = b""
        config.set_timing_cache(config.create_timing_cache(b""), False)
    return len(data)


def build_engine(onnx_path: Path, engine_path: Path, options: BuildOptions = BuildOptions(), *,
                 device: str = "cuda", spec: ModelSpec | None = None) -> BuildResult:
    """Build `engine_path` (and its sidecar) from `onnx_path`; both written atomically."""
    trt = require_tensorrt(device)
    import torch

    from ceds_deploy.artifacts import read_spec
    from ceds_deploy.checkpoint import sha256_of
    from ceds_deploy.io import write_atomic_bytes

    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    spec = spec or read_spec(onnx_path)
    runtime = runtime_info(trt, device)
    logger = make_logger(trt)
    with torch.cuda.device(torch.device(device)):
        builder = trt.Builder(logger)
        network = builder.create_network(0)  # explicit batch is the default (and only) mode in TRT 10
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise ArtifactError(f"{onnx_path}: TensorRT's ONNX parser rejected it: "
                                f"{errors[0] if errors else logger.last_error}".splitlines()[0])
        if network.num_inputs != 1 or network.get_input(0).name != INPUT_NAME:
            raise ArtifactError(f"{onnx_path}: expected one input named {INPUT_NAME!r}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gb * (1 << 30)))
        fp32_layers = 0
        if options.fp16:
            config.set_flag(trt.BuilderFlag.FP16)
            if options.fp32_head:
                fp32_layers = keep_head_fp32(trt, network)
                config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        shapes = options.batch.shapes(spec.roi_size)
        profile = builder.create_optimization_profile()
        profile.set_shape(INPUT_NAME, shapes["min"], shapes["opt"], shapes["max"])
        config.add_optimization_profile(profile)
        loaded = _timing_cache(trt, config, options.timing_cache)
        start = time.perf_counter()
        serialized = builder.build_serialized_network(network, config)
        seconds = time.perf_counter() - start
        if serialized is None:
            raise ArtifactError(f"{onnx_path}: TensorRT could not build an engine: "
                                f"{logger.last_error or 'see the TensorRT messages above'}".splitlines()[0])
        if options.timing_cache is not None:
            write_atomic_bytes(Path(options.timing_cache), bytes(config.get_timing_cache().serialize()))
    write_atomic_bytes(engine_path, bytes(serialized))
    precision = "fp16" if options.fp16 else "fp32"
    sidecar = make_sidecar(spec=spec.replace(precision=precision), runtime=runtime, onnx_path=onnx_path,
                           onnx_sha256=sha256_of(onnx_path), profile=options.batch, precision=precision,
                           fp32_layers=fp32_layers, build_seconds=seconds)
    write_sidecar(engine_path, sidecar)
    return BuildResult(engine_path, sidecar, seconds, options.timing_cache, loaded, fp32_layers)


def build_checked_engine(onnx_path: Path, engine_path: Path, options: BuildOptions = BuildOptions(), *,
                         device: str = "cuda", validate: bool = True, log=None) -> BuildResult:
    """Build, then compare with ONNX Runtime on random and phantom windows; an fp16 engine that
    fails is rebuilt once with the head pinned to fp32. A failing engine is deleted."""
    from ceds_deploy.artifacts import read_spec
    from ceds_deploy.export import parity

    say = log or (lambda message: None)
    spec = read_spec(onnx_path)
    result = build_engine(onnx_path, engine_path, options, device=device, spec=spec)
    say(f"built {engine_path} in {result.seconds:.1f} s ({result.sidecar['precision']}, batch {options.batch}, "
        f"timing cache {'hit: ' + str(result.timing_cache_loaded_bytes) + ' bytes' if result.timing_cache_loaded_bytes else 'new'})")
    if not validate:
        return result
    windows = parity.parity_windows(spec, larger=False)  # the engine's spatial shape is the ROI
    report = parity.check_engine_against_onnx(engine_path, onnx_path, spec, windows, device=device)
    say(report.summary())
    if not report.passed and options.fp16 and not options.fp32_head:
        say("fp16 parity failed; rebuilding with the entropy and confidence head pinned to fp32")
        result = build_engine(onnx_path, engine_path, replace(options, fp32_head=True), device=device, spec=spec)
        report = parity.check_engine_against_onnx(engine_path, onnx_path, spec, windows, device=device)
        say(report.summary())
    result.parity = report
    parity.require_parity(report, engine_path, delete=[engine_path, sidecar_path(engine_path)])
    result.sidecar["parity"] = report.to_dict()
    write_sidecar(engine_path, result.sidecar)
    return result
