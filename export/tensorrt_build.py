"""ONNX -> strongly typed TensorRT engine (TensorRT 10.x and 11.x), plus its sidecar and timing cache.

builder -> network created with `NetworkDefinitionCreationFlag.STRONGLY_TYPED` -> ONNX parser ->
builder config (workspace limit, one optimisation profile over the batch axis at the spec's ROI,
a timing cache loaded from and saved to a file) -> build_serialized_network. A strongly typed
network takes every tensor's type from the ONNX file, so the engine runs exactly the graph's
precision: an fp32 ONNX gives an fp32 engine, an fp16 export (`ceds export --precision fp16`)
gives an fp16 engine with the file's fp32 islands. No precision flags, no per-layer precision:
TensorRT 11 removed that weakly typed API (BuilderFlag.FP16, OBEY_PRECISION_CONSTRAINTS,
ILayer.precision, set_output_type); on TensorRT 11 STRONGLY_TYPED is kept, ignored, always on.

After the build the engine is compared with ONNX Runtime running the same ONNX file; an engine
that fails is deleted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

# The runtime half (no build code) lives with the backend; re-exported for existing callers.
from ceds_deploy.backends.tensorrt_runtime import (  # noqa: F401
    INSTALL_HINT,
    BatchProfile,
    RuntimeInfo,
    make_logger,
    require_tensorrt,
    runtime_info,
)
from ceds_deploy.errors import ArtifactError, ConfigError
from ceds_deploy.export.engine_cache import make_sidecar, sidecar_path, write_sidecar
from ceds_deploy.spec import INPUT_NAME, OUTPUT_NAMES, ModelSpec

_log_name = "ceds_deploy.tensorrt"


@dataclass(frozen=True)
class BuildOptions:
    """How to build; the precision is not an option: it is the ONNX file's."""

    batch: BatchProfile = BatchProfile(1, 4, 8)
    workspace_gb: float = 4.0
    timing_cache: Path | None = None

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
    precision: str = "fp32"  # the ONNX file's
    parity: object | None = field(default=None)  # ParityReport


def refuse_fp16_flag() -> None:
    """`--fp16` (and `--fp32-head`) from before strongly typed engines: one line saying what to do now."""
    raise ConfigError(
        "--fp16 is gone: TensorRT engines now run the ONNX file's own precision (strongly typed; "
        "TensorRT 11 has no FP16 builder flag). Export an fp16 ONNX file with `ceds export "
        "CHECKPOINT --out model-fp16.onnx --precision fp16`, then `ceds export model-fp16.onnx "
        "--tensorrt model.engine`"
    )


def _timing_cache(trt, config, path: Path | None) -> int:
    """Attach a timing cache (from `path` if it exists); returns the bytes loaded."""
    import logging

    data = Path(path).read_bytes() if path is not None and Path(path).is_file() else b""
    try:
        cache = config.create_timing_cache(data)
        attached = cache is not None and config.set_timing_cache(cache, False)  # False: no mismatch allowed
    except (RuntimeError, TypeError, ValueError):
        attached = False
    if not attached:
        # A cache from another TensorRT version or GPU is not an error, just not useful.
        logging.getLogger(_log_name).warning(
            "ignoring timing cache %s (made by another TensorRT version or GPU?)", path
        )
        data = b""
        config.set_timing_cache(config.create_timing_cache(b""), False)
    return len(data)


def _check_io(trt, network, onnx_path: Path) -> None:
    """One fp32 input `image`, fp32 outputs `seg_logits` and `confidence` (an fp16 export keeps
    fp32 I/O, so callers never change)."""
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    outputs = [network.get_output(i) for i in range(network.num_outputs)]
    if [t.name for t in inputs] != [INPUT_NAME] or sorted(t.name for t in outputs) != sorted(OUTPUT_NAMES):
        raise ArtifactError(
            f"{onnx_path}: expected one input named {INPUT_NAME!r} and outputs {list(OUTPUT_NAMES)}, "
            f"got {[t.name for t in inputs]} and {[t.name for t in outputs]}"
        )
    wrong = [t.name for t in (*inputs, *outputs) if t.dtype != trt.float32]
    if wrong:
        raise ArtifactError(f"{onnx_path}: tensors {wrong} are not float32; ceds export writes fp32 inputs and outputs")


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    options: BuildOptions = BuildOptions(),
    *,
    device: str = "cuda",
    spec: ModelSpec | None = None,
) -> BuildResult:
    """Build `engine_path` (and its sidecar) from `onnx_path`, strongly typed; both written atomically."""
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
        # Explicit batch is the only mode since TensorRT 10; strongly typed: the ONNX file's types.
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise ArtifactError(
                f"{onnx_path}: TensorRT's ONNX parser rejected it: "
                f"{errors[0] if errors else logger.last_error}".splitlines()[0]
            )
        _check_io(trt, network, onnx_path)
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gb * (1 << 30)))
        shapes = options.batch.shapes(spec.roi_size)
        profile = builder.create_optimization_profile()
        profile.set_shape(INPUT_NAME, shapes["min"], shapes["opt"], shapes["max"])
        config.add_optimization_profile(profile)
        loaded = _timing_cache(trt, config, options.timing_cache)
        start = time.perf_counter()
        serialized = builder.build_serialized_network(network, config)
        seconds = time.perf_counter() - start
        if serialized is None:
            raise ArtifactError(
                f"{onnx_path}: TensorRT could not build an engine: "
                f"{logger.last_error or 'see the TensorRT messages above'}".splitlines()[0]
            )
        if options.timing_cache is not None:
            write_atomic_bytes(Path(options.timing_cache), bytes(config.get_timing_cache().serialize()))
    write_atomic_bytes(engine_path, bytes(serialized))
    sidecar = make_sidecar(
        spec=spec,
        runtime=runtime,
        onnx_path=onnx_path,
        onnx_sha256=sha256_of(onnx_path),
        profile=options.batch,
        build_seconds=seconds,
    )
    write_sidecar(engine_path, sidecar)
    return BuildResult(engine_path, sidecar, seconds, options.timing_cache, loaded, spec.precision)


def build_checked_engine(
    onnx_path: Path,
    engine_path: Path,
    options: BuildOptions = BuildOptions(),
    *,
    device: str = "cuda",
    validate: bool = True,
    log=None,
) -> BuildResult:
    """Build, then compare with ONNX Runtime (same ONNX file) on random and phantom windows.
    A failing engine is deleted."""
    from ceds_deploy.artifacts import read_spec
    from ceds_deploy.export import parity

    say = log or (lambda message: None)
    spec = read_spec(onnx_path)
    result = build_engine(onnx_path, engine_path, options, device=device, spec=spec)
    say(
        f"built {engine_path} in {result.seconds:.1f} s (strongly typed, {result.precision} from the ONNX file, "
        f"batch {options.batch}, timing cache "
        f"{'hit: ' + str(result.timing_cache_loaded_bytes) + ' bytes' if result.timing_cache_loaded_bytes else 'new'})"
    )
    if not validate:
        return result
    windows = parity.parity_windows(spec, larger=False)  # the engine's spatial shape is the ROI
    report = parity.check_engine_against_onnx(engine_path, onnx_path, spec, windows, device=device)
    say(report.summary())
    result.parity = report
    parity.require_parity(report, engine_path, delete=[engine_path, sidecar_path(engine_path)])
    result.sidecar["parity"] = report.to_dict()
    write_sidecar(engine_path, result.sidecar)
    return result
