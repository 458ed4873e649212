"""The training dataset: which files are labeled, unlabeled and held out, checked before training.

Two layouts are read:
- a Medical Segmentation Decathlon folder with ``dataset.json`` ("training": image/label pairs,
  "unlabeled": images; paths relative to the folder);
- ``imagesTr/`` + ``labelsTr/`` without a dataset.json: images and labels pair by case id, images
  without a label are unlabeled.

The split does not depend on the training seed, so runs with different seeds or methods are
validated on the same cases.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ceds_deploy.errors import DatasetError
from ceds_deploy.io import case_id, image_suffix
from ceds_deploy.training.config import TrainConfig

DATASET_JSON = "dataset.json"
SPLIT_SEED = 20240722  # fixed: the split is part of the data, not of a run


@dataclass(frozen=True)
class LabeledCase:
    name: str
    image: Path
    label: Path


@dataclass(frozen=True)
class DatasetSplit:
    labeled: tuple[LabeledCase, ...]  # used for training with their labels
    unlabeled: tuple[Path, ...]
    validation: tuple[LabeledCase, ...]
    hidden_labels: tuple[str, ...] = field(default=())  # labeled cases trained as unlabeled (--labeled K)

    def to_dict(self) -> dict:
        return {
            "labeled": [c.name for c in self.labeled],
            "unlabeled": [case_id(p) for p in self.unlabeled],
            "validation": [c.name for c in self.validation],
            "labels_hidden": list(self.hidden_labels),
        }


# ---------------------------------------------------------------------- discovery


def _resolve(root: Path, entry: object, where: str, allow_outside: bool = False) -> Path:
    """The file a dataset.json entry names; it must resolve (symbolic links followed) to a path inside
    the dataset folder unless `allow_outside`: a `DatasetError` naming the entry otherwise."""
    if isinstance(entry, dict):
        entry = entry.get("image")
    if not isinstance(entry, str) or not entry:
        raise DatasetError(f"{root / DATASET_JSON}: {where} must be a file path, got {entry!r}")
    path = Path(entry)
    path = path if path.is_absolute() else (root / path)
    if not allow_outside:
        inside = root.resolve()
        resolved = path.resolve()
        if resolved != inside and inside not in resolved.parents:
            raise DatasetError(
                f"{root / DATASET_JSON}: {where} {entry!r} points outside the dataset folder "
                f"(to {resolved}); move the file into {root} or pass --allow-outside"
            )
    return path


def _from_dataset_json(root: Path, allow_outside: bool = False) -> tuple[list[LabeledCase], list[Path]]:
    path = root / DATASET_JSON
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(f"{path}: cannot be read as JSON: {err}") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object with 'training' and 'unlabeled' lists")
    pairs = []
    for n, item in enumerate(data.get("training", [])):
        if not isinstance(item, dict) or "image" not in item or "label" not in item:
            raise DatasetError(f"{path}: training[{n}] needs 'image' and 'label', got {item!r}")
        image = _resolve(root, item["image"], f"training[{n}].image", allow_outside)
        label = _resolve(root, item["label"], f"training[{n}].label", allow_outside)
        pairs.append(LabeledCase(case_id(image), image, label))
    unlabeled = [
        _resolve(root, item, f"unlabeled[{n}]", allow_outside) for n, item in enumerate(data.get("unlabeled", []))
    ]
    return pairs, unlabeled


def _from_folders(root: Path) -> tuple[list[LabeledCase], list[Path]]:
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    if not images_dir.is_dir():
        raise DatasetError(
            f"{root}: no {DATASET_JSON} and no imagesTr/ folder; expected a Decathlon-style dataset folder"
        )
    images = {case_id(p): p for p in sorted(images_dir.iterdir()) if image_suffix(p) and not p.name.startswith(".")}
    labels = {}
    if labels_dir.is_dir():
        labels = {case_id(p): p for p in sorted(labels_dir.iterdir()) if image_suffix(p) and not p.name.startswith(".")}
    orphans = sorted(set(labels) - set(images))
    if orphans:
        raise DatasetError(f"{labels[orphans[0]]}: label without an image in {images_dir}")
    pairs = [LabeledCase(name, images[name], labels[name]) for name in sorted(images) if name in labels]
    unlabeled = [images[name] for name in sorted(images) if name not in labels]
    return pairs, unlabeled


def discover(data_dir: str | Path, allow_outside: bool = False) -> tuple[list[LabeledCase], list[Path]]:
    """(labeled pairs, unlabeled images) of a dataset folder; every listed file must exist and, unless
    `allow_outside`, lie inside the folder (`DatasetError` otherwise)."""
    if not str(data_dir):
        raise DatasetError("no dataset folder given (data_dir is empty)")
    root = Path(data_dir)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder does not exist")
    if (root / DATASET_JSON).is_file():
        pairs, unlabeled = _from_dataset_json(root, allow_outside)
    else:
        pairs, unlabeled = _from_folders(root)
    for case in pairs:
        for path, role in ((case.image, "image"), (case.label, "label")):
            if not path.exists():
                raise DatasetError(f"{path}: {role} of case {case.name} is missing")
    for path in unlabeled:
        if not path.exists():
            raise DatasetError(f"{path}: unlabeled image is missing")
    names = [c.name for c in pairs] + [case_id(p) for p in unlabeled]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DatasetError(f"{root}: case name {duplicates[0]!r} is listed more than once")
    if not pairs:
        raise DatasetError(f"{root}: no labeled cases found (training needs at least one image with a label)")
    return pairs, unlabeled


# ---------------------------------------------------------------------- split


def split_dataset(data_dir: str | Path, config: TrainConfig, world_size: int = 1) -> DatasetSplit:
    """Validation cases, then --labeled K, then the checks that a batch can be filled."""
    root = Path(data_dir)
    pairs, unlabeled = discover(root, config.allow_outside)
    rng = np.random.default_rng(SPLIT_SEED)
    order = [pairs[i] for i in rng.permutation(len(pairs))]
    if config.val_cases:
        by_name = {c.name: c for c in pairs}
        missing = [n for n in config.val_cases if n not in by_name]
        if missing:
            raise DatasetError(f"{root}: validation case {missing[0]!r} is not a labeled case of this dataset")
        validation = [by_name[n] for n in config.val_cases]
    else:
        n_val = round(config.val_fraction * len(pairs))
        if config.val_fraction > 0:
            n_val = min(max(1, n_val), len(pairs) - 1)
        validation = order[:n_val]
    held = {c.name for c in validation}
    train = [c for c in order if c.name not in held]
    hidden: list[LabeledCase] = []
    if config.labeled is not None:
        if config.labeled > len(train):
            raise DatasetError(
                f"{root}: --labeled {config.labeled} asks for more labels than the "
                f"{len(train)} labeled training cases left after validation"
            )
        train, hidden = train[: config.labeled], train[config.labeled :]
    needed = config.labeled_per_batch * world_size
    if len(train) < needed:
        raise DatasetError(
            f"{root}: {len(train)} labeled training case(s) (after {len(validation)} held out for "
            f"validation), but a step needs {needed} ({config.labeled_per_batch} per batch x "
            f"{world_size} process(es)); lower --batch-size or --val-fraction"
        )
    all_unlabeled = sorted(unlabeled + [c.image for c in hidden], key=lambda p: case_id(p))
    if config.method != "supervised" and len(all_unlabeled) < config.unlabeled_per_batch:
        raise DatasetError(
            f"{root}: method {config.method} needs {config.unlabeled_per_batch} unlabeled "
            f"image(s) per batch, found {len(all_unlabeled)}; add unlabeled scans or use "
            f"--method supervised"
        )
    train = sorted(train, key=lambda c: c.name)
    return DatasetSplit(
        tuple(train),
        tuple(all_unlabeled),
        tuple(sorted(validation, key=lambda c: c.name)),
        tuple(sorted(c.name for c in hidden)),
    )
