"""The anatomy of one case in nominal millimetres (anatomy coordinates, see `raster`), drawn
from the case's random generator one structure group at a time.

The draws happen in a fixed order (body wall, lung limits, contrast, heart, great vessels,
airways, spine and ribs, table, stomach gas): a case's index and seed fix its anatomy, so the
order must not change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ceds_deploy.synthetic.raster import Point, rotation, unit

A_NOMINAL = 160.0  # nominal body half-width (mm)
W_TOP, W_BOTTOM = 140.0, -200.0  # nominal z window: above the lung apices to the upper abdomen

Tube = tuple[list[np.ndarray], float]  # a polyline of centre points and its radius
# A lung vessel branch still to grow: (start, direction, length, radius, target point).
_Branch = tuple[np.ndarray, np.ndarray, float, float, np.ndarray]


def jitter(rng: np.random.Generator, value: float, rel: float = 0.08) -> float:
    """``value`` times a uniform factor in [1 - rel, 1 + rel]."""
    return float(value * (1 + rel * rng.uniform(-1, 1)))


def jitter_point(rng: np.random.Generator, point: Point, mm: float = 4.0) -> np.ndarray:
    """``point`` moved by up to ``mm`` along each axis (uniform)."""
    return np.asarray(point, dtype=np.float64) + rng.uniform(-mm, mm, 3)


@dataclass(frozen=True)
class BodyWall:
    """A rounded-box trunk and the depths (under the skin) of its layers."""

    half_width: float  # A: left-right semi-axis
    half_depth: float  # B: anterior-posterior semi-axis
    box: float  # 0 = ellipse, 1 = rectangle
    skin: float
    subcutaneous_fat: float
    muscle: float
    rib_depth: float  # outer surface of the rib layer
    rib_thickness: float
    pleura_depth: float  # inner surface of the chest wall


@dataclass(frozen=True)
class LungLimits:
    """Heights (w) of the diaphragm domes and of the lung apices at their highest."""

    dome_right: float
    dome_left: float
    apex: float


@dataclass(frozen=True)
class Heart:
    """An ellipsoid: centre, semi-axes and rotation (columns = its axes)."""

    centre: np.ndarray
    radii: np.ndarray
    rotation: np.ndarray


@dataclass(frozen=True)
class GreatVessels:
    """Centre lines (polylines) and radii of the aorta, pulmonary arteries and veins, cavae and
    arch branches."""

    aorta_radius: float
    descending_radius: float
    ascending: list[np.ndarray]
    arch: list[np.ndarray]
    descending: list[np.ndarray]
    pulmonary_radius: float
    pulmonary_bifurcation: np.ndarray
    pulmonary_trunk: list[np.ndarray]
    left_pulmonary: list[np.ndarray]
    right_pulmonary: list[np.ndarray]
    svc: list[np.ndarray]
    ivc: list[np.ndarray]
    branches: list[tuple[np.ndarray, np.ndarray, float]]  # arch branches, brachiocephalic vein
    pulmonary_veins: list[tuple[np.ndarray, np.ndarray, float]]

    def tubes(self) -> list[Tube]:
        """Every vessel as a tube, in painting order."""
        tubes = [
            (self.ascending, self.aorta_radius),
            (self.arch, self.aorta_radius * 0.9),
            (self.descending, self.descending_radius),
            (self.pulmonary_trunk, self.pulmonary_radius),
            (self.left_pulmonary, self.pulmonary_radius * 0.75),
            (self.right_pulmonary, self.pulmonary_radius * 0.75),
            (self.svc, 9.0),
            (self.ivc, 11.0),
        ]
        tubes += [([a, b], r) for a, b, r in self.branches]
        tubes += [([a, b], r) for a, b, r in self.pulmonary_veins]
        return tubes


@dataclass(frozen=True)
class Airways:
    """Trachea and main bronchi, and the oesophagus behind them."""

    trachea: list[np.ndarray]
    trachea_radius: float
    bronchi: list[tuple[np.ndarray, np.ndarray, float]]
    oesophagus: list[np.ndarray]

    def tubes(self) -> list[Tube]:
        """Trachea and bronchi (lumen radius) as tubes; the oesophagus is not an airway."""
        return [(self.trachea, self.trachea_radius)] + [([a, b], r) for a, b, r in self.bronchi]


@dataclass(frozen=True)
class Skeleton:
    """The spine (vertebral bodies repeating along w) and the ribs' spiral pattern."""

    vertebra_v: float  # vertebral body centre (v)
    vertebra_radius: float
    canal_v: float  # spinal canal centre (v)
    vertebra_period: float
    vertebra_phase: float
    rib_period: float
    rib_phase: float
    rib_slope: float  # how much lower a rib is anteriorly than at the spine


@dataclass(frozen=True)
class Anatomy:
    """Everything drawn about a case's anatomy, before the mass and the grid."""

    body: BodyWall
    lungs: LungLimits
    contrast: bool
    heart: Heart
    vessels: GreatVessels
    airways: Airways
    skeleton: Skeleton
    table: bool
    stomach_gas: bool


def sample_anatomy(rng: np.random.Generator, contrast_fraction: float) -> Anatomy:
    """Draw a case's anatomy from ``rng`` (``contrast_fraction``: the chance of a
    contrast-enhanced scan)."""
    body = _sample_body_wall(rng)
    lungs = _sample_lung_limits(rng)
    contrast = bool(rng.random() < contrast_fraction)
    heart = _sample_heart(rng)
    vessels = _sample_great_vessels(rng)
    airways = _sample_airways(rng)
    skeleton = _sample_skeleton(rng)
    table = bool(rng.random() < 0.6)
    stomach_gas = bool(rng.random() < 0.6)
    return Anatomy(body, lungs, contrast, heart, vessels, airways, skeleton, table, stomach_gas)


def _sample_body_wall(rng: np.random.Generator) -> BodyWall:
    half_depth = A_NOMINAL * float(rng.uniform(0.64, 0.76))
    box = float(rng.uniform(0.2, 0.45))
    skin = 2.0
    fat = float(rng.uniform(5.0, 18.0))
    muscle = float(rng.uniform(6.0, 12.0))
    rib_depth = skin + fat + muscle
    rib_thickness = float(rng.uniform(7.0, 9.0))
    return BodyWall(
        A_NOMINAL,
        half_depth,
        box,
        skin,
        fat,
        muscle,
        rib_depth,
        rib_thickness,
        pleura_depth=rib_depth + rib_thickness + 2.0,
    )


def _sample_lung_limits(rng: np.random.Generator) -> LungLimits:
    dome_right = jitter(rng, -95.0, 0.1)
    dome_left = dome_right - float(rng.uniform(5.0, 20.0))
    return LungLimits(dome_right, dome_left, apex=jitter(rng, 118.0, 0.06))


def _sample_heart(rng: np.random.Generator) -> Heart:
    centre = jitter_point(rng, (20.0, -25.0, -68.0), 5.0)
    radii = np.array([jitter(rng, 62.0), jitter(rng, 46.0), jitter(rng, 52.0)])
    rot = rotation((0, 0, 1), math.radians(rng.uniform(-45, -30))) @ rotation(
        (0, 1, 0), math.radians(rng.uniform(15, 30))
    )
    return Heart(centre, radii, rot)


def _sample_great_vessels(rng: np.random.Generator) -> GreatVessels:
    jp = jitter_point
    aorta_r = jitter(rng, 15.0, 0.12)
    asc = [jp(rng, (-10.0, -30.0, -35.0), 3), jp(rng, (-14.0, -30.0, 30.0), 3)]
    arch_top = jitter(rng, 50.0, 0.1)
    desc_top = jp(rng, (24.0, 28.0, 26.0), 3)
    arch = [
        asc[1],
        np.array([-9.0, -20.0, arch_top - 6]),
        np.array([0.0, -6.0, arch_top]),
        np.array([14.0, 10.0, arch_top - 2]),
        np.array([22.0, 22.0, arch_top - 12]),
        desc_top,
    ]
    desc = [desc_top, jp(rng, (22.0, 32.0, -70.0), 3), jp(rng, (10.0, 34.0, -210.0), 3)]
    pa_bif = jp(rng, (10.0, -18.0, -5.0), 3)
    pa_trunk = [jp(rng, (22.0, -40.0, -42.0), 3), pa_bif]
    lpa = [pa_bif, jp(rng, (38.0, 0.0, 2.0), 3), jp(rng, (62.0, 8.0, -4.0), 4)]
    rpa = [pa_bif, jp(rng, (-22.0, -12.0, -8.0), 3), jp(rng, (-62.0, 0.0, -12.0), 4)]
    svc = [jp(rng, (-40.0, -18.0, 110.0), 3), jp(rng, (-36.0, -20.0, -25.0), 3)]
    ivc = [jp(rng, (-22.0, 0.0, -120.0), 3), jp(rng, (-22.0, 8.0, -210.0), 3)]
    branches = [  # (start, end, radius) of the arch branches and brachiocephalic veins
        (np.array([-7.0, -22.0, arch_top - 3]), jp(rng, (-22.0, -16.0, 150.0)), 6.5),
        (np.array([2.0, -8.0, arch_top]), jp(rng, (14.0, -10.0, 150.0)), 4.5),
        (np.array([12.0, 6.0, arch_top - 3]), jp(rng, (34.0, 8.0, 150.0)), 5.5),
        (jp(rng, (48.0, -28.0, 95.0)), svc[0] + np.array([0.0, 0.0, -15.0]), 6.0),
    ]
    pulm_veins = [
        (jp(rng, (8.0, 5.0, -50.0)), jp(rng, (side * 55.0, 12.0, dz)), 7.0) for side in (-1, 1) for dz in (-30.0, -55.0)
    ]
    return GreatVessels(
        aorta_r,
        aorta_r * 0.8,
        asc,
        arch,
        desc,
        aorta_r * 0.85,
        pa_bif,
        pa_trunk,
        lpa,
        rpa,
        svc,
        ivc,
        branches,
        pulm_veins,
    )


def _sample_airways(rng: np.random.Generator) -> Airways:
    trachea = [jitter_point(rng, (0.0, -6.0, 160.0), 2), jitter_point(rng, (0.0, -2.0, 5.0), 2)]
    radius = jitter(rng, 9.0, 0.1)
    bronchi = [
        (trachea[1], jitter_point(rng, (-45.0, 2.0, -15.0), 3), radius * 0.75),
        (trachea[1], jitter_point(rng, (48.0, 8.0, -28.0), 3), radius * 0.7),
    ]
    oesophagus = [jitter_point(rng, (6.0, 14.0, 160.0), 2), jitter_point(rng, (12.0, 16.0, -120.0), 3)]
    return Airways(trachea, radius, bronchi, oesophagus)


def _sample_skeleton(rng: np.random.Generator) -> Skeleton:
    vertebra_v = jitter(rng, 44.0, 0.05)
    vertebra_r = jitter(rng, 18.0, 0.08)
    vertebra_period = jitter(rng, 26.0, 0.06)
    vertebra_phase = float(rng.uniform(0, vertebra_period))
    rib_period = jitter(rng, 27.0, 0.08)
    rib_phase = float(rng.uniform(0, rib_period))
    rib_slope = float(rng.uniform(110.0, 140.0))
    return Skeleton(
        vertebra_v,
        vertebra_r,
        vertebra_v + vertebra_r + 10.0,
        vertebra_period,
        vertebra_phase,
        rib_period,
        rib_phase,
        rib_slope,
    )


def grow_lung_vessel_trees(
    rng: np.random.Generator, anatomy: Anatomy, min_radius: float
) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Branching vessel trees from each hilum (pulmonary artery ends and vein ends): each branch
    heads for a random point of its lung, so the trees spread through the lung. Branches stop
    below ``min_radius`` (nominal mm) or past 6000 segments. Out: (start, end, radius) segments.
    """
    vessels = anatomy.vessels
    roots = [(vessels.left_pulmonary[-1], 1.0), (vessels.right_pulmonary[-1], -1.0)]
    roots += [(end, np.sign(end[0])) for _, end, _ in vessels.pulmonary_veins]
    segments: list[tuple[np.ndarray, np.ndarray, float]] = []
    for hilum, side in roots:
        for _ in range(4):
            target = _lung_point(rng, anatomy, side)
            d = unit(*(target - hilum))
            stack = [(hilum, d, float(rng.uniform(25, 40)), float(rng.uniform(3.5, 5.0)), target)]
            while stack:
                a, d, length, r, target = stack.pop()
                b = a + d * length
                segments.append((a, b, r))
                if r * 0.75 < min_radius or len(segments) > 6000:
                    continue
                stack.extend(_child_branches(rng, b, d, length, r, target))
    return segments


def _lung_point(rng: np.random.Generator, anatomy: Anatomy, side: float) -> np.ndarray:
    body, lungs = anatomy.body, anatomy.lungs
    return np.array(
        [
            side * rng.uniform(45.0, body.half_width - body.pleura_depth - 15.0),
            rng.uniform(-(body.half_depth - body.pleura_depth) + 15.0, body.half_depth - body.pleura_depth - 25.0),
            rng.uniform(lungs.dome_right - 10.0, lungs.apex - 30.0),
        ]
    )


def _child_branches(
    rng: np.random.Generator, b: np.ndarray, d: np.ndarray, length: float, r: float, target: np.ndarray
) -> list[_Branch]:
    """Two branches from ``b``: each turns away from direction ``d`` by a random angle about a
    random normal axis, then half-way towards its own target (near the parent's)."""
    draws = rng.standard_normal((2, 6))
    angles = np.radians(rng.uniform(15, 45, 2))
    shrink = rng.uniform(0.75, 0.9, 2)
    children: list[_Branch] = []
    for k in range(2):
        child_target = target + 30.0 * draws[k, :3]
        perp = np.cross(d, draws[k, 3:])  # a random axis normal to d
        perp /= math.sqrt(float(perp @ perp)) + 1e-9
        nd = d * math.cos(angles[k]) + np.cross(perp, d) * math.sin(angles[k])
        to_target = child_target - b
        to_target /= math.sqrt(float(to_target @ to_target)) + 1e-9
        nd = 0.5 * nd + 0.5 * to_target
        nd /= math.sqrt(float(nd @ nd)) + 1e-9
        children.append((b, nd, length * float(shrink[k]), r * 0.75, child_target))
    return children
