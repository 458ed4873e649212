"""Test helpers: synthetic scans with known geometry and DICOM series writing."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ceds_deploy.volume import Geometry, Volume


def rotation(axis: int, radians: float) -> np.ndarray:
    c, s = np.cos(radians), np.sin(radians)
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


# Geometries of the kinds real scans come in.
GEOMETRIES = {
    "axial_lps": Geometry((0.78, 0.78, 2.5), (-180.0, -200.5, -310.25), np.eye(3), (48, 44, 20)),
    "ras_like": Geometry((0.7, 0.7, 1.25), (120.0, 140.0, -90.0), np.diag([-1.0, -1.0, 1.0]), (40, 46, 24)),
    "permuted_flipped": Geometry(
        (3.0, 0.8, 0.9), (5.0, -7.5, 12.0), np.array([[0, 0, -1.0], [0, -1.0, 0], [1.0, 0, 0]]), (16, 50, 44)
    ),
    "oblique": Geometry(
        (0.9, 0.85, 2.0),
        (-10.0, 20.0, 30.0),
        rotation(2, 0.17) @ rotation(0, 0.09) @ np.diag([1.0, -1.0, 1.0]),
        (44, 40, 22),
    ),
}


def sphere_scan(
    geometry: Geometry, radius_mm: float = 12.0, body_mm: float = 60.0, seed: int = 0
) -> tuple[Volume, Volume]:
    """A noisy soft-tissue body in air with a brighter sphere at its centre, and the sphere's label."""
    rng = np.random.default_rng(seed)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in geometry.shape], indexing="ij"), -1).reshape(-1, 3)
    world = geometry.index_to_world(idx).reshape(*geometry.shape, 3)
    centre = geometry.index_to_world((np.asarray(geometry.shape) - 1) / 2)
    dist = np.linalg.norm(world - centre, axis=-1)
    image = np.where(dist < body_mm, 0.0, -1000.0) + rng.normal(0, 15, geometry.shape)
    label = (dist < radius_mm).astype(np.uint8)
    image = np.where(label > 0, 120.0, image).astype(np.float32)
    return Volume(image, geometry), Volume(label, geometry)


def write_dicom_series(folder: Path, volume: Volume) -> Path:
    """Write a CT-like DICOM series (one file per slice) with SimpleITK, oblique geometry included."""
    import SimpleITK as sitk

    from ceds_deploy.io import to_sitk

    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.Cast(to_sitk(np.round(volume.array).astype(np.int16), volume.geometry), sitk.sitkInt16)
    direction = image.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series_uid = "1.2.826.0.1.3680043.2.1125.1.4242"
    for k in range(image.GetDepth()):
        slice_ = image[:, :, k]
        tags = {
            "0008|0060": "CT",
            "0020|000e": series_uid,
            "0020|000d": series_uid + ".1",
            "0020|0037": "\\".join(
                f"{v:.10f}"
                for v in (direction[0], direction[3], direction[6], direction[1], direction[4], direction[7])
            ),
            "0020|0032": "\\".join(f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))),
            "0020|0013": str(k + 1),
            "0008|0018": f"{series_uid}.{k + 1}",
            "0028|1052": "0",
            "0028|1053": "1",
            "0018|0050": f"{volume.spacing[2]:.6f}",
        }
        for tag, value in tags.items():
            slice_.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice_{k:03d}.dcm"))
        writer.Execute(slice_)
    return folder


def random_network(seed: int = 1, width: int = 4, batchnorm_affine: bool = True, **config):
    """A CEDS network (eval mode) with seeded random weights and non-trivial BatchNorm statistics
    (and, with `batchnorm_affine`, scales and shifts), so folding BatchNorm and casting to fp16
    are really tested."""
    import torch

    from ceds_deploy.network import CedsNet, CedsNetConfig

    torch.manual_seed(seed)
    net = CedsNet(CedsNetConfig(width=width, **config)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_((torch.rand(n, generator=g) - 0.5) * 0.6)
                m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=g))
                if batchnorm_affine:
                    m.weight.copy_(0.5 + torch.rand(n, generator=g))
                    m.bias.copy_((torch.rand(n, generator=g) - 0.5) * 0.4)
    return net


def process_state() -> dict:
    """Every process-wide setting library code could leave changed: torch.backends flags (cuDNN, TF32,
    MKL-DNN), thread counts, grad and autocast modes, default dtype, determinism, environment, cwd."""
    import os

    import torch

    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    return {
        "cudnn": (cudnn.enabled, cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32),
        "matmul_tf32": matmul.allow_tf32,
        "matmul_reduced": (
            matmul.allow_fp16_reduced_precision_reduction,
            matmul.allow_bf16_reduced_precision_reduction,
        ),
        "mkldnn": torch.backends.mkldnn.enabled,
        "threads": (torch.get_num_threads(), torch.get_num_interop_threads()),
        "grad": torch.is_grad_enabled(),
        "inference_mode": torch.is_inference_mode_enabled(),
        "autocast": {d: (torch.is_autocast_enabled(d), torch.get_autocast_dtype(d)) for d in ("cpu", "cuda")},
        "autocast_cache": torch.is_autocast_cache_enabled(),
        "dtype": torch.get_default_dtype(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "float32_matmul": torch.get_float32_matmul_precision(),
        "environment": dict(os.environ),
        "cwd": os.getcwd(),
    }
