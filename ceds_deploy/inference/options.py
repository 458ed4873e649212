"""`SegmentOptions`: every choice of `ceds segment`, checked once; `segment_volume` reads the
inference ones, `segment_folder` all of them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ceds_deploy.errors import ConfigError
from ceds_deploy.inference.windows import BLEND_MODES

OUTPUT_FORMATS = ("nifti", "dicom-seg", "both")


@dataclass(frozen=True)
class SegmentOptions:
    # inference
    overlap: float = 0.25
    blend: str = "constant"  # how overlapping windows are averaged (windows.blend_weights)
    batch_size: int | None = None  # None: the backend's max_batch_size
    tta: bool = False  # test-time augmentation over the 8 mirrorings
    skip_air: bool = True  # windows holding only air/lung are not computed
    window: tuple[int, ...] | None = None  # larger inference windows than the training ROI (opt-in)
    largest_component: bool = False  # keep only the largest tumour component (one lesion per scan)
    save_probabilities: bool = False
    confidence_threshold: float = 0.5
    review_below: float = 0.7  # a calibrated model's case is flagged below this expected Dice (qa.review)
    # folder runs
    overwrite: bool = False  # redo cases whose outputs exist (also those of another model)
    force: bool = False  # take over the output folder's lock from another run
    html: bool = False  # also write report.html, a page of the run to look at
    shard: tuple[int, int] = (0, 1)  # (index, count), 0-based
    preview: bool = False
    preview_labels: Path | None = None  # ground truth to outline in previews, matched by case name
    io_workers: int | None = None  # cases read and written at once; None: one per 4 CPU cores, 1 to 4
    output_format: str | None = None  # OUTPUT_FORMATS; None: both for a DICOM series, nifti otherwise
    side_streams: bool = True  # on a GPU, readers and writers on CUDA streams beside the network's (side_streams.py)

    def __post_init__(self) -> None:
        if not 0 <= self.overlap < 1:
            raise ConfigError(f"overlap must be >= 0 and < 1, got {self.overlap}")
        if self.blend not in BLEND_MODES:
            raise ConfigError(f"blend must be one of {', '.join(BLEND_MODES)}, got {self.blend!r}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {self.batch_size}")
        index, count = self.shard
        if count < 1 or not 0 <= index < count:
            raise ConfigError(f"shard must be I/N with 0 <= I < N, got {index}/{count}")
        if self.window is not None and (len(self.window) != 3 or any(w <= 0 or w % 16 for w in self.window)):
            raise ConfigError(f"window must be 3 positive multiples of 16, got {self.window}")
        if self.io_workers is not None and self.io_workers < 1:
            raise ConfigError(f"io workers must be >= 1, got {self.io_workers}")
        if self.output_format is not None and self.output_format not in OUTPUT_FORMATS:
            raise ConfigError(f"output format must be one of {', '.join(OUTPUT_FORMATS)}, got {self.output_format!r}")
        if not 0 < self.confidence_threshold < 1:
            raise ConfigError(f"confidence threshold must be in (0, 1), got {self.confidence_threshold}")
        if not 0 <= self.review_below <= 1:
            raise ConfigError(f"review-below must be an expected Dice within 0..1, got {self.review_below}")
        if self.preview_labels is not None:
            if not self.preview:
                raise ConfigError("labels are outlined in previews only: add --preview")
            if not Path(self.preview_labels).is_dir():
                raise ConfigError(f"{self.preview_labels}: the labels folder does not exist or is not a folder")
