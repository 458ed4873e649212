"""From a tissue map to a CT image: per-case Hounsfield units of each tissue, the mass texture,
denser dependent lung, CT noise and a slight in-plane blur (which also correlates the noise)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ceds_deploy.synthetic.mass import MassPlacement
from ceds_deploy.synthetic.raster import Block, Canvas
from ceds_deploy.synthetic.tissues import Tissue


@dataclass(frozen=True)
class NoiseModel:
    """Noise standard deviation (HU, after the blur) and the in-plane blur (voxels)."""

    sigma: float
    blur_sigma: float


def sample_noise(rng: np.random.Generator) -> NoiseModel:
    """Draw the case's noise level and blur width."""
    sigma = float(rng.uniform(10.0, 25.0))
    return NoiseModel(sigma, float(rng.uniform(0.5, 0.9)))


def sample_hu_table(rng: np.random.Generator, contrast: bool, mass_hu: float) -> np.ndarray:
    """A 256-entry float32 table: the HU of each `Tissue` code for this case (contrast raises
    blood, lung vessels, myocardium and liver). The draws' order is part of the case."""
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
    lut[Tissue.MASS] = mass_hu
    return lut


def render_image(
    cv: Canvas,
    lut: np.ndarray,
    mass: MassPlacement,
    mass_block: Block | None,
    noise: NoiseModel,
    noise_rng: np.random.Generator,
    image_view: np.ndarray,
) -> None:
    """Write the CT image of the tissue map ``cv.t`` into ``image_view`` (int16, indexed like
    the tissue map), slab by slab: HU from ``lut``, the mass texture inside ``mass_block`` (the
    index box around the mass, or None), noise from ``noise_rng``, blur, rounding and clipping
    to [-1024, 3071]."""
    from scipy import ndimage

    f32 = np.float32
    inv_r = f32(1.0 / mass.radius)
    radius = max(1, int(2.5 * noise.blur_sigma + 0.5))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / noise.blur_sigma) ** 2)
    kernel /= kernel.sum()
    noise_pre = noise.sigma / float((kernel**2).sum())  # sd after the separable 2D blur
    nz, ny, nx = cv.shape
    for sub in cv.slabs((slice(0, nz), slice(0, ny), slice(0, nx))):
        t = cv.t[sub]
        hu = lut[t]
        u, v, w = cv.coords(sub)
        grad = f32(35.0) * np.clip((v + f32(70.0)) * f32(1 / 150.0), 0, 1)
        np.add(hu, grad, out=hu, where=t == Tissue.LUNG)  # dependent lung is denser
        if mass_block is not None:
            _add_mass_texture(cv, hu, t, sub, mass_block, mass, inv_r)
        slab_noise = noise_rng.standard_normal(hu.shape, dtype=np.float32)
        slab_noise *= f32(noise_pre)
        hu += slab_noise
        del slab_noise
        tmp = ndimage.correlate1d(hu, kernel, axis=1, mode="nearest")
        ndimage.correlate1d(tmp, kernel, axis=2, output=hu, mode="nearest")
        del tmp
        np.rint(hu, out=hu)
        np.clip(hu, -1024, 3071, out=hu)
        np.copyto(image_view[sub], hu, casting="unsafe")


def _add_mass_texture(
    cv: Canvas, hu: np.ndarray, t: np.ndarray, sub: Block, msl: Block, mass: MassPlacement, inv_r: np.float32
) -> None:
    """Add the mass texture to the slab ``hu`` (block ``sub``) where it overlaps ``msl``."""
    f32 = np.float32
    k0 = max(sub[0].start, msl[0].start)
    k1 = min(sub[0].stop, msl[0].stop)
    if k1 <= k0:
        return
    mu, mv, mw = cv.coords((slice(k0, k1), msl[1], msl[2]))
    c = mass.centre
    tex = mass.shape.texture((mu - f32(c[0])) * inv_r, (mv - f32(c[1])) * inv_r, (mw - f32(c[2])) * inv_r)
    loc = (slice(k0 - sub[0].start, k1 - sub[0].start), msl[1], msl[2])
    hu[loc] += np.where(t[loc] == Tissue.MASS, tex, f32(0))
