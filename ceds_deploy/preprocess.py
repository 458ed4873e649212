"""Pre-processing of a scan onto the model grid, and the exact inverse back to the scan's grid.

Forward (one implementation, used by training, validation and `ceds segment`):
reorient to the canonical LPS axis order (a permutation and flips, no interpolation) ->
crop to the body bounding box -> resample to the model spacing (linear for images, nearest for
labels) -> HU window to [0, 1] -> pad to at least the ROI.
`PreprocessPlan` records every step so `restore_to_source` can undo them in reverse order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ceds_deploy.spec import ModelSpec
from ceds_deploy.volume import Geometry, Volume

CROP_MARGIN_VOXELS = 2  # keep a little air around the body so interpolation has context


@dataclass(frozen=True)
class Reorientation:
    """Canonical axis a is source axis ``perm[a]``, reversed where ``flip[a]``."""

    perm: tuple[int, int, int]
    flip: tuple[bool, bool, bool]

    @property
    def is_identity(self) -> bool:
        return self.perm == (0, 1, 2) and not any(self.flip)


def canonical_reorientation(geometry: Geometry) -> Reorientation:
    """The axis permutation and flips that make the array axes point along +x, +y, +z (LPS)."""
    weights = np.abs(geometry.direction_matrix)  # [world axis, array axis]
    perm = [-1, -1, -1]
    # Greedy by largest cosine so strongly oblique scans still get a valid permutation.
    for flat in np.argsort(-weights, axis=None):
        world, axis = divmod(int(flat), 3)
        if perm[world] == -1 and axis not in perm:
            perm[world] = axis
    flip = tuple(bool(geometry.direction_matrix[w, perm[w]] < 0) for w in range(3))
    return Reorientation(tuple(perm), flip)


def reorient_array(array: np.ndarray, r: Reorientation) -> np.ndarray:
    """Apply `r` to the last three axes of `array` (a view, no copy)."""
    lead = array.ndim - 3
    out = array.transpose(*range(lead), *(lead + p for p in r.perm))
    flips = tuple(lead + a for a in range(3) if r.flip[a])
    return np.flip(out, axis=flips) if flips else out


def undo_reorient_array(array: np.ndarray, r: Reorientation) -> np.ndarray:
    lead = array.ndim - 3
    flips = tuple(lead + a for a in range(3) if r.flip[a])
    out = np.flip(array, axis=flips) if flips else array
    inverse = np.argsort(r.perm)
    return out.transpose(*range(lead), *(lead + int(p) for p in inverse))


def reorient_geometry(geometry: Geometry, r: Reorientation) -> Geometry:
    d = geometry.direction_matrix
    shape = tuple(geometry.shape[p] for p in r.perm)
    corner = np.zeros(3)
    for a in range(3):
        if r.flip[a]:
            corner[r.perm[a]] = geometry.shape[r.perm[a]] - 1
    direction = np.stack([d[:, r.perm[a]] * (-1 if r.flip[a] else 1) for a in range(3)], axis=1)
    return Geometry(tuple(geometry.spacing[p] for p in r.perm), tuple(geometry.index_to_world(corner)),
                    direction, shape)


def crop_geometry(geometry: Geometry, start: tuple[int, ...], stop: tuple[int, ...]) -> Geometry:
    return geometry.with_(origin=tuple(geometry.index_to_world(np.asarray(start))),
                          shape=tuple(int(b - a) for a, b in zip(start, stop)))


def resampled_shape(geometry: Geometry, spacing: tuple[float, float, float]) -> tuple[int, int, int]:
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(geometry.shape, geometry.spacing, spacing))


def resample_geometry(geometry: Geometry, shape: tuple[int, int, int]) -> Geometry:
    """The grid covering the same physical box as `geometry` with `shape` voxels (voxel-centre model,
    the same convention as ``interpolate(align_corners=False)``)."""
    old = np.asarray(geometry.spacing)
    new = old * np.asarray(geometry.shape) / np.asarray(shape)
    origin = np.asarray(geometry.origin) + geometry.direction_matrix @ ((new - old) / 2)
    return geometry.with_(spacing=tuple(new), origin=tuple(origin), shape=shape)


def memory_order(array: np.ndarray) -> tuple[int, int, int]:
    """The last three axes from the largest stride to the smallest: walking them in this order reads
    memory front to back (or back to front along a flipped axis), never across. Scans read by
    `read_scan` are (x, y, z) views of ITK's (z, y, x) buffers, so this is usually (2, 1, 0)."""
    strides = np.abs(np.asarray(array.strides[-3:]))
    return tuple(int(a) for a in np.argsort(-strides, kind="stable"))


def resample_array(array, shape: tuple[int, int, int], mode: str, device: str = "cpu") -> np.ndarray:
    """Resample the last three axes of `array` (numpy, or a torch tensor on any device) to `shape`
    on `device`; returns a C-contiguous numpy array on the host: float32 for mode 'linear', the
    input's type for 'nearest'.

    A numpy array is resampled in the order its axes lie in memory and the (small) result is put
    back in order, so a transposed view of a large scan is never copied across memory.
    """
    import torch
    import torch.nn.functional as F

    lead = array.ndim - 3
    if isinstance(array, np.ndarray):
        order = memory_order(array)
        if order != (0, 1, 2):
            moved = resample_array(array.transpose(*range(lead), *(lead + a for a in order)),
                                   tuple(shape[a] for a in order), mode, device)
            inverse = np.argsort(order)
            return np.ascontiguousarray(moved.transpose(*range(lead), *(lead + int(a) for a in inverse)))
        if tuple(array.shape[-3:]) == tuple(shape):
            return np.ascontiguousarray(array, dtype=np.float32 if mode == "linear" else None)
        tensor, dtype = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)), array.dtype
    else:
        tensor, dtype = array, torch.empty(0, dtype=array.dtype).numpy().dtype
    # Asynchronous only towards a GPU: a copy to the host must be complete before the CPU reads it.
    tensor = tensor.to(device, torch.float32, non_blocking=str(device).startswith("cuda"))
    tensor = tensor.reshape(1, -1, *array.shape[-3:])
    if tuple(array.shape[-3:]) == tuple(shape):
        out = tensor
    elif mode == "linear":
        out = F.interpolate(tensor, size=tuple(shape), mode="trilinear", align_corners=False)
    elif mode == "nearest":
        out = F.interpolate(tensor, size=tuple(shape), mode="nearest-exact")
    else:
        raise ValueError(f"mode must be 'linear' or 'nearest', got {mode!r}")
    out = out.reshape(*array.shape[:lead], *shape).cpu().numpy()
    # Linear interpolation makes fractions: only nearest keeps the input's type (labels).
    return out if dtype == np.float32 or mode == "linear" else out.astype(dtype)


def resample_into(out: np.ndarray, source, mode: str, device: str = "cpu") -> None:
    """Resample a 3D `source` (numpy or torch, small: the model grid) into the 3D view `out` (large:
    a box of the scan's grid), working in the order `out` lies in memory so that filling a
    transposed or flipped view costs no copy across memory."""
    order = memory_order(out)
    target = out.transpose(order)
    if isinstance(source, np.ndarray):
        moved = np.ascontiguousarray(source.transpose(order))
    else:
        moved = source.permute(*order).contiguous()
    target[...] = resample_array(moved, target.shape, mode, device)


def hu_window(array: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Clip HU to `window` and scale to [0, 1], in place on a float32 array."""
    low, high = window
    np.clip(array, low, high, out=array)
    array -= low
    array *= 1.0 / (high - low)
    return array


def body_bounding_box(array: np.ndarray, threshold: float) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Bounding box of voxels above `threshold`, with a small margin; the whole array if none."""
    start, stop = [], []
    body = array > threshold
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        profile = body.any(axis=other)
        hits = np.flatnonzero(profile)
        if hits.size == 0:
            return (0, 0, 0), tuple(array.shape)
        start.append(max(0, int(hits[0]) - CROP_MARGIN_VOXELS))
        stop.append(min(array.shape[axis], int(hits[-1]) + 1 + CROP_MARGIN_VOXELS))
    return tuple(start), tuple(stop)


@dataclass(frozen=True)
class PreprocessPlan:
    """Everything needed to map between a scan's own grid and the grid the network sees."""

    source: Geometry
    reorientation: Reorientation
    crop_start: tuple[int, int, int]
    crop_stop: tuple[int, int, int]
    resampled_shape: tuple[int, int, int]
    pad_before: tuple[int, int, int]
    pad_after: tuple[int, int, int]
    model_geometry: Geometry  # the padded model-grid array's geometry

    @property
    def cropped_geometry(self) -> Geometry:
        return crop_geometry(reorient_geometry(self.source, self.reorientation), self.crop_start, self.crop_stop)


def plan_preprocessing(image: Volume, spec: ModelSpec) -> PreprocessPlan:
    r = canonical_reorientation(image.geometry)
    canonical = reorient_geometry(image.geometry, r)
    start, stop = body_bounding_box(reorient_array(image.array, r), spec.body_threshold_hu)
    cropped = crop_geometry(canonical, start, stop)
    shape = resampled_shape(cropped, spec.target_spacing)
    pad_total = [max(0, roi - n) for roi, n in zip(spec.roi_size, shape)]
    pad_before = tuple(p // 2 for p in pad_total)
    pad_after = tuple(p - b for p, b in zip(pad_total, pad_before))
    resampled = resample_geometry(cropped, shape)
    padded = resampled.with_(
        origin=tuple(resampled.index_to_world(-np.asarray(pad_before, dtype=np.float64))),
        shape=tuple(n + b + a for n, b, a in zip(shape, pad_before, pad_after)))
    return PreprocessPlan(image.geometry, r, start, stop, shape, pad_before, pad_after, padded)


def _to_model_grid(array: np.ndarray, plan: PreprocessPlan, mode: str, pad_value: float,
                   device: str = "cpu") -> np.ndarray:
    r = plan.reorientation
    region = reorient_array(array, r)[tuple(slice(a, b) for a, b in zip(plan.crop_start, plan.crop_stop))]
    out = resample_array(region, plan.resampled_shape, mode, device)
    if any(plan.pad_before) or any(plan.pad_after):
        out = np.pad(out, list(zip(plan.pad_before, plan.pad_after)), constant_values=pad_value)
    return out


def prepare_image(image: Volume, spec: ModelSpec, device: str = "cpu") -> tuple[np.ndarray, PreprocessPlan]:
    """A scan in HU -> (float32 array in [0, 1] on the model grid, the plan to undo it).
    `device` is where the resampling runs (a GPU when the backend has one)."""
    plan = plan_preprocessing(image, spec)
    region = _to_model_grid(image.array, plan, "linear", spec.hu_window[0], device)  # float32 from here
    return hu_window(np.array(region, dtype=np.float32, copy=True), spec.hu_window), plan


def prepare_label(label: Volume, plan: PreprocessPlan) -> np.ndarray:
    """A label on the scan's grid -> uint8 label on the model grid (nearest neighbour)."""
    if not label.geometry.same_grid(plan.source, atol=1e-3):
        raise ValueError(f"label grid {label.geometry} differs from the image grid {plan.source}")
    return _to_model_grid(label.array.astype(np.uint8, copy=False), plan, "nearest", 0).astype(np.uint8)


def restore_to_source(channels, plan: PreprocessPlan, fill: float | tuple[float, ...],
                      mode: str = "linear") -> np.ndarray:
    """Map (C, *model_shape) arrays back onto the scan's own grid, (C, *source_shape).

    Linear mode is for logits and probabilities (nnU-Net resamples logits before the argmax);
    nearest is for masks. Voxels outside the body crop get `fill` (one value or one per channel).
    `channels` may be numpy or a torch tensor; a tensor on a GPU is resampled there.
    """
    if channels.ndim != 4 or tuple(channels.shape[1:]) != plan.model_geometry.shape:
        raise ValueError(f"expected (C, *{plan.model_geometry.shape}) on the model grid, got {channels.shape}")
    fills = np.broadcast_to(np.asarray(fill, dtype=np.float64), (channels.shape[0],))
    unpadded = channels[(slice(None),) + tuple(
        slice(b, b + n) for b, n in zip(plan.pad_before, plan.resampled_shape))]
    box = tuple(slice(a, b) for a, b in zip(plan.crop_start, plan.crop_stop))
    import torch

    device = "cpu"
    if isinstance(channels, torch.Tensor):
        device = str(channels.device)
        dtype = np.float32 if channels.dtype.is_floating_point else torch.empty(0, dtype=channels.dtype).numpy().dtype
    else:
        dtype = channels.dtype
    # Laid out in memory like the scans `read_scan` returns and `write_volume` takes (ITK's z, y, x
    # order), so neither restoring nor writing transposes a full-size array.
    source_shape = plan.source.shape
    out = np.empty((channels.shape[0], *source_shape[::-1]), dtype=dtype).transpose(0, 3, 2, 1)
    canonical = reorient_array(out, plan.reorientation)
    for c in range(channels.shape[0]):  # one channel at a time keeps peak memory low
        out[c].fill(fills[c])
        resample_into(canonical[c][box], unpadded[c], mode, device)
    return out
