"""Separable resampling of large scans at given taps, in chunks, on the CPU or a GPU: reading a
scan onto the model grid (`resample`) and filling a scan-grid array from the model grid
(`resample_into`)."""

from __future__ import annotations

import numpy as np

from ceds_deploy.transforms.spacing import Taps


def memory_order(array: np.ndarray) -> tuple[int, ...]:
    """The axes from the largest stride to the smallest: walking them in this order reads memory
    front to back (or back to front along a flipped axis), never across. Scans read by `read_scan`
    are (x, y, z) views of ITK's (z, y, x) buffers, so this is usually (2, 1, 0)."""
    strides = np.abs(np.asarray(array.strides))
    return tuple(int(a) for a in np.argsort(-strides, kind="stable"))


def memory_view(array: np.ndarray) -> tuple[np.ndarray, tuple[int, ...], tuple[int, ...]]:
    """`array` as a view with positive strides, the largest first: base axis k is array axis
    order[k], reversed for k in `flips` (where that axis runs against memory)."""
    order = memory_order(array)
    flips = tuple(k for k, axis in enumerate(order) if array.strides[axis] < 0)
    return walked_as(array, order, flips), order, flips


def walked_as(array: np.ndarray, order: tuple[int, ...], flips: tuple[int, ...]) -> np.ndarray:
    """`array` (the shape of the one `memory_view` gave `order` and `flips`) walked the same way."""
    view = array.transpose(order)
    return np.flip(view, flips) if flips else view


# CPU: the scan is read and filled in chunks of this many voxels. Their 4 MiB float temporaries stay
# in the heap glibc reuses; 32 MiB ones were mapped and faulted in afresh for every chunk.
SCAN_CHUNK_VOXELS = 1 << 20
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


def resample(array: np.ndarray, taps: list[Taps], mode: str, device: str = "cpu", to_host: bool = True):
    """Sample a 3D numpy view (any strides, flips or type) at `taps`, one per axis, on `device`;
    returns a C-contiguous array on the host (with `to_host=False`, a contiguous tensor on `device`):
    float32 for mode 'linear', the input's type for 'nearest'. The view is read in the order it lies
    in memory and only the slab the taps touch is read, so a transposed or flipped view of a large
    scan is never copied."""
    import torch

    base, order, flips = memory_view(array)
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
        empty = np.empty(tuple(len(t[0]) for t in taps), dtype=np.float32 if mode == "linear" else array.dtype)
        return empty if to_host else torch.from_numpy(empty).to(device)
    # Output rows in chunks, so no temporary is larger than a chunk of the scan: each reads its
    # few slowest-axis rows (whole contiguous planes), then narrows them.
    step = _chunk_rows(device, slab[0].size)
    chunks = []
    for start in range(0, rows, step):
        low, high, frac = (part[start : start + step] for part in moved[0])
        a, b = int(min(low.min(), high.min())), int(max(low.max(), high.max())) + 1
        rows_read = slab[a:b] if slab.dtype != np.uint16 else slab[a:b].astype(np.int32)  # torch lacks uint16 gathers
        chunk = _gather(torch.from_numpy(rows_read).to(device), 0, (low - a, high - a, frac))
        chunks.append(_gather(_gather(chunk, 1, moved[1]), 2, moved[2]))
    tensor = torch.cat(chunks) if len(chunks) > 1 else chunks[0]
    if mode == "linear":
        tensor = tensor.float()
    # Back to `array`'s axis order on the device, where the copy is cheapest.
    back = tensor.permute(*(int(a) for a in np.argsort(order))).contiguous()
    if not to_host:
        return back
    out = back.cpu().numpy()
    return out.astype(array.dtype) if out.dtype != array.dtype and mode == "nearest" else out


def resample_into(
    target: np.ndarray, source, taps: list[Taps], device, above: float | None = None, finish=None, labels=None
) -> None:
    """Fill the 3D view `target` (large: a box of the scan's grid) from the torch tensor `source`
    (small: the model grid) at `taps`, one per `target` axis, walking `target` in memory order.
    With `above`, `target` receives (value > above) instead, thresholded on `device`. With `finish`
    (`confidence.ConfidenceFinish` on the device), each chunk is finished on `device` before it crosses, given
    the `labels` (a view laid out as `target`) of its voxels."""
    import torch

    base, order, flips = memory_view(target)
    # the labels walked as `target` is, whatever their own layout
    label_base = walked_as(labels, order, flips) if finish is not None else None
    # Base position p of a flipped axis is target position n - 1 - p: its taps run backwards.
    moved = [tuple(part[::-1].copy() for part in taps[order[k]]) if k in flips else taps[order[k]] for k in range(3)]
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
        pending = None
        if above is not None:
            chunk = chunk > above
        elif finish is not None:
            assert label_base is not None
            chunk, pending = finish(chunk, torch.from_numpy(np.ascontiguousarray(label_base[part])).to(chunk.device))
        writable[part].copy_(chunk.to(writable.dtype) if chunk.dtype != writable.dtype else chunk)
        if pending is not None:
            finish.fix(base[part], pending)
