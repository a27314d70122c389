"""Augmentation recipes as data: named presets that YAML (or a dict) can override, strictly.

A :class:`Recipe` describes how one view is made from an image: each augmentation of SimCLR's
study is a small dataclass with its probability ``p`` and its ranges. The order in which they are
applied is fixed (see :data:`ORDER`). A recipe *set* is one recipe per view: symmetric methods
have one recipe for every view, asymmetric ones (BYOL) one per view.

Presets (``PRESETS``) reproduce the papers' settings. Override them from YAML::

    base: simclr             # start from a preset (default: simclr)
    size: 96
    blur: {p: 0.0}
    views:                   # per-view overrides, for asymmetric recipes
      - {blur: {p: 1.0}}
      - {blur: {p: 0.1}, solarize: {p: 0.2}}

An unknown key is an error that lists the valid keys and the nearest match; nothing is ignored.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import PipelineError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Crop:
    """Random resized crop: area fraction ``scale`` and aspect ratio ``ratio`` (w/h, log-uniform).

    With ``p`` < 1 the other samples are resized whole (no crop). ``antialias`` filters when
    shrinking, as PIL (and so torchvision on PIL images) always does.

    ``center`` makes the crop deterministic. 0 (the default) is the random resized crop above.
    A value in (0, 1] is a centre square crop whose side is ``center`` x the image's shorter side,
    resized to the view's size: 0.875 is the ImageNet evaluation view (resize the shorter side to
    256, centre crop 224), 1.0 the largest centred square. The side is rounded half up to whole
    pixels and the box starts at ``floor((H - side) / 2)``, ``floor((W - side) / 2)``. When
    ``center`` > 0, ``p``, ``scale`` and ``ratio`` are not used. (A view that is not square gets
    the centred box of its own aspect that is ``center`` x the largest such box in the image.)
    """
    p: float = 1.0
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    antialias: bool = True
    center: float = 0.0


@dataclass
class Flip:
    """Horizontal flip."""
    p: float = 0.5


@dataclass
class Rotate:
    """Rotation by 90, 180 or 270 degrees (chosen uniformly)."""
    p: float = 0.0


@dataclass
class ColorJitter:
    """Brightness, contrast, saturation in [max(0, 1-x), 1+x]; hue shift in [-hue, hue] turns."""
    p: float = 0.8
    brightness: float = 0.8
    contrast: float = 0.8
    saturation: float = 0.8
    hue: float = 0.2


@dataclass
class Grayscale:
    """Colour drop: ITU-R 601 luma copied to the three channels."""
    p: float = 0.2


@dataclass
class ChannelDrop:
    """Drop two of the three colour channels (CPC v2): they become the normalisation mean."""
    p: float = 0.0


@dataclass
class Blur:
    """Gaussian blur, sigma uniform in ``sigma`` px, kernel ``kernel`` x the view's side (odd)."""
    p: float = 0.5
    sigma: tuple[float, float] = (0.1, 2.0)
    kernel: float = 0.1

    def window(self, side: int) -> int:
        """The kernel in pixels for a view of ``side`` px: ``kernel`` x side, made odd (>= 3)."""
        k = max(3, int(round(side * self.kernel)))
        return k if k % 2 else k + 1


@dataclass
class Solarize:
    """Invert the pixels at or above ``threshold`` (0-255)."""
    p: float = 0.0
    threshold: int = 128


@dataclass
class Sobel:
    """Sobel gradient magnitude of the luma, on all three channels."""
    p: float = 0.0


@dataclass
class Noise:
    """Additive Gaussian noise, standard deviation uniform in ``std`` (0-255 scale)."""
    p: float = 0.0
    std: tuple[float, float] = (0.0, 25.5)


@dataclass
class Cutout:
    """Erase one square of side ``size`` x the view's side (uniform) at a uniform position."""
    p: float = 0.0
    size: tuple[float, float] = (0.1, 0.5)
    fill: int = 0


@dataclass
class Normalize:
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


# The order in which a view is built. Flip is folded into the final normalisation (it commutes
# with every photometric op), which saves one pass over the pixels.
ORDER = ("crop", "flip", "rotate", "jitter", "grayscale", "channel_drop", "blur", "solarize",
         "sobel", "noise", "cutout", "normalize")


@dataclass
class Recipe:
    """How one view is made. ``size`` is the output side in pixels."""
    size: int = 224
    crop: Crop = field(default_factory=Crop)
    flip: Flip = field(default_factory=Flip)
    rotate: Rotate = field(default_factory=Rotate)
    jitter: ColorJitter = field(default_factory=ColorJitter)
    grayscale: Grayscale = field(default_factory=Grayscale)
    channel_drop: ChannelDrop = field(default_factory=ChannelDrop)
    blur: Blur = field(default_factory=Blur)
    solarize: Solarize = field(default_factory=Solarize)
    sobel: Sobel = field(default_factory=Sobel)
    noise: Noise = field(default_factory=Noise)
    cutout: Cutout = field(default_factory=Cutout)
    normalize: Normalize = field(default_factory=Normalize)

    def replace(self, **changes) -> "Recipe":
        return apply_overrides(self, changes, where="recipe")

    def active(self) -> list[str]:
        """Names of the augmentations that can fire (p > 0)."""
        return [n for n in ORDER if n != "normalize" and getattr(self, n).p > 0]


def _simclr(s: float = 1.0, blur: bool = True, size: int = 224) -> Recipe:
    return Recipe(size=size, crop=Crop(scale=(0.08, 1.0)),
                  jitter=ColorJitter(p=0.8, brightness=0.8 * s, contrast=0.8 * s,
                                     saturation=0.8 * s, hue=0.2 * s),
                  grayscale=Grayscale(0.2), blur=Blur(p=0.5 if blur else 0.0))


def _instdisc() -> Recipe:
    # InstDisc / MoCo v1: crop 0.2-1, grayscale 0.2, jitter 0.4 (always), flip; no blur.
    return Recipe(crop=Crop(scale=(0.2, 1.0)),
                  jitter=ColorJitter(p=1.0, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.4),
                  grayscale=Grayscale(0.2), blur=Blur(p=0.0))


def _mocov2() -> Recipe:
    return Recipe(crop=Crop(scale=(0.2, 1.0)),
                  jitter=ColorJitter(p=0.8, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1),
                  grayscale=Grayscale(0.2), blur=Blur(p=0.5))


def _byol() -> list[Recipe]:
    base = Recipe(crop=Crop(scale=(0.08, 1.0)),
                  jitter=ColorJitter(p=0.8, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1),
                  grayscale=Grayscale(0.2))
    return [base.replace(blur={"p": 1.0}, solarize={"p": 0.0}),
            base.replace(blur={"p": 0.1}, solarize={"p": 0.2})]


def _pirl() -> Recipe:
    # PIRL's image branch: the standard SimCLR-style crop and colour distortion, no blur.
    return Recipe(crop=Crop(scale=(0.08, 1.0)),
                  jitter=ColorJitter(p=0.8, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1),
                  grayscale=Grayscale(0.2), blur=Blur(p=0.0))


def _cpc_v1() -> Recipe:
    # CPC v1: a random 256-px square crop of the image resized to 300 px (area (256/300)^2);
    # no flip and no colour augmentation.
    side = (256 / 300) ** 2
    return Recipe(size=256, crop=Crop(scale=(side, side), ratio=(1.0, 1.0)), flip=Flip(0.0),
                  jitter=ColorJitter(p=0.0), grayscale=Grayscale(0.0), blur=Blur(p=0.0))


def _cpc_v2() -> Recipe:
    # Patch-level: each 64-px patch is flipped and keeps one of its three colour channels.
    return Recipe(size=64, crop=Crop(p=0.0), flip=Flip(0.5), jitter=ColorJitter(p=0.0),
                  grayscale=Grayscale(0.0), blur=Blur(p=0.0), channel_drop=ChannelDrop(p=1.0))


def _none() -> Recipe:
    """No augmentation: resize whole, normalise (the deterministic eval view is in clvr eval)."""
    return Recipe(crop=Crop(p=0.0), flip=Flip(0.0), jitter=ColorJitter(p=0.0),
                  grayscale=Grayscale(0.0), blur=Blur(p=0.0))


def _eval() -> Recipe:
    """The standard ImageNet evaluation view: no augmentation, the centre square of side 0.875 x
    the shorter side (resize to 256, centre crop 224), resized to ``size``, normalised."""
    return Recipe(crop=Crop(center=0.875), flip=Flip(0.0), jitter=ColorJitter(p=0.0),
                  grayscale=Grayscale(0.0), blur=Blur(p=0.0))


PRESETS = {
    "simclr": lambda: [_simclr()],
    "simclr-cifar": lambda: [_simclr(s=0.5, blur=False, size=32)],
    "instdisc": lambda: [_instdisc()],
    "mocov1": lambda: [_instdisc()],
    "mocov2": lambda: [_mocov2()],
    "byol": _byol,
    "pirl": lambda: [_pirl()],
    "cpc-v1": lambda: [_cpc_v1()],
    "cpc-v2": lambda: [_cpc_v2()],
    "none": lambda: [_none()],
    "eval": lambda: [_eval()],
}


def preset(name: str) -> list[Recipe]:
    if name not in PRESETS:
        raise PipelineError(f"unknown recipe {name!r}; presets: {', '.join(PRESETS)}"
                            + _nearest(name, PRESETS))
    return PRESETS[name]()


def _nearest(key: str, valid) -> str:
    close = difflib.get_close_matches(str(key), list(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _convert(value, current, where: str, error=PipelineError):
    """Coerce a YAML value to the type of the field it replaces; say where it is wrong."""
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise error(f"{where}: expected true/false, got {value!r}")
        return value
    if isinstance(current, (int, float)):
        if isinstance(value, str):
            # YAML 1.1 reads 1e-6 (no dot) as a string; take it as the number it means
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise error(f"{where}: expected a number, got {value!r}")
        if isinstance(current, int) and not isinstance(current, bool) and not float(value).is_integer():
            raise error(f"{where}: expected an integer, got {value!r}")
        return type(current)(value)
    if isinstance(current, str):
        if not isinstance(value, str):
            raise error(f"{where}: expected a string, got {value!r}")
        return value
    if isinstance(current, tuple):
        if not isinstance(value, (list, tuple)) or len(value) != len(current):
            raise error(f"{where}: expected a list of {len(current)} numbers, got {value!r}")
        return tuple(_convert(v, c, f"{where}[{i}]", error) for i, (v, c) in enumerate(zip(value, current)))
    return value


def apply_overrides(obj, changes: dict, where: str, error=PipelineError):
    """A copy of dataclass ``obj`` with ``changes`` (nested dicts) applied; unknown keys raise
    ``error`` (the pipeline's own by default; the methods pass theirs)."""
    if not isinstance(changes, dict):
        raise error(f"{where}: expected a mapping, got {changes!r}")
    out = copy.deepcopy(obj)
    names = {f.name for f in dataclasses.fields(out)}
    for key, value in changes.items():
        if key not in names:
            raise error(f"{where}: unknown key {key!r}; valid keys: {', '.join(sorted(names))}"
                        + _nearest(key, names))
        current = getattr(out, key)
        if dataclasses.is_dataclass(current):
            if isinstance(value, (int, float)) and not isinstance(value, bool) and hasattr(current, "p"):
                value = {"p": value}          # shorthand: `blur: 0.5` sets the probability
            setattr(out, key, apply_overrides(current, value, f"{where}.{key}", error))
        else:
            setattr(out, key, _convert(value, current, f"{where}.{key}", error))
    _validate(out, where, error)
    return out


def _validate(obj, where: str, error=PipelineError) -> None:
    p = getattr(obj, "p", None)
    if p is not None and not 0.0 <= p <= 1.0:
        raise error(f"{where}.p = {p} is not a probability in [0, 1]")
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, tuple) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v) and v[0] > v[1]:
            raise error(f"{where}.{f.name} = {list(v)}: the low end is above the high end")
    if isinstance(obj, Recipe) and obj.size < 1:
        raise error(f"{where}.size = {obj.size} must be at least 1")
    if isinstance(obj, Crop) and not 0.0 <= obj.center <= 1.0:
        raise error(f"{where}.center = {obj.center} is not in [0, 1] (0: random resized crop; "
                    "(0, 1]: the centre square of that fraction of the shorter side)")


def check(recipe: Recipe, where: str = "recipe", error=PipelineError) -> None:
    """Check a recipe made in Python (not through overrides) as overrides are checked."""
    for f in dataclasses.fields(recipe):
        part = getattr(recipe, f.name)
        if dataclasses.is_dataclass(part):
            _validate(part, f"{where}.{f.name}", error)
    _validate(recipe, where, error)


def build(spec=None, views: int | None = None, **overrides) -> list[Recipe]:
    """The recipe set for ``views`` views from a preset name, a YAML file, a dict or Recipe(s).

    Returns one :class:`Recipe` per view when ``views`` is given (a one-recipe set is repeated;
    an asymmetric set must have exactly that many).
    """
    if spec is None:
        spec = "simclr"
    if isinstance(spec, Recipe):
        recipes = [spec]
        check(spec, "recipe")
    elif isinstance(spec, (list, tuple)) and all(isinstance(r, Recipe) for r in spec):
        recipes = list(spec)
        for i, r in enumerate(recipes):
            check(r, f"recipe[{i}]")
    elif isinstance(spec, (str, Path)) and (str(spec).endswith((".yaml", ".yml")) or Path(str(spec)).is_file()):
        recipes = _from_yaml(Path(spec))
    elif isinstance(spec, str):
        recipes = preset(spec)
    elif isinstance(spec, dict):
        recipes = _from_dict(spec, "recipe")
    else:
        raise PipelineError(f"recipe: expected a preset name, a YAML file, a dict or Recipe, got {spec!r}")
    if overrides:
        recipes = [apply_overrides(r, overrides, "recipe") for r in recipes]
    if views is not None:
        if len(recipes) == 1:
            recipes = [copy.deepcopy(recipes[0]) for _ in range(views)]
        elif len(recipes) != views:
            raise PipelineError(f"recipe has {len(recipes)} per-view recipes but the generator makes "
                                f"{views} views")
    return recipes


def _from_yaml(path: Path) -> list[Recipe]:
    import yaml
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise PipelineError(f"{path}: cannot read the recipe ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise PipelineError(f"{path}: not valid YAML ({e})") from None
    return _from_dict(data or {}, str(path))


def _from_dict(data: dict, where: str) -> list[Recipe]:
    if not isinstance(data, dict):
        raise PipelineError(f"{where}: expected a mapping, got {type(data).__name__}")
    data = dict(data)
    base = data.pop("base", "simclr")
    per_view = data.pop("views", None)
    recipes = [apply_overrides(r, data, where) for r in preset(base)]
    if per_view is not None:
        if not isinstance(per_view, list) or not per_view:
            raise PipelineError(f"{where}.views: expected a list of per-view overrides")
        if len(recipes) == 1:
            recipes = recipes * len(per_view)
        if len(recipes) != len(per_view):
            raise PipelineError(f"{where}.views: {len(per_view)} entries for a base with {len(recipes)} views")
        recipes = [apply_overrides(r, o or {}, f"{where}.views[{i}]")
                   for i, (r, o) in enumerate(zip(recipes, per_view))]
    return recipes


def to_dict(recipe: Recipe) -> dict:
    """Plain data (for manifests of runs and for previews' captions)."""
    return dataclasses.asdict(recipe)
