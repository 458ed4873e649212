"""The mean teacher: an exponential moving average of the student's parameters."""

from __future__ import annotations

import torch
from torch import nn


def ema_alpha(step: int, decay: float = 0.99) -> float:
    """min(1 - 1/(step + 1), decay): the true average of the first steps, then a fixed decay."""
    return min(1.0 - 1.0 / (step + 1), decay)


@torch.no_grad()
def update_teacher(teacher: nn.Module, student: nn.Module, alpha: float) -> None:
    """teacher = alpha * teacher + (1 - alpha) * student for parameters; buffers (BatchNorm running
    statistics) are copied, since an average of running statistics is not a statistic of anything."""
    t_params, s_params = list(teacher.parameters()), list(student.parameters())
    if len(t_params) != len(s_params):
        raise ValueError("teacher and student have different architectures")
    torch._foreach_mul_(t_params, alpha)
    torch._foreach_add_(t_params, s_params, alpha=1.0 - alpha)
    for t, s in zip(teacher.buffers(), student.buffers()):
        t.copy_(s)


def make_teacher(student: nn.Module) -> nn.Module:
    """A copy of the student that no optimizer touches."""
    import copy

    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher
