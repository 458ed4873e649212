"""Synthetic chest-CT phantoms with one mediastinal mass, for training, tests, demos and benchmarks.

The project cannot download scans, so it makes its own. Every case is built in *anatomy
coordinates* (millimetres of a nominal adult, patient-aligned: +u = patient left, +v = posterior,
+w = superior, i.e. the LPS axes, origin near the carina) and rasterised straight onto the case's
own voxel grid: each structure is an implicit shape (rounded-box body layers, tubes, ellipsoids,
bands) evaluated with vectorised float32 numpy over the index box that can contain it, slab by
slab, into a ``uint8`` tissue map (`Tissue`). What depends on the in-plane position only (body
layers, diaphragm and apex heights) is tabulated once in 2D and looked up. The tissue map is then
turned into Hounsfield units (per-case values, mass texture, denser dependent lung), CT noise is
added and each slice is slightly smoothed in-plane (which also correlates the noise).

What a case contains: air; a rounded-box body (skin, subcutaneous fat, chest-wall muscle); ribs,
sternum, scapulae, vertebral bodies with discs, posterior arches and canal; two lungs (about
-850 HU, denser posteriorly) with branching vessel trees; diaphragm domes with liver and
spleen/stomach (sometimes with gas) below; mediastinal fat; heart (myocardium, blood pool,
septum); aorta (ascending, arch, descending), arch branches, pulmonary trunk and arteries,
pulmonary veins, SVC, IVC, brachiocephalic vein; trachea and main bronchi; oesophagus; sometimes a
CT table; and one lobulated, textured mass of 20-60 HU (sometimes with a low-density core) in the
prevascular, paratracheal, subcarinal, hilar, pericardial or paravertebral space, which in most
cases abuts the heart or a great vessel (so intensity alone cannot separate it). About a third
of the full-size cases (60% of the small ones) are contrast-enhanced (blood 150-250 HU).

Geometry per case: random spacing, origin and body size; some cases are stored with permuted
or flipped array axes (`LAYOUTS`: the world-space anatomy is unchanged, only the array layout,
the direction columns and the origin differ), a few on a slightly oblique grid.

Determinism: case ``index`` of seed ``seed`` draws from ``SeedSequence([seed, index])`` only, so
it is the same whatever the cohort size.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

import numpy as np

from ceds_deploy.errors import ConfigError
from ceds_deploy.volume import Geometry, Volume

__all__ = [
    "PhantomSize",
    "SIZES",
    "Tissue",
    "PhantomCase",
    "LAYOUTS",
    "generate_case",
    "make_case",
    "make_cohort",
    "cohort_indices",
    "reorient",
]


# --------------------------------------------------------------------------------------------
# Sizes
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PhantomSize:
    """Everything that differs between a realistic scan and a miniature one."""

    name: str
    inplane_voxels: tuple[int, ...]          # choices for the (square) in-plane matrix
    inplane_spacing_mm: tuple[float, float]  # uniform range
    slice_spacing_mm: tuple[float, ...]      # choices for the slice spacing ...
    slice_spacing_weights: tuple[float, ...]  # ... and their probabilities
    max_slices: int                          # the z window is shortened to fit this
    min_slices: int
    body_fill: tuple[float, float]           # body width / in-plane field of view
    mass_diameter_mm: tuple[float, float]    # maximal (Feret) diameter of the mass
    contrast_fraction: float = 0.35          # share of contrast-enhanced scans
    slab_voxels: int = 4_000_000             # work in slabs of about this many voxels


SMALL = PhantomSize(
    name="small",
    inplane_voxels=(112, 120, 128),
    inplane_spacing_mm=(1.3, 1.8),            # the full range 0.6-0.9 mm, doubled
    slice_spacing_mm=(2.0, 2.5, 3.0, 4.0, 5.0),
    slice_spacing_weights=(0.3, 0.25, 0.2, 0.15, 0.1),
    max_slices=64,
    min_slices=16,
    body_fill=(0.75, 0.88),
    # Larger masses and more contrast scans than full size: the miniature is for CPU demos and
    # tests, where a few minutes of training at coarse spacing must learn the task.
    mass_diameter_mm=(24.0, 44.0),
    contrast_fraction=0.6,
)

FULL = PhantomSize(
    name="full",
    inplane_voxels=(512,),
    inplane_spacing_mm=(0.6, 0.9),
    slice_spacing_mm=(1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0),
    slice_spacing_weights=(0.25, 0.15, 0.15, 0.2, 0.1, 0.05, 0.1),
    max_slices=300,
    min_slices=40,
    body_fill=(0.72, 0.88),
    mass_diameter_mm=(15.0, 80.0),
)

SIZES: dict[str, PhantomSize] = {"small": SMALL, "full": FULL}


def _size(size: str | PhantomSize) -> PhantomSize:
    if isinstance(size, PhantomSize):
        return size
    try:
        return SIZES[size]
    except KeyError:
        raise ConfigError(f"phantom size must be one of {', '.join(SIZES)}, got {size!r}") from None


# --------------------------------------------------------------------------------------------
# Tissues
# --------------------------------------------------------------------------------------------

class Tissue(IntEnum):
    """Codes of the tissue map (uint8)."""

    AIR = 0
    FAT = 1          # subcutaneous fat
    MUSCLE = 2       # skin, chest wall, paraspinal muscles, airway wall, oesophagus
    MED_FAT = 3      # mediastinal / pericardial fat, the default inside the rib cage
    LUNG = 4
    LUNG_VESSEL = 5
    HEART = 6        # myocardium
    BLOOD = 7        # heart chambers and every large vessel
    AIRWAY = 8       # trachea and bronchi lumen
    CORTEX = 9       # cortical bone
    MARROW = 10      # cancellous bone
    DISC = 11
    CSF = 12
    LIVER = 13
    SOFT = 14        # spleen, stomach wall
    GAS = 15         # bowel / stomach gas
    TABLE = 16
    MASS = 17


VESSEL_TISSUES = (Tissue.HEART, Tissue.BLOOD)


def _allowed(*codes: int) -> np.ndarray:
    table = np.zeros(256, dtype=bool)
    table[list(codes)] = True
    return table


# --------------------------------------------------------------------------------------------
# Layouts: how a case's array is stored (the anatomy in world space never changes)
# --------------------------------------------------------------------------------------------

# name -> (flips applied to the generation axes, then the axis permutation)
LAYOUTS: dict[str, tuple[tuple[int, ...], tuple[int, int, int]]] = {
    "lps": ((), (0, 1, 2)),                # DICOM-like: x to the left, y posterior, z up
    "ras_flipped": ((0, 1), (0, 1, 2)),    # what a RAS-oriented NIfTI looks like in LPS
    "z_descending": ((2,), (0, 1, 2)),     # slices stored head to feet
    "zyx": ((), (2, 1, 0)),                # array axes z, y, x
    "yxz": ((), (1, 0, 2)),                # rows and columns swapped
    "zxy_flipped": ((0,), (2, 0, 1)),      # permuted and flipped
}
_LAYOUT_WEIGHTS = {"lps": 0.45, "ras_flipped": 0.15, "z_descending": 0.1, "zyx": 0.1,
                   "yxz": 0.1, "zxy_flipped": 0.1}
_OBLIQUE_PROBABILITY = 0.15
_OBLIQUE_DEGREES = (2.0, 8.0)


def reorient_geometry(geometry: Geometry, flips: tuple[int, ...],
                      perm: tuple[int, int, int]) -> Geometry:
    """The geometry of an array after flipping the given axes and then permuting them (new axis
    b = old axis perm[b]): every voxel keeps its world position."""
    from ceds_deploy.transforms.orientation import Reorientation
    from ceds_deploy.transforms.orientation import reorient_geometry as reorient_grid

    perm = tuple(int(p) for p in perm)
    return reorient_grid(geometry, Reorientation(perm, tuple(perm[b] in flips for b in range(3))))


def _source_view(out: np.ndarray, flips: tuple[int, ...], perm: tuple[int, int, int]) -> np.ndarray:
    """A view of `out` (the reoriented array) indexed like the array before reorientation."""
    return np.flip(out.transpose(np.argsort(perm)), tuple(flips)) if flips else \
        out.transpose(np.argsort(perm))


def reorient(array: np.ndarray, geometry: Geometry, flips: tuple[int, ...],
             perm: tuple[int, int, int]) -> tuple[np.ndarray, Geometry]:
    """Flip the given array axes, then permute them (new axis b = old axis perm[b]), adjusting
    spacing, direction and origin so every voxel keeps its world position. Returns a
    C-contiguous array."""
    new = reorient_geometry(geometry, flips, perm)
    out = np.empty(new.shape, dtype=array.dtype)
    view = _source_view(out, flips, perm)
    step = 32                                   # tiles keep the transposing copy cache-friendly
    for i in range(0, array.shape[1], step):
        for j in range(0, array.shape[2], step):
            view[:, i:i + step, j:j + step] = array[:, i:i + step, j:j + step]
    return out, new


def _from_generation_axes(flips: tuple[int, ...], perm: tuple[int, int, int]):
    """A layout (flips and permutation of the x, y, z axes) as flips and permutation of the
    generation grid's (z, y, x) axes."""
    return tuple(2 - a for a in flips), tuple(2 - p for p in perm)


# --------------------------------------------------------------------------------------------
# The canvas: a tissue map and the index -> anatomy mapping
# --------------------------------------------------------------------------------------------

class _Canvas:
    """``nominal[a] = off[a] + sum_ax coef[a, ax] * index[ax]`` (anatomy millimetres)."""

    def __init__(self, shape: tuple[int, int, int], coef: np.ndarray, off: np.ndarray,
                 slab_voxels: int) -> None:
        self.shape = shape
        self.coef = np.asarray(coef, dtype=np.float64)
        self.off = np.asarray(off, dtype=np.float64)
        self.inv = np.linalg.inv(self.coef)
        self.slab_voxels = slab_voxels
        self.t = np.zeros(shape, dtype=np.uint8)

    def block(self, lo, hi, pad: int = 1) -> tuple[slice, slice, slice] | None:
        """Index box (clipped) that contains the anatomy box [lo, hi]."""
        corners = np.array(list(itertools.product(*zip(lo, hi))), dtype=np.float64)
        idx = (corners - self.off) @ self.inv.T
        a = np.floor(idx.min(axis=0)) - pad
        b = np.ceil(idx.max(axis=0)) + pad + 1
        a = np.clip(a, 0, self.shape).astype(int)
        b = np.clip(b, 0, self.shape).astype(int)
        if np.any(b <= a):
            return None
        return tuple(slice(int(x), int(y)) for x, y in zip(a, b))

    def coords(self, sl) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Anatomy coordinates of a block, as broadcastable float32 arrays (an axis-aligned grid
        gives (n,1,1), (1,m,1), (1,1,l) arrays, so in-plane shapes cost 2D work only)."""
        ranges = [np.arange(s.start, s.stop, dtype=np.float64) for s in sl]
        out = []
        for a in range(3):
            acc = None
            first = True
            for ax in range(3):
                c = self.coef[a, ax]
                if abs(c) < 1e-12:
                    continue
                shape = [1, 1, 1]
                shape[ax] = -1
                term = c * ranges[ax]
                if first:
                    term = term + self.off[a]
                    first = False
                term = term.astype(np.float32).reshape(shape)
                acc = term if acc is None else acc + term
            out.append(acc)
        return out[0], out[1], out[2]

    def slabs(self, sl):
        """Split a block into slabs along axis 0 (the slice axis: contiguous memory)."""
        plane = (sl[1].stop - sl[1].start) * (sl[2].stop - sl[2].start)
        step = max(1, self.slab_voxels // max(plane, 1))
        for k0 in range(sl[0].start, sl[0].stop, step):
            yield (slice(k0, min(k0 + step, sl[0].stop)), sl[1], sl[2])

    def paint(self, lo, hi, fn) -> None:
        """Call ``fn(tissue_block, u, v, w)`` on every slab of the box [lo, hi]."""
        sl = self.block(lo, hi)
        if sl is None:
            return
        for sub in self.slabs(sl):
            u, v, w = self.coords(sub)
            fn(self.t[sub], u, v, w)


def _put(t: np.ndarray, mask, code: int, only: np.ndarray | None = None) -> None:
    if only is not None:
        mask = mask & only[t]
    np.copyto(t, np.uint8(code), where=mask)


def _rotation(axis, angle: float) -> np.ndarray:
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))[None, :]
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _unit(*v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def _ellipsoid_q(u, v, w, centre, radii, rot) -> np.ndarray:
    """Normalised squared radius of a rotated ellipsoid (< 1 inside); rot columns = its axes."""
    du, dv, dw = u - np.float32(centre[0]), v - np.float32(centre[1]), w - np.float32(centre[2])
    q = None
    for k in range(3):
        p = (du * np.float32(rot[0, k]) + dv * np.float32(rot[1, k]) + dw * np.float32(rot[2, k]))
        p = p * np.float32(1.0 / radii[k])
        q = p * p if q is None else q + p * p
    return q


def _box_rho2(x, y, box: float):
    """Squared normalised radius of a rounded box (box = 0: ellipse, 1: rectangle)."""
    x2, y2 = x * x, y * y
    return x2 + y2 - np.float32(box) * np.minimum(x2, 1) * np.minimum(y2, 1)


def _capsule_d2(u, v, w, a, b) -> np.ndarray:
    d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    l2 = float(d @ d) or 1e-9
    pu, pv, pw = u - np.float32(a[0]), v - np.float32(a[1]), w - np.float32(a[2])
    tt = (pu * np.float32(d[0] / l2) + pv * np.float32(d[1] / l2) + pw * np.float32(d[2] / l2))
    np.clip(tt, 0, 1, out=tt)
    eu = pu - tt * np.float32(d[0])
    ev = pv - tt * np.float32(d[1])
    ew = pw - tt * np.float32(d[2])
    return eu * eu + ev * ev + ew * ew


# --------------------------------------------------------------------------------------------
# The mass: a lobulated implicit shape in coordinates normalised by its radius
# --------------------------------------------------------------------------------------------

@dataclass
class _MassShape:
    lobes: list[tuple[np.ndarray, np.ndarray, np.ndarray]]  # (centre, semi-axes, rotation)
    waves: np.ndarray      # (K, 3) wave vectors of the boundary perturbation
    phases: np.ndarray     # (K,)
    amplitude: float
    tex_waves: np.ndarray
    tex_phases: np.ndarray
    necrosis: float        # HU drop at the centre (0 = none)

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "_MassShape":
        main_axes = np.array([0.85, rng.uniform(0.5, 0.85), rng.uniform(0.5, 0.85)])
        lobes = [(np.zeros(3), main_axes, _random_rotation(rng))]
        for _ in range(int(rng.integers(1, 5))):
            size = rng.uniform(0.3, 0.5)
            direction = _unit(*rng.standard_normal(3))
            dist = rng.uniform(0.25, 0.85 - size)
            axes = size * rng.uniform(0.75, 1.0, 3)
            lobes.append((direction * dist, axes, _random_rotation(rng)))
        k = 5
        waves = rng.standard_normal((k, 3))
        waves *= (rng.uniform(2.5, 5.0, k) / np.linalg.norm(waves, axis=1))[:, None]
        tex = rng.standard_normal((6, 3))
        tex *= (rng.uniform(6.0, 14.0, 6) / np.linalg.norm(tex, axis=1))[:, None]
        necrosis = float(rng.uniform(10.0, 25.0)) if rng.random() < 0.25 else 0.0
        return cls(lobes, waves, rng.uniform(0, 2 * np.pi, k), float(rng.uniform(0.12, 0.3)),
                   tex, rng.uniform(0, 2 * np.pi, 6), necrosis)

    @staticmethod
    def _waves(x, y, z, waves, phases) -> np.ndarray:
        acc = None
        for (kx, ky, kz), ph in zip(waves, phases):
            term = np.cos(x * np.float32(kx) + y * np.float32(ky) + z * np.float32(kz)
                          + np.float32(ph))
            acc = term if acc is None else acc + term
        return acc * np.float32(1.0 / len(waves))

    def implicit(self, x, y, z) -> np.ndarray:
        """> 0 inside (x, y, z in units of the mass radius, centred)."""
        f = None
        for centre, axes, rot in self.lobes:
            g = 1 - _ellipsoid_q(x, y, z, centre, axes, rot)
            f = g if f is None else np.maximum(f, g)
        return f + np.float32(self.amplitude) * self._waves(x, y, z, self.waves, self.phases)

    def texture(self, x, y, z) -> np.ndarray:
        """HU offset around the mass's base value."""
        tex = np.float32(12.0) * self._waves(x, y, z, self.tex_waves, self.tex_phases)
        if self.necrosis:
            centre, axes, rot = self.lobes[0]
            q = _ellipsoid_q(x, y, z, centre, axes, rot)
            tex = tex - np.float32(self.necrosis) * np.clip(1 - q / 0.35, 0, 1)
        return tex

    def sample_points(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Up to n points inside the shape (normalised coordinates)."""
        pts = rng.uniform(-1.0, 1.0, (8 * n, 3)).astype(np.float32)
        inside = self.implicit(pts[:, 0], pts[:, 1], pts[:, 2]) > 0
        return pts[inside][:n].astype(np.float64)

    def normalised_feret(self, n: int = 40) -> float:
        """Maximal diameter of the shape in units of its radius."""
        from scipy.spatial import ConvexHull

        ax = np.linspace(-1.1, 1.1, n, dtype=np.float32)
        x, y, z = ax[:, None, None], ax[None, :, None], ax[None, None, :]
        inside = self.implicit(x, y, z) > 0
        pts = np.argwhere(inside).astype(np.float64) * (ax[1] - ax[0]) + ax[0]
        if len(pts) < 4:
            return 1.0
        hull = pts[ConvexHull(pts).vertices]
        d2 = ((hull[:, None, :] - hull[None, :, :]) ** 2).sum(-1)
        return float(np.sqrt(d2.max())) + float(ax[1] - ax[0])


# --------------------------------------------------------------------------------------------
# One case
# --------------------------------------------------------------------------------------------

@dataclass
class PhantomCase:
    """A generated case: HU image (int16), label (uint8) and tissue map (uint8, `Tissue` codes),
    all on the same geometry, and what was drawn."""

    image: Volume
    label: Volume
    tissue: Volume | None
    info: dict = field(default_factory=dict)


W_TOP, W_BOTTOM = 140.0, -200.0   # nominal z window: above the lung apices to the upper abdomen
A_NOMINAL = 160.0                 # nominal body half-width (mm)


def _j(rng: np.random.Generator, value: float, rel: float = 0.08) -> float:
    return float(value * (1 + rel * rng.uniform(-1, 1)))


def _jp(rng: np.random.Generator, point, mm: float = 4.0) -> np.ndarray:
    return np.asarray(point, dtype=np.float64) + rng.uniform(-mm, mm, 3)


def generate_case(index: int, seed: int = 0, size: str | PhantomSize = "small", *,
                  layout: str | None = None, tissue: bool = True) -> PhantomCase:
    """Generate case ``index`` of ``seed``. ``layout`` (a `LAYOUTS` name) overrides only the
    stored array layout, not the anatomy or grid (for tests). ``tissue=False`` skips the tissue
    map (``PhantomCase.tissue`` is then None), which saves time at full size."""
    cfg = _size(size)
    if index < 0:
        raise ConfigError(f"case index must be >= 0, got {index}")
    if seed < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}")
    if layout is not None and layout not in LAYOUTS:
        raise ConfigError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    anatomy_ss, noise_ss = np.random.SeedSequence([int(seed), int(index)]).spawn(2)
    rng = np.random.default_rng(anatomy_ss)
    info: dict = {"index": int(index), "seed": int(seed), "size": cfg.name}

    # ---- in-plane grid and body scale ---------------------------------------------------
    nxy = int(rng.choice(cfg.inplane_voxels))
    sp_xy = float(rng.uniform(*cfg.inplane_spacing_mm))
    weights = np.asarray(cfg.slice_spacing_weights, dtype=np.float64)
    sp_z = float(rng.choice(cfg.slice_spacing_mm, p=weights / weights.sum()))
    fov = nxy * sp_xy
    s = float(rng.uniform(*cfg.body_fill)) * fov / (2 * A_NOMINAL)   # physical mm per nominal mm
    info.update(scale=s, inplane_spacing=sp_xy, slice_spacing=sp_z)

    # ---- anatomy (nominal millimetres) --------------------------------------------------
    A = A_NOMINAL
    B = A * float(rng.uniform(0.64, 0.76))
    box = float(rng.uniform(0.2, 0.45))     # 0 = ellipse, 1 = rectangle
    skin = 2.0
    f_sub = float(rng.uniform(5.0, 18.0))
    muscle = float(rng.uniform(6.0, 12.0))
    d_rib = skin + f_sub + muscle          # outer surface of the rib layer
    rib_th = float(rng.uniform(7.0, 9.0))
    wall_in = d_rib + rib_th + 2.0         # the pleura
    dome_r = _j(rng, -95.0, 0.1)
    dome_l = dome_r - float(rng.uniform(5.0, 20.0))
    apex_w = _j(rng, 118.0, 0.06)

    contrast = bool(rng.random() < cfg.contrast_fraction)
    info["contrast"] = contrast

    heart_c = _jp(rng, (20.0, -25.0, -68.0), 5.0)
    heart_r = np.array([_j(rng, 62.0), _j(rng, 46.0), _j(rng, 52.0)])
    heart_rot = _rotation((0, 0, 1), math.radians(rng.uniform(-45, -30))) @ \
        _rotation((0, 1, 0), math.radians(rng.uniform(15, 30)))

    aorta_r = _j(rng, 15.0, 0.12)
    desc_r = aorta_r * 0.8
    asc = [_jp(rng, (-10.0, -30.0, -35.0), 3), _jp(rng, (-14.0, -30.0, 30.0), 3)]
    arch_top = _j(rng, 50.0, 0.1)
    desc_top = _jp(rng, (24.0, 28.0, 26.0), 3)
    arch = [asc[1], np.array([-9.0, -20.0, arch_top - 6]), np.array([0.0, -6.0, arch_top]),
            np.array([14.0, 10.0, arch_top - 2]), np.array([22.0, 22.0, arch_top - 12]), desc_top]
    desc = [desc_top, _jp(rng, (22.0, 32.0, -70.0), 3), _jp(rng, (10.0, 34.0, -210.0), 3)]
    pa_r = aorta_r * 0.85
    pa_bif = _jp(rng, (10.0, -18.0, -5.0), 3)
    pa_trunk = [_jp(rng, (22.0, -40.0, -42.0), 3), pa_bif]
    lpa = [pa_bif, _jp(rng, (38.0, 0.0, 2.0), 3), _jp(rng, (62.0, 8.0, -4.0), 4)]
    rpa = [pa_bif, _jp(rng, (-22.0, -12.0, -8.0), 3), _jp(rng, (-62.0, 0.0, -12.0), 4)]
    svc = [_jp(rng, (-40.0, -18.0, 110.0), 3), _jp(rng, (-36.0, -20.0, -25.0), 3)]
    ivc = [_jp(rng, (-22.0, 0.0, -120.0), 3), _jp(rng, (-22.0, 8.0, -210.0), 3)]
    branches = [  # (start, end, radius) of the arch branches and brachiocephalic veins
        (np.array([-7.0, -22.0, arch_top - 3]), _jp(rng, (-22.0, -16.0, 150.0)), 6.5),
        (np.array([2.0, -8.0, arch_top]), _jp(rng, (14.0, -10.0, 150.0)), 4.5),
        (np.array([12.0, 6.0, arch_top - 3]), _jp(rng, (34.0, 8.0, 150.0)), 5.5),
        (_jp(rng, (48.0, -28.0, 95.0)), svc[0] + np.array([0.0, 0.0, -15.0]), 6.0),
    ]
    pulm_veins = [(_jp(rng, (8.0, 5.0, -50.0)), _jp(rng, (side * 55.0, 12.0, dz)), 7.0)
                  for side in (-1, 1) for dz in (-30.0, -55.0)]
    trachea = [_jp(rng, (0.0, -6.0, 160.0), 2), _jp(rng, (0.0, -2.0, 5.0), 2)]
    tr_r = _j(rng, 9.0, 0.1)
    bronchi = [(trachea[1], _jp(rng, (-45.0, 2.0, -15.0), 3), tr_r * 0.75),
               (trachea[1], _jp(rng, (48.0, 8.0, -28.0), 3), tr_r * 0.7)]
    eso = [_jp(rng, (6.0, 14.0, 160.0), 2), _jp(rng, (12.0, 16.0, -120.0), 3)]
    vb_v = _j(rng, 44.0, 0.05)           # vertebral body centre (v)
    vb_r = _j(rng, 18.0, 0.08)
    canal_v = vb_v + vb_r + 10.0
    vert_period = _j(rng, 26.0, 0.06)
    vert_phase = float(rng.uniform(0, vert_period))
    rib_period = _j(rng, 27.0, 0.08)
    rib_phase = float(rng.uniform(0, rib_period))
    rib_slope = float(rng.uniform(110.0, 140.0))
    table = bool(rng.random() < 0.6)
    stomach_gas = bool(rng.random() < 0.6)

    # ---- the mass -------------------------------------------------------------------------
    vessel_tubes = [(asc, aorta_r), (arch, aorta_r * 0.9), (desc, desc_r), (pa_trunk, pa_r),
                    (lpa, pa_r * 0.75), (rpa, pa_r * 0.75), (svc, 9.0), (ivc, 11.0)]
    vessel_tubes += [([a, b], r) for a, b, r in branches]
    vessel_tubes += [([a, b], r) for a, b, r in pulm_veins]
    airway_tubes = [(trachea, tr_r)] + [([a, b], r) for a, b, r in bronchi]
    shape = _MassShape.sample(rng)
    diameter = float(rng.uniform(*cfg.mass_diameter_mm))
    r_phys = diameter / shape.normalised_feret()
    r_mass = r_phys / s                     # nominal millimetres
    sites = ["prevascular", "paratracheal", "subcarinal", "hilar", "pericardial", "paravertebral"]
    site = str(rng.choice(sites, p=[0.35, 0.15, 0.1, 0.15, 0.15, 0.1]))
    touch = bool(rng.random() < 0.7)
    if site == "prevascular":
        t_ = rng.uniform(0.5, 1.0)
        anchor, radius = asc[0] + t_ * (asc[1] - asc[0]), aorta_r
        direction = _unit(rng.uniform(-0.5, 0.5), -1.0, rng.uniform(-0.3, 0.3))
    elif site == "paratracheal":
        anchor, radius = svc[0] + rng.uniform(0.4, 0.7) * (svc[1] - svc[0]), 9.0
        direction = _unit(rng.uniform(0.2, 0.7), rng.uniform(0.3, 1.0), rng.uniform(-0.3, 0.3))
    elif site == "subcarinal":
        anchor, radius = pa_bif, pa_r
        direction = _unit(rng.uniform(-0.3, 0.3), rng.uniform(0.5, 1.0), rng.uniform(-1.0, -0.3))
    elif site == "hilar":
        side = 1.0 if rng.random() < 0.5 else -1.0
        anchor, radius = (lpa if side > 0 else rpa)[-1], pa_r * 0.75
        direction = _unit(side * rng.uniform(0.2, 0.7), rng.uniform(-1, 1), rng.uniform(-1, 1))
    elif site == "pericardial":
        anchor = heart_c
        direction = _unit(rng.uniform(-1.0, -0.3), rng.uniform(-1.0, -0.3), rng.uniform(-0.3, 0.5))
        local = heart_rot.T @ direction
        radius = float(1.0 / np.sqrt(np.sum((local / heart_r) ** 2)))
    else:  # paravertebral, beside the descending aorta
        anchor, radius = desc[0] + rng.uniform(0.2, 0.8) * (desc[1] - desc[0]), desc_r
        direction = _unit(rng.uniform(0.3, 1.0), rng.uniform(-0.2, 0.5), rng.uniform(-0.3, 0.3))
    # Place the mass next to its anchor structure, then move it (further out, in a slowly more
    # random direction) until at most 30 % of it would fall inside the heart, a vessel, an
    # airway or the spine, or outside the rib cage.
    probe = shape.sample_points(rng, 300)
    blockers = [(pts, r) for pts, r in vessel_tubes + airway_tubes]
    cav_a, cav_b = A - wall_in, B - wall_in

    def blocked(centre: np.ndarray) -> float:
        pts = centre + r_mass * probe
        u, v, w = pts[:, 0], pts[:, 1], pts[:, 2]
        bad = _ellipsoid_q(u, v, w, heart_c, heart_r, heart_rot) < 1
        bad |= _box_rho2(u / cav_a, v / cav_b, box) > 0.85
        bad |= u * u + (v - vb_v) ** 2 < (vb_r + 4) ** 2
        bad |= (w < dome_r - 25) | (w > apex_w - 15)
        for chain, r in blockers:
            for a_, b_ in zip(chain[:-1], chain[1:]):
                bad |= _capsule_d2(u, v, w, a_, b_) < r * r
        return float(bad.mean())

    offset = r_mass * (rng.uniform(0.3, 0.6) if touch else rng.uniform(1.1, 1.4)) + (0 if touch else 3)
    best = None
    for attempt in range(24):
        d = direction if attempt == 0 else _unit(*(direction + 0.25 * attempt ** 0.7
                                                    * rng.standard_normal(3)))
        centre = anchor + d * (radius + offset + 0.12 * r_mass * attempt)
        frac = blocked(centre)
        if best is None or frac < best[0]:
            best = (frac, centre)
        if frac <= 0.3:
            break
    mass_c = best[1]
    info["mass_blocked_fraction"] = best[0]
    mass_base = float(rng.uniform(40.0, 55.0) if shape.necrosis else rng.uniform(30.0, 55.0))
    info.update(mass_site=site, mass_diameter_mm=diameter, mass_placed_touching=touch,
                mass_base_hu=mass_base)

    # ---- z window, grid, world placement -----------------------------------------------
    length = (W_TOP - W_BOTTOM) * s
    nz = int(round(length / sp_z))
    nz = int(np.clip(nz, cfg.min_slices, cfg.max_slices))
    win = nz * sp_z / s                      # nominal length of the window
    mz, margin = mass_c[2], r_mass * 1.1 + 2 * sp_z / s
    lo_start = max(min(W_BOTTOM, W_TOP - win), mz + margin - win)
    hi_start = min(max(W_TOP - win, W_BOTTOM), mz - margin)
    z_start = float(rng.uniform(lo_start, hi_start)) if hi_start > lo_start else mz - win / 2
    grid_centre_nom = np.array([rng.uniform(-0.03, 0.03) * fov / s,
                                rng.uniform(-0.03, 0.05) * fov / s,
                                z_start + win / 2 - sp_z / (2 * s)])
    # The generation grid is stored (z, y, x) in C order, so a slab of slices is contiguous.
    shape_gen = (nz, nxy, nxy)
    spacing = np.array([sp_z, sp_xy, sp_xy])
    if rng.random() < _OBLIQUE_PROBABILITY:
        angle = math.radians(rng.uniform(*_OBLIQUE_DEGREES))
        axis = _unit(1.0, rng.uniform(-0.3, 0.3), rng.uniform(-0.3, 0.3)) if rng.random() < 0.6 \
            else _unit(*rng.standard_normal(3))
        rotation = _rotation(axis, angle)
        info["oblique_degrees"] = math.degrees(angle)
    else:
        rotation = np.eye(3)
        info["oblique_degrees"] = 0.0
    direction_m = rotation[:, ::-1]          # columns: world directions of the z, y, x axes
    body_world = np.array([rng.uniform(-15, 15), rng.uniform(-20, 20), rng.uniform(-800, 200)])
    centre_idx = (np.asarray(shape_gen, dtype=np.float64) - 1) / 2
    origin = body_world + s * grid_centre_nom - direction_m @ (spacing * centre_idx)
    names = list(_LAYOUT_WEIGHTS)
    lw = np.array([_LAYOUT_WEIGHTS[n] for n in names])
    drawn_layout = str(rng.choice(names, p=lw / lw.sum()))
    layout = layout or drawn_layout
    info["layout"] = layout

    # noise parameters
    noise_sigma = float(rng.uniform(10.0, 25.0))
    blur_sigma = float(rng.uniform(0.5, 0.9))
    info.update(noise_sigma=noise_sigma, blur_sigma=blur_sigma)

    # HU of each tissue for this case
    lut = np.zeros(256, dtype=np.float32)
    blood = float(rng.uniform(150, 250)) if contrast else float(rng.uniform(35, 50))
    lut[Tissue.AIR] = -1000
    lut[Tissue.FAT] = rng.uniform(-110, -85)
    lut[Tissue.MUSCLE] = rng.uniform(40, 60)
    lut[Tissue.MED_FAT] = rng.uniform(-105, -80)
    lut[Tissue.LUNG] = rng.uniform(-885, -850)
    lut[Tissue.LUNG_VESSEL] = 0.6 * blood if contrast else rng.uniform(20, 40)
    lut[Tissue.HEART] = rng.uniform(90, 120) if contrast else rng.uniform(38, 50)
    lut[Tissue.BLOOD] = blood
    lut[Tissue.AIRWAY] = rng.uniform(-1000, -960)
    lut[Tissue.CORTEX] = rng.uniform(700, 1000)
    lut[Tissue.MARROW] = rng.uniform(200, 300)
    lut[Tissue.DISC] = rng.uniform(70, 100)
    lut[Tissue.CSF] = rng.uniform(5, 20)
    lut[Tissue.LIVER] = rng.uniform(90, 120) if contrast else rng.uniform(50, 65)
    lut[Tissue.SOFT] = rng.uniform(35, 50)
    lut[Tissue.GAS] = rng.uniform(-1000, -950)
    lut[Tissue.TABLE] = rng.uniform(-300, -150)
    lut[Tissue.MASS] = mass_base

    # lung vessel trees (drawn now so the anatomy does not depend on the grid): each branch
    # heads for a random point of its lung, so the trees spread through the lung
    min_r = max(0.45 * sp_xy / s, 0.6)
    tree_segments: list[tuple[np.ndarray, np.ndarray, float]] = []
    roots = [(lpa[-1], 1.0), (rpa[-1], -1.0)] + [(end, np.sign(end[0])) for _, end, _ in pulm_veins]

    def lung_point(side: float) -> np.ndarray:
        return np.array([side * rng.uniform(45.0, A - wall_in - 15.0),
                         rng.uniform(-(B - wall_in) + 15.0, B - wall_in - 25.0),
                         rng.uniform(dome_r - 10.0, apex_w - 30.0)])

    for hilum, side in roots:
        for _ in range(4):
            target = lung_point(side)
            d = _unit(*(target - hilum))
            stack = [(hilum, d, float(rng.uniform(25, 40)), float(rng.uniform(3.5, 5.0)), target)]
            while stack:
                a, d, length_, r, target = stack.pop()
                b = a + d * length_
                tree_segments.append((a, b, r))
                if r * 0.75 < min_r or len(tree_segments) > 6000:
                    continue
                draws = rng.standard_normal((2, 6))
                angles = np.radians(rng.uniform(15, 45, 2))
                shrink = rng.uniform(0.75, 0.9, 2)
                for k in range(2):
                    child_target = target + 30.0 * draws[k, :3]
                    perp = np.cross(d, draws[k, 3:])          # a random axis normal to d
                    perp /= math.sqrt(float(perp @ perp)) + 1e-9
                    nd = d * math.cos(angles[k]) + np.cross(perp, d) * math.sin(angles[k])
                    to_target = child_target - b
                    to_target /= math.sqrt(float(to_target @ to_target)) + 1e-9
                    nd = 0.5 * nd + 0.5 * to_target
                    nd /= math.sqrt(float(nd @ nd)) + 1e-9
                    stack.append((b, nd, length_ * float(shrink[k]), r * 0.75, child_target))
    info["lung_vessel_segments"] = len(tree_segments)

    # ---- rasterise ----------------------------------------------------------------------
    coef = direction_m * spacing[None, :] / s
    off = (origin - body_world) / s
    cv = _Canvas(shape_gen, coef, off, cfg.slab_voxels)
    big = 10_000.0
    whole = ((-big, -big, -big), (big, big, big))
    f32 = np.float32
    only_lung = _allowed(Tissue.LUNG)
    only_cavity = _allowed(Tissue.LUNG, Tissue.MED_FAT)

    def depth_of(u, v):
        """Approximate depth (nominal mm) under the skin, and the normalised body radius."""
        r = np.sqrt(u * u + v * v)
        rho = np.sqrt(_box_rho2(u * f32(1 / A), v * f32(1 / B), box))
        return r * (1 - rho) / np.maximum(rho, f32(1e-3)), rho

    scap_lo, scap_hi = skin + f_sub + 2.0, skin + f_sub + 6.0
    band_lo, band_hi = min(d_rib - 3.0, scap_lo), d_rib + rib_th + 1.0

    def wall_bones(t, u, v, w, depth):
        band = (depth > f32(band_lo)) & (depth < f32(band_hi))
        if not band.any():
            return
        # evaluate only in the thin shell that can hold wall bones
        full = np.broadcast_to(band, t.shape)
        pick = lambda a: np.broadcast_to(a, t.shape)[full]  # noqa: E731
        u, v, w, depth = pick(u), pick(v), pick(w), pick(depth)
        codes = t[full]
        phi = np.arctan2(np.abs(u), -v)                       # 0 anterior, pi posterior
        zr = w + f32(rib_slope) * (1 - phi * f32(1 / np.pi)) ** f32(1.3) - f32(rib_phase)
        phase = np.mod(zr, f32(rib_period))
        er = (depth - f32(d_rib + rib_th / 2)) * f32(2 / rib_th)
        ez = (phase - f32(5.5)) * f32(1 / 5.5)
        e = er * er + ez * ez
        rib = (e < 1) & (phi > f32(0.35)) & (phi < f32(2.75)) & (w < f32(apex_w + 10))
        _put(codes, rib, Tissue.MARROW)
        _put(codes, rib & (e > f32(0.4)), Tissue.CORTEX)
        stern = (np.abs(u) < f32(15.0)) & (v < 0) & (depth > f32(d_rib - 3)) \
            & (depth < f32(d_rib + 9)) & (w > f32(-150.0)) & (w < f32(95.0))
        _put(codes, stern, Tissue.MARROW)
        stern_edge = stern & ((np.abs(u) > f32(12.5)) | (depth < f32(d_rib - 1))
                              | (depth > f32(d_rib + 7)))
        _put(codes, stern_edge, Tissue.CORTEX)
        scap = (depth > f32(scap_lo)) & (depth < f32(scap_hi)) \
            & (phi > f32(2.0)) & (phi < f32(2.5)) & (w > f32(-40.0))
        _put(codes, scap, Tissue.CORTEX)
        t[full] = codes

    # Everything of the trunk that depends on (u, v) only is tabulated once on a fine 2D grid
    # (half an in-plane voxel), so the 3D pass costs a few lookups per voxel even when the
    # case's grid is oblique (where no coordinate is constant along a slice).
    corners = np.array(list(itertools.product(*[(0, n - 1) for n in shape_gen])), dtype=np.float64)
    corners_nom = off + corners @ coef.T
    h = 0.5 * sp_xy / s
    u0, v0 = corners_nom[:, 0].min() - 2 * h, corners_nom[:, 1].min() - 2 * h
    nu = int(np.ceil((corners_nom[:, 0].max() - u0) / h)) + 3
    nv = int(np.ceil((corners_nom[:, 1].max() - v0) / h)) + 3
    gu = (u0 + h * np.arange(nu, dtype=np.float64)).astype(np.float32)[None, :]
    gv = (v0 + h * np.arange(nv, dtype=np.float64)).astype(np.float32)[:, None]
    depth2, rho2 = depth_of(gu, gv)
    code2 = np.zeros((nv, nu), dtype=np.uint8)
    _put(code2, rho2 < 1, Tissue.MUSCLE)
    _put(code2, (rho2 < 1) & (depth2 > skin), Tissue.FAT)
    _put(code2, depth2 > skin + f_sub, Tissue.MUSCLE)
    if table:
        _put(code2, (gv > B + 8) & (gv < B + 14) & (np.abs(gu) < 0.85 * A), Tissue.TABLE)
    _put(code2, depth2 > wall_in, Tissue.MED_FAT)
    au2 = np.abs(gu)
    dome2 = np.where(gu < 0, f32(dome_r), f32(dome_l)) \
        - f32(70.0) * ((au2 - f32(55.0)) * f32(1 / 75.0)) ** 2 \
        - f32(30.0) * ((gv + f32(10.0)) * f32(1 / 90.0)) ** 2 \
        - f32(30.0) * np.clip(gv * f32(1 / 80.0), 0, 1)
    apex2 = f32(apex_w) - f32(45.0) * ((au2 - f32(55.0)) * f32(1 / 60.0)) ** 2 \
        - f32(40.0) * ((gv - f32(5.0)) * f32(1 / 75.0)) ** 2
    # depth (with the lungs' apex taper folded in later), dome, apex and the liver side in 2D
    maps = {name: np.ascontiguousarray(np.broadcast_to(m, (nv, nu))).ravel()
            for name, m in (("code", code2), ("depth", depth2), ("dome", dome2), ("apex", apex2),
                            ("liver", gu < f32(15.0)))}
    del depth2, rho2, code2, dome2, apex2, au2

    def trunk(t, u, v, w):
        """Body layers, table, lungs, upper abdomen and the bones of the chest wall."""
        iu = np.rint((u - f32(u0)) * f32(1 / h)).astype(np.int32)
        iv = np.rint((v - f32(v0)) * f32(1 / h)).astype(np.int32)
        flat = iv * np.int32(nu) + iu
        np.copyto(t, maps["code"][flat])
        depth = maps["depth"][flat]
        taper = f32(55.0) * np.clip((w - f32(35.0)) * f32(1 / 95.0), 0, 1) ** 2
        cav = depth > wall_in + taper
        above = w > maps["dome"][flat]
        _put(t, cav & above & (w < maps["apex"][flat]), Tissue.LUNG)
        below = cav & ~above
        liver = maps["liver"][flat]
        _put(t, below & liver, Tissue.LIVER)
        _put(t, below & ~liver, Tissue.SOFT)
        wall_bones(t, u, v, w, depth)

    cv.paint(*whole, trunk)

    if stomach_gas:
        gas_c = np.array([55.0, -10.0, dome_l - 40.0])
        gas_r = np.array([30.0, 25.0, 18.0])
        cv.paint(gas_c - gas_r, gas_c + gas_r,
                 lambda t, u, v, w: _put(t, _ellipsoid_q(u, v, w, gas_c, gas_r, np.eye(3)) < 1,
                                         Tissue.GAS, _allowed(Tissue.SOFT)))

    # mediastinum: a z-dependent ellipse of fat between the lungs
    def mediastinum(t, u, v, w):
        tw = np.clip((w + f32(30.0)) * f32(1 / 60.0), 0, 1)     # 0 at heart level, 1 above
        um = f32(12.0) + f32(-17.0) * tw
        am = f32(40.0) + f32(-12.0) * tw
        q = ((u - um) / am) ** 2 + ((v + f32(25.0)) * f32(1 / 62.0)) ** 2
        _put(t, q < 1, Tissue.MED_FAT, only_lung)

    cv.paint((-80, -100, W_BOTTOM - 50), (80, 60, W_TOP + 50), mediastinum)

    not_bone = ~_allowed(Tissue.CORTEX, Tissue.MARROW)

    def tube(points, r, code, only=not_bone, fat=0.0):
        for a, b in zip(points[:-1], points[1:]):
            rr = r + fat
            lo = np.minimum(a, b) - rr
            hi = np.maximum(a, b) + rr
            code_ = Tissue.MED_FAT if fat else code
            only_ = only_cavity if fat else only
            cv.paint(lo, hi, lambda t, u, v, w, a=a, b=b, rr=rr, c=code_, o=only_:
                     _put(t, _capsule_d2(u, v, w, a, b) < f32(rr * rr), c, o))

    def ellipsoid(centre, radii, rot, code, only=not_bone):
        ext = float(np.max(radii))
        cv.paint(centre - ext, centre + ext,
                 lambda t, u, v, w: _put(t, _ellipsoid_q(u, v, w, centre, radii, rot) < 1, code, only))

    # fat around everything in the mediastinum
    ellipsoid(heart_c, heart_r + 7.0, heart_rot, Tissue.MED_FAT, only_lung)
    for pts, r in vessel_tubes + airway_tubes + [(eso, 7.0)]:
        tube(pts, r, None, fat=4.0)

    # vessel trees, inside the lungs only
    for a, b, r in tree_segments:
        lo, hi = np.minimum(a, b) - r, np.maximum(a, b) + r
        cv.paint(lo, hi, lambda t, u, v, w, a=a, b=b, r=r:
                 _put(t, _capsule_d2(u, v, w, a, b) < f32(r * r), Tissue.LUNG_VESSEL, only_lung))

    # oesophagus, airways, heart, great vessels
    tube(eso, 7.0, Tissue.MUSCLE)
    for pts, r in airway_tubes:
        tube(pts, r + 2.0, Tissue.MUSCLE)
    for pts, r in airway_tubes:
        tube(pts, r, Tissue.AIRWAY)
    ellipsoid(heart_c, heart_r, heart_rot, Tissue.HEART)
    ellipsoid(heart_c, heart_r - 9.0, heart_rot, Tissue.BLOOD, _allowed(Tissue.HEART))

    def septum(t, u, v, w):  # a wall between the ventricles
        du, dv, dw = u - f32(heart_c[0]), v - f32(heart_c[1]), w - f32(heart_c[2])
        p1 = du * f32(heart_rot[0, 1]) + dv * f32(heart_rot[1, 1]) + dw * f32(heart_rot[2, 1])
        _put(t, np.abs(p1 - f32(4.0)) < f32(5.0), Tissue.HEART, _allowed(Tissue.BLOOD))

    cv.paint(heart_c - heart_r, heart_c + heart_r, septum)
    for pts, r in vessel_tubes:
        tube(pts, r, Tissue.BLOOD)

    # the mass: it pushes lung, fat, oesophagus and airway walls aside, but the heart, the
    # vessels and the airway lumen keep their place (so it abuts them), and bone cuts it
    mass_only = _allowed(Tissue.LUNG, Tissue.LUNG_VESSEL, Tissue.MED_FAT, Tissue.MUSCLE)
    inv_r = f32(1.0 / r_mass)

    def mass(t, u, v, w):
        x = (u - f32(mass_c[0])) * inv_r
        y = (v - f32(mass_c[1])) * inv_r
        z = (w - f32(mass_c[2])) * inv_r
        _put(t, shape.implicit(x, y, z) > 0, Tissue.MASS, mass_only)

    mass_lo, mass_hi = mass_c - 1.1 * r_mass, mass_c + 1.1 * r_mass
    cv.paint(mass_lo, mass_hi, mass)

    # paraspinal muscles
    def paraspinal(t, u, v, w):
        q = (u * f32(1 / 45.0)) ** 2 + ((v - f32(B - 15.0)) * f32(1 / 30.0)) ** 2
        _put(t, q < 1, Tissue.MUSCLE, _allowed(Tissue.LUNG, Tissue.MED_FAT, Tissue.MASS,
                                               Tissue.LUNG_VESSEL))

    cv.paint((-50, vb_v, W_BOTTOM - 50), (50, B, W_TOP + 50), paraspinal)

    # spine
    def spine(t, u, v, w):
        phase = np.mod(w - f32(vert_phase), f32(vert_period))
        disc = phase < f32(5.0)
        rb = np.sqrt(u * u + (v - f32(vb_v)) ** 2)
        in_body = rb < f32(vb_r)
        _put(t, in_body, Tissue.MARROW)
        edge = (rb > f32(vb_r - 2.5)) | (phase < f32(6.5)) | (phase > f32(vert_period - 1.5))
        _put(t, in_body & edge, Tissue.CORTEX)
        _put(t, in_body & disc, Tissue.DISC)
        rc = np.sqrt(u * u + (v - f32(canal_v)) ** 2)
        post = (phase > f32(4.0)) & (phase < f32(vert_period - 4.0))
        arch_ = (rc > f32(9.0)) & (rc < f32(15.0)) & (v > f32(canal_v - 5.0))
        spinous = (np.abs(u) < f32(4.0)) & (v > f32(canal_v + 12.0)) & (v < f32(canal_v + 40.0))
        transverse = (np.abs(v - f32(canal_v - 2.0)) < f32(5.0)) & (np.abs(u) < f32(36.0))
        _put(t, post & (arch_ | spinous | transverse), Tissue.CORTEX)
        _put(t, rc < f32(9.0), Tissue.CSF)

    cv.paint((-45, vb_v - vb_r - 2, W_BOTTOM - 50), (45, canal_v + 45, W_TOP + 50), spine)

    # ribs, sternum, scapulae (in the chest wall)

    # ---- the stored layout --------------------------------------------------------------
    gen_geometry = Geometry(spacing=tuple(spacing), origin=tuple(origin), direction=direction_m,
                            shape=shape_gen)
    flips, perm = _from_generation_axes(*LAYOUTS[layout])
    geo = reorient_geometry(gen_geometry, flips, perm)

    # ---- label: the largest connected piece of the mass --------------------------------
    from scipy import ndimage

    label = np.zeros(geo.shape, dtype=np.uint8)
    msl = cv.block(mass_lo, mass_hi, pad=2)
    touches = False
    if msl is not None:
        sub_t = cv.t[msl]
        comps, n = ndimage.label(sub_t == Tissue.MASS)
        if n:
            sizes = np.bincount(comps.ravel())[1:]
            keep = comps == (int(np.argmax(sizes)) + 1)
            sub_t[(comps > 0) & ~keep] = Tissue.MED_FAT
            _source_view(label, flips, perm)[msl] = keep
            grown = ndimage.binary_dilation(keep, np.ones((3, 3, 3), bool))
            near = sub_t[grown & ~keep]
            touches = bool(np.isin(near, list(VESSEL_TISSUES)).any())
    info["mass_touches_vessel"] = touches
    info["mass_voxels"] = int(np.count_nonzero(label))

    # ---- Hounsfield units, texture, noise, smoothing -------------------------------------
    image = np.empty(geo.shape, dtype=np.int16)
    image_view = _source_view(image, flips, perm)     # written slab by slab, transposing
    noise_rng = np.random.default_rng(noise_ss)
    radius = max(1, int(2.5 * blur_sigma + 0.5))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / blur_sigma) ** 2)
    kernel /= kernel.sum()
    noise_pre = noise_sigma / float((kernel ** 2).sum())   # sd after the separable 2D blur
    all_sl = (slice(0, nz), slice(0, nxy), slice(0, nxy))
    for sub in cv.slabs(all_sl):
        t = cv.t[sub]
        hu = lut[t]
        u, v, w = cv.coords(sub)
        grad = f32(35.0) * np.clip((v + f32(70.0)) * f32(1 / 150.0), 0, 1)
        np.add(hu, grad, out=hu, where=t == Tissue.LUNG)   # dependent lung is denser
        if msl is not None:
            k0 = max(sub[0].start, msl[0].start)
            k1 = min(sub[0].stop, msl[0].stop)
            if k1 > k0:
                msub = (slice(k0, k1), msl[1], msl[2])
                mu, mv, mw = cv.coords(msub)
                tex = shape.texture((mu - f32(mass_c[0])) * inv_r, (mv - f32(mass_c[1])) * inv_r,
                                    (mw - f32(mass_c[2])) * inv_r)
                loc = (slice(k0 - sub[0].start, k1 - sub[0].start), msl[1], msl[2])
                hu[loc] += np.where(t[loc] == Tissue.MASS, tex, f32(0))
        noise = noise_rng.standard_normal(hu.shape, dtype=np.float32)
        noise *= f32(noise_pre)
        hu += noise
        del noise
        tmp = ndimage.correlate1d(hu, kernel, axis=1, mode="nearest")
        ndimage.correlate1d(tmp, kernel, axis=2, output=hu, mode="nearest")
        del tmp
        np.rint(hu, out=hu)
        np.clip(hu, -1024, 3071, out=hu)
        np.copyto(image_view[sub], hu, casting="unsafe")

    tissue_volume = None
    if tissue:
        tissue_map, _ = reorient(cv.t, gen_geometry, flips, perm)
        tissue_volume = Volume(tissue_map, geo)
    del cv
    return PhantomCase(Volume(image, geo), Volume(label, geo), tissue_volume, info)


def make_case(index: int, seed: int, size: str = "small") -> tuple[Volume, Volume]:
    """Case ``index`` of ``seed``: (image in HU, int16; label, uint8) on the same geometry."""
    case = generate_case(index, seed, size, tissue=False)
    return case.image, case.label


# --------------------------------------------------------------------------------------------
# A cohort in the Medical Segmentation Decathlon layout
# --------------------------------------------------------------------------------------------

TEST_INDEX_START = 1000   # test cases are indices 1000, 1001, ... (never training indices)


def cohort_indices(cases: int, test: int) -> tuple[list[int], list[int]]:
    """Case indices of the training part (0..cases-1) and of the held-out part."""
    start = max(TEST_INDEX_START, cases)
    return list(range(cases)), list(range(start, start + test))


def _check_count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name} must be a whole number, got {value!r}")
    if value < 0:
        raise ConfigError(f"{name} must be >= 0, got {value}")
    return int(value)


def make_cohort(out_dir, cases: int, labeled: int, test: int, seed: int = 0,
                size: str = "small", progress: bool = True) -> Path:
    """Write ``cases`` training images (the first ``labeled`` with labels) and ``test`` held-out
    labeled cases under ``out_dir`` in the Decathlon layout, with ``dataset.json``."""
    from ceds_deploy.io import write_atomic_text, write_volume

    cases = _check_count("cases", cases)
    labeled = _check_count("labeled", labeled)
    test = _check_count("test", test)
    seed = _check_count("seed", seed)
    if labeled > cases:
        raise ConfigError(f"labeled ({labeled}) must not exceed cases ({cases})")
    cfg = _size(size)
    out = Path(out_dir)
    train_idx, test_idx = cohort_indices(cases, test)
    jobs = [(i, "Tr", n < labeled) for n, i in enumerate(train_idx)] + [(i, "Ts", True) for i in test_idx]

    def name(i: int) -> str:
        return f"phantom_{i:03d}.nii.gz"

    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (out / sub).mkdir(parents=True, exist_ok=True)

    def run(advance) -> None:
        for i, part, with_label in jobs:
            image, label = make_case(i, seed, cfg.name)
            write_volume(out / f"images{part}" / name(i), image.array, image.geometry)
            if with_label:
                write_volume(out / f"labels{part}" / name(i), label.array, label.geometry)
            advance()

    if progress and jobs:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeRemainingColumn)

        with Progress(TextColumn("[bold]phantoms[/]"), BarColumn(), MofNCompleteColumn(),
                      TimeRemainingColumn()) as bar:
            task = bar.add_task("phantoms", total=len(jobs))
            run(lambda: bar.advance(task))
    else:
        run(lambda: None)

    dataset = {
        "name": "CEDS-phantoms",
        "description": (f"Synthetic chest CT with one mediastinal mass ({cfg.name} size, seed {seed}),"
                        " made by ceds_deploy.phantoms"),
        "reference": "ceds_deploy.phantoms",
        "licence": "CC0",
        "release": "1.0",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "tumour"},
        "numTraining": labeled,
        "numUnlabeled": cases - labeled,
        "numTest": test,
        "seed": seed,
        "size": cfg.name,
        "training": [{"image": f"imagesTr/{name(i)}", "label": f"labelsTr/{name(i)}"}
                     for i in train_idx[:labeled]],
        "unlabeled": [f"imagesTr/{name(i)}" for i in train_idx[labeled:]],
        "test": [f"imagesTs/{name(i)}" for i in test_idx],
        "test_labels": [f"labelsTs/{name(i)}" for i in test_idx],
    }
    write_atomic_text(out / "dataset.json", json.dumps(dataset, indent=2) + "\n")
    return out
