"""The confidence map's last step: the model's calibration, then rounding to steps of 1/1024.

`Calibration.apply` (np.interp per predicted class) followed by `quantize_confidence` is exact but
costs about 10 s on a 512x512x300 scan (a boolean gather and scatter per class over a transposed
array). `calibrate_and_quantize` gives the same values bit for bit in a few passes: the result is
one of 1025 steps and a monotone function of the raw value within one table segment, so it is
constant over almost every interval of width 2^-16 of the raw value; a table of those intervals per
class answers most voxels, and the rest (intervals holding a step change or a knot) go through the
exact path.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ceds_deploy.machine import usable_cores
from ceds_deploy.spec import Calibration
from ceds_deploy.transforms.resample import memory_view, walked_as

CONFIDENCE_STEPS = 1024  # confidence is stored in steps of 1/1024 (max error 4.9e-4)
BUCKETS = 1 << 16  # intervals of the raw value in the lookup table


def quantize_confidence(conf: np.ndarray) -> np.ndarray:
    """Round a [0, 1] map to multiples of 1/CONFIDENCE_STEPS, in place. The float32 values then
    have short mantissas, so the compressed file is 2.3-2.7x smaller (512x512x300: 127 MB -> 54 MB
    with ISA-L level 1, 129 -> 47 MB with ITK's writer), at an error far below the confidence's own."""
    conf *= CONFIDENCE_STEPS
    np.round(conf, out=conf)
    conf *= 1.0 / CONFIDENCE_STEPS
    return conf


def _exact(values: np.ndarray, predicted: np.ndarray, calibration: Calibration) -> np.ndarray:
    """The reference path on a few voxels: calibrate, then quantize (float32, in place)."""
    calibration.apply(values, predicted)
    return quantize_confidence(values)


def _tables(calibration: Calibration) -> tuple[np.ndarray, np.ndarray]:
    """Per class and interval b (raw values in [b, b+1) / BUCKETS; the last entry is 1.0 itself): the
    final value where it is the same over the whole interval, and whether it is not (exact path)."""
    low = np.arange(BUCKETS + 1, dtype=np.float32) / np.float32(BUCKETS)
    high = np.append(np.nextafter(low[1:], np.float32(0)), np.float32(1))  # the largest float32 in each
    classes = len(calibration.tables)
    values = np.empty((classes, BUCKETS + 1), np.float32)
    mixed = np.empty((classes, BUCKETS + 1), bool)
    for k, table in enumerate(calibration.tables):
        label = np.full(low.shape, k)
        at_low, at_high = _exact(low.copy(), label, calibration), _exact(high.copy(), label, calibration)
        values[k], mixed[k] = at_low, at_low != at_high
        knots = (np.array([x for x, _ in table]) * BUCKETS).astype(np.int64)  # a knot's interval: exact path
        # (not a knot at 1.0: that "interval" is the single value the table holds exactly, and every
        # voxel outside the body box has it)
        mixed[k, np.clip(knots[knots < BUCKETS], 0, BUCKETS)] = True
    return values, mixed


def _in_layout_of(conf: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """The classes laid out in memory as the map (a copy only when they lie otherwise)."""
    if memory_view(conf)[1:] == memory_view(predicted)[1:]:
        return predicted
    copy = np.empty_like(conf, dtype=predicted.dtype)
    copy[...] = predicted
    return copy


CHUNK = 1 << 19  # voxels a pass works on: its temporaries stay in cache (1 << 22: 0.23 s against 0.12 s a scan)


def calibrate_and_quantize(
    conf: np.ndarray, predicted: np.ndarray, calibration: Calibration | None, clip: bool = False
) -> np.ndarray:
    """`calibration.apply(conf, predicted)` (when given), then `quantize_confidence(conf)`, in place on
    a float32 map in [0, 1] with its predicted classes (same shape): the same values bit for bit. With
    `clip`, `np.clip(conf, 0, 1)` first, in the same pass. Any view will do (a box of a restored map):
    it is walked in memory order, in slabs of the axis that changes slowest, on every core."""
    if conf.dtype != np.float32 or conf.shape != predicted.shape or conf.ndim == 0:
        if clip:
            np.clip(conf, 0.0, 1.0, out=conf)
        # the tables hold float32 results of same-shape maps
        return quantize_confidence(conf) if calibration is None else _exact(conf, predicted, calibration)
    view, order, flips = memory_view(conf)
    labels = None if calibration is None else walked_as(_in_layout_of(conf, predicted), order, flips)
    rows = max(1, CHUNK // max(1, int(np.prod(view.shape[1:]))))
    tables = None if calibration is None else _tables(calibration)

    def one_chunk(start: int) -> None:
        part = view[start : start + rows]
        if clip:
            np.clip(part, 0.0, 1.0, out=part)
        if calibration is None or labels is None or tables is None:
            quantize_confidence(part)
            return
        values, mixed = tables
        classes = len(calibration.tables)
        label = labels[start : start + rows]
        bucket = (part * np.float32(BUCKETS)).astype(np.int32)  # exact scaling; truncation is the floor here
        result, exact = values[0][bucket], mixed[0][bucket]  # C-ordered, as `part` is walked
        flat_result, flat_exact, flat_bucket = result.reshape(-1), exact.reshape(-1), bucket.reshape(-1)
        for k in range(1, classes):
            chosen = np.flatnonzero(label == k)
            flat_result[chosen], flat_exact[chosen] = values[k][flat_bucket[chosen]], mixed[k][flat_bucket[chosen]]
        redo = np.flatnonzero(exact | (label >= classes))  # a class without a table keeps apply's answer
        if redo.size:
            where = np.unravel_index(redo, part.shape)
            flat_result[redo] = _exact(part[where], label[where], calibration)
        part[...] = result

    starts = range(0, view.shape[0], rows)
    cores = usable_cores()
    if len(starts) > 1 and cores > 1:  # slabs apart in memory, on every core (numpy leaves the GIL for these)
        with ThreadPoolExecutor(min(cores, len(starts)), thread_name_prefix="ceds-calibrate") as pool:
            list(pool.map(one_chunk, starts))
    else:
        for start in starts:
            one_chunk(start)
    return conf


class ConfidenceFinish:
    """The confidence map's last steps (the clip to [0, 1], then `calibrate_and_quantize`) as it is
    restored, on the body's box only: outside it every voxel holds the same raw value, predicted
    background, whose final value (`fill`) is written once. On the host the box is finished after it
    is resampled (`box`). `on_device`: chunk by chunk on the device that resamples it, before the copy to
    the host (`__call__`, `fix`): quantizing is the same three float32 operations there, calibrating
    looks the same tables up there, and the few voxels of a mixed interval (or of a class without a
    table) come back with their raw values and classes for the exact path. The same float32 values bit
    for bit either way."""

    def __init__(self, calibration: Calibration | None, device, on_device: bool) -> None:
        import torch

        self.calibration, self.on_device = calibration, on_device
        if calibration is not None and on_device:
            values, mixed = _tables(calibration)
            self.values, self.mixed = torch.from_numpy(values).to(device), torch.from_numpy(mixed).to(device)

    def fill(self, raw: float) -> float:
        """The final value of a voxel outside the resampled box: raw `raw`, predicted background."""
        value = np.array([raw], np.float32)
        return float(calibrate_and_quantize(value, np.zeros(1, np.uint8), self.calibration)[0])

    def __call__(self, chunk, labels):
        """(final values of the float32 `chunk`, and None or (flat positions, raw values, classes) for
        the exact path); `labels`: the predicted classes of the same voxels, on the same device."""
        import torch

        chunk = chunk.float().clamp_(0.0, 1.0)
        if self.calibration is None:
            return chunk.mul_(float(CONFIDENCE_STEPS)).round_().mul_(1.0 / CONFIDENCE_STEPS), None
        classes = self.values.shape[0]
        bucket = (chunk * float(BUCKETS)).to(torch.int32)  # exact scaling; truncation is the floor here
        known = labels.clamp(max=classes - 1).long()
        exact = self.mixed[known, bucket] | (labels >= classes)  # a class without a table: apply's answer
        result = self.values[known, bucket]
        del known, bucket
        where = torch.nonzero(exact.flatten()).flatten()
        if where.numel() == 0:
            return result, None
        return result, (
            where.cpu().numpy(),
            chunk.flatten()[where].cpu().numpy(),
            labels.flatten()[where].cpu().numpy(),
        )

    def box(self, target: np.ndarray, labels: np.ndarray) -> None:
        """Finish the resampled box `target` in place on the host, given its predicted classes."""
        calibrate_and_quantize(target, labels, self.calibration, clip=True)

    def fix(self, host: np.ndarray, pending) -> None:
        """Write the exact values of `pending` (from `__call__`) into `host`, the chunk's copy."""
        where, raw, labels = pending
        assert self.calibration is not None  # only calibrating leaves voxels for the exact path
        host[np.unravel_index(where, host.shape)] = _exact(raw, labels, self.calibration)
