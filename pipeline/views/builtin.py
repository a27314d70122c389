"""Importing this module registers the view generators that ship with clvr."""

from . import multi_crop, two_view  # noqa: F401
