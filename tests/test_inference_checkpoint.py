"""`save_inference_checkpoint`: a slim checkpoint (one network + spec) that loads and predicts as the full one."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch

from ceds_deploy.checkpoint import load_checkpoint, load_network, save_checkpoint, save_inference_checkpoint
from ceds_deploy.errors import ArtifactError
from ceds_deploy.network import CedsNet, CedsNetConfig
from ceds_deploy.spec import ModelSpec


@pytest.fixture(scope="module")
def training_checkpoint(tmp_path_factory):
    """A checkpoint shaped like the trainer's: both networks and momentum state of an optimizer."""
    torch.manual_seed(0)
    config = CedsNetConfig(width=2)
    student, teacher = CedsNet(config), CedsNet(config)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
    seg, conf = student(torch.rand(1, 1, 32, 32, 32))
    (seg.mean() + conf.mean()).backward()
    optimizer.step()
    payload = {
        "spec": ModelSpec(roi_size=(32, 32, 32), width=2).to_dict(),
        "net_config": asdict(config),
        "teacher": teacher.state_dict(),
        "student": student.state_dict(),
        "optimizer_segmentation": optimizer.state_dict(),
        "epoch": 3,
        "global_step": 12,
    }
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "best_teacher.pt", payload)


@pytest.mark.parametrize("weights", ["teacher", "student"])
def test_slim_checkpoint_predicts_exactly_as_the_full_one_and_is_much_smaller(training_checkpoint, tmp_path, weights):
    slim = save_inference_checkpoint(training_checkpoint, tmp_path / "model.pt", weights=weights)
    full_net, full_spec = load_network(training_checkpoint, weights)
    slim_net, slim_spec = load_network(slim, weights)
    assert slim_spec == full_spec
    x = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        for a, b in zip(full_net(x), slim_net(x)):
            assert torch.equal(a, b)
    payload = load_checkpoint(slim)
    assert set(payload) == {"format", "kind", "spec", "net_config", weights}
    assert slim.stat().st_size < training_checkpoint.stat().st_size / 2.5
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # written atomically, no temp file left


def test_slim_checkpoint_holds_only_the_chosen_network(training_checkpoint, tmp_path):
    slim = save_inference_checkpoint(training_checkpoint, tmp_path / "model.pt", weights="teacher")
    with pytest.raises(ArtifactError, match="no student weights"):
        load_network(slim, "student")
    with pytest.raises(ArtifactError, match="weights must be one of"):
        save_inference_checkpoint(training_checkpoint, tmp_path / "x.pt", weights="both")


def test_weights_of_another_width_say_which_tensor_does_not_fit(training_checkpoint, tmp_path):
    """torch's message begins with a heading line; the one line shown names the first mismatch."""
    payload = load_checkpoint(training_checkpoint)
    payload["net_config"] = {**payload["net_config"], "width": 4}
    wrong = save_checkpoint(tmp_path / "wrong_width.pt", payload)
    with pytest.raises(ArtifactError, match=r"wrong_width\.pt: weights do not fit .*: size mismatch for \S+: copying"):
        load_network(wrong)


def test_an_onnx_file_given_as_a_checkpoint_is_named_as_such(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, producer_name="pytorch")
    onnx.save(model, tmp_path / "model.pt")
    with pytest.raises(ArtifactError, match=r"model\.pt: is an ONNX model, not a PyTorch checkpoint"):
        load_checkpoint(tmp_path / "model.pt")
