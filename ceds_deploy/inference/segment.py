"""`segment_volume`: one scan in memory through pre-processing, windows, a backend, stitching and
restoring; the steps every caller shares (folder runs, training validation, benchmarks)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ceds_deploy.backends.base import Backend, is_cuda
from ceds_deploy.errors import ConfigError
from ceds_deploy.inference.options import SegmentOptions
from ceds_deploy.inference.scheduler import sliding_window_predict
from ceds_deploy.inference.windows import WindowPlan, plan_windows, windows_with_content
from ceds_deploy.spec import ModelSpec
from ceds_deploy.transforms.preprocess import Image, prepare_scan_on
from ceds_deploy.transforms.restore import restore_prediction
from ceds_deploy.volume import Volume


def check_window(window: tuple[int, ...] | None, roi: tuple[int, ...]) -> None:
    """`ConfigError` for an inference window smaller than the training ROI along some axis."""
    if window is not None and any(w < r for w, r in zip(window, roi)):
        raise ConfigError(
            f"window {' '.join(map(str, window))} is smaller than the model's training ROI "
            f"{' '.join(map(str, roi))} along some axis; give at least that"
        )


def inference_window(image_shape: tuple[int, ...], spec: ModelSpec, window: tuple[int, ...] | None) -> tuple[int, ...]:
    """The window to run: the training ROI, or a larger one asked for (the network is convolutional
    apart from CBAM's global pooling), never larger than the image allows in multiples of 16 (nor
    smaller than the ROI there). Runs refuse a window asked smaller than the ROI (`check_window`)."""
    if window is None:
        return spec.roi_size
    return (
        max(spec.roi_size[0], min(window[0], image_shape[0] // 16 * 16)),
        max(spec.roi_size[1], min(window[1], image_shape[1] // 16 * 16)),
        max(spec.roi_size[2], min(window[2], image_shape[2] // 16 * 16)),
    )


def batch_size_for(backend: Backend, options: SegmentOptions) -> int:
    """Windows per backend call: the one asked for, else the backend's; on a CPU, larger inference
    windows than the ROI lower the default as the window grows (Backend.default_batch_size_for)."""
    if options.batch_size:
        return options.batch_size
    if options.window is not None and backend.device == "cpu":
        larger = backend.spec.replace(roi_size=options.window)
        return min(backend.max_batch_size, backend.default_batch_size_for(larger, "cpu"))
    return backend.max_batch_size


def pads_batches(backend: Backend) -> bool:
    """Whether a short last batch is padded to the full batch: on CUDA, so every call has one shape
    (cuDNN autotunes, and engines and graphs are built, once per shape); on the CPU padded windows
    cost as much as real ones, so never there."""
    return is_cuda(str(backend.device))


def work_device(backend: Backend) -> str:
    """Where pre-processing, stitching and resampling run: the backend's GPU when it has one
    that PyTorch can use, else the CPU."""
    device = str(backend.device)
    if is_cuda(device):
        import torch

        if torch.cuda.is_available():
            return device
    return "cpu"


def window_plan_for(image: Image, spec: ModelSpec, options: SegmentOptions) -> WindowPlan:
    """The windows to compute over a pre-processed image (air-only ones dropped unless asked)."""
    plan = plan_windows(image.shape, inference_window(image.shape, spec, options.window), options.overlap)
    return windows_with_content(plan, image) if options.skip_air else plan


@dataclass
class Segmentation:
    """`segment_volume`'s result on the scan's grid: `mask` (uint8), `confidence` (float32 in [0, 1]),
    `probabilities` (only with `save_probabilities`, else None) and the number of `windows` computed."""

    mask: np.ndarray  # uint8 on the scan's grid
    confidence: np.ndarray  # float32 in [0, 1] on the scan's grid
    probabilities: np.ndarray | None  # with options.save_probabilities
    windows: int


def segment_volume(volume: Volume, backend: Backend, options: SegmentOptions | None = None) -> Segmentation:
    """Segment one scan with an active backend; outputs are on the scan's own grid.

    Raises `ModelInputError`/`BackendError` from the backend, `ConfigError` for impossible options.
    """
    options = options or SegmentOptions()
    spec = backend.spec
    check_window(options.window, spec.roi_size)
    device = work_device(backend)
    image, mapping = prepare_scan_on(volume, spec, device, as_tensor=is_cuda(device))
    windows = window_plan_for(image, spec, options)
    seg, conf = sliding_window_predict(
        image,
        windows,
        backend,
        batch_size=batch_size_for(backend, options),
        num_classes=spec.num_classes,
        tta=options.tta,
        blend=options.blend,
        accumulate_on=device,
        pad_batches=pads_batches(backend),
    )
    restored = restore_prediction(
        seg, conf, mapping, options.save_probabilities, options.largest_component, spec.calibration
    )
    return Segmentation(restored.mask, restored.confidence, restored.probabilities, len(windows))
