"""Remote shards (URLs streamed with webdataset into DALI): the local reader's epoch and rank
contract, manifests, and errors that name the URL and key. Only file:, pipe: and http: here."""

from __future__ import annotations

import collections
import functools
import http.server
import io
import re
import shutil
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from clvr.pipeline import PipelineError, SampleError, ViewLoader
from clvr.pipeline import remote
from conftest import corrupt_image, epoch_indices as epochs, make_demo, read_samples

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

B = 16


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return make_demo(tmp_path_factory.mktemp("digits") / "d", limit=120, shard_size=25)


@pytest.fixture(scope="module")
def digits(root) -> Path:
    return root / "train"          # 96 samples in 4 shards: 25, 25, 25, 21


@pytest.fixture
def copy(digits, tmp_path) -> Path:
    dst = tmp_path / "train"
    shutil.copytree(digits, dst)
    return dst


def brace(d: Path) -> str:
    last = len(list(Path(d).glob("train-*.tar"))) - 1
    return f"{d}/train-{{000000..{last:06d}}}.tar"


def pipe(d: Path) -> str:
    return "pipe:cat " + brace(d)


def file(d: Path) -> str:
    return "file://" + brace(d)


def loader(data, **kw):
    kw.setdefault("recipe", "simclr-cifar")
    kw.setdefault("batch_size", B)
    kw.setdefault("num_threads", 1)
    return ViewLoader(data, "two_view", **kw)


def pairs(ld, n_epochs: int) -> list[collections.Counter]:
    """(index, label) of the valid samples of each epoch, counted."""
    out = []
    for _ in range(n_epochs):
        seen = collections.Counter()
        for b in ld:
            seen.update(zip(b.index[b.valid].tolist(), b.label[b.valid].tolist()))
        out.append(seen)
    return out


# -- the same samples and epochs as the local reader -------------------------------------------

@pytest.mark.parametrize("kind", [pipe, file])
def test_remote_reads_the_same_samples_as_the_local_reader(digits, kind):
    local = loader(digits, last_batch="pad")
    far = loader(kind(digits), last_batch="pad")
    assert far.shards.remote and (far.num_samples, len(far)) == (local.num_samples, len(local)) == (96, 6)
    assert far.shards.classes == local.shards.classes
    want = pairs(local, 1)[0]
    assert max(want.values()) == 1 and len(want) == 96
    for e, got in enumerate(pairs(far, 2)):
        assert got == want, f"epoch {e}"
    b = next(iter(far))
    assert b.views[0].shape == (B, 3, 32, 32) and b.index.dtype == torch.int64


@pytest.mark.parametrize("last_batch", ["drop", "pad", "partial"])
def test_every_epoch_is_exact(digits, last_batch):
    ld = loader(pipe(digits), last_batch=last_batch, batch_size=20)      # 96 = 4 x 20 + 16
    n = ld.num_samples
    assert len(ld) == (n // 20 if last_batch == "drop" else -(-n // 20))
    if last_batch == "pad":                                # breaking out early: the epoch is drained
        it = iter(ld)
        next(it), next(it)
        del it
    orders = epochs(ld, 3)
    for e, seen in enumerate(orders):
        if last_batch == "drop":
            assert len(seen) == len(set(seen)) == len(ld) * 20, f"epoch {e}"
        else:
            assert sorted(seen) == list(range(n)), f"epoch {e} is not exactly one pass"
    assert orders[0] != orders[1] != orders[2], "the order must be reshuffled every epoch"
    assert ld.epoch == (4 if last_batch == "pad" else 3)
    if last_batch == "partial":
        batches = list(ld)
        assert [len(b) for b in batches] == [20, 20, 20, 20, 16] and all(b.valid.all() for b in batches)


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_read_disjoint_parts_that_cover_the_set(digits, world):
    lds = [loader(file(digits), rank=r, world_size=world, last_batch="pad") for r in range(world)]
    assert len({len(ld) for ld in lds}) == 1, "every rank must run the same number of steps"
    for epoch in range(2):
        parts = [epochs(ld, 1)[0] for ld in lds]
        union = collections.Counter(i for p in parts for i in p)
        assert sorted(union) == list(range(96)), f"epoch {epoch}: not complete"
        assert max(union.values()) == 1, f"epoch {epoch}: a sample was read by two ranks"
        assert [len(p) for p in parts] == [ld.part_size for ld in lds]


def test_drop_last_across_ranks_is_disjoint_and_equal_length(digits):
    lds = [loader(pipe(digits), rank=r, world_size=2, last_batch="drop", batch_size=20) for r in range(2)]
    assert len(lds[0]) == len(lds[1]) == 2
    for _ in range(2):
        parts = [epochs(ld, 1)[0] for ld in lds]
        assert len(parts[0]) == len(parts[1]) == 40
        assert not set(parts[0]) & set(parts[1])


def test_same_seed_same_batches_other_seed_other_batches(digits):
    def first(seed):
        b = next(iter(loader(pipe(digits), seed=seed)))
        return b.index.clone(), b.views[0].clone(), b.views[1].clone()

    a, b, c = first(3), first(3), first(4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])
    assert not torch.equal(a[0], c[0])


def test_no_shuffle_reads_in_stored_order_split_between_ranks(digits):
    ld = loader(file(digits), shuffle=False, last_batch="pad")
    assert epochs(ld, 2) == [list(range(96))] * 2
    halves = [epochs(loader(file(digits), shuffle=False, last_batch="pad", rank=r, world_size=2), 1)[0]
              for r in range(2)]
    assert halves == [list(range(48)), list(range(48, 96))]


# -- manifests ---------------------------------------------------------------------------------

def test_manifest_url_spec_and_split(root, digits):
    ld = loader(f"file://{digits}/manifest.json", shuffle=False, last_batch="pad")
    assert ld.num_samples == 96 and ld.shards.tars[0] == f"file://{digits}/train-000000.tar"
    assert epochs(ld, 1)[0] == list(range(96))
    assert loader(f"file://{root}/manifest.json", split="val").num_samples == 24
    with pytest.raises(PipelineError, match=r"root manifest of several splits \(train, val\)"):
        loader(f"file://{root}/manifest.json")


def test_without_a_manifest_beside_the_shards_pass_one(digits, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for t in digits.glob("*.tar"):
        shutil.copy(t, bare)
    with pytest.raises(PipelineError, match=rf"{re.escape(str(bare))}/manifest.json.*pass manifest="):
        loader(pipe(bare))
    for manifest in (digits / "manifest.json", digits, f"file://{digits}/manifest.json",
                     f"pipe:cat {digits}/manifest.json"):
        ld = loader(pipe(bare), manifest=manifest, shuffle=False, last_batch="pad")
        assert ld.num_samples == 96
    assert epochs(ld, 1)[0] == list(range(96))
    (bare / "extra-000000.tar").write_bytes((bare / "train-000000.tar").read_bytes())
    with pytest.raises(PipelineError, match=r"extra-000000.tar: shard 'extra-000000.tar' is not listed"):
        loader(f"file://{bare}/extra-000000.tar", manifest=digits)
    with pytest.raises(PipelineError, match="manifest= is for URL specs"):
        loader(digits, manifest=digits)


# -- errors: named, or skipped and counted; never a hang ---------------------------------------

@pytest.mark.parametrize("url, reason", [
    ("pipe:cat /nonexistent/train-000001.tar", "exited with status 1"),
    ("pipe:false /nonexistent/train-000001.tar", "exited with status 1"),
    ("file:///nonexistent/train-000001.tar", "cannot open .No such file"),
])
def test_an_unreadable_url_is_named(digits, url, reason):
    ld = loader(url, manifest=digits, last_batch="pad")
    with pytest.raises(PipelineError, match=rf"^{re.escape(url)}: .*{reason}"):
        epochs(ld, 1)


def truncate(tar: Path) -> None:
    size = tar.stat().st_size
    with open(tar, "r+b") as f:
        f.truncate(size // 2 + 300)                  # in the middle of a member


def test_truncated_shard_raises_or_is_skipped_on_every_rank_alike(copy):
    truncate(copy / "train-000002.tar")
    with pytest.raises(PipelineError, match=r"train-000002.tar: truncated"):
        epochs(loader(pipe(copy), last_batch="pad"), 1)
    lds = [loader(file(copy), rank=r, world_size=2, last_batch="pad", on_error="skip") for r in range(2)]
    clean = loader(file(copy), rank=0, world_size=2, last_batch="pad")
    assert len(lds[0]) == len(lds[1]) == len(clean), "a skip must not change the steps per epoch"
    for e in range(2):
        parts = [epochs(ld, 1)[0] for ld in lds]
        lost = {int(s["key"]) for ld in lds for s in ld.skipped}
        assert lost and lost <= set(range(50, 75)), "only shard 2's samples are lost"
        assert sorted(parts[0] + parts[1]) == sorted(set(range(96)) - lost), f"epoch {e}"
    assert all(s["shard"] == f"file://{copy}/train-000002.tar" and "truncated" in s["reason"]
               for ld in lds for s in ld.skipped)
    for ld in lds:
        keys = [s["key"] for s in ld.skipped]
        assert len(keys) == len(set(keys)), "a lost sample is counted once per loader"


def rewrite(tar: Path, drop: str) -> None:
    """Rewrite ``tar`` without the member ``drop``."""
    with tarfile.open(tar) as src:
        members = [(m, src.extractfile(m).read()) for m in src.getmembers() if m.name != drop]
    with tarfile.open(tar, "w", format=tarfile.USTAR_FORMAT) as dst:
        for m, data in members:
            dst.addfile(m, io.BytesIO(data))


def test_missing_component_is_named_or_skipped(copy):
    rewrite(copy / "train-000000.tar", "000000003.label.i64")
    url = f"file://{copy}/train-000000.tar"
    with pytest.raises(SampleError, match=r"train-000000.tar: key 000000003: missing component label.i64") as e:
        epochs(loader(file(copy), last_batch="pad"), 1)
    assert e.value.key == "000000003" and e.value.shard == url
    ld = loader(file(copy), last_batch="partial", on_error="skip")
    assert len(ld) == 6
    for seen in epochs(ld, 2):
        assert sorted(seen) == [i for i in range(96) if i != 3]
    assert ld.skipped == [{"shard": url, "key": "000000003", "reason": "missing component label.i64"}]


def test_corrupt_image_is_named_or_skipped_and_the_epoch_stays_exact(copy):
    key = corrupt_image(copy, 1, 5)
    with pytest.raises(SampleError, match=rf"train-000001.tar: key {key}: png: cannot be decoded") as e:
        epochs(loader(pipe(copy)), 1)
    assert e.value.key == key and e.value.shard == f"pipe:cat {copy}/train-000001.tar"
    ld = loader(pipe(copy), on_error="skip", last_batch="pad")
    steps = len(ld)
    for seen in epochs(ld, 2):                 # the epoch that meets the bad sample is exact too
        assert sorted(seen) == [i for i in range(96) if i != int(key)]
    assert [s["key"] for s in ld.skipped] == [key] and len(ld) == steps and ld.epoch == 2


def test_a_stalled_read_is_an_error_not_a_hang(digits, monkeypatch):
    monkeypatch.setenv(remote.STALL_ENV, "1")
    url = f"pipe:sleep 3; cat {digits}/train-000000.tar"
    ld = loader(url, manifest=digits, last_batch="pad")
    with pytest.raises(PipelineError, match=rf"^{re.escape(url)}: no sample for \d+ s: the remote read stalled"):
        next(iter(ld))


def test_a_reader_thread_that_dies_without_a_word_is_an_error(digits, monkeypatch):
    monkeypatch.setattr(remote, "_work", lambda batches, q, stop: None)
    ld = loader(file(digits))
    with pytest.raises(PipelineError, match="reader stopped without a result"):
        next(iter(ld))


# -- http (curl, through webdataset's gopen) ---------------------------------------------------

@pytest.fixture
def served(copy):
    handler = functools.partial(_QuietHandler, directory=str(copy.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/train"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.mark.skipif(shutil.which("curl") is None, reason="webdataset opens http URLs with curl")
def test_http_shards(served, copy):
    ld = loader(served + "/train-{000000..000003}.tar", shuffle=False, last_batch="pad")
    assert ld.num_samples == 96 and epochs(ld, 1)[0] == list(range(96))
    (copy / "train-000003.tar").unlink()
    url = served + "/train-000003.tar"
    with pytest.raises(PipelineError, match=rf"^{re.escape(url)}: curl exited with status 22"):
        epochs(loader(url, last_batch="pad"), 1)


# -- URL rules ---------------------------------------------------------------------------------

def test_url_rules(monkeypatch):
    monkeypatch.delenv(remote.S3_COMMAND_ENV, raising=False)
    assert remote.gopen_url("s3://b/d/train-000000.tar") == "pipe:aws s3 cp s3://b/d/train-000000.tar -"
    monkeypatch.setenv(remote.S3_COMMAND_ENV, "s5cmd cat {url}")
    assert remote.gopen_url("s3://b/d/x.tar") == "pipe:s5cmd cat s3://b/d/x.tar"
    assert remote.shard_name("pipe:aws s3 cp s3://b/d/train-000007.tar -") == "train-000007.tar"
    assert remote.shard_name("https://h/d/train-000007.tar?sig=1") == "train-000007.tar"
    assert remote.sibling("pipe:aws s3 cp s3://b/d/train-000007.tar -", "manifest.json") == \
        "pipe:aws s3 cp s3://b/d/manifest.json -"
    assert remote.sibling("https://h/d/train-000007.tar?sig=1", "manifest.json") == "https://h/d/manifest.json"
    assert remote.sibling("pipe:curl -s https://h/d/manifest.json", "train/manifest.json") == \
        "pipe:curl -s https://h/d/train/manifest.json"


# -- every input kind flows through the external source ----------------------------------------

def test_video_is_decoded_from_the_stream(tmp_path):
    d = make_demo(tmp_path / "d", "digits-video", 8) / "train"
    ld = ViewLoader(f"file://{d}/manifest.json", "video_clips", batch_size=2, num_threads=1, shuffle=False,
                    last_batch="pad", recipe="simclr-cifar", view_options={"frames": 4, "stride": 2, "size": 16})
    b = next(iter(ld))
    assert b.index.tolist() == [0, 1] and b.views[0].shape[0] == 2 and torch.isfinite(b.views[0]).all()


@pytest.mark.parametrize("demo, fields", [
    ("digits-objects", ["index", "label", "boxes", "box_classes"]),
    ("digits-captions", ["index", "label", "image", "text"]),
])
def test_remote_read_gives_the_reader_fields_and_dtypes(tmp_path, demo, fields):
    """``remote.read`` straight into a DALI pipeline: every field with the reader's dtype and the
    stored bytes, plus ``valid``."""
    from nvidia.dali import pipeline_def

    from clvr.pipeline.reader import FIELDS, ReadOptions
    from clvr.pipeline.source import resolve

    d = make_demo(tmp_path / "d", demo, 12) / "train"
    shards = resolve(f"file://{d}/manifest.json")
    opts = ReadOptions(shuffle=False)
    stream = remote.Stream(remote.parts_for(shards, opts, 4), fields, "raise", set(), [], shards.spec)
    feed = remote.Feed(stream, 0, 0)

    @pipeline_def(batch_size=4, num_threads=1, device_id=None)
    def graph():
        raw = remote.read(shards, fields, opts, feed)
        return tuple(raw[f] for f in fields + ["valid"])

    pipe = graph()
    pipe.build()
    outs = dict(zip(fields + ["valid"], pipe.run()))
    feed.close()
    assert [outs[f].dtype for f in fields] == [FIELDS[f][1] for f in fields]
    ext = {"index": ("index.i64", "<i8"), "label": ("label.i64", "<i8"), "boxes": ("boxes.f32", "<f4"),
           "box_classes": ("boxcls.i64", "<i8"), "image": ("png", "u1"), "text": ("txt", "u1")}
    for i, s in enumerate(read_samples(sorted(d.glob("*.tar")))[:4]):
        for f in fields:
            name, dtype = ext[f]
            assert np.array(outs[f][i]).tolist() == np.frombuffer(s[name], dtype).tolist(), (f, i)
        assert np.array(outs["valid"][i]).tolist() == [1]
