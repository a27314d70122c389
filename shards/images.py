"""Checking and normalising one image for a shard.

Kept byte-for-byte when it is already an 8-bit RGB JPEG, PNG or WebP within the size limits;
otherwise converted (and the conversion logged):

* CMYK, 16-bit, 32-bit int/float, palette, 1-bit and grayscale -> 8-bit RGB;
* alpha (RGBA, LA, palette with transparency) -> composited over white;
* other formats (BMP, TIFF, GIF, ...) -> PNG (lossless); animated images -> first frame;
* a side over ``--max-side`` -> resized, aspect kept (JPEG stays JPEG at ``--jpeg-quality``);
* an EXIF orientation other than upright -> applied (the image rotated/flipped upright and
  re-encoded), or with ``orientation="reset"`` (COCO, whose boxes refer to the stored pixel
  grid) the tag set to 1 in place. DALI's decoder applies the tag and PIL does not, so a shard
  never keeps one: every reader then sees the same pixels.

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
from .exif import ORIENTATION_TAG, jpeg_orientation, reset_jpeg_orientation

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
    orientation: str = "apply"  # EXIF orientation: "apply" it, or "reset" the tag to upright


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


# EXIF orientation -> the transpose that turns the stored pixels upright
UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
           4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270,
           7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


def _check_integrity(data: bytes, fmt: str) -> bool:
    """Checks that PIL's decoding skips, whichever path the image then takes: libjpeg's warnings
    about corrupt data are errors, and a PNG's chunk checksums and end chunk must be right
    (libpng, which DALI uses, refuses both). Returns whether the JPEG check ran."""
    if fmt in ("JPEG", "MPO") and simplejpeg is not None:
        try:
            colourspace = simplejpeg.decode_jpeg_header(data)[2]
        except ValueError as e:
            raise Reject(f"corrupt or truncated image data: {e}") from None
        _entropy_decode_jpeg(data, colourspace)
        return True
    if fmt == "PNG":
        Image.open(io.BytesIO(data)).verify()
    return False


def _entropy_decode_jpeg(data: bytes, colourspace: str) -> None:
    """Entropy-decode every coefficient at 1/8 scale with libjpeg-turbo; its warnings about
    corrupt data are errors (PIL ignores them)."""
    try:
        simplejpeg.decode_jpeg(data, colorspace="CMYK" if colourspace in ("CMYK", "YCCK") else "GRAY",
                               min_height=1, min_width=1, min_factor=8)
    except ValueError as e:
        raise Reject(f"corrupt or truncated image data: {e}") from None


def _png_bit_depth(data: bytes) -> int:
    """Bit depth from a PNG's IHDR chunk (byte 24: signature 8, length 4, type 4, size 8)."""
    return data[24] if len(data) > 24 and data[12:16] == b"IHDR" else 8


def _orientation(im: Image.Image, data: bytes, fmt: str) -> int:
    if fmt in ("JPEG", "MPO"):
        return jpeg_orientation(data)[0]
    try:
        value = im.getexif().get(ORIENTATION_TAG, 1)
    except Exception:  # a broken EXIF block is no reason to lose the image
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


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
    notes = []
    orientation, _ = jpeg_orientation(data)
    if orientation != 1:
        if options.orientation == "apply":
            return None
        data = reset_jpeg_orientation(data)
        notes.append(f"EXIF orientation {orientation} reset to 1 (pixels kept as stored)")
    if options.verify:
        _entropy_decode_jpeg(data, colourspace)
    return PreparedImage("jpg", data, w, h, "JPEG", (w, h), (1.0, 1.0), notes)


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
        orientation = _orientation(im, data, fmt)
        rotate = orientation != 1 and options.orientation == "apply"
        keep = fmt in KEEP_FORMATS and im.mode == "RGB" and not resize and frames == 1 and not rotate
        if keep and fmt == "PNG" and _png_bit_depth(data) == 16:
            keep = False  # PIL opens 48-bit PNGs as "RGB"; the stored file must be 8-bit
            notes.append("16-bit RGB converted to 8-bit")
        if orientation != 1 and not rotate:
            if keep and fmt in ("JPEG", "MPO"):
                data = reset_jpeg_orientation(data)
                notes.append(f"EXIF orientation {orientation} reset to 1 (pixels kept as stored)")
            else:
                keep = False  # re-encoding drops the tag
                notes.append(f"EXIF orientation {orientation} dropped (pixels kept as stored)")
        try:
            strict_jpeg = False
            if options.verify:
                strict_jpeg = _check_integrity(data, fmt)
            if keep and not need_pixels:
                if options.verify and not strict_jpeg:
                    if fmt in ("JPEG", "MPO"):
                        # Every coefficient of every component is still entropy-decoded (so
                        # truncation is caught); only the output is small.
                        im.draft("L", (max(1, w // 8), max(1, h // 8)))
                    im.load()
                return PreparedImage(KEEP_FORMATS[fmt], data, w, h, fmt, (w, h), (1.0, 1.0), notes)
            if frames > 1:
                notes.append(f"animated {fmt} ({frames} frames): first frame kept")
            im.load()
            rgb = _to_rgb(im, notes)
            if rotate:
                rgb = rgb.transpose(UPRIGHT[orientation])
                notes.append(f"EXIF orientation {orientation} applied (image turned upright)")
        except Reject:
            raise
        except (OSError, ValueError, SyntaxError, EOFError) as e:
            raise Reject(f"corrupt or truncated image data: {e}") from None
    scale = (1.0, 1.0)
    if resize:
        sw, sh = rgb.size
        factor = options.max_side / max(sw, sh)
        nw, nh = max(1, round(sw * factor)), max(1, round(sh * factor))
        rgb = rgb.resize((nw, nh), Image.Resampling.LANCZOS)
        scale = (nw / sw, nh / sh)
        notes.append(f"resized {sw}x{sh} -> {nw}x{nh} (--max-side {options.max_side})")
    if keep and not resize:
        out_ext, out = KEEP_FORMATS[fmt], data
    else:
        out_ext = KEEP_FORMATS.get(fmt, "png")
        if fmt not in KEEP_FORMATS:
            notes.append(f"{fmt} re-encoded as PNG")
        out = _encode(rgb, out_ext, options.jpeg_quality)
    return PreparedImage(out_ext, out, rgb.width, rgb.height, fmt, (w, h), scale, notes, rgb)
