"""Mixed-precision (fp16) export: the precision is decided here, in the graph, not by TensorRT.

TensorRT 11 builds strongly typed networks only (the weakly typed BuilderFlag.FP16 /
OBEY_PRECISION_CONSTRAINTS / per-layer precision API was deprecated in 10.12 and removed in 11.0),
so an engine runs exactly the types of its ONNX file. `ceds export CKPT --out m.onnx --precision
fp16` therefore writes a graph that is already mixed precision:

- fp16: every weight and activation of the encoder and both decoders (all the 3D convolutions,
  transposed convolutions and ELUs: more than 99% of the FLOPs and of the weights);
- fp32: the segmentation logits from the last decoder-1 convolution on, the softmax / log /
  entropy of those logits, the confidence head (concat, CBAM with its global max/mean over a
  whole window, the output transition) and the final softmax; `HEAD_FP32 = True`, see below;
- fp32 graph input `image` and outputs `seg_logits`, `confidence`: callers do not change.

How: the exported torch module itself runs in mixed precision (`MixedPrecisionInference`: the
network's fp16 parts are `.half()` copies, the fp32 islands are the original modules), and the
torch.export-based exporter writes the Cast nodes. The alternative, a graph-level converter
(onnxruntime.transformers.float16.convert_float_to_float16, a copy of onnxconverter-common's),
was tried first on the width-16 graph: it wraps every blocked node in its own Cast pair, so a
chain of "fp32" nodes (softmax -> add eps -> log -> mul -> sum) round-trips through fp16 between
every two nodes (softmax_cast_to_fp16 -> softmax -> softmax_cast_to_fp32), and the result did not
even load (duplicate Cast node names). Casting in the module gives real fp32 islands, a graph
the ONNX checker accepts, and no new dependency.

Why the whole head stays fp32 (`HEAD_FP32`): CBAM pools over every voxel of a window (about 10^6
voxels at 112x112x80), which fp16 reductions do badly, and the head is 0.2% of the network's
FLOPs (2.6 of 1300 GFLOP per 112x112x80 window at width 16, `network.flops`) and 1335 of its
67 M weights. Measured at width 16 (random weights, ONNX Runtime CPU with its default optimisations
vs torch fp32 on one random and two phantom 112x112x80 windows): head fp32: max |prob diff| 8.2e-5,
confidence 1.8e-5, argmax agreement 0.999936; head fp16: 1.1e-4, 6.8e-5, 0.999801, and no faster.
"""

from __future__ import annotations

import copy

from ceds_deploy.spec import PRECISIONS  # ("fp32", "fp16")

HEAD_FP32 = True


def check_precision(precision: str) -> str:
    from ceds_deploy.errors import ConfigError

    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def _module():
    import torch
    import torch.nn.functional as F
    from torch import nn

    from ceds_deploy.network.ceds_net import voxel_entropy

    class MixedPrecisionInference(nn.Module):
        """(seg_logits, confidence) like `CedsInference`, with the encoder and both decoders in fp16.

        Mirrors `CedsNet.forward` in eval mode; `test_mixed_module_in_fp32_equals_ceds_inference`
        keeps the two in step.
        """

        def __init__(self, net, *, head_fp32: bool = HEAD_FP32, dtype=torch.float16) -> None:
            super().__init__()
            if net.training:
                raise RuntimeError("MixedPrecisionInference needs the network in eval mode")
            self.net = net
            self.dtype = dtype
            self.head_fp32 = head_fp32
            # The fp16 parts are copies, so `net` keeps its fp32 weights (the parity reference).
            self.encoder = copy.deepcopy(net.encoder).to(dtype)
            self.seg_decoder = copy.deepcopy(net.seg_decoder).to(dtype)
            self.conf_decoder = copy.deepcopy(net.conf_decoder).to(dtype)
            head_dtype = torch.float32 if head_fp32 else dtype
            self.cbam = copy.deepcopy(net.cbam).to(head_dtype)
            self.conf_out = copy.deepcopy(net.conf_out).to(head_dtype)
            self.head_dtype = head_dtype

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            self.net._check_input(x)
            skips = self.encoder(x.to(self.dtype))
            seg_logits = self.seg_decoder(skips.bottleneck, skips).float()
            conf_features = self.conf_decoder(skips.bottleneck, skips)
            entropy = voxel_entropy(seg_logits)  # fp32: softmax, log, sum
            head = torch.cat(
                [conf_features.to(self.head_dtype), seg_logits.to(self.head_dtype), entropy.to(self.head_dtype)], dim=1
            )
            confidence_logits = self.conf_out(self.cbam(head)).float()
            confidence = F.softmax(confidence_logits, dim=1)[:, 1:2]
            return seg_logits, confidence

    return MixedPrecisionInference


def mixed_precision_module(net, *, head_fp32: bool | None = None, dtype=None):
    """The module `ceds export --precision fp16` exports (`net`: eval mode, BatchNorm folded)."""
    import torch

    head_fp32 = HEAD_FP32 if head_fp32 is None else head_fp32
    return _module()(net, head_fp32=head_fp32, dtype=dtype or torch.float16).eval()


def graph_precision(model) -> dict[str, int]:
    """Counts of the element types of a graph's float initializers, e.g. {"float16": 90, "float32": 12}."""
    from onnx import TensorProto

    names = {
        TensorProto.FLOAT: "float32",
        TensorProto.FLOAT16: "float16",
        TensorProto.BFLOAT16: "bfloat16",
        TensorProto.DOUBLE: "float64",
    }
    counts: dict[str, int] = {}
    for tensor in model.graph.initializer:
        if tensor.data_type in names:
            counts[names[tensor.data_type]] = counts.get(names[tensor.data_type], 0) + 1
    return counts
