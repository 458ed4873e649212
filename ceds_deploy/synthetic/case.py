"""One synthetic case: draw it, paint its tissue map, take the mass label and render the image.

Determinism: case ``index`` of seed ``seed`` draws from ``SeedSequence([seed, index])`` only
(anatomy and noise from two spawned streams), so it is the same whatever the cohort size. The
order of the draws is part of every case: do not reorder the steps of `generate_case`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ceds_deploy.errors import ConfigError
from ceds_deploy.synthetic.anatomy import Anatomy, grow_lung_vessel_trees, sample_anatomy
from ceds_deploy.synthetic.grid import place_grid, sample_scan_plane
from ceds_deploy.synthetic.hounsfield import render_image, sample_hu_table, sample_noise
from ceds_deploy.synthetic.layouts import (
    LAYOUT_WEIGHTS,
    LAYOUTS,
    flip_then_permute_geometry,
    from_generation_axes,
    reorient,
    source_view,
)
from ceds_deploy.synthetic.mass import MassPlacement, place_mass
from ceds_deploy.synthetic.mediastinum import paint_mass, paint_mediastinum
from ceds_deploy.synthetic.raster import Block, Canvas
from ceds_deploy.synthetic.sizes import PhantomSize, resolve_size
from ceds_deploy.synthetic.tissues import VESSEL_TISSUES, Tissue
from ceds_deploy.synthetic.trunk import paint_paraspinal_muscles, paint_spine, paint_stomach_gas, paint_trunk
from ceds_deploy.volume import Volume


@dataclass
class PhantomCase:
    """A generated case: HU image (int16), label (uint8) and tissue map (uint8, `Tissue` codes),
    all on the same geometry, and what was drawn."""

    image: Volume
    label: Volume
    tissue: Volume | None
    info: dict[str, Any] = field(default_factory=dict)


def generate_case(
    index: int, seed: int = 0, size: str | PhantomSize = "small", *, layout: str | None = None, tissue: bool = True
) -> PhantomCase:
    """Generate case ``index`` of ``seed`` at ``size`` (a `SIZES` name or a `PhantomSize`).

    ``layout`` (a `LAYOUTS` name) overrides only the stored array layout, not the anatomy or
    grid (for tests). ``tissue=False`` skips the tissue map (``PhantomCase.tissue`` is then
    None), which saves time at full size. Returns the `PhantomCase`; ``info`` records the draws
    (scale, spacings, contrast, mass site/size/HU, layout, noise, ...).
    Raises `ConfigError` for a negative index or seed, or an unknown size or layout."""
    cfg = resolve_size(size)
    if index < 0:
        raise ConfigError(f"case index must be >= 0, got {index}")
    if seed < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}")
    if layout is not None and layout not in LAYOUTS:
        raise ConfigError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    anatomy_ss, noise_ss = np.random.SeedSequence([int(seed), int(index)]).spawn(2)
    rng = np.random.default_rng(anatomy_ss)
    info: dict[str, Any] = {"index": int(index), "seed": int(seed), "size": cfg.name}

    plane = sample_scan_plane(rng, cfg)
    s = plane.scale
    info.update(scale=s, inplane_spacing=plane.inplane_spacing, slice_spacing=plane.slice_spacing)
    anatomy = sample_anatomy(rng, cfg.contrast_fraction)
    info["contrast"] = anatomy.contrast
    mass = place_mass(rng, anatomy, cfg.mass_diameter_mm, s)
    info["mass_blocked_fraction"] = mass.blocked_fraction
    info.update(
        mass_site=mass.site,
        mass_diameter_mm=mass.diameter_mm,
        mass_placed_touching=mass.touching,
        mass_base_hu=mass.base_hu,
    )
    grid = place_grid(rng, cfg, plane, mass.centre, mass.radius)
    info["oblique_degrees"] = grid.oblique_degrees
    names = list(LAYOUT_WEIGHTS)
    lw = np.array([LAYOUT_WEIGHTS[n] for n in names])
    drawn_layout = str(rng.choice(names, p=lw / lw.sum()))  # drawn even when overridden
    layout = layout or drawn_layout
    info["layout"] = layout
    noise = sample_noise(rng)
    info.update(noise_sigma=noise.sigma, blur_sigma=noise.blur_sigma)
    lut = sample_hu_table(rng, anatomy.contrast, mass.base_hu)
    # Drawn last: how many draws the trees take depends on the resolution (branches stop at
    # about half an in-plane voxel), so drawing them earlier would shift every later draw.
    lung_vessels = grow_lung_vessel_trees(rng, anatomy, max(0.45 * plane.inplane_spacing / s, 0.6))
    info["lung_vessel_segments"] = len(lung_vessels)

    cv = grid.canvas(s, cfg.slab_voxels)
    _paint_anatomy(cv, anatomy, mass, lung_vessels, 0.5 * plane.inplane_spacing / s)

    gen_geometry = grid.geometry()
    flips, perm = from_generation_axes(*LAYOUTS[layout])
    geo = flip_then_permute_geometry(gen_geometry, flips, perm)
    label = np.zeros(geo.shape, dtype=np.uint8)
    msl, touches = _keep_largest_mass_piece(cv, mass, source_view(label, flips, perm))
    info["mass_touches_vessel"] = touches
    info["mass_voxels"] = int(np.count_nonzero(label))

    image = np.empty(geo.shape, dtype=np.int16)
    render_image(
        cv, lut, mass, msl, noise, np.random.default_rng(noise_ss), source_view(image, flips, perm)
    )  # written slab by slab, transposing
    tissue_volume = None
    if tissue:
        tissue_map, _ = reorient(cv.t, gen_geometry, flips, perm)
        tissue_volume = Volume(tissue_map, geo)
    del cv
    return PhantomCase(Volume(image, geo), Volume(label, geo), tissue_volume, info)


def _paint_anatomy(
    cv: Canvas,
    anatomy: Anatomy,
    mass: MassPlacement,
    lung_vessels: list[tuple[np.ndarray, np.ndarray, float]],
    half_voxel: float,
) -> None:
    """Paint every structure onto the canvas; later structures lie on top of earlier ones."""
    paint_trunk(cv, anatomy, half_voxel)
    if anatomy.stomach_gas:
        paint_stomach_gas(cv, anatomy)
    paint_mediastinum(cv, anatomy, lung_vessels)
    paint_mass(cv, mass)
    paint_paraspinal_muscles(cv, anatomy)
    paint_spine(cv, anatomy)


def _keep_largest_mass_piece(cv: Canvas, mass: MassPlacement, label_view: np.ndarray) -> tuple[Block | None, bool]:
    """Keep the largest connected piece of the painted mass (smaller pieces, cut off by bone or
    vessels, become mediastinal fat) and write it into ``label_view`` (indexed like the canvas).
    Returns the index box around the mass (or None if it lies outside the grid) and whether the
    kept piece touches the heart or a vessel."""
    from scipy import ndimage

    msl = cv.block(*mass.bounds(), pad=2)
    touches = False
    if msl is not None:
        sub_t = cv.t[msl]
        comps, n = ndimage.label(sub_t == Tissue.MASS)
        if n:
            sizes = np.bincount(comps.ravel())[1:]
            keep = comps == (int(np.argmax(sizes)) + 1)
            sub_t[(comps > 0) & ~keep] = Tissue.MED_FAT
            label_view[msl] = keep
            grown = ndimage.binary_dilation(keep, np.ones((3, 3, 3), bool))
            near = sub_t[grown & ~keep]
            touches = bool(np.isin(near, list(VESSEL_TISSUES)).any())
    return msl, touches


def make_case(index: int, seed: int, size: str = "small") -> tuple[Volume, Volume]:
    """Case ``index`` of ``seed``: (image in HU, int16; label, uint8) on the same geometry.

    Raises `ConfigError` as `generate_case` does."""
    case = generate_case(index, seed, size, tissue=False)
    return case.image, case.label
