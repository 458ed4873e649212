"""Pre-processing of a scan onto the model grid, and the exact inverse back to the scan's grid.

One implementation, used by training, validation and `ceds segment`, with the CEDS code's own
conventions (MONAI `Orientation`, `Spacing`, `ScaleIntensityRange`, `CropForeground`,
`SpatialPad`, then `Invertd` back), so weights trained there see the same input here and the
masks agree with its validation voxel for voxel:
reorient to the canonical LPS axis order (a permutation and flips, no interpolation) ->
resample onto MONAI's Spacing grid (origin kept, exactly the model spacing; linear for images,
nearest for labels, clamped at the edge voxels) -> crop to the bounding box of the voxels above
the body threshold -> HU window to [0, 1] -> pad to at least the ROI.
Only the block of the grid the crop can need is ever resampled, straight from the scan's buffer.
`PreprocessPlan` records every step so `restore_to_source` can undo them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ceds_deploy.spec import ModelSpec
from ceds_deploy.volume import Geometry, Volume

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


MONAI_AFFINE_TOL = 1e-3  # monai.data.utils.AFFINE_TOL
Taps = tuple[np.ndarray, np.ndarray, np.ndarray]  # (low, high, frac): out = in[low] * (1 - frac) + in[high] * frac


@dataclass(frozen=True)
class SpacingGrid:
    """MONAI `Spacing`'s output grid over a reoriented scan, and where it lies in the scan:
    grid voxel i of axis a sits at scan index ``i * scale[a] + offset[a]``."""

    geometry: Geometry
    scale: tuple[float, float, float]
    offset: tuple[float, float, float]

    def taps_into_scan(self, mode: str, start, stop, size) -> list[Taps]:
        """Taps of grid voxels start..stop-1 (per axis) into a reoriented scan of `size`."""
        return [axis_taps(a, b, c, n, mode, o) for a, b, c, n, o in zip(start, stop, self.scale, size, self.offset)]

    def taps_from_scan(self, mode: str, size) -> list[Taps]:
        """Taps of every voxel of a reoriented scan of `size` into the grid (the inverse mapping)."""
        return [axis_taps(0, n, 1.0 / c, m, mode, -o / c)
                for n, c, o, m in zip(size, self.scale, self.offset, self.geometry.shape)]


def spacing_grid(geometry: Geometry, spacing: tuple[float, float, float]) -> SpacingGrid:
    """The grid MONAI's `Spacing` (diagonal=False, scale_extent=False) resamples `geometry` onto,
    computed as `monai.data.utils.zoom_affine` and `compute_shape_offset` do: the directions kept,
    the new spacing (or the old one where it is within 1e-3 of it), the voxel centres' extent
    rounded half to even, and the first voxel on the scan's first voxel, or, where the check that
    this corner is the smallest fails (float noise in an oblique affine), both grids centred.
    Where the extent is an exact n + 0.5 voxels, MONAI's shape follows the float noise of the
    affine its reader made; ours rounds half to even, so such a grid can differ by one voxel.
    Directions are taken as orthonormal (MONAI orthonormalises a sheared affine; scanners do not
    write those)."""
    old = np.asarray(geometry.spacing, dtype=np.float64)
    new = np.where(np.abs(old - np.asarray(spacing)) <= MONAI_AFFINE_TOL, old, np.asarray(spacing, dtype=np.float64))
    source = geometry.affine
    rzs = source[:3, :3]
    zs = np.linalg.cholesky(rzs.T @ rzs).T
    target = np.eye(4)
    target[:3, :3] = rzs @ np.linalg.inv(zs) @ np.diag(np.sign(np.diag(zs)) * new)
    shape = np.asarray(geometry.shape, dtype=np.float64)
    corners = np.stack(np.meshgrid(*[(0.0, n - 1.0) for n in shape], indexing="ij")).reshape(3, -1)
    corners = np.concatenate([corners, np.ones((1, corners.shape[1]))])
    out = np.linalg.solve(target, source) @ corners
    # A 2.5 mm axis at 1 or 3 mm often spans exactly n + 0.5 voxels: round that tie half to even,
    # as exact arithmetic does, not by float noise in the affine (which differs between readers).
    grid_shape = np.round(np.round(np.ptp(out[:3] / out[3], axis=1) + 1.0, 6)).astype(int)
    world = source @ corners
    origin = None
    for i in range(corners.shape[1]):
        if np.allclose(np.min(out[:3] - out[:3, i:i + 1], axis=1), 0.0, rtol=MONAI_AFFINE_TOL):
            origin = world[:3, i]
            break
    if origin is None:
        origin = rzs @ (shape / 2.0) + source[:3, 3] - target[:3, :3] @ (grid_shape / 2.0)
    target[:3, 3] = origin
    index = np.linalg.solve(source, target)  # grid index -> scan index
    grid = geometry.with_(spacing=tuple(float(v) for v in new), origin=tuple(float(v) for v in origin),
                          shape=tuple(max(1, int(n)) for n in grid_shape))
    return SpacingGrid(grid, tuple(float(v) for v in np.diag(index)[:3]), tuple(float(v) for v in index[:3, 3]))


def axis_taps(start: int, stop: int, scale: float, size: int, mode: str, offset: float = 0.0) -> Taps:
    """Where output voxels start..stop-1 of one axis read an input axis of `size` voxels: output
    voxel i lies at input coordinate i * scale + offset, clamped to the edge voxels (MONAI's border
    padding)."""
    x = np.clip(np.arange(start, stop, dtype=np.float64) * scale + offset, 0, size - 1)
    if mode == "nearest":
        low = np.floor(x + 0.5).astype(np.int64)  # ties up, as MONAI's Spacing (nearest) gives
        return low, low, np.zeros(len(x))
    if mode != "linear":
        raise ValueError(f"mode must be 'linear' or 'nearest', got {mode!r}")
    low = np.floor(x).astype(np.int64)
    return low, np.minimum(low + 1, size - 1), x - low


def taps_reaching(taps: Taps, start: int, stop: int) -> tuple[int, int]:
    """The range of outputs whose taps read any of inputs start..stop-1 (taps are monotonic)."""
    low, high, _ = taps
    hit = np.flatnonzero((high >= start) & (low < stop))
    return (int(hit[0]), int(hit[-1]) + 1) if hit.size else (0, 0)


def memory_order(array: np.ndarray) -> tuple[int, int, int]:
    """The last three axes from the largest stride to the smallest: walking them in this order reads
    memory front to back (or back to front along a flipped axis), never across. Scans read by
    `read_scan` are (x, y, z) views of ITK's (z, y, x) buffers, so this is usually (2, 1, 0)."""
    strides = np.abs(np.asarray(array.strides[-3:]))
    return tuple(int(a) for a in np.argsort(-strides, kind="stable"))


def _memory_view(array: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int], tuple[int, ...]]:
    """`array` as a view with positive strides, the largest first: base axis k is array axis
    order[k], reversed for k in `flips` (where that axis runs against memory)."""
    order = memory_order(array)
    view = array.transpose(order)
    flips = tuple(k for k in range(3) if view.strides[k] < 0)
    return (np.flip(view, flips) if flips else view), order, flips


SCAN_CHUNK_VOXELS = 1 << 23  # CPU: the scan is read and filled in chunks of this many voxels
GPU_SCAN_CHUNK_VOXELS = 1 << 28  # GPU: one chunk for any usual scan, bounded for small cards


def _chunk_rows(device, plane_voxels: int) -> int:
    limit = SCAN_CHUNK_VOXELS if str(device) == "cpu" else GPU_SCAN_CHUNK_VOXELS
    return max(1, limit // max(1, plane_voxels))


def _gather(tensor, axis: int, taps: Taps):
    """One axis of separable interpolation on a torch tensor."""
    import torch

    low, high, frac = taps
    device = tensor.device
    lo = tensor.index_select(axis, torch.from_numpy(low).to(device))
    if not frac.any():  # nearest, or every output on an input voxel centre
        return lo
    hi = tensor.index_select(axis, torch.from_numpy(high).to(device))
    shape = [1] * tensor.ndim
    shape[axis] = -1
    weight = torch.from_numpy(frac).to(device, torch.float32).reshape(shape)
    return torch.lerp(lo.float(), hi.float(), weight)


def resample(array: np.ndarray, taps: list[Taps], mode: str, device: str = "cpu") -> np.ndarray:
    """Sample a 3D numpy view (any strides, flips or type) at `taps`, one per axis, on `device`;
    returns a C-contiguous array on the host: float32 for mode 'linear', the input's type for
    'nearest'. The view is read in the order it lies in memory and only the slab the taps touch
    is read, so a transposed or flipped view of a large scan is never copied."""
    import torch

    base, order, flips = _memory_view(array)
    moved = []  # the taps on base axes; a reversed axis reads input n - 1 - i for i
    for k in range(3):
        low, high, frac = taps[order[k]]
        if k in flips:
            low, high = base.shape[k] - 1 - low, base.shape[k] - 1 - high
        moved.append((low, high, frac))
    first = [int(min(t[0].min(), t[1].min())) if len(t[0]) else 0 for t in moved]
    last = [int(max(t[0].max(), t[1].max())) + 1 if len(t[0]) else 1 for t in moved]
    slab = base[tuple(slice(a, b) for a, b in zip(first, last))]
    moved = [(low - a, high - a, frac) for (low, high, frac), a in zip(moved, first)]
    rows = len(moved[0][0])
    if rows == 0 or not len(moved[1][0]) or not len(moved[2][0]):
        return np.empty(tuple(len(t[0]) for t in taps), dtype=np.float32 if mode == "linear" else array.dtype)
    # Output rows in chunks, so no temporary is larger than a chunk of the scan: each reads its
    # few slowest-axis rows (whole contiguous planes), then narrows them.
    step = _chunk_rows(device, slab[0].size)
    chunks = []
    for start in range(0, rows, step):
        low, high, frac = (part[start:start + step] for part in moved[0])
        a, b = int(min(low.min(), high.min())), int(max(low.max(), high.max())) + 1
        rows_read = slab[a:b] if slab.dtype != np.uint16 else slab[a:b].astype(np.int32)  # torch lacks uint16 gathers
        chunk = _gather(torch.from_numpy(rows_read).to(device), 0, (low - a, high - a, frac))
        chunks.append(_gather(_gather(chunk, 1, moved[1]), 2, moved[2]))
    tensor = torch.cat(chunks) if len(chunks) > 1 else chunks[0]
    if mode == "linear":
        tensor = tensor.float()
    # Back to `array`'s axis order on the device, where the copy is cheapest.
    out = tensor.permute(*(int(a) for a in np.argsort(order))).contiguous().cpu().numpy()
    return out.astype(array.dtype) if out.dtype != array.dtype and mode == "nearest" else out


def hu_window(array: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Clip HU to `window` and scale to [0, 1], in place on a float32 array."""
    low, high = window
    np.clip(array, low, high, out=array)
    array -= low
    array *= 1.0 / (high - low)
    return array


def bounding_box(mask: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """The smallest box holding every True voxel of a 3D mask (MONAI's CropForeground, margin 0);
    None when there is none."""
    start, stop = [], []
    for axis in range(3):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        if hits.size == 0:
            return None
        start.append(int(hits[0]))
        stop.append(int(hits[-1]) + 1)
    return tuple(start), tuple(stop)


@dataclass(frozen=True)
class PreprocessPlan:
    """Everything needed to map between a scan's own grid and the grid the network sees."""

    source: Geometry
    reorientation: Reorientation
    spacing_grid: SpacingGrid  # MONAI's Spacing grid over the whole reoriented scan
    crop_start: tuple[int, int, int]  # the body box on `grid`
    crop_stop: tuple[int, int, int]
    pad_before: tuple[int, int, int]
    pad_after: tuple[int, int, int]

    @property
    def grid(self) -> Geometry:
        return self.spacing_grid.geometry

    @property
    def cropped_shape(self) -> tuple[int, int, int]:
        return tuple(b - a for a, b in zip(self.crop_start, self.crop_stop))

    @property
    def model_geometry(self) -> Geometry:
        """The geometry of the padded model-grid array the network sees."""
        corner = np.asarray(self.crop_start, dtype=np.float64) - np.asarray(self.pad_before)
        shape = tuple(n + b + a for n, b, a in zip(self.cropped_shape, self.pad_before, self.pad_after))
        return self.grid.with_(origin=tuple(self.grid.index_to_world(corner)), shape=shape)


def _pad_to_roi(array: np.ndarray, roi: tuple[int, int, int], value: float) -> tuple[np.ndarray, tuple, tuple]:
    """Pad symmetrically (the odd voxel after) to at least `roi`, as MONAI's SpatialPad."""
    total = [max(0, r - n) for r, n in zip(roi, array.shape)]
    before = tuple(p // 2 for p in total)
    after = tuple(p - b for p, b in zip(total, before))
    if any(total):
        array = np.pad(array, list(zip(before, after)), constant_values=value)
    return array, before, after


def prepare_image(image: Volume, spec: ModelSpec, device: str = "cpu") -> tuple[np.ndarray, PreprocessPlan]:
    """A scan in HU -> (float32 array in [0, 1] on the model grid, the plan to undo it).
    `device` is where the resampling runs (a GPU when the backend has one)."""
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
    resampled = resample(source, taps, "linear", device)
    box = bounding_box(resampled > threshold) if resampled.size else None
    if box is None:  # nothing above the threshold: keep the whole block (MONAI would crop to nothing)
        box = ((0, 0, 0), resampled.shape)
    region = hu_window(np.array(resampled[tuple(slice(a, b) for a, b in zip(*box))], copy=True), spec.hu_window)
    del resampled
    array, pad_before, pad_after = _pad_to_roi(region, spec.roi_size, 0.0)
    start = tuple(o + a for (o, _), a in zip(block, box[0]))
    stop = tuple(o + b for (o, _), b in zip(block, box[1]))
    return array, PreprocessPlan(image.geometry, r, grid, start, stop, pad_before, pad_after)


def prepare_label(label: Volume, plan: PreprocessPlan) -> np.ndarray:
    """A label on the scan's grid -> uint8 label on the model grid (nearest neighbour)."""
    if not label.geometry.same_grid(plan.source, atol=1e-3):
        raise ValueError(f"label grid {label.geometry} differs from the image grid {plan.source}")
    source = reorient_array(label.array, plan.reorientation)
    taps = plan.spacing_grid.taps_into_scan("nearest", plan.crop_start, plan.crop_stop, source.shape)
    region = resample(source.astype(np.uint8, copy=False), taps, "nearest")
    return np.pad(region, list(zip(plan.pad_before, plan.pad_after))).astype(np.uint8, copy=False)


def restore_to_source(channels, plan: PreprocessPlan, fill: float | tuple[float, ...],
                      mode: str = "linear") -> np.ndarray:
    """Map (C, *model_shape) arrays back onto the scan's own grid, (C, *source_shape).

    Linear mode is for logits and probabilities (nnU-Net resamples logits before the argmax);
    nearest is for masks. As MONAI's `Invertd`: outside the body crop the grid holds `fill` (one
    value or one per channel), and each scan voxel reads the grid at its own position, clamped to
    the grid's edge. `channels` may be numpy or a torch tensor; a tensor on a GPU is resampled there.
    """
    import torch
    import torch.nn.functional as F

    if channels.ndim != 4 or tuple(channels.shape[1:]) != plan.model_geometry.shape:
        raise ValueError(f"expected (C, *{plan.model_geometry.shape}) on the model grid, got {channels.shape}")
    fills = np.broadcast_to(np.asarray(fill, dtype=np.float64), (channels.shape[0],))
    tensor = channels if isinstance(channels, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(channels))
    device = tensor.device
    floating = tensor.dtype.is_floating_point
    # Linear interpolation makes fractions: only nearest keeps an integer type.
    dtype = np.float32 if floating or mode == "linear" else torch.empty(0, dtype=tensor.dtype).numpy().dtype
    # Laid out in memory like the scans `read_scan` returns and `write_volume` takes (ITK's z, y, x
    # order), so neither restoring nor writing transposes a full-size array.
    out = np.empty((channels.shape[0], *plan.source.shape[::-1]), dtype=dtype).transpose(0, 3, 2, 1)
    canonical = reorient_array(out, plan.reorientation)
    crop = tensor[(slice(None),) + tuple(slice(b, b + n) for b, n in zip(plan.pad_before, plan.cropped_shape))]
    # Grid taps of every canonical scan voxel; those reading only outside the crop keep the fill.
    taps = plan.spacing_grid.taps_from_scan(mode, canonical.shape[1:])
    box = [taps_reaching(t, a, b) for t, a, b in zip(taps, plan.crop_start, plan.crop_stop)]
    # Index the crop with a one-voxel ring of fill, which every tap outside the crop reads.
    local = []
    for t, (a, b), c0, n in zip(taps, box, plan.crop_start, plan.cropped_shape):
        low, high, frac = (part[a:b] for part in t)
        local.append((np.clip(low - c0 + 1, 0, n + 1), np.clip(high - c0 + 1, 0, n + 1), frac))
    for c in range(channels.shape[0]):  # one channel at a time keeps peak memory low
        out[c].fill(fills[c])
        if any(a == b for a, b in box):
            continue
        ring = F.pad(crop[c][None], (1, 1, 1, 1, 1, 1), value=float(fills[c]))[0]
        target = canonical[c][tuple(slice(a, b) for a, b in box)]
        _resample_into(target, ring, local, device)
    return out


def _resample_into(target: np.ndarray, source, taps: list[Taps], device) -> None:
    """Fill the 3D view `target` (large: a box of the scan's grid) from the torch tensor `source`
    (small: the model grid) at `taps`, one per `target` axis, walking `target` in memory order."""
    import torch

    base, order, flips = _memory_view(target)
    # Base position p of a flipped axis is target position n - 1 - p: its taps run backwards.
    moved = [tuple(part[::-1].copy() for part in taps[order[k]]) if k in flips else taps[order[k]]
             for k in range(3)]
    source = source.permute(*order)
    writable = torch.from_numpy(base)
    rows = base.shape[0]
    # Row chunks of the scan: each reads a few grid rows, then widens them, so no temporary is
    # larger than a chunk; the last pass copies whole contiguous rows.
    step = _chunk_rows(device, base[0].size)
    low, high, frac = moved[0]
    for start in range(0, rows, step):
        part = slice(start, min(rows, start + step))
        first, last = int(min(low[part].min(), high[part].min())), int(max(low[part].max(), high[part].max())) + 1
        chunk = _gather(source[first:last], 0, (low[part] - first, high[part] - first, frac[part]))
        chunk = _gather(_gather(chunk, 2, moved[2]), 1, moved[1])
        writable[part].copy_(chunk.to(writable.dtype) if chunk.dtype != writable.dtype else chunk)
