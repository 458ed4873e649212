"""The CPU form of the network (network/cpu_form.py): every rewrite computes what it replaces."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ceds_deploy.network import CedsInference
from ceds_deploy.network.cpu_form import (
    CpuInference,
    DepthTapConv3d,
    _blocked_same_conv,
    _down_from_blocks,
    _up_to_blocks,
    from_blocks,
    to_blocks,
)
from tests.helpers import random_network


def _seeded(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))


def test_blocks_hold_each_voxel_where_documented_and_come_back() -> None:
    x = _seeded(2, 3, 4, 6, 8)
    blocks = to_blocks(x)
    assert blocks.shape == (2, 24, 2, 3, 4)
    # channel c * 8 + 4a + 2b + e holds voxel (2i + a, 2j + b, 2k + e)
    assert blocks[1, 2 * 8 + 4 * 1 + 2 * 0 + 1, 1, 2, 3] == x[1, 2, 3, 4, 7]
    assert blocks[0, 0 * 8 + 4 * 0 + 2 * 1 + 0, 0, 1, 0] == x[0, 0, 0, 3, 0]
    assert torch.equal(from_blocks(blocks), x)


@pytest.mark.parametrize(
    ("in_c", "out_c", "kernel", "bias"), [(8, 8, 5, False), (5, 2, 5, True), (2, 1, 3, True), (2, 2, 1, True)]
)
def test_a_same_convolution_on_blocks_equals_the_convolution(in_c: int, out_c: int, kernel: int, bias: bool) -> None:
    torch.manual_seed(kernel)
    conv = nn.Conv3d(in_c, out_c, kernel, padding=kernel // 2, bias=bias).eval()
    x = _seeded(2, in_c, 8, 12, 10)
    blocked = _blocked_same_conv(conv)
    assert blocked.kernel_size == ((3,) * 3 if kernel > 1 else (1,) * 3)
    with torch.no_grad():
        torch.testing.assert_close(from_blocks(blocked(to_blocks(x))), conv(x), atol=1e-5, rtol=1e-5)


def test_a_strided_convolution_and_its_transpose_run_on_blocks() -> None:
    torch.manual_seed(0)
    down = nn.Conv3d(4, 8, 2, stride=2, bias=True).eval()
    up = nn.ConvTranspose3d(16, 4, 2, stride=2).eval()
    x = _seeded(2, 4, 8, 8, 12)
    coarse = _seeded(2, 16, 4, 4, 6)
    with torch.no_grad():
        torch.testing.assert_close(_down_from_blocks(down)(to_blocks(x)), down(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(from_blocks(_up_to_blocks(up)(coarse)), up(coarse), atol=1e-5, rtol=1e-5)


def test_blocks_refuse_what_they_cannot_compute() -> None:
    with pytest.raises(ValueError, match="stride-1"):
        _blocked_same_conv(nn.Conv3d(2, 2, 3, stride=2, padding=1))
    with pytest.raises(ValueError, match="odd kernels up to 5"):
        _blocked_same_conv(nn.Conv3d(2, 2, 7, padding=3))


def test_depth_taps_equal_the_convolution_in_both_layouts() -> None:
    torch.manual_seed(3)
    conv = nn.Conv3d(8, 2, 5, padding=2, bias=True).eval()
    taps = DepthTapConv3d(conv)
    x = _seeded(2, 8, 16, 12, 20)
    with torch.no_grad():
        for layout in (torch.contiguous_format, torch.channels_last_3d):
            torch.testing.assert_close(taps(x.contiguous(memory_format=layout)), conv(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("width", "in_channels", "classes"), [(4, 1, 2), (4, 2, 2), (4, 1, 3), (8, 1, 2)]
)  # width 4: blocks, 8: depth taps
def test_the_cpu_form_computes_the_network(width: int, in_channels: int, classes: int) -> None:
    net = random_network(seed=width, width=width, in_channels=in_channels, num_classes=classes)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    form = CpuInference(net)
    assert form.blocked == (width == 4)
    x = _seeded(3, in_channels, 32, 16, 48)
    with torch.inference_mode():
        seg, conf = CedsInference(net)(x)
        for layout in (torch.contiguous_format, torch.channels_last_3d):
            fast_seg, fast_conf = form.to(memory_format=layout)(x.contiguous(memory_format=layout))
            assert fast_seg.shape == seg.shape and fast_conf.shape == conf.shape
            torch.testing.assert_close(fast_seg, seg, atol=2e-4, rtol=1e-4)
            torch.testing.assert_close(fast_conf, conf, atol=2e-5, rtol=1e-4)
            assert torch.equal(fast_seg.argmax(1), seg.argmax(1))
    # The network given is left as it was: its BatchNorms and weights.
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert any(isinstance(m, nn.BatchNorm3d) for m in net.modules())
    assert not any(isinstance(m, nn.BatchNorm3d) for m in form.modules())
    # In place, the network itself becomes the form (a backend's own copy, loaded from its file).
    in_place = CpuInference(net, in_place=True)
    assert in_place.net is net and not any(isinstance(m, nn.BatchNorm3d) for m in net.modules())
    with torch.inference_mode():
        torch.testing.assert_close(in_place(x)[0], seg, atol=2e-4, rtol=1e-4)


def test_the_cpu_form_keeps_the_input_check_and_refuses_a_training_network() -> None:
    from ceds_deploy.errors import ModelInputError

    net = random_network(width=4)
    with pytest.raises(ModelInputError, match="multiples of 16"), torch.inference_mode():
        CpuInference(net)(torch.zeros(1, 1, 24, 32, 32))
    with pytest.raises(ValueError, match="eval"):
        CpuInference(net.train())


def test_the_torch_backend_runs_a_checkpoint_in_its_cpu_form(tmp_path, tiny_spec) -> None:
    from ceds_deploy.backends import create_backend
    from ceds_deploy.checkpoint import save_checkpoint

    net = random_network(seed=5, width=4)
    path = tmp_path / "w4.pt"
    state = net.state_dict()
    save_checkpoint(
        path,
        {"spec": tiny_spec.to_dict(), "net_config": dataclasses.asdict(net.config), "teacher": state, "student": state},
    )
    x = _seeded(2, 1, 32, 32, 32)
    outputs = {}
    for cpu_form in (True, False):
        with create_backend("torch", path, tiny_spec, cpu_form=cpu_form) as backend:
            assert ("CPU form" in backend.description) == cpu_form
            outputs[cpu_form] = backend.infer(x)
    torch.testing.assert_close(outputs[True].seg_logits, outputs[False].seg_logits, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(outputs[True].confidence, outputs[False].confidence, atol=2e-5, rtol=1e-4)
    assert F.softmax(outputs[True].seg_logits, 1).argmax(1).equal(F.softmax(outputs[False].seg_logits, 1).argmax(1))
