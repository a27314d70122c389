"""Benchmark of correctness: WebDataset sets from the wild, as ``clvr shard index`` and the
loader handle them.

Each layout of :mod:`clvr.shards.wild` is written with ``webdataset.ShardWriter``, indexed with
the real command (``clvr shard index SRC``, a subprocess, its exit code and summary kept), and
read for one epoch with the evaluation loader. For each layout the table says whether every
sample was read exactly once, whether each label and each image (a uniform colour per key) is
the writer's, how long indexing took, and what the command said beyond the count.

Usage: python bench/foreign_layouts.py [--out bench/out/foreign_layouts]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from clvr.shards.wild import LAYOUTS, write_layout

PLAIN = {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}


def read_once(src: Path, written) -> tuple[str, str, str]:
    """(read, labels, images) verdicts of one epoch of ``src``."""
    from clvr.methods.features import eval_loader
    manifest = json.loads((src / "manifest.json").read_text())
    keys = []
    for s in manifest["shards"]:
        keys += json.loads((src / s["samples_file"]).read_text())["keys"]
    names = (manifest.get("classes") or {}).get("names")
    loader = eval_loader(str(src), batch_size=8, size=8, device="cpu", normalize=PLAIN)
    seen = {}
    for b in loader:
        for gi, y, ok, view in zip(b.index.tolist(), b.label.tolist(), b.valid.tolist(), b.views[0]):
            if ok:
                seen.setdefault(gi, []).append((y, (view.float().mean((1, 2)) * 255).numpy()))
    loader.close()
    once = sorted(seen) == list(range(len(written))) and all(len(v) == 1 for v in seen.values())
    wrong_labels = wrong_images = 0
    for gi, [(y, colour)] in ((g, v[:1]) for g, v in seen.items()):
        want = written.labels.get(keys[gi])
        ok = (y == -1) if want is None else (y >= 0 and names[y] == str(want))
        wrong_labels += not ok
        wrong_images += np.abs(colour - np.array(written.colours[keys[gi]])).max() >= 4
    unlabelled = sum(1 for k in written.keys if written.labels[k] is None)
    read = f"{len(seen)}/{len(written)} once" if once else f"{len(seen)}/{len(written)}, repeats or gaps"
    labels = "writer's" if not wrong_labels else f"{wrong_labels} wrong"
    if not wrong_labels and unlabelled and unlabelled < len(written):
        labels += f" ({unlabelled} unlabelled: -1)"
    elif not wrong_labels and unlabelled == len(written):
        labels = "none (the set has none)"
    images = "writer's" if not wrong_images else f"{wrong_images} wrong"
    return read, labels, images


def other_checks(out: Path, clvr: list) -> list[tuple[str, str]]:
    """The issue's rows beyond one set's layout: classes across train and val, a skipped sample's
    epoch, an index.i64 served twice or out of range. (check, what happens now)"""
    import struct

    from clvr.methods.evaluate import compare_classes
    from clvr.pipeline import PipelineError, ViewLoader
    from clvr.pipeline.source import read_index, resolve
    from clvr.shards.wild import write
    rows = []
    sets = {}
    for name, ids in (("train", (3, 17, 42)), ("val", (3, 17)), ("val-extra", (3, 17, 42, 50))):
        src = out / f"classes-{name}"
        write(src, [{"key": f"k{i}", "label": ids[i % len(ids)]} for i in range(12)])
        subprocess.run([*clvr, "shard", "index", str(src), "--no-progress"], check=True, capture_output=True)
        sets[name] = resolve(str(src))
    for name, ids in (("val", "3, 17"), ("val-extra", "3, 17, 42, 50")):
        found = compare_classes(sets["train"], sets[name], specs=("TRAIN", name.upper()))
        rows.append((f"train ids 3, 17, 42; {name} ids {ids}",
                     f"error: {found['error']}" if found["error"] else f"allowed, note: {found['note']}"))
    demo = out / "digits"
    subprocess.run([*clvr, "shard", "demo", "digits", str(demo), "--limit", "240", "--no-progress"],
                   check=True, capture_output=True)
    data = demo / "train"
    tars = sorted(data.glob("*.tar"))
    entry = read_index(str(tars[-1].with_suffix(".idx")))[-3]      # late in the stored order
    off, size = entry.components["png"]
    with open(tars[-1], "r+b") as f:
        f.seek(off + 8)
        f.write(b"\0" * (size - 8))
    for shuffle in (False, True):
        ld = ViewLoader(data, "two_view", recipe="simclr-cifar", batch_size=16, on_error="skip", shuffle=shuffle,
                        device="cpu", num_threads=1, seed=1, last_batch="pad")
        total = ld.num_samples
        served = [i for b in ld for i, ok in zip(b.index.tolist(), b.valid.tolist()) if ok]
        ld.close()
        rows.append((f"on_error=skip, one corrupt image in {total} samples (batch 16, "
                     f"{'shuffled' if shuffle else 'stored order'})",
                     f"skipped {[s['key'] for s in ld.skipped]}; epoch served {len(served)} samples, "
                     f"{len(served) - len(set(served))} twice, {total - 1 - len(set(served))} of the others "
                     "missed"))
    idx = read_index(str(tars[0].with_suffix(".idx")))
    for value, what in ((int(idx[2].key), "a duplicate"), (10_000, "out of range")):
        copy = out / f"index-{value}"
        shutil.copytree(data, copy)
        off, _ = idx[5].components["index.i64"]
        with open(copy / tars[0].name, "r+b") as f:
            f.seek(off)
            f.write(struct.pack("<q", value))
        try:
            ld = ViewLoader(copy, "two_view", recipe="simclr-cifar", batch_size=16, shuffle=False, device="cpu")
            for _ in ld:
                pass
            rows.append((f"index.i64 rewritten to {what}", "read without a word"))
        except PipelineError as e:
            rows.append((f"index.i64 rewritten to {what}", f"error: {str(e).replace(str(copy.resolve()) + '/', '')}"))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench/out/foreign_layouts"))
    args = ap.parse_args(argv)
    shutil.rmtree(args.out, ignore_errors=True)
    clvr = [sys.executable, "-m", "clvr"]
    rows = []
    for n, (name, (example, _)) in enumerate(LAYOUTS.items()):
        src = args.out / f"layout{n:02d}"
        written = write_layout(name, src)
        t0 = time.perf_counter()
        r = subprocess.run([*clvr, "shard", "index", str(src), "--no-progress"], capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        said = "; ".join(line.strip() for line in r.stdout.splitlines()[1:]) or "-"
        if r.returncode:
            rows.append((name, example, f"exit {r.returncode}", "-", "-", "-", f"{seconds:.1f}",
                         r.stderr.strip().splitlines()[-1][:120]))
            continue
        try:
            read, labels, images = read_once(src, written)
        except Exception as e:  # noqa: BLE001 - a failure is a row of the table
            read, labels, images = f"{type(e).__name__}: {str(e)[:80]}", "-", "-"
        rows.append((name, example, "exit 0", read, labels, images, f"{seconds:.1f}", said))
    head = ("layout", "key example", "clvr shard index", "one epoch", "labels", "images", "index s", "said")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(str(c).replace("|", "/") for c in row) + " |")
    bad = [r for r in rows if r[2] != "exit 0" or "once" not in r[3] or "wrong" in r[4] + r[5]]
    print(f"\n{len(rows) - len(bad)} of {len(rows)} layouts indexed and read once with the writer's labels and images")
    print("\n| check | now |\n|---|---|")
    for check, now in other_checks(args.out, clvr):
        print(f"| {check} | {now.replace('|', '/')} |")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
