"""The CEDS network: dual-decoder V-Net with a CBAM confidence head."""

from ceds_deploy.network.cbam import CBAM3D
from ceds_deploy.network.ceds_net import (
    CONFIDENCE_CLASSES,
    SIZE_MULTIPLE,
    CedsInference,
    CedsNet,
    CedsNetConfig,
    count_parameters,
    voxel_entropy,
)
from ceds_deploy.network.flops import count_flops

__all__ = [
    "CBAM3D",
    "CONFIDENCE_CLASSES",
    "SIZE_MULTIPLE",
    "CedsInference",
    "CedsNet",
    "CedsNetConfig",
    "count_flops",
    "count_parameters",
    "voxel_entropy",
]
