"""int8 quantisation of the ONNX model on the CPU: does it pay?

Exports the checkpoint's network to ONNX, quantises it statically with ONNX Runtime (weights int8
per channel, activations uint8, min-max calibration on phantom windows prepared by the
`ceds segment` pre-processing), in both of ONNX Runtime's formats (QDQ and QOperator), and times
each against the fp32 model on held-out phantom windows: seconds per window, and the accuracy
cost (max |diff| of the tumour probability and of the confidence, share of voxels whose argmax
agrees). Prints a table, writes JSON.

    python benchmarks/int8_quantization.py --model RUN/checkpoints/best_teacher.pt
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import machine, print_table, write_json  # noqa: E402


def phantom_windows(spec, count: int, seed: int, size: str) -> np.ndarray:
    """`count` windows of the model's ROI, cut at random from pre-processed phantoms, each holding
    some body (what `ceds segment` computes after skipping air windows)."""
    from ceds_deploy.synthetic import make_case
    from ceds_deploy.transforms.preprocess import prepare_scan

    rng = np.random.default_rng(seed)
    roi = spec.roi_size
    windows, case = [], 0
    while len(windows) < count:
        image, _ = make_case(3000 + case, seed=seed, size=size)
        array, _ = prepare_scan(image, spec)
        for _ in range(4):
            start = [int(rng.integers(0, n - r + 1)) for n, r in zip(array.shape, roi)]
            window = array[tuple(slice(s, s + r) for s, r in zip(start, roi))]
            if (window > 0).mean() > 0.2:
                windows.append(window)
        case += 1
    return np.stack(windows[:count])[:, None].astype(np.float32)


def quantize(fp32: Path, out: Path, calibration: np.ndarray, fmt: str) -> float:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Windows(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"image": calibration[i : i + 2]} for i in range(0, len(calibration), 2)])

        def get_next(self):
            return next(self.batches, None)

    start = time.perf_counter()
    with contextlib.chdir(out.parent):  # ONNX Runtime leaves temporary files in the working folder
        quantize_static(
            str(fp32),
            str(out),
            Windows(),
            quant_format=getattr(QuantFormat, fmt),
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    return time.perf_counter() - start


def run_model(path: Path, windows: np.ndarray, batch: int, threads: int) -> tuple[float, np.ndarray, np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    session.run(None, {"image": windows[:batch]})  # warm-up
    start = time.perf_counter()
    outputs = [session.run(None, {"image": windows[i : i + batch]}) for i in range(0, len(windows), batch)]
    seconds = (time.perf_counter() - start) / len(windows)
    return seconds, np.concatenate([o[0] for o in outputs]), np.concatenate([o[1] for o in outputs])


def tumour_probability(seg: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(seg[:, 1] - seg[:, 0])))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a ceds checkpoint (.pt)")
    parser.add_argument("--calibration-windows", type=int, default=16)
    parser.add_argument("--test-windows", type=int, default=8)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", default="small", choices=["small", "full"], help="phantom size to cut windows from")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/int8_quantization.json"))
    args = parser.parse_args(argv)

    from ceds_deploy.artifacts import read_spec
    from ceds_deploy.backends.onnxruntime_backend import physical_cores
    from ceds_deploy.export.onnx_export import export_checkpoint

    spec = read_spec(args.model)
    threads = physical_cores()
    work = Path(tempfile.mkdtemp(prefix="ceds-int8-"))
    fp32 = work / "model.onnx"
    export_checkpoint(args.model, fp32, validate=False)
    windows = phantom_windows(spec, args.calibration_windows + args.test_windows, args.seed, args.size)
    calibration, test = windows[: args.calibration_windows], windows[args.calibration_windows :]
    base_seconds, base_seg, base_conf = run_model(fp32, test, args.batch, threads)
    base_p = tumour_probability(base_seg)
    rows = [
        {
            "model": "fp32",
            "s_per_window": base_seconds,
            "speedup": 1.0,
            "max_abs_prob_diff": 0.0,
            "max_abs_conf_diff": 0.0,
            "argmax_agreement": 1.0,
            "quantize_s": 0.0,
        }
    ]
    for fmt in ("QDQ", "QOperator"):
        path = work / f"model_int8_{fmt}.onnx"
        quantize_seconds = quantize(fp32, path, calibration, fmt)
        seconds, seg, conf = run_model(path, test, args.batch, threads)
        rows.append(
            {
                "model": f"int8 {fmt}",
                "s_per_window": seconds,
                "speedup": base_seconds / seconds,
                "max_abs_prob_diff": float(np.abs(tumour_probability(seg) - base_p).max()),
                "max_abs_conf_diff": float(np.abs(conf - base_conf).max()),
                "argmax_agreement": float((seg.argmax(1) == base_seg.argmax(1)).mean()),
                "quantize_s": quantize_seconds,
            }
        )
    print_table(
        f"int8 vs fp32, ONNX Runtime CPU ({threads} threads, width {spec.width}, window {spec.roi_size}, "
        f"batch {args.batch}, {len(test)} held-out phantom windows)",
        rows,
    )
    write_json(
        args.json,
        {
            "machine": machine(),
            "args": {k: str(v) for k, v in vars(args).items()},
            "spec": spec.to_dict(),
            "rows": rows,
        },
    )
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
