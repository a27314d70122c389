"""Checking and normalising one image for a shard.

Kept byte-for-byte when it is already an 8-bit RGB JPEG, PNG or WebP within the size limits;
otherwise converted (and the conversion logged):

* CMYK, 16-bit, 32-bit int/float, palette, 1-bit and grayscale -> 8-bit RGB;
* alpha (RGBA, LA, palette with transparency) -> composited over white;
* other formats (BMP, TIFF, GIF, ...) -> PNG (lossless); animated images -> first frame;
* a side over ``--max-side`` -> resized, aspect kept (JPEG stays JPEG at ``--jpeg-quality``).

Rejected (and logged): zero-byte files, files that are not images, images over
``--max-pixels``, and -- with verification on, the default -- corrupt or truncated images.
Verification decodes the whole entropy-coded stream. A colour JPEG that is kept as it is goes
through libjpeg-turbo directly (``simplejpeg``): its header is read without PIL, and it is
decoded to grayscale at 1/8 scale (DCT scaling), which still entropy-decodes every coefficient
of every colour component, at a fraction of the cost of a full decode; libjpeg's warnings
(e.g. "premature end of JPEG file") count as errors. Everything else goes through PIL.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageFile, UnidentifiedImageError

from .errors import Reject

try:  # libjpeg-turbo without PIL's overhead; optional, PIL does the same job more slowly
    import simplejpeg
except ImportError:  # pragma: no cover - a platform without simplejpeg's wheels
    simplejpeg = None

ImageFile.LOAD_TRUNCATED_IMAGES = False
Image.MAX_IMAGE_PIXELS = None  # we apply our own limit, before decoding

DEFAULT_MAX_PIXELS = 89_478_485  # PIL's decompression-bomb threshold
KEEP_FORMATS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp"}
BACKGROUND = (255, 255, 255)


@dataclass(frozen=True)
class ImageOptions:
    verify: bool = True
    max_side: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    jpeg_quality: int = 95


@dataclass
class PreparedImage:
    ext: str
    data: bytes
    width: int
    height: int
    source_format: str
    source_size: tuple[int, int]
    scale: tuple[float, float]        # output / source size along x and y (boxes scale by it)
    notes: list[str]
    pixels: Image.Image | None = None  # decoded RGB image, when it had to be decoded anyway


def _to_rgb(im: Image.Image, notes: list[str]) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        return im
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        notes.append("palette image converted to RGB")
        if im.mode == "RGB":
            return im
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        base = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        notes.append(f"{mode} alpha composited over white")
        return Image.alpha_composite(base, rgba).convert("RGB")
    if mode.startswith("I;16") or mode in ("I", "F"):
        import numpy as np  # only high-bit-depth images need it; keeps start-up light

        arr = np.asarray(im)
        if mode == "F":
            lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
            arr8 = np.zeros(arr.shape, np.uint8) if hi <= lo else \
                np.clip((arr - lo) / (hi - lo) * 255.0 + 0.5, 0, 255).astype(np.uint8)
            notes.append("32-bit float image rescaled to 8-bit RGB")
        else:
            arr = arr.astype(np.int64)
            top = 65535 if arr.max(initial=0) > 255 or mode.startswith("I;16") else 255
            arr8 = np.clip((arr * 255 + top // 2) // top, 0, 255).astype(np.uint8)
            notes.append(f"{'16' if top == 65535 else '32'}-bit image converted to 8-bit RGB")
        return Image.fromarray(arr8, "L").convert("RGB")
    if mode == "CMYK":
        notes.append("CMYK converted to RGB")
    elif mode in ("L", "1"):
        notes.append(f"{'grayscale' if mode == 'L' else '1-bit'} image converted to RGB")
    else:
        notes.append(f"{mode} image converted to RGB")
    return im.convert("RGB")


def _encode(im: Image.Image, fmt: str, quality: int) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpg":
        im.save(buf, "JPEG", quality=quality, subsampling=0 if quality >= 90 else 2, optimize=False)
    elif fmt == "webp":
        im.save(buf, "WEBP", quality=quality, method=4)
    else:
        im.save(buf, "PNG", compress_level=6)
    return buf.getvalue()


JPEG_SOI = b"\xff\xd8\xff"
KEEP_JPEG_COLOURSPACES = ("YCbCr", "RGB")


def _fast_jpeg(data: bytes, options: ImageOptions) -> PreparedImage | None:
    """The common case -- a colour JPEG kept byte for byte -- checked with libjpeg-turbo alone.
    Returns None when the image needs PIL (not a plain colour JPEG, to be resized, ...)."""
    try:
        h, w, colourspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None  # PIL says what is wrong with it
    if colourspace not in KEEP_JPEG_COLOURSPACES or w * h > options.max_pixels or w <= 0 or h <= 0:
        return None
    if options.max_side is not None and max(w, h) > options.max_side:
        return None
    if options.verify:
        try:
            simplejpeg.decode_jpeg(data, colorspace="GRAY", min_height=1, min_width=1, min_factor=8)
        except ValueError as e:
            raise Reject(f"corrupt or truncated image data: {e}") from None
    return PreparedImage("jpg", data, w, h, "JPEG", (w, h), (1.0, 1.0), [])


def prepare_image(data: bytes, options: ImageOptions, need_pixels: bool = False) -> PreparedImage:
    """Check and normalise one encoded image. Raises :class:`Reject` with the reason."""
    if len(data) == 0:
        raise Reject("empty file (0 bytes)")
    if simplejpeg is not None and not need_pixels and data[:3] == JPEG_SOI:
        fast = _fast_jpeg(data, options)
        if fast is not None:
            return fast
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            im = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise Reject("not an image (no known image format; wrong extension?)") from None
        except (OSError, ValueError, SyntaxError) as e:
            raise Reject(f"unreadable image header: {e}") from None
        w, h = im.size
        if w <= 0 or h <= 0:
            raise Reject(f"image has no pixels ({w}x{h})")
        if w * h > options.max_pixels:
            raise Reject(f"{w}x{h} = {w * h} pixels is over the limit of {options.max_pixels} "
                         "(--max-pixels)")
        notes: list[str] = []
        fmt = im.format or "?"
        frames = getattr(im, "n_frames", 1)
        resize = options.max_side is not None and max(w, h) > options.max_side
        keep = fmt in KEEP_FORMATS and im.mode == "RGB" and not resize and frames == 1
        try:
            if keep and not need_pixels:
                if options.verify:
                    if fmt in ("JPEG", "MPO"):
                        # Every coefficient of every component is still entropy-decoded (so
                        # truncation and corrupt data are caught); only the output is small.
                        im.draft("L", (max(1, w // 8), max(1, h // 8)))
                    im.load()
                return PreparedImage(KEEP_FORMATS[fmt], data, w, h, fmt, (w, h), (1.0, 1.0), notes)
            if frames > 1:
                notes.append(f"animated {fmt} ({frames} frames): first frame kept")
            im.load()
            rgb = _to_rgb(im, notes)
        except Reject:
            raise
        except (OSError, ValueError, SyntaxError, EOFError) as e:
            raise Reject(f"corrupt or truncated image data: {e}") from None
    scale = (1.0, 1.0)
    if resize:
        factor = options.max_side / max(w, h)
        nw, nh = max(1, round(w * factor)), max(1, round(h * factor))
        rgb = rgb.resize((nw, nh), Image.Resampling.LANCZOS)
        scale = (nw / w, nh / h)
        notes.append(f"resized {w}x{h} -> {nw}x{nh} (--max-side {options.max_side})")
    if keep and not resize:
        out_ext, out = KEEP_FORMATS[fmt], data
    else:
        out_ext = KEEP_FORMATS.get(fmt, "png")
        if fmt not in KEEP_FORMATS:
            notes.append(f"{fmt} re-encoded as PNG")
        out = _encode(rgb, out_ext, options.jpeg_quality)
    return PreparedImage(out_ext, out, rgb.width, rgb.height, fmt, (w, h), scale, notes, rgb)
