"""``clvr eval``: how good is an encoder's representation, and compared with what?

Every protocol scores the **learned** encoder and, with the same labels and the same settings,
three baselines:

- ``raw_pixels``: the eval view's pixels themselves (pooled to at most ``raw_pixels_size`` px a
  side, flattened) as the features: what any representation must beat;
- ``random_init``: the architecture with random weights (seeded), under the same protocol;
- ``supervised``: the architecture trained from scratch with labels (:mod:`.finetune`, its own
  supervised settings): with all the training labels for the frozen-feature protocols, and with
  the same label subset for semi-supervised fine-tuning.

The protocols (``PROTOCOLS``):

========== =====================================================================================
knn        weighted kNN on frozen features (cosine, votes exp(s/t)), k = 200 and 20, t = 0.07
linear     a linear layer on frozen, standardised features: SGD + cosine decay, and logistic
           regression; top-1 and top-5; logistic regression again on each label share of
           ``fractions`` (the same subsets as ``semi``)
svm        a linear SVM on the same features (as InstDisc)
semi       the whole network fine-tuned on 1% and 10% of the training labels (class-balanced,
           seeded subsets written to ``OUT/subsets/``)
transfer   on another labelled shard set: logistic regression on frozen features, and the whole
           network fine-tuned on all its labels
========== =====================================================================================

Data flow::

    ENCODER (export or run dir) --load_encoder--> backbone
    shards --eval view (resize + centre crop)--> features (cached in OUT/cache/) --> kNN, linear, SVM
    shards (label subset) --random crop + flip--> fine-tune --> accuracy through the eval view

:class:`Evaluation` holds the encoders, the feature cache and the results; each protocol is one
method of it; :mod:`.report` writes ``results.json``, ``results.md`` and the figures.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from . import eval_config as ecfg
from .errors import MethodError
from .finetune import Classifier, epochs_for, finetune

ENCODERS = ("learned", "raw_pixels", "random_init", "supervised")
#: baselines that are a network (the others, raw pixels, cannot be fine-tuned)
NETWORKS = ("learned", "random_init", "supervised")
FORMAT = "clvr-eval-results"
FORMAT_VERSION = 1


class EvalError(MethodError):
    """An evaluation that cannot run; the message names the file, shard set or key at fault."""


def pct(fraction: float) -> str:
    """0.01 -> '1%', 0.1 -> '10%', 1.0 -> '100%'."""
    return f"{fraction * 100:g}%"


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def data_fingerprint(shards) -> str:
    """Changes whenever a shard of the set is replaced (path, size, modification time)."""
    rows = []
    for s in shards.shards:
        if shards.remote:                    # no stat over the network: the URL and the manifest
            rows.append((str(s.tar), shards.num_samples, _sha(shards.manifest)))
            continue
        st = os.stat(s.tar)
        rows.append((os.path.abspath(s.tar), st.st_size, st.st_mtime_ns))
    return _sha(rows)[:16]


class Evaluation:
    """Evaluate one encoder on labelled shards; results accumulate in :attr:`results`.

    Args:
        encoder: an exported encoder (``.safetensors`` or its ``.json``), a run directory of
            ``clvr train`` or one of its checkpoints (exported to ``OUT/encoder.safetensors``).
        train, val: labelled shard sets (features of ``train`` vote or train, ``val`` is scored).
        out: the report directory.
        config: an :class:`~.eval_config.EvalConfig`.
        transfer: ``(train, val)`` of another labelled shard set, for the transfer protocol.
        source: labelled shards the supervised baseline of the transfer protocol is trained on
            (default ``train`` when ``transfer`` is given).
    """

    def __init__(self, encoder, train, val, out, config: ecfg.EvalConfig | None = None,
                 transfer: tuple | None = None, source=None):
        from ..pipeline.source import resolve
        from .export import describe, export_encoder

        self.config = config or ecfg.EvalConfig()
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        spec = Path(encoder)
        if not spec.exists():
            raise EvalError(f"{spec}: no such encoder (give an exported .safetensors, a run directory of "
                            "clvr train, or a checkpoint)")
        if spec.is_dir() or spec.suffix == ".pt":
            self.weights, _ = export_encoder(spec, self.out / "encoder.safetensors")
        else:
            self.weights = spec.with_suffix(".safetensors")
        self.meta = describe(self.weights)
        if not self.meta.get("sha256"):       # an old or hand-made sidecar: hash the weights here
            from ..shards.fileio import sha256_file
            self.meta["sha256"] = sha256_file(self.weights)
        self.run_dir = self._run_dir(spec)
        self.kind = self.meta["architecture"]["kind"]
        self.views = "video_clips" if self.kind == "video" else "two_view"
        self.size = self.config.size or int(self.meta.get("input", {}).get("size") or 224)
        self.normalize = {k: self.meta["input"][k] for k in ("mean", "std")} \
            if {"mean", "std"} <= set(self.meta.get("input", {})) else None
        self.name = self.meta.get("method") or self.weights.stem
        self.sets = {"train": train, "val": val}
        # the labelled shards the supervised baseline of the transfer protocol learns from: its
        # own key only when they are not the training shards (whose baseline is then reused)
        self.source_key = "train"
        if source is not None and str(source) != str(train):
            self.sets["source"] = source
            self.source_key = "source"
        if transfer is not None:
            self.sets["transfer_train"], self.sets["transfer_val"] = transfer
        self.shards = {}
        for key, spec_ in self.sets.items():
            try:
                shards = resolve(spec_)
            except Exception as e:
                raise EvalError(f"--{key.replace('_', '-')} {spec_}: {e}") from None
            if not shards.classes:
                raise EvalError(f"--{key.replace('_', '-')} {spec_}: these shards have no classes in their "
                                "manifest; evaluation needs labelled shards")
            self.shards[key] = shards
        self._check_classes("train", "val")
        if transfer is not None:
            self._check_classes("transfer_train", "transfer_val")
        self.fingerprints = {k: data_fingerprint(s) for k, s in self.shards.items()}
        self.cache = self.out / "cache"
        self.features_cache: dict = {}
        self.results = self._start_results()
        self.timings: dict[str, float] = {}

    # -- set-up -------------------------------------------------------------------------------

    def _run_dir(self, spec: Path) -> Path | None:
        """The run directory the encoder came from, when it still holds its metrics."""
        candidates = []
        if spec.is_dir():
            candidates.append(spec)
        elif spec.suffix == ".pt":
            candidates.append(spec.parent.parent)
        source = self.meta.get("source")
        if source:
            candidates.append(Path(source).parent.parent)
        for c in candidates:
            if (c / "metrics.jsonl").is_file() or (c / "config.yaml").is_file():
                return c
        return None

    def _check_classes(self, a: str, b: str) -> None:
        ca, cb = self.shards[a].classes, self.shards[b].classes
        if list(ca) != list(cb):
            raise EvalError(f"--{a.replace('_', '-')} {self.sets[a]} has classes {list(ca)[:5]}... but "
                            f"--{b.replace('_', '-')} {self.sets[b]} has {list(cb)[:5]}...: both must be "
                            "labelled with the same classes in the same order")

    def num_classes(self, key: str = "train") -> int:
        return len(self.shards[key].classes)

    def _start_results(self) -> dict:
        """The results of an earlier run into the same OUT are kept when they are of the same
        encoder and data (protocols run one at a time add up); otherwise they are replaced."""
        from .. import __version__
        settings = {k: v for k, v in ecfg.to_dict(self.config).items() if k not in ecfg.RUN_ONLY}
        identity = {"encoder_sha256": self.meta.get("sha256"), "data": self.fingerprints,
                    "config": _sha(settings)}
        path = self.out / "results.json"
        if path.is_file():
            try:
                old = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                old = None
            if isinstance(old, dict) and old.get("format") == FORMAT and old.get("identity") == identity:
                return old
            keep = path.with_name("results.prev.json")
            os.replace(path, keep)
            print(f"clvr eval: {path} holds results of another encoder, data or config; moved to {keep}",
                  file=sys.stderr)
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "clvr_version": __version__,
                "identity": identity,
                "encoder": {"path": str(self.weights), "method": self.meta.get("method"),
                            "step": self.meta.get("step"), "architecture": self.meta["architecture"],
                            "run_dir": str(self.run_dir) if self.run_dir else None},
                "data": {k: {"spec": str(self.sets[k]), "samples": self.shards[k].num_samples,
                             "classes": len(self.shards[k].classes)} for k in self.shards},
                "config": ecfg.to_dict(self.config), "protocols": {}, "supervised_from_scratch": {},
                "subsets": {}, "plots": {}, "skipped": {}, "seconds": {}}

    # -- encoders -----------------------------------------------------------------------------

    def _device(self) -> torch.device:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def learned(self) -> torch.nn.Module:
        """A fresh copy of the learned encoder (fine-tuning changes its weights)."""
        from .export import load_encoder
        return load_encoder(self.weights, map_location=self._device())

    def random_init(self, offset: int = 0) -> torch.nn.Module:
        """The same architecture, randomly initialised with the configured seed."""
        from .export import _build
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed + offset)
            model = _build(self.meta["architecture"], str(self.weights))
        return model.to(self._device()).eval()

    def raw_pixels(self) -> torch.nn.Module:
        """The raw-pixel "encoder": the eval view's normalised pixels, average-pooled to at most
        ``raw_pixels_size`` px a side, flattened."""
        from .features import RawPixels
        return RawPixels(self.config.raw_pixels_size)

    def _ft_kwargs(self) -> dict:
        c = self.config
        return dict(size=self.size, views=self.views, device=c.device, threads=c.threads or None,
                    progress=c.progress, normalize=self.normalize)

    def supervised(self, fraction: float = 1.0, data_key: str = "train") -> Classifier:
        """The architecture trained from scratch on ``fraction`` of ``data_key``'s labels, with
        the supervised settings; cached in ``OUT/cache/`` (by settings, data and subset)."""
        samples = None if fraction >= 1 else self.subset(fraction, data_key)
        key = _sha({"arch": self.meta["architecture"], "data": self.fingerprints[data_key],
                    "cfg": asdict(self.config.supervised), "seed": self.config.seed, "size": self.size,
                    "normalize": self.normalize,
                    "samples": None if samples is None else _sha(list(map(int, samples)))})[:16]
        path = self.cache / f"supervised-{data_key}-{pct(fraction).rstrip('%')}pct-{key}.pt"
        model = Classifier(self.random_init(offset=1), self.num_classes(data_key)).to(self._device())
        if path.is_file():
            model.load_state_dict(torch.load(path, map_location=self._device(), weights_only=True))
            return model.eval()
        model = finetune(model.encoder, self.sets[data_key], self.num_classes(data_key),
                         config=self.config.supervised, samples=samples, fraction=fraction,
                         desc=f"supervised from scratch, {pct(fraction)} of the labels", **self._ft_kwargs())
        self._save(path, model.state_dict())
        return model

    def encoder(self, which: str) -> torch.nn.Module:
        if which == "learned":
            return self.learned()
        if which == "random_init":
            return self.random_init()
        if which == "raw_pixels":
            return self.raw_pixels()
        if which == "supervised":
            return self.supervised(1.0).encoder.eval()
        raise ValueError(which)

    def which(self, networks_only: bool = False) -> tuple[str, ...]:
        """The learned encoder and the configured baselines (``networks_only``: not raw pixels)."""
        chosen = ("learned",) + tuple(b for b in ENCODERS[1:] if b in self.config.baselines)
        return tuple(w for w in chosen if w in NETWORKS) if networks_only else chosen

    # -- features -----------------------------------------------------------------------------

    def _save(self, path: Path, obj) -> None:
        from ..shards.fileio import atomic_target
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_target(path, f".{os.getpid()}.tmp") as tmp:
            torch.save(obj, tmp)

    def _encoder_identity(self, which: str) -> dict:
        if which == "learned":
            return {"sha256": self.meta.get("sha256")}
        if which == "raw_pixels":
            return {"raw_pixels": self.config.raw_pixels_size}
        ident = {"arch": self.meta["architecture"], "seed": self.config.seed}
        if which == "supervised":
            ident.update(cfg=asdict(self.config.supervised), data=self.fingerprints["train"])
        return ident

    def eval_loader(self, key: str):
        from .features import eval_loader
        c = self.config
        return eval_loader(self.sets[key], batch_size=c.batch_size, views=self.views, size=self.size,
                           device=c.device, center_crop=c.center_crop or None, normalize=self.normalize,
                           num_threads=c.threads or None, torch_device=self._device())

    def features(self, which: str, key: str):
        """``(features, labels, index)`` of every sample of the shard set ``key`` under the
        encoder ``which``, extracted once through the eval view and cached in ``OUT/cache/``."""
        from .features import extract_features
        c = self.config
        ident = {"encoder": self._encoder_identity(which), "data": self.fingerprints[key], "size": self.size,
                 "center_crop": c.center_crop, "normalize": self.normalize, "views": self.views}
        digest = _sha(ident)[:16]
        if (which, key, digest) in self.features_cache:
            return self.features_cache[(which, key, digest)]
        path = self.cache / f"features-{which}-{key}-{digest}.pt"
        if path.is_file():
            f, lab, idx = torch.load(path, weights_only=True)
        else:
            t = time.perf_counter()
            loader = self.eval_loader(key)
            try:
                f, lab, idx = extract_features(self.encoder(which), loader)
            finally:
                loader.close()
            self.timings[f"features {which} {key}"] = time.perf_counter() - t
            if bool((lab < 0).any()):
                raise EvalError(f"{self.sets[key]}: {int((lab < 0).sum())} samples have no label; "
                                "evaluation needs every sample labelled")
            self._save(path, (f, lab, idx))
        self.features_cache[(which, key, digest)] = (f, lab, idx)
        return f, lab, idx

    # -- label subsets ------------------------------------------------------------------------

    def subset(self, fraction: float, key: str = "train"):
        """The class-balanced, seeded subset of ``fraction`` of the labels of ``key``, from
        ``OUT/subsets/`` when a file is there (so published subsets can be dropped in), else
        drawn and written there."""
        from .label_subsets import read_subset, write_subset
        c = self.config
        path = self.out / "subsets" / f"{key}-{pct(fraction).rstrip('%')}pct-seed{c.subset_seed}.json"
        if not path.is_file():
            _, labels, index = self.features("learned", key)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_subset(path, index.numpy(), labels.numpy(), fraction, c.subset_seed)
        chosen = read_subset(path)
        declared = json.loads(path.read_text()).get("fraction")
        if declared is not None and abs(float(declared) - fraction) > 1e-9:
            raise EvalError(f"{path}: a subset of {declared} of the labels, not {fraction}; move it away")
        _, _, index = self.features("learned", key)
        unknown = sorted(set(chosen.tolist()) - set(index.tolist()))
        if unknown:
            raise EvalError(f"{path}: {len(unknown)} of its sample indices ({', '.join(map(str, unknown[:5]))}"
                            f"{', ...' if len(unknown) > 5 else ''}) are not in {self.sets[key]}: a subset of "
                            "other shards; move it away to draw a new one")
        self.results["subsets"][pct(fraction)] = str(path.relative_to(self.out))
        return chosen

    # -- protocols ----------------------------------------------------------------------------

    def knn(self) -> dict:
        from .knn import knn_accuracy
        c = self.config
        out: dict = {}
        for which in self.which():
            f, lab, _ = self.features(which, "train")
            vf, vlab, _ = self.features(which, "val")
            for k in c.knn_k:
                out.setdefault(f"k{k}", {})[which] = knn_accuracy(
                    f, lab, vf, vlab, k=min(k, len(lab)), temperature=c.knn_temperature,
                    num_classes=self.num_classes())
        return out

    def _frozen(self, which: str, train_key: str = "train", val_key: str = "val"):
        from .linear_probe import standardize
        f, lab, _ = self.features(which, train_key)
        vf, vlab, _ = self.features(which, val_key)
        if self.config.linear.standardize:
            f, vf = standardize(f, vf)
        return f, lab, vf, vlab

    def linear(self) -> dict:
        from .linear_probe import logistic_regression, topk_accuracy, train_linear
        lc = self.config.linear
        out: dict = {"sgd": {}, "logistic": {}}
        for which in self.which():
            f, lab, vf, vlab = self._frozen(which)
            layer = train_linear(f, lab, self.num_classes(), epochs=lc.epochs, lr=lc.lr, batch_size=lc.batch_size,
                                 momentum=lc.momentum, weight_decay=lc.weight_decay, seed=self.config.seed)
            with torch.no_grad():
                out["sgd"][which] = topk_accuracy(layer(vf), vlab)
            out["logistic"][which] = logistic_regression(f, lab, vf, vlab, C=lc.logistic_C,
                                                         max_iter=lc.logistic_max_iter)
        if self.config.fractions:
            out["logistic_shares"] = self.linear_shares()
        return out

    def linear_shares(self) -> dict:
        """Logistic regression on frozen features fitted on each label share of ``fractions``
        (the subsets of ``semi``; the features are standardised with the statistics of the whole
        unlabelled training set). The supervised column is the network trained from scratch on
        the same subset, as in the semi-supervised rows."""
        from .linear_probe import logistic_regression
        lc = self.config.linear
        out: dict = {}
        for fraction in self.config.fractions:
            samples = torch.as_tensor(self.subset(fraction))
            row: dict = {"labelled_samples": int(len(samples))}
            for which in self.which():
                if which == "supervised":
                    row["supervised"] = self.supervised_from_scratch(fraction)
                    continue
                f, lab, vf, vlab = self._frozen(which)
                _, _, index = self.features(which, "train")
                rows = torch.isin(index, samples)
                row[which] = logistic_regression(f[rows], lab[rows], vf, vlab, C=lc.logistic_C,
                                                 max_iter=lc.logistic_max_iter)
            out[pct(fraction)] = row
        return out

    def svm(self) -> dict:
        from .linear_probe import linear_svm
        out: dict = {"linear_svm": {}}
        for which in self.which():
            f, lab, vf, vlab = self._frozen(which)
            out["linear_svm"][which] = linear_svm(f, lab, vf, vlab, C=self.config.svm_C)
        return out

    def _accuracy(self, model: torch.nn.Module, key: str) -> dict:
        from .finetune import predict
        from .linear_probe import topk_accuracy
        loader = self.eval_loader(key)
        try:
            scores, labels = predict(model, loader)
        finally:
            loader.close()
        return topk_accuracy(scores, labels)

    def semi(self) -> dict:
        c = self.config
        out: dict = {}
        for fraction in c.fractions:
            samples = self.subset(fraction)
            row: dict = {"labelled_samples": int(len(samples)),
                         "epochs": epochs_for(c.finetune, fraction)}
            starts = [("learned", self.learned)]
            if "random_init" in c.baselines:
                starts.append(("random_init", self.random_init))
            for which, make in starts:      # raw pixels have nothing to fine-tune: see linear
                model = finetune(make(), self.sets["train"], self.num_classes(), config=c.finetune,
                                 samples=samples, fraction=fraction,
                                 desc=f"fine-tune {which}, {pct(fraction)} of the labels", **self._ft_kwargs())
                row[which] = self._accuracy(model, "val")
            if "supervised" in c.baselines:
                row["supervised"] = self.supervised_from_scratch(fraction)
            out[pct(fraction)] = row
        return out

    def supervised_from_scratch(self, fraction: float) -> dict:
        """Val accuracy of the architecture trained from scratch on ``fraction`` of the labels
        (recorded under ``supervised_from_scratch`` too)."""
        key = pct(fraction)
        done = self.results["supervised_from_scratch"].get(key)
        if done is not None and "top1" in done:
            return {k: done[k] for k in ("top1", "top5") if k in done}
        acc = self._accuracy(self.supervised(fraction), "val")
        self.results["supervised_from_scratch"][key] = {
            **acc, "labelled_samples": int(len(self.subset(fraction))) if fraction < 1
            else int(self.shards["train"].num_samples or 0),
            "epochs": epochs_for(self.config.supervised, fraction)}
        return acc

    def transfer(self) -> dict:
        from .linear_probe import logistic_regression, standardize
        if "transfer_train" not in self.sets:
            raise EvalError("the transfer protocol needs another labelled shard set: --transfer-train and "
                            "--transfer-val (or, for `clvr eval transfer`, --train and --val are the target)")
        c = self.config
        n = self.num_classes("transfer_train")
        out: dict = {"linear": {}, "finetune": {}}
        starts = [("learned", self.learned)]
        if "raw_pixels" in c.baselines:
            starts.append(("raw_pixels", self.raw_pixels))
        if "random_init" in c.baselines:
            starts.append(("random_init", self.random_init))
        if "supervised" in c.baselines:
            if str(self.sets[self.source_key]) == str(self.sets["transfer_train"]):
                self.results["skipped"]["transfer: supervised"] = (
                    "the supervised baseline would be pre-trained on the target itself; give --source "
                    "(labelled shards like the pre-training data) to have it")
            else:
                starts.append(("supervised", lambda: self.supervised(1.0, self.source_key).encoder))
        for which, make in starts:
            enc = make()
            from .features import extract_features
            feats = {}
            for key in ("transfer_train", "transfer_val"):
                loader = self.eval_loader(key)
                try:
                    feats[key] = extract_features(enc, loader)
                finally:
                    loader.close()
            (f, lab, _), (vf, vlab, _) = feats["transfer_train"], feats["transfer_val"]
            if c.linear.standardize:
                f, vf = standardize(f, vf)
            out["linear"][which] = logistic_regression(f, lab, vf, vlab, C=c.linear.logistic_C,
                                                       max_iter=c.linear.logistic_max_iter)
            if which == "raw_pixels":
                continue                 # nothing to fine-tune
            model = finetune(enc, self.sets["transfer_train"], n, config=c.finetune, fraction=1.0,
                             desc=f"transfer: fine-tune {which}", **self._ft_kwargs())
            out["finetune"][which] = self._accuracy(model, "transfer_val")
        return out

    # -- running ------------------------------------------------------------------------------

    def run(self, protocols) -> dict:
        """Run ``protocols`` (names of ``PROTOCOLS``, or ``all``) in order; the results file is
        rewritten after each, so a long evaluation keeps what it has done."""
        from .report import write_results
        todo = list(ecfg.PROTOCOLS) if "all" in protocols else list(protocols)
        unknown = [p for p in todo if p not in ecfg.PROTOCOLS]
        if unknown:
            raise EvalError(f"unknown protocol(s) {', '.join(unknown)}; choose from {', '.join(ecfg.PROTOCOLS)} or all")
        for name in todo:
            if name == "transfer" and "transfer_train" not in self.sets:
                if "all" in protocols:
                    self.results["skipped"]["transfer"] = ("no transfer data: give --transfer-train and "
                                                           "--transfer-val")
                    continue
            t = time.perf_counter()
            self.results["protocols"][name] = getattr(self, name)()
            self.results["skipped"].pop(name, None)
            self.results["seconds"][name] = round(time.perf_counter() - t, 1)
            if "supervised" in self.config.baselines and name in ("knn", "linear", "svm", "semi") \
                    and "100%" not in self.results["supervised_from_scratch"]:
                self.supervised_from_scratch(1.0)
            write_results(self)
        return self.results
