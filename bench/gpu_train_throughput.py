"""Benchmark: SimCLR ResNet-50 training images/s at 224 px on a GPU, torch + kornia path.

For a lent GPU machine, where DALI is not installed (its wheel cannot travel there): the decoded
images are stood in for by uint8 tensors already on the GPU (256 x 256, as a decoder would
give them), and everything after decoding runs as in ``clvr train`` with ``photometric=kornia``:

1. geometry: a random resized crop (area 0.08-1, SimCLR's) to 224 px and a flip, batched on the
   GPU (``torch.nn.functional.grid_sample`` with per-sample affine grids);
2. photometric: the ``simclr`` recipe's colour jitter, grayscale and blur by clvr's kornia
   stage (:func:`clvr.pipeline.kornia_stage.apply_recipe`), then normalisation;
3. the step: clvr's SimCLR (ResNet-50, 2048-2048-128 head, NT-Xent), LARS, under
   ``torch.autocast`` in bf16 (or float32), channels-last.

Three conditions, measured in one run: (a) views + step, (b) the step alone on views made once,
(c) the views alone. images/s counts one image per sample (each gives two views).

    python bench/gpu_train_throughput.py --device cuda --batch 256 --steps 20
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F

from clvr.methods import get_method
from clvr.methods.optimizers import build_optimizer
from clvr.pipeline.batch import ViewBatch
from clvr.pipeline.kornia_stage import apply_recipe
from clvr.pipeline.recipe import preset


def crops(images: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """Random resized crops (area 0.08-1, aspect 3/4-4/3) with a flip, batched: uint8 in, float out."""
    b = images.shape[0]
    area = torch.empty(b).uniform_(0.08, 1.0, generator=gen)
    logr = torch.empty(b).uniform_(math.log(3 / 4), math.log(4 / 3), generator=gen)
    ratio = torch.exp(logr)
    w = torch.sqrt(area * ratio).clamp(max=1.0)
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (torch.rand(b, generator=gen) * 2 - 1) * (1 - w)
    cy = (torch.rand(b, generator=gen) * 2 - 1) * (1 - h)
    flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = F.affine_grid(theta.to(images.device), (b, 3, size, size), align_corners=False)
    return F.grid_sample(images.float(), grid, mode="bilinear", align_corners=False)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--precision", choices=("bf16", "no"), default="bf16")
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--json", help="also write the numbers here")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    gen = torch.Generator().manual_seed(0)
    cls = get_method("simclr")
    method = cls(cls.make_config({"backbone": args.backbone}), num_samples=10_000).to(dev)
    method = method.to(memory_format=torch.channels_last)
    opt = build_optimizer("lars", method, 0.3 * args.batch / 256, 1e-6)
    recipe = preset("simclr")[0]
    images = torch.randint(0, 256, (args.batch, 3, 256, 256), dtype=torch.uint8, generator=gen).to(dev)
    common = dict(index=torch.arange(args.batch, device=dev), label=torch.zeros(args.batch, dtype=torch.long, device=dev),
                  valid=torch.ones(args.batch, dtype=torch.bool, device=dev))
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    def views():
        out = []
        for _ in range(2):
            v = apply_recipe(crops(images, args.size, gen), recipe, gen)
            out.append(v.contiguous(memory_format=torch.channels_last))
        return ViewBatch(views=tuple(out), names=("view0", "view1"), kind="two_view", **common)

    def step(batch):
        with autocast:
            loss = method(batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def timed(fn, n):
        for _ in range(args.warmup):
            fn()
        torch.cuda.synchronize(dev) if dev.type == "cuda" else None
        start = time.perf_counter()
        for _ in range(n):
            fn()
        torch.cuda.synchronize(dev) if dev.type == "cuda" else None
        return n * args.batch / (time.perf_counter() - start)

    fixed = views()
    rows = {"(a) views + step": timed(lambda: step(views()), args.steps),
            "(b) step on ready views": timed(lambda: step(fixed), args.steps),
            "(c) views alone": timed(views, args.steps)}
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(f"SimCLR {args.backbone}, {args.size} px, batch {args.batch}, {args.precision}, channels-last, "
          f"{args.steps} timed steps after {args.warmup}; {name}, torch {torch.__version__}\n")
    print("| condition | images/s | vs (b) |\n|---|---|---|")
    for k, v in rows.items():
        print(f"| {k} | {v:,.0f} | {v / rows['(b) step on ready views']:.2f} |")
    if dev.type == "cuda":
        print(f"\npeak GPU memory {torch.cuda.max_memory_allocated(dev) / 2**30:.1f} GiB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "device": name, "args": vars(args)}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
