"""``clvr shard videos``: video files -> shards, probed with PyAV, optionally transcoded.

Each sample keeps the video as ``.webm``/``.mkv``/``.mp4``/``.avi`` and a ``.json`` probe:
frames (counted by decoding), fps, duration, codec, width, height. DALI's CPU video decoder
accepts only VP8, VP9 and MJPEG; H.264, HEVC, AV1 and MPEG-4 decode only on a GPU.
``--transcode vp9`` (WebM) or ``--transcode mjpeg`` (Matroska) makes any video CPU-decodable.
Videos with no video stream, no decodable frame, or an undecodable stream are rejected.
"""

from __future__ import annotations

import io
import os
import shutil
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from .errors import Reject
from .fileio import read_input
from .job import Item, Prepared

VIDEO_SUFFIXES = {".webm", ".mkv", ".mp4", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".ogv", ".flv", ".wmv"}
KEEP_CONTAINERS = {".webm": "webm", ".mkv": "mkv", ".mp4": "mp4", ".avi": "avi"}
CPU_DECODABLE = {"vp8", "vp9", "mjpeg"}
TRANSCODES = ("none", "vp9", "mjpeg")


def gpu_only_codecs(stats: dict) -> dict[str, int]:
    """From a manifest's ``stats`` (``codec:NAME`` counts): the codecs DALI's CPU video decoder
    cannot read, with their counts."""
    return {k[6:]: v for k, v in stats.items() if k.startswith("codec:") and k[6:] not in CPU_DECODABLE}


@dataclass(frozen=True)
class VideoOptions:
    transcode: str = "none"
    verify: bool = True
    max_side: int | None = None
    fps: float | None = None      # frame rate of transcoded output (default: the source's)
    crf: int = 32                 # VP9 quality (lower is better); MJPEG uses qscale 3


def gpu_present() -> bool:
    """Whether this machine has an NVIDIA GPU, checked without importing torch or DALI."""
    return os.path.exists("/dev/nvidiactl") or shutil.which("nvidia-smi") is not None


def _open(data: bytes):
    import av

    try:
        container = av.open(io.BytesIO(data))
    except (av.error.FFmpegError, ValueError, OSError) as e:
        raise Reject(f"not a readable video container: {e}") from None
    if not container.streams.video:
        container.close()
        raise Reject("no video stream")
    return container


def probe(data: bytes, decode: bool = True) -> dict:
    """Facts about a video: codec, size, fps, duration, frames (decoded and counted)."""
    import av

    container = _open(data)
    try:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        info = {"codec": stream.codec_context.name, "width": stream.codec_context.width,
                "height": stream.codec_context.height,
                "fps": float(rate) if rate else None}
        frames = 0
        try:
            if decode:
                for _ in container.decode(stream):
                    frames += 1
            else:
                frames = sum(1 for p in container.demux(stream) if p.size)
        except (av.error.FFmpegError, ValueError) as e:
            raise Reject(f"undecodable video stream ({info['codec']}) after {frames} frames: {e}") from None
        if frames == 0:
            raise Reject(f"video has no frames ({info['codec']})")
        info["frames"] = frames
        if container.duration:
            info["duration"] = round(container.duration / 1e6, 6)
        elif info["fps"]:
            info["duration"] = round(frames / info["fps"], 6)
        else:
            info["duration"] = None
        return info
    finally:
        container.close()


def transcode(data: bytes, codec: str, fps: float | None = None, max_side: int | None = None,
              crf: int = 32) -> tuple[bytes, str]:
    """Re-encode to VP9 in WebM or MJPEG in Matroska; returns (bytes, extension)."""
    import av

    src = _open(data)
    try:
        stream = src.streams.video[0]
        rate = Fraction(fps).limit_denominator(1001) if fps else (stream.average_rate or stream.guessed_rate
                                                                    or Fraction(25))
        w, h = stream.codec_context.width, stream.codec_context.height
        if max_side and max(w, h) > max_side:
            f = max_side / max(w, h)
            w, h = round(w * f), round(h * f)
        w, h = max(2, w - w % 2), max(2, h - h % 2)  # 4:2:0 needs even sides
        out = io.BytesIO()
        fmt, ext = ("webm", "webm") if codec == "vp9" else ("matroska", "mkv")
        with av.open(out, "w", format=fmt, options={"fflags": "+bitexact"}) as dst:
            if codec == "vp9":
                vs = dst.add_stream("libvpx-vp9", rate=rate)
                vs.pix_fmt = "yuv420p"
                vs.options = {"crf": str(crf), "b": "0", "deadline": "good", "cpu-used": "4",
                              "threads": "1", "row-mt": "0"}
            else:
                vs = dst.add_stream("mjpeg", rate=rate)
                vs.pix_fmt = "yuvj420p"
                vs.options = {"qscale": "3"}
            vs.width, vs.height = w, h
            n = 0
            try:
                for frame in src.decode(stream):
                    img = frame.reformat(width=w, height=h, format=vs.pix_fmt)
                    img.pts = n
                    img.time_base = Fraction(1, 1) / rate
                    n += 1
                    for pkt in vs.encode(img):
                        dst.mux(pkt)
            except (av.error.FFmpegError, ValueError) as e:
                raise Reject(f"undecodable video stream while transcoding after {n} frames: {e}") from None
            if n == 0:
                raise Reject("video has no frames")
            for pkt in vs.encode():
                dst.mux(pkt)
        return out.getvalue(), ext
    finally:
        src.close()


class PrepareVideoFile:
    chunk_size = 2  # videos are large: few in flight keeps memory flat

    def __init__(self, root, options: VideoOptions):
        self.root = str(root)
        self.options = options

    def input_path(self, item: Item) -> str:
        return os.path.join(self.root, item.src)

    def __call__(self, item: Item) -> Prepared:
        data = read_input(self.input_path(item))
        if not data:
            raise Reject("empty file (0 bytes)")
        return prepare_video_bytes(data, Path(item.src).suffix.lower(), self.options)


def prepare_video_bytes(data: bytes, suffix: str, options: VideoOptions) -> Prepared:
    notes = []
    info = probe(data, decode=options.verify)
    if options.transcode != "none" and not (
            info["codec"] == options.transcode and suffix in KEEP_CONTAINERS and not options.max_side
            and not options.fps):
        src_codec = info["codec"]
        data, ext = transcode(data, options.transcode, fps=options.fps, max_side=options.max_side,
                              crf=options.crf)
        info = probe(data, decode=True)
        info["transcoded_from"] = src_codec
        notes.append(("sample", "converted", f"transcoded {src_codec} -> {options.transcode}"))
    else:
        ext = KEEP_CONTAINERS.get(suffix)
        if ext is None:
            raise Reject(f"container {suffix} is not one of {', '.join(KEEP_CONTAINERS)}; "
                         "use --transcode vp9 to convert it")
    info["cpu_decodable"] = info["codec"] in CPU_DECODABLE
    info["container"] = ext
    return Prepared({ext: data}, info, notes, stats=[f"codec:{info['codec']}"])
