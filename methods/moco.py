"""MoCo v1 and v2 (He et al., 2020; Chen et al., 2020): a query encoder, a momentum key encoder
and a queue of the keys of past batches as negatives.

Queries ``q = f(view 0)``, keys ``k = f_m(view 1)`` from the momentum copy (m = 0.999, updated in
:meth:`MoCoV1.after_step`), InfoNCE of ``q`` against ``k`` and the queue. The step's keys enter
the queue *after* the loss, so they are never their own negatives. With ``symmetric`` every view
is a query against every other view's key (the keys of all views are enqueued), and with ρ > 2
views (video) the query of view 0 meets every other view's key.

Shuffle-BN: BatchNorm statistics shared by a query and its key let the model cheat, so keys are
computed on a batch shuffled across processes (:func:`~clvr.methods.distributed.shuffle_across_processes`).
On one process there is nothing to shuffle with; the keys are then computed in ``bn_splits``
groups of a shuffled batch, each with its own BatchNorm statistics (the remedy of MoCo's
single-GPU CIFAR demo), so a key's statistics come from samples other than its query's.

``head = mlp_bn`` puts BatchNorm in the projection head (MoCo v2's has none). On small data
without it the keys sit in a narrow cone (mean cosine 0.63-0.77 between different images on the
digits; SimCLR's BatchNorm head 0.00-0.05), and the queue's negatives are then nearly alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .distributed import rank_and_world, shuffle_across_processes, unshuffle_across_processes
from .encoder import Encoder
from .errors import MethodError
from .heads import head
from .logs import contrast_logs
from .losses import info_nce_from_logits, info_nce_logits
from .method import Method, MethodOutput, pairs
from .momentum import MomentumEncoder
from .queue import KeyQueue
from .registry import register_method


def has_batch_norm(net: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


@register_method("moco_v1")
class MoCoV1(Method):
    views = "two_view"
    recipe = "mocov1"
    gathers = True
    training = {"optim": {"name": "sgd", "lr": 0.03, "weight_decay": 1e-4, "momentum": 0.9},
                "schedule": {"kind": "step", "milestones": [120, 160], "gamma": 0.1}, "epochs": 200}
    paper = "He et al., Momentum Contrast for Unsupervised Visual Representation Learning, CVPR 2020"
    reported = "60.6"

    @dataclass
    class Config(Method.Config):
        head: str = "linear"          # linear (v1) | mlp (v2) | mlp_bn (an MLP with BatchNorm, as SimCLR's)
        hidden: int = 2048
        dim: int = 128
        queue: int = 65536
        temperature: float = 0.07
        momentum: float = 0.999
        shuffle_bn: bool = True
        bn_splits: int = 8            # one process: BatchNorm groups of the key batch
        symmetric: bool = False

    @classmethod
    def check_config(cls, config) -> None:
        super().check_config(config)
        if config.head not in ("linear", "mlp", "mlp_bn"):
            raise MethodError(f"method {cls.name!r}: head = {config.head!r}; choose linear, mlp or mlp_bn")
        if not 0.0 <= config.momentum <= 1.0:
            raise MethodError(f"method {cls.name!r}: momentum must be in [0, 1], got {config.momentum}")
        if config.bn_splits < 1 or config.queue < 1:
            raise MethodError(f"method {cls.name!r}: bn_splits and queue must be positive")

    @classmethod
    def check_training(cls, config, batch_size: int, world_size: int = 1, view_options: dict | None = None) -> None:
        """The queue must hold whole steps of keys: at least one, and a multiple of it."""
        from .train_config import ConfigError
        super().check_training(config, batch_size, world_size, view_options)
        views = int((view_options or {}).get("views", 2))
        key_views = views if config.symmetric else max(views - 1, 1)
        keys = batch_size * world_size * key_views
        step = (f"the {keys} keys one step enqueues (data.batch_size {batch_size} x {world_size} process(es) "
                f"x {key_views} key view(s))")
        if config.queue < keys:
            raise ConfigError(f"config model.queue = {config.queue} is smaller than {step}: the queue would not "
                              f"hold one batch of negatives; use a multiple of {keys} (MoCo's is 65536)")
        if config.queue % keys:
            raise ConfigError(f"config model.queue = {config.queue} is not a multiple of {step}, so a batch would "
                              f"wrap around its end; use {keys * max(config.queue // keys, 1)} or another multiple")

    def __init__(self, config=None, **kw):
        super().__init__(config, **kw)
        c = self.config
        backbone = self.make_backbone()
        options = {"out_dim": c.dim} if c.head == "linear" else {"hidden": c.hidden, "out_dim": c.dim}
        self.online = Encoder(backbone, head(c.head, backbone.num_features, **options), normalize=True)
        self.key_encoder = MomentumEncoder(self.online)
        self.queue = KeyQueue(c.queue, c.dim)

    def objective(self, batch) -> MethodOutput:
        c = self.config
        views = self.views_to_contrast(batch, at_least=2)
        if c.symmetric:
            roles = pairs(len(views), ordered=True)
        else:
            roles = [(0, j) for j in range(1, len(views))]
        query_views, key_views = sorted({i for i, _ in roles}), sorted({j for _, j in roles})
        q = dict(zip(query_views, self.embed(self.online, [views[i] for i in query_views])))
        k = {j: self.keys(views[j]) for j in key_views}
        negatives = self.queue.negatives()              # before this step's keys go in
        logits = [info_nce_logits(q[i], k[j], negatives, c.temperature, normalize=False) for i, j in roles]
        loss = torch.stack([info_nce_from_logits(x) for x in logits]).mean()
        logs = contrast_logs(logits[0].detach() * c.temperature)       # cosines of the first pair
        self.queue.enqueue(torch.cat([k[j] for j in key_views]))
        return MethodOutput(loss, logs)

    @torch.no_grad()
    def keys(self, x: torch.Tensor) -> torch.Tensor:
        """Keys of ``x`` from the momentum encoder, with shuffle-BN (see the module doc)."""
        net = self.key_encoder
        if not (self.config.shuffle_bn and self.training and has_batch_norm(net)):
            return net(x)
        if rank_and_world()[1] > 1:
            shuffled, order = shuffle_across_processes(x)
            return unshuffle_across_processes(net(shuffled), order)
        splits = min(self.config.bn_splits, x.shape[0] // 2)
        if splits <= 1:
            return net(x)
        order = torch.randperm(x.shape[0], device=x.device)
        keys = torch.cat([net(part) for part in x[order].tensor_split(splits)])
        return keys[torch.argsort(order)]

    def after_step(self, step: int, total_steps: int) -> dict:
        self.key_encoder.update(self.online, self.config.momentum)
        return {}


@register_method("moco_v2")
class MoCoV2(MoCoV1):
    recipe = "mocov2"
    training = {"optim": {"name": "sgd", "lr": 0.03, "weight_decay": 1e-4, "momentum": 0.9},
                "schedule": {"kind": "cosine"}, "epochs": 200}
    paper = "Chen et al., Improved Baselines with Momentum Contrastive Learning, 2020"
    reported = "67.5 (200 epochs), 71.1 (800 epochs)"

    @dataclass
    class Config(MoCoV1.Config):
        head: str = "mlp"
        temperature: float = 0.2
