"""MONAI random transforms on the pre-processed arrays: patch sampling and the reference's
augmentations. Inputs are dicts of channel-first tensors (1, X, Y, Z); each call returns a list of
`patches_per_volume` patch dicts."""

from __future__ import annotations

from ceds_deploy.training.config import TrainConfig


def _augmentations(config: TrainConfig, keys: list[str]) -> list:
    from monai.transforms import RandFlipd, RandRotate90d, RandShiftIntensityd

    steps = [RandFlipd(keys=keys, spatial_axis=[axis], prob=config.flip_prob) for axis in range(3)]
    if config.rotate90_prob > 0:
        steps.append(RandRotate90d(keys=keys, prob=config.rotate90_prob, max_k=3, spatial_axes=(0, 1)))
    steps.append(RandShiftIntensityd(keys=["image"], offsets=config.shift_offset, prob=config.shift_prob))
    return steps


def labeled_transforms(config: TrainConfig):
    """Patches centred on tumour (pos) or other body voxels (neg) at pos:neg, then augmentations."""
    from monai.transforms import Compose, RandCropByPosNegLabeld

    pos, neg = config.pos_neg
    crop = RandCropByPosNegLabeld(
        keys=["image", "label"],
        label_key="label",
        spatial_size=config.patch,
        pos=pos,
        neg=neg,
        num_samples=config.patches_per_volume,
        image_key="image",
        image_threshold=0.0,
    )
    return Compose([crop, *_augmentations(config, ["image", "label"])])


def unlabeled_transforms(config: TrainConfig):
    """Uniform random patches; the pre-processing already cropped the volume to the body's box."""
    from monai.transforms import Compose, RandSpatialCropSamplesd

    crop = RandSpatialCropSamplesd(
        keys=["image"], roi_size=config.patch, num_samples=config.patches_per_volume, random_size=False
    )
    return Compose([crop, *_augmentations(config, ["image"])])
