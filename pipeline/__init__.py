"""``clvr.pipeline``: DALI (GPU when present, CPU otherwise) and kornia views over clvr shards.

May import :mod:`clvr.shards`; never :mod:`clvr.methods`.
"""
