"""Rasterising implicit shapes: the `Canvas` (a tissue map and its index -> anatomy mapping),
the shape functions evaluated on it, and rotations.

Anatomy coordinates are millimetres of a nominal adult: +u = patient left, +v = posterior,
+w = superior (the LPS axes), origin near the carina. Shape functions take broadcastable float32
coordinate arrays and return float32 arrays; their constants are cast to float32 first so the
arithmetic stays in float32 (and the results stay reproducible bit for bit).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np

# An index box of a canvas: one slice per array axis.
Block = tuple[slice, slice, slice]
# A point or box corner in anatomy millimetres (u, v, w).
Point = Sequence[float] | np.ndarray
# What `Canvas.paint` calls on each slab: (tissue block, u, v, w) -> None.
SlabPainter = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], None]


class Canvas:
    """A uint8 tissue map ``t`` and ``nominal[a] = off[a] + sum_ax coef[a, ax] * index[ax]``
    (anatomy millimetres of each voxel index)."""

    def __init__(self, shape: tuple[int, int, int], coef: np.ndarray, off: np.ndarray, slab_voxels: int) -> None:
        self.shape = shape
        self.coef = np.asarray(coef, dtype=np.float64)
        self.off = np.asarray(off, dtype=np.float64)
        self.inv = np.linalg.inv(self.coef)
        self.slab_voxels = slab_voxels
        self.t = np.zeros(shape, dtype=np.uint8)

    def block(self, lo: Point, hi: Point, pad: int = 1) -> Block | None:
        """Index box (clipped) that contains the anatomy box [lo, hi]; None if it is empty."""
        corners = np.array(list(itertools.product(*zip(lo, hi))), dtype=np.float64)
        idx = (corners - self.off) @ self.inv.T
        a = np.floor(idx.min(axis=0)) - pad
        b = np.ceil(idx.max(axis=0)) + pad + 1
        a = np.clip(a, 0, self.shape).astype(int)
        b = np.clip(b, 0, self.shape).astype(int)
        if np.any(b <= a):
            return None
        return slice(int(a[0]), int(b[0])), slice(int(a[1]), int(b[1])), slice(int(a[2]), int(b[2]))

    def coords(self, sl: Block) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Anatomy coordinates of a block, as broadcastable float32 arrays (an axis-aligned grid
        gives (n,1,1), (1,m,1), (1,1,l) arrays, so in-plane shapes cost 2D work only)."""
        ranges = [np.arange(s.start, s.stop, dtype=np.float64) for s in sl]
        out: list[np.ndarray] = []
        for a in range(3):
            acc: np.ndarray | None = None
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
            if acc is None:  # the coefficient matrix is invertible, so no row is all zeros
                raise ValueError(f"canvas axis {a} does not depend on any index axis: {self.coef.tolist()}")
            out.append(acc)
        return out[0], out[1], out[2]

    def slabs(self, sl: Block) -> Iterator[Block]:
        """Split a block into slabs along axis 0 (the slice axis: contiguous memory)."""
        plane = (sl[1].stop - sl[1].start) * (sl[2].stop - sl[2].start)
        step = max(1, self.slab_voxels // max(plane, 1))
        for k0 in range(sl[0].start, sl[0].stop, step):
            yield (slice(k0, min(k0 + step, sl[0].stop)), sl[1], sl[2])

    def paint(self, lo: Point, hi: Point, fn: SlabPainter) -> None:
        """Call ``fn(tissue_block, u, v, w)`` on every slab of the box [lo, hi]."""
        sl = self.block(lo, hi)
        if sl is None:
            return
        for sub in self.slabs(sl):
            u, v, w = self.coords(sub)
            fn(self.t[sub], u, v, w)


def rotation(axis: Point, angle: float) -> np.ndarray:
    """The 3x3 rotation by ``angle`` radians about ``axis`` (Rodrigues)."""
    n = np.asarray(axis, dtype=np.float64)
    n = n / np.linalg.norm(n)
    k = np.array([[0, -n[2], n[1]], [n[2], 0, -n[0]], [-n[1], n[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random proper rotation (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))[None, :]
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def unit(*v: float) -> np.ndarray:
    """The vector ``v`` scaled to length 1."""
    vec = np.asarray(v, dtype=np.float64)
    return vec / np.linalg.norm(vec)


def ellipsoid_q(
    u: np.ndarray, v: np.ndarray, w: np.ndarray, centre: Point, radii: Point, rot: np.ndarray
) -> np.ndarray:
    """Normalised squared radius of a rotated ellipsoid (< 1 inside); rot columns = its axes."""
    du, dv, dw = u - np.float32(centre[0]), v - np.float32(centre[1]), w - np.float32(centre[2])

    def axis_term(k: int) -> np.ndarray:
        """The squared coordinate along the ellipsoid's axis ``k``, in units of its radius."""
        p = du * np.float32(rot[0, k]) + dv * np.float32(rot[1, k]) + dw * np.float32(rot[2, k])
        p = p * np.float32(1.0 / radii[k])
        return p * p

    q = axis_term(0)
    for k in (1, 2):
        q = q + axis_term(k)
    return q


def box_rho2(x: np.ndarray, y: np.ndarray, box: float) -> np.ndarray:
    """Squared normalised radius of a rounded box (box = 0: ellipse, 1: rectangle)."""
    x2, y2 = x * x, y * y
    return x2 + y2 - np.float32(box) * np.minimum(x2, 1) * np.minimum(y2, 1)


def capsule_d2(u: np.ndarray, v: np.ndarray, w: np.ndarray, a: Point, b: Point) -> np.ndarray:
    """Squared distance to the segment from ``a`` to ``b`` (a capsule of radius r is d2 < r*r)."""
    d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    l2 = float(d @ d) or 1e-9
    pu, pv, pw = u - np.float32(a[0]), v - np.float32(a[1]), w - np.float32(a[2])
    tt = pu * np.float32(d[0] / l2) + pv * np.float32(d[1] / l2) + pw * np.float32(d[2] / l2)
    np.clip(tt, 0, 1, out=tt)
    eu = pu - tt * np.float32(d[0])
    ev = pv - tt * np.float32(d[1])
    ew = pw - tt * np.float32(d[2])
    return eu * eu + ev * ev + ew * ew
