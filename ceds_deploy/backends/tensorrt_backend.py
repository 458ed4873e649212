"""Native TensorRT backend: one engine, one execution context, torch CUDA tensors as I/O buffers
(no pycuda), `execute_async_v3` on a torch CUDA stream.

The artifact is either an engine (its sidecar must match this TensorRT version and GPU) or an
ONNX file from `ceds export` together with `engine_for_onnx`, a function that returns the file's
engine for this GPU and TensorRT version (`ceds_deploy.models.open_backend` passes the engine
cache's, which builds it on first use; the cache key needs the GPU and TensorRT version, known only
once TensorRT is loaded on the device). Running an engine only needs
`ceds_deploy.backends.tensorrt_runtime`: this module never imports the build-time code.
Optionally the full-batch call is captured once as a CUDA graph and replayed.

Engines are strongly typed: they run the ONNX file's own precision (fp32, or the mixed fp16 of
`ceds export --precision fp16`), so there is no precision to choose here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ceds_deploy.backends.base import Backend, WindowOutputs
from ceds_deploy.backends.tensorrt_runtime import (
    BatchProfile,
    RuntimeInfo,
    check_sidecar,
    make_logger,
    read_sidecar,
    require_tensorrt,
    runtime_info,
)
from ceds_deploy.errors import ArtifactError, BackendUnavailableError, ConfigError, ModelInputError, UsageError
from ceds_deploy.spec import INPUT_NAME, OUTPUT_NAMES, ModelSpec

EngineForOnnx = Callable[[RuntimeInfo, BatchProfile], Path]  # (this machine, the profile) -> engine file


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(
        self,
        artifact: Path,
        spec: ModelSpec,
        *,
        device: str = "cuda",
        max_batch_size: int | None = None,
        precision: str | None = None,
        cuda_graph: bool = False,
        engine_for_onnx: EngineForOnnx | None = None,
    ) -> None:
        if not str(device).startswith("cuda"):
            raise BackendUnavailableError(
                f"the tensorrt backend runs on a CUDA GPU; use --device cuda (got {device!r})"
            )
        if precision is not None and precision != spec.precision:
            # Strongly typed engines run the file's types; a different precision is another ONNX file.
            raise ConfigError(
                f"{Path(artifact).name} is {spec.precision}: TensorRT engines run the ONNX file's own "
                f"precision; for {precision}, export with `ceds export CHECKPOINT --out model-{precision}"
                f".onnx --precision {precision}` and give that file"
            )
        artifact = Path(artifact)
        self._sidecar = None
        if artifact.suffix.lower() == ".onnx" and engine_for_onnx is None:
            raise UsageError(
                f"{artifact.name}: the tensorrt backend runs an engine; for an ONNX file pass "
                "engine_for_onnx (ceds_deploy.models.open_backend does, with the engine cache)"
            )
        if artifact.suffix.lower() != ".onnx":
            # The sidecar (plain JSON) says the profile's max batch before any GPU work.
            self._sidecar = read_sidecar(artifact)
            profile_max = BatchProfile.parse(self._sidecar["profile"]["batch"]).max
            if max_batch_size is not None and max_batch_size > profile_max:
                raise ConfigError(
                    f"{artifact.name}: batch size {max_batch_size} exceeds the engine's profile "
                    f"max {profile_max}; rebuild with a larger --batch"
                )
            max_batch_size = max_batch_size or profile_max
        super().__init__(artifact, spec, device=device, max_batch_size=max_batch_size)
        self.precision = spec.precision
        self.cuda_graph = cuda_graph
        self.engine_for_onnx = engine_for_onnx
        self.engine_path: Path | None = None

    # -------------------------------------------------------------- activation

    def _activate(self) -> None:
        trt = require_tensorrt(self.device)
        self._device = torch.device(self.device)
        runtime = runtime_info(trt, self.device)
        artifact = Path(self.artifact or "")
        if self._sidecar is None and self.engine_for_onnx is not None:
            n = self.max_batch_size
            self.engine_path = self.engine_for_onnx(runtime, BatchProfile(1, n, n))
        else:
            check_sidecar(artifact, self._sidecar or {}, runtime)
            self.engine_path = artifact
        self._logger = make_logger(trt)  # must outlive the runtime and engine
        with torch.cuda.device(self._device):
            self._runtime = trt.Runtime(self._logger)
            self._engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
            if self._engine is None:
                raise ArtifactError(
                    f"{self.engine_path}: TensorRT cannot deserialize this engine "
                    f"({self._logger.last_error or 'corrupt, or built by another TensorRT'})"
                )
            self._check_io(trt)
            self._context = self._engine.create_execution_context()
            if self._context is None:
                raise ArtifactError(
                    f"{self.engine_path}: cannot create an execution context "
                    f"(out of GPU memory?): {self._logger.last_error}"
                )
            self._stream = torch.cuda.Stream(device=self._device)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._graph_io: dict[str, torch.Tensor] = {}
        engine_precision = (self._sidecar or {}).get("precision", self.precision)
        self.description = (
            f"tensorrt {trt.__version__} {engine_precision} (strongly typed) on {runtime.gpu_name} "
            f"(batch <= {self.max_batch_size}{', CUDA graph' if self.cuda_graph else ''})"
        )

    def _check_io(self, trt) -> None:
        engine = self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if inputs != [INPUT_NAME] or sorted(outputs) != sorted(OUTPUT_NAMES):
            raise ArtifactError(
                f"{self.engine_path}: engine has inputs {inputs} and outputs {outputs}, "
                f"expected [{INPUT_NAME!r}] and {list(OUTPUT_NAMES)}"
            )
        dtypes = {trt.float32: torch.float32, trt.float16: torch.float16}
        self._dtypes = {}
        for name in names:
            dtype = engine.get_tensor_dtype(name)
            if dtype not in dtypes:
                raise ArtifactError(
                    f"{self.engine_path}: tensor {name!r} has type {dtype}; expected float32 or float16"
                )
            self._dtypes[name] = dtypes[dtype]
        low, _, high = (tuple(d) for d in engine.get_tensor_profile_shape(INPUT_NAME, 0))
        self._profile = (low, high)
        if self.max_batch_size > high[0]:
            raise ConfigError(
                f"{self.engine_path}: batch size {self.max_batch_size} exceeds the engine's profile max {high[0]}"
            )

    # -------------------------------------------------------------- inference

    def _check_shape(self, shape: tuple[int, ...]) -> None:
        low, high = self._profile
        if any(not lo <= s <= hi for s, lo, hi in zip(shape, low, high)):
            raise ModelInputError(
                f"tensorrt: input {shape} is outside the engine's profile {low} .. {high} "
                "(engines are built for the model's ROI; rebuild for other windows)"
            )

    def _bind(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Set the input shape and every tensor address; returns the output buffers."""
        context = self._context
        if not context.set_input_shape(INPUT_NAME, tuple(image.shape)):
            raise ModelInputError(f"tensorrt: the engine rejected input shape {tuple(image.shape)}")
        context.set_tensor_address(INPUT_NAME, image.data_ptr())
        outputs = {}
        for name in OUTPUT_NAMES:
            shape = tuple(context.get_tensor_shape(name))
            outputs[name] = torch.empty(shape, dtype=self._dtypes[name], device=self._device)
            context.set_tensor_address(name, outputs[name].data_ptr())
        return outputs

    def _enqueue(self) -> None:
        if not self._context.execute_async_v3(self._stream.cuda_stream):
            raise RuntimeError(f"tensorrt: execute_async_v3 failed: {self._logger.last_error}")

    def _infer(self, batch: torch.Tensor) -> WindowOutputs:
        shape = tuple(batch.shape)
        self._check_shape(shape)
        with torch.cuda.device(self._device):
            current = torch.cuda.current_stream(self._device)
            image = batch.to(self._device, self._dtypes[INPUT_NAME], non_blocking=True).contiguous()
            if self.cuda_graph and shape[0] == self.max_batch_size:
                outputs = self._replay(image)
            else:
                self._graph = None  # the context now holds another shape; recapture next time
                outputs = self._bind(image)
                self._stream.wait_stream(current)  # the input copy was queued on the current stream
                self._enqueue()
            # Later work on the current stream (and freeing `image`) waits for the engine.
            current.wait_stream(self._stream)
        return WindowOutputs(outputs["seg_logits"].float(), outputs["confidence"].float())

    def _replay(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Full batches through a CUDA graph captured once (fixed shape, fixed addresses)."""
        current = torch.cuda.current_stream(self._device)
        if self._graph is None:
            static = image.clone()
            outputs = self._bind(static)
            self._stream.wait_stream(current)
            self._enqueue()  # TensorRT wants one plain enqueue before capture (deferred setup)
            self._stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self._stream):
                self._enqueue()
            self._graph, self._graph_io = graph, {INPUT_NAME: static, **outputs}
        graph = self._graph
        self._graph_io[INPUT_NAME].copy_(image)
        self._stream.wait_stream(current)
        with torch.cuda.stream(self._stream):
            graph.replay()
        # The static outputs are overwritten by the next replay: hand out copies, made on the
        # current stream once the replay is done (the next replay waits for the copies).
        current.wait_stream(self._stream)
        return {name: self._graph_io[name].clone() for name in OUTPUT_NAMES}

    def _deactivate(self) -> None:
        if getattr(self, "_stream", None) is not None:
            self._stream.synchronize()
        self._graph, self._graph_io = None, {}
        self._context = self._engine = self._runtime = None
        self._stream = None  # type: ignore[assignment]  # released; _activate makes a new one
