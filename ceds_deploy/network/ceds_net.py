"""The CEDS network (reference class `VNet_dual_atten_CBAM`) and its inference wrapper.

One V-Net encoder feeds two decoders: decoder 1 predicts the segmentation, decoder 2 together
with the segmentation logits and their entropy predicts, per voxel, whether the segmentation
is right (the confidence).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ceds_deploy.errors import ConfigError, ModelInputError, UsageError
from ceds_deploy.network.blocks import VNetDecoder, VNetEncoder
from ceds_deploy.network.cbam import CBAM3D
from ceds_deploy.network.vnet_blocks import OutputTransition

SIZE_MULTIPLE = 16  # four stride-2 down transitions
CONFIDENCE_CLASSES = 2  # class 1: "the segmentation at this voxel is right"
ENTROPY_EPS = 1e-6


@dataclass(frozen=True)
class CedsNetConfig:
    """The network's hyper-parameters. `ConfigError` for a value out of range: `width` or `in_channels`
    below 1, `width` not a multiple of `in_channels`, fewer than 2 classes, a dropout outside [0, 1)."""

    width: int = 16  # channels after in_tr; 16 in the paper
    in_channels: int = 1
    num_classes: int = 2
    dropout: float = 0.5  # V-Net dropout (down_tr128/256 and the decoders, as in the reference)
    bottleneck_dropout: float = 0.0  # feature dropout on decoder 1's input, training only

    def __post_init__(self) -> None:
        _check_int("in_channels", self.in_channels, minimum=1)
        _check_int("width", self.width, minimum=1)
        if self.width % self.in_channels:
            raise ConfigError(f"width must be a multiple of in_channels ({self.in_channels}), got {self.width}")
        _check_int("num_classes", self.num_classes, minimum=2)
        _check_probability("dropout", self.dropout)
        _check_probability("bottleneck_dropout", self.bottleneck_dropout)


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_probability(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ConfigError(f"{name} must be a probability in [0, 1), got {value!r}")


def voxel_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) over the class axis, keeping a 1-channel axis."""
    prob = F.softmax(logits, dim=1)
    return -torch.sum(prob * torch.log(prob + ENTROPY_EPS), dim=1, keepdim=True)


class CedsNet(nn.Module):
    """forward(x) -> (seg_logits, confidence_logits), each (B, C, D, H, W) at the input's size."""

    def __init__(self, config: CedsNetConfig = CedsNetConfig()) -> None:
        super().__init__()
        self.config = config
        w, k = config.width, config.num_classes
        self.encoder = VNetEncoder(w, config.in_channels, config.dropout)
        self.bottleneck_dropout = nn.Dropout3d(config.bottleneck_dropout)
        self.seg_decoder = VNetDecoder(w, k, config.dropout)
        self.conf_decoder = VNetDecoder(w, k, config.dropout)
        head_channels = 2 * k + 1  # decoder 2 output, seg_logits, entropy
        self.cbam = CBAM3D(head_channels, reduction=2, kernel_size=3)
        self.conf_out = OutputTransition(head_channels, CONFIDENCE_CLASSES)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, in_channels, D, H, W) floating point, D, H, W multiples of 16 ->
        (seg_logits (B, num_classes, D, H, W), confidence_logits (B, 2, D, H, W)).

        `ModelInputError` for any other shape or a non-floating dtype.
        """
        self._check_input(x)
        skips = self.encoder(x)
        seg_input = skips.bottleneck
        if self.training and self.config.bottleneck_dropout > 0:
            # As in the reference, only decoder 1 sees the dropped-out bottleneck.
            seg_input = self.bottleneck_dropout(seg_input)
        seg_logits = self.seg_decoder(seg_input, skips)
        conf_features = self.conf_decoder(skips.bottleneck, skips)
        head = torch.cat([conf_features, seg_logits, voxel_entropy(seg_logits)], dim=1)
        confidence_logits = self.conf_out(self.cbam(head))
        return seg_logits, confidence_logits

    def _check_input(self, x: torch.Tensor) -> None:
        # Only concrete python ints are checked: under torch.export a dynamic axis is a SymInt,
        # and branching on it would add a guard (or fail) instead of checking anything.
        shape = tuple(x.shape)
        channels = self.config.in_channels
        spatial = shape[2:]
        bad = (
            x.ndim != 5
            or not x.is_floating_point()
            or (isinstance(shape[1], int) and shape[1] != channels)
            or any(isinstance(s, int) and (s <= 0 or s % SIZE_MULTIPLE) for s in spatial)
        )
        if bad:
            raise ModelInputError(
                f"network input must be a floating-point tensor of shape (B, {channels}, D, H, W) "
                f"with D, H, W positive multiples of {SIZE_MULTIPLE}; "
                f"got shape {tuple(int(s) for s in shape)} dtype {x.dtype}"
            )

    def confidence_parameters(self) -> Iterator[nn.Parameter]:
        """The confidence branch: decoder 2, CBAM and the confidence output transition."""
        for module in (self.conf_decoder, self.cbam, self.conf_out):
            yield from module.parameters()

    def segmentation_parameters(self) -> Iterator[nn.Parameter]:
        """Everything else: the encoder and decoder 1."""
        for module in (self.encoder, self.seg_decoder):
            yield from module.parameters()


class CedsInference(nn.Module):
    """What backends and exports run: (seg_logits, confidence), confidence = P(segmentation right).

    confidence is softmax(confidence_logits)[:, 1:2], shape (B, 1, D, H, W); both are float32.
    """

    def __init__(self, net: CedsNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, in_channels, D, H, W) -> (seg_logits (B, num_classes, D, H, W), confidence (B, 1, D, H, W)),
        both float32. `UsageError` when the network is in train mode, `ModelInputError` as `CedsNet.forward`."""
        if self.net.training:
            # Dropout and batch statistics must never reach a backend or an export.
            raise UsageError("CedsInference needs the network in eval mode; call .eval() first")
        seg_logits, confidence_logits = self.net(x)
        confidence = F.softmax(confidence_logits.float(), dim=1)[:, 1:2]
        return seg_logits.float(), confidence


def count_parameters(model: nn.Module) -> int:
    """All parameters (trainable or not); buffers such as BatchNorm statistics are not counted."""
    return sum(p.numel() for p in model.parameters())
