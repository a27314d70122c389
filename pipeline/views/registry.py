"""The registry of view generators, and the plug-in API.

A generator is found by name: the built-in ones register themselves, and other packages plug in
without editing clvr, in either of two ways.

**Decorator** (in code that is imported before the loader is built)::

    from clvr.pipeline.views import ViewGenerator, register_view

    @register_view("grayscale_pair")
    class GrayscalePair(ViewGenerator):
        needs = {"image"}
        view_names = ("color", "gray")

        def graph(self, sample, ctx):
            color = ctx.view(sample.image, ctx.recipe(0))
            gray = ctx.view(sample.image, ctx.recipe(1).replace(grayscale={"p": 1.0}))
            return {"views": [color, gray]}

A plain function works too: ``register_view("name", needs={"image"})(fn)`` with
``fn(sample, ctx) -> {"views": [...], "extras": {...}}``; ``view_names`` and ``on_device`` are
then keyword arguments of ``register_view``.

**Entry point** (found when the name is first looked up), in the plug-in's ``pyproject.toml``::

    [project.entry-points."clvr.views"]
    grayscale_pair = "my_package.views:GrayscalePair"
"""

from __future__ import annotations

import difflib
from importlib.metadata import entry_points

from ..errors import PipelineError

ENTRY_POINT_GROUP = "clvr.views"
_REGISTRY: dict[str, type] = {}


def register_view(name: str, *, needs=None, view_names=None, on_device=None, replace: bool = False):
    """Register a :class:`ViewGenerator` subclass, or a graph function, under ``name``."""
    def wrap(obj):
        from .base import FunctionView, ViewGenerator
        if isinstance(obj, type) and issubclass(obj, ViewGenerator):
            cls = obj
        elif callable(obj):
            cls = FunctionView.make(name, obj, needs=needs, view_names=view_names, on_device=on_device)
        else:
            raise PipelineError(f"register_view({name!r}): expected a ViewGenerator class or a function")
        if name in _REGISTRY and _REGISTRY[name] is not cls and not replace:
            raise PipelineError(f"a view generator named {name!r} is already registered "
                                f"({_REGISTRY[name].__module__}.{_REGISTRY[name].__qualname__}); "
                                "pass replace=True to override it")
        cls.name = name
        _REGISTRY[name] = cls
        return obj
    return wrap


def _load_entry_point(name: str):
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            try:
                obj = ep.load()
            except Exception as e:  # a broken plug-in must say which one
                raise PipelineError(f"view plug-in {name!r} ({ep.value}) failed to load: {e}") from e
            if name not in _REGISTRY:
                register_view(name)(obj)
            return _REGISTRY[name]
    return None


def get_view(name: str) -> type:
    """The generator class registered (or plugged in) under ``name``."""
    _builtins()
    if name in _REGISTRY:
        return _REGISTRY[name]
    cls = _load_entry_point(name)
    if cls is None:
        names = available()
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise PipelineError(f"unknown view generator {name!r}{hint}; available: {', '.join(names)}")
    return cls


def available() -> list[str]:
    """Registered names plus those offered by installed plug-ins."""
    _builtins()
    names = set(_REGISTRY)
    names.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def _builtins() -> None:
    from . import builtin  # noqa: F401  (registers the generators that ship with clvr)
