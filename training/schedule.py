"""Which phase each step of a run belongs to, and the consistency ramp-up.

The reference counts in epochs (8000: warm-up 400, then 5 confidence-refresh epochs whenever
(epoch + 1) % 1000 < 5). Here the same rules apply to steps, with lengths as fractions of the run,
so a 200-step run still has a warm-up, eight short refresh bursts and a full ramp-up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ceds_deploy.training.config import TrainConfig

WARMUP = "warmup"  # labeled only: segmentation loss (+ confidence loss for ceds)
REFRESH = "refresh"  # ceds only: confidence loss on noisy inputs, confidence branch only
SEMI = "semi"  # consistency with the EMA teacher (labeled-only loss for supervised)


def sigmoid_rampup(current: float, length: float) -> float:
    """exp(-5 (1 - t)^2) with t = current / length clipped to [0, 1] (Laine & Aila); 1 if length is 0."""
    if length <= 0:
        return 1.0
    t = min(max(current, 0.0), length) / length
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


@dataclass(frozen=True)
class RunSchedule:
    """The phases and the consistency ramp-up of one run, in steps."""

    method: str
    total_steps: int
    warmup_steps: int
    refresh_period: int  # 0: no refresh
    refresh_length: int
    rampup_steps: float

    @classmethod
    def from_config(cls, config: TrainConfig, total_steps: int) -> RunSchedule:
        """The schedule of a run of `total_steps` steps, its lengths the fractions in `config`; refresh
        bursts for the "ceds" method only."""

        def length(fraction: float) -> int:
            return 0 if fraction <= 0 else max(1, round(fraction * total_steps))

        period, refresh = 0, 0
        if config.method == "ceds" and config.refresh_period_fraction > 0 and config.refresh_length_fraction > 0:
            refresh = length(config.refresh_length_fraction)
            # A burst must be shorter than its period, or no semi-supervised step would be left.
            period = max(length(config.refresh_period_fraction), refresh + 1)
        return cls(
            config.method,
            total_steps,
            length(config.warmup_fraction),
            period,
            refresh,
            config.rampup_fraction * total_steps,
        )

    def phase(self, step: int) -> str:
        """The phase of step `step` (0-based): `WARMUP`, `REFRESH` or `SEMI`."""
        if step < self.warmup_steps:
            return WARMUP
        if self.refresh_period and (step + 1) % self.refresh_period < self.refresh_length:
            return REFRESH
        return SEMI

    def rampup(self, step: int) -> float:
        """The consistency ramp-up weight at step `step`, in (0, 1]."""
        return sigmoid_rampup(step, self.rampup_steps)
