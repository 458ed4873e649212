"""Painting the trunk: body layers, chest-wall bones, lungs, upper abdomen, table, stomach gas,
paraspinal muscles and the spine.

Everything of the trunk that depends on (u, v) only is tabulated once on a fine 2D grid (half an
in-plane voxel), so the 3D pass costs a few lookups per voxel even when the case's grid is
oblique (where no coordinate is constant along a slice).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from ceds_deploy.synthetic.anatomy import W_BOTTOM, W_TOP, Anatomy
from ceds_deploy.synthetic.raster import Canvas, box_rho2, ellipsoid_q
from ceds_deploy.synthetic.tissues import Tissue, allowed, put

f32 = np.float32
EVERYWHERE = ((-10_000.0, -10_000.0, -10_000.0), (10_000.0, 10_000.0, 10_000.0))


@dataclass(frozen=True)
class _TrunkTables:
    """2D tables on the grid ``u = u0 + h * i``, ``v = v0 + h * j``, flattened (row j)."""

    u0: float
    v0: float
    h: float
    nu: int
    code: np.ndarray  # body layers and table
    depth: np.ndarray  # depth under the skin (nominal mm)
    dome: np.ndarray  # diaphragm height
    apex: np.ndarray  # lung apex height
    liver: np.ndarray  # True on the liver's side


def _depth_under_skin(u: np.ndarray, v: np.ndarray, anatomy: Anatomy) -> tuple[np.ndarray, np.ndarray]:
    """Approximate depth (nominal mm) under the skin, and the normalised body radius."""
    body = anatomy.body
    r = np.sqrt(u * u + v * v)
    rho = np.sqrt(box_rho2(u * f32(1 / body.half_width), v * f32(1 / body.half_depth), body.box))
    return r * (1 - rho) / np.maximum(rho, f32(1e-3)), rho


def _tabulate_trunk(cv: Canvas, anatomy: Anatomy, h: float) -> _TrunkTables:
    """The 2D tables over the (u, v) extent of the canvas, with a margin."""
    body, lungs = anatomy.body, anatomy.lungs
    A, B = body.half_width, body.half_depth
    corners = np.array(list(itertools.product(*[(0, n - 1) for n in cv.shape])), dtype=np.float64)
    corners_nom = cv.off + corners @ cv.coef.T
    u0, v0 = corners_nom[:, 0].min() - 2 * h, corners_nom[:, 1].min() - 2 * h
    nu = int(np.ceil((corners_nom[:, 0].max() - u0) / h)) + 3
    nv = int(np.ceil((corners_nom[:, 1].max() - v0) / h)) + 3
    gu = (u0 + h * np.arange(nu, dtype=np.float64)).astype(np.float32)[None, :]
    gv = (v0 + h * np.arange(nv, dtype=np.float64)).astype(np.float32)[:, None]
    depth2, rho2 = _depth_under_skin(gu, gv, anatomy)
    code2 = np.zeros((nv, nu), dtype=np.uint8)
    put(code2, rho2 < 1, Tissue.MUSCLE)
    put(code2, (rho2 < 1) & (depth2 > body.skin), Tissue.FAT)
    put(code2, depth2 > body.skin + body.subcutaneous_fat, Tissue.MUSCLE)
    if anatomy.table:
        put(code2, (gv > B + 8) & (gv < B + 14) & (np.abs(gu) < 0.85 * A), Tissue.TABLE)
    put(code2, depth2 > body.pleura_depth, Tissue.MED_FAT)
    au2 = np.abs(gu)
    dome2 = (
        np.where(gu < 0, f32(lungs.dome_right), f32(lungs.dome_left))
        - f32(70.0) * ((au2 - f32(55.0)) * f32(1 / 75.0)) ** 2
        - f32(30.0) * ((gv + f32(10.0)) * f32(1 / 90.0)) ** 2
        - f32(30.0) * np.clip(gv * f32(1 / 80.0), 0, 1)
    )
    apex2 = (
        f32(lungs.apex)
        - f32(45.0) * ((au2 - f32(55.0)) * f32(1 / 60.0)) ** 2
        - f32(40.0) * ((gv - f32(5.0)) * f32(1 / 75.0)) ** 2
    )

    def flat(m: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.broadcast_to(m, (nv, nu))).ravel()

    return _TrunkTables(u0, v0, h, nu, flat(code2), flat(depth2), flat(dome2), flat(apex2), flat(gu < f32(15.0)))


def paint_trunk(cv: Canvas, anatomy: Anatomy, half_voxel: float) -> None:
    """Body layers, table, lungs, upper abdomen and the bones of the chest wall, over the whole
    canvas. ``half_voxel``: half the in-plane spacing in nominal mm (the 2D table step)."""
    tables = _tabulate_trunk(cv, anatomy, half_voxel)
    pleura = anatomy.body.pleura_depth

    def trunk(t: np.ndarray, u: np.ndarray, v: np.ndarray, w: np.ndarray) -> None:
        iu = np.rint((u - f32(tables.u0)) * f32(1 / tables.h)).astype(np.int32)
        iv = np.rint((v - f32(tables.v0)) * f32(1 / tables.h)).astype(np.int32)
        flat = iv * np.int32(tables.nu) + iu
        np.copyto(t, tables.code[flat])
        depth = tables.depth[flat]
        taper = f32(55.0) * np.clip((w - f32(35.0)) * f32(1 / 95.0), 0, 1) ** 2  # narrower apices
        cav = depth > pleura + taper
        above = w > tables.dome[flat]
        put(t, cav & above & (w < tables.apex[flat]), Tissue.LUNG)
        below = cav & ~above
        liver = tables.liver[flat]
        put(t, below & liver, Tissue.LIVER)
        put(t, below & ~liver, Tissue.SOFT)
        _paint_wall_bones(t, u, v, w, depth, anatomy)

    cv.paint(*EVERYWHERE, trunk)


def _paint_wall_bones(
    t: np.ndarray, u: np.ndarray, v: np.ndarray, w: np.ndarray, depth: np.ndarray, anatomy: Anatomy
) -> None:
    """Ribs, sternum and scapulae, evaluated only in the thin shell of the wall that can hold
    them."""
    body, ribs, apex = anatomy.body, anatomy.skeleton, anatomy.lungs.apex
    d_rib, rib_th = body.rib_depth, body.rib_thickness
    scap_lo, scap_hi = body.skin + body.subcutaneous_fat + 2.0, body.skin + body.subcutaneous_fat + 6.0
    band_lo, band_hi = min(d_rib - 3.0, scap_lo), d_rib + rib_th + 1.0
    band = (depth > f32(band_lo)) & (depth < f32(band_hi))
    if not band.any():
        return
    full = np.broadcast_to(band, t.shape)
    pick = lambda a: np.broadcast_to(a, t.shape)[full]  # noqa: E731
    u, v, w, depth = pick(u), pick(v), pick(w), pick(depth)
    codes = t[full]
    phi = np.arctan2(np.abs(u), -v)  # 0 anterior, pi posterior
    zr = w + f32(ribs.rib_slope) * (1 - phi * f32(1 / np.pi)) ** f32(1.3) - f32(ribs.rib_phase)
    phase = np.mod(zr, f32(ribs.rib_period))
    er = (depth - f32(d_rib + rib_th / 2)) * f32(2 / rib_th)
    ez = (phase - f32(5.5)) * f32(1 / 5.5)
    e = er * er + ez * ez
    rib = (e < 1) & (phi > f32(0.35)) & (phi < f32(2.75)) & (w < f32(apex + 10))
    put(codes, rib, Tissue.MARROW)
    put(codes, rib & (e > f32(0.4)), Tissue.CORTEX)
    stern = (
        (np.abs(u) < f32(15.0))
        & (v < 0)
        & (depth > f32(d_rib - 3))
        & (depth < f32(d_rib + 9))
        & (w > f32(-150.0))
        & (w < f32(95.0))
    )
    put(codes, stern, Tissue.MARROW)
    stern_edge = stern & ((np.abs(u) > f32(12.5)) | (depth < f32(d_rib - 1)) | (depth > f32(d_rib + 7)))
    put(codes, stern_edge, Tissue.CORTEX)
    scap = (depth > f32(scap_lo)) & (depth < f32(scap_hi)) & (phi > f32(2.0)) & (phi < f32(2.5)) & (w > f32(-40.0))
    put(codes, scap, Tissue.CORTEX)
    t[full] = codes


def paint_stomach_gas(cv: Canvas, anatomy: Anatomy) -> None:
    """A gas bubble in the stomach (under the left dome), over soft tissue only."""
    gas_c = np.array([55.0, -10.0, anatomy.lungs.dome_left - 40.0])
    gas_r = np.array([30.0, 25.0, 18.0])
    cv.paint(
        gas_c - gas_r,
        gas_c + gas_r,
        lambda t, u, v, w: put(t, ellipsoid_q(u, v, w, gas_c, gas_r, np.eye(3)) < 1, Tissue.GAS, allowed(Tissue.SOFT)),
    )


def paint_paraspinal_muscles(cv: Canvas, anatomy: Anatomy) -> None:
    """Muscles beside the spine; they displace lung, fat, lung vessels and the mass."""
    B, vb_v = anatomy.body.half_depth, anatomy.skeleton.vertebra_v

    def paraspinal(t: np.ndarray, u: np.ndarray, v: np.ndarray, w: np.ndarray) -> None:
        q = (u * f32(1 / 45.0)) ** 2 + ((v - f32(B - 15.0)) * f32(1 / 30.0)) ** 2
        put(t, q < 1, Tissue.MUSCLE, allowed(Tissue.LUNG, Tissue.MED_FAT, Tissue.MASS, Tissue.LUNG_VESSEL))

    cv.paint((-50, vb_v, W_BOTTOM - 50), (50, B, W_TOP + 50), paraspinal)


def paint_spine(cv: Canvas, anatomy: Anatomy) -> None:
    """Vertebral bodies (marrow, cortex, discs), posterior arches with spinous and transverse
    processes, and the spinal canal."""
    sk = anatomy.skeleton
    vb_v, vb_r, canal_v = sk.vertebra_v, sk.vertebra_radius, sk.canal_v
    period = sk.vertebra_period

    def spine(t: np.ndarray, u: np.ndarray, v: np.ndarray, w: np.ndarray) -> None:
        phase = np.mod(w - f32(sk.vertebra_phase), f32(period))
        disc = phase < f32(5.0)
        rb = np.sqrt(u * u + (v - f32(vb_v)) ** 2)
        in_body = rb < f32(vb_r)
        put(t, in_body, Tissue.MARROW)
        edge = (rb > f32(vb_r - 2.5)) | (phase < f32(6.5)) | (phase > f32(period - 1.5))
        put(t, in_body & edge, Tissue.CORTEX)
        put(t, in_body & disc, Tissue.DISC)
        rc = np.sqrt(u * u + (v - f32(canal_v)) ** 2)
        post = (phase > f32(4.0)) & (phase < f32(period - 4.0))
        arch_ = (rc > f32(9.0)) & (rc < f32(15.0)) & (v > f32(canal_v - 5.0))
        spinous = (np.abs(u) < f32(4.0)) & (v > f32(canal_v + 12.0)) & (v < f32(canal_v + 40.0))
        transverse = (np.abs(v - f32(canal_v - 2.0)) < f32(5.0)) & (np.abs(u) < f32(36.0))
        put(t, post & (arch_ | spinous | transverse), Tissue.CORTEX)
        put(t, rc < f32(9.0), Tissue.CSF)

    cv.paint((-45, vb_v - vb_r - 2, W_BOTTOM - 50), (45, canal_v + 45, W_TOP + 50), spine)
