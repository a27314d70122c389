"""What a resume may change: the checkpoint's settings against the new run's, before anything heavy.

A checkpoint is a position (step ``s`` of an epoch of ``n`` batches of ``b`` images from one
data set, in an order fixed by the seed) and a state (weights, optimiser, memory bank or queue)
of one objective. Continuing it with other settings silently turns it into something else: a
different batch size rereads step 6 as a position in an epoch of another length, another seed
draws another order, another data set no longer fits the memory bank. So a resume compares:

- **guarded** settings (:data:`GUARDED`: method, seed, batch, processes, the data set's
  fingerprint, views, recipe, the method's own settings such as bank and queue sizes, optimiser,
  schedule, precision, gradient accumulation): a difference is refused by name with both values,
  unless ``--resume-changed KEY`` accepts it; an accepted change of batch size, processes or data
  keeps the epoch and the number of images seen in it (:func:`converted_step`);
- the other settings (the run's length, logging, checkpoint and monitor frequencies, devices and
  threads): a difference is allowed and said in a note (a longer run stretches the lr schedule).

:func:`data_fingerprint` identifies a shard set by its content as its manifest records it
(shard names, sample counts, sizes and hashes, classes), not by its path, so a set copied to a
node's scratch disk resumes as the same data. The run's ``metrics.jsonl`` is cut back to the resumed step
(:meth:`clvr.methods.metrics.MetricsLog.cut_back`), so a resumed run's log holds each step once.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

from .errors import MethodError

#: the checkpoint key of the data set's identity (:func:`data_fingerprint`)
DATA = "data_set"
#: the pseudo-key of the number of processes
PROCESSES = "world_size"

#: settings whose change alters what the saved position or state means; each with why
GUARDED = {
    "method": "the checkpoint is another objective's state",
    "seed": "it fixes the data order and augmentations the saved position counts in",
    "data.batch_size": "the saved position counts batches of this size",
    PROCESSES: "the saved position counts global batches of this many processes, and each process's "
               "random state is saved",
    DATA: "the saved position, the memory bank and the labels belong to this data set",
    "data.views": "the method was trained on these views",
    "data.view_options": "the method was trained on these views",
    "data.recipe": "the method was trained on these augmentations",
    "data.size": "the method was trained on views of this size",
    "data.photometric": "the views' colour augmentation",
    "data.shuffle_buffer": "it fixes the data order the saved position counts in",
    "model": "the method's own settings (sizes of the memory bank and queue, temperature, network)",
    "optim": "the optimiser's saved state and learning rate",
    "schedule": "the learning-rate schedule the saved step is a point of",
    "grad_accum": "the schedule counts optimiser steps of this many batches",
    "precision": "the numerics (and the gradient scaler's state) of the saved run",
}
#: of the guarded, those an accepted change of which moves the position (:func:`converted_step`)
MOVES_POSITION = ("data.batch_size", PROCESSES, DATA)


class ResumeError(MethodError):
    """A resume that would continue a checkpoint with settings that change what it means."""


def guard_of(key: str) -> str | None:
    """The :data:`GUARDED` entry covering ``key`` (itself or a section above it), None if free."""
    parts = key.split(".")
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        if name in GUARDED:
            return name
    return None


def flatten(config: dict, prefix: str = "") -> dict:
    """``{"optim": {"lr": 0.1}}`` -> ``{"optim.lr": 0.1}``; lists and tuples compare as lists."""
    out = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = list(v) if isinstance(v, tuple) else v
    return out


def data_fingerprint(shard_set) -> dict:
    """The identity of a :class:`~clvr.pipeline.source.ShardSet`: ``{"sha256", "samples",
    "shards", "spec"}``. The hash covers what its manifest records of each shard (name, samples,
    bytes, sha256) and the classes; without a manifest, each tar's name, sample count and size.
    Paths are left out: the same shards elsewhere are the same data."""
    manifest = shard_set.manifest or {}
    if manifest.get("shards"):
        shards = [[s.get("name"), s.get("samples"), s.get("bytes"), s.get("sha256")] for s in manifest["shards"]]
    else:
        shards = []
        for s in shard_set.shards:
            size = None
            if not shard_set.remote:
                try:
                    size = os.path.getsize(s.tar)
                except OSError:
                    pass
            shards.append([os.path.basename(str(s.tar)), s.samples, size, None])
    text = json.dumps({"shards": shards, "classes": shard_set.classes}, sort_keys=True)
    return {"sha256": hashlib.sha256(text.encode()).hexdigest(), "samples": shard_set.num_samples,
            "shards": len(shard_set.shards), "spec": shard_set.spec}


def describe_data(found: dict | None) -> str:
    if not found:
        return "unknown"
    return f"{found.get('samples')} samples in {found.get('shards')} shard(s), {found['sha256'][:12]}…"


@dataclass
class Changes:
    """The differences between a checkpoint's settings and the new run's."""
    refused: dict = field(default_factory=dict)           # key -> its line: "key: old -> new (why)"
    accepted: dict = field(default_factory=dict)          # key -> [old, new], guarded, accepted
    free: dict = field(default_factory=dict)              # key -> [old, new], allowed
    notes: list[str] = field(default_factory=list)
    moves_position: bool = False

    def as_event(self) -> dict:
        return {"accepted": self.accepted, "changed": self.free}


def _show(value) -> str:
    return json.dumps(value) if not isinstance(value, str) else repr(value)


def compare(state: dict, config: dict, world_size: int, data: dict | None, accept=()) -> Changes:
    """Compare a checkpoint ``state`` (its ``config``, ``world_size`` and :data:`DATA`) with the
    new run's resolved ``config`` (a dict), ``world_size`` and ``data`` fingerprint. ``accept``:
    the keys (or sections, like ``optim``) ``--resume-changed`` names. A name that is neither a
    setting nor :data:`PROCESSES` / :data:`DATA` raises :class:`ResumeError`."""
    old_flat = flatten(state.get("config") or {})
    new_flat = flatten(config)
    known = set(old_flat) | set(new_flat) | set(GUARDED)
    for name in accept:
        if name not in known and not any(k.startswith(name + ".") for k in known):
            valid = sorted({k.split(".")[0] for k in known} | set(GUARDED))
            raise ResumeError(f"--resume-changed {name}: not a setting; name a key such as data.batch_size, "
                              f"seed, {PROCESSES}, {DATA}, or a section: {', '.join(valid)}")
    changes = Changes()
    old_flat[PROCESSES], new_flat[PROCESSES] = state.get("world_size"), world_size
    saved_data = state.get(DATA)
    if saved_data is None:
        changes.notes.append("the checkpoint records no data fingerprint (written by an earlier clvr): the data "
                             "set is not compared")
    elif data is not None:
        old_flat[DATA], new_flat[DATA] = saved_data, data
    for key in sorted(set(old_flat) | set(new_flat)):
        old, new = old_flat.get(key, "(unset)"), new_flat.get(key, "(unset)")
        if key == DATA:
            if old.get("sha256") == new.get("sha256"):
                continue
            old_text, new_text = describe_data(old), describe_data(new)
        elif old == new:
            continue
        else:
            old_text, new_text = _show(old), _show(new)
        guard = guard_of(key)
        if guard is None:
            changes.free[key] = [old, new]
            continue
        if any(key == a or key.startswith(a + ".") for a in accept):
            changes.accepted[key] = [old, new] if key != DATA else [old.get("sha256"), new.get("sha256")]
            changes.moves_position |= key in MOVES_POSITION
            continue
        changes.refused[key] = f"  {key}: {old_text} -> {new_text} ({GUARDED[guard]})"
    return changes


def refusal(path, changes: Changes) -> str:
    return (f"--resume {path}: the checkpoint was trained with other settings, which change what its "
            f"position and state mean:\n" + "\n".join(changes.refused.values())
            + f"\nResume with the checkpoint's settings (its run's config.yaml), accept the change with "
              f"--resume-changed {' '.join(changes.refused)}, or start a new run in another --out")


def converted_step(step: int, old_steps_per_epoch: int, old_global_batch: int, steps_per_epoch: int,
                   global_batch: int) -> int:
    """The step of a run whose batch, processes or data changed: the same epoch, and as many of
    its images seen as fit whole new batches (rounded down: a few images are seen again)."""
    epoch, position = divmod(step, old_steps_per_epoch)
    seen = position * old_global_batch
    return epoch * steps_per_epoch + min(seen // global_batch, steps_per_epoch - 1)
