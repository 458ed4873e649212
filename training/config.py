"""`TrainConfig`: the one typed configuration of `ceds train`.

Sources, lowest priority first: the defaults (the paper's values), a YAML or TOML file, then CLI
options. Every value is checked here, so a bad value is a one-line `ConfigError` naming it (and the
file it came from) before any data is read. Phase lengths are fractions of the run, so a short run
keeps the shape of the paper's 8000-epoch schedule.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ceds_deploy.errors import ConfigError
from ceds_deploy.training.precision import check_precision

METHODS = ("ceds", "mean-teacher", "supervised")
PAPER_EPOCHS = 8000  # the reference trains 8000 epochs
AUTO_VALIDATIONS = 20  # val_every = 0: about this many validations a run


@dataclass(frozen=True)
class TrainConfig:
    data_dir: str = ""
    method: str = "ceds"
    allow_outside: bool = False  # dataset.json may name files outside data_dir
    # data
    labeled: int | None = None  # keep only this many labels (the rest become unlabeled)
    val_fraction: float = 0.2  # of the labeled cases, held out for validation
    val_cases: tuple[str, ...] = ()  # case ids; overrides val_fraction when given
    # model and pre-processing (these go into the ModelSpec)
    width: int = 16
    dropout: float = 0.5
    patch: tuple[int, int, int] = (112, 112, 80)  # along the array axes x, y, z
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    hu_window: tuple[float, float] = (-210.0, 290.0)
    # budget: epochs (one pass over the labeled training cases) or iterations; default 8000 epochs
    epochs: int | None = None
    iterations: int | None = None
    batch_size: int = 2  # volumes per step and process (supervised: all labeled)
    labeled_batch_size: int | None = None  # of those, labeled; default batch_size // 2 (at least 1)
    patches_per_volume: int = 3
    # augmentation (the reference's)
    pos_neg: tuple[float, float] = (2.0, 1.0)
    flip_prob: float = 0.1
    rotate90_prob: float = 0.1
    shift_offset: float = 0.1
    shift_prob: float = 0.5
    # optimisation
    lr: float = 0.01
    min_lr: float = 1e-3  # cosine annealing floor
    momentum: float = 0.9
    weight_decay: float = 1e-4
    ema_decay: float = 0.99
    temperature: float = 0.1  # sharpening of the teacher's probabilities
    student_noise: tuple[float, float] = (0.2, 0.4)  # (std, clamp) of the student's input noise
    teacher_noise: tuple[float, float] = (0.05, 0.1)
    consistency_weight: float = 1.0  # the reference multiplies by the ramp-up only
    # schedule, as fractions of the run's steps (reference: 400/8000 epochs warm-up,
    # 5 refresh epochs out of every 1000, ramp-up over the whole run)
    warmup_fraction: float = 0.05
    refresh_period_fraction: float = 0.125
    refresh_length_fraction: float = 5 / PAPER_EPOCHS
    rampup_fraction: float = 1.0
    # validation
    val_every: int = 0  # epochs; 0 = about AUTO_VALIDATIONS validations a run
    val_batch_size: int = 4  # windows per network call (the reference's 4)
    val_overlap: float = 0.25
    # run
    seed: int = 0
    device: str = "cpu"
    precision: str = "auto"  # auto: mixed precision on a GPU (bf16, else fp16 with loss scaling), fp32 on the CPU
    prefetch_batches: int = 1  # batches made ahead in a background thread (0: in the step's own thread)

    def __post_init__(self) -> None:
        """Normalise and check every field, one after another (a `ConfigError` naming the field).

        Long: one short check per field of the config, in field order; splitting it would only
        scatter them."""
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 - frozen
        set_("data_dir", str(self.data_dir))
        _choice("method", self.method, METHODS)
        set_("labeled", _optional_int("labeled", self.labeled, 1))
        set_("val_fraction", _number("val_fraction", self.val_fraction, 0.0, 1.0, high_open=True))
        if isinstance(self.val_cases, str):
            raise ConfigError(f"val_cases must be a list of case names, got {self.val_cases!r}")
        set_("val_cases", tuple(str(c) for c in self.val_cases))
        set_("width", _int("width", self.width, 1))
        set_("dropout", _number("dropout", self.dropout, 0.0, 1.0, high_open=True))
        set_("patch", _triple("patch", self.patch, int))
        if any(v <= 0 or v % 16 for v in self.patch):
            raise ConfigError(
                f"patch must be 3 positive multiples of 16 (the network halves it 4 times), got {self.patch}"
            )
        set_("spacing", _triple("spacing", self.spacing, float))
        if min(self.spacing) <= 0:
            raise ConfigError(f"spacing must be positive, got {self.spacing}")
        set_("hu_window", _pair("hu_window", self.hu_window))
        if self.hu_window[0] >= self.hu_window[1]:
            raise ConfigError(f"hu_window must be (low, high) with low < high, got {self.hu_window}")
        set_("epochs", _optional_int("epochs", self.epochs, 1))
        set_("iterations", _optional_int("iterations", self.iterations, 1))
        if self.epochs is not None and self.iterations is not None:
            raise ConfigError(
                f"give epochs or iterations, not both (got epochs={self.epochs}, iterations={self.iterations})"
            )
        set_("batch_size", _int("batch_size", self.batch_size, 1))
        set_("labeled_batch_size", _optional_int("labeled_batch_size", self.labeled_batch_size, 1))
        if self.labeled_batch_size is not None and self.labeled_batch_size > self.batch_size:
            raise ConfigError(
                f"labeled_batch_size ({self.labeled_batch_size}) must not exceed batch_size ({self.batch_size})"
            )
        if self.method == "supervised" and self.labeled_batch_size not in (None, self.batch_size):
            raise ConfigError(
                f"supervised batches hold labeled volumes only: drop labeled_batch_size "
                f"({self.labeled_batch_size}) and set batch_size (now {self.batch_size})"
            )
        if self.method != "supervised" and self.labeled_batch_size == self.batch_size:
            raise ConfigError(
                f"method {self.method} needs unlabeled volumes in each batch: "
                f"labeled_batch_size ({self.labeled_batch_size}) must be < batch_size"
            )
        if self.method != "supervised" and self.batch_size < 2:
            raise ConfigError(
                f"method {self.method} needs batch_size >= 2 (labeled + unlabeled volumes), got {self.batch_size}"
            )
        set_("patches_per_volume", _int("patches_per_volume", self.patches_per_volume, 1))
        set_("pos_neg", _pair("pos_neg", self.pos_neg))
        if min(self.pos_neg) < 0 or sum(self.pos_neg) <= 0:
            raise ConfigError(f"pos_neg must be two ratios >= 0, not both 0, got {self.pos_neg}")
        for name in ("flip_prob", "rotate90_prob", "shift_prob"):
            set_(name, _number(name, getattr(self, name), 0.0, 1.0))
        if self.rotate90_prob > 0 and self.patch[0] != self.patch[1]:
            raise ConfigError(
                f"90-degree rotations in the x-y plane need a patch square in x and y, got "
                f"{self.patch}; set rotate90_prob: 0 or use a square patch"
            )
        set_("shift_offset", _number("shift_offset", self.shift_offset, 0.0, math.inf))
        set_("lr", _number("lr", self.lr, 0.0, math.inf, low_open=True))
        set_("min_lr", _number("min_lr", self.min_lr, 0.0, math.inf))
        if self.min_lr > self.lr:
            raise ConfigError(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr})")
        set_("momentum", _number("momentum", self.momentum, 0.0, 1.0, high_open=True))
        set_("weight_decay", _number("weight_decay", self.weight_decay, 0.0, math.inf))
        set_("ema_decay", _number("ema_decay", self.ema_decay, 0.0, 1.0))
        set_("temperature", _number("temperature", self.temperature, 0.0, math.inf, low_open=True))
        for name in ("student_noise", "teacher_noise"):
            pair = _pair(name, getattr(self, name))
            if min(pair) < 0:
                raise ConfigError(f"{name} must be (std, clamp) with both >= 0, got {pair}")
            set_(name, pair)
        set_("consistency_weight", _number("consistency_weight", self.consistency_weight, 0.0, math.inf))
        for name in ("warmup_fraction", "refresh_period_fraction", "refresh_length_fraction", "rampup_fraction"):
            set_(name, _number(name, getattr(self, name), 0.0, 1.0))
        set_("val_every", _int("val_every", self.val_every, 0))
        set_("val_batch_size", _int("val_batch_size", self.val_batch_size, 1))
        set_("val_overlap", _number("val_overlap", self.val_overlap, 0.0, 1.0, high_open=True))
        set_("seed", _int("seed", self.seed, 0))
        if self.device != "cpu" and not (
            self.device == "cuda" or (self.device.startswith("cuda:") and self.device[5:].isdigit())
        ):
            raise ConfigError(f"device must be cpu, cuda or cuda:N, got {self.device!r}")
        check_precision(self.precision, self.device)
        set_("prefetch_batches", _int("prefetch_batches", self.prefetch_batches, 0))
        if not isinstance(self.allow_outside, bool):
            raise ConfigError(f"allow_outside must be true or false, got {self.allow_outside!r}")

    # ------------------------------------------------------------------ derived values

    @property
    def labeled_per_batch(self) -> int:
        if self.method == "supervised" and self.labeled_batch_size is None:
            return self.batch_size  # no unlabeled stream: the whole batch is labeled
        return self.labeled_batch_size or max(1, self.batch_size // 2)

    @property
    def unlabeled_per_batch(self) -> int:
        return 0 if self.method == "supervised" else self.batch_size - self.labeled_per_batch

    def total_steps(self, steps_per_epoch: int) -> int:
        if self.iterations is not None:
            return self.iterations
        return (self.epochs or PAPER_EPOCHS) * steps_per_epoch

    def total_epochs(self, steps_per_epoch: int) -> int:
        return math.ceil(self.total_steps(steps_per_epoch) / steps_per_epoch)

    def validation_interval(self, total_epochs: int) -> int:
        return self.val_every or max(1, round(total_epochs / AUTO_VALIDATIONS))

    # ------------------------------------------------------------------ conversion

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (lists, not tuples): YAML, JSON and `torch.load(weights_only=True)` read it."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def replace(self, **changes: Any) -> TrainConfig:
        # Choosing one budget drops the other, so a CLI --iterations overrides a file's epochs.
        if changes.get("iterations") is not None:
            changes.setdefault("epochs", None)
        if changes.get("epochs") is not None:
            changes.setdefault("iterations", None)
        return build_config(self.to_dict() | changes)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def build_config(values: dict[str, Any], source: str = "config") -> TrainConfig:
    """A config from plain values; unknown keys and bad values are `ConfigError`s naming `source`."""
    known = {f.name for f in fields(TrainConfig)}
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    _legacy_amp(values)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    if "spacing" in values and isinstance(values["spacing"], (int, float)) and not isinstance(values["spacing"], bool):
        values["spacing"] = (float(values["spacing"]),) * 3  # one number: isotropic
    try:
        return TrainConfig(**values)
    except ConfigError as err:
        if source == "config":
            raise
        raise ConfigError(f"{source}: {err}") from None


def _legacy_amp(values: dict[str, Any]) -> None:
    """Runs written before `precision` saved `amp: true|false`: fp32 without it; with it, fp16 on a GPU
    and bf16 on the CPU (what it meant then). Replaced in place by the equivalent `precision`."""
    if "amp" not in values:
        return
    amp = values.pop("amp")
    if not isinstance(amp, bool):
        raise ConfigError(f"amp must be true or false, got {amp!r} (amp is replaced by precision: auto|fp32|bf16|fp16)")
    if "precision" not in values:
        device = str(values.get("device", "cpu"))
        values["precision"] = ("fp16" if device.startswith("cuda") else "bf16") if amp else "fp32"


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The settings of a YAML (.yaml/.yml) or TOML (.toml) file, as a dict (not yet checked)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file does not exist")
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8")
    try:
        if suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        elif suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            raise ConfigError(f"{path}: config files must be .yaml, .yml or .toml, got {suffix or 'no suffix'!r}")
    except ConfigError:
        raise
    except Exception as err:  # yaml.YAMLError, tomllib.TOMLDecodeError
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{path}: not valid {suffix[1:].upper()}: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return data


CLI_SOURCE = "command line"  # what errors in the command line's settings name (the CLI makes them usage errors)


def resolve_config(file: str | Path | None, overrides: dict[str, Any]) -> TrainConfig:
    """Defaults < file < CLI overrides (None values are 'not given')."""
    values: dict[str, Any] = load_config_file(file) if file is not None else {}
    source = str(file) if file is not None else "config"
    given = {k: v for k, v in overrides.items() if v is not None}
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    if given.get("iterations") is not None:
        values.pop("epochs", None)
    if given.get("epochs") is not None:
        values.pop("iterations", None)
    base = build_config(values, source)  # file errors name the file ...
    return build_config(base.to_dict() | given, CLI_SOURCE) if given else base  # ... CLI errors the option


# ---------------------------------------------------------------------- checks


def _int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ConfigError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _optional_int(name: str, value: Any, minimum: int) -> int | None:
    return None if value is None else _int(name, value, minimum)


def _number(
    name: str, value: Any, low: float, high: float, *, low_open: bool = False, high_open: bool = False
) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
        raise ConfigError(f"{name} must be in {lo}{low:g}, {high:g}{hi}, got {value!r}")
    return float(value)


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def _sequence(name: str, value: Any, length: int) -> tuple:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != length:
        raise ConfigError(f"{name} must be {length} numbers, got {value!r}")
    return tuple(value)


def _triple(name: str, value: Any, kind: type) -> tuple:
    items = _sequence(name, value, 3)
    if kind is int:
        return tuple(_int(name, v, 1) for v in items)
    return tuple(_number(name, v, -math.inf, math.inf) for v in items)


def _pair(name: str, value: Any) -> tuple[float, float]:
    a, b = _sequence(name, value, 2)
    return _number(name, a, -math.inf, math.inf), _number(name, b, -math.inf, math.inf)
