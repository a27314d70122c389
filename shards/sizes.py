"""How large a shard set's images are: the ``image_side:N`` counts of a manifest's ``stats``.

Each stored image is counted in the bucket of its longest side: ``image_side:16`` holds the
images of at most 16 px, ``image_side:32`` those of 17 to 32 px, and so on in powers of two up
to ``image_side:1024``; ``image_side:>1024`` holds the larger ones. ``clvr shard`` and
``clvr shard index`` write them, and ``clvr train`` reads them to choose settings that fit the
data (:func:`summary`). For a manifest without them (written before they existed) the first
images of the set are measured from their headers (:func:`measure`).
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

PREFIX = "image_side:"
BUCKETS = (16, 32, 64, 128, 256, 512, 1024)
#: images whose longest side is at most this are small: the small-image settings fit them
SMALL_SIDE = 64
#: the share of images on the minority side of SMALL_SIDE above which a set counts as mixed
MIXED_SHARE = 0.1


def bucket(width: int, height: int) -> str:
    """The ``stats`` key of an image of ``width`` x ``height`` px."""
    side = max(int(width), int(height))
    for b in BUCKETS:
        if side <= b:
            return f"{PREFIX}{b}"
    return f"{PREFIX}>{BUCKETS[-1]}"


def _upper(key: str) -> int:
    text = key[len(PREFIX):]
    return BUCKETS[-1] * 2 if text.startswith(">") else int(text)


@dataclass(frozen=True)
class SizeSummary:
    """The image sizes of a shard set, from ``stats`` (or measured)."""
    counts: dict            # bucket upper bound (px) -> images; > 1024 is filed under 2048
    source: str             # "manifest stats" or "measured on N images"

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def share_at_most(self, side: int) -> float:
        return sum(n for b, n in self.counts.items() if b <= side) / max(self.total, 1)

    @property
    def median_side(self) -> int:
        """The bucket bound (px) that holds the median image."""
        seen = 0
        for b in sorted(self.counts):
            seen += self.counts[b]
            if 2 * seen >= self.total:
                return b
        return 0

    @property
    def small(self) -> bool:
        return self.total > 0 and self.share_at_most(SMALL_SIDE) >= 1 - MIXED_SHARE

    @property
    def mixed(self) -> bool:
        share = self.share_at_most(SMALL_SIDE)
        return self.total > 0 and MIXED_SHARE < share < 1 - MIXED_SHARE

    def describe(self) -> str:
        parts = []
        for b in sorted(self.counts):
            label = f"> {BUCKETS[-1]}" if b > BUCKETS[-1] else f"<= {b}"
            parts.append(f"{self.counts[b]:,} {label} px")
        return f"longest sides: {', '.join(parts) or 'no images'} ({self.source})"


def from_stats(stats: dict | None) -> SizeSummary | None:
    counts = {_upper(k): int(v) for k, v in (stats or {}).items() if k.startswith(PREFIX)}
    return SizeSummary(counts, "manifest stats") if counts else None


def measure(shards: list[tuple[str, str]], limit: int = 64) -> SizeSummary | None:
    """Read the headers of up to ``limit`` images of ``(tar, index file)`` shards (PIL reads
    the size without decoding); None when no image is found or PIL is missing."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency of clvr shard
        return None
    from .dali_index import parse_index
    from .format import READ_IMAGE_EXTS
    counts: dict = {}
    seen = 0
    for tar, idx in shards:
        try:
            entries = parse_index(Path(idx).read_text(), idx)
            with open(tar, "rb") as f:
                for comps in entries:
                    comp = next((c for c in comps if c.ext.lower() in READ_IMAGE_EXTS), None)
                    if comp is None:
                        continue
                    f.seek(comp.offset)
                    with Image.open(io.BytesIO(f.read(comp.size))) as im:
                        b = _upper(bucket(*im.size))
                    counts[b] = counts.get(b, 0) + 1
                    seen += 1
                    if seen >= limit:
                        break
        except (OSError, ValueError, tarfile.TarError):
            continue
        if seen >= limit:
            break
    return SizeSummary(counts, f"measured on {seen} images") if seen else None


def summary(manifest: dict, directory: Path | None = None) -> SizeSummary | None:
    """The manifest's ``image_side`` counts, else a measurement of the set's first images."""
    found = from_stats(manifest.get("stats"))
    if found is not None or directory is None:
        return found
    tar_dir = Path(directory) / manifest.get("tar_dir", ".")
    shards = [(str(tar_dir / s["name"]), str(Path(directory) / s["index"]))
              for s in manifest.get("shards") or [] if isinstance(s, dict) and "name" in s and "index" in s]
    return measure(shards)
