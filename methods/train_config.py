"""The configuration of ``clvr train``: YAML plus dataclasses, strictly checked.

A run's configuration is built in layers, each checked against the dataclasses below (an unknown
key is an error naming the valid keys and the nearest one; a value of the wrong type is too):

1. the defaults of :class:`TrainConfig`;
2. the method's paper settings (``Method.training``: optimiser, schedule, epochs);
3. a YAML file (``--config``);
4. ``--set key=value`` overrides, with dotted keys (``--set optim.lr=0.5``,
   ``--set model.temperature=0.2``; values are YAML).

``model`` holds the method's own hyper-parameters; they are checked by the method's ``Config``
when it is built. The resolved configuration is written to the run directory as
``config.yaml``, and a run can be repeated from it.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from ..pipeline.recipe import apply_overrides
from .errors import MethodError


class ConfigError(MethodError):
    """A training configuration that cannot be used; names the key or file at fault."""


@dataclass
class DataConfig:
    batch_size: int = 256            # per process; the global batch is this x processes
    views: str = ""                  # "": the method's view generator
    view_options: dict = field(default_factory=dict)    # on top of the method's
    recipe: str = ""                 # "": the method's preset (a name or a YAML file)
    device: str = "auto"             # where DALI decodes and augments: auto | cpu | gpu
    photometric: str = "dali"        # dali | kornia
    size: int = 0                    # the views' side in px; 0: the recipe's
    threads: int = 0                 # DALI threads per process; 0: the loader's default
    shuffle_buffer: int = 1024
    on_error: str = "raise"          # raise | skip (bad samples are skipped and counted)


@dataclass
class OptimConfig:
    name: str = "sgd"                # sgd | adamw | lars
    lr: float = 0.03                 # for a global batch of 256; scaled by lr_scaling
    lr_scaling: str = "linear"       # linear (x batch / 256) | sqrt | none
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    eta: float = 0.001               # LARS trust coefficient
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class ScheduleConfig:
    kind: str = "cosine"             # cosine | step | constant
    warmup_epochs: float = 0.0
    milestones: list = field(default_factory=list)     # epochs, for kind = step
    gamma: float = 0.1
    final: float = 0.0               # cosine's last multiplier of the peak lr


@dataclass
class TrainConfig:
    method: str = "simclr"
    preset: str = "auto"             # auto (small-image settings for small images) | paper | small
    model: dict = field(default_factory=dict)          # the method's Config overrides
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    epochs: int = 200
    max_steps: int = 0               # stop after this many steps (0: epochs x steps per epoch)
    seed: int = 0
    precision: str = "no"            # no | bf16 | fp16 (accelerate's mixed precision)
    channels_last: bool = False
    compile: bool = False            # torch.compile the backbone
    grad_accum: int = 1              # refused for methods whose negatives come from the batch
    checkpoint_every: int = 1000     # steps; 0: only at the end (and on SIGTERM)
    keep: int = 3                    # checkpoints kept
    log_every: int = 10              # steps between metric lines
    on_nonfinite: str = "stop"       # stop | skip (a step with a non-finite loss is skipped)
    collapse_threshold: float = 0.01  # features' spread below it is a collapse (see .collapse); 0: off
    view_check: bool = True          # before the first step: can trivial features match the views? (the plan)
    collapse_rank: float = 0.25      # an effective rank below this fraction of min(batch, features) is a
                                     # dimensional collapse (see .collapse); 0: not checked
    on_collapse: str = "warn"        # warn (progress bar, metrics.jsonl) | stop
    progress: bool = True
    knn_every: int = 5               # epochs between kNN checks on --val (and one at the end)
    knn_k: int = 200
    knn_temperature: float = 0.07
    tensorboard: bool = True         # also log to OUT/tensorboard when tensorboard is installed
    slow_epoch_hours: float = 1.0    # warn before the first step when an epoch would take longer; 0: never


CHOICES = {
    "data.device": ("auto", "cpu", "gpu"), "data.photometric": ("dali", "kornia"),
    "data.on_error": ("raise", "skip"), "optim.name": ("sgd", "adamw", "lars"),
    "optim.lr_scaling": ("linear", "sqrt", "none"), "schedule.kind": ("cosine", "step", "constant"),
    "precision": ("no", "bf16", "fp16"), "preset": ("auto", "paper", "small"), "on_nonfinite": ("stop", "skip"), "on_collapse": ("warn", "stop"),
}


def _get(config, dotted: str):
    obj = config
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _numbers(obj, prefix: str = ""):
    """(dotted key, value) of every float of a config (a list's items as KEY[i]); the method's
    ``model`` mapping is left to the method's own checks."""
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            yield from _numbers(value, key + ".")
        elif isinstance(value, float):
            yield key, value
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                if isinstance(item, float):
                    yield f"{key}[{i}]", item


#: (key, lowest, highest, whether the bounds are included, what the range means)
RANGES = (
    ("optim.momentum", 0.0, 1.0, (True, False), "SGD's momentum; the papers use 0.9"),
    ("optim.weight_decay", 0.0, None, (True, None), "0 turns it off; the papers use 1e-6 to 1e-4"),
    ("optim.eta", 0.0, None, (False, None), "LARS's trust coefficient; the papers use 0.001 to 0.02"),
    ("schedule.warmup_epochs", 0.0, None, (True, None), "epochs of linear warm-up; 0 for none"),
)


def _in_range(value, low, high, closed) -> bool:
    if low is not None and (value < low if closed[0] else value <= low):
        return False
    if high is not None and (value > high if closed[1] else value >= high):
        return False
    return True


def check(config: TrainConfig) -> TrainConfig:
    import math
    for key, value in _numbers(config):
        if not math.isfinite(value):
            raise ConfigError(f"config {key} = {value} must be a finite number")
    for key, low, high, closed, meaning in RANGES:
        value = _get(config, key)
        if not _in_range(value, low, high, closed):
            bounds = (("[" if closed[0] else "(") + f"{low:g}, " + (f"{high:g}" if high is not None else "inf")
                      + ("]" if high is not None and closed[1] else ")"))
            raise ConfigError(f"config {key} = {value:g} must be in {bounds} ({meaning})")
    for i, beta in enumerate(config.optim.betas):
        if not 0 <= beta < 1:
            raise ConfigError(f"config optim.betas = {list(config.optim.betas)}: each must be in [0, 1) (AdamW's "
                              f"moving-average factors, e.g. [0.9, 0.999]); item {i} is {beta:g}")
    if isinstance(config.seed, bool) or not isinstance(config.seed, int) or not 0 <= config.seed < 2 ** 32:
        raise ConfigError(f"config seed = {config.seed!r} must be an integer in [0, 2^32)")
    if any(m < 0 for m in config.schedule.milestones if isinstance(m, (int, float))):
        raise ConfigError(f"config schedule.milestones = {list(config.schedule.milestones)} must not be negative")
    for key, choices in CHOICES.items():
        if _get(config, key) not in choices:
            raise ConfigError(f"config {key} = {_get(config, key)!r}; choose one of {', '.join(choices)}")
    positive = {"data.batch_size": config.data.batch_size, "epochs": config.epochs, "keep": config.keep,
                "grad_accum": config.grad_accum, "log_every": config.log_every}
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"config {key} = {value} must be at least 1")
    if config.knn_k < 1 or config.knn_temperature <= 0:
        raise ConfigError(f"config knn_k = {config.knn_k} must be at least 1 and knn_temperature "
                          f"= {config.knn_temperature} positive")
    for key in ("max_steps", "checkpoint_every", "data.threads", "knn_every", "data.size", "slow_epoch_hours",
                "data.shuffle_buffer"):
        if _get(config, key) < 0:
            raise ConfigError(f"config {key} = {_get(config, key)} must not be negative")
    if not 0 <= config.collapse_rank <= 1:
        raise ConfigError(f"config collapse_rank = {config.collapse_rank} must be in [0, 1] (a fraction of "
                          "min(batch, features); 0 turns the dimensional collapse check off)")
    if not config.collapse_threshold >= 0:
        raise ConfigError(f"config collapse_threshold = {config.collapse_threshold} must not be negative "
                          "(0 turns the collapse check off)")
    if config.optim.lr <= 0:
        raise ConfigError(f"config optim.lr = {config.optim.lr} must be positive")
    ms = config.schedule.milestones
    if not all(isinstance(m, (int, float)) and not isinstance(m, bool) for m in ms) or list(ms) != sorted(ms):
        raise ConfigError(f"config schedule.milestones = {ms!r} must be increasing numbers (epochs)")
    if config.schedule.kind == "step" and not ms:
        raise ConfigError("config schedule.kind = step needs schedule.milestones (epochs), e.g. [120, 160]")
    if not 0 < config.schedule.gamma <= 1 or not 0 <= config.schedule.final <= 1:
        raise ConfigError("config schedule.gamma must be in (0, 1] and schedule.final in [0, 1]")
    if not isinstance(config.model, dict) or not isinstance(config.data.view_options, dict):
        raise ConfigError("config model and data.view_options must be mappings")
    return config


def method_defaults(method_cls) -> dict:
    """The paper's training settings of a method (``Method.training``), as overrides."""
    return copy.deepcopy(getattr(method_cls, "training", {}) or {})


def parse_set(items: list[str]) -> dict:
    """``["optim.lr=0.5", "model.temperature=0.2"]`` -> nested overrides (values parsed as YAML)."""
    import yaml
    out: dict = {}
    for item in items:
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. optim.lr=0.5")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({e})") from None
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is set twice, once as a value")
        node[parts[-1]] = value
    return out


def read_yaml(path) -> dict:
    import yaml
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    return data


def _merge(base: dict, changes: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in changes.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in ("model", "view_options"):
            out[k] = _merge(out[k], v)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


def build(method: str | None = None, config_file=None, sets: list[str] | None = None,
          overrides: dict | None = None, base: dict | None = None) -> TrainConfig:
    """The resolved configuration: defaults, then the method's paper settings, then ``base``
    (the small-image settings, when :func:`build_for_data` chose them), then the YAML file, then
    ``--set`` items, then ``overrides`` (a dict, for code)."""
    from .registry import get_method
    layers = []
    if config_file:
        layers.append((read_yaml(config_file), str(config_file)))
    if sets:
        layers.append((parse_set(sets), "--set"))
    if overrides:
        layers.append((overrides, "overrides"))
    name = method
    for data, _ in layers:
        name = data.get("method", name)
    name = name or TrainConfig.method
    cls = get_method(name)
    changes = _merge(method_defaults(cls), {"method": name})
    if base:
        changes = _merge(changes, base)
    for data, _ in layers:
        changes = _merge(changes, data)
    if method:
        changes["method"] = method
    where = "config"
    config = apply_overrides(TrainConfig(), changes, where, error=ConfigError)
    return check(config)


def to_dict(config: TrainConfig) -> dict:
    def plain(v):
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, list):
            return [plain(x) for x in v]
        return v
    return plain(dataclasses.asdict(config))


def _one_manifest(data):
    """(directory, manifest) of a local shard set of one split, or (None, why not) for URLs, tar
    lists without a manifest, sets of several splits or that cannot be read. Read once by
    :func:`build_for_data`, for the image sizes, the recommended recipe and the sample count."""
    from ..shards.errors import ShardError
    from ..shards.manifest import MANIFEST_NAME, shard_sets
    from ..pipeline.source import is_remote
    text = str(data)
    path = Path(text)
    if is_remote(text) or not (path.is_dir() or path.name == MANIFEST_NAME):
        return None, f"no manifest to read image sizes from ({text})"
    try:
        sets = shard_sets(path)
    except ShardError as e:
        return None, str(e)
    if len(sets) != 1:
        return None, f"{text} holds several splits"
    return next(iter(sets.values()))


def data_sizes(read) -> tuple:
    """(the :class:`~clvr.shards.sizes.SizeSummary` of a shard set, the manifest's path), or
    (None, why not); ``read``: what :func:`_one_manifest` read."""
    from ..shards.manifest import MANIFEST_NAME
    from ..shards.sizes import summary
    directory, manifest = read
    if directory is None:
        return None, manifest
    found = summary(manifest, directory)
    if found is None:
        return None, f"{directory / MANIFEST_NAME} has no image sizes (stats image_side:*) and no image was measured"
    return found, str(directory / MANIFEST_NAME)


#: ``data.recipe`` naming the shard set's own recommendation (its manifest's ``recommended``)
RECOMMENDED = "recommended"


def data_recommendation(read) -> tuple:
    """(the ``recommended`` entry of a manifest, the manifest's path), or (None, why not);
    ``read``: what :func:`_one_manifest` read."""
    from ..shards.errors import ShardError
    from ..shards.manifest import MANIFEST_NAME
    from ..shards.recommended import recommended
    directory, manifest = read
    if directory is None:
        return None, manifest
    try:
        return recommended(manifest, str(directory / MANIFEST_NAME)), str(directory / MANIFEST_NAME)
    except ShardError as e:
        return None, str(e)


def _sized_queue(config, read) -> int | None:
    """A MoCo queue sized to the data (:func:`.small_images.queue_for`), for the global batch of
    this run (``WORLD_SIZE`` processes, as the launcher sets it), or None without a manifest
    (``read``: what :func:`_one_manifest` read)."""
    import os

    from .small_images import queue_for
    directory, manifest = read
    samples = (manifest.get("totals") or {}).get("samples") if directory is not None else None
    if not isinstance(samples, int) or samples < 1:
        return None
    world = max(1, int(os.environ.get("WORLD_SIZE", "1") or 1))
    views = int(config.data.view_options.get("views", 2))
    key_views = views if config.model.get("symmetric") else max(views - 1, 1)
    return queue_for(samples, config.data.batch_size * world * key_views)


def small_view_side(sizes) -> int:
    """The views' side for small images: the median image's bucket, within 16 to 64 px."""
    return int(min(64, max(16, sizes.median_side)))


def build_for_data(method: str | None, config_file, sets, data, overrides: dict | None = None):
    """:func:`build`, with ``preset`` resolved against the data: ``auto`` takes the small-image
    settings (:mod:`.small_images`, recipe ``simclr-cifar`` at the images' size) when at least
    90% of the images' longest sides are at most 64 px (the manifest's ``stats``), the paper's
    settings otherwise. Returns (config, the plan's line saying what was chosen and why)."""
    config = build(method, config_file, sets, overrides)
    if config.preset == "paper":
        return config, "the paper's settings (preset = paper)"
    read = _one_manifest(data)
    # the shard set's own recipe, unless a recipe was chosen (a chosen data.size resizes it)
    found, manifest = data_recommendation(read)
    chosen = bool(config.data.recipe)
    recipe = {"data": {"recipe": RECOMMENDED}} if found is not None and not chosen else None
    said = (f"; views: the shard set's recommended recipe ({manifest}: {found.get('source', 'no source given')})"
            if recipe else "")
    sizes, where = data_sizes(read)
    if config.preset == "auto":
        paper = None
        if sizes is None:
            paper = f"the paper's settings ({where}; --set preset=small for small images)"
        elif sizes.mixed:
            paper = (f"the paper's settings: WARNING: the images mix small and large sizes "
                     f"({sizes.describe()}, {where}); resize them to one scale, or choose with "
                     f"--set preset=small or preset=paper")
        elif not sizes.small:
            paper = f"the paper's settings (the images are large: {sizes.describe()})"
        if paper is not None:
            if recipe:
                config = build(method, config_file, sets, overrides, base=recipe)
            return config, paper + said
    from .small_images import recipe_settings, train_settings
    side = small_view_side(sizes) if sizes is not None else 32
    chosen_queue = "queue" in config.model
    base = _merge(train_settings(config.method), recipe or recipe_settings(side))
    config = build(method, config_file, sets, overrides, base=base)
    sized = _sized_queue(config, read) if "queue" in base.get("model", {}) and not chosen_queue else None
    if sized is not None and sized != config.model.get("queue"):
        config = build(method, config_file, sets, overrides, base=_merge(base, {"model": {"queue": sized}}))
    why = (f"the images are small ({sizes.describe()})" if sizes is not None and config.preset == "auto"
           else "preset = small")
    views = "" if said else f", {side} px views"
    return config, (f"small-image settings (clvr.methods.small_images{views}): {why}; "
                    f"--set preset=paper for the paper's{said}")
