"""FLOP counting with `torch.utils.flop_counter.FlopCounterMode` (2 FLOPs per multiply-add).

The count runs on the meta device: shapes only, no arithmetic, so a full-size window costs
well under a second on a CPU and no memory for activations.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one forward pass of `model` on an input of `input_shape` (batch included)."""
    meta_state = {
        name: torch.empty_like(t, device="meta") for name, t in [*model.named_parameters(), *model.named_buffers()]
    }
    x = torch.empty(tuple(int(s) for s in input_shape), device="meta")
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        functional_call(model, meta_state, (x,))
    return int(counter.get_total_flops())
