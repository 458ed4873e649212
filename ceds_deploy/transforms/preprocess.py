"""Pre-processing of a scan onto the model grid (its inverse is `restore`).

One implementation, used by training, validation and `ceds segment`, with the CEDS code's own
conventions (MONAI `Orientation`, `Spacing`, `ScaleIntensityRange`, `CropForeground`,
`SpatialPad`, then `Invertd` back), so weights trained there see the same input here and the
masks agree with its validation voxel for voxel:
reorient to the canonical LPS axis order (a permutation and flips, no interpolation) ->
resample onto MONAI's Spacing grid (origin kept, exactly the model spacing; linear for images,
nearest for labels, clamped at the edge voxels) -> crop to the bounding box of the voxels above
the body threshold -> HU window to [0, 1] -> pad to at least the ROI.
Only the block of the grid the crop can need is ever resampled, straight from the scan's buffer.
`GridMapping` records every step so `restore_to_source` can undo them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

import numpy as np

from ceds_deploy.spec import ModelSpec
from ceds_deploy.transforms.orientation import Reorientation, canonical_reorientation, reorient_array, reorient_geometry
from ceds_deploy.transforms.resample import resample
from ceds_deploy.transforms.spacing import SpacingGrid, spacing_grid, taps_reaching
from ceds_deploy.volume import Geometry, Volume

if TYPE_CHECKING:
    import torch

Image = Union[np.ndarray, "torch.Tensor"]  # a model-grid image on the host, or on the GPU that runs the model


def hu_window(array: Image, window: tuple[float, float]) -> Image:
    """Clip HU to `window` and scale to [0, 1], in place on a float32 array or tensor (the same
    float32 operations either way)."""
    low, high = window
    if isinstance(array, np.ndarray):
        np.clip(array, low, high, out=array)
    else:
        array.clamp_(low, high)
    array -= low
    array *= 1.0 / (high - low)
    return array


def bounding_box(mask: Image) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """The smallest box holding every nonzero voxel of a 3D mask (boolean or labels), an array or a
    tensor (MONAI's CropForeground, margin 0); None when there is none. On an array, narrowed axis by
    axis with max reductions: one pass over the volume, the rest over the box found so far."""
    if not isinstance(mask, np.ndarray):
        return _tensor_bounding_box(mask)
    start: list[int] = []
    stop: list[int] = []
    bounds = mask
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(bounds.max(axis=other)) if bounds.size else np.empty(0, np.int64)
        if not hits.size:
            return None
        start.append(int(hits[0]))
        stop.append(int(hits[-1]) + 1)
        bounds = bounds[(slice(None),) * axis + (slice(start[-1], stop[-1]),)]
    return tuple(start), tuple(stop)


def _tensor_bounding_box(mask: torch.Tensor) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    import torch

    start, stop = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = torch.nonzero(mask.any(dim=other[1]).any(dim=other[0])).flatten().cpu().numpy()
        if hits.size == 0:
            return None
        start.append(int(hits[0]))
        stop.append(int(hits[-1]) + 1)
    return tuple(start), tuple(stop)


@dataclass(frozen=True)
class GridMapping:
    """Everything needed to map between a scan's own grid and the grid the network sees."""

    source: Geometry
    reorientation: Reorientation
    spacing_grid: SpacingGrid  # MONAI's Spacing grid over the whole reoriented scan
    crop_start: tuple[int, ...]  # the body box on `grid`
    crop_stop: tuple[int, ...]
    pad_before: tuple[int, ...]
    pad_after: tuple[int, ...]

    @property
    def grid(self) -> Geometry:
        """The reoriented, resampled grid over the whole scan, before the body crop."""
        return self.spacing_grid.geometry

    @property
    def cropped_shape(self) -> tuple[int, ...]:
        """The shape of the body box cut from `grid`, before padding."""
        return tuple(b - a for a, b in zip(self.crop_start, self.crop_stop))

    @property
    def model_geometry(self) -> Geometry:
        """The geometry of the padded model-grid array the network sees."""
        corner = np.asarray(self.crop_start, dtype=np.float64) - np.asarray(self.pad_before)
        shape = tuple(n + b + a for n, b, a in zip(self.cropped_shape, self.pad_before, self.pad_after))
        return self.grid.with_(origin=tuple(self.grid.index_to_world(corner)), shape=shape)


def _pad_to_roi(array: Image, roi: tuple[int, ...], value: float) -> tuple[Image, tuple, tuple]:
    """Pad symmetrically (the odd voxel after) to at least `roi`, as MONAI's SpatialPad."""
    total = [max(0, r - n) for r, n in zip(roi, array.shape)]
    before = tuple(p // 2 for p in total)
    after = tuple(p - b for p, b in zip(total, before))
    if not any(total):
        return array, before, after
    if isinstance(array, np.ndarray):
        array = np.pad(array, list(zip(before, after)), constant_values=value)
    else:  # torch pads the last axis first
        import torch

        pads = [p for b, a in zip(before[::-1], after[::-1]) for p in (b, a)]
        array = torch.nn.functional.pad(array[None, None], pads, value=value)[0, 0]
    return array, before, after


def prepare_scan(image: Volume, spec: ModelSpec, device: str = "cpu") -> tuple[np.ndarray, GridMapping]:
    """A scan in HU -> (float32 array in [0, 1] on the model grid, the mapping to undo it).
    `device` is where the resampling runs (a GPU when the backend has one)."""
    array, mapping = prepare_scan_on(image, spec, device, as_tensor=False)
    assert isinstance(array, np.ndarray)
    return array, mapping


def prepare_scan_on(
    image: Volume, spec: ModelSpec, device: str = "cpu", as_tensor: bool = True
) -> tuple[Image, GridMapping]:
    """`prepare_scan`, with `as_tensor` the result as a float32 tensor left on `device` where it was
    made: on a GPU the windows are then cut there and the image never crosses to the host."""
    r = canonical_reorientation(image.geometry)
    canonical = reorient_geometry(image.geometry, r)
    grid = spacing_grid(canonical, spec.target_spacing)
    source = reorient_array(image.array, r)
    threshold = spec.crop_threshold_hu
    taps = grid.taps_into_scan("linear", (0, 0, 0), grid.geometry.shape, source.shape)
    # Only grid voxels that read a source voxel above the threshold can be above it after the
    # (convex) linear interpolation: find them on the scan's own grid, resample just that block.
    body = bounding_box(source > threshold)
    if body is not None:
        block = [taps_reaching(t, a, b) for t, a, b in zip(taps, *body)]
        taps = [tuple(part[a:b] for part in t) for t, (a, b) in zip(taps, block)]
    else:
        block = [(0, m) for m in grid.geometry.shape]
    resampled = resample(source, taps, "linear", device, to_host=not as_tensor)
    box = bounding_box(resampled > threshold) if math.prod(resampled.shape) else None
    if box is None:  # nothing above the threshold: keep the whole block (MONAI would crop to nothing)
        box = ((0, 0, 0), tuple(resampled.shape))
    crop = resampled[tuple(slice(a, b) for a, b in zip(*box))]
    region = hu_window(np.array(crop, copy=True) if isinstance(crop, np.ndarray) else crop.clone(), spec.hu_window)
    del resampled, crop
    array, pad_before, pad_after = _pad_to_roi(region, spec.roi_size, 0.0)
    start = tuple(o + a for (o, _), a in zip(block, box[0]))
    stop = tuple(o + b for (o, _), b in zip(block, box[1]))
    return array, GridMapping(image.geometry, r, grid, start, stop, pad_before, pad_after)


def prepare_label(label: Volume, mapping: GridMapping) -> np.ndarray:
    """A label on the scan's grid -> uint8 label on the model grid (nearest neighbour)."""
    if not label.geometry.same_grid(mapping.source, atol=1e-3):
        raise ValueError(f"label grid {label.geometry} differs from the image grid {mapping.source}")
    source = reorient_array(label.array, mapping.reorientation)
    taps = mapping.spacing_grid.taps_into_scan("nearest", mapping.crop_start, mapping.crop_stop, source.shape)
    region = resample(source.astype(np.uint8, copy=False), taps, "nearest")
    return np.pad(region, list(zip(mapping.pad_before, mapping.pad_after))).astype(np.uint8, copy=False)
