"""The registry of methods, and how a user's own method plugs in without editing clvr.

A method is found by name (``clvr train --method simclr``). Built-in methods register themselves;
a user's method is found in any of three ways:

**A path**, ``--method my_package.my_module:MyMethod`` (the module must be importable).

**The decorator**, in code imported before the name is looked up::

    from clvr.methods import Method, MethodOutput, register_method

    @register_method("my_method")
    class MyMethod(Method):
        ...

**An entry point** in the plug-in's ``pyproject.toml``, found when the name is first looked up::

    [project.entry-points."clvr.methods"]
    my_method = "my_package.my_module:MyMethod"
"""

from __future__ import annotations

import difflib
import importlib
from importlib.metadata import entry_points

from .errors import MethodError

ENTRY_POINT_GROUP = "clvr.methods"
_REGISTRY: dict[str, type] = {}


def register_method(name: str, *, replace: bool = False):
    """Class decorator: register a :class:`~clvr.methods.method.Method` subclass as ``name``."""
    def wrap(cls):
        from .method import Method
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise MethodError(f"register_method({name!r}): {cls!r} is not a subclass of clvr.methods.Method")
        old = _REGISTRY.get(name)
        if old is not None and old is not cls and not replace:
            raise MethodError(f"a method named {name!r} is already registered ({old.__module__}.{old.__qualname__}); "
                              "pass replace=True to override it")
        cls.name = name
        _REGISTRY[name] = cls
        return cls
    return wrap


def _check(obj, where: str) -> type:
    from .method import Method
    if not (isinstance(obj, type) and issubclass(obj, Method)):
        raise MethodError(f"{where} is {obj!r}, not a subclass of clvr.methods.Method")
    return obj


def _from_path(spec: str) -> type:
    module, _, attr = spec.partition(":")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise MethodError(f"method {spec!r}: cannot import module {module!r} ({e})") from e
    try:
        obj = getattr(mod, attr)
    except AttributeError:
        raise MethodError(f"method {spec!r}: module {module!r} has no {attr!r}") from None
    cls = _check(obj, f"method {spec!r}")
    if not cls.name:
        cls.name = spec
    return cls


def _from_entry_point(name: str) -> type | None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            try:
                obj = ep.load()
            except Exception as e:     # a broken plug-in must say which one
                raise MethodError(f"method plug-in {name!r} ({ep.value}) failed to load: {e}") from e
            if name not in _REGISTRY:
                register_method(name)(_check(obj, f"method plug-in {name!r} ({ep.value})"))
            return _REGISTRY[name]
    return None


def get_method(spec) -> type:
    """The method class for a registered name, a plug-in's entry point, ``module:Class``, or a
    class (returned as is)."""
    if isinstance(spec, type):
        return _check(spec, "method")
    _builtins()
    if spec in _REGISTRY:
        return _REGISTRY[spec]
    if ":" in spec:
        return _from_path(spec)
    cls = _from_entry_point(spec)
    if cls is None:
        names = available()
        close = difflib.get_close_matches(spec, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise MethodError(f"unknown method {spec!r}{hint}; available: {', '.join(names)}; "
                          "or give module:Class")
    return cls


def available() -> list[str]:
    """Registered names plus those offered by installed plug-ins."""
    _builtins()
    names = set(_REGISTRY)
    names.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def _builtins() -> None:
    from . import builtin  # noqa: F401  (registers the methods that ship with clvr)
