"""`ModelSpec`: the self-description every artifact (checkpoint, ONNX file, engine) carries.

`ceds segment` reads it from the artifact, so no pre-processing flags are ever needed.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace

from ceds_deploy import __version__
from ceds_deploy.errors import ArtifactError, ConfigError

SPEC_FORMAT = 1
SPACING_RANGE_MM = (0.1, 20.0)  # finer grids than 0.1 mm allocate tens of GB per scan
HU_RANGE = (-2000.0, 5000.0)
# The precision of the artifact's graph: an fp16 ONNX file (`ceds export --precision fp16`) is mixed
# precision with fp32 inputs, outputs and head; its TensorRT engines (strongly typed) run it as is.
PRECISIONS = ("fp32", "fp16")


def _finite_within(value: float, low: float, high: float) -> bool:
    return math.isfinite(value) and low <= value <= high


MAX_CALIBRATION_KNOTS = 1025  # one per step of the stored confidence map (1/1024)


ARCHITECTURE = "ceds-vnet-dual-cbam"  # the network of ceds_deploy.network; a spec naming another is refused


@dataclass(frozen=True)
class Calibration:
    """A fitted map from the network's confidence to P(the voxel's predicted label is right), one
    monotone piecewise-linear table per predicted class (`tables[k]`: knots (raw, calibrated) for the
    voxels predicted class k). The confidence head means different things inside and outside the mask
    (its loss is class-weighted), so one table for both leaves the tumour's voxels miscalibrated.

    `method` says how it was fitted (`qa.calibration`), `margin_mm` which voxels it was fitted on
    (predicted tumour and body within that distance of it), `cases` on how many cases."""

    tables: tuple[tuple[tuple[float, float], ...], ...]
    method: str = "isotonic"
    margin_mm: float = 10.0
    cases: int = 0

    def __post_init__(self) -> None:
        tables = tuple(tuple((float(x), float(y)) for x, y in table) for table in self.tables)
        object.__setattr__(self, "tables", tables)
        object.__setattr__(self, "margin_mm", float(self.margin_mm))
        object.__setattr__(self, "cases", int(self.cases))
        for k, table in enumerate(tables):
            xs, ys = [x for x, _ in table], [y for _, y in table]
            if not 2 <= len(table) <= MAX_CALIBRATION_KNOTS:
                raise ConfigError(f"calibration table {k} needs 2..{MAX_CALIBRATION_KNOTS} knots, got {len(table)}")
            if not all(_finite_within(v, 0.0, 1.0) for v in xs + ys):
                raise ConfigError(f"calibration table {k}: knots must be finite within 0..1")
            if xs[0] != 0.0 or xs[-1] != 1.0 or any(b <= a for a, b in zip(xs, xs[1:])):
                raise ConfigError(f"calibration table {k}: raw values must rise strictly from 0 to 1")
            if any(b < a for a, b in zip(ys, ys[1:])):
                raise ConfigError(f"calibration table {k}: calibrated values must not fall")

    def apply(self, confidence, predicted):
        """Calibrate `confidence` (float array in [0, 1]) in place, each voxel by the table of its
        `predicted` class (integer array of the same shape); returns `confidence`. The one
        implementation every backend's output goes through (`transforms.restore`)."""
        import numpy as np

        for k, table in enumerate(self.tables):
            chosen = predicted == k  # boolean indexing writes through any memory layout (restored maps are views)
            xs, ys = np.array(table).T
            confidence[chosen] = np.interp(confidence[chosen], xs, ys)
        return confidence


@dataclass(frozen=True)
class ModelSpec:
    class_names: tuple[str, ...] = ("background", "tumour")
    roi_size: tuple[int, int, int] = (112, 112, 80)
    target_spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    hu_window: tuple[float, float] = (-210.0, 290.0)
    # Voxels above this are "body" for the foreground crop; None: the HU window's low end, which is
    # what the CEDS code's CropForeground keeps (scaled values above 0).
    body_threshold_hu: float | None = None
    width: int = 16
    architecture: str = ARCHITECTURE
    opset: int = 17
    precision: str = "fp32"
    weights: str = "teacher"  # which of the two networks of a checkpoint this artifact holds
    # The confidence map's calibration, fitted for the `weights` network; None: the raw map.
    calibration: Calibration | None = None
    source_sha256: str = ""
    package_version: str = __version__
    format: int = SPEC_FORMAT

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        object.__setattr__(self, "roi_size", tuple(int(v) for v in self.roi_size))
        object.__setattr__(self, "target_spacing", tuple(float(v) for v in self.target_spacing))
        object.__setattr__(self, "hu_window", tuple(float(v) for v in self.hu_window))
        if isinstance(self.calibration, dict):
            object.__setattr__(self, "calibration", Calibration(**self.calibration))
        self._check()

    def _check(self) -> None:
        """Every field within what the network and pre-processing can run; a `ConfigError` naming the
        field and its value otherwise (an artifact's spec turns it into an `ArtifactError`)."""
        if len(self.class_names) != 2:
            raise ConfigError(
                f"class_names must name exactly 2 classes (the network has 2 outputs), got {self.class_names}"
            )
        if len(self.roi_size) != 3 or any(not 16 <= v <= 512 or v % 16 for v in self.roi_size):
            raise ConfigError(f"roi_size must be 3 multiples of 16 within 16..512, got {self.roi_size}")
        if len(self.target_spacing) != 3 or not all(_finite_within(v, *SPACING_RANGE_MM) for v in self.target_spacing):
            raise ConfigError(
                f"target_spacing must be 3 finite values within {SPACING_RANGE_MM[0]}.."
                f"{SPACING_RANGE_MM[1]} mm, got {self.target_spacing}"
            )
        if (
            len(self.hu_window) != 2
            or not all(_finite_within(v, *HU_RANGE) for v in self.hu_window)
            or self.hu_window[0] >= self.hu_window[1]
        ):
            raise ConfigError(
                f"hu_window must be (low, high), finite, low < high, within {HU_RANGE[0]:g}.."
                f"{HU_RANGE[1]:g} HU, got {self.hu_window}"
            )
        if self.body_threshold_hu is not None and not _finite_within(self.body_threshold_hu, *HU_RANGE):
            raise ConfigError(
                f"body_threshold_hu must be finite within {HU_RANGE[0]:g}..{HU_RANGE[1]:g} HU "
                f"(or null), got {self.body_threshold_hu}"
            )
        if isinstance(self.width, bool) or not isinstance(self.width, int) or not 1 <= self.width <= 256:
            raise ConfigError(f"width must be a whole number within 1..256, got {self.width!r}")
        if self.architecture != ARCHITECTURE:
            raise ConfigError(
                f"architecture must be {ARCHITECTURE!r} (the one network this package runs), got {self.architecture!r}"
            )
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.weights not in ("teacher", "student"):
            raise ConfigError(f"weights must be teacher or student, got {self.weights!r}")
        if isinstance(self.opset, bool) or not isinstance(self.opset, int) or not 7 <= self.opset <= 30:
            raise ConfigError(f"opset must be a whole number within 7..30, got {self.opset!r}")
        if self.calibration is not None and len(self.calibration.tables) != self.num_classes:
            raise ConfigError(
                f"calibration must have one table per class ({self.num_classes}), got {len(self.calibration.tables)}"
            )

    @property
    def crop_threshold_hu(self) -> float:
        return self.hu_window[0] if self.body_threshold_hu is None else float(self.body_threshold_hu)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> ModelSpec:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ArtifactError(f"model spec has unknown fields {unknown}; made by a newer ceds-deploy?")
        if int(data.get("format", SPEC_FORMAT)) > SPEC_FORMAT:
            raise ArtifactError(
                f"model spec format {data['format']} is newer than this install understands ({SPEC_FORMAT})"
            )
        try:
            return cls(**data)
        except (TypeError, ValueError) as err:
            raise ArtifactError(f"invalid model spec: {err}") from err

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ArtifactError(f"model spec is not valid JSON: {err}") from err
        if not isinstance(data, dict):
            raise ArtifactError("model spec JSON must be an object")
        return cls.from_dict(data)

    def replace(self, **changes) -> ModelSpec:
        return replace(self, **changes)


# Where each artifact keeps its spec.
ONNX_SPEC_KEY = "ceds.model_spec"  # ONNX metadata_props key holding ModelSpec JSON
ENGINE_SIDECAR_SUFFIX = ".json"  # model.engine -> model.engine.json

# The network's tensor names in every artifact (ONNX graph, TensorRT engine).
INPUT_NAME = "image"
OUTPUT_NAMES = ("seg_logits", "confidence")
