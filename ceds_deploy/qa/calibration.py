"""Fitting the confidence map's calibration (`spec.Calibration`) and drawing its reliability diagram.

Which voxels count: the predicted tumour and the voxels within `margin_mm` of it (`calibration_region`).
The review score (`qa.review.expected_dice`) sums the calibrated map over exactly these voxels: inside
the mask for the tumour that is right, around it for tumour the mask missed. Far from the mask almost
every voxel is right and would drown the few that matter (over the whole body the raw map's ECE is
already small while the tumour's voxels are off by 0.8).

Fitting: isotonic regression (pool adjacent violators) per predicted class, on a histogram of the
stored map's 1/1024 steps, so any number of cases fits in a few kB. Temperature and Platt scaling were
measured first and rejected: the raw map's meaning differs inside and outside the mask (inside, its
ranking is inverted on the demo model), so no monotone map of the logit with one or two parameters
brings the tumour's voxels near their accuracy (benchmarks/RESULTS.md, calibration).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ceds_deploy.machine import usable_cores
from ceds_deploy.qa.metrics import expected_calibration_error, reliability_bins
from ceds_deploy.spec import Calibration
from ceds_deploy.transforms.preprocess import bounding_box

LEVELS = 1024  # the stored confidence map's steps (transforms.confidence.CONFIDENCE_STEPS)
DEFAULT_MARGIN_MM = 10.0


def tumour_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The bounding box of a label mask's tumour (nonzero: labels are never negative) as slices; None
    when there is none (`transforms.preprocess.bounding_box`: no scan-sized temporary)."""
    box = bounding_box(mask)
    return None if box is None else tuple(slice(a, b) for a, b in zip(*box))


def calibration_box(
    mask: np.ndarray, spacing: tuple[float, ...], margin_mm: float = DEFAULT_MARGIN_MM
) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """(the box of the mask's bounding box plus the margin, the calibration region inside that box);
    None when nothing is predicted. Outside the box the region is all False. The margin is measured
    around each of the tumour's pieces (`tumour_pieces`) in its own box: a mask scattered over the
    scan spans a box far larger than the voxels near it."""
    tight = tumour_box(mask)
    if tight is None:
        return None
    reach = [int(np.ceil(margin_mm / s)) for s in spacing]  # the distance transform runs in the box only
    inside = _grown(tight, reach, mask.shape)
    region = np.zeros(tuple(s.stop - s.start for s in inside), dtype=bool)
    for piece in tumour_pieces(mask, tight, reach):
        grown = _grown(piece, reach, mask.shape)
        near = within_margin(mask[grown] == 0, spacing, margin_mm)
        local = tuple(slice(g.start - i.start, g.stop - i.start) for g, i in zip(grown, inside))
        region[local] |= near  # within the margin of the tumour = of any of its pieces
    return inside, region


def _grown(box: tuple[slice, ...], reach: list[int], shape: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(max(0, b.start - r), min(n, b.stop + r)) for b, r, n in zip(box, reach, shape))


def _volume(box: tuple[slice, ...]) -> int:
    return int(np.prod([b.stop - b.start for b in box]))


def tumour_pieces(mask: np.ndarray, tight: tuple[slice, ...], reach: list[int]) -> list[tuple[slice, ...]]:
    """Boxes that together hold every tumour voxel inside `tight` (the tumour's bounding box): a box is
    cut along the empty planes between its runs of tumour, one axis at a time, while that shrinks the
    boxes grown by `reach`. Max reductions only; one box for a compact tumour."""
    pieces: list[tuple[slice, ...]] = []
    todo = [tight]
    while todo:
        box = todo.pop()
        for axis in range(mask.ndim):
            other = tuple(a for a in range(mask.ndim) if a != axis)
            present = mask[box].max(axis=other) > 0
            edges = np.flatnonzero(np.diff(present.astype(np.int8)))  # a run ends after each falling edge
            if not edges.size:
                continue
            starts = np.concatenate([[0], edges[1::2] + 1])
            stops = np.concatenate([edges[::2] + 1, [present.size]])
            parts = []
            for a, b in zip(starts, stops):
                cut = box[:axis] + (slice(box[axis].start + int(a), box[axis].start + int(b)),) + box[axis + 1 :]
                inner = tumour_box(mask[cut])
                assert inner is not None  # each run holds tumour
                parts.append(tuple(slice(c.start + i.start, c.start + i.stop) for c, i in zip(cut, inner)))
            grown = sum(_volume(_grown(p, reach, mask.shape)) for p in parts)
            if grown < _volume(_grown(box, reach, mask.shape)):
                todo.extend(parts)
                break
        else:
            pieces.append(box)
    return pieces


def within_margin(background: np.ndarray, spacing: tuple[float, ...], margin_mm: float) -> np.ndarray:
    """`distance_transform_edt(background, spacing) <= margin_mm`, exactly, in slabs along the first
    axis on every core (scipy's transform leaves the GIL; a scattered mask's box holds millions of
    voxels). Each slab is transformed with `margin_mm` of neighbours on both sides: every tumour voxel
    within the margin of a slab's voxel lies inside that, so the threshold is the same."""
    from concurrent.futures import ThreadPoolExecutor

    from scipy import ndimage

    sampling = [float(s) for s in spacing]
    overlap = int(np.ceil(margin_mm / sampling[0]))
    length = background.shape[0]
    cores = usable_cores()
    slabs = max(1, min(cores, length // (4 * overlap + 1)))  # each much thicker than its overlap
    bounds = np.linspace(0, length, slabs + 1).astype(int)
    region = np.empty(background.shape, dtype=bool)

    def slab(k: int) -> None:
        start, stop = int(bounds[k]), int(bounds[k + 1])
        low, high = max(0, start - overlap), min(length, stop + overlap)
        part = background[low:high]
        if part.all():  # no tumour within the margin of this slab (the transform has no feature to measure to)
            region[start:stop] = False
            return
        # The nearest tumour voxel's index, then the distance as scipy computes it (the same float64
        # operations in the same order) one axis at a time: scipy's own holds every offset at once.
        nearest = ndimage.distance_transform_edt(part, sampling=sampling, return_distances=False, return_indices=True)
        own = nearest[:, start - low : stop - low]  # the slab's voxels, not its overlap
        squared: np.ndarray | None = None
        for axis in range(part.ndim):
            first = start - low if axis == 0 else 0
            positions = np.arange(first, first + own.shape[axis + 1], dtype=own.dtype)
            along = positions.reshape([-1 if a == axis else 1 for a in range(part.ndim)])
            offset = (own[axis] - along).astype(np.float64)
            offset *= sampling[axis]
            np.multiply(offset, offset, out=offset)
            squared = offset if squared is None else np.add(squared, offset, out=squared)
        assert squared is not None
        region[start:stop] = np.sqrt(squared, out=squared) <= margin_mm

    if slabs == 1:
        slab(0)
    else:
        with ThreadPoolExecutor(slabs, thread_name_prefix="ceds-margin") as pool:
            list(pool.map(slab, range(slabs)))
    return region


def calibration_region(mask: np.ndarray, spacing: tuple[float, ...], margin_mm: float = DEFAULT_MARGIN_MM):
    """The voxels the calibration and the review score look at: the predicted tumour (mask > 0) and every
    voxel within `margin_mm` (Euclidean, in mm) of it; all False when nothing is predicted."""
    region = np.zeros(mask.shape, dtype=bool)
    found = calibration_box(mask, spacing, margin_mm)
    if found is not None:
        region[found[0]] = found[1]
    return region


@dataclass
class CalibrationSamples:
    """Per predicted class and confidence step: how many voxels, and how many of them were right."""

    num_classes: int = 2
    voxels: np.ndarray = field(init=False)
    right: np.ndarray = field(init=False)
    cases: int = 0

    def __post_init__(self) -> None:
        self.voxels = np.zeros((self.num_classes, LEVELS + 1), dtype=np.float64)
        self.right = np.zeros_like(self.voxels)

    def add(self, mask: np.ndarray, confidence: np.ndarray, label: np.ndarray, region: np.ndarray) -> None:
        """One case: its mask, raw confidence map and true label, counted over `region`."""
        predicted = mask[region].astype(np.int64)
        step = np.clip(np.rint(confidence[region] * LEVELS), 0, LEVELS).astype(np.int64)
        right = predicted == label[region].astype(np.int64)
        index = predicted * (LEVELS + 1) + step
        size = self.voxels.size
        self.voxels += np.bincount(index, minlength=size).reshape(self.voxels.shape)
        self.right += np.bincount(index, right, minlength=size).reshape(self.voxels.shape)
        self.cases += 1

    def histogram(self, calibration: Calibration | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(confidence, fraction right, voxels) per filled step and class, the confidence calibrated
        when a calibration is given: the input of `expected_calibration_error` and the diagram."""
        steps = np.arange(LEVELS + 1) / LEVELS
        conf, frac, weight = [], [], []
        for k in range(self.num_classes):
            filled = self.voxels[k] > 0
            values = steps[filled].copy()
            if calibration is not None:
                calibration.apply(values, np.full(values.shape, k))
            conf.append(values)
            frac.append(self.right[k, filled] / self.voxels[k, filled])
            weight.append(self.voxels[k, filled])
        return np.concatenate(conf), np.concatenate(frac), np.concatenate(weight)

    def ece(self, calibration: Calibration | None = None) -> float:
        return expected_calibration_error(*self.histogram(calibration))


def pool_adjacent_violators(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The weighted least-squares non-decreasing fit to `values` (in their order)."""
    means: list[float] = []
    totals: list[float] = []
    counts: list[int] = []
    for v, w in zip(values.tolist(), weights.tolist()):
        means.append(v)
        totals.append(w)
        counts.append(1)
        while len(means) > 1 and means[-2] > means[-1]:
            v2, w2, c2 = means.pop(), totals.pop(), counts.pop()
            merged = totals[-1] + w2
            means[-1] = (means[-1] * totals[-1] + v2 * w2) / merged
            totals[-1] = merged
            counts[-1] += c2
    return np.repeat(means, counts)


def _table(steps: np.ndarray, fitted: np.ndarray) -> tuple[tuple[float, float], ...]:
    """Knots of the piecewise-linear table: the ends of each flat run of the isotonic fit (between runs
    the table interpolates), extended flat to raw 0 and 1."""
    keep = np.ones(steps.size, dtype=bool)
    keep[1:-1] = (fitted[1:-1] != fitted[:-2]) | (fitted[1:-1] != fitted[2:])
    xs, ys = list(steps[keep]), list(fitted[keep])
    if xs[0] > 0.0:
        xs.insert(0, 0.0)
        ys.insert(0, ys[0])
    if xs[-1] < 1.0:
        xs.append(1.0)
        ys.append(ys[-1])
    return tuple((float(x), float(min(max(y, 0.0), 1.0))) for x, y in zip(xs, ys))


def fit_isotonic(samples: CalibrationSamples, margin_mm: float = DEFAULT_MARGIN_MM) -> Calibration:
    """One isotonic table per predicted class; a class without voxels keeps the identity."""
    steps = np.arange(LEVELS + 1) / LEVELS
    tables: list[tuple[tuple[float, float], ...]] = []
    for k in range(samples.num_classes):
        filled = samples.voxels[k] > 0
        if not filled.any():
            tables.append(((0.0, 0.0), (1.0, 1.0)))
            continue
        fitted = pool_adjacent_violators(
            samples.right[k, filled] / samples.voxels[k, filled], samples.voxels[k, filled]
        )
        tables.append(_table(steps[filled], fitted))
    return Calibration(tuple(tables), "isotonic", margin_mm, samples.cases)


def reliability_png(curves: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], title: str = "") -> bytes:
    """A reliability diagram as PNG bytes: per curve (label -> `CalibrationSamples.histogram()`) the
    fraction right against the mean confidence in each of the 15 ECE bins, and the diagonal."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 5.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfectly calibrated")
    for label, (conf, frac, weight) in curves.items():
        total, mean_conf, mean_right = reliability_bins(conf, frac, weight)
        filled = total > 0
        ece = expected_calibration_error(conf, frac, weight)
        (line,) = ax.plot(mean_conf[filled], mean_right[filled], linewidth=1.5, label=f"{label} (ECE {ece:.3f})")
        # Marker area shows each bin's share of the voxels: the ECE weighs bins by it.
        share = total[filled] / max(total.sum(), 1)
        ax.scatter(mean_conf[filled], mean_right[filled], s=8 + 400 * share, color=line.get_color(), alpha=0.8)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (mean in bin)", ylabel="fraction of voxels right")
    ax.set_title((title or "reliability (15 bins)") + "\nmarker area: the bin's share of the voxels", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def write_reliability_png(path: Path, curves: dict, title: str = "") -> Path:
    from ceds_deploy.io import write_atomic_bytes

    write_atomic_bytes(Path(path), reliability_png(curves, title))
    return Path(path)
