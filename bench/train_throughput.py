"""Benchmark: SimCLR ResNet-18 training images/s on the CPU, fed by clvr's pipeline or from memory.

The issue's goal: a training step fed by clvr's pipeline from shards runs within 10% of the same
step fed by tensors already in memory, i.e. (a) >= 0.9 x (b), so the pipeline never holds
training back.

For each image size, two conditions, each in its own process (so that peak memory is per
condition), both on the very same ``clvr.methods.trainer.Trainer``:

* (a) ``pipeline``: ``Trainer(train_config.build(method, overrides=...), shards, out)``; the
  timed loop is ``batch = next(loader); trainer._train_step(batch)``, i.e. what ``clvr train``
  does per step without its logging and checkpoints. DALI makes the next batches in its own
  threads while the step runs, on the same cores.
* (b) ``in memory``: the same Trainer, but ONE batch is taken from its loader first and then
  ``trainer._train_step`` runs on that same batch every step. These are the "synthetic tensors
  already in memory": the same shapes, dtypes, method, model and optimiser as (a), and no loading
  at all once the loop starts (the loader's threads are idle: their prefetch queue is full).

Data and settings:

* 32 px: the embedded digits shards (``clvr shard demo digits``, the ``train`` split, 1,437
  samples), recipe ``simclr-cifar``, CIFAR stem (3x3 stride-1 conv, no max-pool);
* 224 px: JPEG shards of real photographs (about 500x375, cut from scikit-image's sample photos
  by bench/photos.py and sharded by ``make_data`` of bench/pipeline_throughput.py), recipe
  ``simclr`` (the method's own preset for ``--method moco_v2`` / ``instdisc``), ImageNet stem.

Every other setting is the method's paper default from ``clvr train`` (SimCLR: LARS, NT-Xent at
temperature 0.1, a 2048-2048-128 head; ``max_steps`` = warm-up + timed steps, so the schedule is
sized to the run). images/s = timed steps x batch / wall time of the timed steps, counting ONE
image per sample (each sample gives the method's views: two for simclr and moco_v2, one for
instdisc). For (a) the wall time includes waiting for the loader.

The gather, bank and queue columns are the share of the step that those parts take. On one
process there is nothing to gather (``all_gather_cat`` returns its input), and SimCLR has no bank
and no queue. With ``--method moco_v2`` (queue of 65,536 keys) or ``--method instdisc`` (memory
bank with one slot per training sample, 4096 noise samples) the queue's and the bank's work is
timed in isolation at the step's shapes, by the helpers of bench/method_bookkeeping.py (``PARTS``
and ``time_ms``, the median of ``--repeats`` calls), and divided by this condition's mean step time.

Usage:
    python bench/train_throughput.py                          # 32 and 224 px, simclr
    python bench/train_throughput.py --sizes 32 --batch 16 --steps 2 --warmup 1
    python bench/train_throughput.py --method moco_v2 --json out.json

On 2 CPU cores a ResNet-18 step takes about 25 s at 32 px / batch 256 (CIFAR stem) and at
224 px / batch 64 (ImageNet stem): the defaults (1 warm-up + 4 timed steps per condition, 20 steps
in all) take about 10 minutes. Other processes on the machine slow single steps by seconds; the
notes under the table give every timed step and the ratio of the median steps to judge that by.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
METHODS = ("simclr", "moco_v2", "instdisc")
CONDITIONS = {"a": "(a) pipeline", "b": "(b) in memory"}
GOAL = 0.9                         # (a) / (b)
PHOTOS = 512                       # photographs in the 224 px shard set


def bench_module(name: str):
    """A sibling script of bench/ as a module (its functions are reused, not copied)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


def recipe_for(method: str, size: int) -> str:
    if size == 32:
        return "simclr-cifar"
    from clvr.methods import get_method
    return get_method(method).recipe


# -- the child: one condition ----------------------------------------------------------------

def forever(loader):
    """Batches of the loader, epoch after epoch."""
    while True:
        for batch in loader:
            yield batch


def bookkeeping_ms(method, name: str, batch: int, num_samples: int, repeats: int) -> dict:
    """Median ms of the bank and queue parts (None where the method has none), in isolation."""
    mb = bench_module("method_bookkeeping")
    parts = mb.PARTS[name](method, batch, num_samples)
    out = {}
    for column in ("bank", "queue"):
        if column not in parts:
            out[column] = None
            continue
        out[column] = sum(statistics.median(mb.time_ms(fn, repeats, setup))
                          for fn, setup in parts[column].values())
    return out


def child(args) -> dict:
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    from clvr.methods import train_config
    from clvr.methods.trainer import Trainer

    stem = "cifar" if args.size <= 64 else "imagenet"
    recipe = recipe_for(args.method, args.size)
    overrides = {"model": {"backbone": "resnet18", "stem": stem},
                 "data": {"batch_size": args.batch, "recipe": recipe},
                 "progress": False, "checkpoint_every": 0, "max_steps": args.warmup + args.steps}
    config = train_config.build(args.method, overrides=overrides)
    with tempfile.TemporaryDirectory(prefix="clvr-train-throughput-") as out:
        t0 = time.perf_counter()
        trainer = Trainer(config, args.data, out)
        built = time.perf_counter() - t0
        batches = forever(trainer.loader)
        if args.child == "b":                  # one batch, then the same tensors every step
            first = next(batches)

            def next_batch():
                return first
        else:
            def next_batch():
                return next(batches)

        total = args.warmup + args.steps
        steps, waits = [], []
        for i in range(total):
            t0 = time.perf_counter()
            batch = next_batch()
            t1 = time.perf_counter()
            logs = trainer._train_step(batch)
            trainer.step += 1
            dt = time.perf_counter() - t0
            what = "warm-up" if i < args.warmup else f"step {i - args.warmup + 1}/{args.steps}"
            print(f"    {args.size} px {CONDITIONS[args.child]}: {what}: {dt:.2f} s "
                  f"(data {t1 - t0:.3f} s), loss {logs['loss']:.3f}", file=sys.stderr, flush=True)
            if i >= args.warmup:
                steps.append(dt)
                waits.append(t1 - t0)
        elapsed = sum(steps)
        parts = bookkeeping_ms(trainer.method, args.method, args.batch, trainer.loader.num_samples,
                               args.repeats)
        result = {"images_per_s": args.steps * args.batch / elapsed, "timed_s": elapsed,
                  "steps_s": steps, "data_wait_s": sum(waits), "build_s": built,
                  "steps_per_epoch": trainer.steps_per_epoch, "num_samples": trainer.loader.num_samples,
                  "recipe": recipe, "stem": stem, "views": len(batch.views),
                  "view_shape": list(batch.views[0].shape), "view_dtype": str(batch.views[0].dtype),
                  "parts_ms": parts, "torch_threads": torch.get_num_threads(),
                  "loader_threads": trainer.loader.num_threads}
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # KiB on Linux
    return result


# -- the parent: data, conditions, table -----------------------------------------------------

def digits_shards(work: Path) -> Path:
    out = work / "digits"
    if not (out / "manifest.json").exists():
        from clvr.cli import main as clvr
        if clvr(["shard", "demo", "digits", str(out), "--no-progress", "--overwrite"]) != 0:
            raise SystemExit("clvr shard demo digits failed")
    return out / "train"


def photo_shards(work: Path, count: int) -> Path:
    return bench_module("pipeline_throughput").make_data(work / f"photos-{count}", count)


def run_condition(cond: str, size: int, batch: int, data: Path, args) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        result = Path(fh.name)
    cmd = [sys.executable, __file__, "--child", cond, "--data", str(data), "--result", str(result),
           "--size", str(size), "--batch", str(batch), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--method", args.method, "--repeats", str(args.repeats)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    try:
        proc = subprocess.run(cmd)
        if proc.returncode != 0:
            raise SystemExit(f"{size} px {CONDITIONS[cond]} failed (exit {proc.returncode})")
        return json.loads(result.read_text())
    finally:
        result.unlink(missing_ok=True)


def share(part_ms, r: dict) -> str:
    if part_ms is None:
        return "—"
    return f"{100 * part_ms / (1e3 * statistics.mean(r['steps_s'])):.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", choices=(32, 224), default=[32, 224])
    ap.add_argument("--method", choices=METHODS, default="simclr")
    ap.add_argument("--batch", type=int, default=256, help="batch at 32 px")
    ap.add_argument("--batch-224", type=int, default=64, help="batch at 224 px")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per condition")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    ap.add_argument("--repeats", type=int, default=15, help="timed calls of each bank/queue part")
    ap.add_argument("--photos", type=int, default=PHOTOS, help="photographs in the 224 px shard set")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's own)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "clvr-train-throughput",
                    help="where the shard sets are made and kept between runs")
    ap.add_argument("--json", help="also write the numbers to this JSON file")
    ap.add_argument("--child", choices=tuple(CONDITIONS), help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if min(args.batch, args.batch_224, args.steps, args.repeats, args.photos) < 1 or args.warmup < 0:
        ap.error("--batch, --batch-224, --steps, --repeats and --photos must be positive, --warmup not negative")

    if args.child:
        result = child(args)
        Path(args.result).write_text(json.dumps(result))
        return

    import torch
    threads = args.threads or torch.get_num_threads()
    machine = {"cpu": bench_module("method_bookkeeping").cpu_model(), "cpus": os.cpu_count(), "threads": threads,
               "torch": torch.__version__, "python": platform.python_version()}
    header = (f"torch {machine['torch']}, {machine['cpus']} CPUs ({machine['cpu']}), {threads} torch threads; "
              f"{args.method} ResNet-18, {args.warmup} warm-up + {args.steps} timed steps per condition, "
              f"each condition in its own process")
    print(header, file=sys.stderr, flush=True)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    t_start = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    results: dict[int, dict] = {}
    for size in args.sizes:
        batch = args.batch if size == 32 else args.batch_224
        t0 = time.perf_counter()
        data = digits_shards(args.work) if size == 32 else photo_shards(args.work, args.photos)
        print(f"  {size} px: shards {data} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
        results[size] = {"batch": batch, "data": str(data), "conditions": {}}
        for cond in CONDITIONS:
            r = run_condition(cond, size, batch, data, args)
            results[size]["conditions"][cond] = r
            print(f"  {size} px {CONDITIONS[cond]}: {r['images_per_s']:.2f} images/s", file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - t_start
    end_load = ", ".join(f"{x:.1f}" for x in os.getloadavg())

    print(f"\n{header}\n")
    print(f"| size | condition | batch | images/s | (a)/(b) | gather % | bank % | queue % | peak RSS (MB) "
          f"| goal (a) ≥ {GOAL:g} (b) |")
    print("|---|---|---:|---:|---:|---|---:|---:|---:|---|")
    for size, s in results.items():
        a, b = s["conditions"]["a"], s["conditions"]["b"]
        ratio = a["images_per_s"] / b["images_per_s"]
        s["ratio"], s["goal_met"] = ratio, ratio >= GOAL
        for cond, r in s["conditions"].items():
            rel = f"{ratio:.3f}" if cond == "a" else "1.000"
            goal = ("yes" if ratio >= GOAL else "no") if cond == "a" else ""
            print(f"| {size} px | {CONDITIONS[cond]} | {s['batch']} | {r['images_per_s']:.2f} | {rel} "
                  f"| 1 process: no gather | {share(r['parts_ms']['bank'], r)} | {share(r['parts_ms']['queue'], r)} "
                  f"| {r['peak_rss_mb']:.0f} | {goal} |")
    print("\nColumns: images/s = timed steps x batch / their wall time, one image per sample (each sample "
          "gives the method's views); (a) pipeline = batches from clvr's ViewLoader over shards, the wait "
          "for them included; (b) in memory = one batch from the same loader, reused every step; "
          "gather % = share of the step spent gathering across processes, none on one process; "
          "bank % / queue % = the memory bank's / key queue's work (bench/method_bookkeeping.py's parts, "
          "timed in isolation at the step's shapes) over the mean step, — = the method has none; "
          "peak RSS = ru_maxrss of the condition's process (model, optimiser, loader, batches).")
    print()
    for size, s in results.items():
        a = s["conditions"]["a"]
        crossing = a["steps_per_epoch"] < args.warmup + args.steps
        print(f"{size} px: {a['num_samples']} samples, recipe {a['recipe']}, {a['stem']} stem, "
              f"{a['loader_threads']} DALI threads, views {a['views']} x {tuple(a['view_shape'])} "
              f"{a['view_dtype']}; (a) waited for data "
              f"{100 * a['data_wait_s'] / a['timed_s']:.2f}% of its timed time"
              + ("; (a) crossed an epoch boundary" if crossing else ""))
        b = s["conditions"]["b"]
        s["ratio_of_medians"] = statistics.median(b["steps_s"]) / statistics.median(a["steps_s"])
        print(f"  timed steps (s): (a) {', '.join(f'{x:.2f}' for x in a['steps_s'])}; "
              f"(b) {', '.join(f'{x:.2f}' for x in b['steps_s'])}; "
              f"(a)/(b) from the median steps {s['ratio_of_medians']:.3f}")
    print(f"\nTotal run time {elapsed:.0f} s; load average (1, 5, 15 min) {load} at the start, "
          f"{end_load} at the end.")

    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": machine, "load_average": {"start": load, "end": end_load},
                       "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                       "goal_ratio": GOAL, "elapsed_s": elapsed,
                       "sizes": {str(k): v for k, v in results.items()}}, fh, indent=2)


if __name__ == "__main__":
    main()
