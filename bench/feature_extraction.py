"""Benchmark: feature-extraction images/s of ``clvr eval``, through its deterministic evaluation view.

``clvr eval`` extracts the features of every sample of a split once, with
``extract_features(encoder, eval_loader(...))`` (clvr/methods/features.py): the loader reads the
shards in order, decodes each image and makes the eval view (resize + centre crop, normalised, no
augmentation; the last batch padded), and the encoder runs in eval mode under ``torch.no_grad()``.
For each case (data set x view size x backbone) three throughputs are measured in one run:

* (a) pipeline: ``for batch in eval_loader(...)`` over whole epochs (decode + eval view), no
  network. Small epochs are repeated until about ``--min-seconds`` have passed.
* (b) network: the backbone (``backbone(name, stem=...)``, random weights, eval mode,
  ``torch.no_grad()``) on synthetic tensors already in memory (``torch.randn`` of the loader's
  own view shape and dtype, on ``--device``), as many batches as one epoch has; no loading.
* (c) extraction: ``extract_features(backbone, eval_loader(...))`` over one epoch, i.e. what
  ``clvr eval`` does per split (the DALI threads decode the next batches while the network
  runs, on the same cores).

images/s counts the samples of the epoch (padding excluded) over the wall time of the loop. Each
(a) and (c) gets a fresh loader, built before its clock starts and closed after it stops (as
``clvr eval`` does per split), so the loader's build is not timed but the filling of its prefetch
queue is, and no loader works in the background while (b) is timed. Before the repeats, one
untimed epoch of the loader and one untimed batch of the network warm up (DALI start-up, page
cache, the network's first call). The table gives the median of ``--repeats`` repeats (each
repeat runs (b), (a), (c) in turn, so slow spells of other work on the machine hit all three);
the notes under it give every repeat.

Reading the ratios:

* extraction / network: how close extraction gets to the network's own speed. 1.00 means the
  data costs nothing (it is made while the network runs); below 1, extraction waits for data or
  the pipeline's threads take CPU time from the network (on a CPU-only machine they share the
  cores). When the epoch is not a whole number of batches, the padded last batch is also run
  through the network, so the ratio cannot exceed epoch / (batches x batch size).
* extraction / pipeline: the share of the pipeline's own speed that extraction reaches; near
  1 when the data is the bottleneck, much lower when the network is (the usual case on a CPU).
  ``1 / (1/a + 1/b)`` is the speed of running the two one after the other with no overlap.

Cases (defaults):

* ``digits`` 32 px: the embedded digits demo (``clvr shard demo digits``, ``train`` split, made by
  ``digits_shards`` of bench/train_throughput.py), ResNet-18 with the CIFAR stem, the whole
  32x32 image (centre crop 1.0), batch 64, 256 samples;
* ``photos`` 224 px: JPEG shards of real photographs (about 500x375, cut from scikit-image's
  sample photos by bench/photos.py, sharded by ``make_data`` of bench/pipeline_throughput.py),
  ResNet-18 (batch 32, 128 samples) and ResNet-50 (batch 16, 64 samples) with the ImageNet stem,
  centre crop 0.875 (the ImageNet protocol);

each reading the first N samples of its shard set (``samples=range(N)``, a ``ViewLoader`` option
that ``eval_loader`` passes on). The shard sets are made once under ``--out`` (default
bench/out/, git-ignored) and reused. The batches are smaller than ``clvr eval``'s default (256) so
that every epoch has four batches to overlap and the default run takes a few minutes on 2 CPU
cores; ``--batch-size`` and ``--images`` set them for every case (e.g. ``--device cuda
--batch-size 256 --images 1024``; the digits hold 1,438 and the photo set ``--images`` samples).

Usage:
    python bench/feature_extraction.py                       # the three cases, a few minutes on 2 cores
    python bench/feature_extraction.py --quick               # smoke run: 64 digits, 1 repeat
    python bench/feature_extraction.py --device cuda --batch-size 256 --images 1024 --json out.json
    python bench/feature_extraction.py --cases digits-32-resnet18 --repeats 5
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"

# name: (data, view px, backbone, stem, centre crop (None: eval_view's default), batch, images)
CASES = {
    "digits-32-resnet18": ("digits", 32, "resnet18", "cifar", None, 64, 256),
    "photos-224-resnet18": ("photos", 224, "resnet18", "imagenet", 0.875, 32, 128),
    "photos-224-resnet50": ("photos", 224, "resnet50", "imagenet", 0.875, 16, 64),
}
QUICK = {"cases": ["digits-32-resnet18"], "images": 64, "batch": 32, "repeats": 1, "min_seconds": 0.5}
COLUMNS = ("data", "view px", "backbone", "batch", "pipeline img/s", "network img/s", "extraction img/s",
           "extraction / network", "extraction / pipeline")


def bench_module(name: str):
    """A sibling script of bench/ as a module (its functions are reused, not copied)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


# -- data ------------------------------------------------------------------------------------

def shard_set(data: str, out: Path, photos: int) -> Path:
    if data == "digits":
        return bench_module("train_throughput").digits_shards(out)
    return bench_module("pipeline_throughput").make_data(out / f"photos-{photos}", photos)


# -- timing ----------------------------------------------------------------------------------

def sync(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Case:
    """One case: its loader settings, its network, and the three timed conditions."""

    def __init__(self, name: str, data: Path, args, device):
        from clvr.methods.backbones import backbone
        self.name = name
        self.kind, self.size, self.arch, self.stem, self.crop, batch, images = CASES[name]
        self.batch = args.batch_size or batch
        self.images = args.images or images
        self.data, self.args, self.device = data, args, device
        self.model = backbone(self.arch, stem=self.stem).to(device).eval()
        self.build_s: list[float] = []
        self.epochs: list[int] = []

    def loader(self):
        from clvr.methods.features import eval_loader
        t0 = time.perf_counter()
        ld = eval_loader(str(self.data), batch_size=self.batch, size=self.size, center_crop=self.crop,
                         device=self.args.pipeline_device, num_threads=self.args.loader_threads or None,
                         torch_device=self.device, samples=range(self.images))
        self.build_s.append(time.perf_counter() - t0)
        return ld

    def warm_up(self) -> None:
        import torch
        ld = self.loader()
        try:
            for batch in ld:
                x = batch.views[0]
            sync(self.device)
        finally:
            ld.close()
        self.steps = len(ld)
        self.view_shape, self.view_dtype = tuple(x.shape), x.dtype
        self.x = torch.randn(self.view_shape, device=self.device).to(self.view_dtype)
        with torch.no_grad():
            self.model(self.x)
        sync(self.device)

    def pipeline(self) -> float:
        ld = self.loader()
        try:
            done, epochs, t0 = 0, 0, time.perf_counter()
            while epochs == 0 or time.perf_counter() - t0 < self.args.min_seconds:   # whole epochs
                for batch in ld:
                    done += int(batch.valid.sum())
                sync(self.device)
                epochs += 1
            self.epochs.append(epochs)
            return done / (time.perf_counter() - t0)
        finally:
            ld.close()

    def network(self) -> float:
        import torch
        with torch.no_grad():
            t0 = time.perf_counter()
            for _ in range(self.steps):
                self.model(self.x)
            sync(self.device)
            return self.steps * self.batch / (time.perf_counter() - t0)

    def extraction(self) -> float:
        from clvr.methods.features import extract_features
        ld = self.loader()
        try:
            t0 = time.perf_counter()
            features, _, _ = extract_features(self.model, ld)     # ends with .cpu(): synchronised
            dt = time.perf_counter() - t0
        finally:
            ld.close()
        if features.shape[0] != self.images:
            raise SystemExit(f"{self.name}: extracted {features.shape[0]} rows, expected {self.images}")
        return features.shape[0] / dt


def run_case(case: Case, repeats: int) -> dict:
    t0 = time.perf_counter()
    case.warm_up()
    runs = {"pipeline": [], "network": [], "extraction": []}
    for rep in range(repeats):
        for cond in ("network", "pipeline", "extraction"):
            runs[cond].append(getattr(case, cond)())
        print(f"  {case.name} repeat {rep + 1}/{repeats}: pipeline {runs['pipeline'][-1]:.1f}, "
              f"network {runs['network'][-1]:.1f}, extraction {runs['extraction'][-1]:.1f} images/s",
              file=sys.stderr, flush=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {"case": case.name, "data": case.kind, "view_px": case.size, "backbone": case.arch, "stem": case.stem,
            "center_crop": case.crop if case.crop is not None else (0.875 if case.size >= 128 else 1.0),
            "batch": case.batch, "images": case.images, "batches_per_epoch": case.steps,
            "view_shape": list(case.view_shape), "view_dtype": str(case.view_dtype),
            "pipeline_epochs": case.epochs,
            "pipeline_img_s": med["pipeline"], "network_img_s": med["network"],
            "extraction_img_s": med["extraction"],
            "extraction_over_network": med["extraction"] / med["network"],
            "extraction_over_pipeline": med["extraction"] / med["pipeline"],
            "serial_img_s": 1 / (1 / med["pipeline"] + 1 / med["network"]),
            "repeats": {f"{k}_img_s": v for k, v in runs.items()},
            "loader_build_s": statistics.median(case.build_s), "case_s": time.perf_counter() - t0}


def ratio(x: float) -> str:
    """Two decimals, or two significant digits below 0.1 (a network-bound extraction / pipeline)."""
    return f"{x:.2f}" if x >= 0.1 else f"{x:.2g}"


# -- main ------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help=f"smoke run: {QUICK['images']} digits at 32 px, batch {QUICK['batch']}, 1 repeat")
    ap.add_argument("--cases", nargs="+", choices=list(CASES), help="default: all (with --quick: the 32 px one)")
    ap.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto",
                    help="where the network runs (default auto: cuda if available, as clvr eval)")
    ap.add_argument("--pipeline-device", choices=("auto", "cpu", "gpu"),
                    help="where the loader decodes (default: cpu with a CPU network, else auto)")
    ap.add_argument("--batch-size", type=int, help="batch of every case (default: per case, see CASES)")
    ap.add_argument("--images", type=int, help="samples per epoch of every case (default: per case)")
    ap.add_argument("--repeats", type=int, help="timed repeats per case, median reported (default 3; --quick 1)")
    ap.add_argument("--min-seconds", type=float,
                    help="least timed time of one (a) measurement, in whole epochs (default 2; --quick 0.5)")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's own)")
    ap.add_argument("--loader-threads", type=int, help="DALI threads (default: the loader's own)")
    ap.add_argument("--out", type=Path, default=BENCH / "out",
                    help="where the shard sets are made and kept between runs (default bench/out/)")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    args = ap.parse_args()
    for opt in ("batch_size", "images", "repeats", "threads", "loader_threads"):
        if getattr(args, opt) is not None and getattr(args, opt) < 1:
            ap.error(f"--{opt.replace('_', '-')} must be at least 1")
    if args.min_seconds is not None and args.min_seconds < 0:
        ap.error("--min-seconds must not be negative")
    defaults = QUICK if args.quick else {"cases": list(CASES), "repeats": 3, "min_seconds": 2.0}
    for opt in ("cases", "images", "repeats", "min_seconds"):
        if getattr(args, opt) is None:
            setattr(args, opt, defaults.get(opt))
    if args.batch_size is None and args.quick:
        args.batch_size = QUICK["batch"]

    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available")
    device = torch.device(args.device)
    args.pipeline_device = args.pipeline_device or ("cpu" if device.type == "cpu" else "auto")

    from clvr.pipeline.loader import default_threads
    loader_threads = args.loader_threads or default_threads(1)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    machine = {"cpu": bench_module("method_bookkeeping").cpu_model(), "cores": cpus,
               "torch_threads": torch.get_num_threads(), "device": str(device) + gpu,
               "pipeline_device": args.pipeline_device, "loader_threads": loader_threads,
               "torch": torch.__version__, "python": platform.python_version()}
    header = (f"Machine: {cpus} CPU cores ({machine['cpu']}), {machine['torch_threads']} torch threads, "
              f"network on {machine['device']}, pipeline on {args.pipeline_device} with {loader_threads} DALI "
              f"threads; torch {machine['torch']}; median of {args.repeats} repeat(s)")
    print(header, file=sys.stderr, flush=True)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    t_start = time.perf_counter()

    args.out.mkdir(parents=True, exist_ok=True)
    photos = max([args.images or CASES[c][6] for c in args.cases if CASES[c][0] == "photos"], default=0)
    sets: dict[str, Path] = {}
    rows = []
    for name in args.cases:
        kind = CASES[name][0]
        if kind not in sets:
            t0 = time.perf_counter()
            sets[kind] = shard_set(kind, args.out, photos)
            print(f"  {kind}: shards {sets[kind]} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
        rows.append(run_case(Case(name, sets[kind], args, device), args.repeats))
    elapsed = time.perf_counter() - t_start
    end_load = ", ".join(f"{x:.1f}" for x in os.getloadavg())

    print(f"\n{header}\n")
    print("| " + " | ".join(COLUMNS) + " |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['data']} | {r['view_px']} | {r['backbone']} | {r['batch']} | {r['pipeline_img_s']:.1f} "
              f"| {r['network_img_s']:.1f} | {r['extraction_img_s']:.1f} | {ratio(r['extraction_over_network'])} "
              f"| {ratio(r['extraction_over_pipeline'])} |")
    print("\nColumns: pipeline = one epoch of eval_loader (decode + resize + centre crop + normalise), no "
          "network; network = the backbone in eval mode under torch.no_grad() on tensors already in memory, "
          "same batch and view size; extraction = extract_features(backbone, eval_loader(...)), as clvr eval "
          "runs it. images/s count the epoch's samples (padding excluded) over the loop's wall time; loader "
          "builds are not timed.\n")
    for r in rows:
        reps = r["repeats"]
        fmt = lambda xs: ", ".join(f"{x:.1f}" for x in xs)  # noqa: E731
        print(f"{r['case']}: {r['images']} samples in {r['batches_per_epoch']} batches of {r['batch']}, views "
              f"{tuple(r['view_shape'])} {r['view_dtype']}, {r['stem']} stem, centre crop {r['center_crop']:g}; "
              f"pipeline timed over {', '.join(map(str, r['pipeline_epochs']))} epoch(s); loader build "
              f"{r['loader_build_s']:.2f} s (untimed); no-overlap estimate 1/(1/a+1/b) = "
              f"{r['serial_img_s']:.1f} images/s")
        print(f"  repeats (images/s): pipeline {fmt(reps['pipeline_img_s'])}; network {fmt(reps['network_img_s'])}; "
              f"extraction {fmt(reps['extraction_img_s'])}")
    print(f"\nTotal run time {elapsed:.0f} s; load average (1, 5, 15 min) {load} at the start, {end_load} at the end.")

    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": machine, "load_average": {"start": load, "end": end_load},
                       "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                       "elapsed_s": elapsed, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
