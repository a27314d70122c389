"""``ViewGenerator``: the base class of every view generator (built-in or plugged in).

A generator has two halves:

- ``graph(sample, ctx)`` builds DALI nodes once, while the pipeline is defined. It returns
  ``{"views": [node, ...], "extras": {name: node}}``: the views (each batched on the first axis)
  and any per-sample tensors the method needs (a jigsaw permutation id, an object mask...).
  On a CPU it may instead return ``{"views": [], "host": {name: node}}`` and make its views in
  ``host_views`` (the fused CPU kernel of :mod:`clvr.pipeline.fused_views` does this).
- ``on_device(batch, ctx)`` (optional) runs on the training device after the batch arrives as
  torch tensors: the place for torch/kornia work that DALI has no op for.

Options are a dataclass (``Options``) and are checked strictly: a typo is an error naming the
valid options and the nearest one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import PipelineError
from ..recipe import Recipe, apply_overrides


class ViewGenerator:
    name: str = ""
    needs: frozenset = frozenset({"image"})
    view_names: tuple = ()
    default_recipe: str = "simclr"

    @dataclass
    class Options:
        pass

    def __init__(self, **options):
        self.options = apply_overrides(self.Options(), options, f"views {self.name!r} option") \
            if options else self.Options()
        self.check()

    def check(self) -> None:
        """Validate options (raise PipelineError); called once at construction."""

    def names(self) -> tuple:
        """View names of this configuration (multi-crop's depend on its options)."""
        return tuple(self.view_names)

    @property
    def num_recipes(self) -> int:
        """How many per-view recipes the generator takes (one recipe is repeated)."""
        return max(1, len(self.names()))

    def graph(self, sample, ctx) -> dict:
        raise NotImplementedError

    def host_views(self, inputs: dict, ctx) -> tuple:
        """Make the views on the host from the graph's ``"host"`` outputs (a dict of lists of
        numpy arrays, one per sample); used by generators with a fused CPU path."""
        raise NotImplementedError(f"view generator {self.name!r} returned 'host' outputs but has no host_views")

    def on_device(self, batch, ctx):
        """Torch/kornia step on the device; the default applies the kornia photometric stage."""
        if ctx.photometric == "kornia":
            from .. import kornia_stage
            batch = kornia_stage.apply(batch, self.photometric_recipes(ctx), ctx.rng)
        return batch

    def photometric_recipes(self, ctx) -> dict[int, Recipe]:
        """For the kornia stage: view position -> the recipe whose photometric part it gets."""
        return {i: ctx.recipe(i) for i in range(len(self.names()))}

    def describe(self) -> str:
        opts = ", ".join(f"{f.name}={getattr(self.options, f.name)!r}" for f in dataclasses.fields(self.options))
        return f"{self.name}({opts})"


class FunctionView(ViewGenerator):
    """A generator made from a plain graph function (see :func:`register_view`)."""
    _fn = None
    _on_device = None

    @classmethod
    def make(cls, name, fn, needs=None, view_names=None, on_device=None):
        attrs = {"name": name, "_fn": staticmethod(fn), "needs": frozenset(needs or {"image"}),
                 "view_names": tuple(view_names or ()), "__doc__": fn.__doc__,
                 "_on_device": staticmethod(on_device) if on_device else None}
        return type(f"FunctionView[{name}]", (cls,), attrs)

    def __init__(self, **options):
        self.options = self.Options()
        self.kwargs = options

    def graph(self, sample, ctx) -> dict:
        out = self._fn(sample, ctx, **self.kwargs)
        if not isinstance(out, dict) or "views" not in out:
            raise PipelineError(f"view plug-in {self.name!r} must return a dict with 'views'")
        return out

    def names(self) -> tuple:
        return self.view_names

    def on_device(self, batch, ctx):
        if self._on_device is not None:
            return self._on_device(batch, ctx)
        return super().on_device(batch, ctx)
