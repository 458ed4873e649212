"""Cold runs for `gpu_check.py`: a command in a fresh process, as a user runs it, timed from the
launch to its exit and to its first mask on disk (the oldest finished output file), with the
per-stage seconds of `ceds segment`'s report.json when there is one."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from ceds_deploy.inference.outputs import CONFIDENCE_SUFFIX, PROBABILITIES_SUFFIX

ROOT = Path(__file__).resolve().parents[1]
OUTPUTS_OF_A_CASE_BEFORE_ITS_MASK = (CONFIDENCE_SUFFIX, PROBABILITIES_SUFFIX)


def first_output_after(folder: Path, start: float) -> float | None:
    """Seconds from `start` (a time.time()) to the first mask file written in `folder`."""
    times = [
        p.stat().st_mtime
        for p in folder.glob("*.nii.gz")
        if not p.name.endswith(OUTPUTS_OF_A_CASE_BEFORE_ITS_MASK) and not p.name.startswith(".")
    ]
    return min(times) - start if times else None


def report_summary(folder: Path) -> dict:
    """The run's own record: its `run` block and per-case `*_s` seconds (and any time to first mask)."""
    path = folder / "report.json"
    if not path.is_file():
        return {"report": "no report.json"}
    report = json.loads(path.read_text(encoding="utf-8"))
    rows = [
        {k: v for k, v in row.items() if k in ("case", "status", "windows", "error") or k.endswith("_s")}
        for row in report.get("rows", report.get("cases", []))
    ]
    return {"run": report.get("run"), "rows": rows}


def run_cold(command: list[str], out: Path, timeout: float, env: dict | None = None) -> dict:
    """Run `command` in a fresh process writing into `out`; wall seconds, time to first mask, exit code."""
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    t = time.perf_counter()
    try:
        proc = subprocess.run(
            command,
            capture_output=True,
            encoding="utf-8",
            timeout=timeout,
            cwd=out.parent,  # not the source tree: `-m ceds_deploy...` runs the installed package
            env={**os.environ, **(env or {})},
        )
        code, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as err:
        code, stdout, stderr = "timeout", str(err.stdout or ""), str(err.stderr or "")
    wall = time.perf_counter() - t
    result = {
        "started_at": started,
        "returncode": code,
        "wall_s": wall,
        "first_mask_s": first_output_after(out, started) if out.is_dir() else None,
        "stdout_tail": stdout[-1500:],
        "stderr_tail": stderr[-1500:],
    }
    print(f"  {' '.join(map(str, command[:4]))} ...: rc {code}, {wall:.1f} s", flush=True)
    return result


def cold_cli(
    scans: Path, checkpoint: Path, out: Path, device: str, repeats: int, timeout: float, extra: list[str] | None = None
) -> dict:
    """`ceds segment scans out --model checkpoint --device DEVICE` cold, `repeats` times (fresh output
    each); with `extra` options, one more run with them (recorded apart, as `extra`)."""
    runs = []
    for n, options in enumerate([[]] * repeats + ([extra] if extra else [])):
        target = out / f"cli-{n}"
        command = [sys.executable, "-m", "ceds_deploy.cli.app", "segment", str(scans), str(target)]
        result = run_cold([*command, "--model", str(checkpoint), "--device", device, *options], target, timeout)
        result.update(report_summary(target), options=options)
        runs.append(result)
    plain = runs[:repeats]
    walls = [r["wall_s"] for r in plain if r["returncode"] == 0]
    result = {"runs": plain, "wall_s": walls, "first_mask_s": [r["first_mask_s"] for r in plain]}
    if extra:
        result["extra"] = runs[-1]
    return result


def cold_monai(scans: Path, checkpoint: Path, out: Path, device: str, repeats: int, timeout: float) -> dict:
    """benchmarks/monai_gpu_reference.py cold, `repeats` times; each process segments the folder twice
    (the second pass is its warm time)."""
    runs = []
    for n in range(repeats):
        target = out / f"monai-{n}"
        times = out / f"monai-{n}.json"
        script = ROOT / "benchmarks" / "monai_gpu_reference.py"
        command = [sys.executable, str(script), str(scans), str(target), "--model", str(checkpoint)]
        command += ["--device", device, "--passes", "2", "--json", str(times)]
        result = run_cold(command, target, timeout)
        if times.is_file():
            inner = json.loads(times.read_text(encoding="utf-8"))
            result["script"] = inner
            result["cold_pass_s"] = inner["passes"][0]["wall_s"]
            result["warm_pass_s"] = inner["passes"][1]["wall_s"] if len(inner["passes"]) > 1 else None
            first_rows = inner["passes"][0]["rows"]
            # the second pass rewrites the files: the first mask's time comes from the script's clock
            result["first_mask_s"] = first_rows[0]["mask_at"] - result["started_at"] if first_rows else None
        runs.append(result)
    return {
        "runs": runs,
        # the cold process's wall less its second (warm) pass: what one cold run of the folder costs
        "wall_one_pass_s": [r["wall_s"] - (r.get("warm_pass_s") or 0.0) for r in runs if r["returncode"] == 0],
        "warm_pass_s": [r.get("warm_pass_s") for r in runs],
        "first_mask_s": [r["first_mask_s"] for r in runs],
    }


def _wait_for(path: Path, deadline: float, proc: subprocess.Popen) -> float | None:
    """perf_counter() when `path` exists (outputs appear by an atomic rename); None if the process
    ended or the deadline passed first."""
    while time.perf_counter() < deadline and proc.poll() is None:
        if path.exists():
            return time.perf_counter()
        time.sleep(0.005)
    return None


def watched(scans: Path, checkpoint: Path, out: Path, device: str, timeout: float) -> dict:
    """`ceds segment INBOX OUT --watch` in a fresh process, the first scan already in INBOX; once its
    mask is written, each other scan is dropped (copied under a hidden name, then renamed, as copiers
    do) and timed from the rename to its mask. Then Ctrl-C (SIGINT) and the exit code."""
    inbox, target = out / "watch-inbox", out / "watch-out"
    inbox.mkdir(parents=True, exist_ok=True)
    first, *dropped = sorted(scans.glob("*.nii.gz"))
    shutil.copy(first, inbox / first.name)
    command = [sys.executable, "-m", "ceds_deploy.cli.app", "segment", str(inbox), str(target)]
    command += ["--model", str(checkpoint), "--device", device, "--watch", "--watch-interval", "0.2"]
    command += ["--watch-settle", "0.1"]
    log = out / "watch.log"
    started = time.perf_counter()
    with log.open("w", encoding="utf-8") as sink:
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, cwd=out)
        deadline = started + timeout
        ready = _wait_for(target / first.name, deadline, proc)
        result: dict = {"first_mask_s": None if ready is None else ready - started, "dropped": {}}
        for scan in dropped if ready is not None else []:
            temp = inbox / f".{scan.name}.part"
            shutil.copy(scan, temp)
            dropped_at = time.perf_counter()
            os.replace(temp, inbox / scan.name)
            done = _wait_for(target / scan.name, deadline, proc)
            result["dropped"][scan.name] = None if done is None else done - dropped_at
        proc.send_signal(signal.SIGINT)
        try:
            result["returncode"] = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            result["returncode"] = "killed"
    result["log_tail"] = log.read_text(encoding="utf-8", errors="replace")[-1500:]
    result.update(report_summary(target))
    print(f"  watch: first mask {result['first_mask_s']}, dropped {result['dropped']}", flush=True)
    return result
