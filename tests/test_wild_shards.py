"""Issue 20: WebDataset sets from the wild. Every layout of :mod:`clvr.shards.wild` (written by
``webdataset.ShardWriter`` itself) is indexed by ``clvr shard index`` and read for one epoch with
every sample exactly once, the writer's label and the writer's image for each key; the index
files are ``wds2idx``'s where the format allows; the loader checks every global index it serves;
a skipped sample does not make its epoch repeat others."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clvr.shards.wild import LAYOUTS, write_layout
from conftest import corrupt_image, make_demo

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

PLAIN = {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}


def keys_in_order(out: Path) -> list[str]:
    """Every indexed sample's true key, in the manifest's (global index) order."""
    manifest = json.loads((out / "manifest.json").read_text())
    keys = []
    for s in manifest["shards"]:
        keys += json.loads((out / s["samples_file"]).read_text())["keys"]
    return keys


def read_epoch(data, **kw) -> dict:
    """global index -> (label, mean colour 0-255) of every valid sample of one epoch."""
    from clvr.methods.features import eval_loader
    loader = eval_loader(str(data), batch_size=8, size=8, device="cpu", normalize=PLAIN, **kw)
    seen: dict[int, list] = {}
    for batch in loader:
        for gi, y, ok, view in zip(batch.index.tolist(), batch.label.tolist(), batch.valid.tolist(), batch.views[0]):
            if ok:
                seen.setdefault(gi, []).append((y, (view.float().mean((1, 2)) * 255).tolist()))
    loader.close()
    return seen


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_layout_is_read_once_with_the_writers_labels_and_images(clvr, tmp_path, layout):
    src = tmp_path / "set"
    written = write_layout(layout, src)
    before = {p.name: p.read_bytes() for p in src.glob("*.tar")}
    r = clvr("shard", "index", src, "--no-progress")
    assert r.code == 0, r.err
    assert {p.name: p.read_bytes() for p in src.glob("*.tar")} == before           # tars untouched
    keys = keys_in_order(src)
    assert keys == written.keys                                                     # the writer's keys
    manifest = json.loads((src / "manifest.json").read_text())
    names = (manifest["classes"] or {}).get("names")
    seen = read_epoch(src)
    assert sorted(seen) == list(range(len(written)))                                # every sample ...
    assert all(len(v) == 1 for v in seen.values())                                  # ... exactly once
    for gi, [(label, colour)] in seen.items():
        want = written.labels[keys[gi]]
        if want is None:
            assert label == -1, keys[gi]
        else:
            assert label >= 0 and names[label] == str(want), (keys[gi], label, want)
            if isinstance(want, int):
                assert label == want                                                # integer ids kept
        assert np.abs(np.array(colour) - written.colours[keys[gi]]).max() < 4, keys[gi]   # its own image


def test_index_files_are_wds2idx_where_the_format_allows_and_encoded_where_not(clvr, tmp_path):
    from clvr.shards.dali_index import format_index, index_tar, parse_index
    for layout in ("class folders in the key", "non-ASCII keys (PAX path records)",
                   "upper-case extensions (.JPG, .JPEG, .PNG)", "paths over 100 characters (PAX headers)"):
        src = tmp_path / layout.split()[0]
        write_layout(layout, src)
        assert clvr("shard", "index", src, "--no-progress").code == 0
        for tar in sorted(src.glob("*.tar")):
            ref = tar.with_suffix(".ref")
            subprocess.run([str(Path(sys.executable).parent / "wds2idx"), str(tar), str(ref)], check=True,
                           capture_output=True)
            written = tar.with_suffix(".idx").read_text(encoding="utf-8")
            assert written == ref.read_text(encoding="utf-8") == format_index(index_tar(tar)), layout
    src = tmp_path / "spaces"
    write_layout("a space in the key", src)
    r = clvr("shard", "index", src, "--no-progress")
    assert r.code == 0 and "member name(s) with white space, percent-encoded" in r.out
    idx = sorted(src.glob("*.idx"))[0]
    entries = parse_index(idx.read_text(encoding="utf-8"))        # DALI's fields stay four per component
    assert entries[0][0].name == "my%20photos/photo%2000000.cls"
    assert json.loads(idx.with_suffix("").with_suffix(".samples.json").read_text())["keys"][0] == "my photos/photo 00000"


def test_dotted_basenames_are_keyed_up_to_their_extension_and_said_so(clvr, tmp_path):
    src = tmp_path / "dotted"
    write_layout("dotted basenames", src)
    r = clvr("shard", "index", src, "--no-progress")
    assert r.code == 0 and "20 samples in" in r.out
    assert "with dots in the file name, keyed up to the extension" in r.out
    idx = sorted(src.glob("*.idx"))[0].read_text()
    assert idx.splitlines()[1].startswith("cls ") and " png " in idx.splitlines()[1]    # not "0000.cls"


def test_unlabelled_samples_are_minus_one_counted_and_listed(clvr, tmp_path):
    src = tmp_path / "some"
    written = write_layout("a few samples without .cls", src)
    r = clvr("shard", "index", src, "--no-progress")
    assert r.code == 0
    missing = [k for k in written.keys if written.labels[k] is None]
    assert len(missing) == 8
    assert "WARNING: 8 of 40 sample(s) have no label (label -1" in r.out and missing[0] in r.out
    manifest = json.loads((src / "manifest.json").read_text())
    assert manifest["unlabelled"]["count"] == 8
    assert [s["key"] for s in manifest["unlabelled"]["samples"]] == missing
    assert sum(manifest["label_counts"].values()) == 32


def test_labels_from_json_fields_and_a_label_key_that_names_them(clvr, tmp_path):
    src = tmp_path / "json"
    write_layout("labels only inside .json", src)
    r = clvr("shard", "index", src, "--no-progress")
    assert r.code == 0 and "labels from the field 'label' of the .json members" in r.out
    names = tmp_path / "names"
    write_layout("class names inside .json", names)
    r = clvr("shard", "index", names, "--no-progress", "--label-key", "json:class_name")
    assert r.code == 0, r.err
    manifest = json.loads((names / "manifest.json").read_text())
    assert manifest["classes"]["names"] == ["cat", "dog", "owl"] and manifest["label_source"] == "json:class_name"
    r = clvr("shard", "index", names, "--no-progress", "--label-key", "none")
    assert r.code == 0 and json.loads((names / "manifest.json").read_text())["classes"] is None
    img2 = tmp_path / "img2dataset"
    write_layout("img2dataset (9-digit keys, .txt, .json without labels)", img2)
    r = clvr("shard", "index", img2, "--no-progress")
    assert r.code == 0 and "no labels: no .cls/.cls2/.label/.class/.target member and no label field" in r.out


def test_a_val_set_indexed_with_its_train_sets_classes_gets_the_same_ids(clvr, tmp_path):
    import webdataset as wds
    from clvr.shards.wild import _image
    train, val, other = tmp_path / "train", tmp_path / "val", tmp_path / "other"
    for out, classes in ((train, ["cat", "dog", "owl"]), (val, ["dog", "owl"]), (other, ["dog", "emu"])):
        out.mkdir()
        with wds.ShardWriter(str(out / "p-%03d.tar"), maxcount=50, verbose=0) as w:
            for i in range(9):
                w.write({"__key__": f"k{i}", "png": _image((9, 9, 9), "PNG"), "label": classes[i % len(classes)]})
    assert clvr("shard", "index", train, "--no-progress").code == 0
    assert clvr("shard", "index", val, "--no-progress", "--classes-from", train).code == 0
    m = json.loads((val / "manifest.json").read_text())
    assert m["classes"]["names"] == ["cat", "dog", "owl"] and set(m["label_counts"]) == {"1", "2"}
    r = clvr("shard", "index", other, "--no-progress", "--classes-from", train)
    assert r.code == 2 and "key k1: class 'emu' is not one of the classes of --classes-from" in r.err


def test_index_refuses_what_the_loader_would_refuse_naming_tar_and_key(clvr, tmp_path):
    import webdataset as wds
    from clvr.shards.wild import _image
    src = tmp_path / "dup"
    src.mkdir()
    with wds.TarWriter(str(src / "a.tar")) as w:
        w.write({"__key__": "x/y", "jpg": _image((1, 2, 3), "JPEG"), "JPG": _image((1, 2, 3), "JPEG")})
    r = clvr("shard", "index", src, "--no-progress")
    assert r.code == 2 and "a.tar: key 'x/y' has two .jpg members" in r.err


def test_tars_in_subfolders_are_named_with_the_fix(clvr, tmp_path):
    write_layout("class folders in the key", tmp_path / "set" / "train")
    r = clvr("shard", "index", tmp_path / "set", "--no-progress")
    assert r.code == 2 and "no .tar files in the folder itself, but its subfolders hold some" in r.err
    assert f"clvr shard index {tmp_path / 'set' / 'train'}" in r.err


def test_compressed_tars_are_named_with_the_fix(clvr, tmp_path):
    import gzip
    src = tmp_path / "gz"
    write_layout("class folders in the key", src)
    for tar in src.glob("*.tar"):
        (src / (tar.name + ".gz")).write_bytes(gzip.compress(tar.read_bytes()))
        tar.unlink()
    r = clvr("shard", "index", src, "--no-progress")
    assert r.code == 2 and "compressed tar(s) such as shard-00000.tar.gz: DALI reads uncompressed tars only" in r.err


def test_two_ranks_partition_a_foreign_set_with_class_folders(clvr, tmp_path):
    from clvr.pipeline import ViewLoader
    src = tmp_path / "folders"
    written = write_layout("class folders in the key", src)
    assert clvr("shard", "index", src, "--no-progress").code == 0
    parts = []
    for rank in (0, 1):
        ld = ViewLoader(src, "two_view", recipe="simclr-cifar", batch_size=4, rank=rank, world_size=2,
                        last_batch="pad", device="cpu")
        parts.append([i for b in ld for i, ok in zip(b.index.tolist(), b.valid.tolist()) if ok])
        ld.close()
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == list(range(len(written)))


# -- the loader checks the global index it serves ---------------------------------------------

@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    return make_demo(tmp_path_factory.mktemp("digits") / "d", limit=80, shard_size=24) / "train"


def _set_index(shard_dir: Path, shard: int, sample: int, value: int) -> str:
    from clvr.pipeline.source import read_index
    tar = shard_dir / f"train-{shard:06d}.tar"
    entry = read_index(str(tar.with_suffix(".idx")))[sample]
    off, _ = entry.components["index.i64"]
    with open(tar, "r+b") as f:
        f.seek(off)
        f.write(struct.pack("<q", value))
    return entry.key


@pytest.mark.parametrize("value,message", [(3, "was already served in epoch 0 by key"),
                                           (10_000, r"global index 10000 is out of range \[0, ")])
def test_a_global_index_served_twice_or_out_of_range_is_named(clean, tmp_path, value, message):
    from clvr.pipeline import PipelineError, ViewLoader
    data = tmp_path / "train"
    shutil.copytree(clean, data)
    key = _set_index(data, 0, 5, value)
    ld = ViewLoader(data, "two_view", recipe="simclr-cifar", batch_size=8, shuffle=False, last_batch="pad",
                    device="cpu")
    with pytest.raises(PipelineError, match=rf"train-000000.tar: key {key}: global index {value} .*{message}"
                       if value == 3 else rf"train-000000.tar: key {key}: {message}"):
        for _ in ld:
            pass
    ld.close()


@pytest.mark.parametrize("last_batch", ["pad", "drop"])
def test_an_epoch_with_a_skipped_sample_serves_every_other_sample_once(clean, tmp_path, last_batch):
    from clvr.pipeline import ViewLoader
    data = tmp_path / "train"
    shutil.copytree(clean, data)
    key = corrupt_image(data, 1, 20)     # in the middle of the shuffled order: found mid-epoch
    ld = ViewLoader(data, "two_view", recipe="simclr-cifar", batch_size=8, num_threads=1, on_error="skip",
                    last_batch=last_batch, device="cpu", shuffle=True, seed=3)
    total = ld.num_samples
    epochs, dropped = [], []
    for _ in range(3):
        batches = list(ld)
        epochs.append([i for b in batches for i, ok in zip(b.index.tolist(), b.valid.tolist()) if ok])
        dropped.append(sum(b.dropped for b in batches))
    ld.close()
    assert [s["key"] for s in ld.skipped] == [key] and ld.repeats_dropped == 0
    others = set(range(total)) - {int(key)}
    if last_batch == "pad":                         # every other sample exactly once, every epoch
        for seen in epochs:
            assert sorted(seen) == sorted(others)
    else:                                           # no repeats; the epoch of the skip keeps its length
        for seen in epochs:
            assert len(seen) == len(set(seen)) and set(seen) <= others
        assert len(epochs[0]) == total // 8 * 8 - 1 and dropped[0] == 1    # the stand-in's slot
        assert len(epochs[1]) == (total - 1) // 8 * 8 and dropped[1] == 0  # then a stream without it


def test_a_shard_that_breaks_late_in_a_run_is_skipped_without_repeats(clean, tmp_path):
    from clvr.pipeline import ViewLoader
    from clvr.pipeline.loader import REPLAY_EPOCHS
    data = tmp_path / "train"
    shutil.copytree(clean, data)
    ld = ViewLoader(data, "two_view", recipe="simclr-cifar", batch_size=8, num_threads=1, on_error="skip",
                    last_batch="drop", device="cpu", shuffle=True, seed=3, prefetch=1)
    total = ld.num_samples
    for _ in range(REPLAY_EPOCHS + 1):
        for _ in ld:
            pass
    key = corrupt_image(data, 1, 20)     # changed during the run: the stream restarts without it
    seen = [i for b in ld for i, ok in zip(b.index.tolist(), b.valid.tolist()) if ok]
    ld.close()
    assert [s["key"] for s in ld.skipped] == [key]
    assert len(seen) == len(set(seen)) and int(key) not in seen
    assert len(seen) + ld.repeats_dropped <= total


def test_without_shuffling_a_skip_still_serves_every_other_sample_once(clean, tmp_path):
    from clvr.methods.features import eval_loader
    data = tmp_path / "train"
    shutil.copytree(clean, data)
    key = corrupt_image(data, 2, 10)     # late in the stored order: found mid-epoch
    ld = eval_loader(str(data), batch_size=8, size=16, device="cpu", on_error="skip", num_threads=1)
    total = ld.num_samples
    served = [i for b in ld for i, ok in zip(b.index.tolist(), b.valid.tolist()) if ok]
    ld.close()
    assert [s["key"] for s in ld.skipped] == [key]
    assert sorted(served) == sorted(set(range(total)) - {int(key)})          # each other sample once


def test_info_says_where_labels_came_from_and_which_samples_have_none(clvr, tmp_path):
    src = tmp_path / "some"
    written = write_layout("a few samples without .cls", src)
    assert clvr("shard", "index", src, "--no-progress").code == 0
    info = clvr("shard", "info", src)
    first = next(k for k in written.keys if written.labels[k] is None)
    assert info.code == 0 and "labels (from cls): 0: 8, 1: 8, 2: 8, 3: 8" in info.out
    assert f"8 sample(s) without a label (-1, left out of evaluation): shard-00000.tar:{first}" in info.out


def test_an_image_dali_cannot_decode_is_skipped_by_name(clvr, tmp_path):
    from clvr.shards.wild import write
    src = tmp_path / "gif"
    write(src, [{"key": f"k{i}", "ext": "gif" if i == 2 else "png", "label": i % 2} for i in range(6)], maxcount=10)
    r = clvr("shard", "index", src, "--no-progress")
    assert r.code == 0 and "indexed 5 samples" in r.out
    assert "skipped 1 sample(s) with an image DALI cannot decode: shard-00000.tar:k2" in r.out
    manifest = json.loads((src / "manifest.json").read_text())
    assert manifest["skipped"]["samples"][0]["reason"].startswith("a .gif image, which DALI cannot decode")
    assert sorted(read_epoch(src)) == list(range(5))


def test_labels_that_start_in_a_later_tar_are_found_and_the_earlier_samples_unlabelled(clvr, tmp_path):
    from clvr.shards.wild import write
    src = tmp_path / "late"
    write(src, [{"key": f"k{i:02d}", "label": None if i < 7 else i % 3} for i in range(14)], maxcount=7)
    r = clvr("shard", "index", src, "--no-progress")
    assert r.code == 0 and "labels from the .cls members" in r.out
    m = json.loads((src / "manifest.json").read_text())
    assert m["unlabelled"]["count"] == 7 and m["label_counts"] == {"0": 2, "1": 3, "2": 2}
    labels = json.loads((src / "shard-00001.samples.json").read_text())["labels"]
    assert labels == [i % 3 for i in range(7, 14)]


def test_a_side_file_of_another_length_is_named_not_an_index_error(clvr, tmp_path):
    from clvr.pipeline import PipelineError, ViewLoader
    src = tmp_path / "set"
    write_layout("class folders in the key", src)
    assert clvr("shard", "index", src, "--no-progress").code == 0
    side = sorted(src.glob("*.samples.json"))[0]
    data = json.loads(side.read_text())
    data["keys"], data["labels"] = data["keys"][:-1], data["labels"][:-1]
    side.write_text(json.dumps(data))
    with pytest.raises(PipelineError, match=rf"{side.name}: lists 6 samples, .*shard-00000.idx 7"):
        ViewLoader(src, "two_view", recipe="simclr-cifar", batch_size=4, device="cpu")
