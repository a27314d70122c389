"""Naming the sample behind a DALI error.

When DALI fails on a batch (a sample that became corrupt after sharding, a component with the
wrong size), its message names an operator, not a sample. The loader then asks this module which
sample it was:

1. a *shadow* reader (the same reader, seed and index files, reading only ``index.i64``) replays
   the stream up to the failing run and lists the samples of the batches that were in flight;
2. each of those samples is read straight from its tar (offsets from the index file) and checked
   on its own: component sizes, then a decode of the image or video.

Remote (streamed) shards have no index files to replay: their feed keeps the bytes of the
batches in flight, and :func:`find_bad_remote` checks those the same way.

The result is the shard and key of every bad sample among them.
"""

from __future__ import annotations

import dataclasses
import io
import mmap
import os

import numpy as np
from nvidia.dali import fn, pipeline_def, types

from clvr.shards import format as F

from . import reader as reader_mod
from .errors import dali_message
from .source import read_index


def in_flight(shards, opts, index_files, fields, batch_size: int, runs_done: int, ahead: int) -> list[str]:
    """The source of each sample ("tar:offset:member", as DALI reports it) of the batches
    ``runs_done .. runs_done + ahead`` of the reader's stream (read, not decoded)."""
    @pipeline_def(batch_size=batch_size, num_threads=1, device_id=None, seed=0, prefetch_queue_depth=1)
    def shadow():
        return reader_mod.read(shards, fields, opts, index_files)["source"]

    pipe = shadow()
    pipe.build()
    for _ in range(runs_done):
        pipe.run()
    out = []
    for _ in range(ahead):
        (src,) = pipe.run()
        out += [bytes(np.asarray(src[i])).decode("utf-8", "surrogateescape") for i in range(len(src))]
    return out


def locate(loader, sources: list[str]) -> list[tuple[str, object]]:
    """(tar, IndexedSample) of each distinct sample among ``sources``."""
    wanted: dict[str, set[int]] = {}
    for text in sources:
        real, offset, _ = loader.sample_map.parse(text)
        wanted.setdefault(real, set()).add(offset)
    found, seen = [], set()
    for shard, idx in zip(loader.shards.shards, loader._index_files):
        real = os.path.realpath(shard.tar)
        if real not in wanted:
            continue
        for e in read_index(idx):
            first = min(e.offsets)
            if e.offsets & wanted[real] and (real, first) not in seen:
                seen.add((real, first))
                found.append((shard.tar, dataclasses.replace(e, key=loader.sample_map.key(real, first, e.key))))
    return found


def check_sample(tar: str, comps: dict, fields: list[str]) -> str | None:
    """What is wrong with one sample of a local tar (None if nothing found)."""
    with open(tar, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        def data(ext):
            off, size = comps[ext]
            return bytes(m[off:off + size])

        return size_problem({ext: size for ext, (_, size) in comps.items()}) or \
            content_problem(data, set(comps), fields)


def check_data(components: dict[str, bytes], fields: list[str]) -> str | None:
    """What is wrong with one sample given as its components' bytes (a streamed sample)."""
    return size_problem({ext: len(b) for ext, b in components.items()}) or \
        content_problem(components.__getitem__, set(components), fields)


def size_problem(sizes: dict[str, int]) -> str | None:
    """A component whose byte count does not fit its type (ext -> size in bytes)."""
    for ext, width in ((F.INDEX_EXT, 8), (F.LABEL_EXT, 8)):
        if ext in sizes and sizes[ext] != width:
            return f"{ext} has {sizes[ext]} bytes, expected {width}"
    if F.BOXES_EXT in sizes:
        nb = sizes[F.BOXES_EXT]
        if nb % 16:
            return f"{F.BOXES_EXT} has {nb} bytes, not a multiple of 16 (K x 4 float32)"
        if F.BOXCLS_EXT in sizes and sizes[F.BOXCLS_EXT] != nb // 2:
            return (f"{F.BOXCLS_EXT} has {sizes[F.BOXCLS_EXT]} bytes for {nb // 16} boxes "
                    f"(expected {nb // 2})")
    return None


def content_problem(data, exts: set[str], fields: list[str], quick: bool = False) -> str | None:
    """An image or video (of the ones ``fields`` asks for) that cannot be decoded;
    ``data(ext)`` gives a component's bytes. ``quick``: PIL only (no DALI decode, no video)."""
    image_ext = next((e for e in sorted(exts) if e.lower() in F.READ_IMAGE_EXTS), None)
    if "image" in fields and image_ext:
        problem = _check_image(data(image_ext), dali=not quick)
        if problem:
            return f"{image_ext}: {problem}"
    video_ext = next((e for e in sorted(exts) if e.lower() in F.VIDEO_EXTS), None)
    if "video" in fields and video_ext and not quick:
        problem = _dali_decode(data(video_ext), video=True)
        if problem:
            return f"{video_ext}: {problem}"
    return None


def _check_image(blob: bytes, dali: bool = True) -> str | None:
    from PIL import Image
    try:
        with Image.open(io.BytesIO(blob)) as im:
            im.load()
    except Exception as e:
        reason = "not a recognisable image" if type(e).__name__ == "UnidentifiedImageError" else str(e)
        return f"cannot be decoded ({reason})"
    return _dali_decode(blob, video=False) if dali else None


def _dali_decode(blob: bytes, video: bool) -> str | None:
    @pipeline_def(batch_size=1, num_threads=1, device_id=None, prefetch_queue_depth=1)
    def one():
        enc = fn.external_source(source=lambda: [np.frombuffer(blob, np.uint8)], batch=True,
                                 dtype=types.UINT8)
        if video:
            return fn.decoders.video(enc, device="cpu")
        return fn.decoders.image(enc, device="cpu", output_type=types.RGB)

    pipe = one()
    pipe.build()             # a failure here is clvr's, not the sample's: let it propagate
    try:
        pipe.run()
    except Exception as e:
        return f"DALI cannot decode it ({dali_message(e)})"
    return None


def find_bad(loader, runs_done: int) -> list[tuple[str, str, str, int]]:
    """(tar, key, reason, first offset) of the bad samples among the batches in flight when
    DALI failed."""
    opts = reader_mod.ReadOptions(rank=loader.rank, world_size=loader.world_size, shuffle=loader.shuffle,
                                  shuffle_buffer=loader.shuffle_buffer, seed=loader.seed)
    ahead = loader.prefetch + 2
    # the smallest member that names each sample: index.i64, or (a clvr shard index set has none)
    # the image or video; every component's offset finds its sample
    fields = [next((f for f in loader.fields if f in ("image", "video")), loader.fields[-1])] if loader._by_order \
        else ["index"]
    sources = in_flight(loader.shards, opts, loader._index_files, fields, loader.batch_size, runs_done, ahead)
    bad = []
    for tar, entry in locate(loader, sources):
        reason = check_sample(tar, entry.components, loader.fields)
        if reason:
            bad.append((tar, entry.key, reason, min(entry.offsets)))
    return bad


def find_bad_remote(feed, first_batch: int, fields: list[str]) -> list[tuple[str, str, str]]:
    """(url, key, reason) of the bad samples among the batches a remote feed handed to DALI from
    global batch ``first_batch`` on (the streamed bytes are kept while they are in flight).

    A quick pass (sizes, PIL) first; DALI decodes each sample only when that finds nothing."""
    records = {(r.url, r.key): r for r in feed.in_flight(first_batch)}
    for quick in (True, False):
        bad = []
        for (url, key), rec in records.items():
            comps = rec.components
            reason = size_problem({e: len(b) for e, b in comps.items()}) or \
                content_problem(comps.__getitem__, set(comps), fields, quick=quick)
            if reason:
                bad.append((url, key, reason))
        if bad:
            return bad
    return []
