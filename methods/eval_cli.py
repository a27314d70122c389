"""``clvr eval`` and ``clvr demo``: the command-line faces of :mod:`.evaluate` and :mod:`.demo`.

``build_parser`` only declares arguments (standard library only); torch and DALI are imported
in ``run``.
"""

from __future__ import annotations

import sys
from pathlib import Path

EXIT_USAGE = 2
PROTOCOL_CHOICES = ("knn", "linear", "svm", "semi", "transfer", "all")
DEMO_CHOICES = ("digits", "digits-video", "digits-objects", "digits-captions")


def build_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate an encoder: kNN, linear, SVM, semi-supervised, transfer, "
                                    "against random-init and supervised baselines",
                       description="Evaluate an exported encoder or a run directory on labelled shards. "
                                   "Every protocol scores the encoder and, with the same architecture and "
                                   "labels, a random initialisation and supervised training from scratch. "
                                   "Writes OUT/results.json, OUT/results.md and figures, and prints the table.")
    p.add_argument("protocol", choices=PROTOCOL_CHOICES, metavar="PROTOCOL",
                   help=f"one of {', '.join(PROTOCOL_CHOICES)}")
    p.add_argument("encoder", type=Path, metavar="ENCODER",
                   help="an exported encoder (.safetensors), a run directory of clvr train, or a checkpoint")
    p.add_argument("--train", required=True, metavar="SHARDS",
                   help="labelled shards whose features vote / train the probes (for transfer: the target's)")
    p.add_argument("--val", required=True, metavar="SHARDS", help="labelled shards that are scored")
    p.add_argument("--out", type=Path, metavar="DIR", help="report directory (default ENCODER's run dir/eval, "
                   "or eval/ beside an exported encoder)")
    p.add_argument("--transfer-train", metavar="SHARDS", help="another labelled shard set (all: the transfer protocol)")
    p.add_argument("--transfer-val", metavar="SHARDS", help="its scored part")
    p.add_argument("--source", metavar="SHARDS", help="transfer: labelled shards the supervised baseline is "
                   "pre-trained on (eval all: default --train; eval transfer: without it, no supervised baseline)")
    p.add_argument("--config", metavar="FILE", help="YAML file of eval config overrides")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override one eval config field (knn_k=[200,20], linear.epochs=50, fractions=[0.01])")
    p.add_argument("--no-baselines", action="store_true", help="score the encoder alone (no random init, "
                   "no supervised training)")
    p.add_argument("--no-plots", action="store_true", help="write no figures")
    p.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                   help="an unreadable sample: stop (raise, default) or skip it; each skipped sample is "
                        "printed and listed in results.json (skipped_samples)")
    p.add_argument("--print-config", action="store_true", help="print the resolved eval config and exit")

    p = sub.add_parser("demo", help="the whole job on embedded handwritten digits: shard, pre-train, evaluate",
                       description="Shard an embedded demo set, pre-train a method on it with clvr train, "
                                   "evaluate the encoder with clvr eval against random-init and supervised "
                                   "baselines, and print the table. digits: kNN, linear and 1%%-label "
                                   "semi-supervised; the others: kNN.")
    p.add_argument("name", nargs="?", default="digits", choices=DEMO_CHOICES, metavar="NAME",
                   help=f"one of {', '.join(DEMO_CHOICES)} (default digits)")
    p.add_argument("--method", metavar="NAME", help="the method to pre-train (default: the demo's)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR", help="where data, run and report go "
                   "(default runs/demo-NAME)")
    p.add_argument("--epochs", type=int, metavar="N", help="pre-training epochs (default: the demo's)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a clvr train config field of the demo's")
    p.add_argument("--eval-set", dest="eval_sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a clvr eval config field of the demo's")
    p.add_argument("--overwrite", action="store_true", help="train again even if OUT holds a finished run")
    p.add_argument("--limit", type=int, metavar="N", help="shard only the first N digits (quick checks)")


def run(args) -> int:
    if args.command == "demo":
        return _demo(args)
    return _eval(args)


def _eval(args) -> int:
    from . import eval_config as ecfg
    from .errors import MethodError
    try:
        config = ecfg.build(args.config, args.sets)
    except MethodError as e:
        print(f"clvr eval: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.no_baselines:
        config.baselines = []
    if args.no_plots:
        config.plots = False
    if args.print_config:
        import yaml
        print(yaml.safe_dump(ecfg.to_dict(config), sort_keys=False), end="")
        return 0
    if (args.transfer_train is None) != (args.transfer_val is None):
        print("clvr eval: give both --transfer-train and --transfer-val", file=sys.stderr)
        return EXIT_USAGE
    transfer = (args.transfer_train, args.transfer_val) if args.transfer_train else None
    if args.protocol == "transfer":
        if transfer is not None:
            print("clvr eval transfer: the target is --train/--val; --transfer-train/--transfer-val are for "
                  "`clvr eval all`", file=sys.stderr)
            return EXIT_USAGE
        transfer = (args.train, args.val)
    out = args.out or default_out(args.encoder)
    return evaluate_and_print(args.encoder, args.train, args.val, out, config, [args.protocol],
                              transfer=transfer, source=args.source, prog="clvr eval", on_error=args.on_error)


def default_out(encoder: Path) -> Path:
    encoder = Path(encoder)
    if encoder.is_dir():
        return encoder / "eval"
    if encoder.suffix == ".pt":                     # RUN/checkpoints/step-N.pt: RUN/eval
        return encoder.parent.parent / "eval"
    return encoder.parent / "eval"


def evaluate_and_print(encoder, train, val, out, config, protocols, transfer=None, source=None,
                       prog: str = "clvr eval", on_error: str = "raise") -> int:
    from ..pipeline.errors import PipelineError
    from .checkpoint import CheckpointError
    from .errors import MethodError
    from .evaluate import Evaluation
    from .export import EncoderFileError
    from .report import text_table, write_plots
    try:
        ev = Evaluation(encoder, train, val, out, config, transfer=transfer, source=source, on_error=on_error)
        for note in ev.class_notes.values():          # before the (long) protocols
            print(f"{prog}: note: {note}", file=sys.stderr)
        ev.run(protocols)
        if config.plots:
            write_plots(ev)
    except (MethodError, PipelineError, CheckpointError, EncoderFileError, ValueError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(text_table(ev.results))
    if len(ev.skipped_said) > ev.skipped_shown:
        print(f"{prog}: ... and {len(ev.skipped_said) - ev.skipped_shown} more skipped sample(s), listed in "
              "results.json", file=sys.stderr)
    class_notes = set(ev.class_notes.values())
    for note in ev.results.get("notes") or ev.notes():
        if note not in class_notes:
            print(f"{prog}: note: {note}", file=sys.stderr)
    skipped = ev.results.get("skipped") or {}
    for what, why in skipped.items():
        print(f"not run or drawn: {what}: {why}", file=sys.stderr)
    print(f"wrote {Path(out) / 'results.md'} and results.json"
          + (f", {len(ev.results.get('plots', {}))} figure(s)" if config.plots else ""), file=sys.stderr)
    return 0


def _demo(args) -> int:
    from .demo import run_demo
    return run_demo(args.name, method=args.method, out=args.out, epochs=args.epochs, sets=args.sets,
                    eval_sets=args.eval_sets, overwrite=args.overwrite, limit=args.limit)
