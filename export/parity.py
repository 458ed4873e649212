"""Numerical checks between two backends on the same windows: ONNX Runtime vs PyTorch after an
export, TensorRT vs ONNX Runtime after an engine build.

Both compare probabilities (softmax of the segmentation logits, and the confidence), because
logits may legitimately differ by a constant per voxel; the TensorRT check also compares the
argmax masks (Dice). A failed check deletes the artifact it was checking and raises.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ceds_deploy.errors import ArtifactError
from ceds_deploy.spec import ModelSpec

FP32_PROB_TOLERANCE = 1e-4  # ONNX Runtime vs PyTorch, both fp32
FP16_PROB_TOLERANCE = 5e-2  # an fp16 graph or engine vs fp32: a few voxels near the decision boundary
MIN_ARGMAX_DICE = 0.99
MIN_ARGMAX_AGREEMENT = 0.999  # fp16 ONNX vs torch fp32: share of voxels with the same argmax class


@dataclass(frozen=True)
class WindowSet:
    """Windows of one shape, (N, 1, X, Y, Z) float32 in [0, 1] like pre-processed CT."""

    name: str
    windows: np.ndarray


@dataclass(frozen=True)
class ParityReport:
    label: str  # e.g. "onnxruntime vs torch"
    windows: int
    shapes: tuple[tuple[int, ...], ...]
    max_prob_diff: float  # max |softmax(seg) difference| over every voxel and class
    mean_prob_diff: float
    max_confidence_diff: float
    max_logit_diff: float
    dice: float  # Dice of the argmax foreground masks (1.0 when both are empty)
    tolerance: float
    min_dice: float | None
    argmax_agreement: float = 1.0  # share of voxels whose argmax class is the same
    min_agreement: float | None = None

    @property
    def passed(self) -> bool:
        worst = max(self.max_prob_diff, self.max_confidence_diff)
        return (
            worst <= self.tolerance
            and (self.min_dice is None or self.dice >= self.min_dice)
            and (self.min_agreement is None or self.argmax_agreement >= self.min_agreement)
        )

    def summary(self) -> str:
        dice = f", argmax Dice {self.dice:.5f}" + (f" (>= {self.min_dice})" if self.min_dice is not None else "")
        if self.min_agreement is not None:
            dice += f", argmax agreement {self.argmax_agreement:.6f} (>= {self.min_agreement})"
        return (
            f"{self.label}: {self.windows} windows {', '.join('x'.join(map(str, s)) for s in self.shapes)}; "
            f"max |diff| probabilities {self.max_prob_diff:.2e}, confidence {self.max_confidence_diff:.2e} "
            f"(<= {self.tolerance:.0e}), mean {self.mean_prob_diff:.1e}, logits {self.max_logit_diff:.2e}{dice}"
        )

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


# ------------------------------------------------------------------ windows


def random_windows(shape: Sequence[int], count: int, seed: int = 0) -> np.ndarray:
    """Smooth-ish random windows: noise plus a blob, so the network sees structure, not only noise."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    out = np.empty((count, 1, *shape), dtype=np.float32)
    for i in range(count):
        centre = rng.uniform(-0.5, 0.5, size=(3, 1, 1, 1))
        blob = np.exp(-np.sum((grid - centre) ** 2, axis=0) / rng.uniform(0.05, 0.3))
        out[i, 0] = np.clip(0.35 + 0.4 * blob + rng.normal(0, 0.1, shape), 0, 1)
    return out


def phantom_windows(spec: ModelSpec, count: int, seed: int = 0) -> np.ndarray | None:
    """Windows of synthetic chest CT centred on the mass, pre-processed like `ceds segment` does.
    None when the phantom generator is not part of this install."""
    if count < 1 or importlib.util.find_spec("ceds_deploy.synthetic") is None:
        return None
    from ceds_deploy.synthetic import make_case
    from ceds_deploy.transforms.preprocess import prepare_label, prepare_scan

    roi = np.asarray(spec.roi_size)
    out = np.empty((count, 1, *spec.roi_size), dtype=np.float32)
    for i in range(count):
        image, label = make_case(i, seed, size="small")
        array, plan = prepare_scan(image, spec)
        mask = prepare_label(label, plan)
        centre = np.argwhere(mask).mean(axis=0) if mask.any() else np.asarray(array.shape) / 2
        start = np.clip(np.round(centre - roi / 2).astype(int), 0, np.asarray(array.shape) - roi)
        out[i, 0] = array[tuple(slice(s, s + r) for s, r in zip(start, roi))]
    return out


def parity_windows(
    spec: ModelSpec, *, random: int = 1, phantoms: int = 2, larger: bool = True, seed: int = 0
) -> list[WindowSet]:
    """The windows every check uses: random ones and phantom ones at the ROI, and (for graphs with
    dynamic spatial axes) one random window 16 voxels larger on every axis."""
    sets = [WindowSet("random", random_windows(spec.roi_size, random, seed))]
    phantom = phantom_windows(spec, phantoms, seed)
    if phantom is not None:
        sets.append(WindowSet("phantom", phantom))
    if larger:
        sets.append(WindowSet("random, larger window", random_windows([n + 16 for n in spec.roi_size], 1, seed + 1)))
    return sets


# ------------------------------------------------------------------ comparison


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


Predictor = Callable  # (B, 1, *roi) torch.Tensor -> WindowOutputs


def _predict(predict: Predictor, windows: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    import torch

    segs, confs = [], []
    for start in range(0, len(windows), batch_size):
        out = predict(torch.from_numpy(windows[start : start + batch_size]))
        segs.append(out.seg_logits.detach().float().cpu().numpy())
        confs.append(out.confidence.detach().float().cpu().numpy())
    return np.concatenate(segs), np.concatenate(confs)


def compare_backends(
    reference: Predictor,
    candidate: Predictor,
    window_sets: Iterable[WindowSet],
    *,
    label: str,
    tolerance: float,
    min_dice: float | None = None,
    min_agreement: float | None = None,
    batch_size: int = 2,
) -> ParityReport:
    """Run both predictors on every window set and measure how far the candidate is from the reference."""
    max_prob = max_conf = max_logit = 0.0
    abs_sum, count = 0.0, 0
    intersection = total = 0
    agree = voxels = 0
    shapes, n = [], 0
    for window_set in window_sets:
        windows = np.ascontiguousarray(window_set.windows, dtype=np.float32)
        ref_seg, ref_conf = _predict(reference, windows, batch_size)
        seg, conf = _predict(candidate, windows, batch_size)
        ref_prob, prob = _softmax(ref_seg), _softmax(seg)
        diff = np.abs(prob - ref_prob)
        max_prob = max(max_prob, float(diff.max()))
        abs_sum, count = abs_sum + float(diff.sum()), count + diff.size
        max_conf = max(max_conf, float(np.abs(conf - ref_conf).max()))
        max_logit = max(max_logit, float(np.abs(seg - ref_seg).max()))
        ref_class, cand_class = ref_seg.argmax(axis=1), seg.argmax(axis=1)
        agree, voxels = agree + int((ref_class == cand_class).sum()), voxels + ref_class.size
        ref_fg, fg = ref_class > 0, cand_class > 0
        intersection += int(np.logical_and(ref_fg, fg).sum())
        total += int(ref_fg.sum()) + int(fg.sum())
        shapes.append(tuple(windows.shape[2:]))
        n += len(windows)
    return ParityReport(
        label=label,
        windows=n,
        shapes=tuple(shapes),
        max_prob_diff=max_prob,
        mean_prob_diff=abs_sum / max(count, 1),
        max_confidence_diff=max_conf,
        max_logit_diff=max_logit,
        dice=1.0 if total == 0 else 2.0 * intersection / total,
        tolerance=tolerance,
        min_dice=min_dice,
        argmax_agreement=agree / max(voxels, 1),
        min_agreement=min_agreement,
    )


def gate_for(precision: str) -> dict:
    """The ONNX Runtime vs torch fp32 gate for an export of `precision` (keyword arguments of
    `check_onnx_against_torch`). fp16 files run with ONNX Runtime's graph optimisations off: see
    `_UnoptimizedOnnxRuntime`."""
    if precision == "fp16":
        return {"tolerance": FP16_PROB_TOLERANCE, "min_agreement": MIN_ARGMAX_AGREEMENT, "ort_optimize": False}
    return {"tolerance": FP32_PROB_TOLERANCE}


class _UnoptimizedOnnxRuntime:
    """ONNX Runtime's CPU provider on an fp16 file with graph optimisations off.

    The CPU provider has no fp16 kernels for most of our operators: it wraps each fp16 node in
    Casts (fp16 in, fp32 compute, fp16 out). With optimisations on (ORT_ENABLE_ALL, what `ceds
    segment` uses) it then removes those Casts and converts the fp16 weights to fp32 (measured with
    ORT 1.31: 1 Cast and no fp16 initializer left), so the graph runs in fp32 with fp16-rounded
    weights and the activations are never rounded. With optimisations off, every activation is
    stored in fp16 between nodes, as on a GPU (fp16 tensors, fp32 accumulation): the closer
    emulation of what TensorRT and the CUDA provider run, so the gate measures that."""

    def __init__(self, path: Path, threads: int | None) -> None:
        import onnxruntime as ort

        from ceds_deploy.backends.onnxruntime_backend import physical_cores

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.intra_op_num_threads = threads or physical_cores()
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])

    def __call__(self, batch):
        import torch

        from ceds_deploy.backends.base import WindowOutputs

        feed = {"image": np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)}
        seg, conf = self.session.run(["seg_logits", "confidence"], feed)
        return WindowOutputs(torch.from_numpy(seg), torch.from_numpy(conf))


def require_parity(report: ParityReport, artifact: Path, *, delete: Sequence[Path] = ()) -> ParityReport:
    """Raise (after deleting `delete`, the artifact's files) when the report did not pass."""
    if report.passed:
        return report
    for path in delete:
        Path(path).unlink(missing_ok=True)
    raise ArtifactError(f"{artifact}: parity check failed, file deleted: {report.summary()}")


# ------------------------------------------------------------------ the two checks


def check_onnx_against_torch(
    onnx_path: Path,
    net,
    spec: ModelSpec,
    window_sets: Sequence[WindowSet],
    *,
    tolerance: float = FP32_PROB_TOLERANCE,
    min_agreement: float | None = None,
    ort_optimize: bool = True,
    threads: int | None = None,
) -> ParityReport:
    """ONNX Runtime (CPU) on `onnx_path` against the PyTorch network (fp32) it was exported from.
    `ort_optimize=False` (the fp16 gate) runs ONNX Runtime unoptimised: see `_UnoptimizedOnnxRuntime`."""
    from ceds_deploy.backends.onnxruntime_backend import OnnxRuntimeBackend
    from ceds_deploy.backends.torch_backend import TorchBackend

    batch = 2
    with TorchBackend.from_module(net, spec, device="cpu", max_batch_size=batch) as reference:
        if not ort_optimize:
            return compare_backends(
                reference,
                _UnoptimizedOnnxRuntime(onnx_path, threads),
                window_sets,
                label="onnxruntime (unoptimised: fp16 activations) vs torch fp32",
                tolerance=tolerance,
                min_agreement=min_agreement,
                batch_size=batch,
            )
        with OnnxRuntimeBackend(onnx_path, spec, device="cpu", max_batch_size=batch, threads=threads) as candidate:
            return compare_backends(
                reference,
                candidate,
                window_sets,
                label="onnxruntime vs torch",
                tolerance=tolerance,
                min_agreement=min_agreement,
                batch_size=batch,
            )


def check_engine_against_onnx(
    engine_path: Path,
    onnx_path: Path,
    spec: ModelSpec,
    window_sets: Sequence[WindowSet],
    *,
    device: str = "cuda",
    tolerance: float = FP16_PROB_TOLERANCE,
    min_dice: float = MIN_ARGMAX_DICE,
    batch_size: int | None = None,
) -> ParityReport:
    """A TensorRT engine against ONNX Runtime (CPU, fp32) on the same ONNX file."""
    from ceds_deploy.backends.onnxruntime_backend import OnnxRuntimeBackend
    from ceds_deploy.backends.tensorrt_backend import TensorRTBackend

    with TensorRTBackend(engine_path, spec, device=device) as candidate:
        batch = min(batch_size or candidate.max_batch_size, candidate.max_batch_size)
        with OnnxRuntimeBackend(onnx_path, spec, device="cpu", max_batch_size=batch) as reference:
            return compare_backends(
                reference,
                candidate,
                window_sets,
                label="tensorrt vs onnxruntime",
                tolerance=tolerance,
                min_dice=min_dice,
                batch_size=batch,
            )
