"""The plan of a ``clvr train`` run, printed before the first step, and its time estimate.

A run on a CPU with the paper's settings (ResNet-50, 224 px, batch 256) takes minutes per step;
a user must know that before waiting. So the trainer prints one block first::

    clvr train: plan
      method      simclr (two_view views: view0, view1)
      backbone    resnet18, stem cifar, width 16: 0.70 M parameters, 128 features
      images      16 px views (recipe ...)
      settings    small-image settings: the images are small (longest sides: 1,438 <= 32 px ...)
      data        1,438 samples in 2 shard(s): 22 steps per epoch x 60 epochs = 1,320 steps
      batch       64 per process x 1 process = 64
      device      cpu, 2 torch threads; DALI on cpu, 2 threads; precision no
      views       a view's partner among 256 found by trivial features: colour 1.2% (3.0x chance), ...
      monitor     kNN (k=200) of ... every 5 epoch(s) and at the end; ... (or: none: without --val ...)

and, from the first batch, an estimate: the encoder's FLOPs for the batch's views (counted by
torch on one sample) times three (forward and backward), over this machine's measured matrix
throughput (:func:`device_flops`) and an efficiency of convolutions relative to a matmul
(:data:`EFFICIENCY`, calibrated on the digits and on ResNet-50). It is then replaced by the
time of the measured steps (after the first, which also builds kernels and fills DALI's queue),
and the progress bar's remaining time follows every step. A run whose epoch would take longer
than ``slow_epoch_hours`` at the estimate is warned about before its first step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

#: the share of the device's matmul throughput that a training step of a ResNet reaches
EFFICIENCY = {"cpu": 0.35, "cuda": 0.3}
#: steps measured for the estimate, after the first (warm-up) step
MEASURED_STEPS = 3


@dataclass
class Plan:
    method: str
    views: str
    backbone: str
    images: str
    settings: str
    samples: int
    shards: int
    steps_per_epoch: int
    epochs: int
    total_steps: int
    batch: int
    processes: int
    device: str
    view_check: str = ""
    monitor: str = ""

    def text(self) -> str:
        proc = "process" if self.processes == 1 else "processes"
        rows = [("method", f"{self.method} ({self.views})"), ("backbone", self.backbone),
                ("images", self.images), ("settings", self.settings),
                ("data", f"{self.samples:,} samples in {self.shards} shard(s): {self.steps_per_epoch:,} steps per "
                         f"epoch x {self.epochs} epochs = {self.total_steps:,} steps"),
                ("batch", f"{self.batch} per process x {self.processes} {proc} = {self.batch * self.processes}"),
                ("device", self.device)]
        rows += [(k, v) for k, v in (("views", self.view_check), ("monitor", self.monitor)) if v]
        return "clvr train: plan\n" + "".join(f"  {k:<10}  {v}\n" for k, v in rows)


def duration(seconds: float) -> str:
    """A readable duration: 42 s, 3.5 min, 2.1 h, 3.0 days."""
    if seconds < 90:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.2g} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def estimate_text(seconds_per_step: float, steps_per_epoch: int, steps_left: int, how: str) -> str:
    return (f"clvr train: estimate ({how}): {duration(seconds_per_step)} per step, "
            f"{duration(seconds_per_step * steps_per_epoch)} per epoch, "
            f"{duration(seconds_per_step * steps_left)} for the {steps_left:,} steps to run")


def slow_warning(seconds_per_step: float, steps_per_epoch: int, limit_hours: float, hints: list[str]) -> str | None:
    """A warning when one epoch takes over ``limit_hours`` at the estimate (None otherwise, or
    when ``limit_hours`` is 0)."""
    epoch = seconds_per_step * steps_per_epoch
    if not limit_hours or epoch <= limit_hours * 3600:
        return None
    return (f"clvr train: WARNING: at this estimate one epoch takes {duration(epoch)} (over "
            f"slow_epoch_hours = {limit_hours:g}). " + " ".join(hints)
            + " Stop with Ctrl-C; set slow_epoch_hours=0 to silence this.")


def encoder_flops(encoder: torch.nn.Module, views, kind: str) -> float:
    """Forward FLOPs of ``encoder`` on every view of a batch: counted on one sample of each view
    (image views (B, ..., 3, H, W) are encoded as prod(...) images; video views (B, T, 3, H, W)
    as clips), times the batch."""
    from torch.utils.flop_counter import FlopCounterMode
    total = 0.0
    was_training = encoder.training
    encoder.eval()
    try:
        for v in views:
            if not torch.is_tensor(v) or v.dim() < 4 or not v.is_floating_point():
                continue
            x = v[:1]
            if kind != "video":
                x = x.reshape(-1, *v.shape[-3:])
            counter = FlopCounterMode(display=False)
            with torch.no_grad(), counter:
                encoder(x)
            total += counter.get_total_flops() * v.shape[0]
    finally:
        encoder.train(was_training)
    return float(total)


_MEASURED: dict = {}


def device_flops(device: torch.device) -> float:
    """This machine's float32 matmul throughput (FLOP/s) on ``device``, measured once (~0.2 s)."""
    key = str(device)
    if key in _MEASURED:
        return _MEASURED[key]
    n = 512
    # no draw from torch's generator: a resumed run must see the RNG state it saved
    a = torch.linspace(-1, 1, n * n, device=device).reshape(n, n)
    b = a.t().contiguous()
    a @ b                                       # warm-up
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < 0.2:
        a @ b
        reps += 1
    sync()
    _MEASURED[key] = 2 * n ** 3 * reps / (time.perf_counter() - start)
    return _MEASURED[key]


def predicted_step_seconds(flops_forward: float, device: torch.device) -> float:
    """Seconds per training step from the forward FLOPs of a batch (x 3: forward and backward)."""
    return 3 * flops_forward / (device_flops(device) * EFFICIENCY.get(device.type, 0.3))


class StepTimer:
    """Times the steps after the first: ``ready`` after :data:`MEASURED_STEPS` of them."""

    def __init__(self, warmup: int = 1, steps: int = MEASURED_STEPS):
        self.warmup, self.steps = warmup, steps
        self.seen, self.start, self.done = 0, None, False

    def step(self) -> float | None:
        """Call after each step; returns seconds per step once, when the measurement is done."""
        self.seen += 1
        if self.done:
            return None
        if self.seen == self.warmup:
            self.start = time.perf_counter()
        elif self.seen == self.warmup + self.steps and self.start is not None:
            self.done = True
            return (time.perf_counter() - self.start) / self.steps
        return None
