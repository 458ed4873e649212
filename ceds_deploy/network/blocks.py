"""V-Net encoder and decoder of the CEDS network, built from MONAI's V-Net blocks (`vnet_blocks`).

Channel counts scale with `width` (16 in the paper): the encoder produces width, 2w, 4w, 8w
and 16w channels at full, 1/2, 1/4, 1/8 and 1/16 resolution.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ceds_deploy.network.vnet_blocks import DownTransition, InputTransition, OutputTransition, UpTransition


class EncoderFeatures(NamedTuple):
    """Encoder outputs, finest first; `bottleneck` is the 1/16-resolution feature map."""

    full: torch.Tensor
    half: torch.Tensor
    quarter: torch.Tensor
    eighth: torch.Tensor
    bottleneck: torch.Tensor


class VNetEncoder(nn.Module):
    """in_tr + four down transitions (1, 2, 3, 2 convolutions), the last two with dropout."""

    def __init__(self, width: int, in_channels: int, dropout: float) -> None:
        super().__init__()
        drop = dropout if dropout > 0 else None
        self.in_tr = InputTransition(in_channels, width)
        self.down_tr32 = DownTransition(width, 1)
        self.down_tr64 = DownTransition(2 * width, 2)
        self.down_tr128 = DownTransition(4 * width, 3, dropout_prob=drop)
        self.down_tr256 = DownTransition(8 * width, 2, dropout_prob=drop)

    def forward(self, x: torch.Tensor) -> EncoderFeatures:
        """(B, in_channels, D, H, W) -> `EncoderFeatures` with width, 2w, 4w, 8w and 16w channels at
        full, 1/2, 1/4, 1/8 and 1/16 of D, H, W."""
        full = self.in_tr(x)
        half = self.down_tr32(full)
        quarter = self.down_tr64(half)
        eighth = self.down_tr128(quarter)
        return EncoderFeatures(full, half, quarter, eighth, self.down_tr256(eighth))


class VNetDecoder(nn.Module):
    """Four up transitions (2, 2, 1, 1 convolutions) with skip connections, then out_tr.

    Dropout follows MONAI's VNet as the reference builds it: the two coarsest up transitions
    drop their input and their skip connection, the two finest drop only their skip connection.
    All of them are Dropout3d modules, so `eval()` turns them off.
    """

    def __init__(self, width: int, out_channels: int, dropout: float) -> None:
        super().__init__()
        both = (dropout, dropout)
        skip_only = (None, dropout)
        w = width
        self.up_tr256 = UpTransition(16 * w, 16 * w, 2, dropout_prob=both)
        self.up_tr128 = UpTransition(16 * w, 8 * w, 2, dropout_prob=both)
        self.up_tr64 = UpTransition(8 * w, 4 * w, 1, dropout_prob=skip_only)
        self.up_tr32 = UpTransition(4 * w, 2 * w, 1, dropout_prob=skip_only)
        self.out_tr = OutputTransition(2 * w, out_channels)

    def forward(self, bottleneck: torch.Tensor, skips: EncoderFeatures) -> torch.Tensor:
        """`bottleneck` (B, 16w, D/16, H/16, W/16) and the encoder's `skips` -> logits
        (B, out_channels, D, H, W)."""
        # `bottleneck` is passed separately: decoder 1 may receive a dropped-out copy of it.
        x = self.up_tr256(bottleneck, skips.eighth)
        x = self.up_tr128(x, skips.quarter)
        x = self.up_tr64(x, skips.half)
        x = self.up_tr32(x, skips.full)
        return self.out_tr(x)
