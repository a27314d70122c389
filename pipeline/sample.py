"""What a view generator is given: one sample's DALI nodes, and the context of the graph.

A generator's ``graph(sample, ctx)`` runs once, while DALI builds the pipeline; every attribute
here is a DALI ``DataNode`` that stands for a whole batch, one value per sample.

``Sample`` decodes lazily: ``sample.image`` adds an image decoder to the graph the first time it
is used (``mixed`` = nvJPEG on the GPU when the loader runs on a GPU, the CPU otherwise), and
returns the same node after that. Grayscale, palette and alpha images arrive as 3-channel RGB.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from nvidia.dali import fn, types

from . import augment
from .recipe import Recipe


@dataclass
class Context:
    """How the graph is built: device, batch size, recipes and where the photometric ops run."""
    device: str = "cpu"                 # "cpu" or "gpu"
    batch_size: int = 1
    recipes: list[Recipe] = field(default_factory=list)
    photometric: str = "dali"           # "dali" (in the graph) or "kornia" (on the device tensors)
    seed: int = 0
    classes: list[str] | None = None
    categories: list | None = None
    rng: torch.Generator | None = None          # device-step randomness  } seeded per batch from
    np_rng: np.random.Generator | None = None   # host-stage randomness   } (seed, rank, epoch, step)
    fused: bool = False                 # image views by the fused CPU kernel (see fused_views)
    threads: int = 0                    # CPU threads of the loader (DALI's, and the kernel's)

    @property
    def decoder_device(self) -> str:
        return "mixed" if self.device == "gpu" else "cpu"

    def recipe(self, i: int) -> Recipe:
        """Recipe of view ``i`` (the last one repeats when there are more views than recipes)."""
        return self.recipes[min(i, len(self.recipes) - 1)]

    def view(self, image, recipe: Recipe, size=None, video: bool = False):
        """One augmented view of ``image`` by ``recipe``. Float CHW normalised, or uint8 CHW left
        for the kornia stage when ``photometric="kornia"``."""
        return augment.view(image, recipe, size=size, photometric_in_graph=self.photometric == "dali",
                            video=video)


class Sample:
    """DALI nodes of one sample (batched). ``None`` for components the generator did not ask for."""

    def __init__(self, raw: dict, ctx: Context):
        self._raw = raw
        self._ctx = ctx
        self._image = None
        self.index = raw["index"]
        self.label = raw.get("label")
        self.encoded_image = raw.get("image")
        self.encoded_video = raw.get("video")
        self.boxes = fn.reshape(raw["boxes"], shape=[-1, 4]) if "boxes" in raw else None
        self.box_classes = raw.get("box_classes")
        self.text = raw.get("text")

    @property
    def image(self):
        """The decoded image, HWC uint8 RGB (on the GPU when the loader decodes there)."""
        if self._image is None:
            if self.encoded_image is None:
                raise AttributeError("this generator did not declare needs={'image'}")
            self._image = fn.decoders.image(self.encoded_image, device=self._ctx.decoder_device,
                                            output_type=types.RGB)
        return self._image

    def image_shape(self):
        """(H, W, C) of each image without decoding it (CPU node, usable as an argument)."""
        return fn.peek_image_shape(self.encoded_image)

    def video(self, **decoder_args):
        """Decoded frames (F, H, W, 3) uint8; ``decoder_args`` go to ``fn.decoders.video``
        (``frames=``, ``start_frame=``, ``sequence_length=``, ``stride=``, ``pad_mode=``)."""
        if self.encoded_video is None:
            raise AttributeError("this generator did not declare needs={'video'}")
        return fn.decoders.video(self.encoded_video, device=self._ctx.decoder_device, **decoder_args)


def check_video_codecs(shards, device: str) -> None:
    """Fail fast when DALI cannot decode the set's videos on ``device``.

    DALI's CPU video decoder reads only VP8, VP9 and MJPEG; other codecs (H.264, HEVC, AV1...)
    decode only on the GPU. The manifest counts the codecs (``stats["codec:NAME"]``).
    """
    from clvr.shards.videos import gpu_only_codecs

    if device != "cpu" or not shards.manifest:
        return
    bad = gpu_only_codecs(shards.manifest.get("stats") or {})
    if bad:
        from .errors import PipelineError
        what = ", ".join(f"{n} {c}" for c, n in sorted(bad.items()))
        raise PipelineError(
            f"{shards.spec}: {what} video(s) use codecs DALI's CPU decoder cannot read (it reads VP8, "
            "VP9 and MJPEG), and this loader runs on the CPU. Re-shard them as VP9 with "
            "'clvr shard videos SRC OUT --transcode vp9', or decode on a GPU (--device gpu).")

