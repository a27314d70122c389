"""Reading: DALI's webdataset reader over local shards, one part per process.

Each process reads ``shard_id = rank`` of ``num_shards = world_size`` parts. DALI splits the
*samples* (not the tar files) into contiguous ranges, so the parts differ by at most one sample.
Epoch boundaries are made exact by construction, not by resetting an iterator:

- ``pad_last_batch=True`` makes every part end its epoch on a batch boundary, padding with its
  last sample, so epoch ``e`` of a part is exactly batches ``[e*K, (e+1)*K)`` of the stream, with
  ``K = ceil(max part size / batch)`` on every rank.
- the loader always consumes whole epochs of the stream (it drains what it does not yield), and
  never resets the pipeline; DALI's prefetching simply runs on into the next epoch.

Shuffling: the tar order is permuted with the seed before the first epoch and reshuffled after
every epoch by DALI (``shuffle_after_epoch``) with the *same* seed on every rank, so the ranks
always partition one global order; inside each part a shuffle buffer (``initial_fill``) mixes
samples. With ``shuffle=False`` the order is the stored order.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from nvidia.dali import fn, types

from clvr.shards import format as F

from .errors import PipelineError
from .source import ShardSet

READER_NAME = "Reader"

# Reader outputs: field -> (ext set, DALI dtype).
FIELDS = {
    "index": (F.INDEX_EXT, types.INT64),
    "label": (F.LABEL_EXT, types.INT64),
    "image": (";".join(F.READ_IMAGE_EXTS), types.UINT8),
    "video": (";".join(F.VIDEO_EXTS), types.UINT8),
    "boxes": (F.BOXES_EXT, types.FLOAT),
    "box_classes": (F.BOXCLS_EXT, types.INT64),
    "text": (F.TEXT_EXT, types.UINT8),
}

# What a generator may ask for, and the components that must then be in the set.
NEEDS = {
    "image": ("image",),
    "video": ("video",),
    "boxes": ("boxes", "box_classes"),
    "text": ("text",),
}


@dataclass
class ReadOptions:
    rank: int = 0
    world_size: int = 1
    shuffle: bool = True
    shuffle_buffer: int = 1024
    seed: int = 0
    on_missing: str = "error"   # DALI missing_component_behavior


def field_exts(shards: ShardSet, field: str) -> list[str]:
    """The extensions that give ``field`` in this set: clvr's, plus the spellings in other case
    that the set's components use (``JPG``, ``Png``: ``clvr shard index`` writes them as found)."""
    exts = FIELDS[field][0].split(";")
    lower = {e.lower() for e in exts}
    return exts + sorted(c for c in shards.components if c.lower() in lower and c not in exts)


def has_field(shards: ShardSet, field: str) -> bool:
    return any(e in shards.components for e in field_exts(shards, field))


def index_from_order(shards: ShardSet) -> bool:
    """A set indexed by ``clvr shard index``: no ``index.i64``, the global index is the sample's
    position in the manifest's order (found from DALI's source info of each sample)."""
    return not has_field(shards, "index") and (shards.manifest or {}).get("index_from") == "order"


def fields_for(shards: ShardSet, needs: set[str]) -> list[str]:
    """The reader fields to request: always the index; the label when present; plus ``needs``."""
    if not has_field(shards, "index") and not index_from_order(shards):
        raise PipelineError(f"{shards.spec}: the samples have no {F.INDEX_EXT} component; clvr needs "
                            "the global sample index: run 'clvr shard index' on WebDataset tars written by "
                            "other tools, or re-shard with 'clvr shard'")
    fields = ["index"]
    if has_field(shards, "label"):
        fields.append("label")          # (a clvr shard index set's labels come from its side files)
    for need in sorted(needs):
        if need not in NEEDS:
            raise PipelineError(f"unknown input {need!r}; a view generator may need: {', '.join(NEEDS)}")
        for f in NEEDS[need]:
            if not has_field(shards, f):
                have = ", ".join(sorted(shards.components)) or "nothing"
                raise PipelineError(f"{shards.spec}: this view generator needs {need!r} samples "
                                    f"(component {FIELDS[f][0]}), but the set has: {have}")
            fields.append(f)
    return fields


def shard_order(n: int, seed: int, shuffle: bool) -> list[int]:
    order = list(range(n))
    if shuffle:
        random.Random(seed).shuffle(order)
    return order


def read(shards: ShardSet, fields: list[str], opts: ReadOptions, index_files: list[str] | None = None) -> dict:
    """DALI reader nodes for ``fields``, as a dict field -> DataNode."""
    order = shard_order(len(shards.shards), opts.seed, opts.shuffle)
    tars = [shards.shards[i].tar for i in order]
    idxs = [(index_files or shards.index_files)[i] for i in order]
    kwargs = {}
    if opts.shuffle:
        # Same shard-order seed on every rank: the ranks partition one global order each epoch.
        kwargs.update(random_shuffle=True, initial_fill=max(1, opts.shuffle_buffer),
                      shuffle_after_epoch=True, shuffle_after_epoch_seed=opts.seed)
    else:
        kwargs.update(random_shuffle=False, stick_to_shard=True)
    by_order = fields[0] == "index" and index_from_order(shards)
    read_fields = fields[1:] if by_order else fields
    outs = fn.readers.webdataset(
        paths=tars, index_paths=idxs,
        ext=[";".join(field_exts(shards, f)) for f in read_fields], dtypes=[FIELDS[f][1] for f in read_fields],
        shard_id=opts.rank, num_shards=opts.world_size,
        seed=(opts.seed * 7919 + opts.rank + 1) % (2 ** 31),
        pad_last_batch=True, missing_component_behavior=opts.on_missing, name=READER_NAME, **kwargs)
    if not isinstance(outs, (list, tuple)):
        outs = [outs]
    out = dict(zip(read_fields, outs))
    # "tar:offset:member" of each sample's image or video, as bytes: the loader finds the sample's
    # tar and key from it (and, for a clvr shard index set, its global index and label)
    media = next((out[f] for f in ("image", "video") if f in out), outs[-1])
    out["source"] = fn.get_property(media, key="source_info")
    if by_order:
        out["index"] = out["source"]
    return out


def part_sizes(num_samples: int, world_size: int) -> list[int]:
    """How DALI splits ``num_samples`` into ``world_size`` contiguous parts."""
    return [(num_samples * (r + 1)) // world_size - (num_samples * r) // world_size for r in range(world_size)]
