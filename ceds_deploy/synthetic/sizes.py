"""Phantom sizes: what differs between a realistic scan (`FULL`) and a miniature one (`SMALL`)."""

from __future__ import annotations

from dataclasses import dataclass

from ceds_deploy.errors import ConfigError


@dataclass(frozen=True)
class PhantomSize:
    """Everything that differs between a realistic scan and a miniature one."""

    name: str
    inplane_voxels: tuple[int, ...]  # choices for the (square) in-plane matrix
    inplane_spacing_mm: tuple[float, float]  # uniform range
    slice_spacing_mm: tuple[float, ...]  # choices for the slice spacing ...
    slice_spacing_weights: tuple[float, ...]  # ... and their probabilities
    max_slices: int  # the z window is shortened to fit this
    min_slices: int
    body_fill: tuple[float, float]  # body width / in-plane field of view
    mass_diameter_mm: tuple[float, float]  # maximal (Feret) diameter of the mass
    contrast_fraction: float = 0.35  # share of contrast-enhanced scans
    slab_voxels: int = 4_000_000  # work in slabs of about this many voxels


SMALL = PhantomSize(
    name="small",
    inplane_voxels=(112, 120, 128),
    inplane_spacing_mm=(1.3, 1.8),  # the full range 0.6-0.9 mm, doubled
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


def resolve_size(size: str | PhantomSize) -> PhantomSize:
    """A `PhantomSize` given itself or its name (a key of `SIZES`).

    Raises `ConfigError` for an unknown name."""
    if isinstance(size, PhantomSize):
        return size
    try:
        return SIZES[size]
    except KeyError:
        raise ConfigError(f"phantom size must be one of {', '.join(SIZES)}, got {size!r}") from None
