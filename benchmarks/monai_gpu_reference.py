"""A plain MONAI script for GPU (or CPU) inference, as a new user would write it: the comparison of
issue 15 (and, with `--speed-aware --device cpu`, issue 20's cold speed-aware reference).

`LoadImaged` (nibabel), the CEDS code's pre-processing (`benchmarks/end_to_end.reference_preprocessing`:
Orientation, Spacing, ScaleIntensityRange, CropForeground, SpatialPad) on the GPU,
`sliding_window_inference` under fp16 autocast (fp32 on a CPU) (4 windows a batch, overlap 0.25), `Invertd` on the
GPU, argmax, `nibabel.save`. One process for the folder; `--passes 2` segments it twice (the second
pass is the warm figure).

    python benchmarks/monai_gpu_reference.py SCANS OUT --model w16.pt [--device cuda] [--json times.json]

The JSON holds the process's clock at start, after the imports and after each mask, so a caller that
timed the launch gets the time to first mask.
"""

from __future__ import annotations

import time

STARTED_AT = time.time()  # before the heavy imports: they are part of a cold start

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402


def segment_folder_monai(scans: list[Path], out: Path, net, spec, device: str, speed_aware: bool = False) -> list[dict]:
    """One pass over `scans`; per case the seconds of each stage and the clock when its mask was saved.
    `speed_aware` (issue 20): float32 Spacing and `Invertd` of the logit difference, not two channels."""
    import nibabel
    import torch
    from monai.inferers import sliding_window_inference
    from monai.transforms import Compose, EnsureChannelFirstd, EnsureTyped, LoadImaged

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.end_to_end import monai_mask, monai_restore, reference_preprocessing

    load = Compose(
        [
            LoadImaged("image", reader="NibabelReader", image_only=False),
            EnsureChannelFirstd("image"),
            EnsureTyped("image", device=torch.device(device), track_meta=True),
        ]
    )
    prepare = reference_preprocessing(spec, speed_aware)
    rows = []
    for path in scans:
        times: dict = {"case": path.name}
        t = time.perf_counter()
        data = load({"image": str(path)})
        times["read_s"] = time.perf_counter() - t
        t = time.perf_counter()
        data = prepare(data)
        times["preprocess_s"] = time.perf_counter() - t
        t = time.perf_counter()
        with torch.inference_mode(), torch.autocast(device_type="cuda", enabled=device.startswith("cuda")):
            logits = sliding_window_inference(
                data["image"][None].float(), spec.roi_size, 4, lambda x: net(x)[0], overlap=0.25
            )
        times["infer_s"] = time.perf_counter() - t
        t = time.perf_counter()
        restored, affine = monai_restore(data, logits[0], prepare, speed_aware)
        mask_np = monai_mask(restored, speed_aware).cpu().numpy()
        times["restore_s"] = time.perf_counter() - t
        t = time.perf_counter()
        nibabel.save(nibabel.Nifti1Image(mask_np, affine), str(out / path.name))
        times["write_s"] = time.perf_counter() - t
        times["mask_at"] = time.time()
        rows.append(times)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scans", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--passes", type=int, default=1)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--speed-aware", action="store_true", help="float32 Spacing, Invertd of one channel")
    args = parser.parse_args(argv)

    from ceds_deploy.checkpoint import load_network

    imported_at = time.time()
    net, spec = load_network(args.model, "teacher")
    net = net.to(args.device).eval()  # plain: no channels-last, no cuDNN autotuning, no graphs
    model_at = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    scans = sorted(args.scans.glob("*.nii.gz"))
    passes = []
    for _ in range(args.passes):
        start = time.time()
        rows = segment_folder_monai(scans, args.out, net, spec, args.device, args.speed_aware)
        passes.append({"wall_s": time.time() - start, "rows": rows})
    document = {
        "started_at": STARTED_AT,
        "imports_s": imported_at - STARTED_AT,
        "model_s": model_at - imported_at,
        "first_mask_after_start_s": passes[0]["rows"][0]["mask_at"] - STARTED_AT if scans else None,
        "passes": passes,
    }
    if args.json:
        args.json.write_text(json.dumps(document, indent=2), encoding="utf-8")
    print(json.dumps({k: v for k, v in document.items() if k != "passes"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
