"""The CEDS network rewritten for CPU inference: the same function, better-shaped operations.

All rewrites are exact up to float32 rounding (the order of the sums changes, nothing else), and
are made on a copy unless asked otherwise: a network being trained is never touched.

- Every BatchNorm that follows a convolution is folded into it (conv + BN -> conv), as ONNX
  Runtime and TensorRT do when they build an engine.
- Narrow networks (`BLOCKED_MAX_WIDTH`) compute their full-resolution stage on 2x2x2 blocks
  (space-to-depth): a C-channel map of D x H x W becomes an 8C-channel map of D/2 x H/2 x W/2. oneDNN
  runs the full-resolution convolutions of a narrow V-Net (8 -> 8, 8 -> 2, 5 -> 2 channels, 5x5x5)
  at a fraction of its speed on wide ones; on blocks they are 3x3x3 convolutions of 16 to 64
  channels, with 1.7x the arithmetic but 2-4x the speed, and the stride-2 convolutions next to
  them become 1x1x1 convolutions (benchmarks/window_throughput.py's -original rows against the
  default ones: benchmarks/results/cpu_form_w4_w8.json, cpu_form_w16.json).
- Wider networks keep their layout; there a 5x5x5 convolution with one or two output channels
  (the heads) runs as a 1x5x5 convolution over (output channel, depth tap) and a sum over the taps.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ceds_deploy.network.cbam import CBAM3D
from ceds_deploy.network.ceds_net import ENTROPY_EPS, CedsInference, CedsNet
from ceds_deploy.network.vnet_blocks import ConvBatchNorm, DownTransition, UpTransition

BLOCKED_MAX_WIDTH = 4  # 1.66x at width 4; at width 8 blocks gave 1.11x, the depth taps 1.25x
DEPTH_TAPS_MAX_OUT_CHANNELS = 2
BLOCK = 2  # the edge of a block; 8 voxels
SUBVOXELS = BLOCK**3


def to_blocks(x: torch.Tensor) -> torch.Tensor:
    """(B, C, D, H, W) -> (B, 8C, D/2, H/2, W/2); channel c * 8 + 4a + 2b + e holds voxel (2i+a, 2j+b, 2k+e)."""
    b, c, d, h, w = x.shape
    blocks = x.reshape(b, c, d // 2, 2, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 7, 2, 4, 6)
    return blocks.reshape(b, c * SUBVOXELS, d // 2, h // 2, w // 2)


def from_blocks(x: torch.Tensor) -> torch.Tensor:
    """The inverse of `to_blocks`, as a contiguous tensor."""
    b, c8, d, h, w = x.shape
    voxels = x.reshape(b, c8 // SUBVOXELS, 2, 2, 2, d, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
    return voxels.reshape(b, c8 // SUBVOXELS, d * 2, h * 2, w * 2).contiguous()


def _tap_selection(kernel: int) -> torch.Tensor:
    """S[s_out, s_in, block offset + r, tap] = 1 where a tap of a 1D 'same' convolution links
    sub-voxel s_out of a block to sub-voxel s_in of the block at that offset (r = 1, or 0 for 1x1x1)."""
    radius = kernel // 2
    block_radius = 1 if kernel > 1 else 0
    selection = torch.zeros(BLOCK, BLOCK, 2 * block_radius + 1, kernel, dtype=torch.float64)
    for s_out in range(BLOCK):
        for s_in in range(BLOCK):
            for offset in range(-block_radius, block_radius + 1):
                tap = BLOCK * offset + s_in - s_out + radius
                if 0 <= tap < kernel:
                    selection[s_out, s_in, offset + block_radius, tap] = 1.0
    return selection


def _blocked_same_conv(conv: nn.Conv3d) -> nn.Conv3d:
    """A stride-1 'same' convolution (odd kernel up to 5) as a 3x3x3 convolution on blocks (1x1x1 stays
    1x1x1: kron(W, I8))."""
    out_c, in_c, kernel = conv.out_channels, conv.in_channels, conv.kernel_size[0]
    if conv.stride != (1, 1, 1) or conv.groups != 1 or conv.dilation != (1, 1, 1):
        raise ValueError("only stride-1, ungrouped, undilated convolutions run on blocks")
    if conv.kernel_size != (kernel,) * 3 or kernel % 2 == 0 or kernel > 5 or conv.padding != (kernel // 2,) * 3:
        raise ValueError(f"only cubic odd kernels up to 5 with 'same' padding run on blocks, got {conv.kernel_size}")
    s = _tap_selection(kernel)
    weight = torch.einsum("oiabc,pqxa,rsyb,tuzc->oprtiqsuxyz", conv.weight.detach().double(), s, s, s)
    size = s.shape[2]
    weight = weight.reshape(out_c * SUBVOXELS, in_c * SUBVOXELS, size, size, size).float()
    bias = conv.bias.detach().repeat_interleave(SUBVOXELS) if conv.bias is not None else None
    return _conv(weight, bias, padding=size // 2)


def _down_from_blocks(conv: nn.Conv3d) -> nn.Conv3d:
    """A 2x2x2 stride-2 convolution as a 1x1x1 convolution of the blocks."""
    weight = conv.weight.detach().reshape(conv.out_channels, conv.in_channels * SUBVOXELS, 1, 1, 1)
    return _conv(weight, conv.bias.detach() if conv.bias is not None else None)


def _up_to_blocks(conv: nn.ConvTranspose3d) -> nn.Conv3d:
    """A 2x2x2 stride-2 transposed convolution as a 1x1x1 convolution that writes blocks."""
    weight = conv.weight.detach().permute(1, 2, 3, 4, 0)  # (out, 2, 2, 2, in): out * 8 + sub-voxel
    weight = weight.reshape(conv.out_channels * SUBVOXELS, conv.in_channels, 1, 1, 1)
    return _conv(weight, conv.bias.detach().repeat_interleave(SUBVOXELS) if conv.bias is not None else None)


def _conv(weight: torch.Tensor, bias: torch.Tensor | None, padding: int = 0) -> nn.Conv3d:
    """An nn.Conv3d (stride 1, cubic kernel) holding copies of `weight` and `bias`."""
    out_c, in_c, size = weight.shape[0], weight.shape[1], weight.shape[2]
    conv = nn.Conv3d(in_c, out_c, size, padding=padding, bias=bias is not None)
    conv.weight = nn.Parameter(weight.clone().contiguous())
    if bias is not None:
        conv.bias = nn.Parameter(bias.clone())
    return conv


class DepthTapConv3d(nn.Module):
    """A stride-1 'same' 3D convolution as a 1xKxK convolution over (output channel, depth tap)
    plus a sum over the taps: y[d] = sum_k z[k, d + k], the input zero-padded in depth."""

    def __init__(self, conv: nn.Conv3d) -> None:
        super().__init__()
        out_channels, in_channels, depth, height, width = conv.weight.shape
        self.out_channels, self.taps = out_channels, depth
        self.padding = (depth // 2, height // 2, width // 2)  # depth padding of a depth-1 kernel: zero planes
        taps = conv.weight.detach().permute(0, 2, 1, 3, 4).reshape(out_channels * depth, in_channels, 1, height, width)
        self.weight = nn.Parameter(taps.contiguous(), requires_grad=False)
        self.bias = nn.Parameter(conv.bias.detach().clone(), requires_grad=False) if conv.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        depth = x.shape[2]
        per_tap = F.conv3d(x, self.weight, padding=self.padding).unflatten(1, (self.out_channels, self.taps))
        out = per_tap[:, :, 0, 0:depth]
        for tap in range(1, self.taps):
            out = out + per_tap[:, :, tap, tap : tap + depth]
        return out if self.bias is None else out + self.bias.view(1, -1, 1, 1, 1)


def fold_batch_norms(net: CedsNet) -> CedsNet:
    """`net` (eval mode) with every conv + BatchNorm pair made one convolution, in place."""
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, ConvBatchNorm):
                setattr(module, name, fuse_conv_bn_eval(child.conv, child.adn.N))
        if isinstance(module, DownTransition):
            module.down_conv = fuse_conv_bn_eval(module.down_conv, module.bn1)
            module.bn1 = nn.Identity()  # type: ignore[assignment]
        elif isinstance(module, UpTransition):
            module.up_conv = fuse_conv_bn_eval(module.up_conv, module.bn1, transpose=True)
            module.bn1 = nn.Identity()  # type: ignore[assignment]
    return net


def _swap(owner: nn.Module, name: str, rewrite: Callable[[Any], nn.Module]) -> None:
    """owner.name = rewrite(owner.name): module attributes are typed by what they held when built."""
    setattr(owner, name, rewrite(getattr(owner, name)))


def _block_full_resolution(net: CedsNet) -> None:
    """Swap every full-resolution convolution for its form on blocks, in place (BNs already folded)."""
    _swap(net.encoder.in_tr, "conv_block", _blocked_same_conv)
    _swap(net.encoder.down_tr32, "down_conv", _down_from_blocks)
    for decoder in (net.seg_decoder, net.conf_decoder):
        _swap(decoder.up_tr32, "up_conv", _up_to_blocks)
        for lu in decoder.up_tr32.ops:
            _swap(lu, "conv_block", _blocked_same_conv)
    for transition in (net.seg_decoder.out_tr, net.conf_decoder.out_tr, net.conf_out):
        _swap(transition, "conv_block", _blocked_same_conv)
        _swap(transition, "conv2", _blocked_same_conv)
    _swap(net.cbam.spatial_attention, "conv", _blocked_same_conv)


def _depth_tap_heads(net: CedsNet) -> None:
    for transition in (net.seg_decoder.out_tr, net.conf_decoder.out_tr, net.conf_out):
        if transition.conv2.out_channels <= DEPTH_TAPS_MAX_OUT_CHANNELS:  # conv_block's too
            _swap(transition, "conv_block", DepthTapConv3d)


def _blocked_cbam(cbam: CBAM3D, x: torch.Tensor) -> torch.Tensor:
    """CBAM3D.forward on blocks: channel statistics over the sub-voxels too, spatial ones per sub-voxel."""
    per_channel = x.unflatten(1, (-1, SUBVOXELS))  # (B, C, 8, d, h, w)
    everywhere = (2, 3, 4, 5)
    mlp = cbam.channel_attention.mlp
    channel_weights = torch.sigmoid(
        mlp(per_channel.amax(dim=everywhere).view(x.shape[0], -1, 1, 1, 1))
        + mlp(per_channel.mean(dim=everywhere).view(x.shape[0], -1, 1, 1, 1))
    )
    out = per_channel * channel_weights.unsqueeze(2)  # (B, C, 8, d, h, w)
    maps = torch.cat([out.amax(dim=1), out.mean(dim=1)], dim=1)  # blocks of the max and mean maps
    spatial = torch.sigmoid(cbam.spatial_attention.conv(maps))  # (B, 8, d, h, w)
    return (out * spatial.unsqueeze(1)).flatten(1, 2) + x


class CpuInference(CedsInference):
    """`CedsInference` of `net` in its CPU form: forward(x) -> (seg_logits, confidence). `net` is
    copied first, unless `in_place` (a network no one else holds: a backend's own, loaded from a file)."""

    def __init__(self, net: CedsNet, *, in_place: bool = False) -> None:
        if net.training:
            raise ValueError("the CPU form is for inference; call .eval() first")
        super().__init__(fold_batch_norms(net if in_place else copy.deepcopy(net)))
        self.blocked = net.config.width <= BLOCKED_MAX_WIDTH
        if self.blocked:
            _block_full_resolution(self.net)
        else:
            _depth_tap_heads(self.net)
        for parameter in self.net.parameters():
            parameter.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.blocked:
            return super().forward(x)  # the same network graph, its layers rewritten in place
        net = self.net
        net._check_input(x)
        skips = net.encoder(to_blocks(x))
        seg_logits = net.seg_decoder(skips.bottleneck, skips)
        conf_features = net.conf_decoder(skips.bottleneck, skips)
        prob = F.softmax(seg_logits.unflatten(1, (-1, SUBVOXELS)), dim=1)
        entropy = -torch.sum(prob * torch.log(prob + ENTROPY_EPS), dim=1)  # (B, 8, d, h, w)
        head = torch.cat([conf_features, seg_logits, entropy], dim=1)
        confidence_logits = net.conf_out(_blocked_cbam(net.cbam, head))
        confidence = F.softmax(confidence_logits.float().unflatten(1, (-1, SUBVOXELS)), dim=1)[:, 1]
        return from_blocks(seg_logits.float()), from_blocks(confidence)
