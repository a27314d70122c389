"""``ViewLoader``: shards in, :class:`~clvr.pipeline.batch.ViewBatch` es out, one epoch per ``iter``.

The data flow, in the order it happens::

    source.resolve(spec)              which tars and index files (or URLs, counted by a manifest)
    reader.read(...)                  DALI webdataset reader: this rank's part, shuffled
      or remote.read(...)             URLs: webdataset streams -> external_source, same fields
    Sample(...)                       lazy decode: image (CPU or nvJPEG), video
    generator.graph(sample, ctx)      views as DALI nodes (augment.* per recipe)
    -- DALI runs the graph in its threads, batches come out --
    _to_torch(...)                    tensors on the training device
    generator.on_device(batch, ctx)   optional torch/kornia step (the kornia stage)

One loader per process: under ``accelerate launch`` / ``torchrun`` it reads ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` from the environment (or takes them as arguments).

Epochs (see :mod:`.reader` for why they are exact): ``len(loader)`` steps per epoch, the same on
every rank. ``last_batch`` says what happens to the samples that do not fill a last batch:

- ``"drop"`` (training default): every rank yields ``floor(min part / B)`` full batches; the rest
  of the epoch's samples (fewer than ``world_size * B`` plus one per rank) are not seen that
  epoch, and since the order is reshuffled every epoch, different ones each time;
- ``"pad"``: every rank yields ``ceil(max part / B)`` full batches; padding repeats a sample and
  is marked ``batch.valid == False``, so every sample is seen exactly once per epoch;
- ``"partial"``: as ``"pad"`` but padding is removed, so the last batch is smaller (and, when the
  parts differ by one sample at a batch boundary, can be empty on some ranks).

Breaking out of an epoch early is allowed: the next ``iter`` finishes (drains) the abandoned
epoch's stream first, so epoch ``e`` always reads epoch ``e``'s samples.

Every global index served is checked: out of the set's range, or served twice in one epoch (two
samples with one ``index.i64``), is an error naming tar and key. A set indexed by ``clvr shard
index`` has no ``index.i64``: a sample's global index and label come from the tar and byte
offset DALI reports for it (its source info), looked up in the index and side files.

Remote shards (URLs, see :mod:`.remote` and docs/remote.md) keep the same contract; their parts
come from the manifest's counts, and a sample skipped under ``on_error="skip"`` leaves an
invalid (``valid == False``) slot at the end of its part instead of shrinking it.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from nvidia.dali import pipeline_def
from nvidia.dali.backend import TensorListGPU

from clvr.shards import dali_index

from . import fused_views
from . import reader as reader_mod
from . import recipe as recipe_mod
from . import remote as remote_mod
from .batch import ViewBatch
from .errors import PipelineError, SampleError, dali_message
from .sample import Context, Sample, check_video_codecs
from .sample_map import SampleMap
from .source import ShardSet, read_index, resolve
from .views import get_view
from .views.base import ViewGenerator

LAST_BATCH = ("drop", "pad", "partial")
ON_ERROR = ("raise", "skip")
DEVICES = ("auto", "cpu", "gpu")
PHOTOMETRIC = ("dali", "kornia")
CPU_VIEWS = ("fused", "dali")
#: the member name of a skipped sample's stand-in image in an index file (the batch marks it invalid)
STAND_IN = "clvr-skipped-sample"
#: a skip found within this many epochs of a pipeline's stream replays it, exactly; later (a
#: shard that changed during the run) the stream restarts without the sample
REPLAY_EPOCHS = 2


def distributed_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torch.distributed or the launcher's environment."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    else:
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    return rank, world, int(os.environ.get("LOCAL_RANK", rank if world > 1 else 0))


def resolve_device(device: str) -> str:
    if device not in DEVICES:
        raise PipelineError(f"device = {device!r}; choose one of {', '.join(DEVICES)}")
    has_cuda = torch.cuda.is_available()
    if device == "auto":
        return "gpu" if has_cuda else "cpu"
    if device == "gpu" and not has_cuda:
        raise PipelineError("device = 'gpu' but no CUDA device is visible to torch; use --device cpu "
                            "(or auto)")
    return device


def default_threads(world_size: int) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE", 1 if world_size == 1 else min(world_size, cores)))
    return max(1, cores // max(1, local))


class ViewLoader:
    """Iterate views of a shard set. See the module doc for the epoch contract.

    Args:
        data: shard-set spec (directory, manifest, brace pattern, list, or URLs).
        views: generator name (``two_view``, ``multi_crop``, ...), class or instance.
        recipe: preset name, YAML path, dict, or Recipe(s); default: the generator's.
        batch_size: samples per batch on this rank.
        device: ``auto`` | ``cpu`` | ``gpu`` (where DALI decodes and augments).
        seed: seeds shuffling and augmentation; the same seed gives the same batches.
        view_options: options of the generator (checked strictly).
        photometric: ``dali`` (in the graph) or ``kornia`` (batched on the device tensors).
        on_error: ``raise`` (default) or ``skip`` (bad samples are skipped and counted).
        manifest: for URL specs, the shard set's ``manifest.json`` (local path or URL) when it is
            not beside the shards.
        cpu_views: on a CPU, ``fused`` (default) makes the views of image recipes with the fused
            kernel of :mod:`.fused_views` (DALI reads and decodes); ``dali`` keeps every step in
            the DALI graph. Generators without a fused path always use the graph.
        samples: read only these samples: an iterable of global sample indices (ints; repeats
            count once). The others are left out of the index files given to DALI, so they are
            never read nor decoded, and ``num_samples``, ``len(loader)``, ``samples_per_epoch``
            and the epoch contract are those of the subset (each epoch covers it once with
            ``last_batch="pad"``). ``batch.index`` stays the global index. The indices are read
            from the sample keys, which ``clvr shard`` writes as the global index in nine digits
            (:func:`clvr.shards.format.sample_key`), or for a set of ``clvr shard index`` from the
            manifest's order; other keys, indices that are not in the set, an empty selection
            and remote (URL) shards are errors. Samples left out this
            way are not counted in ``skipped``; shards with no selected sample are not opened
            (and leave ``loader.shards``).
    """

    def __init__(self, data, views="two_view", recipe=None, batch_size: int = 64, *,
                 device: str = "auto", rank: int | None = None, world_size: int | None = None,
                 local_rank: int | None = None, shuffle: bool = True, shuffle_buffer: int = 1024,
                 seed: int = 0, last_batch: str = "drop", num_threads: int | None = None,
                 prefetch: int = 2, on_error: str = "raise", photometric: str = "dali",
                 split: str | None = None, view_options: dict | None = None, torch_device=None,
                 cpu_views: str = "fused", manifest=None, samples=None):
        if last_batch not in LAST_BATCH:
            raise PipelineError(f"last_batch = {last_batch!r}; choose one of {', '.join(LAST_BATCH)}")
        if on_error not in ON_ERROR:
            raise PipelineError(f"on_error = {on_error!r}; choose one of {', '.join(ON_ERROR)}")
        if photometric not in PHOTOMETRIC:
            raise PipelineError(f"photometric = {photometric!r}; choose one of {', '.join(PHOTOMETRIC)}")
        if cpu_views not in CPU_VIEWS:
            raise PipelineError(f"cpu_views = {cpu_views!r}; choose one of {', '.join(CPU_VIEWS)}")
        if batch_size < 1:
            raise PipelineError(f"batch_size = {batch_size} must be at least 1")
        env_rank, env_world, env_local = distributed_env()
        self.rank = env_rank if rank is None else rank
        self.world_size = env_world if world_size is None else world_size
        self.local_rank = env_local if local_rank is None else local_rank
        if not 0 <= self.rank < self.world_size:
            raise PipelineError(f"rank {self.rank} is not in [0, world_size={self.world_size})")
        self.device = resolve_device(device)
        self.torch_device = torch.device(torch_device) if torch_device is not None else (
            torch.device("cuda", self.local_rank) if self.device == "gpu" else torch.device("cpu"))
        self.batch_size = batch_size
        self.shuffle, self.shuffle_buffer, self.seed = shuffle, shuffle_buffer, seed
        self.last_batch, self.on_error, self.prefetch = last_batch, on_error, prefetch
        self.num_threads = num_threads or default_threads(self.world_size)

        self.selection: frozenset[int] | None = None if samples is None else _selection(samples)
        self.shards: ShardSet = data if isinstance(data, ShardSet) else resolve(data, split, manifest)
        if self.selection is not None and self.shards.remote:
            raise PipelineError(f"{self.shards.spec}: samples= is not supported for remote (URL) shards: "
                                "it filters the DALI index files of local shards")
        if isinstance(views, ViewGenerator):
            self.generator = views
        else:
            cls = get_view(views) if isinstance(views, str) else views
            self.generator = cls(**(view_options or {}))
        recipes = recipe_mod.build(recipe if recipe is not None else self.generator.default_recipe,
                                   views=self.generator.num_recipes)
        self.ctx = Context(device=self.device, batch_size=batch_size, recipes=recipes,
                           photometric=photometric, seed=seed, classes=self.shards.classes,
                           categories=self.shards.categories,
                           rng=torch.Generator(),      # both seeded per batch: _seed_host_draws
                           fused=fused_views.usable(self.device, photometric, cpu_views, recipes),
                           threads=self.num_threads)
        self.fields = reader_mod.fields_for(self.shards, set(self.generator.needs))
        self._by_order = reader_mod.index_from_order(self.shards)
        if self._by_order and self.shards.remote:
            raise PipelineError(f"{self.shards.spec}: shards indexed by clvr shard index are read from local "
                                "paths (their global index comes from DALI's source info)")
        if "video" in self.generator.needs:
            check_video_codecs(self.shards, self.device)
        self.skipped: list[dict] = []       # {"shard", "key", "reason"} of every skipped sample
        self.repeats_dropped = 0            # samples a rebuilt stream brought again in its epoch (not served)
        self._excluded: set[tuple] = set()  # skipped samples: (real tar, first offset); remote: (url, key)
        self._index_bound = _index_bound(self.shards)
        self._seen_epoch, self._seen = -1, {}   # global index -> (tar, offset), of the epoch being served
        self._repaired_epoch = -1
        self._filter_after = None           # the epoch of a skip served with stand-ins
        self._tmp = None
        self._feed = None                   # remote shards: the reader thread DALI pulls from
        # Remote shards are checked as they stream (no index files to parse up front).
        self._index_files = None if self.shards.remote else self._check_shards(first=True)
        self.epoch = 0
        self._pos = 0                       # batches of the current stream epoch already run
        self._runs = 0                      # batches run by the current DALI pipeline
        self._seek_step = 0                 # seek(): the next epoch starts at this step
        self._build()

    # -- set-up -------------------------------------------------------------------------------

    def _check_shards(self, first: bool = False) -> list[str]:
        """Parse every index file up front: truncated shards and missing components are named
        here (shard and key) instead of inside DALI. Returns the index files to give DALI
        (filtered copies when samples are excluded under ``on_error="skip"`` or left out by
        ``samples=``). Shards left with no sample are dropped from ``self.shards`` (DALI rejects
        an index file without samples); ``first``: build the maps from a sample's tar and offset
        to its key (and, for ``clvr shard index`` sets, its global index and label), and check
        that ``samples=`` names only samples of the set (once: later calls may have dropped
        shards of skipped samples)."""
        need_exts = [reader_mod.field_exts(self.shards, f) for f in self.fields
                     if not (f == "index" and self._by_order)]
        if first:
            self.sample_map = SampleMap(self._by_order)
        selection = self.selection
        shards, out = [], []
        kept = 0
        found: set[int] = set()
        for shard in self.shards.shards:
            entries = read_index(shard.index, shard.tar, shard.samples_file)
            real = os.path.realpath(shard.tar)
            if first:
                if self._by_order and shard.first_index is None:
                    raise PipelineError(f"{shard.tar}: its manifest gives no first_index, which the samples' "
                                        "global index is counted from")
                self.sample_map.add(shard, entries)
            drop: dict[int, str | None] = {}          # position -> reason (None: not selected)
            for position, e in enumerate(entries):
                if selection is not None:
                    if self._by_order:
                        gi = shard.first_index + position
                    elif e.key.isascii() and e.key.isdigit():
                        gi = int(e.key)
                    else:
                        raise PipelineError(
                            f"{shard.tar}: key {e.key!r} is not a global sample index; samples= needs "
                            "shards written by clvr shard (keys are the index in nine digits) or indexed by "
                            "clvr shard index")
                    if gi not in selection:
                        drop[position] = None
                        continue
                    found.add(gi)
                for exts in need_exts:
                    if not any(x in e.components for x in exts):
                        reason = f"missing component {'/'.join(exts)}"
                        if self.on_error == "raise":
                            raise SampleError(f"{shard.tar}: key {e.key}: {reason} "
                                              "(use on_error='skip' / --on-error skip to skip such samples)",
                                              shard.tar, e.key)
                        drop[position] = reason
                        break
                if (real, min(e.offsets)) in self._excluded:
                    drop.setdefault(position, "")
            index = self._filtered_index(shard, entries, drop)
            if index is not None:
                shards.append(shard)
                out.append(index)
                kept += len(entries) - len(drop)
        if first and selection is not None:
            missing = sorted(selection - found)
            if missing:
                more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
                raise PipelineError(f"{self.shards.spec}: samples= names {len(missing)} sample(s) the shard "
                                    f"set does not have: {', '.join(map(str, missing[:5]))}{more}")
        if kept == 0:
            raise PipelineError(f"{self.shards.spec}: no samples left to read")
        if len(shards) < len(self.shards.shards):
            self.shards = dataclasses.replace(self.shards, shards=shards)
        return out

    def _filtered_index(self, shard, entries, drop: dict) -> str | None:
        """The index file of ``shard`` without the samples at the positions of ``drop``: those
        with a reason are recorded as skipped (once), those without (``None``: left out by
        ``samples=``; ``""``: skipped before) are left out silently. None when nothing is left."""
        if not drop:
            return shard.index
        real = os.path.realpath(shard.tar)
        for position, reason in drop.items():
            where = (real, min(entries[position].offsets))
            if reason and where not in self._excluded:
                self._excluded.add(where)
                self.skipped.append({"shard": shard.tar, "key": entries[position].key, "reason": reason})
        if len(drop) >= len(entries):
            return None                      # nothing left: the caller leaves the shard out
        samples = dali_index.read_index(shard.index)
        return self._write_index(shard, [comps for position, comps in enumerate(samples) if position not in drop])

    def _write_index(self, shard, samples: list) -> str:
        """A changed copy of ``shard``'s index file, in the loader's temporary folder."""
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="clvr-index-")
        path = Path(self._tmp.name) / f"{len(os.listdir(self._tmp.name))}-{Path(shard.index).name}"
        path.write_text(dali_index.format_index(samples), encoding="utf-8")
        return str(path)

    def _remote_feed(self, opts) -> remote_mod.Feed:
        """A reader thread for remote shards, starting at the loader's place in its stream, so a
        rebuild (after a skip) goes on with the same epoch, batch for batch."""
        if self._feed is not None:
            self._feed.close()
        parts = remote_mod.parts_for(self.shards, opts, self.batch_size)
        if min(parts.bounds(r)[1] - parts.bounds(r)[0] for r in range(self.world_size)) == 0:
            raise PipelineError(f"{self.shards.spec}: {parts.num_samples} samples cannot give each of "
                                f"{self.world_size} ranks a part")
        stream = remote_mod.Stream(parts, self.fields, self.on_error, self._excluded, self.skipped,
                                   self.shards.spec)
        self._feed = remote_mod.Feed(stream, self.epoch, self._pos, ahead=self.prefetch + 2,
                                     keep=self.prefetch + 4)
        return self._feed

    def _build(self) -> None:
        opts = reader_mod.ReadOptions(rank=self.rank, world_size=self.world_size, shuffle=self.shuffle,
                                      shuffle_buffer=self.shuffle_buffer, seed=self.seed)
        gen, ctx, fields, shards, index_files = self.generator, self.ctx, self.fields, self.shards, self._index_files
        feed = self._remote_feed(opts) if shards.remote else None
        self._output_names: list[str] = []

        @pipeline_def(enable_conditionals=True)
        def graph():
            if feed is not None:
                raw = remote_mod.read(shards, fields, opts, feed)
            else:
                raw = reader_mod.read(shards, fields, opts, index_files)
            sample = Sample(raw, ctx)
            out = gen.graph(sample, ctx)
            views = list(out["views"])
            extras = dict(out.get("extras") or {})
            host = dict(out.get("host") or {})     # inputs of the generator's host stage
            passed = [f for f in ("label", "boxes", "box_classes", "text", "valid", "source") if f in raw]
            names = ["index"] + passed
            names += [f"view:{i}" for i in range(len(views))] + [f"extra:{k}" for k in extras]
            names += [f"host:{k}" for k in host]
            self._output_names = names
            nodes = [raw["index"]] + [sample.boxes if f == "boxes" else raw[f] for f in passed]
            return tuple(nodes + views + list(extras.values()) + list(host.values()))

        device_id = self.local_rank if self.device == "gpu" else None
        pipe_seed = (self.seed * 1_000_003 + self.rank * 7919 + 17) % (2 ** 31)
        self.pipe = graph(batch_size=self.batch_size, num_threads=self.num_threads, device_id=device_id,
                          seed=pipe_seed, prefetch_queue_depth=self.prefetch, exec_dynamic=True)
        try:
            self.pipe.build()
        except RuntimeError as e:
            raise PipelineError(f"{shards.spec}: DALI could not build the pipeline: {dali_message(e)}") from None
        if feed is not None:
            self.num_samples = int(shards.num_samples)
        else:
            self.num_samples = int(self.pipe.reader_meta(reader_mod.READER_NAME)["epoch_size"])
        self.part_sizes = reader_mod.part_sizes(self.num_samples, self.world_size)
        self.part_size = self.part_sizes[self.rank]
        self.stream_batches = -(-max(self.part_sizes) // self.batch_size)   # K
        if self.last_batch == "drop":
            self.steps_per_epoch = min(self.part_sizes) // self.batch_size
            if self.steps_per_epoch == 0:
                raise PipelineError(
                    f"{shards.spec}: {self.num_samples} samples over {self.world_size} rank(s) cannot fill "
                    f"one batch of {self.batch_size} per rank; lower the batch size or use last_batch='pad'")
        else:
            self.steps_per_epoch = self.stream_batches
        made = sum(1 for n in self._output_names if n.startswith("view:"))
        if any(n.startswith("host:") for n in self._output_names):
            made = len(self.generator.names())     # the host stage makes them
        names = tuple(self.generator.names()) or tuple(f"view{i}" for i in range(made))
        if len(names) != made:
            raise PipelineError(f"view generator {self.generator.name!r} names {len(names)} views "
                                f"({', '.join(names)}) but its graph returned {made}")
        self.view_names = names

    # -- iteration ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.steps_per_epoch

    @property
    def samples_per_epoch(self) -> int:
        """Samples this rank yields per epoch (padding excluded)."""
        if self.last_batch == "drop":
            return self.steps_per_epoch * self.batch_size
        return self.part_size

    def seek(self, epoch: int, step: int) -> None:
        """Position a fresh loader at step ``step`` of epoch ``epoch``, as if it had yielded the
        batches before (resuming a run: the same seed gives the same stream, so the next batch
        is the one the interrupted run would have read). The skipped batches are read and
        decoded, but their views are not made."""
        if self.epoch or self._pos or self._runs:
            raise PipelineError("seek() needs a fresh loader (nothing read yet)")
        if epoch < 0 or not 0 <= step < max(self.steps_per_epoch, 1):
            raise PipelineError(f"seek({epoch}, {step}): step must be in [0, {self.steps_per_epoch})")
        while self.epoch < epoch:
            self._run()
        for _ in range(step):
            self._run()
        self._seek_step = step

    def __iter__(self):
        start, self._seek_step = self._seek_step, 0
        if self._pos and not start:
            self._drain()
        epoch = self.epoch
        for step in range(start, self.steps_per_epoch):
            if step >= self.steps_per_epoch:      # a skip rebuilt the pipeline with fewer samples
                break
            outs = self._run()
            batch = self._batch(outs, epoch, step, first=step * self.batch_size)
            if self.last_batch == "partial" and not bool(batch.valid.all()):
                batch = batch.select(batch.valid)
            yield self.generator.on_device(batch, self.ctx)
        self._drain()

    def _drain(self) -> None:
        while self._pos:
            self._run()

    def _run(self):
        if self._filter_after is not None and self.epoch > self._filter_after:
            # the epoch of a skip is over: go on with a stream without the skipped samples
            self._filter_after = None
            self.pipe, self._runs = None, 0
            self._index_files = self._check_shards()
            self._build()
        while True:
            try:
                outs = self.pipe.run()
                break
            except RuntimeError as e:
                self._recover(e)
        self._runs += 1
        self._pos += 1
        if self._pos == self.stream_batches:
            self._pos = 0
            self.epoch += 1
        return outs

    def _recover(self, error: Exception) -> None:
        """Name the sample behind a DALI error; under ``on_error="skip"`` exclude it and go on.

        Skipping keeps the epoch exact: the pipeline is rebuilt on the same index files, except
        that each skipped sample's image (or video) points at a good sample's of its tar and is
        named :data:`STAND_IN`, so the sample count and the shuffled stream stay the same. The
        new pipeline is replayed to the failed batch, and the stand-in's slot is invalid
        (``valid == False``, counted in ``batch.dropped``): the epoch serves every other sample
        once. From the next epoch on, the stream is rebuilt without the skipped samples.

        A skip found later than :data:`REPLAY_EPOCHS` epochs into a stream (a shard that changed
        during the run), or in a tar with no good sample to lend its image, restarts the stream
        without the sample instead of replaying: what the new stream brings that the epoch
        already served is then marked invalid (``repeats_dropped``), so nothing is served twice,
        and as many samples are not seen in that epoch. ``clvr shard verify`` finds bad samples
        beforehand.

        Remote shards: the feed keeps the bytes of the batches in flight, and the rebuilt stream
        resumes at the failed batch, so even that epoch stays exact (the skipped sample's slot
        becomes padding at the end of the part).
        """
        from .diagnose import find_bad, find_bad_remote
        message = dali_message(error)
        try:
            if self.shards.remote:
                bad = [(*b, None) for b in
                       find_bad_remote(self._feed, self.epoch * self.stream_batches + self._pos, self.fields)]
            else:
                bad = find_bad(self, self._runs)
        except Exception as e:  # the diagnosis must not hide the original error
            bad = []
            message += f" (could not locate the sample: {dali_message(e)})"
        if not bad:
            raise PipelineError(f"{self.shards.spec}: reading failed: {message}") from None
        if self.on_error == "raise":
            tar, key, reason, _ = bad[0]
            more = f" (and {len(bad) - 1} more in the same batches)" if len(bad) > 1 else ""
            raise SampleError(f"{tar}: key {key}: {reason}{more}; use on_error='skip' (--on-error skip) "
                              "to skip and count bad samples", tar, key) from None
        for tar, key, reason, offset in bad:
            where = (tar, key) if offset is None else (os.path.realpath(tar), offset)
            if where not in self._excluded:
                self._excluded.add(where)
                self.skipped.append({"shard": tar, "key": key, "reason": reason})
        failed_at = self._runs
        self.pipe = None
        self._runs = 0
        if self.shards.remote:
            self._build()
            return
        stand_ins = self._stand_in_files() if failed_at <= REPLAY_EPOCHS * self.stream_batches else None
        if stand_ins is not None:
            # the same stream, the bad samples' images taken from good ones and marked invalid:
            # replayed to the failed batch, it goes on with every other sample once
            self._index_files = stand_ins
            self._filter_after = self.epoch
            self._build()
            for _ in range(failed_at):
                try:
                    self.pipe.run()
                except RuntimeError as e:
                    raise PipelineError(f"{self.shards.spec}: reading failed again while returning to the batch "
                                        f"of a skipped sample: {dali_message(e)}") from None
                self._runs += 1
            return
        self._index_files = self._check_shards()
        self._pos = 0
        self._repaired_epoch = self.epoch
        self._build()

    def _stand_in_files(self) -> list[str] | None:
        """The current index files with each skipped sample's image or video pointing at the
        nearest good sample's in its tar, and named :data:`STAND_IN` (the batch marks it
        invalid): the sample count, and so the stream, stay as they are. None when a tar has
        no good sample to lend its image."""
        media = {e.lower() for f in ("image", "video") for e in reader_mod.FIELDS[f][0].split(";")}
        out = []
        for shard, index in zip(self.shards.shards, self._index_files):
            samples = dali_index.read_index(index)
            real = os.path.realpath(shard.tar)
            bad = {n for n, comps in enumerate(samples) if (real, min(c.offset for c in comps)) in self._excluded}
            if not bad:
                out.append(index)
                continue
            good = [n for n in range(len(samples)) if n not in bad
                    and any(c.ext.lower() in media for c in samples[n])]
            if not good:
                return None
            for n in bad:
                lender = next(c for c in samples[min(good, key=lambda g: abs(g - n))] if c.ext.lower() in media)
                samples[n] = [dali_index.IndexedComponent(c.ext, lender.offset, lender.size, STAND_IN)
                              if c.ext.lower() in media else c for c in samples[n]]
            out.append(self._write_index(shard, samples))
        return out

    # -- conversion ---------------------------------------------------------------------------

    def _seed_host_draws(self, epoch: int, step: int) -> None:
        """Seed the draws made outside DALI (fused views, kornia stage, patch steps) from
        (seed, rank, epoch, step): a batch's views then do not depend on which batches before it
        were made or drained (breaking out of an epoch, resuming at a step)."""
        key = [self.seed, self.rank, epoch, step]
        self.ctx.np_rng = np.random.default_rng(key)
        self.ctx.rng.manual_seed(int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0] >> 1))

    def _batch(self, outs, epoch: int, step: int, first: int) -> ViewBatch:
        self._seed_host_draws(epoch, step)
        named = dict(zip(self._output_names, outs))
        dev = self.torch_device
        sources = None if self.shards.remote else self._sources(named["source"])
        if self._by_order:
            index = torch.tensor([self.sample_map.global_index(*s) for s in sources], dtype=torch.int64)
        else:
            index = _dense(named["index"], torch.device("cpu")).reshape(-1)
        n = index.shape[0]
        if self._by_order:
            label = torch.tensor([self.sample_map.label(real, offset) for real, offset, _ in sources],
                                 dtype=torch.int64)
        else:
            label = _dense(named["label"], dev).reshape(-1) if "label" in named else \
                torch.full((n,), -1, dtype=torch.int64, device=dev)
        valid = torch.arange(first, first + n) < self.part_size
        if "valid" in named:                # remote: skipped samples leave padding slots too
            valid &= torch.from_numpy(np.asarray(named["valid"].as_tensor()).reshape(-1) != 0)
        dropped = 0
        if sources is not None:
            stand_in = torch.tensor([member == STAND_IN for _, _, member in sources], dtype=torch.bool)
            checked = self._check_indices(index, valid & ~stand_in, sources, epoch)
            dropped, valid = int((valid & ~checked).sum()), checked
        index, label, valid = index.to(dev), label.to(dev), valid.to(dev)
        host = {k.split(":", 1)[1]: _host_arrays(v) for k, v in named.items() if k.startswith("host:")}
        if host:
            views = tuple(t.to(dev) for t in self.generator.host_views(host, self.ctx))
        else:
            views = tuple(_dense(named[f"view:{i}"], dev) for i in range(len(self.view_names)))
        extras = {k.split(":", 1)[1]: _dense(v, dev) for k, v in named.items() if k.startswith("extra:")}
        batch = ViewBatch(views=views, names=tuple(self.view_names), index=index, label=label, valid=valid,
                          kind=self.generator.name, extras=extras, epoch=epoch, step=step, dropped=dropped)
        if "boxes" in named:
            batch.boxes = [t.reshape(-1, 4) for t in _ragged(named["boxes"], dev)]
            batch.box_classes = [t.reshape(-1) for t in _ragged(named["box_classes"], dev)]
        if "text" in named:
            batch.text = [bytes(np.asarray(named["text"][i])).decode("utf-8", "replace")
                          for i in range(len(named["text"]))]
        return batch

    def _sources(self, info_tl) -> list[tuple[str, int, str]]:
        """(real tar, offset, member) of each sample of a batch, from DALI's source info."""
        return [self.sample_map.parse(bytes(np.asarray(info_tl[i])).decode("utf-8", "surrogateescape"))
                for i in range(len(info_tl))]

    def _key(self, source: tuple[str, int, str]) -> str:
        return self.sample_map.key(*source)

    def _check_indices(self, index: torch.Tensor, valid: torch.Tensor, sources, epoch: int) -> torch.Tensor:
        """Every global index served must be in ``[0, N)`` and seen once per epoch: an error
        naming tar and key otherwise. In the epoch a skip rebuilt the stream, a sample seen
        before the skip is marked invalid instead (returned: the new ``valid``)."""
        if epoch != self._seen_epoch:
            self._seen_epoch, self._seen = epoch, {}
        valid = valid.clone()
        for i, gi in enumerate(index.tolist()):
            if not valid[i]:
                continue
            if not 0 <= gi < self._index_bound:
                raise PipelineError(f"{sources[i][0]}: key {self._key(sources[i])}: global index {gi} is out of "
                                    f"range [0, {self._index_bound}) of {self.shards.spec} (the shard's index.i64 "
                                    "was changed after sharding; clvr shard verify names every such sample)")
            if gi in self._seen:
                if self._repaired_epoch == epoch:
                    valid[i] = False
                    self.repeats_dropped += 1
                    continue
                real, offset = self._seen[gi]
                raise PipelineError(f"{sources[i][0]}: key {self._key(sources[i])}: global index {gi} was already "
                                    f"served in epoch {epoch} by key {self.sample_map.key(real, offset)} ({real}): "
                                    "two samples share one index, so a memory bank would mix them (re-shard, or "
                                    "run clvr shard verify to list them)")
            self._seen[gi] = sources[i][:2]
        return valid

    # -- state --------------------------------------------------------------------------------

    def describe(self) -> str:
        subset = " (the samples= subset)" if self.selection is not None else ""
        return (f"{self.generator.describe()} on {self.shards.spec}: {self.num_samples} samples{subset}, "
                f"rank {self.rank}/{self.world_size} reads {self.part_size}, batch {self.batch_size}, "
                f"{self.steps_per_epoch} steps/epoch ({self.last_batch}), device {self.device}, "
                f"{self.num_threads} DALI threads")

    def close(self) -> None:
        if getattr(self, "pipe", None) is not None:
            del self.pipe
            self.pipe = None
        if getattr(self, "_feed", None) is not None:
            self._feed.close()
            self._feed = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def _index_bound(shards: ShardSet) -> float:
    """One past the largest global index the set may serve: from its manifest's shards
    (``first_index`` + samples), else its totals; unbounded for tars without a manifest."""
    total = (shards.manifest or {}).get("totals", {}).get("samples")
    total = total if isinstance(total, int) else None
    ends = [s.first_index + s.samples for s in shards.shards
            if s.first_index is not None and s.samples is not None]
    if ends and len(ends) == len(shards.shards):
        return max(*ends, total or 0)
    return float("inf") if total is None else total


def _selection(samples) -> frozenset[int]:
    """``samples=`` as a set of global indices; anything but an iterable of ints is an error."""
    import operator
    if isinstance(samples, (str, bytes)) or not hasattr(samples, "__iter__"):
        raise PipelineError(f"samples= must be an iterable of global sample indices (ints), got {samples!r}")
    out = set()
    for s in samples:
        try:
            if isinstance(s, bool):
                raise TypeError
            out.add(operator.index(s))
        except TypeError:
            raise PipelineError(f"samples= must hold global sample indices (ints), got {s!r}") from None
    if not out:
        raise PipelineError("samples= is empty: the selection must name at least one sample")
    return frozenset(out)


def _dense(tl, device: torch.device) -> torch.Tensor:
    """A dense DALI TensorList as one torch tensor on ``device`` (a copy: DALI reuses buffers)."""
    if isinstance(tl, TensorListGPU):
        from nvidia.dali.plugin.pytorch import feed_ndarray
        t = tl.as_tensor()
        out = torch.empty(t.shape(), dtype=_TORCH_DTYPES[t.dtype], device=device)
        feed_ndarray(t, out, cuda_stream=torch.cuda.current_stream(device).cuda_stream)
        return out
    if not tl.is_dense_tensor():
        shapes = {tuple(tl[i].shape()) for i in range(len(tl))}
        raise PipelineError(f"a view or extra has different shapes within the batch: {sorted(shapes)[:4]}")
    return torch.from_numpy(tl.as_array()).to(device, non_blocking=True)


def _host_arrays(tl) -> list[np.ndarray]:
    """A CPU TensorList as numpy arrays, one per sample (views of DALI's memory: use them before
    the next ``pipe.run``)."""
    return [np.asarray(tl[i]) for i in range(len(tl))]


def _ragged(tl, device) -> list[torch.Tensor]:
    if isinstance(tl, TensorListGPU):
        tl = tl.as_cpu()
    return [torch.from_numpy(np.array(tl[i])).to(device) for i in range(len(tl))]


def _torch_dtypes():
    from nvidia.dali import types
    return {types.FLOAT: torch.float32, types.UINT8: torch.uint8, types.INT64: torch.int64,
            types.INT32: torch.int32, types.BOOL: torch.bool, types.FLOAT16: torch.float16}


_TORCH_DTYPES = _torch_dtypes()
