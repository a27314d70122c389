"""Importing this module registers the view generators that ship with clvr."""

from . import cpc_grid, image_text, jigsaw, multi_crop, object_crops, two_view, video_clips  # noqa: F401
