"""CEDS network: shapes, size, determinism, input checks, confidence wrapper, FLOPs, export."""

from __future__ import annotations

import pytest
import torch

from ceds_deploy.errors import ModelInputError
from ceds_deploy.network import CedsInference, CedsNet, CedsNetConfig, count_flops, count_parameters

# Measured with count_parameters / count_flops; the paper-size network is ~67.2 M parameters
# and ~1.30 TFLOP per 112x112x80 window.
PARAMS = {16: 67_163_867, 8: 16_798_483, 4: 4_203_887}
FLOPS_W16_ROI = 1_300_537_835_600
ROI = (1, 1, 112, 112, 80)


def make_net(width: int = 4, **kwargs: float) -> CedsNet:
    torch.manual_seed(0)
    return CedsNet(CedsNetConfig(width=width, **kwargs))


@pytest.fixture(scope="module")
def net4() -> CedsNet:
    return make_net(4).eval()


@pytest.fixture(scope="module")
def meta_net16() -> CedsNet:
    with torch.device("meta"):  # shapes only: no weights allocated, no arithmetic
        return CedsNet(CedsNetConfig(width=16))


@pytest.mark.parametrize("shape", [(2, 1, 32, 32, 32), (1, 1, 48, 32, 16)])
def test_output_shapes(net4: CedsNet, shape: tuple[int, ...]) -> None:
    with torch.no_grad():
        seg_logits, confidence_logits = net4(torch.randn(shape))
    expected = (shape[0], 2, *shape[2:])
    assert seg_logits.shape == expected
    assert confidence_logits.shape == expected


def test_parameter_counts(meta_net16: CedsNet) -> None:
    assert count_parameters(meta_net16) == PARAMS[16]
    assert abs(PARAMS[16] - 67.2e6) / 67.2e6 < 0.005
    with torch.device("meta"):
        assert count_parameters(CedsNet(CedsNetConfig(width=8))) == PARAMS[8]
        assert count_parameters(CedsNet(CedsNetConfig(width=4))) == PARAMS[4]


def test_parameter_groups_partition_the_network(net4: CedsNet) -> None:
    groups = [*net4.confidence_parameters(), *net4.segmentation_parameters()]
    assert len({id(p) for p in groups}) == len(list(net4.parameters())) == len(groups)


def test_flops_per_window(meta_net16: CedsNet) -> None:
    flops = count_flops(meta_net16, ROI)
    assert flops == FLOPS_W16_ROI
    assert abs(flops - 1.30e12) / 1.30e12 < 0.02


def test_eval_is_deterministic(net4: CedsNet) -> None:
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        first, second = net4(x), net4(x)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_train_mode_dropout_is_active() -> None:
    net = make_net(4, bottleneck_dropout=0.5).train()
    x = torch.randn(2, 1, 32, 32, 32)
    with torch.no_grad():
        torch.manual_seed(1)
        first = net(x)[0]
        torch.manual_seed(2)
        second = net(x)[0]
    assert not torch.equal(first, second)


def test_bottleneck_dropout_never_reaches_eval(net4: CedsNet) -> None:
    with_dropout = make_net(4, bottleneck_dropout=0.9)
    with_dropout.load_state_dict(net4.state_dict())
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(with_dropout.eval()(x)[0], net4(x)[0])


@pytest.mark.parametrize(
    "shape",
    [(1, 1, 33, 32, 32), (1, 2, 32, 32, 32), (1, 32, 32, 32), (1, 1, 0, 32, 32)],
)
def test_bad_input_shape_raises(net4: CedsNet, shape: tuple[int, ...]) -> None:
    with pytest.raises(ModelInputError, match=str(shape).replace("(", r"\(").replace(")", r"\)")):
        net4(torch.zeros(shape))


def test_integer_input_raises(net4: CedsNet) -> None:
    with pytest.raises(ModelInputError, match="int64"):
        net4(torch.zeros((1, 1, 16, 16, 16), dtype=torch.int64))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("width", 0),
        ("width", 2.5),
        ("in_channels", 0),
        ("num_classes", 1),
        ("dropout", 1.0),
        ("bottleneck_dropout", -0.1),
    ],
)
def test_config_validation(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"{field} .*got {value}"):
        CedsNetConfig(**{field: value})


def test_width_must_divide_by_in_channels() -> None:
    with pytest.raises(ValueError, match="got 3"):
        CedsNetConfig(width=3, in_channels=2)


def test_inference_confidence(net4: CedsNet) -> None:
    x = torch.randn(2, 1, 32, 32, 32)
    with torch.no_grad():
        seg_logits, confidence = CedsInference(net4).eval()(x)
        ref_seg, ref_conf_logits = net4(x)
    assert confidence.dtype == seg_logits.dtype == torch.float32
    assert confidence.shape == (2, 1, 32, 32, 32)
    assert float(confidence.min()) >= 0.0 and float(confidence.max()) <= 1.0
    torch.testing.assert_close(seg_logits, ref_seg)
    torch.testing.assert_close(confidence, torch.softmax(ref_conf_logits, dim=1)[:, 1:2])


def test_inference_refuses_train_mode() -> None:
    with pytest.raises(RuntimeError, match="eval"):
        CedsInference(make_net(4).train())(torch.randn(1, 1, 16, 16, 16))


def test_torch_export_with_dynamic_batch(net4: CedsNet) -> None:
    # The input check must not break tracing: the export path of the ONNX exporter.
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(
        CedsInference(net4).eval(),
        (torch.randn(2, 1, 32, 32, 32),),
        dynamic_shapes={"x": {0: batch}},
    )
    x = torch.randn(3, 1, 32, 32, 32)
    with torch.no_grad():
        got = program.module()(x)
        want = CedsInference(net4).eval()(x)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


@pytest.mark.slow
def test_onnx_export_with_dynamic_batch(net4: CedsNet, tmp_path) -> None:
    onnx = pytest.importorskip("onnx")
    batch = torch.export.Dim("batch", min=1, max=64)
    path = tmp_path / "ceds.onnx"
    torch.onnx.export(
        CedsInference(net4).eval(),
        (torch.randn(2, 1, 32, 32, 32),),
        str(path),
        dynamo=True,
        dynamic_shapes={"x": {0: batch}},
        input_names=["image"],
        output_names=["seg_logits", "confidence"],
    )
    model = onnx.load(str(path))
    ops = {node.op_type for node in model.graph.node}
    assert "MaxPool" not in ops and "AveragePool" not in ops  # CBAM pooling stays global
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param  # symbolic, not a fixed batch size


def _monai_twin(ours: torch.nn.Module) -> torch.nn.Module:
    """The same transition built from MONAI's own V-Net classes."""
    from monai.networks.nets import vnet

    from ceds_deploy.network import vnet_blocks as ours_mod

    elu = ("elu", {"inplace": True})
    if isinstance(ours, ours_mod.InputTransition):
        return vnet.InputTransition(3, ours.in_channels, ours.out_channels, elu)
    if isinstance(ours, ours_mod.DownTransition):
        drop = None if ours.dropout is None else ours.dropout.p
        return vnet.DownTransition(3, ours.down_conv.in_channels, len(ours.ops), elu, dropout_prob=drop)
    if isinstance(ours, ours_mod.UpTransition):
        first = None if ours.dropout is None else ours.dropout.p
        return vnet.UpTransition(
            3, ours.up_conv.in_channels, 2 * ours.up_conv.out_channels, len(ours.ops), elu, (first, ours.dropout2.p)
        )
    assert isinstance(ours, ours_mod.OutputTransition)
    return vnet.OutputTransition(3, ours.conv_block.conv.in_channels, ours.conv2.out_channels, elu)


def test_vnet_blocks_equal_monais() -> None:
    """Our V-Net transitions (written out so that `ceds segment` need not import MONAI) have MONAI's
    state_dict keys and compute what MONAI's classes compute with the same weights, in eval mode
    and in train mode (batch statistics, dropout), for every transition of the network."""
    from ceds_deploy.network import vnet_blocks

    net = CedsNet(CedsNetConfig(width=4, dropout=0.5))
    kinds = (vnet_blocks.InputTransition, vnet_blocks.DownTransition, vnet_blocks.UpTransition)
    kinds += (vnet_blocks.OutputTransition,)
    blocks = [(name, m) for name, m in net.named_modules() if isinstance(m, kinds)]
    assert len(blocks) == 1 + 4 + 2 * 4 + 2 + 1  # in, 4 down, 2 decoders x (4 up + out), confidence out
    torch.manual_seed(0)
    for name, ours in blocks:
        twin = _monai_twin(ours)
        assert list(twin.state_dict()) == list(ours.state_dict()), name
        for tensor in ours.state_dict().values():  # weights and BatchNorm statistics not at their defaults
            if tensor.is_floating_point():
                tensor.copy_(torch.randn_like(tensor).abs() + 0.1 if tensor.dim() == 1 else torch.randn_like(tensor))
        twin.load_state_dict(ours.state_dict())
        channels = ours.conv_block.conv.in_channels if hasattr(ours, "conv_block") else None
        if isinstance(ours, vnet_blocks.DownTransition):
            channels = ours.down_conv.in_channels
        if isinstance(ours, vnet_blocks.UpTransition):
            channels = ours.up_conv.in_channels
        x = torch.randn(2, channels, 8, 8, 8)
        args = (x,)
        if isinstance(ours, vnet_blocks.UpTransition):
            args = (x, torch.randn(2, ours.up_conv.out_channels, 16, 16, 16))  # the skip: the other half
        for train in (False, True):
            ours.train(train)
            twin.train(train)
            torch.manual_seed(1)
            mine = ours(*[a.clone() for a in args])
            torch.manual_seed(1)
            theirs = twin(*[a.clone() for a in args])
            torch.testing.assert_close(mine, theirs, rtol=0, atol=0, msg=f"{name} (train={train})")
