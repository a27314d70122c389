"""``clvr demo``: the whole job on the embedded handwritten digits, in one command.

1. ``clvr shard demo NAME OUT/data`` (scikit-learn's 1,797 real digits; no download);
2. ``clvr train`` of the demo's method (SimCLR for ``digits``) with the demo's settings, the kNN
   monitor on the val shards;
3. ``clvr eval`` of the run: ``digits`` runs kNN, linear and 1%-label semi-supervised, each
   against the random-init and supervised-from-scratch baselines; the shorter demos (video,
   objects, captions, on fewer digits) run kNN against random init;
4. the table is printed; the report (results.md, results.json, figures) is in ``OUT/eval``, and
   the table with the timings in ``OUT/summary.txt`` (the README's demo table is that file).

The settings (``DEMOS``) are small on purpose: ``digits`` pre-trains with the small-image
settings of :mod:`clvr.methods.small_images` (a ResNet-18 of width 16 at 16 px: the digits are
8 x 8 scans), so the demo runs in minutes on two CPU cores. The augmentation is SimCLR's with the
crop, colour and flip set for this data (``DIGITS_RECIPE``): the digits are drawn in random
palette colours, so colour is the shortcut the views must take away; and a digit is not its
mirror image (a flipped 2, 3, 7 or 9 is no digit), so no view is flipped. Every setting can be
changed with ``--set`` (training) and ``--eval-set`` (evaluation), and any method with ``--method``.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
import sys
import time
from pathlib import Path

# the demos' views: each demo's recommended recipe, which ``clvr shard demo`` records in the
# manifest (clvr.shards.demo.DIGITS_RECIPE says why each value)
from ..shards.demo import DIGITS_RECIPE, RECIPES

_SMALL_RESNET = {"backbone": "resnet18", "stem": "cifar", "width": 16}
_SGD = {"name": "sgd", "lr": 0.3, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}

DEMOS = {
    "digits": {
        "method": "simclr",
        "recipe": DIGITS_RECIPE,
        # on top of clvr.methods.small_images.train_settings(method): every method's small-image
        # settings (the backbone, optimiser, schedule, epochs and its own keys)
        "small_images": True,
        "train": {"knn_every": 5},
        "protocols": ["knn", "linear", "semi"],
        # fine-tuning and supervised training crop as the pre-training does (0.7-1 of the digit)
        # and do not flip (a mirrored digit is no digit)
        "eval": {"fractions": [0.01], "finetune": {"crop_scale": [0.7, 1.0], "flip": 0.0},
                 "supervised": {"crop_scale": [0.7, 1.0], "flip": 0.0, "batch_size": 64, "epochs": 30}},
    },
    "digits-video": {
        "method": "video_simclr",
        "recipe": RECIPES["digits-video"],
        "train": {"model": {"backbone": "r2plus1d_tiny", "temperature": 0.2, "hidden": 256, "dim": 64},
                  "data": {"batch_size": 32, "view_options": {"frames": 8}},
                  "optim": _SGD, "schedule": {"kind": "cosine", "warmup_epochs": 1}, "epochs": 4,
                  "knn_every": 2},
        "limit": 400,                  # VP9 clips decode slowly on a CPU: 320 train, 80 val videos
        "protocols": ["knn"],
        "eval": {"baselines": ["raw_pixels", "random_init"]},
    },
    "digits-objects": {
        "method": "object_contrast",
        "recipe": RECIPES["digits-objects"],
        "train": {"model": {**_SMALL_RESNET, "temperature": 0.2, "hidden": 256, "dim": 64},
                  "data": {"batch_size": 32, "view_options": {"size": 16}},     # the crops: 16 px
                  "optim": _SGD, "schedule": {"kind": "cosine", "warmup_epochs": 1}, "epochs": 25,
                  "knn_every": 5},
        "limit": 600,
        "protocols": ["knn"],
        # object-level features are scored on single objects: kNN on the plain digits at 16 px
        "eval_data": "digits",
        "eval": {"size": 16, "baselines": ["raw_pixels", "random_init"]},
    },
    "digits-captions": {
        "method": "clip",
        "recipe": DIGITS_RECIPE,
        "train": {"model": {**_SMALL_RESNET, "text": "bytes_tiny", "dim": 64}, "data": {"batch_size": 64},
                  "optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05},
                  "schedule": {"kind": "cosine", "warmup_epochs": 1}, "epochs": 10, "knn_every": 5},
        "protocols": ["knn"],
        "eval": {"baselines": ["raw_pixels", "random_init"]},
    },
}

#: a method's own settings that the smaller demos' data needs (a queue no longer than the
#: data...); ``digits`` takes them from clvr.methods.small_images
METHOD_ADJUSTMENTS = {
    "moco_v1": {"queue": 1024}, "moco_v2": {"queue": 1024}, "video_moco": {"queue": 1024},
    "instdisc": {"negatives": 1024}, "pirl": {"negatives": 1024},
}


def _log(msg: str) -> None:
    print(f"[clvr demo] {msg}", file=sys.stderr, flush=True)


def train_overrides(name: str, method: str, recipe_file: Path) -> dict:
    """The demo's ``clvr train`` settings for ``method``: model keys the method does not have
    are dropped (a temperature for BYOL), the recipe is the demo's file."""
    from .registry import get_method
    demo = DEMOS[name]
    cls = get_method(method)
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    if demo.get("small_images"):
        from .small_images import _merge, train_settings
        train = _merge(train_settings(method), demo["train"])
    else:
        train = copy.deepcopy(demo["train"])
        train["model"] = {**train.get("model", {}), **METHOD_ADJUSTMENTS.get(cls.name, {})}
    train["model"] = {k: v for k, v in train.get("model", {}).items() if k in fields}
    train.setdefault("data", {})["recipe"] = str(recipe_file)
    train["tensorboard"] = False
    train["checkpoint_every"] = 0
    return train


def run_demo(name: str = "digits", method: str | None = None, out=None, epochs: int | None = None,
             sets=None, eval_sets=None, overwrite: bool = False, limit: int | None = None) -> int:
    """Run the demo ``name``; returns the exit code. ``limit`` shards only the first digits
    (for quick checks)."""
    import yaml

    from ..cli import main as clvr_main
    from . import eval_config as ecfg
    from . import train_config as tcfg
    from .errors import MethodError
    from .eval_cli import evaluate_and_print

    start = time.perf_counter()
    demo = DEMOS[name]
    method = method or demo["method"]
    limit = limit or demo.get("limit")
    out = Path(out or Path("runs") / f"demo-{name}")
    data, run, report = out / "data", out / "run", out / "eval"
    out.mkdir(parents=True, exist_ok=True)

    # 1. shards
    if not (data / "manifest.json").is_file():
        _log(f"1/3 shard the embedded {name} set into {data}")
        code = clvr_main(["shard", "demo", name, str(data), "--overwrite"]
                         + (["--limit", str(limit)] if limit else []))
        if code:
            return code
    else:
        _log(f"1/3 shards: reusing {data}")

    eval_data = data
    if demo.get("eval_data"):
        eval_data = out / "eval-data"
        if not (eval_data / "manifest.json").is_file():
            _log(f"1/3 shard the embedded {demo['eval_data']} set for the evaluation into {eval_data}")
            code = clvr_main(["shard", "demo", demo["eval_data"], str(eval_data), "--overwrite"])
            if code:
                return code

    # 2. pre-training
    recipe_file = out / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(demo["recipe"], sort_keys=False))
    # the demo's settings are a config file, so that --set (and --epochs) go on top of them
    train_file = out / "train.yaml"
    train_file.write_text(yaml.safe_dump(train_overrides(name, method, recipe_file), sort_keys=False))
    try:
        config = tcfg.build(method, config_file=train_file, sets=list(sets or [])
                            + ([f"epochs={epochs}"] if epochs is not None else []))
    except MethodError as e:
        print(f"clvr demo: {e}", file=sys.stderr)
        return 2
    if overwrite and run.exists():
        shutil.rmtree(run)
    if run.exists() and (run / "config.yaml").is_file():
        old = yaml.safe_load((run / "config.yaml").read_text())
        if old != tcfg.to_dict(config):
            print(f"clvr demo: {run} holds a run with other settings; use --overwrite or another --out",
                  file=sys.stderr)
            return 2
    from .trainer import Trainer
    t = time.perf_counter()
    trainer = Trainer(config, data / "train", run, resume="auto" if (run / "checkpoints").is_dir() else None,
                      val=data / "val",
                      settings=f"the {name} demo's (methods/demo.py" +
                               (", with clvr.methods.small_images)" if demo.get("small_images") else ")"))
    if trainer.step >= trainer.total_steps:
        _log(f"2/3 pre-training: {run} is finished ({trainer.step} steps); reusing it")
    else:
        _log(f"2/3 pre-train {config.method} for {config.epochs} epochs ({trainer.total_steps} steps) into {run}")
        trainer.run()
    train_s = time.perf_counter() - t

    # 3. evaluation
    eval_file = out / "eval.yaml"
    eval_file.write_text(yaml.safe_dump(copy.deepcopy(demo["eval"]), sort_keys=False))
    try:
        econfig = ecfg.build(config_file=eval_file, sets=eval_sets)
    except MethodError as e:
        print(f"clvr demo: {e}", file=sys.stderr)
        return 2
    _log(f"3/3 evaluate ({', '.join(demo['protocols'])}) against random init and supervised training "
         f"from scratch into {report}")
    t = time.perf_counter()
    code = evaluate_and_print(run, eval_data / "train", eval_data / "val", report, econfig, demo["protocols"],
                              prog="clvr demo")
    eval_s = time.perf_counter() - t
    done = (f"done in {(time.perf_counter() - start) / 60:.1f} min (pre-training {train_s / 60:.1f} min, "
            f"evaluation {eval_s / 60:.1f} min); report: {report / 'results.md'}")
    _log(done)
    if code == 0:
        import json

        from .report import text_table
        results = json.loads((report / "results.json").read_text())
        (out / "summary.txt").write_text(f"{text_table(results)}\n[clvr demo] {done}\n")
    return code
