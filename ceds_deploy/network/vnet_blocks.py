"""MONAI's V-Net transitions (monai.networks.nets.vnet), 3D with ELU, written out here.

Why not import them: `import monai` loads every MONAI submodule (scipy, matplotlib, pandas,
nibabel), several seconds of a cold `ceds segment` on the torch backend. The modules below have
MONAI's attribute names, so their state_dict keys are MONAI's and every checkpoint loads as before;
tests/test_network.py checks keys and outputs against MONAI's own classes.
"""

from __future__ import annotations

import torch
from torch import nn

KERNEL = 5  # V-Net's 5x5x5 convolutions


def _elu() -> nn.ELU:
    # The reference passes ("elu", {"inplace": True}); in-place saves activation memory in training.
    return nn.ELU(inplace=True)


class _Norm(nn.Module):
    """MONAI's ADN with only its norm ("N"): BatchNorm3d."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.N = nn.BatchNorm3d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.N(x)


class ConvBatchNorm(nn.Module):
    """MONAI's `Convolution(kernel_size=5, act=None, norm=BATCH, bias=False)`: conv, then "adn"."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, KERNEL, padding=KERNEL // 2, bias=False)
        self.adn = _Norm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adn(self.conv(x))


class LUConv(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.act_function = _elu()
        self.conv_block = ConvBatchNorm(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act_function(self.conv_block(x))


def _convs(channels: int, depth: int) -> nn.Sequential:
    return nn.Sequential(*(LUConv(channels) for _ in range(depth)))


class InputTransition(nn.Module):
    """conv + BN, plus the input repeated to `out_channels` as a residual, then ELU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        if out_channels % in_channels:
            raise ValueError(f"out_channels ({out_channels}) must be a multiple of in_channels ({in_channels})")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.act_function = _elu()
        self.conv_block = ConvBatchNorm(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(x)
        repeated = x.repeat([1, self.out_channels // self.in_channels, 1, 1, 1])
        return self.act_function(torch.add(out, repeated))


class DownTransition(nn.Module):
    """A 2x2x2 stride-2 convolution doubling the channels, `nconvs` LUConvs, a residual add."""

    def __init__(self, in_channels: int, nconvs: int, dropout_prob: float | None = None) -> None:
        super().__init__()
        out_channels = 2 * in_channels
        self.down_conv = nn.Conv3d(in_channels, out_channels, kernel_size=2, stride=2, bias=False)
        self.bn1 = nn.BatchNorm3d(out_channels)
        self.act_function1 = _elu()
        self.act_function2 = _elu()
        self.ops = _convs(out_channels, nconvs)
        self.dropout = nn.Dropout3d(dropout_prob) if dropout_prob is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        down = self.act_function1(self.bn1(self.down_conv(x)))
        out = self.dropout(down) if self.dropout is not None else down
        return self.act_function2(torch.add(self.ops(out), down))


class UpTransition(nn.Module):
    """A 2x2x2 transposed convolution, the skip concatenated, `nconvs` LUConvs, a residual add;
    `dropout_prob` = (on the input, on the skip connection)."""

    def __init__(
        self, in_channels: int, out_channels: int, nconvs: int, dropout_prob: tuple[float | None, float] = (None, 0.5)
    ) -> None:
        super().__init__()
        self.up_conv = nn.ConvTranspose3d(in_channels, out_channels // 2, kernel_size=2, stride=2)
        self.bn1 = nn.BatchNorm3d(out_channels // 2)
        self.dropout = nn.Dropout3d(dropout_prob[0]) if dropout_prob[0] is not None else None
        self.dropout2 = nn.Dropout3d(dropout_prob[1])
        self.act_function1 = _elu()
        self.act_function2 = _elu()
        self.ops = _convs(out_channels, nconvs)

    def forward(self, x: torch.Tensor, skipx: torch.Tensor) -> torch.Tensor:
        out = self.dropout(x) if self.dropout is not None else x
        out = self.act_function1(self.bn1(self.up_conv(out)))
        xcat = torch.cat((out, self.dropout2(skipx)), 1)
        return self.act_function2(torch.add(self.ops(xcat), xcat))


class OutputTransition(nn.Module):
    """conv + BN + ELU, then a 1x1x1 convolution with bias."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.act_function1 = _elu()
        self.conv_block = ConvBatchNorm(in_channels, out_channels)
        self.conv2 = nn.Conv3d(out_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act_function1(self.conv_block(x)))
