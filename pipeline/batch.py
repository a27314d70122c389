"""``ViewBatch``: the one batch structure every view generator produces.

Methods read views by position (``batch.views[0]``) or by name (``batch["global0"]``), and the
sample bookkeeping from fixed fields, whatever the generator:

============  =====================================================================
field         meaning
============  =====================================================================
``views``     tuple of tensors, one per view, each with the batch first (see the
              generator's ``view_names`` and shapes in :mod:`clvr.pipeline.views`)
``names``     the name of each view, e.g. ``("view0", "view1")``
``index``     (B,) int64: the global sample index from the shards (memory-bank key)
``label``     (B,) int64: class id, -1 when unlabelled
``valid``     (B,) bool: False for padding samples (``last_batch="pad"``), and for samples
              that a stream rebuilt after a skip brought again in its epoch
``dropped``   how many of the invalid samples are such repeats (not padding)
``extras``    dict of generator-specific tensors (jigsaw ``perm``, object ``mask``...)
``boxes``     list of (K_i, 4) float tensors ``[x, y, w, h]`` px, when the set has boxes
``box_classes``  list of (K_i,) int64 tensors, when the set has boxes
``text``      list of str (one caption per sample), when the set has captions
``epoch``, ``step``  position of the batch: epoch number and step within it
============  =====================================================================

Tensors are on the loader's device when the batch arrives.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch


@dataclass
class ViewBatch:
    views: tuple
    names: tuple
    index: torch.Tensor
    label: torch.Tensor
    valid: torch.Tensor
    kind: str = ""
    extras: dict = field(default_factory=dict)
    boxes: list | None = None
    box_classes: list | None = None
    text: list | None = None
    epoch: int = 0
    step: int = 0
    dropped: int = 0

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def __getitem__(self, name: str) -> torch.Tensor:
        if name in self.names:
            return self.views[self.names.index(name)]
        if name in self.extras:
            return self.extras[name]
        raise KeyError(f"batch of {self.kind!r} has no view or extra {name!r}; "
                       f"views: {', '.join(self.names)}; extras: {', '.join(self.extras) or 'none'}")

    @property
    def device(self) -> torch.device:
        return self.index.device

    def to(self, device, non_blocking: bool = False) -> "ViewBatch":
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return replace(self, views=tuple(move(v) for v in self.views), index=move(self.index),
                       label=move(self.label), valid=move(self.valid),
                       extras={k: move(v) for k, v in self.extras.items()},
                       boxes=[move(b) for b in self.boxes] if self.boxes is not None else None,
                       box_classes=[move(b) for b in self.box_classes] if self.box_classes is not None else None)

    def select(self, keep: torch.Tensor) -> "ViewBatch":
        """The samples where boolean ``keep`` is True (e.g. dropping padding)."""
        idx = torch.nonzero(keep.to(self.index.device), as_tuple=False).flatten()
        pick = lambda t: t.index_select(0, idx.to(t.device))  # noqa: E731
        listed = lambda xs: [xs[i] for i in idx.tolist()] if xs is not None else None  # noqa: E731
        return replace(self, views=tuple(pick(v) for v in self.views), index=pick(self.index),
                       label=pick(self.label), valid=pick(self.valid),
                       extras={k: pick(v) for k, v in self.extras.items()},
                       boxes=listed(self.boxes), box_classes=listed(self.box_classes), text=listed(self.text))

    def describe(self) -> str:
        """One line per field with shape and dtype."""
        lines = [f"ViewBatch({self.kind}, {len(self)} samples, epoch {self.epoch}, step {self.step})"]
        for n, v in zip(self.names, self.views):
            lines.append(f"  view {n:10s} {tuple(v.shape)} {v.dtype}")
        for n, v in self.extras.items():
            lines.append(f"  extra {n:9s} {tuple(v.shape)} {v.dtype}")
        for n in ("index", "label", "valid"):
            t = getattr(self, n)
            lines.append(f"  {n:16s} {tuple(t.shape)} {t.dtype}")
        if self.boxes is not None:
            lines.append(f"  boxes            {len(self.boxes)} tensors (K_i, 4)")
        if self.text is not None:
            lines.append(f"  text             {len(self.text)} strings")
        return "\n".join(lines)
