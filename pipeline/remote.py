"""Remote shards: stream tars from object storage (``s3://``, ``gs://``, ``http(s)://``, ``pipe:``,
``file:``) with the ``webdataset`` library and feed them into the DALI graph.

DALI's webdataset reader needs random access (it seeks with the index files), so URLs are read as
streams instead, and the samples enter the graph through ``fn.external_source``. :func:`read` has
the role of :func:`.reader.read`: it returns the same fields with the same dtypes (plus ``valid``),
so :class:`.sample.Sample` and every view generator work unchanged.

The epoch contract is the local reader's (see :mod:`.reader`), kept by construction:

- the sample counts come from the shard set's ``manifest.json`` (:func:`resolve`), so every rank
  knows ``N`` and every part size before it reads a byte;
- epoch ``e``'s global order is the shards in a permutation seeded by ``(seed, e)`` (the same on
  every rank; stored order with ``shuffle=False``); rank ``r`` takes samples
  ``[N*r//W, N*(r+1)//W)`` of it, opens only the shards that overlap that range and skips the
  samples before its start in the first one;
- a shuffle buffer seeded by ``(seed, e, rank)`` mixes the part; it is drained at the end of the
  part, so no sample crosses an epoch boundary;
- the part is padded to ``K * B`` slots (``K = ceil(max part / B)``) with copies of its last
  sample, exactly like ``pad_last_batch``; padding carries ``valid = 0``.

A sample that is skipped (``on_error="skip"``) gives its slot to the next one, and the part ends
with one more padding slot: the part sizes, and so the steps per epoch, never depend on what one
rank happened to find, which is what keeps the ranks in step without talking to each other.

Reading runs in a background thread (:class:`Feed`) that keeps a few batches ready; DALI calls
the feed from the loader's thread (``parallel=False``). docs/remote.md says why not DALI's
parallel (process-based) external source.
"""

from __future__ import annotations

import collections
import json
import os
import posixpath
import queue
import random
import re
import shlex
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import numpy as np

from clvr.shards import format as F
from clvr.shards.manifest import MANIFEST_NAME, structure_problems

from .errors import PipelineError, SampleError

S3_COMMAND_ENV = "CLVR_S3_COMMAND"
DEFAULT_S3_COMMAND = "aws s3 cp {url} -"
STALL_ENV = "CLVR_REMOTE_STALL_TIMEOUT"     # seconds without a sample read while DALI waits
DEFAULT_STALL = 600.0
TAR_WORD = re.compile(r"\.(tar|tgz|tar\.gz)$")

_NUMPY = {"index": "<i8", "label": "<i8", "box_classes": "<i8", "boxes": "<f4",
          "image": "u1", "video": "u1", "text": "u1"}

# curl's exit statuses that say more than a number (http(s) URLs open through curl).
_CURL = {6: "could not resolve the host", 7: "could not connect to the server",
         22: "the server answered with an HTTP error (404 not found, 403 forbidden, ...)",
         28: "the transfer timed out", 35: "the TLS handshake failed",
         56: "the connection broke while receiving data"}


# -- opening URLs ------------------------------------------------------------------------------

def gopen_url(url: str) -> str:
    """The URL as ``webdataset.gopen`` is given it: ``s3://`` becomes a ``pipe:`` of the S3 command."""
    if url.startswith("s3://"):
        command = os.environ.get(S3_COMMAND_ENV, DEFAULT_S3_COMMAND)
        if "{url}" not in command:
            raise PipelineError(f"{S3_COMMAND_ENV} = {command!r} must contain {{url}}")
        return "pipe:" + command.format(url=shlex.quote(url))
    return url


def open_url(url: str):
    """Open ``url`` for reading with ``webdataset.gopen`` (a file object or a ``gopen.Pipe``)."""
    from webdataset.gopen import gopen    # (the package's ``gopen`` name is the function)
    try:
        return gopen(gopen_url(url), "rb")
    except PipelineError:
        raise
    except Exception as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise PipelineError(f"{url}: cannot open ({reason})") from None


def _finish(stream, how: str) -> str | None:
    """Close ``stream``; for a command (``pipe:``, curl, aws), why it failed, or None.

    ``how``: ``"done"`` (read to the end: any failure status counts), ``"stopped"`` (we stopped
    reading early: the command is stopped, its status means nothing) or ``"failed"`` (reading
    failed: the command's status, if it failed, is the better reason).
    """
    proc = getattr(stream, "proc", None)
    if proc is None:
        try:
            stream.close()
        except OSError:
            pass
        return None
    try:
        stream.stream.close()            # gopen.Pipe.close would raise on a bad status: we name it
    except OSError:
        pass
    if how == "stopped" and proc.poll() is None:
        proc.terminate()
    try:
        status = proc.wait(timeout=5 if how == "failed" else 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None
    if how == "stopped" or status in (0, 141, -13):  # 141 / -13: SIGPIPE after we closed our end
        return None
    args = proc.args if isinstance(proc.args, str) else " ".join(map(str, proc.args))
    if isinstance(proc.args, (list, tuple)) and proc.args and proc.args[0] == "curl" and status in _CURL:
        return f"curl exited with status {status}: {_CURL[status]}"
    if status < 0:
        return f"command {args!r} was killed by signal {-status}"
    return f"command {args!r} exited with status {status}"


def fetch(url: str) -> bytes:
    """All bytes behind ``url`` (a manifest): PipelineError naming the URL if it cannot be read."""
    stream = open_url(url)
    try:
        data = stream.read()
        failed = None
    except Exception as e:
        data, failed = b"", str(e)
    reason = _finish(stream, "failed" if failed else "done")
    if reason or failed:
        raise PipelineError(f"{url}: cannot read ({reason or failed})")
    return data


# -- what the URLs are: names, manifest ----------------------------------------------------------

def shard_name(url: str) -> str | None:
    """The shard's file name: the URL path's base name; for ``pipe:`` the base name of the last
    word of the command that ends in ``.tar`` (``.tgz``, ``.tar.gz``)."""
    if url.startswith("pipe:"):
        word = _tar_word(url)
        return posixpath.basename(urlparse(word).path if "://" in word else word) if word else None
    return posixpath.basename(urlparse(url).path) or None


def _tar_word(url: str) -> str | None:
    try:
        words = shlex.split(url[len("pipe:"):])
    except ValueError:
        words = url[len("pipe:"):].split()
    found = [w for w in words if TAR_WORD.search(urlparse(w).path if "://" in w else w)]
    return found[-1] if found else None


def sibling(ref: str, name: str) -> str | None:
    """``ref`` with its last path component replaced by ``name``: the same folder, the same
    opener. ``ref`` is a local path, a URL, or a ``pipe:`` command (whose ``.tar`` or
    ``manifest.json`` word is replaced). None if there is no such rule for ``ref``."""
    if ref.startswith("pipe:"):
        word = _tar_word(ref) or _manifest_word(ref)
        if word is None or ref.rfind(word) < len("pipe:"):
            return None
        at = ref.rfind(word)
        return ref[:at] + _replace_name(word, name) + ref[at + len(word):]
    return _replace_name(ref, name)


def _manifest_word(url: str) -> str | None:
    words = url[len("pipe:"):].split()
    found = [w for w in words if w.rstrip("'\"").endswith(MANIFEST_NAME)]
    return found[-1].strip("'\"") if found else None


def _names_manifest(url: str) -> bool:
    """Whether ``url`` is that of a manifest (the spec is a whole shard set) rather than a tar."""
    if url.startswith("pipe:"):
        return _tar_word(url) is None and _manifest_word(url) is not None
    return posixpath.basename(urlparse(url).path) == MANIFEST_NAME


def _replace_name(ref: str, name: str) -> str:
    if "://" in ref or ref.startswith("file:"):
        p = urlparse(ref)
        return urlunparse(p._replace(path=posixpath.join(posixpath.dirname(p.path), name),
                                     params="", query="", fragment=""))
    return str(Path(ref).parent / name)


def _is_url(ref: str) -> bool:
    return ref.startswith("pipe:") or ref.startswith("file:") or "://" in ref


def load_manifest(ref: str) -> dict:
    """Read a manifest from a local path (file or shard-set folder) or a URL; check its format."""
    if _is_url(ref):
        data = fetch(ref)
    else:
        path = Path(ref)
        if path.is_dir():
            path = path / MANIFEST_NAME
        try:
            data = path.read_bytes()
        except OSError as e:
            raise PipelineError(f"{path}: cannot read the manifest ({e.strerror})") from None
    try:
        manifest = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise PipelineError(f"{ref}: the manifest is not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != F.FORMAT_NAME:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise PipelineError(f"{ref}: not a clvr manifest (format={got!r})")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version > F.FORMAT_VERSION:
        raise PipelineError(f"{ref}: format version {version!r} is not one this clvr reads "
                            f"(up to {F.FORMAT_VERSION})")
    return manifest


def _pick_split(manifest: dict, ref: str, split: str | None) -> tuple[dict, str]:
    """The shard-set manifest: ``manifest`` itself, or its split ``split`` for a root manifest."""
    if "splits" not in manifest:
        if split is not None and manifest.get("split") not in (None, split):
            raise PipelineError(f"{ref}: is the manifest of split {manifest.get('split')!r}, not {split!r}")
        return manifest, ref
    splits = manifest["splits"] if isinstance(manifest["splits"], dict) else {}
    if split is None or split not in splits:
        names = ", ".join(map(str, splits)) or "none"
        what = "name one with split=" if split is None else f"it has no split {split!r};"
        raise PipelineError(f"{ref}: is the root manifest of several splits ({names}); {what} "
                            "or pass that split's own manifest.json")
    sub = splits[split].get("path") if isinstance(splits[split], dict) else None
    sub_ref = sibling(ref, f"{sub}/{MANIFEST_NAME}") if isinstance(sub, str) else None
    if sub_ref is None:
        raise PipelineError(f"{ref}: cannot locate the manifest of split {split!r}; pass it as manifest=")
    return load_manifest(sub_ref), sub_ref


def resolve(spec: str, urls: list[str], manifest: str | os.PathLike | None = None,
            split: str | None = None):
    """A remote :class:`~.source.ShardSet` for ``urls`` with counts from the set's manifest.

    The manifest is ``manifest`` (a local path or a URL) when given; else, when the spec is a
    single URL of a ``manifest.json``, that one (the shards are the ones it lists, beside it);
    else ``manifest.json`` beside the shards, opened the same way (:func:`sibling`).
    """
    from .source import Shard, ShardSet, _described_by

    if manifest is None and len(urls) == 1 and _names_manifest(urls[0]):
        ref = urls[0]
        doc, ref = _pick_split(load_manifest(ref), ref, split)
        urls = [sibling(ref, s["name"]) for s in _checked_shards(doc, ref)]
    else:
        for u in urls:
            if shard_name(u) is None:
                raise PipelineError(f"{u}: cannot tell which shard this URL is (a pipe: command "
                                    "needs a word ending in .tar)")
        if manifest is not None:
            ref = os.fspath(manifest)
        else:
            guesses = {sibling(u, MANIFEST_NAME) for u in urls}
            if None in guesses or len(guesses) != 1:
                raise PipelineError(f"{spec}: remote shards need the shard set's manifest.json for "
                                    "their sample counts; the shards are not in one folder (or the "
                                    "pipe: command has no .tar word), so pass manifest= (a local path "
                                    "or URL)")
            ref = guesses.pop()
        try:
            doc = load_manifest(ref)
        except PipelineError as e:
            if manifest is not None:
                raise
            raise PipelineError(f"{spec}: remote shards need the shard set's manifest.json for their "
                                f"sample counts, and none could be read beside them ({e}); pass "
                                "manifest= (a local path or URL of manifest.json)") from None
        doc, ref = _pick_split(doc, ref, split)
    entries = {s["name"]: s for s in _checked_shards(doc, ref)}
    shards = []
    for u in urls:
        entry = entries.get(shard_name(u))
        if entry is None:
            raise PipelineError(f"{u}: shard {shard_name(u)!r} is not listed in the manifest {ref}")
        shards.append(Shard(u, None, entry["samples"], entry["first_index"]))
    if not shards or not sum(s.samples for s in shards):
        raise PipelineError(f"{spec}: the shard set has no samples (manifest {ref})")
    return ShardSet(spec=spec, shards=shards, remote=True, components=set(doc.get("components") or {}),
                    num_samples=sum(s.samples for s in shards), **_described_by(doc))


def _checked_shards(manifest: dict, ref: str) -> list[dict]:
    problems = structure_problems(manifest, ref)
    if problems:
        raise PipelineError("; ".join(problems))
    return manifest["shards"]


# -- which samples a rank reads ------------------------------------------------------------------

@dataclass
class Parts:
    """Who reads what, per epoch: shard order, this rank's range, padding (see the module doc)."""
    urls: list[str]
    counts: list[int]
    first_index: list[int | None]
    rank: int
    world_size: int
    batch_size: int
    shuffle: bool
    shuffle_buffer: int
    seed: int

    @property
    def num_samples(self) -> int:
        return sum(self.counts)

    def bounds(self, rank: int) -> tuple[int, int]:
        n, w = self.num_samples, self.world_size
        return n * rank // w, n * (rank + 1) // w

    @property
    def part_size(self) -> int:
        lo, hi = self.bounds(self.rank)
        return hi - lo

    @property
    def stream_batches(self) -> int:
        """K: batches per epoch of every rank's stream."""
        biggest = max(b - a for a, b in map(self.bounds, range(self.world_size)))
        return -(-biggest // self.batch_size)

    def order(self, epoch: int) -> list[int]:
        order = list(range(len(self.urls)))
        if self.shuffle:
            random.Random(f"clvr-remote-shards:{self.seed}:{epoch}").shuffle(order)
        return order

    def pieces(self, epoch: int) -> list[tuple[int, int, int]]:
        """(shard, skip, take) for this rank in ``epoch``: read samples skip..skip+take-1."""
        lo, hi = self.bounds(self.rank)
        out, at = [], 0
        for i in self.order(epoch):
            n = self.counts[i]
            a, b = max(lo, at), min(hi, at + n)
            if a < b:
                out.append((i, a - at, b - a))
            at += n
        return out

    def key(self, shard: int, position: int) -> str:
        first = self.first_index[shard]
        return F.sample_key(first + position) if first is not None else f"#{position}"


# -- streaming one shard -------------------------------------------------------------------------

class _ShardFailed(Exception):
    def __init__(self, reason: str, at: int, key: str | None):
        super().__init__(reason)
        self.reason, self.at, self.key = reason, at, key


def read_shard(url: str, skip: int, take: int, expected: int, opened=None):
    """Samples ``skip .. skip+take-1`` of the tar behind ``url``, as ``(key, {ext: bytes})``.

    Members go through webdataset's tar iterator; a sample is complete when the next key starts
    or the tar ends with as many samples as the manifest lists. Raises :class:`_ShardFailed` (the
    reason, the position of the first sample not delivered, the last key seen). ``opened`` is
    called with the open stream (so that a stalled read can be stopped from another thread).
    """
    from webdataset.tariterators import base_plus_ext, tar_file_iterator
    try:
        stream = open_url(url)
    except PipelineError as e:
        raise _ShardFailed(str(e).split(": ", 1)[-1], 0, None) from None
    if opened is not None:
        opened(stream)
    got, last, pending, early, failure = 0, None, None, False, None
    try:
        for member in tar_file_iterator(stream):
            prefix, suffix = base_plus_ext(member["fname"])
            if prefix is None:
                continue
            if pending is not None and prefix == pending[0]:
                pending[1][suffix] = member["data"]
                continue
            if pending is not None:
                if got >= skip:
                    yield pending
                got, last = got + 1, pending[0]
                if got >= skip + take:
                    early = True
                    return
            pending = (prefix, {suffix: member["data"]})
        if pending is not None and got + 1 >= expected:
            if got >= skip:
                yield pending
            got, last, pending = got + 1, pending[0], None
        if got < skip + take:
            at, n = (pending[0], got + 1) if pending else (last, got)
            failure = (f"truncated: the tar ends at key {at} (sample {n}) but the manifest lists "
                       f"{expected} samples" if at else "truncated: the tar holds no sample")
        else:
            while stream.read(1 << 16):    # the tar's end padding: let the command finish cleanly
                pass
    except GeneratorExit:
        early = True
        raise
    except Exception as e:
        cut = f" in key {pending[0]}" if pending else (f" after key {last}" if last else "")
        failure = f"truncated or corrupt tar{cut} (sample {got + 1} of {expected}: {e})"
    finally:
        reason = _finish(stream, "stopped" if early else "failed" if failure else "done")
    if reason or failure:
        raise _ShardFailed(reason or failure, max(got, skip), pending[0] if pending else last)


# -- the stream: epochs of batches ---------------------------------------------------------------

@dataclass
class Record:
    """One sample on its way into DALI (kept for diagnosis while its batch is in flight)."""
    url: str
    key: str
    components: dict


class Stream:
    """This rank's batches from (epoch, batch) on, forever: what the :class:`Feed` thread runs."""

    def __init__(self, parts: Parts, fields: list[str], on_error: str, excluded: set, skipped: list,
                 spec: str):
        self.parts, self.fields, self.on_error, self.spec = parts, fields, on_error, spec
        self.excluded, self.skipped = excluded, skipped
        from .reader import FIELDS
        self.need = [(f, FIELDS[f][0].split(";")) for f in fields]
        self._fallback = None              # a good slot from an earlier epoch, for an empty part
        self.reading: str | None = None    # the URL being read, and when it last gave a sample
        self.progress = time.monotonic()
        self._open = None
        self._stopped = False

    def abort(self) -> None:
        """Stop reading (from another thread): kill the command behind the open stream. What the
        reader then runs into is not counted: the loader's skip records are shared."""
        self._stopped = True
        proc = getattr(self._open, "proc", None)
        if proc is not None and proc.poll() is None:
            proc.kill()

    def _opened(self, stream) -> None:
        self._open = stream

    def batches(self, epoch: int, batch: int):
        """Yield ``(global batch number, outputs, records)``: outputs is one list of B arrays per
        field, then the valid flags."""
        parts, b = self.parts, self.parts.batch_size
        k = parts.stream_batches
        while True:
            slots = self._slots(epoch)
            for j in range(k):
                chunk = [next(slots) for _ in range(b)]
                if j < batch:
                    continue
                outputs = tuple([s[0][i] for s in chunk] for i in range(len(self.fields)))
                outputs += ([np.array([s[1]], np.uint8) for s in chunk],)
                yield epoch * k + j, outputs, [s[2] for s in chunk]
            epoch, batch = epoch + 1, 0

    def _slots(self, epoch: int):
        """K*B slots of ``epoch``: (arrays, valid, record); padding repeats the last sample."""
        total = self.parts.stream_batches * self.parts.batch_size
        n, last = 0, None
        for rec in self._checked(epoch):
            arrays = self._arrays(rec)
            if arrays is None:
                continue
            last = (arrays, 0, rec)
            n += 1
            yield arrays, 1, rec
        if last is None:
            last = self._fallback
            if last is None and total:
                raise PipelineError(f"{self.spec}: rank {self.parts.rank} could not read any sample of "
                                    f"its part in epoch {epoch} (see loader.skipped)")
        self._fallback = last
        for _ in range(total - n):
            yield last

    def _checked(self, epoch: int):
        """This rank's samples of ``epoch``, shuffled; bad ones raised or skipped and counted."""
        for rec in self._shuffled(epoch):
            if (rec.url, rec.key) in self.excluded:
                continue
            reason = self._problem(rec)
            if reason is None:
                yield rec
            elif self._bad(rec.url, rec.key, reason):
                continue

    def _problem(self, rec: Record) -> str | None:
        from .diagnose import size_problem
        for _, exts in self.need:
            if not any(x in rec.components for x in exts):
                return f"missing component {'/'.join(exts)}"
        return size_problem({e: len(v) for e, v in rec.components.items()})

    def _bad(self, url: str, key: str, reason: str) -> bool:
        """Raise (on_error='raise') or count a bad sample; True when it was skipped."""
        if self._stopped:
            return True
        if self.on_error == "raise":
            raise SampleError(f"{url}: key {key}: {reason}; use on_error='skip' (--on-error skip) to "
                              "skip and count bad samples", url, key)
        if (url, key) not in self.excluded:
            self.excluded.add((url, key))
            self.skipped.append({"shard": url, "key": key, "reason": reason})
        return True

    def _arrays(self, rec: Record):
        out = []
        for field, exts in self.need:
            ext = next(x for x in exts if x in rec.components)
            data = rec.components[ext]
            dtype = np.dtype(_NUMPY[field])
            if len(data) % dtype.itemsize:
                self._bad(rec.url, rec.key, f"{ext} has {len(data)} bytes, not a multiple of {dtype.itemsize}")
                return None
            out.append(np.frombuffer(data, dtype).astype(dtype.newbyteorder("="), copy=False))
        return out

    def _shuffled(self, epoch: int):
        source = self._read(epoch)
        size = self.parts.shuffle_buffer if self.parts.shuffle else 0
        if size <= 1:
            yield from source
            return
        rng = random.Random(f"clvr-remote-buffer:{self.parts.seed}:{epoch}:{self.parts.rank}")
        buf = []
        for rec in source:
            buf.append(rec)
            if len(buf) >= size:
                j = rng.randrange(len(buf))
                buf[j], buf[-1] = buf[-1], buf[j]
                yield buf.pop()
        rng.shuffle(buf)
        yield from buf

    def _read(self, epoch: int):
        parts = self.parts
        for shard, skip, take in parts.pieces(epoch):
            url = parts.urls[shard]
            self.reading = url
            try:
                for key, comps in read_shard(url, skip, take, parts.counts[shard], self._opened):
                    self.progress = time.monotonic()
                    yield Record(url, key, comps)
            except _ShardFailed as f:
                if self._stopped:
                    return
                if self.on_error == "raise":
                    where = f" (reading stopped at key {f.key})" if f.key and f.key not in f.reason else ""
                    raise PipelineError(f"{url}: {f.reason}{where}; use on_error='skip' to skip the "
                                        "samples that cannot be read") from None
                for pos in range(f.at, skip + take):
                    self._bad(url, parts.key(shard, pos), f.reason)


class Feed:
    """DALI's source for a remote loader: a thread streams :class:`Stream` batches into a queue.

    ``feed()`` (called by DALI in the loader's thread) returns the next batch, or raises the
    reader's error. It never waits forever: a thread that ended without a result is an error,
    and so is a read that gives no sample for ``stall`` seconds (``CLVR_REMOTE_STALL_TIMEOUT``,
    default 600; 0 waits forever).
    """

    def __init__(self, stream: Stream, epoch: int, batch: int, ahead: int = 4, keep: int = 8,
                 stall: float | None = None):
        if stall is None:
            try:
                stall = float(os.environ.get(STALL_ENV, DEFAULT_STALL))
            except ValueError:
                raise PipelineError(f"{STALL_ENV} = {os.environ[STALL_ENV]!r} is not a number of seconds") from None
        self._stall = stall
        self._stream = stream
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, ahead))
        self._stop = threading.Event()
        self._recent: collections.deque = collections.deque(maxlen=max(2, keep))
        self._error = None
        self._thread = threading.Thread(target=_work, args=(stream.batches(epoch, batch), self._queue, self._stop),
                                        name="clvr-remote-reader", daemon=True)
        self._thread.start()

    def __call__(self):
        if self._error is not None:
            raise self._error
        since = time.monotonic()
        while True:
            try:
                item = self._queue.get(timeout=0.5)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    self._error = PipelineError("the remote shard reader stopped without a result")
                    raise self._error from None
                idle = time.monotonic() - max(since, self._stream.progress)
                if self._stall and idle > self._stall:
                    self._error = PipelineError(
                        f"{self._stream.reading or self._stream.spec}: no sample for {idle:.0f} s: the "
                        f"remote read stalled ({STALL_ENV} sets this limit in seconds, 0 turns it off)")
                    self.close(wait=False)
                    raise self._error from None
        if isinstance(item, BaseException):
            self._error = item
            raise item
        number, outputs, records = item
        self._recent.append((number, records))
        return outputs

    def in_flight(self, first: int) -> list[Record]:
        """The samples of the batches handed to DALI from global batch number ``first`` on."""
        return [r for number, records in list(self._recent) if number >= first for r in records]

    def close(self, wait: bool = True) -> None:
        self._stop.set()
        self._stream.abort()
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
        if wait:
            self._thread.join(timeout=5)

    def __del__(self):
        self._stop.set()


def _work(batches, q: queue.Queue, stop: threading.Event) -> None:
    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    try:
        for item in batches:
            if not put(item):
                return
    except PipelineError as e:
        put(e)
    except BaseException as e:        # a bug must surface in the loader's thread, not vanish here
        err = PipelineError(f"remote shard reader failed: {type(e).__name__}: {e}")
        err.__cause__ = e
        put(err)
    finally:
        batches.close()


def read(shards, fields: list[str], opts, feed: Feed) -> dict:
    """External-source nodes for ``fields`` (like :func:`.reader.read`), plus ``valid``."""
    from nvidia.dali import fn, types

    from .reader import FIELDS
    outs = fn.external_source(source=feed, num_outputs=len(fields) + 1, batch=True, parallel=False,
                              dtype=[FIELDS[f][1] for f in fields] + [types.UINT8],
                              ndim=[1] * (len(fields) + 1))
    raw = dict(zip(fields, outs[:-1]))
    raw["valid"] = outs[-1]
    return raw


def parts_for(shards, opts, batch_size: int) -> Parts:
    return Parts(urls=shards.tars, counts=[s.samples for s in shards.shards],
                 first_index=[s.first_index for s in shards.shards], rank=opts.rank,
                 world_size=opts.world_size, batch_size=batch_size, shuffle=opts.shuffle,
                 shuffle_buffer=opts.shuffle_buffer, seed=opts.seed)
