"""Between a scan's own grid and the grid the network sees, one implementation each way.

`orientation` (canonical LPS axis order), `spacing` (MONAI's Spacing grid and interpolation taps),
`resample` (chunked separable resampling, CPU or GPU), `preprocess` (scan -> model input and the
plan to undo it), `restore` (model outputs -> mask and confidence on the scan's grid).
"""

from ceds_deploy.transforms.preprocess import GridMapping, prepare_label, prepare_scan
from ceds_deploy.transforms.restore import RestoredPrediction, restore_prediction, restore_to_source

__all__ = [
    "GridMapping",
    "RestoredPrediction",
    "prepare_label",
    "prepare_scan",
    "restore_prediction",
    "restore_to_source",
]
