"""`ceds segment` against the reference way, on the same weights and the same phantom scans.

The reference way is the CEDS code's own validation path: MONAI `LoadImage`, `Orientation`,
`Spacing`, `ScaleIntensityRange`, `CropForeground`, `sliding_window_inference` in torch eager
fp32 (overlap 0.25, constant blending, 4 windows a batch), then MONAI's `Invertd` back onto the
scan's grid. The second reference row is that script as a speed-aware user writes it (issue 20:
float32 Spacing, `Invertd` of the logit difference, the mask saved with the affine in memory). All
write the mask as NIfTI. `benchmarks/cold_cpu_ways.py` times the ways as cold processes. Prints
per-stage times, the speed ratios and the agreement of the masks (Dice) and tumour probabilities
(max |diff|); writes JSON.

    python benchmarks/end_to_end.py --model RUN/checkpoints/best_teacher.pt --cases 2 --size full
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from ceds_deploy.qa.metrics import dice

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import machine, peak_rss_gb, print_table, write_json  # noqa: E402


def make_scans(folder: Path, cases: int, size: str, seed: int) -> list[Path]:
    from ceds_deploy.io import write_volume
    from ceds_deploy.synthetic import make_case

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(cases):
        path = folder / f"bench_{size}_{seed}_{index:03d}.nii.gz"
        if not path.exists():
            image, label = make_case(1000 + index, seed=seed, size=size)
            write_volume(path, np.round(image.array).astype(np.int16), image.geometry)
            write_volume(folder.parent / "labels" / path.name, label.array, label.geometry)
        paths.append(path)
    return paths


def reference_preprocessing(spec, speed_aware: bool = False):
    """The CEDS code's pre-processing, after loading: MONAI Orientation, Spacing,
    ScaleIntensityRange, CropForeground and SpatialPad (Invertd undoes it). `speed_aware`: Spacing
    (and so its inverse) in float32 instead of MONAI's default float64, as a speed-aware user sets it."""
    from monai.transforms import Compose, CropForegroundd, Orientationd, ScaleIntensityRanged, Spacingd, SpatialPadd

    low, high = spec.hu_window
    return Compose(
        [
            Orientationd("image", axcodes="LPS"),  # the array order ceds-deploy's canonical grid uses
            Spacingd(
                "image", pixdim=spec.target_spacing, mode="bilinear", dtype=np.float32 if speed_aware else np.float64
            ),
            ScaleIntensityRanged("image", a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True),
            CropForegroundd("image", source_key="image"),
            SpatialPadd("image", spatial_size=spec.roi_size),
        ]
    )


def monai_restore(data: dict, logits, prepare, speed_aware: bool):
    """MONAI's way back to the scan's grid, on the logits' device: `Invertd` of both classes' logits
    (the CEDS validation), or with `speed_aware` of their difference (its sign is the argmax of two
    classes); (the restored MetaTensor, its affine). The one inversion both MONAI scripts time."""
    from monai.data import MetaTensor
    from monai.transforms import Invertd

    pred = (logits.as_tensor() if hasattr(logits, "as_tensor") else logits).float()
    if speed_aware:
        pred = pred[1:2] - pred[0:1]
    data["pred"] = MetaTensor(pred, meta=data["image"].meta, applied_operations=data["image"].applied_operations)
    restored = Invertd("pred", transform=prepare, orig_keys="image", nearest_interp=False)(data)["pred"]
    return restored, np.asarray(restored.affine.cpu(), dtype=np.float64)


def monai_mask(restored, speed_aware: bool):
    """The uint8 mask of `monai_restore`'s result, on its device."""
    import torch

    return (restored[0] > 0).to(torch.uint8) if speed_aware else torch.argmax(restored, dim=0).to(torch.uint8)


def reference_way(path: Path, net, spec, out: Path, blend: str = "constant", speed_aware: bool = False) -> dict:
    """The CEDS reference validation path, timed per stage; returns mask, probability, times.
    `blend` other than the reference's "constant" is for diagnosing where the two ways differ.
    `speed_aware` is the same script as a speed-aware MONAI user writes it (issue 20): Spacing in
    float32, `Invertd` of one channel (the logit difference: its sign is the argmax of two classes),
    the mask saved with the affine already in memory (nibabel) instead of re-reading the scan."""
    import torch
    from monai.inferers import sliding_window_inference
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

    from ceds_deploy.io import read_scan, write_volume

    load = Compose([LoadImaged("image", reader="NibabelReader", image_only=False), EnsureChannelFirstd("image")])
    prepare = reference_preprocessing(spec, speed_aware)
    times = {}
    t = time.perf_counter()
    data = load({"image": str(path)})
    times["read"] = time.perf_counter() - t
    t = time.perf_counter()
    data = prepare(data)
    times["preprocess"] = time.perf_counter() - t
    t = time.perf_counter()
    with torch.inference_mode():
        logits = sliding_window_inference(
            data["image"][None].float(), spec.roi_size, 4, lambda x: net(x)[0], overlap=0.25, mode=blend
        )
    times["infer"] = time.perf_counter() - t
    t = time.perf_counter()
    restored, affine = monai_restore(data, logits[0], prepare, speed_aware)
    mask = monai_mask(restored, speed_aware).cpu().numpy()
    values = torch.as_tensor(restored).detach().cpu()
    probability = (torch.sigmoid(values[0]) if speed_aware else torch.softmax(values, 0)[1]).numpy()
    times["restore"] = time.perf_counter() - t
    t = time.perf_counter()
    if speed_aware:
        import nibabel

        nibabel.save(nibabel.Nifti1Image(mask, affine), str(out / path.name))
    else:
        geometry = read_scan(path).geometry  # the array is in ITK x, y, z order like ours
        write_volume(out / f"{path.name}", mask, geometry)
    times["write"] = time.perf_counter() - t
    return {"mask": mask, "probability": probability, "times": times}


def reference_or_cached(path: Path, net, spec, work: Path, speed_aware: bool, cached_only: bool) -> tuple[dict, float]:
    """(`reference_way`'s result, its seconds), run and cached under `work`, or with `cached_only`
    read from an earlier run's cache."""
    name = "speed_aware" if speed_aware else "reference"
    cached = work / f"{name}_cache" / f"{path.name}.npz"
    if cached_only:
        saved = np.load(cached, allow_pickle=True)
        result = {"mask": saved["mask"], "probability": saved["probability"], "times": saved["times"].item()}
        return result, float(saved["seconds"])
    out = work / name
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result = reference_way(path, net, spec, out, speed_aware=speed_aware)
    seconds = time.perf_counter() - start
    save_atomically(
        cached,
        lambda f: np.savez(
            f,
            mask=result["mask"],
            probability=result["probability"].astype(np.float16),
            times=np.array(result["times"], dtype=object),
            seconds=seconds,
        ),
    )
    return result, seconds


def explain_agreement(path: Path, net, backend, spec, out: Path, reference: dict, ours_mask: np.ndarray) -> dict:
    """Where the two ways differ, one convention at a time (masks compared by Dice):
    blending (the reference with Gaussian instead of constant blending), pre/post-processing
    (MONAI's sliding_window_inference, constant, on our model-grid image and restored our way),
    stitching (our stitcher against that: the same arithmetic) and what `--blend gaussian` changes
    in ours."""
    import torch
    from monai.inferers import sliding_window_inference

    from ceds_deploy.inference import SegmentOptions
    from ceds_deploy.inference.scheduler import sliding_window_predict
    from ceds_deploy.inference.segment import window_plan_for
    from ceds_deploy.io import read_scan
    from ceds_deploy.transforms.preprocess import prepare_scan
    from ceds_deploy.transforms.restore import restore_prediction

    gaussian_reference = reference_way(path, net, spec, out, blend="gaussian")["mask"] > 0
    image, plan = prepare_scan(read_scan(path, dtype=None), spec)
    with torch.inference_mode():
        logits = sliding_window_inference(
            torch.from_numpy(image)[None, None], spec.roi_size, 4, lambda x: net(x)[0], overlap=0.25, mode="constant"
        )[0]
    monai_ours_grid = restore_prediction(logits, torch.zeros((1, *image.shape)), plan, True)
    windows = window_plan_for(image, spec, SegmentOptions())
    seg, conf = sliding_window_predict(image, windows, backend, batch_size=backend.max_batch_size, blend="constant")
    ours_constant = restore_prediction(seg, conf, plan, True)
    seg, conf = sliding_window_predict(image, windows, backend, batch_size=backend.max_batch_size, blend="gaussian")
    ours_gaussian = restore_prediction(seg, conf, plan).mask > 0
    ref_mask = reference["mask"] > 0
    return {
        "blending_in_reference": dice(ref_mask, gaussian_reference),
        "pre_post_processing": dice(ref_mask, monai_ours_grid.mask > 0),
        "stitching": dice(monai_ours_grid.mask > 0, ours_constant.mask > 0),
        "stitching_prob_max_abs_diff": float(np.abs(monai_ours_grid.probabilities - ours_constant.probabilities).max()),
        "gaussian_blending_in_ours": dice(ours_gaussian, ours_mask > 0),
    }


def save_atomically(path: Path, save) -> None:
    """`save(file object)` into a temp file beside `path`, then rename: no half-written cache."""
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        save(f)
    os.replace(tmp, path)


def truth_dice(work: Path, scan: Path, mask: np.ndarray) -> float:
    from ceds_deploy.io import read_scan

    truth = read_scan(work / "labels" / scan.name, dtype=None).array > 0
    return dice(mask > 0, truth)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a ceds checkpoint (.pt)")
    parser.add_argument("--cases", type=int, default=2)
    parser.add_argument("--size", default="full", choices=["small", "full"])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "ceds-bench")
    parser.add_argument("--precision", default=None, help="torch precision for ceds segment (default: its default)")
    parser.add_argument("--overlap", type=float, default=None, help="ceds segment overlap (default: its default)")
    parser.add_argument("--window", type=int, nargs=3, default=None, help="ceds segment inference window (lever)")
    parser.add_argument("--no-skip-air", action="store_true", help="compute air windows too (lever off)")
    parser.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"])
    parser.add_argument(
        "--original-network",
        action="store_true",
        help="run the torch network as trained, not its CPU form (network/cpu_form.py); its masks are "
        "compared with the cached default ones",
    )
    parser.add_argument(
        "--no-reference",
        action="store_true",
        help="time ceds segment only; agreement against the reference masks of an earlier run in --work",
    )
    parser.add_argument(
        "--explain",
        action="store_true",
        help="also split the disagreement with the reference "
        "into blending, pre/post-processing and stitching (untimed, about 2x the reference's time)",
    )
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/end_to_end.json"))
    args = parser.parse_args(argv)

    import torch

    from ceds_deploy.artifacts import read_spec
    from ceds_deploy.backends import create_backend
    from ceds_deploy.checkpoint import load_network
    from ceds_deploy.inference import SegmentOptions, segment_folder, segment_volume
    from ceds_deploy.io import read_scan
    from ceds_deploy.network import CedsInference

    scans = make_scans(args.work / "scans", args.cases, args.size, args.seed)
    spec = read_spec(args.model)
    artifact = args.model
    if args.backend == "onnxruntime":
        from ceds_deploy.export.onnx_export import export_checkpoint

        artifact = args.work / "model.onnx"
        export_checkpoint(args.model, artifact, validate=False)
    lever = {
        "overlap": args.overlap,
        "window": tuple(args.window) if args.window else None,
        "skip_air": not args.no_skip_air,
    }
    lever = {k: v for k, v in lever.items() if v is not None}
    lever_used = args.overlap is not None or args.window is not None or args.no_skip_air or args.original_network

    def make_backend():
        options = {}
        if args.backend == "torch":
            options = {"precision": args.precision, "cpu_form": not args.original_network}
        return create_backend(args.backend, artifact, spec, **options)

    net, _ = load_network(args.model)
    wrapper = CedsInference(net).eval()
    rows = []
    for path in scans:
        source = read_scan(path)
        ref_out = args.work / "reference"  # the defaults way's outputs (explain_agreement writes there too)
        reference, reference_seconds = reference_or_cached(path, wrapper, spec, args.work, False, args.no_reference)
        aware, aware_seconds = reference_or_cached(path, wrapper, spec, args.work, True, args.no_reference)

        ours_out = args.work / "ours"
        single = args.work / "single" / path.name
        single.parent.mkdir(parents=True, exist_ok=True)
        single.unlink(missing_ok=True)
        single.symlink_to(path)
        # Timed: what `ceds segment` writes by default (mask + confidence map), one scan a run.
        options = SegmentOptions(overwrite=True, **lever)
        backend = make_backend()
        with backend:
            start = time.perf_counter()
            run = segment_folder(single, ours_out, backend, options)
            ours_seconds = time.perf_counter() - start
            # Untimed: the tumour probability for the agreement check, through the same code.
            probability = segment_volume(source, backend, replace(options, save_probabilities=True)).probabilities
        row = next(r for r in run.rows if r.status == "ok")
        case = row.case
        mask = read_scan(ours_out / f"{case}.nii.gz", dtype=None).array
        # Each lever's accuracy cost: agreement with ceds segment's own defaults (torch fp32).
        default_mask = args.work / "default_cache" / f"{path.name}.npy"
        if not lever_used and args.backend == "torch" and args.precision in (None, "fp32"):
            save_atomically(default_mask, lambda f: np.save(f, mask))
        dice_vs_default = dice(mask > 0, np.load(default_mask) > 0) if default_mask.exists() else float("nan")
        explained = {}
        if args.explain:
            with make_backend() as explain_backend:
                explained = {
                    f"explain_{k}": v
                    for k, v in explain_agreement(
                        path, wrapper, explain_backend, spec, ref_out, reference, mask
                    ).items()
                }
        rows.append(
            {
                **explained,
                "case": case,
                "shape": "x".join(map(str, source.shape)),
                "spacing": "x".join(f"{s:.2f}" for s in source.spacing),
                "reference_s": reference_seconds,
                "speed_aware_s": aware_seconds,
                "ceds_segment_s": ours_seconds,
                "speedup": reference_seconds / ours_seconds,
                "speedup_vs_speed_aware": aware_seconds / ours_seconds,
                "mask_dice": dice(mask > 0, reference["mask"] > 0),
                "mask_dice_vs_speed_aware": dice(mask > 0, aware["mask"] > 0),
                "dice_vs_ours_default": dice_vs_default,
                # In the body: outside the body crop Invertd pads zero logits (probability 0.5 in the air).
                "prob_max_abs_diff": float(
                    np.abs(probability - reference["probability"].astype(np.float32))[
                        source.array > spec.crop_threshold_hu
                    ].max()
                ),
                "dice_vs_truth_ours": truth_dice(args.work, path, mask),
                "dice_vs_truth_reference": truth_dice(args.work, path, reference["mask"]),
                "tumour_voxels": int(mask.sum()),
                "windows_ours": row.windows,
                **{f"ref_{k}_s": v for k, v in reference["times"].items()},
                **{f"aware_{k}_s": v for k, v in aware["times"].items()},
                **{f"ours_{k}_s": v for k, v in row.seconds.items()},
                "backend": backend.description,
            }
        )
    total_ref = sum(r["reference_s"] for r in rows)
    total_aware = sum(r["speed_aware_s"] for r in rows)
    total_ours = sum(r["ceds_segment_s"] for r in rows)
    # The whole folder in one run: reading, the network and writing overlap across scans.
    with make_backend() as backend:
        start = time.perf_counter()
        segment_folder(args.work / "scans", args.work / "ours_folder", backend, SegmentOptions(overwrite=True, **lever))
        folder_seconds = time.perf_counter() - start
    summary = {
        "reference_s": total_ref,
        "ceds_segment_s": total_ours,
        "speedup": total_ref / total_ours,
        "ceds_segment_folder_s": folder_seconds,
        "speedup_folder": total_ref / folder_seconds,
        "speed_aware_s": total_aware,
        "speedup_vs_speed_aware": total_aware / total_ours,
        "speedup_folder_vs_speed_aware": total_aware / folder_seconds,
        "min_mask_dice_vs_speed_aware": min(r["mask_dice_vs_speed_aware"] for r in rows),
        "lever": {k: str(v) for k, v in lever.items()},
        "backend": args.backend,
        "mean_mask_dice": float(np.mean([r["mask_dice"] for r in rows])),
        "mean_dice_vs_ours_default": float(np.mean([r["dice_vs_ours_default"] for r in rows])),
        "mean_dice_vs_truth_ours": float(np.mean([r["dice_vs_truth_ours"] for r in rows])),
        "mean_dice_vs_truth_reference": float(np.mean([r["dice_vs_truth_reference"] for r in rows])),
        "min_mask_dice": min(r["mask_dice"] for r in rows),
        "peak_rss_gb": peak_rss_gb(),
        "torch_threads": torch.get_num_threads(),
    }
    print_table(
        f"ceds segment vs reference ({spec.width=}, roi {spec.roi_size}, spacing {spec.target_spacing})",
        rows,
        [
            "case",
            "shape",
            "spacing",
            "reference_s",
            "speed_aware_s",
            "ceds_segment_s",
            "speedup",
            "speedup_vs_speed_aware",
            "mask_dice",
            "mask_dice_vs_speed_aware",
            "prob_max_abs_diff",
            "dice_vs_ours_default",
            "dice_vs_truth_ours",
            "dice_vs_truth_reference",
            "windows_ours",
            "ref_infer_s",
            "ours_infer_s",
        ],
    )
    print_table(
        "stages (seconds, summed over cases)",
        [
            {
                "way": way,
                **{
                    s: sum(r[f"{prefix}_{s}_s"] for r in rows)
                    for s in ("read", "preprocess", "infer", "restore", "write")
                },
            }
            for way, prefix in (("reference", "ref"), ("speed-aware MONAI", "aware"), ("ceds segment", "ours"))
        ],
    )
    if args.explain:
        print_table(
            "where the masks differ (Dice between two ways that differ in one convention)",
            rows,
            ["case", "mask_dice"] + [k for k in rows[0] if k.startswith("explain_")],
        )
        summary.update({k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k.startswith("explain_")})
    print(summary)
    write_json(
        args.json,
        {
            "machine": machine(),
            "args": {k: str(v) for k, v in vars(args).items()},
            "spec": spec.to_dict(),
            "rows": rows,
            "summary": summary,
        },
    )
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
