#!/usr/bin/env bash
# The wheel bundle that lets benchmarks/gpu_check.py run on the lent GPU machine (no internet there;
# its image has torch, numpy, scipy, onnx, onnxruntime, typer, rich, matplotlib, pyyaml but not
# monai, nibabel, SimpleITK or isal). Builds .whl/ in the repository root (ignored by git through
# .git/info/exclude), for CPython 3.12 on manylinux x86_64: this project's wheel plus those four,
# without their dependencies (the image has them). The bundle travels with `carry: [".whl"]` and
# counts towards the 64 MiB a call may carry; this script prints its size.
#
#   bash benchmarks/gpu_wheels.sh
#
# Then, one device call (about 6 minutes on an H200 with every default part; timeout_s 600):
#   run(carry=[".whl"], timeout_s=600, command=
#     "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
#      && export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
#      && python3 benchmarks/gpu_check.py --out $OUT 2>&1 | tee $OUT/gpu_check.log")
# (one line in the call). Copy the returned gpu_check.json to benchmarks/results/ and quote it.
# Mixed precision's Dice against fp32 (issue 15) is the optional part train_dice: CEDS trained on the
# phantom benchmark in fp32 and bf16 side by side, at most --train-dice-timeout-s (240) more; and
# case_order (the largest prepared scan first against the readers' order, about 30 s); e.g.
#   --parts phantoms cold_cli cold_monai warm watch tests case_order train_dice
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DEST=.whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> "$(git rev-parse --git-path info/exclude)"
rm -rf "$DEST" && mkdir -p "$DEST"
"$PY" -m pip wheel -q --no-deps -w "$DEST" .
# Versions as pinned in pyproject's ranges; --platform lists the manylinux tags pip must match exactly.
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" \
    "monai>=1.4,<2" "nibabel>=5,<6" "SimpleITK>=2.3,<3" "isal>=1.6,<2"
ls -l "$DEST"
du -sh "$DEST"
