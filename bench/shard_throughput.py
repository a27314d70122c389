"""Benchmark: how fast ``clvr shard images`` writes shards, against the ceiling of plain tar copying.

Builds a folder of real-photo JPEGs (random crops of scikit-image's sample photographs,
about 500x375, quality 90), then in one run measures:

* the ceiling: Python's ``tarfile`` adding the same files to one tar (no checks, no index);
* ``clvr shard images --workers 2`` with ``--no-verify`` (headers checked) and with
  verification (every image decoded), no re-encoding;
* peak memory (the whole process tree, sampled) at 1x and 4x the data: sharding streams, so it
  should stay flat.

Usage: python bench/shard_throughput.py [--images 3000] [--workers 2] [--out bench/out]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image


def make_photos(folder: Path, n: int, seed: int = 0) -> int:
    """n JPEGs cut from scikit-image's sample photographs; returns their total bytes."""
    from skimage import data

    names = ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
             "retina", "colorwheel", "cat", "motorcycle_left"]
    photos = []
    for name in names:
        try:
            arr = getattr(data, name)()
        except Exception:  # a photo missing from this scikit-image version
            continue
        if arr.ndim == 3 and arr.shape[2] == 3:
            photos.append(Image.fromarray(arr))
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    total = 0
    for i in range(n):
        im = photos[i % len(photos)]
        w, h = im.size
        cw, ch = int(w * rng.uniform(0.5, 1.0)), int(h * rng.uniform(0.5, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = im.crop((x, y, x + cw, y + ch)).resize((500, 375), Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        buf = io.BytesIO()
        crop.save(buf, "JPEG", quality=90)
        (folder / f"img{i:06d}.jpg").write_bytes(buf.getvalue())
        total += len(buf.getvalue())
    return total


def tar_ceiling(folder: Path, dest: Path) -> float:
    files = sorted(folder.iterdir())
    t0 = time.perf_counter()
    with tarfile.open(dest, "w") as tf:
        for f in files:
            tf.add(f, arcname=f.name)
    return time.perf_counter() - t0


class PeakRSS:
    """Samples the RSS of a process and all its descendants every 20 ms."""

    def __init__(self, pid: int):
        self.proc = psutil.Process(pid)
        self.peak_tree = 0
        self.peak_main = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                main = self.proc.memory_info().rss
                tree = main + sum(c.memory_info().rss for c in self.proc.children(recursive=True))
                self.peak_main = max(self.peak_main, main)
                self.peak_tree = max(self.peak_tree, tree)
            except psutil.Error:
                pass
            time.sleep(0.02)

    def stop(self):
        self._stop.set()
        self._t.join()


def clvr_shard(src: Path, out: Path, workers: int, verify: bool, memory: bool = False) -> tuple[float, int, int]:
    """Seconds for one ``clvr shard images`` command; with ``memory``, also its peak RSS (a run of
    its own: the sampling thread takes CPU time that would slow the timed runs)."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "clvr", "shard", "images", str(src), str(out), "--workers", str(workers),
           "--no-progress", "--shard-size", "1000"] + ([] if verify else ["--no-verify"])
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    mem = PeakRSS(p.pid) if memory else None
    _, err = p.communicate()
    dt = time.perf_counter() - t0
    if mem is not None:
        mem.stop()
    if p.returncode != 0:
        raise SystemExit(f"clvr shard failed:\n{err}")
    return dt, (mem.peak_main if mem else 0), (mem.peak_tree if mem else 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each condition; the best counts")
    ap.add_argument("--out", type=Path, default=Path("bench/out"))
    args = ap.parse_args()
    work = args.out / "shard_throughput"
    shutil.rmtree(work, ignore_errors=True)
    src1, src4 = work / "photos1x", work / "photos4x"
    print(f"making {args.images} + {4 * args.images} JPEGs from scikit-image's sample photos ...", flush=True)
    bytes1 = make_photos(src1, args.images, seed=0)
    bytes4 = make_photos(src4, 4 * args.images, seed=1)
    n = args.images
    mb = bytes1 / 1e6

    # Interleaved, best of --repeats each: the page cache and disk write-back affect every
    # condition alike.
    tar_runs, runs = [], {False: [], True: []}
    for _ in range(args.repeats):
        tar_runs.append(tar_ceiling(src1, work / "ceiling.tar"))
        for verify in (False, True):
            runs[verify].append(clvr_shard(src1, work / "shards", args.workers, verify))
    tar_s = min(tar_runs)
    rows = [("tarfile copy (ceiling)", tar_s, None, None)]
    for verify in (False, True):
        best = min(r[0] for r in runs[verify])
        _, main, tree = clvr_shard(src1, work / "shards", args.workers, verify, memory=True)
        rows.append((f"clvr shard --workers {args.workers} " + ("--verify" if verify else "--no-verify"),
                     best, main, tree))
    _, main4, tree4 = clvr_shard(src4, work / "shards4x", args.workers, True, memory=True)

    print(f"\n{n} JPEGs, {mb:.1f} MB, 500x375, {os.cpu_count()} cores\n")
    print("| condition | samples/s | MB/s | vs ceiling | peak RSS main / tree (MB) |")
    print("|---|---:|---:|---:|---:|")
    for name, dt, m, t in rows:
        mem = "" if m is None else f"{m / 1e6:.0f} / {t / 1e6:.0f}"
        print(f"| {name} | {n / dt:.0f} | {mb / dt:.1f} | {tar_s / dt:.2f} | {mem} |")
    print(f"\npeak RSS with verification, 1x ({n} images) vs 4x ({4 * n} images, {bytes4 / 1e6:.0f} MB):")
    print("| data | peak RSS main (MB) | peak RSS tree (MB) |")
    print("|---|---:|---:|")
    print(f"| 1x | {rows[2][2] / 1e6:.0f} | {rows[2][3] / 1e6:.0f} |")
    print(f"| 4x | {main4 / 1e6:.0f} | {tree4 / 1e6:.0f} |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
