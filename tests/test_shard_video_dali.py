"""Video shards as DALI reads them, and videos that have a container but no frame."""

from __future__ import annotations

import io
import json

import av
import numpy as np

from clvr.shards.manifest import shard_paths


def test_dali_cpu_decodes_the_digits_video_shards(tmp_path, clvr):
    from nvidia.dali import fn, pipeline_def, types

    out = tmp_path / "video"
    assert clvr("shard", "demo", "digits-video", out, "--limit", "10", "--no-progress", "--workers", "1").code == 0
    tars, idxs = shard_paths(out / "train")

    @pipeline_def(batch_size=2, num_threads=1, device_id=None)
    def pipe():
        video, index, meta = fn.readers.webdataset(
            paths=[str(t) for t in tars], index_paths=[str(i) for i in idxs], ext=["webm", "index.i64", "json"],
            dtypes=[types.UINT8, types.INT64, types.UINT8], random_shuffle=False)
        return fn.decoders.video(video, device="cpu"), index, meta

    p = pipe()
    p.build()
    frames, index, meta = p.run()
    for i in range(2):
        clip = np.array(frames.at(i))
        info = json.loads(bytes(np.array(meta.at(i))))
        assert clip.shape == (info["frames"], 64, 64, 3) == (16, 64, 64, 3)
        assert int(np.array(index.at(i))[0]) == i == info["index"]
        # the digit moves: the first and last frames differ, and the ink colour is in the frame
        assert np.abs(clip[0].astype(int) - clip[-1].astype(int)).mean() > 1.0


def _no_frame_avi() -> bytes:
    """An AVI with a valid header and an MJPEG video stream, but not one frame."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="avi") as c:
        s = c.add_stream("mjpeg", rate=8)
        s.width = s.height = 32
        s.pix_fmt = "yuvj420p"
        c.start_encoding()
    return buf.getvalue()


def test_video_without_frames_is_rejected(tmp_path, clvr):
    src = tmp_path / "src"
    src.mkdir()
    data = _no_frame_avi()
    with av.open(io.BytesIO(data)) as c:  # the container itself is readable and has the stream
        assert len(c.streams.video) == 1
    (src / "empty.avi").write_bytes(data)
    out = tmp_path / "out"
    r = clvr("shard", "videos", src, out, "--no-progress", "--workers", "1")
    assert r.code == 0, r.err
    (line,) = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    assert line["src"] == "empty.avi" and line["action"] == "rejected"
    assert "no frames" in line["reason"]
    assert json.loads((out / "manifest.json").read_text())["totals"]["samples"] == 0
