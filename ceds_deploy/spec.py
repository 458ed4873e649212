"""`ModelSpec`: the self-description every artifact (checkpoint, ONNX file, engine) carries.

`ceds segment` reads it from the artifact, so no pre-processing flags are ever needed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace

from ceds_deploy import __version__
from ceds_deploy.errors import ArtifactError

SPEC_FORMAT = 1
# The precision of the artifact's graph: an fp16 ONNX file (`ceds export --precision fp16`) is mixed
# precision with fp32 inputs, outputs and head; its TensorRT engines (strongly typed) run it as is.
PRECISIONS = ("fp32", "fp16")


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
    architecture: str = "ceds-vnet-dual-cbam"
    opset: int = 17
    precision: str = "fp32"
    weights: str = "teacher"  # which of the two networks of a checkpoint this artifact holds
    source_sha256: str = ""
    package_version: str = __version__
    format: int = SPEC_FORMAT

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        object.__setattr__(self, "roi_size", tuple(int(v) for v in self.roi_size))
        object.__setattr__(self, "target_spacing", tuple(float(v) for v in self.target_spacing))
        object.__setattr__(self, "hu_window", tuple(float(v) for v in self.hu_window))
        if len(self.roi_size) != 3 or any(v <= 0 or v % 16 for v in self.roi_size):
            raise ValueError(f"roi_size must be 3 positive multiples of 16, got {self.roi_size}")
        if len(self.target_spacing) != 3 or min(self.target_spacing) <= 0:
            raise ValueError(f"target_spacing must be 3 positive values, got {self.target_spacing}")
        if len(self.hu_window) != 2 or self.hu_window[0] >= self.hu_window[1]:
            raise ValueError(f"hu_window must be (low, high) with low < high, got {self.hu_window}")
        if self.width <= 0:
            raise ValueError(f"width must be positive, got {self.width}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

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
    def from_dict(cls, data: dict) -> "ModelSpec":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ArtifactError(f"model spec has unknown fields {unknown}; made by a newer ceds-deploy?")
        if int(data.get("format", SPEC_FORMAT)) > SPEC_FORMAT:
            raise ArtifactError(f"model spec format {data['format']} is newer than this install "
                                f"understands ({SPEC_FORMAT})")
        try:
            return cls(**data)
        except (TypeError, ValueError) as err:
            raise ArtifactError(f"invalid model spec: {err}") from err

    @classmethod
    def from_json(cls, text: str) -> "ModelSpec":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ArtifactError(f"model spec is not valid JSON: {err}") from err
        if not isinstance(data, dict):
            raise ArtifactError("model spec JSON must be an object")
        return cls.from_dict(data)

    def replace(self, **changes) -> "ModelSpec":
        return replace(self, **changes)

# Where each artifact keeps its spec.
ONNX_SPEC_KEY = "ceds.model_spec"  # ONNX metadata_props key holding ModelSpec JSON
ENGINE_SIDECAR_SUFFIX = ".json"  # model.engine -> model.engine.json
