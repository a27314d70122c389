"""Imports every method that ships with clvr, so that each registers its name."""

from . import byol, clip, cpc, instdisc, moco, object_contrast, pirl, simclr, video_contrast  # noqa: F401
