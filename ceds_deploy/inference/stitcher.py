"""Weighted accumulation of window outputs into whole-volume float32 arrays (the stitcher of a
sliding-window pass).

The segmentation logits are blended as asked (constant by default, as the CEDS code's validation).
The confidence map is always blended with Gaussian weights: the confidence head is least sure at a
window's edge, and a plain average would draw every window edge into the map as a seam.
"""

from __future__ import annotations

import torch

from ceds_deploy.transforms.restore import BACKGROUND_LOGIT, UNCOVERED_CONFIDENCE


class Stitcher:
    """Weighted sums of window outputs over one volume; `result()` divides by the weights."""

    def __init__(
        self, shape: tuple[int, ...], num_classes: int, seg_weights: torch.Tensor, confidence_weights: torch.Tensor
    ) -> None:
        device = seg_weights.device
        self.shape = tuple(shape)
        self.seg_weights, self.confidence_weights = seg_weights, confidence_weights
        self.seg = torch.zeros((num_classes, *shape), dtype=torch.float32, device=device)
        self.confidence = torch.zeros((1, *shape), dtype=torch.float32, device=device)
        self.seg_weight_sum = torch.zeros(shape, dtype=torch.float32, device=device)
        self.shared_weights = seg_weights is confidence_weights
        self.confidence_weight_sum = (
            self.seg_weight_sum if self.shared_weights else torch.zeros(shape, dtype=torch.float32, device=device)
        )

    def add(self, window: tuple[slice, ...], seg: torch.Tensor, confidence: torch.Tensor) -> None:
        """Add one window's outputs, weighted, at the voxels `window` (one slice per axis) selects: `seg`
        (C, *roi) and `confidence` (1, *roi), roi being the weights' shape; moved to the accumulators' device."""
        self.seg[(slice(None), *window)].addcmul_(seg.to(self.seg.device, torch.float32), self.seg_weights)
        self.confidence[(slice(None), *window)].addcmul_(
            confidence.to(self.seg.device, torch.float32), self.confidence_weights
        )
        self.seg_weight_sum[window].add_(self.seg_weights)
        if not self.shared_weights:
            self.confidence_weight_sum[window].add_(self.confidence_weights)

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(seg_logits (C, *shape), confidence (1, *shape)); uncovered voxels get background.
        Consumes the accumulators (divides in place) to avoid another full-size copy."""
        uncovered = self.seg_weight_sum == 0
        self.seg.div_(self.seg_weight_sum.clamp(min=1e-12))
        self.confidence.div_(self.confidence_weight_sum.clamp(min=1e-12))
        if bool(uncovered.any()):
            self.seg[:, uncovered] = -BACKGROUND_LOGIT
            self.seg[0, uncovered] = BACKGROUND_LOGIT
            self.confidence[:, uncovered] = UNCOVERED_CONFIDENCE
        return self.seg, self.confidence
