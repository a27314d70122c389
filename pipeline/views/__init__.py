"""View generators: what a contrastive method compares, made from each sample.

Every generator is registered by name (``two_view``, ``multi_crop``, ``cpc_grid``, ``jigsaw``,
``object_crops``, ``video_clips``, ``image_text``) and produces a
:class:`~clvr.pipeline.batch.ViewBatch`. Plug in your own with :func:`register_view` or the
``clvr.views`` entry-point group (see :mod:`.registry`).
"""

from .base import ViewGenerator
from .registry import available, get_view, register_view

__all__ = ["ViewGenerator", "available", "get_view", "register_view"]
