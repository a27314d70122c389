"""Benchmark: how much of a contrastive training step is bookkeeping (loss, bank, queue, momentum).

The issue's goal: for ResNet-18 at batch 256 on the CPU, all the contrastive bookkeeping of a step
(the loss, the method's logs, the memory bank, the queue and the momentum update) takes at most
5% of the whole step; the rest is the networks' forward and backward passes and the optimiser.

For each method (simclr, moco_v2, byol, instdisc, pirl) the script builds
``get_method(name)({"backbone": "resnet18", "stem": ...}, num_samples=N)``, every other
hyper-parameter at the paper's default (MoCo's queue of 65536 keys, InstDisc's 4096 and PIRL's
32000 noise samples, a memory bank of N = 1,281,167 slots x 128, ImageNet's size), and feeds it a
synthetic ``ViewBatch`` held in memory (no data loading): random normalised images, sample indices
uniform in [0, N). ``two_view`` batches for simclr, moco_v2 and byol, one view for instdisc, and
the ``jigsaw`` layout for pirl (image (B, 3, S, S) and patches (B, 9, 3, P, P)).

Measured, in one run:

* step: the whole training step, ``out = method(batch); opt.zero_grad(); out.loss.backward();
  opt.step(); method.after_step(step, total)`` with SGD (momentum 0.9), median of ``--steps``
  steps after one warm-up step (which also fixes InstDisc's and PIRL's NCE constant Z);
* each bookkeeping part on its own, at the shapes that step uses (median of ``--repeats`` calls
  after two warm-up calls; fresh sample indices for every call):

  - loss: the method's loss function, forward and backward, on leaf tensors shaped like the
    method's embeddings: NT-Xent on (B, 128) x 2; InfoNCE of q, k (B, 128) against the
    (65536, 128) queue; BYOL on (B, 256) x 4; InstDisc's NCE including the similarity matmuls
    (B, 128) . bank(B, 128) and (B, 128) @ noise(4096, 128).T; PIRL's two NCE terms, 32000
    noise samples each;
  - logs: the method's logs (:func:`clvr.methods.logs.contrast_logs` and the similarities they
    are scored from, e.g. MoCo's no-grad (B, 65536) matmul), in their own column;
  - bank: drawing the noise samples and gathering their rows (``method.noise``, i.e.
    ``bank.bank[bank.negatives(m)]``), ``bank.get(index)`` and ``bank.update(index, f)``;
  - queue: ``queue.negatives()`` (a clone of the queue) and ``queue.enqueue(keys)``;
  - momentum: ``method.after_step`` (``MomentumEncoder.update`` of the online encoder, ResNet-18
    and its head; BYOL's target network's forward pass is a network's work, not bookkeeping).

The bookkeeping share is (loss + logs + bank + queue + momentum) / step. The parts are timed in
isolation, on warm caches, so they can read a little lower than inside the step.

Usage:
    python bench/method_bookkeeping.py                 # 224 px, batch 256 (ImageNet stem)
    python bench/method_bookkeeping.py --size 32       # CIFAR-sized images (CIFAR stem)
    python bench/method_bookkeeping.py --methods simclr moco_v2 --steps 3 --json out.json

At 224 px a ResNet-18 step of batch 256 takes tens of seconds on a few CPU cores: the five
methods take several minutes in all.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from clvr.methods import get_method
from clvr.methods.byol import byol_logs
from clvr.methods.logs import contrast_logs, mean_logs
from clvr.methods.losses import byol, info_nce, info_nce_logits, nt_xent
from clvr.methods.simclr import nt_xent_logs
from clvr.pipeline.batch import ViewBatch

METHODS = ("simclr", "moco_v2", "byol", "instdisc", "pirl")
IMAGENET = 1_281_167
COLUMNS = ("loss", "logs", "bank", "queue", "momentum")
GOAL = 5.0                      # per cent of the step
DEVICE = torch.device("cpu")    # --device


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


# -- inputs ----------------------------------------------------------------------------------

def make_batch(name: str, batch: int, size: int, patch: int, num_samples: int) -> ViewBatch:
    """A synthetic batch of the layout that method ``name`` reads."""
    def image():
        return torch.randn(batch, 3, size, size, device=DEVICE)
    index = torch.randint(0, num_samples, (batch,), device=DEVICE)
    common = dict(index=index, label=torch.full((batch,), -1, dtype=torch.long),
                  valid=torch.ones(batch, dtype=torch.bool))
    if name == "pirl":
        return ViewBatch(views=(image(), torch.randn(batch, 9, 3, patch, patch, device=DEVICE)), names=("image", "patches"),
                         kind="jigsaw", extras={"perm": torch.randint(0, 1000, (batch,), device=DEVICE)}, **common)
    count = 1 if name == "instdisc" else 2
    return ViewBatch(views=tuple(image() for _ in range(count)), names=tuple(f"view{i}" for i in range(count)),
                     kind="two_view", **common)


def unit(*shape, grad: bool = False) -> torch.Tensor:
    """Random L2-normalised rows; a leaf that takes gradients when ``grad``."""
    return F.normalize(torch.randn(*shape, device=DEVICE), dim=-1).requires_grad_(grad)


# -- timing ----------------------------------------------------------------------------------

def time_ms(fn, repeats: int, setup=None, warmup: int = 2) -> list[float]:
    """Wall times of ``fn(*setup())`` in ms; ``setup`` runs outside the timed region."""
    times = []
    for i in range(warmup + repeats):
        args = setup() if setup is not None else ()
        sync()
        t0 = time.perf_counter()
        fn(*args)
        sync()
        dt = time.perf_counter() - t0
        if i >= warmup:
            times.append(dt * 1e3)
    return times


def time_steps(method, batch: ViewBatch, steps: int, num_samples: int) -> tuple[float, list[float]]:
    """Median ms of a whole training step over ``steps`` steps after one warm-up step."""
    params = [p for p in method.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.03, momentum=0.9, weight_decay=1e-4)
    method.train()
    total = steps + 1
    times = []
    for step in range(total):
        b = dataclasses.replace(batch, index=torch.randint(0, num_samples, (len(batch),), device=DEVICE), step=step)
        sync()
        t0 = time.perf_counter()
        out = method(b)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        method.after_step(step, total)
        sync()
        dt = time.perf_counter() - t0
        del out
        if step:
            times.append(dt * 1e3)
        print(f"    {'warm-up' if not step else f'step {step}/{steps}'}: {dt:.2f} s", file=sys.stderr, flush=True)
    opt.zero_grad(set_to_none=True)
    return statistics.median(times), times


# -- the bookkeeping of each method, as callables at the step's shapes -------------------------
# Each returns {column: {sub-part: (fn, setup or None)}}; a column's time is the sum of its parts.

def parts_simclr(m, b: int, num_samples: int) -> dict:
    c = m.config
    z1, z2 = unit(b, c.dim, grad=True), unit(b, c.dim, grad=True)

    def fresh():
        z1.grad = z2.grad = None
        return ()

    return {"loss": {"nt_xent": (lambda: nt_xent(z1, z2, c.temperature, gather=False).backward(), fresh)},
            "logs": {"nt_xent_logs": (lambda: nt_xent_logs(z1, z2), None)}}


def parts_moco(m, b: int, num_samples: int) -> dict:
    c = m.config
    q, k = unit(b, c.dim, grad=True), unit(b, c.dim)
    negatives = m.queue.negatives()

    def fresh():
        q.grad = None
        return ()

    with torch.no_grad():
        logits = info_nce_logits(q, k, negatives, c.temperature, normalize=False)

    return {"loss": {"info_nce": (lambda: info_nce(q, k, negatives, c.temperature, normalize=False).backward(),
                                  fresh)},
            "logs": {"contrast_logs of the loss's (B, 1 + K) logits": (lambda: contrast_logs(logits * c.temperature),
                                                                       None)},
            "queue": {"negatives (clone)": (m.queue.negatives, None),
                      "enqueue": (lambda: m.queue.enqueue(k), None)},
            "momentum": after_step(m)}


def parts_byol(m, b: int, num_samples: int) -> dict:
    c = m.config
    p1, p2 = unit(b, c.dim, grad=True), unit(b, c.dim, grad=True)
    z1, z2 = unit(b, c.dim), unit(b, c.dim)

    def fresh():
        p1.grad = p2.grad = None
        return ()

    return {"loss": {"byol": (lambda: byol(p1, p2, z1, z2).backward(), fresh)},
            "logs": {"byol_logs x2": (lambda: mean_logs([byol_logs(p1, z2), byol_logs(p2, z1)]), None)},
            "momentum": after_step(m)}


def parts_instdisc(m, b: int, num_samples: int) -> dict:
    c = m.config
    f = unit(b, c.dim, grad=True)
    memory = m.bank.get(torch.randint(0, num_samples, (b,)))
    noise = m.noise(b)

    def fresh():
        f.grad = None
        return ()

    def loss():
        positive = (f * memory).sum(1)
        negatives = m.similarities(f, noise)
        m.nce(positive, negatives, m.log_z(m.log_z_value, negatives)).backward()

    with torch.no_grad():
        sim = torch.cat([(f * memory).sum(1, keepdim=True), m.similarities(f, noise)], 1)
    return {"loss": {"similarities + nce": (loss, fresh)},
            "logs": {"contrast_logs": (lambda: contrast_logs(sim), None)},
            "bank": bank_parts(m, f, b, num_samples)}


def parts_pirl(m, b: int, num_samples: int) -> dict:
    c = m.config
    f, g = unit(b, c.dim, grad=True), unit(b, c.dim, grad=True)
    memory = m.bank.get(torch.randint(0, num_samples, (b,)))
    noise = m.noise(b)

    def fresh():
        f.grad = g.grad = None
        return ()

    def terms():
        pos_g, neg_g = (g * memory).sum(1), m.similarities(g, noise)
        pos_f, neg_f = (f * memory).sum(1), m.similarities(f, noise)
        loss_jigsaw = m.nce(pos_g, neg_g, m.log_z(m.log_z_jigsaw, neg_g))
        loss_image = m.nce(pos_f, neg_f, m.log_z(m.log_z_image, neg_f))
        return pos_g, neg_g, loss_jigsaw, loss_image

    def loss():
        _, _, loss_jigsaw, loss_image = terms()
        (c.jigsaw_weight * loss_jigsaw + (1 - c.jigsaw_weight) * loss_image).backward()

    with torch.no_grad():
        pos_g, neg_g, loss_jigsaw, loss_image = terms()

    def logs():
        out = contrast_logs(torch.cat([pos_g[:, None], neg_g], 1))
        out.update(loss_jigsaw=loss_jigsaw.detach(), loss_image=loss_image.detach())
        return out

    return {"loss": {"similarities + 2 nce": (loss, fresh)},
            "logs": {"contrast_logs": (logs, None)},
            "bank": bank_parts(m, f, b, num_samples)}


def bank_parts(m, f: torch.Tensor, b: int, num_samples: int) -> dict:
    bank = m.bank

    def index():
        return (torch.randint(0, num_samples, (b,), device=DEVICE),)

    return {f"noise rows ({m.config.negatives})": (lambda: m.noise(b), None),
            "get": (bank.get, index),
            "update": (lambda i: bank.update(i, f.detach()), index)}


def after_step(m) -> dict:
    step = [0]

    def update():
        m.after_step(step[0], 1000)
        step[0] += 1

    return {"after_step": (update, None)}


PARTS = {"simclr": parts_simclr, "moco_v2": parts_moco, "byol": parts_byol,
         "instdisc": parts_instdisc, "pirl": parts_pirl}


# -- one method --------------------------------------------------------------------------------

def measure(name: str, args) -> dict:
    torch.manual_seed(0)
    config = {"backbone": "resnet18", "stem": args.stem}
    t0 = time.perf_counter()
    method = get_method(name)(config, num_samples=args.bank_size).to(DEVICE)
    print(f"  {name}: built in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    batch = make_batch(name, args.batch, args.size, args.patch, args.bank_size)
    step_ms, steps = time_steps(method, batch, args.steps, args.bank_size)
    del batch
    gc.collect()

    parts = PARTS[name](method, args.batch, args.bank_size)
    detail: dict[str, dict[str, float]] = {}
    minimum: dict[str, dict[str, float]] = {}
    for column, subs in parts.items():
        for sub, (fn, setup) in subs.items():
            times = time_ms(fn, args.repeats, setup)
            detail.setdefault(column, {})[sub] = statistics.median(times)
            minimum.setdefault(column, {})[sub] = min(times)
    columns = {col: sum(detail[col].values()) if col in detail else None for col in COLUMNS}
    bookkeeping = sum(v for v in columns.values() if v is not None)
    share = 100 * bookkeeping / step_ms
    print(f"  {name}: step {step_ms / 1e3:.2f} s, bookkeeping {bookkeeping:.1f} ms ({share:.2f}%)",
          file=sys.stderr, flush=True)
    del method, parts
    gc.collect()
    return {"step_ms": step_ms, "steps_ms": steps, "parts_ms": columns, "detail_ms": detail,
            "detail_min_ms": minimum,
            "bookkeeping_ms": bookkeeping, "share_pct": share, "goal_met": share <= GOAL}


# -- table -------------------------------------------------------------------------------------

def ms(x) -> str:
    if x is None:
        return "—"
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--size", type=int, default=224, help="image side in px (224 ImageNet, 32 CIFAR)")
    ap.add_argument("--stem", choices=("imagenet", "cifar"),
                    help="ResNet stem; default cifar up to 64 px, imagenet above")
    ap.add_argument("--patch", type=int,
                    help="PIRL's jigsaw patch side; default the generator's 64 px at 224, scaled with --size")
    ap.add_argument("--steps", type=int, default=3, help="timed training steps (after 1 warm-up step)")
    ap.add_argument("--repeats", type=int, default=15, help="timed calls of each bookkeeping part")
    ap.add_argument("--bank-size", type=int, default=IMAGENET,
                    help="samples N: memory-bank slots and the range of the indices (ImageNet: 1,281,167)")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's own)")
    ap.add_argument("--json", help="also write the numbers to this JSON file")
    ap.add_argument("--device", default="cpu", help="cpu (the issue's setting) or cuda")
    args = ap.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    if args.stem is None:
        args.stem = "cifar" if args.size <= 64 else "imagenet"
    if args.patch is None:
        args.patch = max(8, round(64 * args.size / 224))
    if args.threads:
        torch.set_num_threads(args.threads)
    if min(args.batch, args.size, args.steps, args.repeats, args.bank_size) < 1:
        ap.error("--batch, --size, --steps, --repeats and --bank-size must be positive")

    machine = {"cpu": cpu_model(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
               "torch": torch.__version__, "python": platform.python_version()}
    pirl = f", PIRL patches {args.patch} px" if "pirl" in args.methods else ""
    where = (f"{torch.cuda.get_device_name(DEVICE)}, " if DEVICE.type == "cuda" else "")
    header = (f"torch {machine['torch']}, {where}{machine['cpus']} CPUs ({machine['cpu']}), "
              f"{machine['threads']} threads; ResNet-18 ({args.stem} stem), batch {args.batch}, "
              f"{args.size} px{pirl}, bank N = {args.bank_size:,}; "
              f"step: median of {args.steps} after 1 warm-up; parts: median of {args.repeats}")
    print(header, file=sys.stderr, flush=True)

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    results = {}
    t0 = time.perf_counter()
    for name in args.methods:
        results[name] = measure(name, args)
    elapsed = time.perf_counter() - t0

    print(f"\n{header}\n")
    print("| method | step (ms) | loss (ms) | logs (ms) | bank (ms) | queue (ms) | momentum (ms) "
          f"| bookkeeping share of step (%) | goal ≤ {GOAL:g}% met? |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for name, r in results.items():
        p = r["parts_ms"]
        print(f"| {name} | {ms(r['step_ms'])} | " + " | ".join(ms(p[c]) for c in COLUMNS)
              + f" | {r['share_pct']:.2f} | {'yes' if r['goal_met'] else 'no'} |")
    print("\nColumns: step = forward + zero_grad + backward + SGD step + after_step of the whole method; "
          "loss = the loss function's forward + backward (with InstDisc's/PIRL's similarity matmuls); "
          "logs = the method's logs (contrast_logs and the similarities they need), counted in the share; "
          "bank = noise draw + row gather, get, update; queue = negatives() clone + enqueue; "
          "momentum = after_step (EMA of the online encoder); "
          "share = (loss + logs + bank + queue + momentum) / step; "
          "— = the method has no such part.")
    print("\nBreakdown (ms):\n")
    print("| method | part | ms |")
    print("|---|---|---:|")
    for name, r in results.items():
        for col, subs in r["detail_ms"].items():
            for sub, v in subs.items():
                print(f"| {name} | {col}: {sub} | {ms(v)} |")
    end_load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nTotal run time {elapsed:.0f} s; load average (1, 5, 15 min) {load} at the start, "
          f"{end_load} at the end (other processes slow the step and, more, the small parts).")

    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": machine, "load_average": {"start": load, "end": end_load},
                       "settings": vars(args), "goal_pct": GOAL, "elapsed_s": elapsed, "methods": results},
                      fh, indent=2)


if __name__ == "__main__":
    main()
