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


def present_class_ids(shards) -> set[int]:
    """The class ids a shard set has samples of: its manifest's ``label_counts`` when the set is
    the manifest's whole set, else every id its classes name."""
    m = shards.manifest or {}
    counts = m.get("label_counts")
    whole = (m.get("totals") or {}).get("samples") == shards.num_samples
    if isinstance(counts, dict) and whole:
        try:
            return {int(k) for k, v in counts.items() if int(v) > 0}
        except (TypeError, ValueError):
            pass
    return set(range(len(shards.classes or [])))


def ids_text(ids, names, limit: int = 8) -> str:
    """``3, 17 (dog), 42`` for class ids (with their names where a name is not the id itself)."""
    ids = list(ids)
    parts = []
    for i in ids[:limit]:
        name = names[i] if 0 <= i < len(names) else None
        parts.append(str(i) if name is None or str(name) == str(i) else f"{i} ({name})")
    return ", ".join(parts) + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def compare_classes(a, b, sides=(("train", "--train"), ("val", "--val")), specs=None) -> dict:
    """Compare the classes of two labelled shard sets ``a`` (trained on) and ``b`` (scored).

    Returns ``{"renumbered": [(id, name in a, name in b), ...], "only_a": [ids], "only_b": [ids],
    "error": message or None, "note": message or None}``:

    - the same id named differently in the two manifests' ``classes["names"]`` (lists of
      different lengths are fine as long as the ids they share have the same names): an error;
    - ``b`` has samples of classes ``a`` has none of: an error naming those ids;
    - ``a`` has samples of classes ``b`` lacks: allowed, a note naming them.
    """
    (la, fa), (lb, fb) = sides
    sa, sb = specs or (a.spec, b.spec)
    na, nb = list(a.classes or []), list(b.classes or [])
    renumbered = [(i, na[i], nb[i]) for i in range(min(len(na), len(nb))) if str(na[i]) != str(nb[i])]
    pa, pb = present_class_ids(a), present_class_ids(b)
    only_a, only_b = sorted(pa - pb), sorted(pb - pa)
    names = nb if len(nb) > len(na) else na
    error = note = None
    if renumbered:
        first = "; ".join(f"id {i} is {x!r} in {la} but {y!r} in {lb}" for i, x, y in renumbered[:5])
        more = f" ({len(renumbered)} ids differ)" if len(renumbered) > 5 else ""
        error = (f"{fa} {sa} and {fb} {sb} do not number the same classes with the same ids: {first}{more}. "
                 f"Label both with one numbering: for foreign WebDataset sets, index the {lb} set with the "
                 f"{la} set's ids (clvr shard index {sb} --classes-from {sa}); clvr's own shard sets: shard "
                 "both with the same classes")
    elif only_b:
        error = (f"{lb} has classes {ids_text(only_b, names)} that {la} lacks ({fb} {sb} has samples of "
                 f"them, {fa} {sa} none), so they could never be predicted; give a {la} set with samples of "
                 f"every class of {lb}, or leave those samples out of {fb}")
    if only_a and error is None:
        note = (f"{la} has classes {ids_text(only_a, names)} that {lb} lacks ({fa} {sa} has samples of them, "
                f"{fb} {sb} none): they can be predicted but are never scored")
    return {"renumbered": renumbered, "only_a": only_a, "only_b": only_b, "error": error, "note": note}


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
        on_error: ``raise`` (default) or ``skip``: the loaders of feature extraction, fine-tuning
            and scoring skip unreadable samples; each is printed on stderr once and listed in
            ``results.json`` (``skipped_samples``).

    Samples without a label (label -1, e.g. those a foreign set's ``clvr shard index`` listed as
    ``unlabelled``) are never trained on nor scored: they are left out after feature extraction
    (the cached features hold them), left out of the label subsets and of fine-tuning, and counted
    per set (``data.SET.unlabelled_left_out`` and ``notes`` in ``results.json``).
    """

    #: skipped samples printed one per line; beyond, only counted (all are in results.json)
    SHOW_SKIPPED = 20

    def __init__(self, encoder, train, val, out, config: ecfg.EvalConfig | None = None,
                 transfer: tuple | None = None, source=None, on_error: str = "raise"):
        from ..pipeline.source import resolve
        from .export import describe, export_encoder

        self.config = config or ecfg.EvalConfig()
        if on_error not in ("raise", "skip"):
            raise EvalError(f"on_error = {on_error!r}; choose one of raise, skip")
        self.on_error = on_error
        self.class_notes: dict[str, str] = {}      # "train/val" -> a note on classes one side lacks
        self.left_out: dict[str, dict] = {}        # set key -> {"unlabelled", "samples"}
        self.unlabelled_index: dict[str, set] = {} # set key -> global indices of samples without a label
        self.skipped_shown = 0                     # skipped samples printed so far
        self.skipped_said: set = set()             # (set, shard, key) met by this evaluation
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
        self.results.setdefault("skipped_samples", [])
        self.results["classes"] = {"notes": dict(self.class_notes)}
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
        """The sets ``a`` (trained on) and ``b`` (scored) must number their classes alike, and
        ``b`` must have no class ``a`` has no sample of; classes only ``a`` has are a note."""
        name = {k: k.replace("_", "-") for k in (a, b)}
        found = compare_classes(self.shards[a], self.shards[b],
                                sides=((name[a], f"--{name[a]}"), (name[b], f"--{name[b]}")),
                                specs=(self.sets[a], self.sets[b]))
        if found["error"]:
            raise EvalError(found["error"])
        if found["note"]:
            self.class_notes[f"{a}/{b}"] = found["note"]

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
                    progress=c.progress, normalize=self.normalize, on_error=self.on_error)

    def _finetune(self, encoder, data_key: str, num_classes: int, **kw) -> Classifier:
        """:func:`.finetune.finetune` on the set ``data_key``; the samples its loader skipped are
        reported, and so are rows without a label it met (left out of its loss)."""
        report: dict = {}
        model = finetune(encoder, self.sets[data_key], num_classes, report=report, **kw, **self._ft_kwargs())
        self._note_skipped(data_key, report.get("skipped", []))
        if report.get("unlabelled_rows"):
            self.results.setdefault("finetune_unlabelled_rows", {})[kw.get("desc", "fine-tune")] = \
                int(report["unlabelled_rows"])
        return model

    def supervised(self, fraction: float = 1.0, data_key: str = "train") -> Classifier:
        """The architecture trained from scratch on ``fraction`` of ``data_key``'s labels, with
        the supervised settings; cached in ``OUT/cache/`` (by settings, data and subset)."""
        samples = self.labelled_samples(data_key) if fraction >= 1 else self.subset(fraction, data_key)
        key = _sha({"arch": self.meta["architecture"], "data": self.fingerprints[data_key],
                    "cfg": asdict(self.config.supervised), "seed": self.config.seed, "size": self.size,
                    "normalize": self.normalize,
                    "samples": None if samples is None else _sha(list(map(int, samples)))})[:16]
        path = self.cache / f"supervised-{data_key}-{pct(fraction).rstrip('%')}pct-{key}.pt"
        model = Classifier(self.random_init(offset=1), self.num_classes(data_key)).to(self._device())
        if path.is_file():
            model.load_state_dict(torch.load(path, map_location=self._device(), weights_only=True))
            return model.eval()
        model = self._finetune(model.encoder, data_key, self.num_classes(data_key),
                               config=self.config.supervised, samples=samples, fraction=fraction,
                               desc=f"supervised from scratch, {pct(fraction)} of the labels")
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
                           num_threads=c.threads or None, torch_device=self._device(), on_error=self.on_error)

    # -- samples without a label, samples skipped ---------------------------------------------

    def _labelled(self, key: str, labels: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """The mask of the rows of set ``key`` that have a label (>= 0); the count of those left
        out is recorded (``results.json``: ``data.KEY.unlabelled_left_out``)."""
        keep = labels >= 0
        total, unlabelled = int(labels.numel()), int((~keep).sum())
        if total and unlabelled == total:
            raise EvalError(f"--{key.replace('_', '-')} {self.sets[key]}: none of its {total} samples has a label "
                            "(all are -1); evaluation needs labelled samples")
        self.left_out[key] = {"unlabelled": unlabelled, "samples": total}
        if index is not None:
            self.unlabelled_index[key] = set(index[~keep].tolist())
        entry = self.results.get("data", {}).get(key)
        if isinstance(entry, dict):
            entry["unlabelled_left_out"] = unlabelled
            entry["labelled_samples"] = total - unlabelled
        return keep

    def labelled_samples(self, key: str = "train"):
        """The global indices of the labelled samples of ``key`` when some of its samples have no
        label (so fine-tuning on "all the labels" reads only those), else None (every sample)."""
        m = self.shards[key].manifest or {}
        unlabelled = m.get("unlabelled")
        if not (isinstance(unlabelled, dict) and int(unlabelled.get("count") or 0) > 0):
            return None
        _, _, index = self.features("learned", key)
        return index

    def _note_skipped(self, key: str, entries) -> None:
        """Record the samples a loader of set ``key`` skipped (``on_error = skip``): each once in
        ``results.json`` (``skipped_samples``) and, up to ``SHOW_SKIPPED``, on stderr."""
        known = {(e.get("set"), e.get("shard"), e.get("key")) for e in self.results["skipped_samples"]}
        for e in entries:
            row = {"set": key, "shard": str(e.get("shard")), "key": e.get("key"), "reason": e.get("reason")}
            where = (row["set"], row["shard"], row["key"])
            if where not in known:              # (results of an earlier run into OUT may list it)
                known.add(where)
                self.results["skipped_samples"].append(row)
            if where in self.skipped_said:
                continue
            self.skipped_said.add(where)
            if self.skipped_shown < self.SHOW_SKIPPED:
                self.skipped_shown += 1
                print(f"clvr eval: skipped a sample of --{key.replace('_', '-')}: {row['shard']}: key {row['key']}: "
                      f"{row['reason']}", file=sys.stderr)

    def notes(self) -> list[str]:
        """What the report says besides the scores: classes a set lacks, samples without a label
        left out, samples skipped."""
        out = list(self.class_notes.values())
        for key, n in self.left_out.items():
            if n["unlabelled"]:
                out.append(f"{key.replace('_', '-')}: {n['unlabelled']} of {n['samples']} samples have no label "
                           "(-1) and are left out")
        for desc, n in (self.results.get("finetune_unlabelled_rows") or {}).items():
            out.append(f"{desc}: {n} rows without a label (-1) were left out of the loss")
        rep = self.results.get("representation") or {}
        if rep.get("learned"):
            r = rep["learned"]
            others = ", ".join(f"{k.replace('_', ' ')} {v['effective_rank']:.1f}" for k, v in rep.items() if k != "learned")
            out.append(f"representation: the learned val features' effective rank is {r['effective_rank']:.1f} of at "
                       f"most {r['most']}" + (f" ({others})" if others else "") + f", spread {r['feature_spread']:.2f}"
                       + (": DIMENSIONAL COLLAPSE, the features live in a few directions (see clvr.methods.collapse)"
                          if r.get("dimensional_collapse") else ""))
        skipped = self.results.get("skipped_samples") or []
        if skipped:
            by_set: dict[str, int] = {}
            for e in skipped:
                by_set[e["set"]] = by_set.get(e["set"], 0) + 1
            out.append(f"{len(skipped)} sample(s) skipped as unreadable (on_error = skip): "
                       + ", ".join(f"{k.replace('_', '-')}: {v}" for k, v in by_set.items())
                       + "; listed under skipped_samples in results.json")
        return out

    # -- features -----------------------------------------------------------------------------

    def features(self, which: str, key: str):
        """``(features, labels, index)`` of every labelled sample of the shard set ``key`` under
        the encoder ``which``, extracted once through the eval view and cached in ``OUT/cache/``.

        The extraction (and its cache) holds every sample read; samples without a label (-1) are
        left out of what is returned, and counted (:meth:`_labelled`). Samples the loader skipped
        (``on_error = skip``) are reported, also when the features come from the cache."""
        from .features import extract_features
        c = self.config
        ident = {"encoder": self._encoder_identity(which), "data": self.fingerprints[key], "size": self.size,
                 "center_crop": c.center_crop, "normalize": self.normalize, "views": self.views}
        digest = _sha(ident)[:16]
        if (which, key, digest) in self.features_cache:
            return self.features_cache[(which, key, digest)]
        path = self.cache / f"features-{which}-{key}-{digest}.pt"
        skipped_path = self.cache / f"skipped-{which}-{key}-{digest}.json"
        if path.is_file():
            f, lab, idx = torch.load(path, weights_only=True)
            skipped = json.loads(skipped_path.read_text()) if skipped_path.is_file() else []
        else:
            t = time.perf_counter()
            loader = self.eval_loader(key)
            try:
                f, lab, idx = extract_features(self.encoder(which), loader)
                skipped = [{k: (str(v) if k == "shard" else v) for k, v in e.items()} for e in loader.skipped]
            finally:
                loader.close()
            self.timings[f"features {which} {key}"] = time.perf_counter() - t
            if skipped:
                from ..shards.fileio import write_atomic
                skipped_path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(skipped_path, (json.dumps(skipped, indent=1) + "\n").encode())
            elif skipped_path.is_file():
                skipped_path.unlink()
            self._save(path, (f, lab, idx))
        self._note_skipped(key, skipped)
        keep = self._labelled(key, lab, idx)
        out = (f[keep], lab[keep], idx[keep])
        self.features_cache[(which, key, digest)] = out
        return out

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
            write_subset(path, index.numpy(), labels.numpy(), fraction, c.subset_seed,
                         unlabelled_left_out=self.left_out.get(key, {}).get("unlabelled", 0))
        chosen = read_subset(path)
        declared = json.loads(path.read_text()).get("fraction")
        if declared is not None and abs(float(declared) - fraction) > 1e-9:
            raise EvalError(f"{path}: a subset of {declared} of the labels, not {fraction}; move it away")
        _, _, index = self.features("learned", key)
        unknown = sorted(set(chosen.tolist()) - set(index.tolist()))
        no_label = [i for i in unknown if i in self.unlabelled_index.get(key, set())]
        if no_label:
            raise EvalError(f"{path}: {len(no_label)} of its sample indices ({', '.join(map(str, no_label[:5]))}"
                            f"{', ...' if len(no_label) > 5 else ''}) are samples of {self.sets[key]} without a "
                            "label (-1); a label subset draws from labelled samples only: move it away to draw a "
                            "new one")
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
            self._note_skipped(key, loader.skipped)
        finally:
            loader.close()
        keep = self._labelled(key, labels)
        return topk_accuracy(scores[keep], labels[keep])

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
                model = self._finetune(make(), "train", self.num_classes(), config=c.finetune,
                                       samples=samples, fraction=fraction,
                                       desc=f"fine-tune {which}, {pct(fraction)} of the labels")
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
            else self._labelled_count("train"),
            "epochs": epochs_for(self.config.supervised, fraction)}
        return acc

    def _labelled_count(self, key: str) -> int:
        """Samples of ``key`` with a label: all of them unless its manifest lists unlabelled ones."""
        labelled = self.labelled_samples(key)
        return int(self.shards[key].num_samples or 0) if labelled is None else int(len(labelled))

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
                    f, lab, idx = extract_features(enc, loader)
                    self._note_skipped(key, loader.skipped)
                finally:
                    loader.close()
                keep = self._labelled(key, lab)
                feats[key] = (f[keep], lab[keep], idx[keep])
            (f, lab, index), (vf, vlab, _) = feats["transfer_train"], feats["transfer_val"]
            if c.linear.standardize:
                f, vf = standardize(f, vf)
            out["linear"][which] = logistic_regression(f, lab, vf, vlab, C=c.linear.logistic_C,
                                                       max_iter=c.linear.logistic_max_iter)
            if which == "raw_pixels":
                continue                 # nothing to fine-tune
            samples = index if self.left_out["transfer_train"]["unlabelled"] else None
            model = self._finetune(enc, "transfer_train", n, config=c.finetune, fraction=1.0, samples=samples,
                                   desc=f"transfer: fine-tune {which}")
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
        if "val" in self.sets and any(name in ("knn", "linear", "svm", "semi") for name in todo):
            self.results["representation"] = self.representation()
            write_results(self)
        return self.results

    def representation(self) -> dict:
        """The effective rank and spread (:mod:`.collapse`) of the val features of the learned
        encoder and of the network baselines already extracted: whether the representation uses
        its dimensions, beside how well it classifies. Below ``collapse_rank`` of ``min(N, D)``
        the learned features are named a dimensional collapse in the report's notes."""
        from .collapse import DEFAULT_RANK_FRACTION, effective_rank, feature_spread
        out = {}
        for which in self.which(networks_only=True):
            cached = [v for (w, key, _), v in self.features_cache.items() if w == which and key == "val"]
            if which != "learned" and not cached:
                continue
            f = cached[0][0] if cached else self.features(which, "val")[0]
            if len(f) < 2:
                continue
            rank = effective_rank(f)
            out[which] = {"effective_rank": round(rank, 2), "most": int(min(f.shape[0], f.flatten(1).shape[1])),
                          "feature_spread": round(feature_spread(f), 4)}
        learned = out.get("learned")
        if learned is not None:
            learned["dimensional_collapse"] = learned["effective_rank"] < DEFAULT_RANK_FRACTION * learned["most"]
        return out
