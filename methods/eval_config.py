"""The configuration of ``clvr eval``: dataclasses, strictly checked, set from YAML (``--config``)
and ``--set key=value`` as ``clvr train``'s is (an unknown key is an error naming the nearest).

The defaults are the protocols of the papers: kNN with k = 200 and 20, t = 0.07 (InstDisc);
linear on frozen features with SGD and cosine decay, and logistic regression; a linear SVM
(InstDisc); fine-tuning on 1% and 10% of the labels (SimCLR: 60 and 30 epochs); baselines of
the same architecture on the same labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..pipeline.recipe import apply_overrides
from .finetune import FinetuneConfig, check_config as check_finetune
from .train_config import ConfigError, _merge, parse_set, read_yaml, to_dict

__all__ = ["PROTOCOLS", "RUN_ONLY", "ConfigError", "EvalConfig", "LinearConfig", "build", "check", "to_dict"]

PROTOCOLS = ("knn", "linear", "svm", "semi", "transfer")
#: settings that change how an evaluation runs, not its numbers
RUN_ONLY = ("batch_size", "device", "threads", "tsne_points", "plots", "progress")


@dataclass
class LinearConfig:
    epochs: int = 100
    lr: float = 0.1                  # on standardised features (MoCo's 30 is for raw ones)
    batch_size: int = 256
    momentum: float = 0.9
    weight_decay: float = 0.0
    standardize: bool = True         # scale features by the training set's mean and std
    logistic_C: float = 1.0
    logistic_max_iter: int = 1000


@dataclass
class EvalConfig:
    batch_size: int = 256            # feature extraction
    device: str = "auto"             # where the pipeline decodes: auto | cpu | gpu
    threads: int = 0                 # pipeline threads; 0: the loader's default
    size: int = 0                    # view side; 0: the encoder's input size (its sidecar)
    center_crop: float = 0.0         # 0: 0.875 for views of 128 px or more, else 1 (whole square)
    knn_k: list = field(default_factory=lambda: [200, 20])
    knn_temperature: float = 0.07
    linear: LinearConfig = field(default_factory=LinearConfig)
    svm_C: float = 1.0
    fractions: list = field(default_factory=lambda: [0.01, 0.1])      # semi-supervised label shares
    subset_seed: int = 0
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    # supervised training from scratch: the usual supervised settings, not the fine-tuning ones
    supervised: FinetuneConfig = field(default_factory=lambda: FinetuneConfig(lr=0.1, weight_decay=5e-4))
    baselines: list = field(default_factory=lambda: ["raw_pixels", "random_init", "supervised"])  # [] for none
    raw_pixels_size: int = 32        # the raw-pixel baseline pools the eval view to at most this side
    seed: int = 0                    # of the random initialisations
    tsne_points: int = 2000          # t-SNE runs on at most this many val features
    plots: bool = True
    progress: bool = True


def check(c: EvalConfig) -> EvalConfig:
    if c.device not in ("auto", "cpu", "gpu"):
        raise ConfigError(f"config device = {c.device!r}; choose one of auto, cpu, gpu")
    if c.batch_size < 1 or c.size < 0 or c.threads < 0:
        raise ConfigError("config batch_size must be at least 1, size and threads not negative")
    if not 0 <= c.center_crop <= 1:
        raise ConfigError(f"config center_crop = {c.center_crop} must be in [0, 1] (0: by view size)")
    if not isinstance(c.knn_k, list) or not isinstance(c.fractions, list):
        raise ConfigError(f"config knn_k = {c.knn_k!r} and fractions = {c.fractions!r} must be lists, "
                          "e.g. knn_k=[200,20] fractions=[0.01]")
    if not c.knn_k or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in c.knn_k):
        raise ConfigError(f"config knn_k = {c.knn_k!r} must be a list of positive integers")
    if not c.knn_temperature > 0 or not c.svm_C > 0:
        raise ConfigError("config knn_temperature and svm_C must be positive")
    fr = c.fractions
    if not all(isinstance(f, (int, float)) and not isinstance(f, bool) and 0 < f < 1 for f in fr):
        raise ConfigError(f"config fractions = {fr!r} must be label shares in (0, 1), e.g. [0.01, 0.1]")
    lc = c.linear
    if lc.epochs < 1 or lc.batch_size < 1 or not lc.lr > 0 or not lc.logistic_C > 0 or lc.logistic_max_iter < 1:
        raise ConfigError("config linear: epochs, batch_size and logistic_max_iter must be at least 1, "
                          "lr and logistic_C positive")
    check_finetune(c.finetune, "config finetune", ConfigError)
    check_finetune(c.supervised, "config supervised", ConfigError)
    if not isinstance(c.baselines, list) or not set(c.baselines) <= {"raw_pixels", "random_init", "supervised"}:
        raise ConfigError(f"config baselines = {c.baselines!r}; a list of raw_pixels, random_init and/or "
                          "supervised ([] for none)")
    if c.raw_pixels_size < 1:
        raise ConfigError(f"config raw_pixels_size = {c.raw_pixels_size} must be at least 1")
    if c.tsne_points < 5:
        raise ConfigError(f"config tsne_points = {c.tsne_points} must be at least 5")
    return c


def build(config_file=None, sets=None, overrides: dict | None = None) -> EvalConfig:
    """Defaults, then the YAML file, then ``--set`` items, then ``overrides`` (for code)."""
    changes: dict = {}
    if config_file:
        changes = _merge(changes, read_yaml(config_file))
    if sets:
        changes = _merge(changes, parse_set(sets))
    if overrides:
        changes = _merge(changes, overrides)
    config = apply_overrides(EvalConfig(), changes, "config", error=ConfigError) if changes else EvalConfig()
    return check(config)
