"""``clvr shard verify`` on sets indexed by ``clvr shard index`` (kind ``foreign``): tars written
by ``webdataset.ShardWriter`` (:mod:`clvr.shards.wild`) verify clean as they are, in place and
with ``--out``, whatever the images' modes; each corruption is named (tar, key, member or file)
and makes the command fail, and nothing else is reported."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from clvr.shards.foreign import index_foreign
from clvr.shards.wild import LAYOUTS, write_layout

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SPACE = "a space in the key"
NON_ASCII = "non-ASCII keys (PAX path records)"
SPARSE = "sparse class ids"


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """layout name -> a folder holding its tars, indexed in place (made once; tests copy it)."""
    made = {}

    def get(layout: str) -> Path:
        if layout not in made:
            src = tmp_path_factory.mktemp("wild") / "set"
            write_layout(layout, src)
            index_foreign(src, progress=False)
            made[layout] = src
        return made[layout]

    return get


def copy_of(indexed, layout: str, tmp_path: Path) -> Path:
    dst = tmp_path / "set"
    shutil.copytree(indexed(layout), dst)
    return dst


def verify(clvr, path, *extra):
    """(result, the problem lines)"""
    r = clvr("shard", "verify", path, "--no-progress", *extra)
    return r, [ln[4:] for ln in r.err.splitlines() if ln.startswith("  - ")]


def assert_clean(clvr, path):
    r, problems = verify(clvr, path)
    assert r.code == 0 and problems == [], r.err
    assert "OK" in r.out


def member(tar: Path, n: int, suffix: str) -> tarfile.TarInfo:
    with tarfile.open(tar) as tf:
        return [m for m in tf if m.name.endswith(suffix)][n]


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_indexed_layouts_verify_clean(clvr, indexed, layout):
    assert_clean(clvr, indexed(layout))


def test_unreadable_side_files_are_named_not_raised(clvr, indexed, tmp_path):
    out = copy_of(indexed, SPARSE, tmp_path)
    (out / "shard-00000.samples.json").write_text("{not json")
    edit_json(out / "shard-00001.samples.json", lambda d: d.__setitem__("labels", 5))
    r, problems = verify(clvr, out)
    assert r.code != 0
    assert any(p.startswith(f"{out / 'shard-00000.samples.json'}: cannot read the side file") for p in problems)
    assert any(p.startswith(f"{out / 'shard-00001.samples.json'}: ") and "labels" in p for p in problems)


def test_the_cli_index_then_verify_with_sample(clvr, tmp_path):
    src = tmp_path / "set"
    write_layout(SPACE, src)
    assert clvr("shard", "index", src, "--no-progress").code == 0
    assert_clean(clvr, src)
    r, problems = verify(clvr, src, "--sample", "3")
    assert r.code == 0 and problems == [], r.err


def test_side_folder_set_verifies_and_names_a_missing_tar(clvr, tmp_path):
    src, side = tmp_path / "tars", tmp_path / "side"
    write_layout(NON_ASCII, src)
    index_foreign(src, out=side, progress=False)
    assert not (src / "manifest.json").exists()
    assert_clean(clvr, side)
    (src / "shard-00001.tar").rename(tmp_path / "elsewhere.tar")
    r, problems = verify(clvr, side)
    assert r.code != 0
    assert problems and all("shard-00001.tar" in p for p in problems), problems
    assert any("missing" in p for p in problems)


def test_foreign_images_in_any_mode_that_pil_decodes_pass(clvr, tmp_path):
    """CMYK, grayscale and progressive JPEGs, palette PNGs, WebP, .JPEG: fine for a foreign set
    (clvr's own 'normalised 8-bit RGB' check is not applied to it)."""
    import webdataset as wds

    def enc(mode, fmt, **kw):
        buf = io.BytesIO()
        Image.new(mode, (9, 7), 50 if mode in ("L", "P") else (10, 80, 200, 5)[:len(mode)]).save(buf, fmt, **kw)
        return buf.getvalue()

    images = [("jpg", enc("CMYK", "JPEG")), ("jpeg", enc("L", "JPEG")), ("JPG", enc("RGB", "JPEG", progressive=True)),
              ("png", enc("L", "PNG")), ("PNG", enc("P", "PNG")), ("webp", enc("RGB", "WEBP")),
              ("png", enc("RGBA", "PNG")), ("JPEG", enc("RGB", "JPEG"))]
    src = tmp_path / "set"
    src.mkdir()
    with wds.ShardWriter(str(src / "shard-%05d.tar"), maxcount=5, verbose=0) as w:
        for i, (ext, data) in enumerate(images):
            w.write({"__key__": f"mixed/img {i}", ext: data, "cls": str(i % 2).encode(),
                     "json": json.dumps({"i": i}).encode()})
    index_foreign(src, progress=False)
    assert_clean(clvr, src)


def test_a_flipped_byte_in_an_image_is_named_by_tar_and_key(clvr, indexed, tmp_path):
    out = copy_of(indexed, SPACE, tmp_path)
    tar = out / "shard-00001.tar"
    m = member(tar, 2, ".png")
    data = bytearray(tar.read_bytes())
    data[m.offset_data + m.size // 2] ^= 0xFF
    tar.write_bytes(bytes(data))
    r, problems = verify(clvr, out)
    assert r.code != 0
    key = m.name[:-len(".png")]
    assert any(f"shard-00001.tar:{key}.png: does not decode" in p for p in problems), problems
    assert any(f"{tar}: sha256" in p for p in problems)
    assert all("shard-00001" in p for p in problems), problems          # the other tars are fine


def test_a_tar_appended_to_is_a_size_mismatch(clvr, indexed, tmp_path):
    out = copy_of(indexed, "class folders in the key", tmp_path)
    tar = out / "shard-00002.tar"
    size = tar.stat().st_size
    with open(tar, "ab") as f:
        f.write(b"\0" * 1024)
    r, problems = verify(clvr, out)
    assert r.code != 0
    assert f"{tar}: {size + 1024} bytes, manifest says {size}" in problems
    assert all(str(tar) in p for p in problems), problems


def test_an_edited_index_line_is_named_with_its_key_and_member(clvr, indexed, tmp_path):
    out = copy_of(indexed, NON_ASCII, tmp_path)
    idx = out / "shard-00001.idx"
    lines = idx.read_text(encoding="utf-8").splitlines()
    fields = lines[3].split(" ")
    fields[1] = str(int(fields[1]) + 512)                  # the first member's offset, one block on
    lines[3] = " ".join(fields)
    idx.write_text("\n".join(lines) + "\n", encoding="utf-8")
    key = json.loads((out / "shard-00001.samples.json").read_text(encoding="utf-8"))["keys"][2]
    r, problems = verify(clvr, out)
    assert r.code != 0
    assert len(problems) == 1, problems
    assert str(idx) in problems[0] and f"line 4 (key {key})" in problems[0]
    assert f"member {key}.{fields[0]}: offset {fields[1]} but the tar has offset {int(fields[1]) - 512}" in problems[0]


def test_a_changed_key_in_the_side_file_is_named(clvr, indexed, tmp_path):
    out = copy_of(indexed, SPACE, tmp_path)
    side = out / "shard-00000.samples.json"
    keys = json.loads(side.read_text(encoding="utf-8"))["keys"]
    edit_json(side, lambda d: d["keys"].__setitem__(4, "my photos/photo 99999"))
    r, problems = verify(clvr, out)
    assert r.code != 0
    assert problems and all(str(side) in p for p in problems), problems
    assert any(f"sample 5 is key 'my photos/photo 99999' there, {keys[4]!r} in shard-00000.tar" in p
               for p in problems), problems


def test_a_label_out_of_range_in_the_side_file_is_named(clvr, indexed, tmp_path):
    out = copy_of(indexed, SPARSE, tmp_path)
    side = out / "shard-00001.samples.json"
    data = json.loads(side.read_text())
    key = data["keys"][2]
    edit_json(side, lambda d: d["labels"].__setitem__(2, 99))
    r, problems = verify(clvr, out)
    assert r.code != 0
    assert f"{side}: sample 3 (key {key}): label 99 is not a class id in -1..42" in problems
    assert any("label_counts" in p for p in problems)


def test_a_label_that_disagrees_with_the_tar_is_named(clvr, indexed, tmp_path):
    out = copy_of(indexed, "class folders in the key", tmp_path)
    side = out / "shard-00000.samples.json"
    data = json.loads(side.read_text())
    old, key = data["labels"][1], data["keys"][1]
    new = (old + 1) % 4
    edit_json(side, lambda d: d["labels"].__setitem__(1, new))
    r, problems = verify(clvr, out)
    assert r.code != 0
    assert f"{side}: shard-00000.tar:{key} has label {new}, but its .cls member gives {old}" in problems
    assert any("label_counts do not match" in p for p in problems)
