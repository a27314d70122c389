"""Bad input at read time: each case is named (shard and key) or skipped and counted; no hang."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from clvr.pipeline import PipelineError, SampleError, ViewLoader
from conftest import corrupt_image, epoch_indices as run_epochs, make_demo

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    return make_demo(tmp_path_factory.mktemp("digits") / "d", limit=120, shard_size=32) / "train"


@pytest.fixture
def copy(clean, tmp_path) -> Path:
    dst = tmp_path / "train"
    shutil.copytree(clean, dst)
    return dst


def test_corrupt_sample_is_named_by_shard_and_key(copy):
    key = corrupt_image(copy, 1, 5)
    ld = ViewLoader(copy, "two_view", recipe="simclr-cifar", batch_size=16, num_threads=1)
    with pytest.raises(SampleError, match=rf"train-000001.tar: key {key}: png: cannot be decoded") as e:
        run_epochs(ld, 1)
    assert e.value.key == key and e.value.shard.endswith("train-000001.tar")


def test_on_error_skip_skips_and_counts_and_later_epochs_are_exact(copy):
    key = corrupt_image(copy, 2, 0)
    ld = ViewLoader(copy, "two_view", recipe="simclr-cifar", batch_size=16, num_threads=1,
                    on_error="skip", last_batch="pad")
    total = ld.num_samples
    epochs = run_epochs(ld, 3)
    assert [s["key"] for s in ld.skipped] == [key]
    assert ld.num_samples == total - 1
    for seen in epochs[1:]:
        assert sorted(seen) == sorted(set(range(total)) - {int(key)})
    assert int(key) not in set(epochs[0])


def test_truncated_shard_is_named_before_reading(copy):
    tar = copy / "train-000002.tar"
    size = tar.stat().st_size
    with open(tar, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(PipelineError, match=r"train-000002.tar: truncated: key \d{9}"):
        ViewLoader(copy, "two_view", recipe="simclr-cifar", batch_size=16)


def test_missing_component_is_named_or_skipped(copy):
    idx = copy / "train-000000.idx"
    lines = idx.read_text().splitlines()
    parts = lines[3].split()
    i = parts.index("label.i64")
    lines[3] = " ".join(parts[:i] + parts[i + 4:])          # sample 2 loses its label
    idx.write_text("\n".join(lines) + "\n")
    key = parts[3].split(".")[0]
    with pytest.raises(SampleError, match=rf"train-000000.tar: key {key}: missing component label.i64"):
        ViewLoader(copy, "two_view", recipe="simclr-cifar", batch_size=16)
    ld = ViewLoader(copy, "two_view", recipe="simclr-cifar", batch_size=16, on_error="skip", last_batch="pad",
                    num_threads=1)
    assert ld.skipped == [{"shard": str(copy / "train-000000.tar"), "key": key,
                           "reason": "missing component label.i64"}]
    seen = run_epochs(ld, 1)[0]
    assert int(key) not in seen and len(seen) == ld.num_samples == 95


def test_video_codec_the_cpu_cannot_decode_fails_fast_naming_the_fix(tmp_path):
    """H.264 (say) decodes only on a GPU: on a CPU the loader refuses at start-up, naming the
    codec and the re-shard command, instead of failing inside DALI."""
    from conftest import edit_json
    root = make_demo(tmp_path / "v", "digits-video", limit=8)
    split = root / "train"
    assert ViewLoader(split, "video_clips", batch_size=2, device="cpu").num_samples > 0

    def h264(m):
        m["stats"] = {k: v for k, v in m.get("stats", {}).items() if not k.startswith("codec:")}
        m["stats"]["codec:h264"] = 3
        m["stats"]["codec:vp9"] = 5
    edit_json(split / "manifest.json", h264)
    with pytest.raises(PipelineError) as e:
        ViewLoader(split, "video_clips", batch_size=2, device="cpu")
    msg = str(e.value)
    assert "3 h264" in msg and "clvr shard videos SRC OUT --transcode vp9" in msg and "--device gpu" in msg
