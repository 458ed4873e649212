"""The fp16 ONNX file against the fp32 one on the demo's held-out phantoms: masks through
`ceds segment` (ONNX Runtime, as the demo runs it), their Dice against each other and against the
truth, and the export's parity gate.

    python benchmarks/fp16_masks.py --demo DEMO_DIR --json benchmarks/results/fp16_masks.json

DEMO_DIR is a finished `ceds demo` folder (model.pt, model.onnx, data/imagesTs, data/labelsTs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import machine, print_table, write_json  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=None, help="folder for the fp16 file and masks")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    from ceds_deploy.cli.segment import run_segment
    from ceds_deploy.export.onnx_export import export_checkpoint
    from ceds_deploy.inference import SegmentOptions
    from ceds_deploy.io import read_scan
    from ceds_deploy.qa.metrics import dice

    demo = args.demo
    work = args.work or demo / "fp16-check"
    fp16 = export_checkpoint(demo / "model.pt", work / "model-fp16.onnx", precision="fp16")
    options = SegmentOptions(largest_component=True, overwrite=True)  # as the demo segments
    for name, model in (("fp32", demo / "model.onnx"), ("fp16", fp16.path)):
        run_segment(
            demo / "data" / "imagesTs", work / name, model, backend="onnxruntime", options=options, show_progress=False
        )
    rows = []
    for label_path in sorted((demo / "data" / "labelsTs").glob("*.nii.gz")):
        truth = read_scan(label_path, dtype=None).array > 0
        masks = {n: read_scan(work / n / label_path.name, dtype=None).array > 0 for n in ("fp32", "fp16")}
        rows.append(
            {
                "case": label_path.name.removesuffix(".nii.gz"),
                "dice_fp16_vs_fp32": dice(masks["fp16"], masks["fp32"]),
                "dice_fp32_vs_truth": dice(masks["fp32"], truth),
                "dice_fp16_vs_truth": dice(masks["fp16"], truth),
            }
        )
    sizes = {"fp32_mb": (demo / "model.onnx").stat().st_size / 1e6, "fp16_mb": fp16.size_bytes / 1e6}
    print_table("fp16 vs fp32 ONNX masks on the held-out phantoms", rows)
    print(sizes, fp16.parity.summary() if fp16.parity else "")
    if args.json:
        write_json(
            args.json,
            {
                "machine": machine(),
                "demo": str(demo),
                "rows": rows,
                "sizes": sizes,
                "parity": fp16.parity.to_dict() if fp16.parity else None,
            },
        )
    return 0 if all(r["dice_fp16_vs_fp32"] >= 0.99 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
