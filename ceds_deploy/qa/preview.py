"""A PNG per case for a quick human look: axial, coronal and sagittal slices through the mass.

Display conventions (radiological, whatever the scan's array layout): the arrays are brought to
the LPS axis order with `canonical_reorientation` (a view: permutation and flips, no copy, no
interpolation; oblique scans are shown on their nearest patient axes), then
- axial: anterior at the top, patient left on the image right;
- coronal: superior at the top, patient left on the image right;
- sagittal: superior at the top, anterior on the left.
Pixels have their physical proportions (voxel spacing). The CT is shown in a mediastinal window
(W 400, L 40); the predicted mask as a red outline, the ground truth (when given) as a green
outline, and the confidence map as a heat overlay whose opacity grows as confidence falls below 1
(fully confident voxels are transparent). The overlay is shown only near the outlines (within
`CONFIDENCE_NEAR_MM` of the predicted or true mask, fading out over `CONFIDENCE_FADE_MM`), where
it says something about the mass; elsewhere it would tint the whole body crop, ending in a
rectangle, and show the sliding windows' edges. Each panel is titled with its slice number
("axial slice 45 of 90, from the feet") and its position in scanner coordinates.

Only the three 2D slices are ever copied out of the volume, so a 512x512x300 scan renders in well
under a second. Matplotlib is used through `Figure` + `FigureCanvasAgg` only: no pyplot, no global
backend switch, nothing left behind in the caller's matplotlib state.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ceds_deploy.errors import ConfigError
from ceds_deploy.qa.calibration import tumour_box
from ceds_deploy.volume import Geometry, Volume

MEDIASTINAL_WINDOW = (40.0, 400.0)  # (level, width) in HU
PLANES = ("axial", "coronal", "sagittal")
PRED_COLOUR = "#ff2a2a"
LABEL_COLOUR = "#2aff5a"
CONFIDENCE_CMAP = "plasma"
MAX_OVERLAY_ALPHA = 0.85
OVERLAY_GAIN = 1.3  # opacity = min(MAX, GAIN * (1 - confidence))
FIGURE_COLOUR = "#262626"  # not black, so the field of view (black air) stands out
CONFIDENCE_NEAR_MM = 10.0  # the overlay is drawn within this distance of either outline (in-plane) ...
CONFIDENCE_FADE_MM = 4.0  # ... and fades out over this last stretch, so it has no hard edge
# Per plane: the patient direction its slices are counted along, and the end slice 1 is at.
SLICE_AXIS_WORDS = {
    "axial": ("head-foot", "from the feet"),
    "coronal": ("front-back", "from the front"),
    "sagittal": ("right-left", "from the right"),
}


# ---------------------------------------------------------------- where to cut


def _mass_centre(mask: np.ndarray, spacing) -> tuple[int, ...] | None:
    """The voxel nearest the centroid of `mask` that belongs to it (so the planes cut the mass even
    when the centroid itself falls outside, as for a ring or two blobs); None if `mask` is empty."""
    box = tumour_box(mask)
    if box is None:
        return None
    idx = np.argwhere(mask[box]) + np.array([b.start for b in box])
    centroid = idx.mean(axis=0)
    rounded = np.rint(centroid).astype(int)
    if mask[tuple(rounded)]:
        return tuple(int(v) for v in rounded)
    d2 = (((idx - centroid) * np.asarray(spacing, dtype=float)) ** 2).sum(axis=1)
    return tuple(int(v) for v in idx[int(np.argmin(d2))])


def preview_centre(mask: np.ndarray, label: np.ndarray | None = None, spacing=(1.0, 1.0, 1.0)) -> tuple[int, ...]:
    """Array index (on the scan's own grid) the three planes pass through.

    The centre of the predicted mass: its centroid, or the mask voxel nearest to it (in mm) when the
    centroid falls outside the mask. If the prediction is empty, the same for the label; if that is
    empty or absent too, the volume centre.
    """
    for candidate in (mask, label):
        if candidate is not None:
            centre = _mass_centre(candidate, spacing)
            if centre is not None:
                return centre
    return tuple(int(n) // 2 for n in mask.shape)


# ---------------------------------------------------------------- display orientation


@dataclass(frozen=True)
class PlaneView:
    """One panel: which canonical (LPS-ordered) axis is fixed, and the on-screen pixel size."""

    name: str
    fixed_axis: int  # canonical axis held constant: 2 axial, 1 coronal, 0 sagittal
    index: int  # slice index along that canonical axis
    row_mm: float
    col_mm: float
    slices: int = 0  # how many slices there are along that axis

    def title(self, position_mm: float) -> str:
        """E.g. "axial slice 45 of 90 (from the feet)" over "head-foot position -790.0 mm" (scanner
        coordinates, which the figure's footnote says)."""
        direction, start = SLICE_AXIS_WORDS[self.name]
        return (
            f"{self.name} slice {self.index + 1} of {self.slices} ({start})\n{direction} position {position_mm:.1f} mm"
        )


def display_slice(array: np.ndarray, geometry: Geometry, plane: str, centre: tuple[int, ...]) -> np.ndarray:
    """The 2D slice of `array` (on `geometry`'s grid) through source index `centre`, oriented for display:
    row 0 is the top of the screen, column 0 its left (see the module docstring). A small copy."""
    from ceds_deploy.transforms.orientation import canonical_reorientation, reorient_array

    r = canonical_reorientation(geometry)
    canonical = reorient_array(array, r)  # a view, axes (L, P, S)
    c = _canonical_index(geometry, centre)
    if plane == "axial":  # (x, y) at z -> rows y (anterior first), cols x (patient right..left)
        out = canonical[:, :, c[2]].T
    elif plane == "coronal":  # (x, z) at y -> rows z descending (superior first), cols x
        out = canonical[:, c[1], :].T[::-1, :]
    elif plane == "sagittal":  # (y, z) at x -> rows z descending, cols y (anterior first)
        out = canonical[c[0], :, :].T[::-1, :]
    else:
        raise ConfigError(f"plane must be one of {', '.join(PLANES)}, got {plane!r}")
    return np.array(out)


def _canonical_index(geometry: Geometry, centre) -> tuple[int, ...]:
    from ceds_deploy.transforms.orientation import canonical_reorientation

    r = canonical_reorientation(geometry)
    out = []
    for a in range(3):
        i = int(centre[r.perm[a]])
        out.append(geometry.shape[r.perm[a]] - 1 - i if r.flip[a] else i)
    return tuple(out)


def plane_views(geometry: Geometry, centre) -> list[PlaneView]:
    from ceds_deploy.transforms.orientation import canonical_reorientation

    r = canonical_reorientation(geometry)
    s = [geometry.spacing[p] for p in r.perm]  # canonical spacing (x, y, z)
    n = [geometry.shape[p] for p in r.perm]  # canonical shape
    c = _canonical_index(geometry, centre)
    return [
        PlaneView("axial", 2, c[2], s[1], s[0], n[2]),
        PlaneView("coronal", 1, c[1], s[2], s[0], n[1]),
        PlaneView("sagittal", 0, c[0], s[2], s[1], n[0]),
    ]


# ---------------------------------------------------------------- drawing


def _window(slice_: np.ndarray) -> np.ndarray:
    level, width = MEDIASTINAL_WINDOW
    return np.clip((slice_.astype(np.float32) - (level - width / 2)) / width, 0.0, 1.0)


def near_outlines(
    masks: list[np.ndarray | None],
    row_mm: float,
    col_mm: float,
    near_mm: float = CONFIDENCE_NEAR_MM,
    fade_mm: float = CONFIDENCE_FADE_MM,
) -> np.ndarray:
    """Weight in [0, 1] per pixel of a 2D slice: 1 within `near_mm - fade_mm` of any of `masks`,
    falling to 0 at `near_mm` (in-plane distances in mm); all 0 when the masks are empty."""
    from scipy.ndimage import distance_transform_edt

    present = [m for m in masks if m is not None]
    union = np.logical_or.reduce(present) if present else None
    if union is None or not union.any():
        shape = present[0].shape if present else (0, 0)
        return np.zeros(shape, np.float32)
    distance = distance_transform_edt(~union, sampling=(row_mm, col_mm))
    return np.clip((near_mm - distance) / fade_mm, 0.0, 1.0).astype(np.float32)


def render_preview(
    image: Volume,
    mask: np.ndarray,
    confidence: np.ndarray | None,
    label: np.ndarray | None = None,
    title: str = "",
    dpi: int = 100,
) -> bytes:
    """The preview as PNG bytes (see `write_preview`)."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    geometry = image.geometry
    for name, array in (("mask", mask), ("confidence", confidence), ("label", label)):
        if array is not None and tuple(array.shape) != geometry.shape:
            raise ConfigError(f"{name} shape {tuple(array.shape)} does not match the scan's {geometry.shape}")
    centre = preview_centre(mask, label, geometry.spacing)
    views = plane_views(geometry, centre)
    slices: dict[str, dict[str, Any]] = {}
    for view in views:
        slices[view.name] = {
            "image": display_slice(image.array, geometry, view.name, centre),
            "mask": display_slice(mask, geometry, view.name, centre) > 0,
            "confidence": None if confidence is None else display_slice(confidence, geometry, view.name, centre),
            "label": None if label is None else display_slice(label, geometry, view.name, centre) > 0,
        }

    extents = {
        v.name: (slices[v.name]["image"].shape[1] * v.col_mm, slices[v.name]["image"].shape[0] * v.row_mm)
        for v in views
    }  # (width, height) in mm
    tallest = max(h for _, h in extents.values())
    panel_h = 4.2  # inches for the tallest panel
    widths = [panel_h * extents[v.name][0] / tallest for v in views]
    fig_w = float(np.clip(sum(widths) + 1.4, 6.0, 18.0))
    fig = Figure(figsize=(fig_w, panel_h + 1.1), dpi=dpi, facecolor=FIGURE_COLOUR)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(
        1, 4, width_ratios=[*widths, 0.12 * panel_h], left=0.02, right=0.93, top=0.87, bottom=0.05, wspace=0.06
    )
    cmap = colormaps[CONFIDENCE_CMAP]
    norm = Normalize(0.0, 1.0)
    world = geometry.index_to_world(np.asarray(centre, dtype=float))
    for k, view in enumerate(views):
        ax = fig.add_subplot(grid[0, k])
        _draw_panel(ax, view, slices[view.name], extents[view.name], cmap, norm)
        ax.set_title(view.title(world[view.fixed_axis]), color="white", fontsize=9)
    cax = fig.add_subplot(grid[0, 3])
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=cax)
    bar.set_label(
        f"confidence (shown within {CONFIDENCE_NEAR_MM:.0f} mm of the outlines; fades out towards 1)",
        color="white",
        fontsize=8,
    )
    bar.ax.tick_params(colors="white", labelsize=7)
    handles = [Line2D([], [], color=PRED_COLOUR, lw=1.5, label="prediction")]
    if label is not None:
        handles.append(Line2D([], [], color=LABEL_COLOUR, lw=1.5, label="ground truth"))
    fig.legend(handles=handles, loc="upper right", ncol=len(handles), fontsize=8, frameon=False, labelcolor="white")
    fig.suptitle(title or "preview", color="white", fontsize=11, x=0.02, ha="left")
    fig.text(
        0.02,
        0.012,
        "positions in mm are scanner (patient) coordinates, as in the scan's header",
        color="#bbbbbb",
        fontsize=7,
        ha="left",
        va="bottom",
    )
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor=fig.get_facecolor())
    return buffer.getvalue()


def _draw_panel(ax: Any, view: Any, data: dict[str, Any], size_mm: tuple[float, float], cmap: Any, norm: Any) -> None:
    """One plane: the CT in the mediastinal window, the confidence near the outlines, the outlines
    (ground truth, then prediction on top) and the patient-direction letters."""
    w, h = size_mm
    extent = (0.0, w, h, 0.0)
    ax.imshow(
        _window(data["image"]), cmap="gray", vmin=0.0, vmax=1.0, extent=extent, interpolation="nearest", aspect="equal"
    )
    if data["confidence"] is not None:
        conf = np.clip(np.nan_to_num(data["confidence"].astype(np.float32), nan=1.0), 0.0, 1.0)
        rgba = cmap(norm(conf))
        near = near_outlines([data["mask"], data["label"]], view.row_mm, view.col_mm)
        rgba[..., 3] = near * np.minimum(MAX_OVERLAY_ALPHA, OVERLAY_GAIN * (1.0 - conf))
        ax.imshow(rgba, extent=extent, interpolation="nearest", aspect="equal")
    for key, colour in (("label", LABEL_COLOUR), ("mask", PRED_COLOUR)):
        m = data[key]
        if m is not None and m.any() and not m.all():
            ax.contour(
                m.astype(np.float32), levels=[0.5], colors=[colour], linewidths=1.2, extent=extent, origin="upper"
            )
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_axis_off()
    _orientation_labels(ax, view.name)


def _orientation_labels(ax, plane: str) -> None:
    """Small patient-direction letters at the panel edges (A/P, R/L, S/I)."""
    left, right, top, bottom = {
        "axial": ("R", "L", "A", "P"),
        "coronal": ("R", "L", "S", "I"),
        "sagittal": ("A", "P", "S", "I"),
    }[plane]
    style = dict(color="#ffd24a", fontsize=8, transform=ax.transAxes, fontweight="bold")
    ax.text(0.01, 0.5, left, ha="left", va="center", **style)
    ax.text(0.99, 0.5, right, ha="right", va="center", **style)
    ax.text(0.5, 0.99, top, ha="center", va="top", **style)
    ax.text(0.5, 0.01, bottom, ha="center", va="bottom", **style)


def write_preview(
    path: str | Path,
    image: Volume,
    mask: np.ndarray,
    confidence: np.ndarray | None,
    label: np.ndarray | None = None,
    title: str = "",
) -> Path:
    """Write one PNG with axial, coronal and sagittal panels through the mass (atomically).

    `mask`, `confidence` and `label` are arrays on `image`'s own grid (the segment outputs).
    """
    from ceds_deploy.io import write_atomic_bytes

    path = Path(path)
    write_atomic_bytes(path, render_preview(image, mask, confidence, label, title))
    return path
