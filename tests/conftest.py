"""Shared fixtures: run the ``clvr`` command in-process, make small inputs."""

from __future__ import annotations

import io
import math
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent


class CliResult:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err

    def __repr__(self):
        return f"CliResult(code={self.code}, out={self.out!r}, err={self.err!r})"


@pytest.fixture
def clvr(capsys):
    """``clvr("shard", "images", src, out, ...)`` -> CliResult(code, stdout, stderr)."""
    from clvr.cli import main

    def run(*args) -> CliResult:
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse errors
            code = e.code if isinstance(e.code, int) else 1
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def photo(seed: int = 0, size=(48, 40)) -> Image.Image:
    """A small RGB image with structure (gradients and a rectangle), different per seed."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)),
                    np.full_like(xx, int(rng.integers(256)))], -1).astype(np.uint8)
    x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
    arr[y0:y0 + h // 3, x0:x0 + w // 3] = rng.integers(0, 256, 3)
    return Image.fromarray(arr, "RGB")


def encode(im: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """An ImageFolder tree: 3 classes x 6 JPEG/PNG images."""
    root = tmp_path / "imgs"
    for c, name in enumerate(["cat", "dog", "owl"]):
        d = root / name
        d.mkdir(parents=True)
        for i in range(6):
            im = photo(seed=10 * c + i)
            if i % 3 == 2:
                im.save(d / f"{name}{i}.png")
            else:
                im.save(d / f"{name}{i}.jpg", quality=90)
    return root


def demo_shards(clvr, tmp_path: Path, limit: int = 40, shard_size: int = 16) -> Path:
    """A small split digits shard set in ``tmp_path/out``, for tests that tamper with one."""
    out = tmp_path / "out"
    assert clvr("shard", "demo", "digits", out, "--limit", str(limit), "--shard-size", str(shard_size),
                "--no-progress", "--workers", "1").code == 0
    return out


def make_demo(out: Path, demo: str = "digits", limit: int = 40, shard_size: int | None = None) -> Path:
    """Shard a demo set into ``out`` (for module-scoped fixtures, where ``clvr`` is not available)."""
    from clvr.cli import main
    args = ["shard", "demo", demo, str(out), "--limit", str(limit), "--no-progress", "--workers", "1"]
    if shard_size:
        args += ["--shard-size", str(shard_size)]
    assert main(args) == 0
    return out


def epoch_indices(loader, epochs: int) -> list[list[int]]:
    """The global indices (padding left out) that ``loader`` yields in each of ``epochs`` epochs."""
    out = []
    for _ in range(epochs):
        seen = []
        for batch in loader:
            seen += batch.index[batch.valid].tolist()
        out.append(seen)
    return out


def edit_json(path: Path, change) -> None:
    """Load the JSON file, let ``change`` modify it in place, write it back."""
    obj = json.loads(path.read_text())
    change(obj)
    path.write_text(json.dumps(obj))


def read_rejects(out: Path) -> list[dict]:
    p = Path(out) / "rejects.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []


def read_samples(tar_paths) -> list[dict]:
    """All samples of the given tars, with the plain webdataset library (no decoding)."""
    import webdataset as wds

    out = []
    for t in tar_paths:
        for s in wds.WebDataset(str(t), shardshuffle=False, empty_check=False):
            out.append(s)
    return out


def corrupt_image(shard_dir: Path, shard: int, sample: int) -> str:
    """Zero the PNG of sample ``sample`` of shard ``shard`` after its signature (in place);
    returns its key. The tar and index stay consistent: only the pixels become undecodable."""
    from clvr.pipeline.source import read_index
    tar = shard_dir / f"train-{shard:06d}.tar"
    entry = read_index(str(tar.with_suffix(".idx")))[sample]
    off, size = entry.components["png"]
    with open(tar, "r+b") as f:
        f.seek(off + 8)
        f.write(b"\x00" * (size - 8))
    return entry.key


def linear_taps(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of plain linear interpolation (no antialias), edges clamped."""
    w = np.zeros((n_out, n_in))
    for i in range(n_out):
        pos = (i + 0.5) * n_in / n_out - 0.5
        j = math.floor(pos)
        f = pos - j
        w[i, min(max(j, 0), n_in - 1)] += 1 - f
        w[i, min(max(j + 1, 0), n_in - 1)] += f
    return w


def load_script(path: str):
    """The script at ``path`` (from the repository's root) imported as a module: the scripts of
    ``bench/`` and ``docs/`` are not in a package."""
    import importlib.util
    file = REPO / path
    spec = importlib.util.spec_from_file_location(file.stem, file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_bench(name: str):
    """The script ``bench/NAME.py`` imported as a module."""
    return load_script(f"bench/{name}.py")
