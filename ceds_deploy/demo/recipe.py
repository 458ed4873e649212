"""The demo's fixed training recipe (`DemoSettings`), the files it writes and its quality gate's
thresholds: a slower or busier machine takes longer and gets the same model."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ceds_deploy.errors import ConfigError

# The quality gate: below this held-out mean Dice, or with any held-out case where no tumour is
# found, the demo reports a failure (red banner, exit code 1).
MIN_MEAN_DICE = 0.5
MIN_TUMOUR_ML = 0.0  # a case whose predicted tumour volume is not above this found no tumour
ESTIMATE_AFTER_STEPS = 10  # training steps measured before the time estimate is printed
DONE_MARKER = "DEMO_DONE"
TRAINING_RECORD = "DEMO_TRAINING.json"  # run/: the recipe a run follows, and how far it got
MODEL_CHECKPOINT = "model.pt"  # the inference-only checkpoint (teacher weights + spec)
MODEL_ONNX = "model.onnx"
# What each stage writes; when a stage runs again, everything after it is made again too.
STAGE_OUTPUTS = {
    "phantoms": ("data",),
    "train": ("run",),
    "export": (MODEL_CHECKPOINT, MODEL_ONNX),
    "segment": ("segment",),
}


@dataclass(frozen=True)
class DemoSettings:
    """The demo's recipe: cohort and training knobs. The defaults are the tested recipe: 800 steps
    gave a held-out mean teacher Dice of 0.82 (600 steps: 0.76), about 6 minutes of training on an
    idle 2-core CPU (benchmarks/RESULTS.md, the demo section)."""

    iterations: int = 800  # training steps, whatever the machine's speed
    cases: int = 24  # training images
    labeled: int = 16
    test: int = 4
    seed: int = 0
    width: int = 4
    patch: tuple[int, int, int] = (32, 32, 32)
    spacing: float = 3.0  # 24-44 mm masses span 8-15 voxels (at 4 mm the model under-segmented them)
    batch_size: int = 2
    # A run of a few hundred steps instead of the paper's 8000 epochs: a higher learning rate, a
    # shorter teacher memory, less dropout for the tiny network, two patches per volume.
    lr: float = 0.08
    ema_decay: float = 0.95
    dropout: float = 0.0
    patches_per_volume: int = 2

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ConfigError(f"iterations must be at least 1, got {self.iterations}")

    def training_config(self, data_dir: Path) -> dict:
        """The `ceds train` settings of this recipe."""
        return {
            "data_dir": str(Path(data_dir).resolve()),
            "method": "ceds",
            "width": self.width,
            "patch": self.patch,
            "spacing": (self.spacing,) * 3,
            "iterations": self.iterations,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "lr": self.lr,
            "min_lr": min(self.lr, 1e-3),
            "ema_decay": self.ema_decay,
            "dropout": self.dropout,
            "patches_per_volume": self.patches_per_volume,
        }

    def as_record(self) -> dict:
        """The recipe as plain JSON data (tuples as lists), comparable with a record read back from JSON."""
        return json.loads(json.dumps(asdict(self)))  # tuples as lists, as read back from JSON


TESTED_RECIPE = DemoSettings()
DEMO_RECIPE = TESTED_RECIPE  # what `ceds demo` runs (read at call time)


def check_minutes(minutes: float | None) -> None:
    if minutes is not None and not minutes > 0:
        raise ConfigError(f"--minutes must be positive, got {minutes}")
