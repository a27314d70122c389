"""``clvr views ...``: list the view generators and recipes, preview what a model will see.

``build_parser`` only declares arguments; torch, DALI and the generators are imported in
``run``. (Importing ``clvr.pipeline`` itself loads torch, so ``clvr.cli`` adds this parser only
when the command is ``views``.)
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import textwrap
from pathlib import Path

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
HELP = "list the view generators and recipes; preview a batch of views as a PNG"

DEVICES = ("auto", "cpu", "gpu")            # as clvr.pipeline.loader (not imported here: torch)
ON_ERROR = ("raise", "skip")
PHOTOMETRIC = ("dali", "kornia")


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return v


def _key_value(text: str) -> tuple[str, str]:
    key, eq, value = text.partition("=")
    if not eq or not key.strip():
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r} (e.g. views=3, local_scale=[0.05,0.2])")
    return key.strip(), value


def build_parser(sub) -> None:
    views = sub.add_parser("views", help=HELP, description="The view generators of clvr.pipeline: list them with "
                           "their options and the recipe presets, or render one batch as a labelled PNG. "
                           "See docs/views.md.")
    cmds = views.add_subparsers(dest="views_command", metavar="COMMAND")
    cmds.required = True

    p = cmds.add_parser("list", help="the registered view generators (options, output, default recipe) and "
                                     "the recipe presets")
    p.set_defaults(views_run=cmd_list)

    p = cmds.add_parser("preview", help="a labelled PNG of one batch of views, exactly as a model gets them",
                        description="Render one batch of a view generator over a shard set (ViewLoader, shuffled "
                                    "with --seed) as a labelled PNG grid: one row per sample.")
    p.add_argument("--data", required=True, metavar="SHARDS",
                   help="shard set: a directory with manifest.json, a brace pattern or a tar")
    p.add_argument("--views", required=True, metavar="NAME", help="view generator (see 'clvr views list')")
    p.add_argument("--out", required=True, type=Path, metavar="PNG", help="where to write the sheet")
    p.add_argument("--recipe", default=None, metavar="PRESET_OR_YAML",
                   help="recipe preset or YAML file (default: the generator's)")
    p.add_argument("--set-view", action="append", default=[], type=_key_value, metavar="KEY=VALUE",
                   help="a generator option (repeatable); VALUE is read as YAML: 3, true, [0.05, 0.2]")
    p.add_argument("--split", default=None,
                   help="split of a shard set with several (default: train, or the first)")
    p.add_argument("--samples", type=_positive, default=8, metavar="N", help="samples (the batch size; default 8)")
    p.add_argument("--seed", type=int, default=0, help="loader seed: shuffling and augmentation (default 0)")
    p.add_argument("--device", choices=DEVICES, default="auto", help="where DALI decodes and augments")
    p.add_argument("--on-error", choices=ON_ERROR, default="raise",
                   help="bad samples: stop (raise) or skip and count them")
    p.add_argument("--photometric", choices=PHOTOMETRIC, default="dali",
                   help="photometric ops in the DALI graph or as the kornia stage")
    p.add_argument("--zoom", type=_positive, default=None, metavar="N",
                   help="enlarge every view N times (default: the largest reaches 96 px, at most 8x)")
    p.set_defaults(views_run=cmd_preview)


# ----------------------------------------------------------------------------- list

def _doc(obj) -> str:
    import inspect
    return inspect.getdoc(obj) or ""


def _plain(text: str) -> str:
    return re.sub(r"``([^`]*)``", r"\1", re.sub(r":\w+:`~?([^`]*)`", r"\1", text))


def _summary(cls) -> str:
    """The first sentence of the generator's module (or class) docstring, without its name."""
    import sys as _sys
    for doc in (_doc(_sys.modules.get(cls.__module__)), _doc(cls), _doc(getattr(cls, "_fn", None))):
        first = _plain(doc.strip().split("\n\n")[0]).replace("\n", " ").strip()
        if first:
            return re.sub(rf"^{re.escape(cls.name)}:\s*", "", first)
    return ""


def _batch_paragraph(cls) -> str | None:
    import sys as _sys
    for para in _doc(_sys.modules.get(cls.__module__)).split("\n\n"):
        if para.startswith("Batch:"):
            return _plain(" ".join(para[len("Batch:"):].split()))
    return None


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, tuple):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return repr(v) if isinstance(v, str) else str(v)


def recipe_line(r) -> str:
    """One recipe as a line: size, then every augmentation that can fire, with its main ranges."""
    bits = [f"size {r.size}"]
    for name in r.active():
        aug = getattr(r, name)
        extra = {"crop": lambda a: f" centre {_fmt(a.center)}" if a.center > 0 else f" scale {_fmt(a.scale)}",
                 "jitter": lambda a: f" b/c/s/h {_fmt(a.brightness)}/{_fmt(a.contrast)}/{_fmt(a.saturation)}/"
                                     f"{_fmt(a.hue)}",
                 "blur": lambda a: f" sigma {_fmt(a.sigma)}",
                 "solarize": lambda a: f" >= {a.threshold}",
                 "noise": lambda a: f" std {_fmt(a.std)}",
                 "cutout": lambda a: f" size {_fmt(a.size)}"}.get(name, lambda a: "")(aug)
        bits.append(f"{name} p={_fmt(aug.p)}{extra}")
    if r.crop.p <= 0:
        bits.append("no crop (resize whole)")
    return ", ".join(bits)


def _wrapped(label: str, text: str, width: int = 100, indent: int = 12) -> str:
    lead = f"  {label}".ljust(indent)
    return textwrap.fill(text, width, initial_indent=lead, subsequent_indent=" " * len(lead))


def _default_structure(cls) -> tuple[tuple, str]:
    """View names and ``describe()`` of a generator with default options. Tried first without
    ``check()`` (jigsaw's builds its permutation set, which takes seconds), then constructed."""
    try:
        gen = object.__new__(cls)
        gen.options, gen.kwargs = cls.Options(), {}
        return tuple(gen.names()), gen.describe()
    except Exception:
        gen = cls()
        return tuple(gen.names()), gen.describe()


def describe_generators() -> str:
    from .errors import PipelineError
    from .recipe import PRESETS, preset
    from .views import available, get_view

    names = available()
    out = [f"view generators ({len(names)}): {', '.join(names)}"]
    for name in names:
        out.append("")
        try:
            cls = get_view(name)
        except PipelineError as e:
            out += [f"{name}", f"  error:   {e}"]
            continue
        out.append(f"{name}: {_summary(cls)}" if _summary(cls) else name)
        opts = ", ".join(f"{f.name}={_fmt(f.default if f.default is not dataclasses.MISSING else '?')}"
                         for f in dataclasses.fields(cls.Options))
        out.append(_wrapped("needs:", ", ".join(sorted(cls.needs))))
        out.append(_wrapped("options:", opts or "(none)"))
        out.append(_wrapped("recipe:", f"{cls.default_recipe} (default)"))
        try:
            names, described = _default_structure(cls)
        except Exception as e:       # a plug-in whose options have no defaults, say
            out.append(_wrapped("describe:", f"(cannot build with defaults: {type(e).__name__}: {e})"))
        else:
            out.append(_wrapped("views:", ", ".join(names) or "(unnamed: view0, view1, ...)"))
            out.append(_wrapped("describe:", described))
        batch = _batch_paragraph(cls)
        if batch:
            out.append(_wrapped("batch:", batch))
    out += ["", f"recipe presets ({len(PRESETS)}): {', '.join(PRESETS)}"]
    for name in PRESETS:
        recipes = preset(name)
        if len(recipes) == 1:
            out.append(_wrapped(name, recipe_line(recipes[0]), indent=15))
        else:
            out.append(_wrapped(name, f"{len(recipes)} per-view recipes (asymmetric):", indent=15))
            out += [_wrapped(f"{'':13s}view{i}:", recipe_line(r), indent=23) for i, r in enumerate(recipes)]
    return "\n".join(out)


def cmd_list(args) -> int:
    print(describe_generators())
    return 0


# ----------------------------------------------------------------------------- preview

def view_options(pairs) -> dict:
    """``--set-view`` pairs -> options; values are read as YAML (numbers, booleans, lists)."""
    import yaml

    from .errors import PipelineError
    out = {}
    for key, value in pairs:
        try:
            out[key] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise PipelineError(f"--set-view {key}={value}: not a YAML value ({first})") from None
    return out


def cmd_preview(args) -> int:
    from .preview import preview

    result = preview(args.data, args.views, args.out, recipe=args.recipe, view_options=view_options(args.set_view),
                     split=args.split, samples=args.samples, seed=args.seed, device=args.device,
                     on_error=args.on_error, photometric=args.photometric, zoom=args.zoom)
    print(f"wrote {result.path} ({result.generator}, {result.samples} samples, "
          f"{result.size[0]}x{result.size[1]} px, zoom {result.zoom})")
    if args.on_error == "skip":
        print(f"skipped {len(result.skipped)} bad sample(s)")
        for s in result.skipped:
            print(f"  {s['shard']}: key {s['key']}: {s['reason']}", file=sys.stderr)
    return 0


def run(args) -> int:
    from clvr.shards.errors import ShardError

    from .errors import PipelineError
    try:
        return args.views_run(args)
    except (PipelineError, ShardError) as e:
        print(f"clvr views: error: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"clvr views: error: {where}{e.strerror or e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\nclvr views: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
