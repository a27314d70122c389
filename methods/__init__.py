"""``clvr.methods``: contrastive objectives, methods, training and evaluation.

May import :mod:`clvr.pipeline` and :mod:`clvr.shards`.
"""
