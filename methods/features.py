"""Features of a whole split, for the kNN monitor (:mod:`.knn`) and evaluation.

:func:`eval_loader` reads a shard set deterministically through the evaluation view
(:func:`eval_view`: resize + centre crop, normalised, no augmentation), without shuffling, and
every sample exactly once (the last batch is padded, the padding marked invalid). :func:`extract_features` runs an encoder over one
epoch of such a loader and returns, for the N samples of the split::

    features (N, D) float32,  labels (N,) int64,  index (N,) int64     (CPU, sorted by index)

so the result depends neither on the order of the batches nor on how many processes read them:
under ``torch.distributed`` every process gathers every other's rows and returns the full set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import nn

if TYPE_CHECKING:
    from ..pipeline.loader import ViewLoader

# Set by eval_loader itself: it must stay deterministic and see every sample once.
_FIXED = ("recipe", "shuffle", "last_batch")


#: views of at least this side get the ImageNet centre crop (0.875); smaller ones (CIFAR-like)
#: are evaluated whole, as their protocols do
CENTER_CROP_FROM = 128


def eval_view(size: int | None = None, center_crop: float | None = None, normalize: dict | None = None) -> dict:
    """The recipe of the deterministic evaluation view, as a dict for ``ViewLoader``.

    Args:
        size: side of the view in pixels (default 224).
        center_crop: side of the centre square kept, as a share of the image's shorter side,
            before resizing to ``size``; default 0.875 (resize 256, crop 224: the ImageNet
            protocol) for views of 128 px or more, else 1.0 (the largest centred square: the
            whole image for square images, the CIFAR protocol).
        normalize: ``{"mean": [...], "std": [...]}`` (0-1 scale) of the encoder's input; default
            ImageNet's.
    """
    size = int(size or 224)
    if center_crop is None:
        center_crop = 0.875 if size >= CENTER_CROP_FROM else 1.0
    recipe = {"base": "eval", "size": size, "crop": {"center": float(center_crop)}}
    if normalize:
        recipe["normalize"] = {"mean": [float(v) for v in normalize["mean"]],
                               "std": [float(v) for v in normalize["std"]]}
    return recipe


def eval_loader(data, batch_size: int = 256, views="two_view", size: int | None = None,
                device: str = "auto", center_crop: float | None = None, normalize: dict | None = None,
                **kw) -> ViewLoader:
    """A :class:`~clvr.pipeline.ViewLoader` of ``data`` that makes one plain view per sample.

    Args:
        data: shard-set spec, as for ``ViewLoader``.
        batch_size: samples per batch on this process.
        views: the view generator; ``two_view`` makes one view (``view_options={"views": 1}``),
            ``video_clips`` one clip (``{"clips": 1}``), unless ``view_options`` says otherwise.
        size: side of the views in pixels; default 224.
        device: where the loader decodes (``auto`` | ``cpu`` | ``gpu``).
        center_crop, normalize: as :func:`eval_view`.
        **kw: any other ``ViewLoader`` argument except ``recipe``, ``shuffle`` and
            ``last_batch``, which this function sets.
    """
    fixed = sorted(set(kw) & set(_FIXED))
    if fixed:
        raise ValueError(f"eval_loader sets {', '.join(fixed)} itself (the eval view, no shuffling, "
                         "padded last batch); use a ViewLoader to choose them")
    if kw.get("view_options") is None:
        kw["view_options"] = {"two_view": {"views": 1}, "video_clips": {"clips": 1}}.get(views) \
            if isinstance(views, str) else None
    from ..pipeline.loader import ViewLoader      # DALI: loaded only when a loader is made
    return ViewLoader(data, views, recipe=eval_view(size, center_crop, normalize), batch_size=batch_size, shuffle=False,
                      last_batch="pad", device=device, **kw)


class RawPixels(nn.Module):
    """The raw-pixel baseline as an "encoder": views (B, 3, H, W), or clips (B, T, 3, H, W),
    average-pooled to at most ``max_side`` px a side (so that a 224-px view does not give 150,528
    features), flattened to (B, D). Clips are averaged over time first. It has no parameters."""

    def __init__(self, max_side: int = 32):
        super().__init__()
        if max_side < 1:
            raise ValueError(f"raw pixels: max_side = {max_side} must be at least 1")
        self.max_side = int(max_side)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 5:
            x = x.float().mean(1)
        x = x.float()
        h, w = x.shape[-2:]
        if max(h, w) > self.max_side:
            scale = self.max_side / max(h, w)
            x = torch.nn.functional.adaptive_avg_pool2d(x, (max(1, round(h * scale)), max(1, round(w * scale))))
        return x.flatten(1)


@torch.no_grad()
def extract_features(encoder: nn.Module, loader) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``encoder`` applied to the first view of every valid sample of one epoch of ``loader``.

    The encoder runs in eval mode; every submodule's train/eval mode is restored afterwards.
    Views are moved to the device of the encoder's parameters. A video view of several clips
    (B, clips, T, 3, H, W) gives the encoder its first clip (B, T, 3, H, W).

    Under ``torch.distributed`` this is a collective (every process must call it): the rows of
    every process are gathered (``all_gather_object``, so the process group must be able to
    carry objects: with NCCL, the current CUDA device set). A sample index met more than once
    (padding, overlapping parts) is kept once.

    Returns:
        ``(features (N, D) float32, labels (N,) int64, index (N,) int64)`` on the CPU, sorted by
        index, one row per sample index.
    """
    modes = [(m, m.training) for m in encoder.modules()]
    param = next(encoder.parameters(), None)
    device = param.device if param is not None else None
    encoder.eval()
    feats, labels, index = [], [], []
    try:
        for batch in loader:
            keep = batch.valid.bool()
            if not bool(keep.any()):
                continue
            x = batch.views[0]
            if x.dim() == 6:                                  # video_clips: (B, clips, T, 3, H, W)
                x = x[:, 0]
            out = encoder(x if device is None else x.to(device, non_blocking=True))
            if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != len(batch):
                shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ValueError(f"the encoder must map a batch of {len(batch)} views to ({len(batch)}, D) "
                                 f"features; got {shape}")
            keep_cpu = keep.cpu()
            feats.append(out.float().cpu()[keep_cpu])
            labels.append(batch.label.cpu().long()[keep_cpu])
            index.append(batch.index.cpu().long()[keep_cpu])
    finally:
        for m, training in modes:
            m.training = training
    local = (torch.cat(feats), torch.cat(labels), torch.cat(index)) if feats else None
    parts = [local]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, local)
    parts = [p for p in parts if p is not None]
    if not parts:
        raise ValueError("the loader yielded no valid sample: no features to extract")
    return _sorted_unique(*(torch.cat(t) for t in zip(*parts)))


def _sorted_unique(features: torch.Tensor, labels: torch.Tensor, index: torch.Tensor):
    """The rows sorted by index, the first of each run of equal indices kept."""
    order = torch.argsort(index, stable=True)
    index = index[order]
    first = torch.ones_like(index, dtype=torch.bool)
    first[1:] = index[1:] != index[:-1]
    keep = order[first]
    return features[keep], labels[keep], index[first]
