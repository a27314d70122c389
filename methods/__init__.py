"""``clvr.methods``: contrastive objectives, methods, training and evaluation.

So far, each in the module named after it:

- :mod:`.losses`       the objectives as pure functions (InfoNCE, NT-Xent, NCE, BYOL, CPC);
- :mod:`.memory_bank`  InstDisc/PIRL's bank, one slot per global sample index;
- :mod:`.queue`        MoCo's FIFO of keys from every process;
- :mod:`.momentum`     momentum (EMA) encoders: constant (MoCo) or BYOL's cosine schedule;
- :mod:`.backbones`    ResNet-18/34/50 (ImageNet or CIFAR stem, BatchNorm or LayerNorm), a tiny
  net for tests, and timm models by name;
- :mod:`.heads`        projection and prediction heads (linear, MLP, MLP with BatchNorm);
- :mod:`.cpc_context`  CPC's causal (PixelCNN-style) context network, one or several directions;
- :mod:`.distributed`  an all-gather whose gradient is right across processes.

May import :mod:`clvr.pipeline` and :mod:`clvr.shards`.
"""
