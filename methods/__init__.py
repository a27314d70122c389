"""``clvr.methods``: contrastive objectives, methods, training and evaluation.

A step, from shard to loss, is in :mod:`.method` (read its doc first). Each concept is in the
module named after it:

- :mod:`.method`       the base class ``Method`` every method derives from, ``MethodOutput``;
- :mod:`.registry`     methods by name, and plug-ins (``module:Class``, entry-point group
  ``clvr.methods``);
- the methods: :mod:`.instdisc`, :mod:`.pirl`, :mod:`.cpc` (v1, v2), :mod:`.moco` (v1, v2),
  :mod:`.simclr`, :mod:`.byol`, :mod:`.object_contrast`, :mod:`.video_contrast`, :mod:`.clip`;
- :mod:`.losses`       the objectives as pure functions (InfoNCE, NT-Xent, NCE, BYOL, CPC,
  pairwise InfoNCE);
- :mod:`.memory_bank`  InstDisc/PIRL's bank, one slot per global sample index;
- :mod:`.queue`        MoCo's FIFO of keys from every process;
- :mod:`.momentum`     momentum (EMA) encoders: constant (MoCo) or BYOL's cosine schedule;
- :mod:`.distributed`  an all-gather whose gradient is right across processes, and MoCo's
  shuffle across processes;
- :mod:`.logs`         the similarities and accuracy every method logs;
- :mod:`.encoder`      backbone + head;
- :mod:`.backbones`    ResNet-18/34/50 (ImageNet or CIFAR stem; BatchNorm, LayerNorm or none), a
  tiny net for tests, and timm models by name;
- :mod:`.video_backbones`  a (2+1)D ResNet and frame-wise image backbones with temporal pooling;
- :mod:`.text_encoder` a small transformer over UTF-8 bytes;
- :mod:`.heads`        projection and prediction heads (linear, MLP, MLP with BatchNorm);
- :mod:`.cpc_context`  CPC's causal (PixelCNN-style) context network, one or several directions.

May import :mod:`clvr.pipeline` and :mod:`clvr.shards`.
"""

from .errors import MethodError

__all__ = ["Method", "MethodError", "MethodOutput", "available", "get_method", "register_method"]


def __getattr__(name):
    # Method loads torch: `import clvr.methods` stays light, so the `clvr` command can build its
    # parser (clvr.methods.cli) without it.
    if name in ("Method", "MethodOutput"):
        from . import method
        return getattr(method, name)
    if name in ("available", "get_method", "register_method"):
        from . import registry
        return getattr(registry, name)
    raise AttributeError(name)
