"""Supervised training of an encoder with a linear classifier on labelled shards.

One loop serves three purposes of ``clvr eval``:

- **fine-tuning** a pre-trained encoder on a few labels (semi-supervised evaluation, 1% / 10%)
  or on another data set (transfer);
- **fine-tuning a random initialisation** under the same settings (the ``random_init``
  baseline of those protocols);
- **supervised training from scratch** (the ``supervised`` baseline), with its own settings.

The whole network is trained (``Classifier``: the encoder, then one linear layer) with SGD,
Nesterov momentum and a cosine decay of the learning rate (base lr x batch_size / 256, with the
configured batch size: a label subset smaller than one batch is trained on whole, at that lr), on views
made by the pipeline with random resized crops and horizontal flips (SimCLR's fine-tuning
augmentation). A label subset is read by global sample index (``samples=``), so the other
samples are never decoded. The last batch of an epoch is padded and the padding masked out of
the loss, so every labelled sample counts once per epoch however small the subset. Rows without a
label (label -1) are masked out of the loss too, and counted (``report``): give ``samples=`` the
labelled ones to keep them out of the batches altogether.

Accuracy is measured by :func:`predict` through the deterministic evaluation view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class FinetuneConfig:
    epochs: int = 0                  # 0: SimCLR's: 60 on <= 1% of the labels, 30 on more
    min_steps: int = 0               # at least this many steps (tiny subsets have 1 step an epoch)
    batch_size: int = 256
    lr: float = 0.05                 # x batch_size / 256 (the configured batch, also when a small
                                     # label subset makes the actual batches smaller)
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 0.0
    crop_scale: tuple[float, float] = (0.08, 1.0)   # random resized crop's area fraction
    flip: float = 0.5                # horizontal flip probability
    seed: int = 0


def check_config(c: FinetuneConfig, where: str, error=ValueError) -> None:
    if c.epochs < 0 or c.min_steps < 0:
        raise error(f"{where}: epochs = {c.epochs} and min_steps = {c.min_steps} must not be negative")
    if c.batch_size < 1:
        raise error(f"{where}.batch_size = {c.batch_size} must be at least 1")
    if not c.lr > 0 or c.weight_decay < 0 or not 0 <= c.momentum < 1:
        raise error(f"{where}: lr must be positive, weight_decay not negative and momentum in [0, 1)")
    lo, hi = c.crop_scale
    if not 0 < lo <= hi <= 1:
        raise error(f"{where}.crop_scale = {tuple(c.crop_scale)} must satisfy 0 < low <= high <= 1")
    if not 0 <= c.flip <= 1:
        raise error(f"{where}.flip = {c.flip} must be a probability")


def epochs_for(c: FinetuneConfig, fraction: float) -> int:
    """The configured epochs, or SimCLR's (60 for 1% of the labels or fewer, else 30)."""
    return c.epochs or (60 if fraction <= 0.01 + 1e-9 else 30)


class Classifier(nn.Module):
    """An encoder followed by a linear layer over its features."""

    def __init__(self, encoder: nn.Module, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(int(encoder.num_features), num_classes)

    def forward(self, x):
        return self.head(self.encoder(x))


def train_recipe(c: FinetuneConfig, size: int, normalize: dict | None = None) -> dict:
    """The augmentation of the training views: random resized crop and flip, nothing else, and
    the encoder's normalisation (``{"mean", "std"}``; default ImageNet's)."""
    recipe = {"base": "none", "size": int(size),
              "crop": {"p": 1.0, "scale": [float(c.crop_scale[0]), float(c.crop_scale[1])]},
              "flip": {"p": float(c.flip)}}
    if normalize:
        recipe["normalize"] = {"mean": [float(v) for v in normalize["mean"]],
                               "std": [float(v) for v in normalize["std"]]}
    return recipe


def finetune(encoder: nn.Module, data, num_classes: int, *, size: int, config: FinetuneConfig | None = None,
             samples=None, fraction: float = 1.0, views: str = "two_view", device: str = "auto",
             torch_device=None, threads: int | None = None, progress: bool = False,
             desc: str = "fine-tune", normalize: dict | None = None, on_error: str = "raise",
             report: dict | None = None) -> Classifier:
    """Train ``encoder`` (in place) and a new linear layer on the labelled shards ``data``.

    Args:
        encoder: a backbone with ``num_features``; its weights are the starting point.
        data: labelled shard-set spec.
        num_classes: classes of the linear layer.
        size: side of the training views in pixels.
        config: the optimisation settings (default :class:`FinetuneConfig`).
        samples: global sample indices to train on (a label subset); default all.
        fraction: the share of the labels ``samples`` stands for (chooses the default epochs).
        views: ``two_view`` for images, ``video_clips`` for videos (one view or clip a sample).
        device: where the pipeline decodes (auto | cpu | gpu).
        torch_device: where the network trains; default CUDA when available, else CPU.
        threads: pipeline threads.
        progress: show a progress bar.
        normalize: the encoder's input normalisation (its sidecar's mean and std).
        on_error: ``raise`` or ``skip`` unreadable samples (the loader's ``on_error``).
        report: a dict filled with what the caller should report: ``skipped`` (the samples the
            loader skipped: ``{"shard", "key", "reason"}``), ``unlabelled_rows`` (rows without a
            label met, left out of the loss) and ``repeats_dropped``.

    Returns:
        the trained :class:`Classifier`, in eval mode.
    """
    from ..pipeline.loader import ViewLoader

    c = config or FinetuneConfig()
    check_config(c, "finetune")
    dev = torch.device(torch_device) if torch_device is not None else \
        torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(c.seed)
    model = Classifier(encoder, num_classes).to(dev)
    view_options = {"views": 1} if views == "two_view" else {"clips": 1}
    if samples is not None:
        samples = sorted({int(i) for i in samples})
        n = len(samples)
    else:
        from ..pipeline.source import resolve
        n = resolve(data).num_samples or c.batch_size
    batch = min(c.batch_size, n)
    loader = ViewLoader(data, views, recipe=train_recipe(c, size, normalize), batch_size=batch, shuffle=True,
                        seed=c.seed, last_batch="pad", samples=samples, view_options=view_options,
                        device=device, num_threads=threads, torch_device=dev, on_error=on_error)
    steps_per_epoch = len(loader)
    steps = max(epochs_for(c, fraction) * steps_per_epoch, c.min_steps)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.dim() <= 1 else decay).append(p)          # no decay on BN and biases
    opt = torch.optim.SGD([{"params": decay, "weight_decay": c.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=c.lr * c.batch_size / 256, momentum=c.momentum, nesterov=c.nesterov and c.momentum > 0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    bar = None
    if progress:
        from ..shards.progress import bar as progress_bar      # plain lines when stderr is a log file
        bar = progress_bar(steps, desc, "step", leave=False)
    model.train()
    step = unlabelled = 0
    try:
        while step < steps:
            before = step
            for b in loader:
                if step >= steps:
                    break
                keep = b.valid.to(dev).bool()
                x = b.views[0]
                if x.dim() == 6:                          # (B, clips, T, 3, H, W)
                    x = x[:, 0]
                labels = b.label.to(dev).long()
                unlabelled += int((keep & (labels < 0)).sum())
                keep = keep & (labels >= 0)               # no label (-1): not in the loss
                if not bool(keep.any()):
                    continue
                loss = masked_cross_entropy(model(x.to(dev)), labels, keep)
                if not math.isfinite(float(loss.detach())):
                    raise ValueError(f"{desc}: the loss became {float(loss)} at step {step}; lower the lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
            if step == before:
                raise ValueError(f"{data}: a whole epoch without a labelled sample (all {unlabelled} rows read "
                                 "have label -1): nothing to fine-tune on")
    finally:
        if bar is not None:
            bar.close()
        if report is not None:
            report.update(skipped=[dict(e) for e in loader.skipped], unlabelled_rows=unlabelled,
                          repeats_dropped=int(loader.repeats_dropped))
        else:
            import sys
            if unlabelled:
                print(f"{desc}: {unlabelled} rows without a label (-1) were left out of the loss", file=sys.stderr)
            for e in loader.skipped:
                print(f"{desc}: skipped {e.get('shard')}: key {e.get('key')}: {e.get('reason')}", file=sys.stderr)
        loader.close()
    return model.eval()


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the rows marked ``valid`` (a padded batch's padding does not count)."""
    per_row = F.cross_entropy(logits, labels.clamp(min=0), reduction="none")
    return (per_row * valid).sum() / valid.sum().clamp(min=1)


@torch.no_grad()
def predict(model: nn.Module, loader) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scores (N, C), labels (N,))`` of every sample of one epoch of an evaluation loader,
    one row per sample index, in index order."""
    from .features import extract_features
    scores, labels, _ = extract_features(model, loader)
    return scores, labels
