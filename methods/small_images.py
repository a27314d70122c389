"""Settings for small images (8 to 32 px: the embedded digits, CIFAR-like data), per method.

The papers' settings (``Method.training``, the recipes ``simclr``, ``mocov2``...) are for
ImageNet: 224-px views, ResNet-50, batches of 256 to 4096, hundreds of epochs. On a thousand
16-px digits and two CPU cores they do not learn in minutes. These are the settings that do,
found by measurement with ``bench/method_quality.py`` (the reasons are beside each value, and
the measurements in the benchmark's table); ``clvr demo digits`` and the benchmark use them.

``train_settings(method)`` returns overrides for ``clvr train`` (a ``--config`` file's content):
``model`` (the backbone and the method's own settings), ``data``, ``optim``, ``schedule`` and
``epochs``. Keys a method does not have are not given to it.
"""

from __future__ import annotations

import copy

#: a ResNet-18 with the CIFAR stem (3x3 convolution, no max-pool: a 16-px view keeps 16 x 16
#: positions in the first stage) and 16 channels in it (64 in the paper): at 16 px the network's
#: work is small enough for a CPU, and wider networks measured no better in the same time
BACKBONE = {"backbone": "resnet18", "stem": "cifar", "width": 16}

#: every method: SGD with Nesterov momentum (LARS is for batches of thousands), lr 0.15 x batch
#: / 256 (0.3 and 1.0 measured lower kNN accuracy), weight decay 5e-4 (the CIFAR setting),
#: cosine decay after 2 epochs of warm-up; batch 64 (more steps per epoch on 1,438 images)
COMMON = {
    "data": {"batch_size": 64},
    "optim": {"name": "sgd", "lr": 0.15, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
    "schedule": {"kind": "cosine", "warmup_epochs": 2},
    "epochs": 30,
}

#: each method's own settings on small data
METHODS = {
    # 2048-wide heads are sized for ResNet-50's 2048 features; the width-16 ResNet has 128
    "simclr": {"model": {"temperature": 0.2, "hidden": 512}},
    # the queue holds 1,024 keys (16 batches; it must not hold the same images many times over),
    # and the key encoder follows faster (0.99) in a run of hundreds of steps, not 500,000
    "moco_v2": {"model": {"queue": 1024, "hidden": 512, "momentum": 0.99}},
    "moco_v1": {"model": {"queue": 1024, "momentum": 0.99}},
    "byol": {"model": {"hidden": 512, "predictor_hidden": 512, "dim": 128, "base_momentum": 0.99}},
    # 1,024 noise samples of a memory bank of 1,438 (the paper draws 4,096 of 1.28 million)
    "instdisc": {"model": {"negatives": 1024}},
    # jigsaw cells of 16 px from a 48-px image (the paper: 64-px patches of a 255-px image)
    "pirl": {"model": {"negatives": 1024}, "data": {"view_options": {"side": 48, "patch": 16}}},
    # a 3 x 3 grid of 16-px patches at stride 8 of the 32-px image, predicting one row ahead
    "cpc_v2": {"model": {"steps": 1}, "data": {"view_options": {"side": 32, "grid": 3, "patch": 16, "stride": 8}}},
    "cpc_v1": {"model": {"steps": 1}, "data": {"view_options": {"side": 32, "grid": 3, "patch": 16, "stride": 8}}},
}


def _merge(base: dict, changes: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in changes.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def train_settings(method: str) -> dict:
    """``clvr train`` overrides for ``method`` on small images (the backbone, the common
    optimiser and schedule, the method's own settings); keys of ``model`` the method's Config
    does not have (a temperature for BYOL) are left out."""
    import dataclasses

    from .registry import get_method
    cls = get_method(method)
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    out = _merge(COMMON, {"model": dict(BACKBONE)})
    out = _merge(out, METHODS.get(cls.name, {}))
    out["model"] = {k: v for k, v in out["model"].items() if k in fields}
    return out
