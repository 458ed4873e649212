"""From stitched model-grid outputs back to the scan's own grid: the exact inverse of `preprocess`
(as MONAI's `Invertd`), then the mask, the confidence map and optionally the probabilities."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ceds_deploy.memory import fresh_zeros
from ceds_deploy.spec import Calibration
from ceds_deploy.transforms.confidence import ConfidenceFinish
from ceds_deploy.transforms.orientation import reorient_array
from ceds_deploy.transforms.preprocess import GridMapping
from ceds_deploy.transforms.resample import resample_into
from ceds_deploy.transforms.spacing import Taps, taps_reaching

BACKGROUND_LOGIT = 10.0  # voxels no window covered (air) are confidently background
UNCOVERED_CONFIDENCE = 1.0


def restore_to_source(
    channels,
    mapping: GridMapping,
    fill: float | tuple[float, ...],
    mode: str = "linear",
    above: float | None = None,
    finish: ConfidenceFinish | None = None,
    labels: np.ndarray | None = None,
) -> np.ndarray:
    """Map (C, *model_shape) arrays back onto the scan's own grid, (C, *source_shape).

    Linear mode is for logits and probabilities (nnU-Net resamples logits before the argmax);
    nearest is for masks. As MONAI's `Invertd`: outside the body crop the grid holds `fill` (one
    value or one per channel), and each scan voxel reads the grid at its own position, clamped to
    the grid's edge. `channels` may be numpy or a torch tensor; a tensor on a GPU is resampled there.
    With `above`, each channel comes back as uint8 (value > above), thresholded where it was
    resampled: from a GPU only the mask crosses to the host. With `finish` (one channel), the
    confidence map's last steps are done where it is resampled, given the restored `labels`
    (the predicted classes on the scan's grid).
    """
    import torch.nn.functional as F

    if channels.ndim != 4 or tuple(channels.shape[1:]) != mapping.model_geometry.shape:
        raise ValueError(f"expected (C, *{mapping.model_geometry.shape}) on the model grid, got {channels.shape}")
    fills = np.broadcast_to(np.asarray(fill, dtype=np.float64), (channels.shape[0],))
    tensor = channels if isinstance(channels, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(channels))
    device = tensor.device
    floating = tensor.dtype.is_floating_point
    # Linear interpolation makes fractions: only nearest keeps an integer type.
    dtype: type | np.dtype = (
        np.float32 if floating or mode == "linear" else torch.empty(0, dtype=tensor.dtype).numpy().dtype
    )
    # What the scan's voxels outside the crop hold: the fill, or whether it is above the threshold.
    outside: np.ndarray = fills if above is None else (fills > above).astype(np.uint8)
    if finish is not None:
        outside = np.array([finish.fill(float(f)) for f in fills], np.float32)
        assert labels is not None and channels.shape[0] == 1, "finish: one channel, with its labels"
        label_view = reorient_array(labels[None], mapping.reorientation)
    if above is not None:
        dtype = np.uint8
    # Laid out in memory like the scans `read_scan` returns and `write_volume` takes (ITK's z, y, x
    # order), so neither restoring nor writing transposes a full-size array.
    # Zero already (`_output_zeros`): a zero fill writes nothing, and on the CPU the untouched pages
    # of a mostly empty mask are never even allocated.
    out = _output_zeros((channels.shape[0], *mapping.source.shape[::-1]), dtype, device).transpose(0, 3, 2, 1)
    canonical = reorient_array(out, mapping.reorientation)
    crop = tensor[(slice(None),) + tuple(slice(b, b + n) for b, n in zip(mapping.pad_before, mapping.cropped_shape))]
    # Grid taps of every canonical scan voxel; those reading only outside the crop keep the fill.
    taps = mapping.spacing_grid.taps_from_scan(mode, canonical.shape[1:])
    box = [taps_reaching(t, a, b) for t, a, b in zip(taps, mapping.crop_start, mapping.crop_stop)]
    # Index the crop with a one-voxel ring of fill, which every tap outside the crop reads.
    local: list[Taps] = []
    for t, (a, b), c0, n in zip(taps, box, mapping.crop_start, mapping.cropped_shape):
        low, high, frac = (part[a:b] for part in t)
        local.append((np.clip(low - c0 + 1, 0, n + 1), np.clip(high - c0 + 1, 0, n + 1), frac))
    for c in range(channels.shape[0]):  # one channel at a time keeps peak memory low
        if any(a == b for a, b in box):
            fill_around(canonical[c], [(0, 0)] * 3, outside[c])
            continue
        ring = F.pad(crop[c][None], (1, 1, 1, 1, 1, 1), value=float(fills[c]))[0]
        reach = [(0, b - a) for a, b in box]
        if above is not None and not fills[c] > above:
            found = _reaching_above(ring, above, local)
            if found is None:  # nothing above the threshold: every voxel stays `outside`
                fill_around(canonical[c], [(0, 0)] * 3, outside[c])
                continue
            reach = found
        inner = [(a + r0, a + r1) for (a, _), (r0, r1) in zip(box, reach)]
        fill_around(canonical[c], inner, outside[c])
        target = canonical[c][tuple(slice(a, b) for a, b in inner)]
        narrowed = [tuple(part[r0:r1] for part in t) for t, (r0, r1) in zip(local, reach)]
        if finish is None:
            resample_into(target, ring, narrowed, device, above)
            continue
        box_labels = label_view[0][tuple(slice(a, b) for a, b in inner)]
        if finish.on_device:  # each chunk finished before it crosses
            resample_into(target, ring, narrowed, device, above, finish, box_labels)
        else:
            resample_into(target, ring, narrowed, device, above)
            finish.box(target, box_labels)
    return out


def _output_zeros(shape: tuple[int, ...], dtype, device) -> np.ndarray:
    """The restored array: on fresh small pages (`fresh_zeros`); for a GPU's result, in pinned memory
    from PyTorch's cache of it (reused case after case), which the copy from the GPU fills at full
    speed where fresh pages are faulted in during the copy."""
    if device.type != "cuda":
        return fresh_zeros(shape, dtype)
    pinned = torch.zeros(shape, dtype=torch.from_numpy(np.empty(0, dtype)).dtype, pin_memory=True)
    return pinned.numpy()


def fill_around(array: np.ndarray, box: list[tuple[int, int]], value) -> None:
    """Set every voxel of the fresh (zero) 3D `array` outside `box` ((start, stop) per axis) to
    `value`, each once (the box itself is about to be written); nothing for a zero `value`."""
    if value == 0:
        return
    (a0, b0), (a1, b1), (a2, b2) = box
    middle = array[a0:b0]
    for part in (array[:a0], array[b0:], middle[:, :a1], middle[:, b1:], middle[:, a1:b1, :a2], middle[:, a1:b1, b2:]):
        if part.size:  # torch fills on every core (first touches of fresh pages, mostly); any axis order will do
            flipped = tuple(k for k in range(part.ndim) if part.strides[k] < 0)
            torch.from_numpy(np.flip(part, flipped) if flipped else part).fill_(float(value))


def _reaching_above(ring, above: float, local: list[Taps]) -> list[tuple[int, int]] | None:
    """Per axis, the range of scan positions whose taps read a grid voxel above `above`; None when
    none is. Every other voxel interpolates between values at or below it (the fill too), so it is
    not above: only the tumour's surroundings are resampled, not the whole body."""
    hits = torch.nonzero(ring > above)
    if hits.shape[0] == 0:
        return None
    first, last = hits.min(0).values.tolist(), hits.max(0).values.tolist()
    reach = [taps_reaching(t, low, high + 1) for t, low, high in zip(local, first, last)]
    return None if any(r0 == r1 for r0, r1 in reach) else reach


@dataclass
class RestoredPrediction:
    """`restore_prediction`'s result on the scan's grid: `mask` (uint8 labels), `confidence` (float32 in
    [0, 1]) and, when kept, `probabilities` (the tumour probability for 2 classes, else (C, ...)); else None."""

    mask: np.ndarray  # uint8 labels on the scan's grid
    confidence: np.ndarray  # float32 in [0, 1]
    probabilities: np.ndarray | None  # float32 tumour probability (2 classes) or (C, ...) otherwise


def restore_prediction(
    seg_logits: torch.Tensor,
    confidence: torch.Tensor,
    mapping: GridMapping,
    keep_probabilities: bool = False,
    largest_component: bool = False,
    calibration: Calibration | None = None,
    finish_on_device: bool | None = None,
) -> RestoredPrediction:
    """Resample logits (not labels) back to the scan's grid, then take the argmax (as nnU-Net),
    optionally keeping only the largest tumour region. The model spec's `calibration` turns the
    confidence into P(the final mask is right) here, after the network, for every backend alike.
    Tensors on a GPU are resampled there, and the confidence map finished there too
    (`finish_on_device`: by default on a GPU; the same values either way); the results are numpy
    arrays on the host."""
    seg = seg_logits.detach()
    if seg.shape[0] == 2:
        # With two classes, argmax == (l1 - l0 > 0): restore one channel instead of two.
        diff = (seg[1] - seg[0])[None]
        del seg
        probabilities = None
        if keep_probabilities:
            restored = restore_to_source(diff, mapping, fill=-2 * BACKGROUND_LOGIT)[0]
            mask = (restored > 0).astype(np.uint8)
            probabilities = torch.sigmoid(torch.from_numpy(restored)).numpy()
            del restored
        else:  # thresholded where it is resampled (from a GPU a uint8 mask crosses, not float logits)
            mask = restore_to_source(diff, mapping, fill=-2 * BACKGROUND_LOGIT, above=0.0)[0]
    else:
        fills = [BACKGROUND_LOGIT] + [-BACKGROUND_LOGIT] * (seg.shape[0] - 1)
        restored = restore_to_source(seg, mapping, fill=tuple(fills))
        mask = np.argmax(restored, axis=0).astype(np.uint8)
        probabilities = torch.softmax(torch.from_numpy(restored), 0).numpy() if keep_probabilities else None
    if largest_component:
        mask = keep_largest_component(mask)
    confidence = confidence.detach()
    if finish_on_device is None:
        finish_on_device = confidence.device.type == "cuda"
    finish = ConfidenceFinish(calibration, confidence.device, on_device=finish_on_device)
    conf = restore_to_source(confidence, mapping, fill=UNCOVERED_CONFIDENCE, finish=finish, labels=mask)[0]
    return RestoredPrediction(mask, conf, probabilities)


def keep_largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep only the largest 26-connected foreground component (nnU-Net's optional post-processing,
    for tasks with one lesion per scan); uint8 like the input."""
    from scipy import ndimage

    labels, count = ndimage.label(mask > 0, structure=np.ones((3, 3, 3), bool))
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return np.where(labels == int(np.argmax(sizes)), mask, 0).astype(mask.dtype)
