"""3D CBAM (Woo et al. 2018): channel attention, then spatial attention, plus the input.

Global pooling is written as reductions (amax / mean over the spatial axes) rather than pooling
layers with a fixed kernel, so an ONNX export stays valid for any input size.
"""

from __future__ import annotations

import torch
from torch import nn

_SPATIAL = (2, 3, 4)


class ChannelAttention3D(nn.Module):
    """Sigmoid of a shared 1x1x1 MLP applied to the global max and the global mean."""

    def __init__(self, channels: int, reduction: int = 2) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(
            nn.Conv3d(channels, hidden, kernel_size=1, bias=False),
            nn.ReLU(),
            nn.Conv3d(hidden, channels, kernel_size=1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, D, H, W) -> channel weights in (0, 1), shape (B, C, 1, 1, 1)."""
        max_pooled = torch.amax(x, dim=_SPATIAL, keepdim=True)
        avg_pooled = torch.mean(x, dim=_SPATIAL, keepdim=True)
        return torch.sigmoid(self.mlp(max_pooled) + self.mlp(avg_pooled))


class SpatialAttention3D(nn.Module):
    """Sigmoid of a convolution over the channel-wise max and mean maps."""

    def __init__(self, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv3d(2, 1, kernel_size=kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, D, H, W) -> spatial weights in (0, 1), shape (B, 1, D, H, W)."""
        max_map = torch.amax(x, dim=1, keepdim=True)
        mean_map = torch.mean(x, dim=1, keepdim=True)
        return torch.sigmoid(self.conv(torch.cat([max_map, mean_map], dim=1)))


class CBAM3D(nn.Module):
    """out = x + sa(x') * x' with x' = ca(x) * x (the reference's residual CBAM block)."""

    def __init__(self, channels: int, reduction: int = 2, kernel_size: int = 3) -> None:
        super().__init__()
        self.channel_attention = ChannelAttention3D(channels, reduction)
        self.spatial_attention = SpatialAttention3D(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, D, H, W) -> the attended features plus `x`, the same shape."""
        out = x * self.channel_attention(x)
        out = out * self.spatial_attention(out)
        return out + x
