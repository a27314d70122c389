#!/usr/bin/env bash
# The GPU checks of clvr.methods, as one script for a lent GPU machine (no DALI there: only the
# methods are checked). Makes `clvr` importable from this checkout without installing it, then:
#   1. every method on the GPU against the CPU (bench/methods_on_device.py);
#   2. the bookkeeping share of a ResNet-18 step at batch 256, 224 px (bench/method_bookkeeping.py);
#   3. SimCLR ResNet-50 training images/s at 224 px in bf16, views by the kornia path (bench/gpu_train_throughput.py).
# Usage: OUT=results bash bench/device_check.sh
set -euo pipefail
OUT=${OUT:-device-results}
mkdir -p "$OUT"
pkg=$(mktemp -d)
mkdir -p "$pkg/clvr"
cp clvr/*.py "$pkg/clvr/"
for d in methods pipeline shards; do ln -s "$PWD/$d" "$pkg/clvr/$d"; done
export PYTHONPATH="$pkg${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-python3}
nvidia-smi -L | tee "$OUT/gpu.txt"
$PY bench/methods_on_device.py --device cuda | tee "$OUT/methods_on_device.md"
$PY bench/method_bookkeeping.py --device cuda --steps 10 --repeats 30 --json "$OUT/bookkeeping_cuda.json" \
    2> "$OUT/bookkeeping_cuda.log" | tee "$OUT/bookkeeping_cuda.md"
# 3. training throughput: SimCLR ResNet-50 at 224 px, bf16, torch + kornia views on the GPU
$PY bench/gpu_train_throughput.py --device cuda --batch 256 --steps 20 --json "$OUT/gpu_train_throughput.json" \
    | tee "$OUT/gpu_train_throughput.md"
