"""Where CEDS's consistency gate is open: the share of voxels whose teacher confidence rounds to 1.

    .venv/bin/python benchmarks/ceds_gate.py RUN/checkpoints/best_teacher.pt [...] --data COHORT \
        --json benchmarks/results/ceds_gate.json

CEDS multiplies the consistency term by round(softmax(teacher confidence)[1]) (ALGORITHM.md, phase 3):
where the gate is shut, the unlabeled scans teach the student nothing. This segments the cohort's
held-out scans with each checkpoint's teacher (the raw map: a stored calibration is ignored, since
training gates on the raw head) and reports the open share in three places: inside the true tumour,
in a 10 mm shell around it, and in the rest of the body, with how often the mask is right there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

SHELL_MM = 10.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", type=Path)
    p.add_argument("--data", type=Path, required=True, help="cohort folder with dataset.json, imagesTs, labelsTs")
    p.add_argument("--json", type=Path, required=True)
    return p.parse_args(argv)


def regions(label: np.ndarray, body: np.ndarray, spacing) -> dict[str, np.ndarray]:
    from scipy.ndimage import distance_transform_edt

    tumour = label > 0
    distance = distance_transform_edt(~tumour, sampling=spacing)
    shell = (distance > 0) & (distance <= SHELL_MM)
    return {"tumour": tumour, "shell_10mm": shell & body, "rest_of_body": body & ~tumour & ~shell}


def gate_shares(checkpoint: Path, cohort: Path) -> dict:
    from ceds_deploy.backends.torch_backend import TorchBackend
    from ceds_deploy.checkpoint import load_network
    from ceds_deploy.inference import SegmentOptions, segment_volume
    from ceds_deploy.io import read_scan

    data = json.loads((cohort / "dataset.json").read_text(encoding="utf-8"))
    net, spec = load_network(checkpoint, "teacher")
    spec = dataclasses.replace(spec, calibration=None)
    sums: dict[str, list[float]] = {}
    with TorchBackend.from_module(net, spec, device="cpu", max_batch_size=4, precision="fp32") as backend:
        for image_path, label_path in zip(data["test"], data["test_labels"]):
            image = read_scan(cohort / image_path)
            label = read_scan(cohort / label_path).array
            seg = segment_volume(image, backend, SegmentOptions(batch_size=4))
            body = image.array > spec.crop_threshold_hu
            right = (seg.mask > 0) == (label > 0)
            for name, where in regions(label, body, image.geometry.spacing).items():
                if not where.any():
                    continue
                sums.setdefault(f"{name}_gate_open", []).append(float((seg.confidence[where] >= 0.5).mean()))
                sums.setdefault(f"{name}_mask_right", []).append(float(right[where].mean()))
    return {key: {"mean": float(np.mean(v)), "per_case": v} for key, v in sums.items()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from ceds_deploy.io import write_atomic_text

    results = {str(c): gate_shares(c, args.data) for c in args.checkpoints}
    write_atomic_text(
        args.json, json.dumps({"cohort": str(args.data), "shell_mm": SHELL_MM, "results": results}, indent=2) + "\n"
    )
    for checkpoint, r in results.items():
        print(checkpoint)
        for key, v in r.items():
            print(f"  {key:28s} {v['mean']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
