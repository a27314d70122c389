"""Check: every method runs on a device (CUDA) and computes there what it computes on the CPU.

For each registered method, a tiny network (``tiny``, ``r2plus1d_tiny``, ``bytes_tiny``) and a
synthetic batch of the layout its view generator makes (no DALI needed) are built on the CPU and
copied to ``--device``; the same step runs on both in float64 and the losses are compared. Random
draws that live on the device's own generator (MoCo's shuffle order) are switched off; the memory
bank draws its noise on the CPU generator, so both runs draw the same. Then one SGD step and
``after_step`` run on the device, as training would.

    python bench/methods_on_device.py --device cuda
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import torch

from clvr.methods import available, get_method
from clvr.pipeline.batch import ViewBatch

B, S = 6, 32
CAPTIONS = ["a handwritten seven", "zero", "the digit 3, written twice", "eins", "ünf", "an eight"]
TINY = {"backbone": "tiny"}
CONFIGS = {
    "simclr": dict(TINY, hidden=32, dim=16), "byol": dict(TINY, hidden=32, dim=16, predictor_hidden=32),
    "moco_v1": dict(TINY, dim=16, queue=60, shuffle_bn=False),
    "moco_v2": dict(TINY, dim=16, hidden=32, queue=60, shuffle_bn=False),
    "instdisc": dict(TINY, dim=16, negatives=64), "pirl": dict(TINY, dim=16, negatives=64),
    "cpc_v1": dict(TINY, steps=2), "cpc_v2": dict(TINY, steps=2),
    "object_contrast": dict(TINY, hidden=32, dim=16, image_weight=0.5),
    "clip": dict(TINY, text="bytes_tiny", dim=16),
    "video_simclr": dict(backbone="r2plus1d_tiny", hidden=32, dim=16),
    "video_moco": dict(backbone="frames:tiny", hidden=32, dim=16, queue=60, shuffle_bn=False),
    "video_byol": dict(backbone="r2plus1d_tiny", hidden=32, dim=16, predictor_hidden=32),
}


def batch_for(cls, g: torch.Generator) -> ViewBatch:
    r = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    common = dict(index=torch.arange(B), label=torch.zeros(B, dtype=torch.long), valid=torch.ones(B, dtype=torch.bool))
    kind = cls.views
    if kind == "two_view":
        n = cls.view_options.get("views", 2)
        return ViewBatch(views=tuple(r(B, 3, S, S) for _ in range(n)), names=tuple(f"view{i}" for i in range(n)),
                         kind=kind, **common)
    if kind == "jigsaw":
        return ViewBatch(views=(r(B, 3, S, S), r(B, 9, 3, 16, 16)), names=("image", "patches"), kind=kind,
                         extras={"perm": torch.zeros(B, dtype=torch.long)}, **common)
    if kind == "cpc_grid":
        return ViewBatch(views=(r(B, 4, 4, 3, 16, 16),), names=("patches",), kind=kind, **common)
    if kind == "object_crops":
        k = 3
        extras = {"mask": torch.rand(B, k, generator=g) > 0.2, "category": torch.zeros(B, k, dtype=torch.long),
                  "parent": torch.arange(B)[:, None].expand(B, k).clone(), "box": torch.zeros(B, k, 4),
                  "source": torch.tensor([[0, 1, 0]] * B)}
        return ViewBatch(views=(r(B, k, 2, 3, 24, 24),), names=("objects",), kind=kind, extras=extras, **common)
    if kind == "video_clips":
        return ViewBatch(views=(r(B, 2, 4, 3, S, S),), names=("clips",), kind=kind, **common)
    if kind == "image_text":
        return ViewBatch(views=(r(B, 3, S, S),), names=("image",), kind=kind, text=CAPTIONS[:B], **common)
    raise SystemExit(f"no synthetic batch for generator {kind!r}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    device = torch.device(args.device)
    name_of = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    print(f"torch {torch.__version__}, device {name_of}\n")
    print("| method | loss on cpu | loss on device | relative difference | step + after_step on device |")
    print("|---|---:|---:|---:|---|")
    bad = 0
    for name in available():
        if name not in CONFIGS:
            continue
        cls = get_method(name)
        torch.manual_seed(0)
        cpu = cls(CONFIGS[name], num_samples=B).double()
        dev = copy.deepcopy(cpu).to(device)
        batch = batch_for(cls, torch.Generator().manual_seed(1))
        torch.manual_seed(2)
        a = cpu(batch).loss.item()
        torch.manual_seed(2)
        out = dev(batch.to(device))
        b = out.loss.item()
        rel = abs(a - b) / max(abs(a), 1e-12)
        t0 = time.perf_counter()
        try:
            opt = torch.optim.SGD([p for p in dev.parameters() if p.requires_grad], lr=0.1)
            opt.zero_grad()
            out.loss.backward()
            opt.step()
            dev.after_step(0, 10)
            dev(batch.to(device)).loss.item()
            ok = f"ok ({(time.perf_counter() - t0) * 1e3:.0f} ms)"
        except Exception as e:  # report every method, then fail
            ok, bad = f"FAILED: {type(e).__name__}: {e}", bad + 1
        bad += rel > 1e-6
        print(f"| {name} | {a:.10f} | {b:.10f} | {rel:.1e} | {ok} |", flush=True)
    print(f"\n{'all agree' if not bad else f'{bad} problem(s)'} (relative difference limit 1e-6)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
