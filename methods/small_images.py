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
#: cosine decay after 2 epochs of warm-up; batch 64 (more steps per epoch on 1,438 images);
#: 60 epochs (SimCLR, seeds 0 and 1: kNN 85.5 / 88.0 and 1%-label linear 41.5 / 39.8 at 30
#: epochs, 89.4 / 91.6 and 52.6 / 63.2 at 60, in under 2 minutes; InstDisc's linear 50.7 -> 72.1)
COMMON = {
    "data": {"batch_size": 64},
    "optim": {"name": "sgd", "lr": 0.15, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
    "schedule": {"kind": "cosine", "warmup_epochs": 2},
    "epochs": 60,
}

#: each method's own settings on small data
METHODS = {
    # 2048-wide heads are sized for ResNet-50's 2048 features; the width-16 ResNet has 128
    "simclr": {"model": {"temperature": 0.2, "hidden": 512}},
    # a projection head with BatchNorm (mlp_bn; MoCo v2's has none): without it the keys sat in a
    # narrow cone (mean cosine 0.63-0.77 between different images, SimCLR's head 0.00-0.05), so the
    # queue's negatives were nearly alike; and a queue of 256 keys, 18% of the 1,438 images (MoCo's
    # CIFAR demo keeps 8% of its data, ImageNet's 5%): 1,024 keys held most of the data set, keys up
    # to 16 steps old that the queries told apart by their age. Both together, 60 epochs, seed 0:
    # kNN 92.2, linear 92.8 (SimCLR 94.2 / 95.3; with neither, the benchmark's 74.2 / 77.9 mean).
    # The key encoder follows faster (0.99) in a run of hundreds of steps, not 500,000 (0.9
    # measured worse: linear 45.1 against 66.3); the symmetric loss (both views as queries) and
    # shuffle-BN's stand-in of 2 BN groups on one process (4: linear 64.3, none: 47.4)
    "moco_v2": {"model": {"head": "mlp_bn", "queue": 256, "hidden": 512, "momentum": 0.99, "symmetric": True,
                          "bn_splits": 2}},
    "moco_v1": {"model": {"queue": 1024, "momentum": 0.99}},
    # each image standardised by its own statistics at the encoder's input (input_norm: image,
    # part of the exported encoder, so evaluation applies it too). The digits are drawn in random
    # ink and paper colours, and the colour jitter changes their hue and scale but keeps which of
    # ink and paper is darker, how far apart they are, and how saturated: properties of the image
    # that both views share. BYOL, with no negatives to say they do not tell images apart, learned
    # them first: the two largest directions of a seed-1 encoder (kNN 39.0) explained 64% of the
    # variance of the ink-paper brightness difference and 37% of the saturation (SimCLR's: 2% and
    # 0%), and its rank fell to 16 of 128 in the first epochs and recovered slowly, by an amount
    # that depended on the seed (seeds 0, 1, 2 at 150 epochs: kNN 86.6, 39.0, 61.8). With the
    # input standardised, seed 1's kNN monitor read 59, 84, 91, 94, 95 at epochs 20, 40, 60, 80,
    # 100. Stronger jitter (brightness and contrast 0.9, grayscale 0.5, an inversion on half the
    # views) did not do it: kNN 35 at 30 epochs, as without it. Before, none of these shortened
    # the slow start (seed 0, kNN at epochs 15, 30, 45; preset 36, 37, 42): a 10-epoch warm-up
    # (35, 46, 40), lr 1.0 (26 at 15), a predictor starting as the identity (37, 38) or at 10x the
    # lr (40, 35), weight decay 1e-5 (33, 37), batch 32 at lr 0.3, lr 0.1 with base momentum 0.99;
    # nor, on seed 1 at 30 epochs (kNN 27 to 39), a BatchNorm on the projector's output, crops of
    # 0.2-1, 2048-wide heads, batch 128, no weight decay on norms and biases. The target follows
    # from 0.9 (at 30 epochs: linear 45.4, from 0.99: 34.3) to 1 on the cosine, with lr 0.6 (60
    # epochs: linear 59.6 against 53.2 at 0.15), for 150 epochs (100: kNN 88.6, 95.0, 94.2 on
    # seeds 0, 1, 2 in 5 to 5.6 minutes; 150: 98.3 on seed 0, in 7.9)
    "byol": {"model": {"hidden": 512, "predictor_hidden": 512, "dim": 128, "base_momentum": 0.9,
                       "input_norm": "image"},
             "optim": {"lr": 0.6}, "epochs": 150},
    # the exact softmax over the bank (paper eq. 2): the paper's 4,096 negatives are, on 1,438
    # images, every other row once (lemniscate's full softmax; never the sample's own row). NCE's
    # normalising constant, fixed from the first batch of a random bank, collapsed the features
    # (spread 0.014, linear 10.9 = chance). Temperature 0.2 (0.07: kNN 55.7, linear 67.1; 0.4: 63.2 /
    # 70.2; 0.2: 71.3 / 79.1, at 60 epochs, seed 0) and 150 epochs: a step encodes one view, half of
    # SimCLR's work, and the bank's entries move once an epoch (60 epochs: 71.3 / 79.1; 150: kNN
    # 94.7, linear 94.4, in 3.1 minutes). An MLP head with BatchNorm measured no better (91.4 / 94.7)
    "instdisc": {"model": {"loss": "softmax", "temperature": 0.2}, "epochs": 150},
    # jigsaw cells of 16 px from a 48-px image, and a 12-px patch at a random place in each: 4 px of
    # jitter, the paper's share (64-px patches in 85-px cells of a 255-px image: 21 px); 16-px
    # patches filled their cells and left none. The softmax over the whole bank for the reason
    # InstDisc's has it (NCE: linear 10.9, softmax: 72.4), at temperature 0.2, for 60 epochs: a
    # step encodes ten views of each image (nine patches and the image), about three times SimCLR's
    # work, but 30 epochs left it short of steps as they did InstDisc (seed 0: 30 epochs, 0.07:
    # kNN 52.6, linear 67.1; 0.2: 54.0 / 66.3; 60 epochs, 0.2: 85.0 / 88.6 in 6.4 minutes, seed 1:
    # 85.8 / 86.6), for 75 epochs (about 8 minutes)
    "pirl": {"model": {"loss": "softmax", "temperature": 0.2}, "data": {"view_options": {"side": 48, "patch": 12}},
             "epochs": 75},
    # a 4 x 4 grid of 8-px patches at stride 8 of the 32-px image: patches that share no pixel, so
    # the next row is a prediction, not a copy (skip 0; the 3 x 3 grid of 16-px patches at stride 8
    # shared half of each row with the next, and skipping that row left one row to predict: kNN
    # 17.0 on the grid features, linear 64.1), two rows ahead; lr 0.1 (30 epochs, seed 0: lr 0.05:
    # kNN 53.5, linear 70.8; 0.1: 66.0 / 79.7; 0.15: 68.5 / 78.3, in 3.8 minutes) for 60 epochs:
    # a step encodes sixteen patches of each image and runs four context networks, about three
    # times SimCLR's time. The recipe's colours are drawn per patch (cpc_grid's patch_augment, as
    # CPC v2 augments patches): with one colour cast per image the loss sat at log(1,024) for 25
    # epochs and ended at kNN 68.2, linear 83.8 (without colours: 60.2 / 86.9); per patch, kNN
    # 88.6, linear 92.8, in 6.9 minutes, seed 0. (Cosine scores at temperature 0.1 instead of CPC's
    # dot products, with the colour cast per image: 42.6 / 74.7.) Every seed still collapsed in its
    # first epoch and escaped after 16 to 33 epochs (kNN 88.6, 93.3, 74.4 for seeds 0, 1, 2), until
    # the prediction maps started at zero (cpc.py's predict_init; seeds 0, 1, 2: kNN 91.4, 96.7,
    # 90.0, linear 98.1, 98.3, 96.9, in 8 minutes; a temperature of 0.1 or no weight decay did not
    # shorten the collapse). Then each patch standardised by its own statistics (input_norm:
    # image, as BYOL's; a patch of one flat colour becomes zeros): seeds 0, 1, 2 at kNN 99.2,
    # 98.3, 97.5, linear 99.2 each, in 6.2 to 7 minutes
    "cpc_v2": {"model": {"steps": 2, "skip": 0, "input_norm": "image"}, "optim": {"lr": 0.1},
               "data": {"view_options": {"side": 32, "grid": 4, "patch": 8, "stride": 8}}},
    "cpc_v1": {"model": {"steps": 2, "skip": 0}, "optim": {"lr": 0.1},
               "data": {"view_options": {"side": 32, "grid": 4, "patch": 8, "stride": 8}}},
}


#: MoCo's queue on small data, as a share of the training images (the digits: 256 keys of 1,438
#: images measured best; MoCo's CIFAR demo keeps 8% of its data, ImageNet 5%): a queue that holds
#: most of a small data set is full of keys many steps old, which the queries tell apart by age
QUEUE_SHARE = 0.18


def queue_for(samples: int, keys_per_step: int) -> int:
    """The queue for ``samples`` training images: :data:`QUEUE_SHARE` of them, in whole steps of
    ``keys_per_step`` keys (a queue must hold whole steps), at least one step."""
    if samples < 1 or keys_per_step < 1:
        raise ValueError(f"samples and keys_per_step must be positive, got {samples}, {keys_per_step}")
    return max(1, round(QUEUE_SHARE * samples / keys_per_step)) * keys_per_step


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


#: the view recipe for small images without a recipe of their own: SimCLR's CIFAR recipe
#: (colour distortion at half strength, no blur: a blurred 32-px image loses its content)
SMALL_RECIPE = "simclr-cifar"


def recipe_settings(side: int) -> dict:
    """``data`` overrides giving small images the CIFAR recipe at ``side`` px."""
    return {"data": {"recipe": SMALL_RECIPE, "size": int(side)}}
