"""`Geometry` and `Volume`: the only place where the voxel-to-world mapping is defined.

Conventions (the same as ITK/SimpleITK and DICOM):
- world coordinates are LPS millimetres;
- the array is indexed ``array[i, j, k]`` with axis 0 = ITK's x (columns), 1 = y (rows),
  2 = z (slices), so ``spacing[a]`` and ``direction[:, a]`` belong to array axis ``a``
  (this is also MONAI's channel-less (H, W, D) order);
- ``world = origin + direction @ (spacing * index)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ceds_deploy.errors import ConfigError

Triple = tuple[float, ...]  # three values; normalised to floats in Geometry.__post_init__
Matrix3 = tuple[Triple, ...]


@dataclass(frozen=True)
class Geometry:
    """A voxel grid in LPS world space: `spacing` (mm), `origin` (mm), `direction` (3x3, rows) and `shape`.

    Values are normalised to plain float/int tuples; `ConfigError` unless there are three of each and every
    spacing is positive.
    """

    spacing: Triple
    origin: Triple
    direction: Matrix3 | npt.ArrayLike  # 3x3, stored as rows; column a is the world direction of array axis a
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        # Normalise to plain float/int tuples so equality and hashing behave.
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        object.__setattr__(self, "origin", tuple(float(o) for o in self.origin))
        rows = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        object.__setattr__(self, "direction", tuple(tuple(float(v) for v in r) for r in rows))
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        if len(self.spacing) != 3 or len(self.origin) != 3 or len(self.shape) != 3:
            raise ConfigError(f"geometry needs 3 spacings, origins and sizes, got {self}")
        if min(self.spacing) <= 0:
            raise ConfigError(f"spacing must be positive, got {self.spacing}")

    @property
    def direction_matrix(self) -> np.ndarray:
        """`direction` as a 3x3 float64 array; column a is the world direction of array axis a."""
        return np.asarray(self.direction, dtype=np.float64)

    @property
    def affine(self) -> np.ndarray:
        """4x4 index-to-LPS-world matrix."""
        a = np.eye(4)
        a[:3, :3] = self.direction_matrix * np.asarray(self.spacing)[None, :]
        a[:3, 3] = self.origin
        return a

    @classmethod
    def from_affine(cls, affine: np.ndarray, shape: tuple[int, ...]) -> Geometry:
        """The geometry of a 4x4 index-to-LPS-world `affine` for an array of `shape` (spacing: the norms
        of the 3x3 part's columns); `ConfigError` as the constructor."""
        affine = np.asarray(affine, dtype=np.float64)
        linear = affine[:3, :3]
        spacing = np.linalg.norm(linear, axis=0)
        return cls(tuple(spacing), tuple(affine[:3, 3]), linear / spacing[None, :], shape)

    def with_(self, **changes: Any) -> Geometry:
        """A copy with some of spacing, origin, direction or shape replaced."""
        values: dict[str, Any] = {
            "spacing": self.spacing,
            "origin": self.origin,
            "direction": self.direction,
            "shape": self.shape,
        }
        values.update(changes)
        return Geometry(**values)

    def index_to_world(self, index: np.ndarray) -> np.ndarray:
        """LPS world coordinates (mm) of voxel indices `index` (..., 3), fractional ones too; same shape."""
        index = np.asarray(index, dtype=np.float64)
        return np.asarray(self.origin) + (index * np.asarray(self.spacing)) @ self.direction_matrix.T

    def same_grid(self, other: Geometry, atol: float = 1e-5) -> bool:
        """True when `other` has the same shape and an affine equal to this one's within `atol`."""
        return self.shape == other.shape and bool(np.allclose(self.affine, other.affine, atol=atol))

    @property
    def voxel_volume_ml(self) -> float:
        """The volume of one voxel in millilitres."""
        return float(np.prod(self.spacing)) / 1000.0


@dataclass(frozen=True)
class Volume:
    """A 3D array on a grid. ``array.shape`` always equals ``geometry.shape`` (`ConfigError` otherwise)."""

    array: np.ndarray
    geometry: Geometry

    def __post_init__(self) -> None:
        if self.array.ndim != 3 or tuple(self.array.shape) != self.geometry.shape:
            raise ConfigError(f"array shape {self.array.shape} does not match geometry shape {self.geometry.shape}")

    @property
    def shape(self) -> tuple[int, ...]:
        """The array's shape (`geometry.shape`)."""
        return self.geometry.shape

    @property
    def spacing(self) -> Triple:
        """The voxel spacing in mm per array axis (`geometry.spacing`)."""
        return self.geometry.spacing
