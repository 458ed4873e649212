"""Where a case's time goes after its last window: each step of restore, write and review, alone on
an idle device (each timed after a device synchronisation, the median of `--repeats`).

    python benchmarks/restore_profile.py SCAN MODEL --device cuda --json OUT.json

Steps: the thresholded mask resampled to the scan's grid (`mask`), the confidence map resampled
(`confidence`), its clip to [0, 1], `calibrate_and_quantize` without and with a calibration table,
the review (`assess`, with the calibration's margin), writing mask and confidence (`write`), and the
whole `restore_prediction` (`restore_prediction`, calibrated), with the confidence map finished
where it was resampled (the default) and on the host (`..._host_finish`). `gpu_check.py --parts restore_profile`
runs it on the largest phantom.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.append(str(Path(__file__).resolve().parents[1]))

# A calibration with a typical shape (the table's knots only change which voxels take the exact path).
TABLES = (
    ((0.0, 0.5), (0.5, 0.62), (0.8, 0.9), (0.95, 0.985), (1.0, 1.0)),
    ((0.0, 0.05), (0.3, 0.2), (0.6, 0.55), (0.9, 0.8), (1.0, 0.93)),
)


def profile(scan: Path, checkpoint: Path, device: str, repeats: int = 3, batch: int = 4) -> dict:
    import torch

    from ceds_deploy.artifacts import read_spec
    from ceds_deploy.backends import create_backend
    from ceds_deploy.inference import SegmentOptions
    from ceds_deploy.inference.scheduler import sliding_window_predict
    from ceds_deploy.inference.segment import pads_batches, window_plan_for
    from ceds_deploy.io import read_scan, write_volumes
    from ceds_deploy.qa.review import assess
    from ceds_deploy.spec import Calibration
    from ceds_deploy.transforms.confidence import calibrate_and_quantize
    from ceds_deploy.transforms.preprocess import prepare_scan_on
    from ceds_deploy.transforms.restore import BACKGROUND_LOGIT, restore_prediction, restore_to_source

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    spec = read_spec(checkpoint)
    calibration = Calibration(TABLES)
    volume = read_scan(scan, dtype=None)
    cuda = device.startswith("cuda")
    options = {"precision": "fp16", "cudnn_benchmark": True} if cuda else {}
    times: dict[str, list[float]] = {}

    def timed(name: str, fn):
        sync()
        start = time.perf_counter()
        result = fn()
        sync()
        times.setdefault(name, []).append(time.perf_counter() - start)
        return result

    with create_backend("torch", checkpoint, spec, device=device, max_batch_size=batch, **options) as backend:
        image, mapping = prepare_scan_on(volume, spec, device, as_tensor=cuda)
        windows = window_plan_for(image, spec, SegmentOptions())
        seg, conf = sliding_window_predict(
            image,
            windows,
            backend,
            batch_size=batch,
            accumulate_on=image.device if cuda else "cpu",
            pad_batches=pads_batches(backend),
        )
        sync()
        work = Path(tempfile.mkdtemp(prefix="restore-profile-"))
        for _ in range(repeats):
            diff = (seg[1] - seg[0])[None]
            mask = timed("mask", lambda: restore_to_source(diff, mapping, fill=-2 * BACKGROUND_LOGIT, above=0.0)[0])
            raw = timed("confidence", lambda: restore_to_source(conf, mapping, fill=1.0)[0])
            timed("clip", lambda: np.clip(raw, 0.0, 1.0, out=raw))
            spare = raw.copy(order="K")  # quantized in place: the copy is not timed
            timed("quantize", lambda: calibrate_and_quantize(spare, mask, None))
            timed("calibrate", lambda: calibrate_and_quantize(raw, mask, calibration))
            timed(
                "review",
                lambda: assess(
                    mask,
                    raw,
                    mapping.source.voxel_volume_ml,
                    0.5,
                    spacing=mapping.source.spacing,
                    calibration_margin_mm=calibration.margin_mm,
                ),
            )
            items = [(work / "c.nii.gz", raw, mapping.source), (work / "m.nii.gz", mask, mapping.source)]
            timed("write", lambda: write_volumes(items))
            timed("restore_prediction", lambda: restore_prediction(seg, conf, mapping, calibration=calibration))
            timed(
                "restore_prediction_host_finish",
                lambda: restore_prediction(seg, conf, mapping, calibration=calibration, finish_on_device=False),
            )
    return {
        "scan": scan.name,
        "shape": "x".join(map(str, volume.shape)),
        "windows": len(windows),
        "tumour_fraction": float(mask.mean()),
        "median_s": {k: round(statistics.median(v), 4) for k, v in times.items()},
        "all_s": {k: [round(x, 4) for x in v] for k, v in times.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scan", type=Path)
    parser.add_argument("model", type=Path)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from benchmarks.common import write_json

    result = profile(args.scan, args.model, args.device, args.repeats)
    print(result["median_s"])
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
