"""The mediastinal mass: a lobulated, textured implicit shape (`MassShape`, in coordinates
normalised by its radius) and where it goes (`place_mass`, next to a heart or vessel anchor in
one of six mediastinal sites)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ceds_deploy.synthetic.anatomy import Anatomy
from ceds_deploy.synthetic.raster import box_rho2, capsule_d2, ellipsoid_q, random_rotation, unit

SITES = ("prevascular", "paratracheal", "subcarinal", "hilar", "pericardial", "paravertebral")
SITE_WEIGHTS = (0.35, 0.15, 0.1, 0.15, 0.15, 0.1)
TOUCH_PROBABILITY = 0.7  # share of masses placed against their anchor structure
MAX_BLOCKED_FRACTION = 0.3  # of the mass allowed inside other structures
PLACEMENT_ATTEMPTS = 24


@dataclass
class MassShape:
    """Union of rotated ellipsoid lobes with a wavy boundary and a wavy HU texture."""

    lobes: list[tuple[np.ndarray, np.ndarray, np.ndarray]]  # (centre, semi-axes, rotation)
    waves: np.ndarray  # (K, 3) wave vectors of the boundary perturbation
    phases: np.ndarray  # (K,)
    amplitude: float
    tex_waves: np.ndarray
    tex_phases: np.ndarray
    necrosis: float  # HU drop at the centre (0 = none)

    @classmethod
    def sample(cls, rng: np.random.Generator) -> MassShape:
        """Draw a shape: a main lobe and 1 to 4 smaller ones, a quarter with a necrotic core."""
        main_axes = np.array([0.85, rng.uniform(0.5, 0.85), rng.uniform(0.5, 0.85)])
        lobes = [(np.zeros(3), main_axes, random_rotation(rng))]
        for _ in range(int(rng.integers(1, 5))):
            size = rng.uniform(0.3, 0.5)
            direction = unit(*rng.standard_normal(3))
            dist = rng.uniform(0.25, 0.85 - size)
            axes = size * rng.uniform(0.75, 1.0, 3)
            lobes.append((direction * dist, axes, random_rotation(rng)))
        k = 5
        waves = rng.standard_normal((k, 3))
        waves *= (rng.uniform(2.5, 5.0, k) / np.linalg.norm(waves, axis=1))[:, None]
        tex = rng.standard_normal((6, 3))
        tex *= (rng.uniform(6.0, 14.0, 6) / np.linalg.norm(tex, axis=1))[:, None]
        necrosis = float(rng.uniform(10.0, 25.0)) if rng.random() < 0.25 else 0.0
        return cls(
            lobes,
            waves,
            rng.uniform(0, 2 * np.pi, k),
            float(rng.uniform(0.12, 0.3)),
            tex,
            rng.uniform(0, 2 * np.pi, 6),
            necrosis,
        )

    @staticmethod
    def _waves(x: np.ndarray, y: np.ndarray, z: np.ndarray, waves: np.ndarray, phases: np.ndarray) -> np.ndarray:
        """The mean of ``cos(k . (x, y, z) + phase)`` over the wave vectors ``waves`` (K, 3)."""
        terms = (
            np.cos(x * np.float32(kx) + y * np.float32(ky) + z * np.float32(kz) + np.float32(ph))
            for (kx, ky, kz), ph in zip(waves, phases)
        )
        acc = next(terms, None)
        if acc is None:
            raise ValueError("a wave sum needs at least one wave vector and phase")
        for term in terms:
            acc = acc + term
        return acc * np.float32(1.0 / len(waves))

    def implicit(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """> 0 inside (x, y, z in units of the mass radius, centred)."""
        lobe_values = (1 - ellipsoid_q(x, y, z, centre, axes, rot) for centre, axes, rot in self.lobes)
        f = next(lobe_values, None)
        if f is None:
            raise ValueError("a mass shape needs at least one lobe")
        for g in lobe_values:
            f = np.maximum(f, g)
        return f + np.float32(self.amplitude) * self._waves(x, y, z, self.waves, self.phases)

    def texture(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """HU offset around the mass's base value."""
        tex: np.ndarray = np.float32(12.0) * self._waves(x, y, z, self.tex_waves, self.tex_phases)
        if self.necrosis:
            centre, axes, rot = self.lobes[0]
            q = ellipsoid_q(x, y, z, centre, axes, rot)
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


@dataclass(frozen=True)
class MassPlacement:
    """A drawn mass: its shape, size (``radius`` in nominal mm), site and centre."""

    shape: MassShape
    diameter_mm: float  # maximal (Feret) diameter, physical
    radius: float  # the shape's unit, nominal mm
    site: str
    touching: bool  # placed against its anchor (it may still end up apart)
    centre: np.ndarray
    blocked_fraction: float  # share of the mass inside other structures at ``centre``
    base_hu: float

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Corners (nominal mm) of a box that holds the whole mass."""
        return self.centre - 1.1 * self.radius, self.centre + 1.1 * self.radius


def place_mass(
    rng: np.random.Generator, anatomy: Anatomy, diameter_range: tuple[float, float], scale: float
) -> MassPlacement:
    """Draw a mass and place it next to its anchor structure, then move it (further out, in a
    slowly more random direction) until at most 30 % of it would fall inside the heart, a
    vessel, an airway or the spine, or outside the rib cage; the least blocked place wins if
    none is free enough. ``scale``: physical mm per nominal mm."""
    shape = MassShape.sample(rng)
    diameter = float(rng.uniform(*diameter_range))
    r_phys = diameter / shape.normalised_feret()
    r_mass = r_phys / scale  # nominal millimetres
    site = str(rng.choice(list(SITES), p=list(SITE_WEIGHTS)))
    touch = bool(rng.random() < TOUCH_PROBABILITY)
    anchor, radius, direction = _anchor(rng, site, anatomy)
    probe = shape.sample_points(rng, 300)
    offset = r_mass * (rng.uniform(0.3, 0.6) if touch else rng.uniform(1.1, 1.4)) + (0 if touch else 3)
    best: tuple[float, np.ndarray] | None = None  # (blocked fraction, centre) of the freest attempt
    for attempt in range(PLACEMENT_ATTEMPTS):
        d = direction if attempt == 0 else unit(*(direction + 0.25 * attempt**0.7 * rng.standard_normal(3)))
        centre = anchor + d * (radius + offset + 0.12 * r_mass * attempt)
        frac = _blocked_fraction(centre + r_mass * probe, anatomy)
        if best is None or frac < best[0]:
            best = (frac, centre)
        if frac <= MAX_BLOCKED_FRACTION:
            break
    if best is None:
        raise RuntimeError(f"unreachable: PLACEMENT_ATTEMPTS ({PLACEMENT_ATTEMPTS}) makes at least one attempt")
    base_hu = float(rng.uniform(40.0, 55.0) if shape.necrosis else rng.uniform(30.0, 55.0))
    return MassPlacement(shape, diameter, r_mass, site, touch, best[1], best[0], base_hu)


def _anchor(rng: np.random.Generator, site: str, anatomy: Anatomy) -> tuple[np.ndarray, float, np.ndarray]:
    """The structure a mass at ``site`` grows from: a point on it, its radius there (nominal
    mm) and the direction to push the mass out."""
    vessels, heart = anatomy.vessels, anatomy.heart
    if site == "prevascular":
        asc = vessels.ascending
        t_ = rng.uniform(0.5, 1.0)
        anchor, radius = asc[0] + t_ * (asc[1] - asc[0]), vessels.aorta_radius
        direction = unit(rng.uniform(-0.5, 0.5), -1.0, rng.uniform(-0.3, 0.3))
    elif site == "paratracheal":
        svc = vessels.svc
        anchor, radius = svc[0] + rng.uniform(0.4, 0.7) * (svc[1] - svc[0]), 9.0
        direction = unit(rng.uniform(0.2, 0.7), rng.uniform(0.3, 1.0), rng.uniform(-0.3, 0.3))
    elif site == "subcarinal":
        anchor, radius = vessels.pulmonary_bifurcation, vessels.pulmonary_radius
        direction = unit(rng.uniform(-0.3, 0.3), rng.uniform(0.5, 1.0), rng.uniform(-1.0, -0.3))
    elif site == "hilar":
        side = 1.0 if rng.random() < 0.5 else -1.0
        artery = vessels.left_pulmonary if side > 0 else vessels.right_pulmonary
        anchor, radius = artery[-1], vessels.pulmonary_radius * 0.75
        direction = unit(side * rng.uniform(0.2, 0.7), rng.uniform(-1, 1), rng.uniform(-1, 1))
    elif site == "pericardial":
        anchor = heart.centre
        direction = unit(rng.uniform(-1.0, -0.3), rng.uniform(-1.0, -0.3), rng.uniform(-0.3, 0.5))
        local = heart.rotation.T @ direction
        radius = float(1.0 / np.sqrt(np.sum((local / heart.radii) ** 2)))
    else:  # paravertebral, beside the descending aorta
        desc = vessels.descending
        anchor, radius = desc[0] + rng.uniform(0.2, 0.8) * (desc[1] - desc[0]), vessels.descending_radius
        direction = unit(rng.uniform(0.3, 1.0), rng.uniform(-0.2, 0.5), rng.uniform(-0.3, 0.3))
    return anchor, radius, direction


def _blocked_fraction(pts: np.ndarray, anatomy: Anatomy) -> float:
    """Share of the points (n, 3) inside the heart, a vessel, an airway or a vertebral body, or
    outside the rib cage, below the diaphragm or above the apices."""
    body, lungs, heart, spine = anatomy.body, anatomy.lungs, anatomy.heart, anatomy.skeleton
    cav_a, cav_b = body.half_width - body.pleura_depth, body.half_depth - body.pleura_depth
    u, v, w = pts[:, 0], pts[:, 1], pts[:, 2]
    bad = ellipsoid_q(u, v, w, heart.centre, heart.radii, heart.rotation) < 1
    bad |= box_rho2(u / cav_a, v / cav_b, body.box) > 0.85
    bad |= u * u + (v - spine.vertebra_v) ** 2 < (spine.vertebra_radius + 4) ** 2
    bad |= (w < lungs.dome_right - 25) | (w > lungs.apex - 15)
    for chain, r in anatomy.vessels.tubes() + anatomy.airways.tubes():
        for a_, b_ in zip(chain[:-1], chain[1:]):
            bad |= capsule_d2(u, v, w, a_, b_) < r * r
    return float(bad.mean())
