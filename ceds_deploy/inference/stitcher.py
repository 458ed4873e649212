"""Weighted accumulation of window outputs into whole-volume float32 arrays (the stitcher of a
sliding-window pass)."""

from __future__ import annotations

import torch

from ceds_deploy.transforms.restore import BACKGROUND_LOGIT, UNCOVERED_CONFIDENCE


class Stitcher:
    """Weighted accumulation of window outputs into whole-volume float32 arrays."""

    def __init__(self, shape: tuple[int, ...], num_classes: int, weights: torch.Tensor) -> None:
        device = weights.device
        self.shape = tuple(shape)
        self.weights = weights
        self.seg = torch.zeros((num_classes, *shape), dtype=torch.float32, device=device)
        self.confidence = torch.zeros((1, *shape), dtype=torch.float32, device=device)
        self.weight_sum = torch.zeros(shape, dtype=torch.float32, device=device)

    def add(self, window: tuple[slice, ...], seg: torch.Tensor, confidence: torch.Tensor) -> None:
        w = self.weights
        self.seg[(slice(None), *window)].addcmul_(seg.to(self.seg.device, torch.float32), w)
        self.confidence[(slice(None), *window)].addcmul_(confidence.to(self.seg.device, torch.float32), w)
        self.weight_sum[window].add_(w)

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(seg_logits (C, *shape), confidence (1, *shape)); uncovered voxels get background.
        Consumes the accumulators (divides in place) to avoid another full-size copy."""
        covered = self.weight_sum > 0
        self.weight_sum.clamp_(min=1e-12)
        self.seg.div_(self.weight_sum)
        self.confidence.div_(self.weight_sum)
        uncovered = ~covered
        if bool(uncovered.any()):
            self.seg[:, uncovered] = -BACKGROUND_LOGIT
            self.seg[0, uncovered] = BACKGROUND_LOGIT
            self.confidence[:, uncovered] = UNCOVERED_CONFIDENCE
        return self.seg, self.confidence
