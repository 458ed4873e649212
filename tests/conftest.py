"""Shared fixtures: real files on disk and tiny real models."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_spec():
    from ceds_deploy.spec import ModelSpec

    return ModelSpec(roi_size=(32, 32, 32), target_spacing=(2.0, 2.0, 2.0), width=4)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_spec) -> Path:
    """A real checkpoint of a width-4 CEDS network with random (seeded) weights."""
    import torch

    from ceds_deploy.checkpoint import save_checkpoint
    from ceds_deploy.network import CedsNet, CedsNetConfig

    torch.manual_seed(0)
    config = CedsNetConfig(width=4)
    net = CedsNet(config).eval()
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_checkpoint(
        path,
        {
            "spec": tiny_spec.to_dict(),
            "net_config": dataclasses.asdict(config),
            "teacher": net.state_dict(),
            "student": net.state_dict(),
        },
    )
    return path
