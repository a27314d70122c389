"""``clvr methods ...``: the methods clvr knows, with the paper's defaults and what the paper reports.

``build_parser`` only declares arguments; torch and the methods are imported in ``run``.
"""

from __future__ import annotations

import sys

HELP = "list the contrastive methods with their paper defaults; show one method's full config"
EXIT_USAGE = 2
BASE_FIELDS = ("backbone", "stem", "norm", "input_norm")


def build_parser(sub) -> None:
    p = sub.add_parser("methods", help=HELP, description="The methods of clvr.methods (and installed plug-ins). "
                       "See docs/methods.md.")
    cmds = p.add_subparsers(dest="methods_command", metavar="COMMAND")
    cmds.required = True
    q = cmds.add_parser("list", help="every method: what it reads, its recipe, its defaults and the paper's number")
    q.add_argument("--markdown", action="store_true", help="a markdown table (the one in docs/methods.md)")
    q = cmds.add_parser("show", help="one method: paper, views, recipe and every config field with its default")
    q.add_argument("name", help="method name or module:Class")


def run(args) -> int:
    from .errors import MethodError
    from .registry import available, get_method
    if args.methods_command == "list":
        rows = [summary(get_method(n)) for n in available()]
        print(markdown(rows) if args.markdown else plain(rows))
        return 0
    try:
        cls = get_method(args.name)
    except MethodError as e:
        print(f"clvr methods show: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(show(cls))
    return 0


def _fmt(v) -> str:
    if isinstance(v, tuple):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v).lower() if isinstance(v, bool) else str(v)


def summary(cls) -> dict:
    config = cls.defaults()
    views = cls.views + ("" if not cls.view_options else
                         " (" + ", ".join(f"{k}={_fmt(v)}" for k, v in cls.view_options.items()) + ")")
    return {"method": cls.name, "reads": views, "recipe": cls.recipe or "(generator's)",
            "backbone": f"{config['backbone']}" + {"batch": "", "layer": ", LayerNorm", "none": ", no norm"}.get(config["norm"], f", {config['norm']}")
                        + (", each image standardised" if config.get("input_norm", "none") != "none" else ""),
            "defaults": ", ".join(f"{k}={_fmt(v)}" for k, v in config.items() if k not in BASE_FIELDS),
            "reported": cls.reported or "—"}


COLUMNS = [("method", "method"), ("reads", "views read"), ("recipe", "recipe"), ("backbone", "backbone"),
           ("defaults", "defaults"), ("reported", "paper's linear top-1 (%), ImageNet unless said")]


def markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |",
             "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(f"`{r[k]}`" if k == "method" else r[k] for k, _ in COLUMNS) + " |")
    return "\n".join(lines)


def plain(rows: list[dict]) -> str:
    keys = ["method", "reads", "recipe", "backbone", "reported"]
    width = {k: max(len(k), *(len(r[k]) for r in rows)) for k in keys}
    lines = ["  ".join(k.ljust(width[k]) for k in keys)]
    lines += ["  ".join(r[k].ljust(width[k]) for k in keys) for r in rows]
    return "\n".join(lines) + "\n\n'clvr methods show NAME' lists every default; see docs/methods.md."


def show(cls) -> str:
    flags = [text for on, text in ((cls.in_batch_negatives, "negatives from the batch (no gradient accumulation)"),
                                   (cls.gathers or cls.defaults().get("gather", False), "gathers across processes"),
                                   (cls.needs_num_samples, "memory bank: needs the data set's size"))
             if on]
    lines = [f"{cls.name}: {type_name(cls)}",
             f"  paper:      {cls.paper or '—'}",
             f"  reported:   {cls.reported or '—'}",
             f"  reads:      {summary(cls)['reads']}",
             f"  recipe:     {cls.recipe or '(the generator default)'}"]
    if flags:
        lines.append(f"  notes:      {'; '.join(flags)}")
    lines.append("  config (YAML, the defaults):")
    lines += [f"    {k}: {_fmt(v)}" for k, v in cls.defaults().items()]
    return "\n".join(lines)


def type_name(cls) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
