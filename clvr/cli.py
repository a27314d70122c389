"""The ``clvr`` command. Each subcommand's parser lives with its package and is imported
only when used, so ``clvr shard`` never loads torch or DALI (the parsers themselves import
only the standard library)."""

from __future__ import annotations

import argparse
import sys

from clvr import __version__

def build_parser() -> argparse.ArgumentParser:
    from clvr.methods.cli import build_parser as methods_parser
    from clvr.methods.eval_cli import build_parser as eval_parser
    from clvr.methods.train_cli import build_parser as train_parser
    from clvr.pipeline.cli import build_parser as views_parser
    from clvr.shards.cli import build_parser as shard_parser

    parser = argparse.ArgumentParser(prog="clvr", description="Contrastive learning of visual representations.")
    parser.add_argument("--version", action="version", version=f"clvr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    shard_parser(sub)
    views_parser(sub)
    methods_parser(sub)
    train_parser(sub)
    eval_parser(sub)
    return parser


def _recipe_problem(path) -> str | None:
    """Why ``clvr shard --recipe FILE`` cannot be recorded (read and checked as a loader would
    build it: ``clvr.pipeline.recipe`` is light, no torch or DALI), or None."""
    from clvr.pipeline.errors import PipelineError
    from clvr.pipeline.recipe import build
    from clvr.shards.errors import ShardError
    from clvr.shards.recommended import read_recipe_file
    try:
        build(read_recipe_file(path))
    except ShardError as e:
        return str(e)
    except PipelineError as e:
        return f"--recipe {path}: {e}"
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # recorded in manifests as the exact command
    if args.command == "shard":
        if getattr(args, "recipe", None) is not None:
            problem = _recipe_problem(args.recipe)
            if problem:
                print(f"clvr shard: {problem}", file=sys.stderr)
                return 2
        from clvr.shards.cli import run
        return run(args)
    if args.command == "views":
        from clvr.pipeline.cli import run
        return run(args)
    if args.command in ("train", "export"):
        from clvr.methods.train_cli import run
        return run(args)
    if args.command in ("eval", "demo"):
        from clvr.methods.eval_cli import run
        return run(args)
    if args.command == "methods":
        from clvr.methods.cli import run
        return run(args)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
