"""Painting the mediastinum and what runs through the lungs: mediastinal fat, heart, great
vessels, airways, oesophagus, lung vessel trees and the mass.

Each structure is painted only over the tissues it may replace (`tissues.allowed`), so the order
of the calls in `paint_mediastinum` decides what lies on top of what.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ceds_deploy.synthetic.anatomy import W_BOTTOM, W_TOP, Anatomy
from ceds_deploy.synthetic.mass import MassPlacement
from ceds_deploy.synthetic.raster import Canvas, SlabPainter, capsule_d2, ellipsoid_q
from ceds_deploy.synthetic.tissues import Tissue, allowed, put

f32 = np.float32
ONLY_LUNG = allowed(Tissue.LUNG)
ONLY_CAVITY = allowed(Tissue.LUNG, Tissue.MED_FAT)
NOT_BONE = ~allowed(Tissue.CORTEX, Tissue.MARROW)
FAT_SLEEVE_MM = 4.0  # mediastinal fat around every tube


def _capsule_painter(a: np.ndarray, b: np.ndarray, r: float, code: int, only: np.ndarray) -> SlabPainter:
    """What paints the capsule of radius ``r`` around the segment from ``a`` to ``b`` on a slab."""

    def paint(t: np.ndarray, u: np.ndarray, v: np.ndarray, w: np.ndarray) -> None:
        put(t, capsule_d2(u, v, w, a, b) < f32(r * r), code, only)

    return paint


def paint_tube(cv: Canvas, points: Sequence[np.ndarray], r: float, code: int, only: np.ndarray = NOT_BONE) -> None:
    """A polyline of capsules of radius ``r`` (nominal mm) through ``points``."""
    for a, b in zip(points[:-1], points[1:]):
        lo = np.minimum(a, b) - r
        hi = np.maximum(a, b) + r
        cv.paint(lo, hi, _capsule_painter(a, b, r, code, only))


def paint_ellipsoid(
    cv: Canvas, centre: np.ndarray, radii: np.ndarray, rot: np.ndarray, code: int, only: np.ndarray = NOT_BONE
) -> None:
    """A rotated ellipsoid (``rot`` columns = its axes)."""
    ext = float(np.max(radii))
    cv.paint(
        centre - ext, centre + ext, lambda t, u, v, w: put(t, ellipsoid_q(u, v, w, centre, radii, rot) < 1, code, only)
    )


def paint_mediastinum(cv: Canvas, anatomy: Anatomy, lung_vessels: list[tuple[np.ndarray, np.ndarray, float]]) -> None:
    """Mediastinal fat, lung vessel trees (``(start, end, radius)`` segments), oesophagus,
    airways, heart and great vessels, in that order."""
    heart = anatomy.heart
    vessel_tubes, airway_tubes = anatomy.vessels.tubes(), anatomy.airways.tubes()
    oesophagus = anatomy.airways.oesophagus
    cv.paint((-80, -100, W_BOTTOM - 50), (80, 60, W_TOP + 50), _mediastinal_fat)
    # fat around everything in the mediastinum
    paint_ellipsoid(cv, heart.centre, heart.radii + 7.0, heart.rotation, Tissue.MED_FAT, ONLY_LUNG)
    for pts, r in vessel_tubes + airway_tubes + [(oesophagus, 7.0)]:
        paint_tube(cv, pts, r + FAT_SLEEVE_MM, Tissue.MED_FAT, ONLY_CAVITY)
    for a, b, r in lung_vessels:  # inside the lungs only
        paint_tube(cv, [a, b], r, Tissue.LUNG_VESSEL, ONLY_LUNG)
    paint_tube(cv, oesophagus, 7.0, Tissue.MUSCLE)
    for pts, r in airway_tubes:
        paint_tube(cv, pts, r + 2.0, Tissue.MUSCLE)
    for pts, r in airway_tubes:
        paint_tube(cv, pts, r, Tissue.AIRWAY)
    _paint_heart(cv, anatomy)
    for pts, r in vessel_tubes:
        paint_tube(cv, pts, r, Tissue.BLOOD)


def _mediastinal_fat(t: np.ndarray, u: np.ndarray, v: np.ndarray, w: np.ndarray) -> None:
    """A z-dependent ellipse of fat between the lungs."""
    tw = np.clip((w + f32(30.0)) * f32(1 / 60.0), 0, 1)  # 0 at heart level, 1 above
    um = f32(12.0) + f32(-17.0) * tw
    am = f32(40.0) + f32(-12.0) * tw
    q = ((u - um) / am) ** 2 + ((v + f32(25.0)) * f32(1 / 62.0)) ** 2
    put(t, q < 1, Tissue.MED_FAT, ONLY_LUNG)


def _paint_heart(cv: Canvas, anatomy: Anatomy) -> None:
    """Myocardium, blood pool and a septum between the ventricles."""
    heart = anatomy.heart
    c, rot = heart.centre, heart.rotation
    paint_ellipsoid(cv, c, heart.radii, rot, Tissue.HEART)
    paint_ellipsoid(cv, c, heart.radii - 9.0, rot, Tissue.BLOOD, allowed(Tissue.HEART))

    def septum(t: np.ndarray, u: np.ndarray, v: np.ndarray, w: np.ndarray) -> None:
        du, dv, dw = u - f32(c[0]), v - f32(c[1]), w - f32(c[2])
        p1 = du * f32(rot[0, 1]) + dv * f32(rot[1, 1]) + dw * f32(rot[2, 1])
        put(t, np.abs(p1 - f32(4.0)) < f32(5.0), Tissue.HEART, allowed(Tissue.BLOOD))

    cv.paint(c - heart.radii, c + heart.radii, septum)


def paint_mass(cv: Canvas, mass: MassPlacement) -> None:
    """The mass pushes lung, fat, oesophagus and airway walls aside, but the heart, the vessels
    and the airway lumen keep their place (so it abuts them), and bone cuts it."""
    only = allowed(Tissue.LUNG, Tissue.LUNG_VESSEL, Tissue.MED_FAT, Tissue.MUSCLE)
    inv_r = f32(1.0 / mass.radius)
    c = mass.centre

    def paint(t: np.ndarray, u: np.ndarray, v: np.ndarray, w: np.ndarray) -> None:
        x = (u - f32(c[0])) * inv_r
        y = (v - f32(c[1])) * inv_r
        z = (w - f32(c[2])) * inv_r
        put(t, mass.shape.implicit(x, y, z) > 0, Tissue.MASS, only)

    cv.paint(*mass.bounds(), paint)
