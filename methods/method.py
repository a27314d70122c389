"""``Method``: the base class of every contrastive method, built in or plugged in.

One training step, from shard to loss::

    ViewLoader(shards, method.views, recipe=method.recipe,       clvr.pipeline: a ViewBatch
               view_options=method.view_options)
      -> method(batch)                                           Method.forward:
           1. padding samples are dropped                          prepare()
           2. the views are embedded                               the method's encoders
           3. negatives come from the batch, the memory bank       gathering: .distributed
              or the queue; keys from the momentum encoder         state: .memory_bank, .queue
           4. the loss, a pure function of tensors                 .losses
           5. the bank / queue take this step's features           state again, after the loss
      -> MethodOutput(loss, logs)
    loss.backward(); optimizer.step()
    method.after_step(step, total_steps)                          momentum encoders follow

A method is a thin subclass that says what it reads (``views``, ``recipe``, ``view_options``),
holds its hyper-parameters in a ``Config`` dataclass whose defaults are the paper's, builds its
networks in ``__init__`` and computes ``objective(batch)``. Configs are strict: an unknown key is
an error naming the valid keys and the nearest one; a value of the wrong type is an error too.

Batches are not assumed to hold two views: a method asks for the views it needs
(:meth:`image_views`) and says clearly what it got instead.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
from torch import nn

from ..pipeline.batch import ViewBatch
from ..pipeline.recipe import apply_overrides
from .backbones import INPUT_NORMS
from .backbones import backbone as make_image_backbone
from .distributed import max_across_processes, rank_and_world
from .errors import MethodError


#: method settings that are sizes (at least 1), with what they size
SIZE_FIELDS = {"dim": "the embedding's width", "hidden": "the head's hidden width",
               "predictor_hidden": "the predictor's hidden width", "queue": "keys kept as negatives",
               "negatives": "negatives drawn per sample", "text_length": "bytes per caption",
               "steps": "rows predicted ahead", "context_layers": "layers of the context network",
               "directions": "directions predicted", "bn_splits": "BatchNorm groups"}


class MethodOutput(NamedTuple):
    """What a step returns: the scalar ``loss`` to minimise and detached ``logs`` (0-d tensors;
    see :mod:`clvr.methods.logs` for the keys every method reports)."""
    loss: torch.Tensor
    logs: dict


class Method(nn.Module):
    #: registry name (set by :func:`clvr.methods.register_method`)
    name: ClassVar[str] = ""
    #: the view generator the method reads, its options, and the augmentation preset
    views: ClassVar[str] = "two_view"
    view_options: ClassVar[dict] = {}
    recipe: ClassVar[str | None] = None
    #: negatives come from the batch itself: gradient accumulation would change them
    in_batch_negatives: ClassVar[bool] = False
    #: what to try when the features collapse (the collapse monitor's message ends with it)
    collapse_hint: ClassVar[str] = ("for a contrastive method, try a higher model.temperature, a projection head with "
                                    "BatchNorm (model.head=mlp_bn, where the method has one), a lower optim.lr, or "
                                    "views whose shortcuts the view check in the plan did not flag")
    #: gathers across processes (all processes must then have equal, unpadded batches); methods
    #: whose gathering is optional set it per instance from their config
    gathers: bool = False
    #: needs the data set's size (a memory bank keyed by sample index)
    needs_num_samples: ClassVar[bool] = False
    #: the paper's training settings, as overrides of clvr train's config (optim, schedule, epochs)
    training: ClassVar[dict] = {}
    #: the paper, and the ImageNet linear top-1 it reports (what a user is reproducing)
    paper: ClassVar[str] = ""
    reported: ClassVar[str] = ""

    @dataclass
    class Config:
        backbone: str = "resnet50"     # resnet18 | resnet34 | resnet50 | tiny | timm:NAME
        stem: str = "imagenet"         # imagenet | cifar (small images)
        norm: str = "batch"            # batch | layer
        width: int = 0                 # channels of the first stage; 0: the backbone's own (64 for ResNets)
        input_norm: str = "none"       # none | image: each image standardised by its own statistics first

    def __init__(self, config=None, *, num_samples: int | None = None, **overrides):
        super().__init__()
        self.config = self.make_config(config, **overrides)
        if self.needs_num_samples and not num_samples:
            raise MethodError(f"method {self.name!r} keeps a memory bank with one slot per sample: "
                              "give num_samples (the size of the training set)")
        self.num_samples = num_samples

    # -- configuration ------------------------------------------------------------------------

    @classmethod
    def make_config(cls, config=None, **overrides):
        """``cls.Config`` from an instance, a dict (e.g. from YAML) and/or keyword overrides,
        strictly checked."""
        if config is None or isinstance(config, dict):
            changes = dict(config or {})
            config = cls.Config()
        elif isinstance(config, cls.Config):
            changes = {}
        else:
            raise MethodError(f"method {cls.name!r}: config must be a {cls.__name__}.Config or a dict, "
                              f"got {type(config).__name__}")
        changes.update(overrides)
        config = apply_overrides(config, changes, f"method {cls.name!r} config", error=MethodError) \
            if changes else config
        cls.check_config(config)
        return config

    @classmethod
    def check_config(cls, config) -> None:
        """Raise :class:`MethodError` for values that are well-typed but wrong (e.g. a
        non-positive temperature). Subclasses extend it. For every method: floats must be finite,
        sizes (:data:`SIZE_FIELDS`: feature and hidden widths, queue and negatives) at least 1."""
        for f in dataclasses.fields(config):
            value = getattr(config, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise MethodError(f"method {cls.name!r}: {f.name} = {value} must be a finite number")
            if f.name in SIZE_FIELDS and isinstance(value, int) and not isinstance(value, bool) and value < 1:
                raise MethodError(f"method {cls.name!r}: {f.name} = {value} must be at least 1 ({SIZE_FIELDS[f.name]})")
            if f.name == "temperature" and not getattr(config, f.name) > 0:
                raise MethodError(f"method {cls.name!r}: temperature = {config.temperature} must be positive "
                                  "(the similarities are divided by it; the papers use 0.07 to 0.5)")
        if getattr(config, "width", 0) < 0:
            raise MethodError(f"method {cls.name!r}: width must be 0 (the backbone's own) or positive, "
                              f"got {config.width}")
        input_norm = getattr(config, "input_norm", "none")
        if input_norm not in INPUT_NORMS:
            raise MethodError(f"method {cls.name!r}: input_norm = {input_norm!r}; choose "
                              f"{' or '.join(map(repr, INPUT_NORMS))}")
        if input_norm != "none" and str(getattr(config, "backbone", "")).startswith("timm:"):
            raise MethodError(f"method {cls.name!r}: input_norm = {input_norm!r} needs one of clvr's backbones "
                              f"(resnet18, resnet34, resnet50, tiny), not {config.backbone!r}")

    @classmethod
    def check_training(cls, config, batch_size: int, world_size: int = 1, view_options: dict | None = None) -> None:
        """Refuse training settings this method cannot learn from, before anything is built:
        ``config`` is the method's checked Config, ``batch_size`` the batch per process.
        Subclasses extend it (MoCo's queue must hold whole global batches of keys)."""
        from .train_config import ConfigError
        if cls.in_batch_negatives and batch_size < 2:
            raise ConfigError(f"config data.batch_size = {batch_size}: method {cls.name!r} takes its negatives "
                              "from the other images of the batch, and a batch of one image has none; use at "
                              "least 2 (the papers use 256 to 4096)")

    @classmethod
    def evaluation_grid(cls, view_options: dict | None) -> dict | None:
        """How evaluation reads the encoder: None, on the whole image (every method but CPC); or
        the patch grid (side, grid, patch, stride, pool) whose patch features are the
        representation (:class:`~clvr.methods.patch_grid.PatchGridPool`), for a method trained on
        patches.
        ``view_options`` are the training views' options (the method's under the config's)."""
        return None

    @classmethod
    def defaults(cls) -> dict:
        """The default config as plain data (the paper's hyper-parameters)."""
        return dataclasses.asdict(cls.Config())

    #: what the backbone reads: "image" (B, 3, H, W) or "video" (B, T, 3, H, W)
    input_kind: ClassVar[str] = "image"

    def backbone_options(self) -> dict:
        """The options :meth:`make_backbone` passes with the name (also written into exports)."""
        c = self.config
        if c.backbone.startswith("timm:"):
            return {}
        return {"stem": c.stem, "norm": c.norm, **({"width": c.width} if c.width else {}),
                **({"input_norm": c.input_norm} if c.input_norm != "none" else {})}

    def make_backbone(self) -> nn.Module:
        try:
            return make_image_backbone(self.config.backbone, **self.backbone_options())
        except ValueError as e:
            raise MethodError(f"method {self.name!r}: {e}") from None

    # -- one step -----------------------------------------------------------------------------

    def forward(self, batch: ViewBatch) -> MethodOutput:
        return self.objective(self.prepare(batch))

    def objective(self, batch: ViewBatch) -> MethodOutput:
        raise NotImplementedError(f"{type(self).__name__} must implement objective(batch)")

    def after_step(self, step: int, total_steps: int) -> dict:
        """Called after each optimiser step (momentum encoders follow the online network here).
        ``step`` counts finished steps from 0; returns logs."""
        return {}

    @property
    def encoder(self) -> nn.Module:
        """The representation to evaluate and export (the backbone, without heads): that of the
        ``online`` :class:`~clvr.methods.encoder.Encoder` when the method has one, else
        ``self.backbone``."""
        online = self._modules.get("online")
        return online.backbone if online is not None else self.backbone

    def lr_scales(self) -> dict:
        """Modules whose parameters learn at a multiple of ``optim.lr`` ({module: factor}); none
        by default (BYOL's ``predictor_lr``)."""
        return {}

    @property
    def projection_head(self) -> nn.Module | None:
        """The head whose output the loss compares (the collapse monitor measures its effective
        rank): the ``online`` encoder's head when the method has one, else None."""
        online = self._modules.get("online")
        return online.head if online is not None else None

    # -- helpers for subclasses ---------------------------------------------------------------

    def prepare(self, batch: ViewBatch) -> ViewBatch:
        """Drop invalid samples (padding, and repeats a stream rebuilt after a skip brought
        again). Under several processes a method that gathers needs the same number of rows
        from every process: padding is then an error, and after a skip's repeats every process
        keeps as many valid rows as the process with fewest (the rest are not seen this epoch)."""
        if not isinstance(batch, ViewBatch):
            raise MethodError(f"method {self.name!r} takes a clvr.pipeline ViewBatch, got {type(batch).__name__}")
        valid = int(batch.valid.sum())
        padded = valid < len(batch)
        if self.gathers and rank_and_world()[1] > 1:
            # decided together: padding often sits on some processes only (the last batch of an
            # epoch under last_batch="pad"), and the others must not wait in a gather for them
            padding = len(batch) - valid - batch.dropped
            any_padding, fewest = max_across_processes([int(padding > 0), -valid], batch.valid.device)
            if any_padding:
                raise MethodError(f"method {self.name!r} gathers across processes, but step {batch.step} of "
                                  f"epoch {batch.epoch} holds padding samples on at least one process "
                                  f"({padding} here); read with last_batch='drop'")
            if -fewest < valid:
                keep = batch.valid & (torch.cumsum(batch.valid.long(), 0) <= -fewest)
                batch = batch.select(keep)
                if len(batch) == 0:
                    raise MethodError(f"method {self.name!r}: step {batch.step} of epoch {batch.epoch}: a process "
                                      "has no valid sample left after a skip")
                return batch
        if not padded:
            return batch
        batch = batch.select(batch.valid)
        if len(batch) == 0:
            raise MethodError(f"method {self.name!r}: step {batch.step} of epoch {batch.epoch} holds only padding")
        return batch

    def views_to_contrast(self, batch: ViewBatch, count: int | None = None, at_least: int = 1) -> list[torch.Tensor]:
        """The views that the objective compares, each with the batch first: the image views
        by default (video methods return one clip tensor per clip)."""
        return self.image_views(batch, count, at_least)

    def image_views(self, batch: ViewBatch, count: int | None = None, at_least: int = 1) -> list[torch.Tensor]:
        """The batch's image views, each (B, 3, H, W); ``count`` exactly, or ``at_least``."""
        views = [v for v in batch.views if v.dim() == 4 and v.shape[1] == 3]
        n = len(views)
        if (count is not None and n != count) or n < at_least or n != len(batch.views):
            want = f"exactly {count}" if count is not None else f"at least {at_least}"
            raise MethodError(f"method {self.name!r} needs {want} image views (B, 3, H, W); "
                              f"{self.describe_batch(batch)}")
        return views

    def view(self, batch: ViewBatch, name: str, dims: int) -> torch.Tensor:
        """View (or extra) ``name`` of the batch, which must have ``dims`` dimensions."""
        try:
            t = batch[name]
        except KeyError:
            raise MethodError(f"method {self.name!r} needs a view named {name!r}; "
                              f"{self.describe_batch(batch)}") from None
        if t.dim() != dims:
            raise MethodError(f"method {self.name!r}: view {name!r} must have {dims} dimensions, "
                              f"got {tuple(t.shape)}; {self.describe_batch(batch)}")
        return t

    def describe_batch(self, batch: ViewBatch) -> str:
        shapes = ", ".join(f"{n} {tuple(v.shape)}" for n, v in zip(batch.names, batch.views))
        return (f"the batch (generator {batch.kind or '?'!r}) has {shapes or 'no views'}; "
                f"this method reads the {self.views!r} generator")

    @staticmethod
    def embed(net: nn.Module, views: list[torch.Tensor], separately: bool = False) -> list[torch.Tensor]:
        """``net`` applied to every view, one call per resolution (views of one size are
        concatenated, as SimCLR's and SwAV's code do; BatchNorm sees them together). With
        ``separately`` each view is its own call, so BatchNorm normalises each view by its own
        batch statistics (BYOL's reference code)."""
        out: list = [None] * len(views)
        groups: dict[tuple, list[int]] = {}
        for i, v in enumerate(views):
            groups.setdefault((i,) if separately else tuple(v.shape[1:]), []).append(i)
        for idx in groups.values():
            z = net(torch.cat([views[i] for i in idx]))
            for i, part in zip(idx, z.chunk(len(idx))):
                out[i] = part
        return out


def pairs(n: int, ordered: bool = False) -> list[tuple[int, int]]:
    """Index pairs of ``n`` views: (i, j), i < j; or every i != j when ``ordered``."""
    return [(i, j) for i in range(n) for j in range(n) if (i != j if ordered else i < j)]
