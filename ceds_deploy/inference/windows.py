"""Sliding-window planning and blending weights (pure numpy, no model)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ceds_deploy.errors import ConfigError

if TYPE_CHECKING:
    from ceds_deploy.transforms.preprocess import Image


@dataclass(frozen=True)
class WindowPlan:
    """Window start corners over an image; every window has size `roi`."""

    image_shape: tuple[int, ...]
    roi: tuple[int, ...]
    starts: np.ndarray  # (N, 3) int64

    def __len__(self) -> int:
        return int(self.starts.shape[0])

    def slices(self, index: int) -> tuple[slice, ...]:
        """The slices (one per axis) that cut window `index` out of the image."""
        return tuple(slice(int(s), int(s) + r) for s, r in zip(self.starts[index], self.roi))

    def subset(self, keep: np.ndarray) -> WindowPlan:
        """A plan with only the windows where `keep` (one boolean per window) is true."""
        return WindowPlan(self.image_shape, self.roi, self.starts[np.asarray(keep, dtype=bool)])


def _check(image_shape, roi, overlap) -> None:
    if not 0 <= overlap < 1:
        raise ConfigError(f"overlap must be >= 0 and < 1, got {overlap}")
    if len(image_shape) != 3 or len(roi) != 3:
        raise ConfigError(f"image shape and roi must be 3D, got {image_shape} and {roi}")
    if any(i < r for i, r in zip(image_shape, roi)):
        raise ConfigError(f"image {tuple(image_shape)} is smaller than the window {tuple(roi)}; pad it first")


def axis_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Window starts along one axis, the same positions as MONAI's `sliding_window_inference`:
    a step of int(roi * (1 - overlap)), the last window moved back to end at the border."""
    if size == roi:
        return [0]
    step = max(1, int(roi * (1 - overlap)))
    count = next(d for d in range(math.ceil(size / step)) if d * step + roi >= size) + 1
    return [min(d * step, size - roi) for d in range(count)]


def plan_windows(image_shape: tuple[int, ...], roi: tuple[int, ...], overlap: float) -> WindowPlan:
    """All windows of a dense sliding-window pass, in MONAI's order (last axis fastest)."""
    _check(image_shape, roi, overlap)
    per_axis = [axis_starts(n, r, overlap) for n, r in zip(image_shape, roi)]
    grid = np.stack(np.meshgrid(*per_axis, indexing="ij"), axis=-1).reshape(-1, 3)
    return WindowPlan(tuple(int(n) for n in image_shape), tuple(int(r) for r in roi), grid.astype(np.int64))


def windows_with_content(plan: WindowPlan, image: Image, threshold: float = 0.0) -> WindowPlan:
    """Drop windows in which no voxel exceeds `threshold`.

    On the HU-windowed model input, 0 means "at or below the window's lower bound" (air, lung):
    a window holding nothing brighter cannot contain a mediastinal mass, so it is not computed.
    """
    keep = np.fromiter(
        (bool((image[plan.slices(i)] > threshold).any()) for i in range(len(plan))), dtype=bool, count=len(plan)
    )
    return plan.subset(keep)


def gaussian_importance(roi: tuple[int, ...], sigma_scale: float = 0.125) -> np.ndarray:
    """Gaussian blending weights, sigma = sigma_scale * roi per axis, peak 1 (as MONAI and nnU-Net)."""
    weights = np.ones((), dtype=np.float32)
    for size in roi:
        x = np.arange(size, dtype=np.float32) - (size - 1) / 2.0
        axis = np.exp(x**2 / np.float32(-2 * (size * sigma_scale) ** 2)).astype(np.float32)
        weights = weights[..., None] * axis
    # Keep every weight positive so no voxel of a window is ignored (MONAI's floor).
    return np.maximum(weights, max(float(weights.min()), 1e-3)).astype(np.float32)


def constant_importance(roi: tuple[int, ...]) -> np.ndarray:
    """Blending weights of 1 everywhere: a float32 array of shape `roi`."""
    return np.ones(roi, dtype=np.float32)


BLEND_MODES = ("constant", "gaussian")


def blend_weights(roi: tuple[int, ...], blend: str) -> np.ndarray:
    """One window's blending weights: "constant" (a plain average where windows overlap, the CEDS
    code's validation and MONAI's default) or "gaussian" (the window centre counts most, as nnU-Net)."""
    if blend == "constant":
        return constant_importance(roi)
    if blend == "gaussian":
        return gaussian_importance(roi)
    raise ConfigError(f"blend must be one of {', '.join(BLEND_MODES)}, got {blend!r}")
