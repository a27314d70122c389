"""``clvr shard images`` on bad and unusual input: what is rejected, what is converted (and to
what pixels), what is logged in ``OUT/rejects.jsonl`` and counted in ``OUT/manifest.json``."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import encode, photo, read_rejects, read_samples

FAST = ("--workers", "1", "--no-progress")
IMAGE_EXTS = ("jpg", "png", "webp")


# ----------------------------------------------------------------------------- helpers

def shard_images(clvr, src, out, *extra):
    return clvr("shard", "images", src, out, *FAST, *extra)


def manifest(out: Path) -> dict:
    return json.loads((Path(out) / "manifest.json").read_text())


def samples(out: Path) -> list[dict]:
    m = manifest(out)
    return read_samples([Path(out) / s["name"] for s in m["shards"]])


def by_src(out: Path) -> dict[str, dict]:
    return {json.loads(s["json"])["src"]: s for s in samples(out)}


def image_of(sample: dict) -> tuple[str, Image.Image]:
    (ext,) = [e for e in IMAGE_EXTS if e in sample]
    im = Image.open(io.BytesIO(sample[ext]))
    im.load()
    return ext, im


def lines_for(out: Path, src: str) -> list[dict]:
    return [r for r in read_rejects(out) if r["src"] == src]


def noisy(seed: int = 0, size=(48, 40)) -> Image.Image:
    """Random pixels: a JPEG of it is mostly entropy-coded data, so half of it ends mid-scan."""
    w, h = size
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def truncated_jpeg() -> bytes:
    data = encode(noisy(1), "JPEG", quality=90)
    return data[: len(data) // 2]


def class_tree(tmp_path: Path) -> Path:
    """SRC with one class folder ``a`` holding one good image ``a/good.png`` (30x30 = 900 px)."""
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    photo(99, size=(30, 30)).save(src / "a" / "good.png")
    return src


def assert_log_line(r: dict):
    assert set(r) >= {"src", "split", "what", "action", "reason"}
    assert r["action"] in ("rejected", "converted")
    assert r["what"] in ("sample", "line", "box")


# ----------------------------------------------------------------------------- rejected inputs

def _empty(src):
    (src / "a" / "bad.jpg").write_bytes(b"")
    return "a/bad.jpg", "empty", ()


def _text(src):
    (src / "a" / "bad.jpg").write_text("these are words, not pixels\n" * 4)
    return "a/bad.jpg", "not an image", ()


def _truncated(src):
    (src / "a" / "bad.jpg").write_bytes(truncated_jpeg())
    return "a/bad.jpg", "truncated", ()


def _too_many_pixels(src):
    photo(1).save(src / "a" / "big.png")  # 48x40 = 1920 px
    return "a/big.png", "--max-pixels", ("--max-pixels", "1000")


def _wrong_extension(src):
    (src / "a" / "notes.txt").write_text("labelling notes")
    return "a/notes.txt", "not an image file", ()


def _loose_file(src):
    (src / "loose.png").write_bytes(encode(photo(2), "PNG"))  # a real image, but in no class folder
    return "loose.png", "outside any class folder", ()


@pytest.mark.parametrize("make", [_empty, _text, _truncated, _too_many_pixels, _wrong_extension, _loose_file],
                         ids=["zero-byte", "text-named-jpg", "truncated-jpeg", "over-max-pixels",
                              "non-image-extension", "loose-file"])
def test_bad_input_is_rejected_logged_and_counted(tmp_path, clvr, make):
    src = class_tree(tmp_path)
    bad_src, word, extra = make(src)
    out = tmp_path / "out"
    r = shard_images(clvr, src, out, *extra)
    assert r.code == 0, r
    rejects = read_rejects(out)
    assert len(rejects) == 1, rejects
    (line,) = rejects
    assert_log_line(line)
    assert line["src"] == bad_src
    assert line["action"] == "rejected" and line["what"] == "sample" and line["split"] is None
    assert word in line["reason"]
    counts = manifest(out)["rejects"]
    assert counts["rejected_samples"] == 1
    assert counts["converted_samples"] == 0
    assert counts["file"] == "rejects.jsonl"
    got = by_src(out)
    assert list(got) == ["a/good.png"]
    assert manifest(out)["totals"]["samples"] == 1


def test_over_max_pixels_reason_names_the_size_and_limit(tmp_path, clvr):
    src = class_tree(tmp_path)
    photo(1, size=(50, 21)).save(src / "a" / "wide.png")
    out = tmp_path / "out"
    assert shard_images(clvr, src, out, "--max-pixels", "1000").code == 0
    (line,) = lines_for(out, "a/wide.png")
    assert "50x21" in line["reason"] and "1050" in line["reason"] and "1000" in line["reason"]
    # at the limit exactly is allowed
    out2 = tmp_path / "out2"
    assert shard_images(clvr, src, out2, "--max-pixels", "1050").code == 0
    assert set(by_src(out2)) == {"a/good.png", "a/wide.png"}


def test_truncated_jpeg_passes_with_no_verify(tmp_path, clvr):
    src = class_tree(tmp_path)
    data = truncated_jpeg()
    (src / "a" / "cut.jpg").write_bytes(data)
    out = tmp_path / "out"
    assert shard_images(clvr, src, out, "--no-verify").code == 0
    # documented: header-only checks let a truncated file through, byte for byte
    assert read_rejects(out) == []
    assert manifest(out)["rejects"]["rejected_samples"] == 0
    got = by_src(out)
    assert got["a/cut.jpg"]["jpg"] == data
    meta = json.loads(got["a/cut.jpg"]["json"])
    assert (meta["width"], meta["height"]) == (48, 40)
    # and verification (the default) catches it
    out2 = tmp_path / "out2"
    assert shard_images(clvr, src, out2).code == 0
    (line,) = lines_for(out2, "a/cut.jpg")
    assert line["action"] == "rejected" and "truncated" in line["reason"]


def test_missing_file_in_a_list_is_rejected(tmp_path, clvr):
    photo(1).save(tmp_path / "here.png")
    (tmp_path / "list.csv").write_text("path,label\nhere.png,x\ngone.png,y\n")
    out = tmp_path / "out"
    assert shard_images(clvr, tmp_path / "list.csv", out).code == 0
    (line,) = read_rejects(out)
    assert line["src"] == "gone.png" and line["what"] == "sample" and "missing" in line["reason"]
    assert list(by_src(out)) == ["here.png"]


# ----------------------------------------------------------------------------- conversions

def _rgb(im: Image.Image) -> np.ndarray:
    assert im.mode == "RGB"
    return np.asarray(im, np.int16)


def _cmyk(d: Path):
    orig = photo(3)
    orig.convert("CMYK").save(d / "x.jpg", quality=95)
    assert Image.open(d / "x.jpg").mode == "CMYK"
    want = np.asarray(Image.open(d / "x.jpg").convert("RGB"), np.int16)
    return "x.jpg", "jpg", "CMYK", want, 3.0, np.asarray(orig, np.int16)


def _sixteen_bit(d: Path):
    h, w = 40, 48
    v = (np.arange(h * w).reshape(h, w) * (65535 // (h * w - 1))).astype(np.uint16)
    Image.fromarray(v).save(d / "x.png")
    assert Image.open(d / "x.png").mode == "I;16"
    want8 = np.round(v.astype(np.float64) / 257.0)
    return "x.png", "png", "16-bit", np.repeat(want8[..., None], 3, -1), 1.0, None


def _palette(d: Path):
    photo(4).quantize(16).save(d / "x.png")
    src = Image.open(d / "x.png")
    assert src.mode == "P" and "transparency" not in src.info
    return "x.png", "png", "palette", np.asarray(src.convert("RGB"), np.int16), 0.0, None


def _palette_transparent(d: Path):
    p = photo(5).quantize(16)
    p.save(d / "x.png", transparency=0)
    src = Image.open(d / "x.png")
    assert src.mode == "P" and src.info.get("transparency") == 0
    idx = np.asarray(src)
    assert (idx == 0).any() and (idx != 0).any()
    want = np.asarray(src.convert("RGB"), np.int16).copy()
    want[idx == 0] = 255  # the transparent entry becomes the white background
    return "x.png", "png", "alpha", want, 0.0, None


def _rgba(d: Path):
    base = np.asarray(photo(6), np.float64)
    alpha = np.full((40, 48), 255, np.uint8)
    alpha[:10] = 0       # fully transparent -> white
    alpha[10:20] = 128   # half -> blend with white
    Image.fromarray(np.dstack([base.astype(np.uint8), alpha]), "RGBA").save(d / "x.png")
    a = alpha[..., None] / 255.0
    want = base * a + 255.0 * (1 - a)
    return "x.png", "png", "alpha", want, 1.0, None


def _la(d: Path):
    gray = np.asarray(photo(7).convert("L"), np.float64)
    alpha = np.full((40, 48), 255, np.uint8)
    alpha[:, :12] = 0
    alpha[:, 12:24] = 64
    Image.fromarray(np.dstack([gray.astype(np.uint8), alpha]), "LA").save(d / "x.png")
    assert Image.open(d / "x.png").mode == "LA"
    a = alpha / 255.0
    want = gray * a + 255.0 * (1 - a)
    return "x.png", "png", "alpha", np.repeat(want[..., None], 3, -1), 1.0, None


def _gray_jpeg(d: Path):
    photo(8).convert("L").save(d / "x.jpg", quality=95)
    src = Image.open(d / "x.jpg")
    assert src.mode == "L"
    g = np.asarray(src, np.int16)
    return "x.jpg", "jpg", "grayscale", np.repeat(g[..., None], 3, -1), 2.0, None


def _one_bit(d: Path):
    photo(9).convert("1").save(d / "x.png")
    src = Image.open(d / "x.png")
    assert src.mode == "1"
    g = np.asarray(src.convert("L"), np.int16)
    assert set(np.unique(g)) == {0, 255}
    return "x.png", "png", "1-bit", np.repeat(g[..., None], 3, -1), 0.0, None


def _bmp(d: Path):
    photo(10).save(d / "x.bmp")
    return "x.bmp", "png", "BMP", np.asarray(photo(10), np.int16), 0.0, None


def _tiff(d: Path):
    photo(11).save(d / "x.tif")
    return "x.tif", "png", "TIFF", np.asarray(photo(11), np.int16), 0.0, None


def _animated_gif(d: Path):
    f0, f1 = photo(12).quantize(32), photo(13).quantize(32)
    f0.save(d / "x.gif", save_all=True, append_images=[f1], duration=100, loop=0)
    src = Image.open(d / "x.gif")
    assert src.n_frames == 2
    src.seek(0)
    want = np.asarray(src.convert("RGB"), np.int16)
    src.seek(1)
    second = np.asarray(src.convert("RGB"), np.int16)
    assert np.abs(want - second).mean() > 10  # the frames differ, so the check below means something
    return "x.gif", "png", "first frame", want, 0.0, None


CONVERSIONS = {"cmyk-jpeg": _cmyk, "16-bit-png": _sixteen_bit, "palette-png": _palette,
               "palette-png-transparency": _palette_transparent, "rgba-png": _rgba, "la-png": _la,
               "grayscale-jpeg": _gray_jpeg, "1-bit": _one_bit, "bmp": _bmp, "tiff": _tiff,
               "animated-gif": _animated_gif}


@pytest.mark.parametrize("make", list(CONVERSIONS.values()), ids=list(CONVERSIONS))
def test_unusual_images_become_8bit_rgb(tmp_path, clvr, make):
    src = tmp_path / "src" / "a"
    src.mkdir(parents=True)
    name, want_ext, word, want, tol, original = make(src)
    out = tmp_path / "out"
    assert shard_images(clvr, tmp_path / "src", out).code == 0
    got = by_src(out)
    assert list(got) == [f"a/{name}"]
    ext, im = image_of(got[f"a/{name}"])
    assert ext == want_ext
    assert im.size == (48, 40)
    arr = _rgb(im)
    diff = np.abs(arr - want)
    if tol == 0:
        assert diff.max() == 0
    else:
        assert diff.mean() <= tol, diff.mean()
        if want_ext == "png":  # lossless output: every pixel within rounding
            assert diff.max() <= tol
    if original is not None:  # e.g. CMYK: still close to the RGB it was made from
        assert np.abs(arr - original).mean() < 6
    lines = lines_for(out, f"a/{name}")
    assert lines and all(r["action"] == "converted" and r["what"] == "sample" for r in lines)
    for r in lines:
        assert_log_line(r)
    assert any(word in r["reason"] for r in lines), lines
    assert not [r for r in read_rejects(out) if r["action"] == "rejected"]
    counts = manifest(out)["rejects"]
    assert counts["rejected_samples"] == 0 and counts["converted_samples"] >= 1
    meta = json.loads(got[f"a/{name}"]["json"])
    assert (meta["width"], meta["height"]) == (48, 40)


def test_sixteen_bit_maps_value_over_257(tmp_path, clvr):
    """Spot values: 0 -> 0, 257*k -> k, 65535 -> 255."""
    v = np.zeros((40, 48), np.uint16)
    v[:, 0:12] = 0
    v[:, 12:24] = 257 * 100
    v[:, 24:36] = 257 * 200 + 100
    v[:, 36:48] = 65535
    (tmp_path / "src").mkdir()
    Image.fromarray(v).save(tmp_path / "src" / "d.png")
    out = tmp_path / "out"
    assert shard_images(clvr, tmp_path / "src", out).code == 0
    _, im = image_of(by_src(out)["d.png"])
    arr = np.asarray(im)
    assert arr.shape == (40, 48, 3)
    assert (arr[:, 0:12] == 0).all()
    assert (arr[:, 12:24] == 100).all()
    assert (arr[:, 24:36] == 200).all()
    assert (arr[:, 36:48] == 255).all()


def test_plain_rgb_jpeg_and_png_are_kept_byte_for_byte(tmp_path, clvr):
    src = tmp_path / "src"
    src.mkdir()
    jpg, png = encode(photo(1), "JPEG", quality=90), encode(photo(2), "PNG")
    (src / "a.jpg").write_bytes(jpg)
    (src / "b.png").write_bytes(png)
    out = tmp_path / "out"
    assert shard_images(clvr, src, out).code == 0
    got = by_src(out)
    assert got["a.jpg"]["jpg"] == jpg and got["b.png"]["png"] == png
    assert read_rejects(out) == []
    assert manifest(out)["rejects"]["converted_samples"] == 0


def test_max_side_resizes_keeping_aspect(tmp_path, clvr):
    src = tmp_path / "src"
    src.mkdir()
    wide, tall = photo(1, size=(60, 25)), photo(2, size=(40, 48))
    wide.save(src / "wide.png")
    tall.save(src / "tall.jpg", quality=95)
    small = encode(photo(3, size=(20, 16)), "PNG")
    (src / "small.png").write_bytes(small)
    out = tmp_path / "out"
    side = 32
    assert shard_images(clvr, src, out, "--max-side", str(side)).code == 0
    got = by_src(out)

    def expected_size(w, h):
        f = side / max(w, h)
        return round(w * f), round(h * f)

    ext, im = image_of(got["wide.png"])
    assert ext == "png" and im.size == expected_size(60, 25) == (32, 13)
    want = np.asarray(wide.resize(im.size, Image.Resampling.LANCZOS), np.int16)
    assert np.abs(_rgb(im) - want).max() <= 1
    meta = json.loads(got["wide.png"]["json"])
    assert meta["source_size"] == [60, 25] and (meta["width"], meta["height"]) == im.size

    ext, im = image_of(got["tall.jpg"])
    assert ext == "jpg" and im.size == expected_size(40, 48) == (27, 32)
    want = np.asarray(Image.open(src / "tall.jpg").convert("RGB").resize(im.size, Image.Resampling.LANCZOS),
                      np.int16)
    assert np.abs(_rgb(im) - want).mean() < 3

    assert got["small.png"]["png"] == small  # within the limit: untouched
    (line,) = lines_for(out, "wide.png")
    assert line["action"] == "converted" and "60x25" in line["reason"] and "--max-side" in line["reason"]
    assert lines_for(out, "small.png") == []


# ----------------------------------------------------------------------------- --strict and counts

def _mixed_tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    photo(1).save(src / "a" / "1.png")
    (src / "a" / "2.jpg").write_bytes(b"")                     # first reject
    photo(2).save(src / "a" / "3.png")
    (src / "a" / "4.jpg").write_text("not a picture")          # second reject
    photo(3).convert("L").save(src / "a" / "5.png")            # converted
    return src


def test_strict_exits_1_at_the_first_reject_and_writes_no_manifest(tmp_path, clvr):
    src = _mixed_tree(tmp_path)
    out = tmp_path / "out"
    r = shard_images(clvr, src, out, "--strict")
    assert r.code == 1, r
    assert "a/2.jpg" in r.err and "--strict" in r.err
    assert not (out / "manifest.json").exists()
    assert not list(out.glob("*.tar"))  # nothing incomplete left looking whole
    rejected = [x for x in read_rejects(out) if x["action"] == "rejected"]
    assert [x["src"] for x in rejected] == ["a/2.jpg"]  # stopped there: a/4.jpg was never reached


def test_strict_stops_on_a_listing_reject_too(tmp_path, clvr):
    src = class_tree(tmp_path)
    (src / "a" / "notes.txt").write_text("x")
    out = tmp_path / "out"
    r = shard_images(clvr, src, out, "--strict")
    assert r.code == 1, r
    assert "notes.txt" in r.err
    assert not (out / "manifest.json").exists()


def test_without_strict_the_run_finishes_and_counts_match_the_log(tmp_path, clvr):
    src = _mixed_tree(tmp_path)
    (src / "a" / "notes.txt").write_text("x")
    out = tmp_path / "out"
    r = shard_images(clvr, src, out)
    assert r.code == 0, r
    log = read_rejects(out)
    for line in log:
        assert_log_line(line)
        assert (src / line["src"]).exists()  # src names the file, relative to SRC
    rejected = sorted(x["src"] for x in log if x["action"] == "rejected")
    assert rejected == ["a/2.jpg", "a/4.jpg", "a/notes.txt"]
    converted = {x["src"] for x in log if x["action"] == "converted"}
    assert converted == {"a/5.png"}
    counts = manifest(out)["rejects"]
    assert counts["rejected_samples"] == len(rejected)
    assert counts["converted_samples"] == len(converted)
    assert sorted(by_src(out)) == ["a/1.png", "a/3.png", "a/5.png"]
    assert manifest(out)["totals"]["samples"] == 3
    assert "rejected 3 sample(s)" in r.out


def test_rejects_of_a_split_run_name_their_split(tmp_path, clvr):
    src = tmp_path / "src"
    for c in ("a", "b"):
        (src / c).mkdir(parents=True)
        for i in range(3):
            photo(i).save(src / c / f"{i}.png")
        (src / c / "9.jpg").write_bytes(b"")
    out = tmp_path / "out"
    assert shard_images(clvr, src, out, "--val-fraction", "0.5").code == 0
    log = read_rejects(out)
    assert sorted(x["src"] for x in log) == ["a/9.jpg", "b/9.jpg"]
    written = {}
    for split in ("train", "val"):
        written[split] = {json.loads(s["json"])["src"] for s in samples(out / split)}
    for x in log:
        assert x["split"] in ("train", "val") and "empty" in x["reason"]
        assert x["src"] not in written["train"] | written["val"]
    assert len(written["train"] | written["val"]) == 6
    assert manifest(out)["rejects"]["rejected_samples"] == 2
    assert manifest(out / "train")["rejects_file"] == "../rejects.jsonl"


def test_converted_samples_counts_each_sample_once(tmp_path, clvr):
    src = tmp_path / "src"
    src.mkdir()
    f0, f1 = photo(1).quantize(16), photo(2).quantize(16)
    f0.save(src / "anim.gif", save_all=True, append_images=[f1])  # 3 notes: animated, palette, re-encoded
    photo(3).save(src / "plain.png")
    out = tmp_path / "out"
    assert shard_images(clvr, src, out).code == 0
    (line,) = lines_for(out, "anim.gif")  # one line per converted sample, naming every conversion
    assert all(w in line["reason"] for w in ("animated", "palette", "PNG"))
    assert manifest(out)["rejects"]["converted_samples"] == 1


# ----------------------------------------------------------------------------- lists with bad lines

def test_csv_list_bad_line_is_rejected_as_a_line(tmp_path, clvr):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(3):
        photo(i).save(imgs / f"{i}.png")
    (tmp_path / "list.csv").write_text("path,label\n"
                                       "imgs/0.png,dog\n"
                                       "imgs/1.png,cat,extra\n"     # line 3: three columns
                                       "imgs/2.png,cat\n")
    out = tmp_path / "out"
    r = shard_images(clvr, tmp_path / "list.csv", out)
    assert r.code == 0, r
    (line,) = read_rejects(out)
    assert_log_line(line)
    assert line["src"] == "list.csv:3" and line["what"] == "line" and line["action"] == "rejected"
    assert "columns" in line["reason"]
    assert manifest(out)["rejects"]["rejected_samples"] == 1
    got = by_src(out)
    assert sorted(got) == ["imgs/0.png", "imgs/2.png"]
    assert manifest(out)["classes"]["names"] == ["cat", "dog"]
    assert int(got["imgs/0.png"]["cls"]) == 1 and int(got["imgs/2.png"]["cls"]) == 0


def test_jsonl_list_bad_lines_are_rejected_as_lines(tmp_path, clvr):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(3):
        photo(i).save(imgs / f"{i}.png")
    rows = [json.dumps({"path": "imgs/0.png", "label": 2}),
            "{this is not json",                                 # line 2
            json.dumps({"path": "imgs/1.png", "label": 10}),
            "",
            json.dumps({"label": 2}),                            # line 5: no path
            json.dumps({"path": "imgs/2.png", "label": 2})]
    (tmp_path / "list.jsonl").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    assert shard_images(clvr, tmp_path / "list.jsonl", out).code == 0
    bad = read_rejects(out)
    assert [(x["src"], x["what"], x["action"]) for x in bad] == [
        ("list.jsonl:2", "line", "rejected"), ("list.jsonl:5", "line", "rejected")]
    assert "invalid" in bad[0]["reason"] and "path" in bad[1]["reason"]
    assert manifest(out)["rejects"]["rejected_samples"] == 2
    got = by_src(out)
    assert sorted(got) == ["imgs/0.png", "imgs/1.png", "imgs/2.png"]
    # integer labels sort numerically: 2 < 10
    assert manifest(out)["classes"]["names"] == ["2", "10"]
    assert [int(got[f"imgs/{i}.png"]["cls"]) for i in range(3)] == [0, 1, 0]


# ----------------------------------------------------------------------------- PNG defects libpng refuses

def _png_with_bad_crc() -> bytes:
    data = bytearray(encode(photo(5), "PNG"))
    idat = data.index(b"IDAT")
    length = int.from_bytes(data[idat - 4:idat], "big")
    data[idat + 4 + length] ^= 0xFF  # first byte of the IDAT chunk's CRC
    return bytes(data)


def _png_without_iend() -> bytes:
    return encode(photo(6), "PNG")[:-12]


@pytest.mark.parametrize("make,word", [(_png_with_bad_crc, "checksum"), (_png_without_iend, "")],
                         ids=["bad-crc", "no-iend"])
def test_png_defects_are_rejected_and_verify_flags_them(tmp_path, clvr, make, word):
    src = tmp_path / "src"
    src.mkdir()
    (src / "bad.png").write_bytes(make())
    photo(1).save(src / "good.png")
    out = tmp_path / "out"
    assert shard_images(clvr, src, out).code == 0
    (line,) = read_rejects(out)
    assert line["src"] == "bad.png" and line["action"] == "rejected" and word in line["reason"].lower()
    # a shard written without verification: clvr shard verify catches what libpng would refuse
    out2 = tmp_path / "out2"
    r = clvr("shard", "images", src, out2, "--no-verify", "--workers", "1", "--no-progress")
    assert r.code == 0
    v = clvr("shard", "verify", out2, "--no-progress")
    assert v.code == 1 and "does not decode" in v.err


def test_sixteen_bit_rgb_png_is_stored_as_8_bit(tmp_path, clvr):
    """A 48-bit PNG, written by hand (PIL cannot save one)."""
    arr = (np.arange(40 * 48 * 3, dtype=np.uint32).reshape(40, 48, 3) * 37 % 65536).astype(">u2")
    raw = arr.tobytes()

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    rows = b"".join(b"\0" + raw[y * 48 * 6:(y + 1) * 48 * 6] for y in range(40))
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 48, 40, 16, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    src = tmp_path / "src"
    src.mkdir()
    (src / "deep.png").write_bytes(png)
    out = tmp_path / "out"
    assert shard_images(clvr, src, out).code == 0
    (s,) = read_samples(sorted(out.glob("*.tar")))
    assert s["png"][24] == 8, "bit depth in IHDR"
    got = np.asarray(Image.open(io.BytesIO(s["png"])).convert("RGB")).astype(int)
    assert np.abs(got - (arr.astype(int) >> 8)).max() <= 1
    (line,) = read_rejects(out)
    assert line["action"] == "converted" and "16-bit" in line["reason"]
