"""``clvr train`` and ``clvr export``: the command-line faces of :mod:`.trainer` and :mod:`.export`.

``build_parser`` only declares arguments (standard library only); torch, DALI and accelerate are
imported in ``run``.
"""

from __future__ import annotations

import sys
from pathlib import Path

EXIT_USAGE = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


def build_parser(sub) -> None:
    p = sub.add_parser("train", help="pre-train an encoder with a contrastive method on shards",
                       description="Train a method (clvr methods list) on a shard set. Runs as one process, and "
                                   "unchanged under `accelerate launch` for several processes, GPUs or machines. "
                                   "The configuration is the method's paper settings, then --config, then --set; "
                                   "the resolved one is written to OUT/config.yaml.")
    p.add_argument("--method", metavar="NAME", help="method name or module:Class (default: the config's, else simclr)")
    p.add_argument("--data", required=True, metavar="SHARDS", help="training shards (a directory with a manifest, "
                   "a brace pattern, a list or URLs)")
    p.add_argument("--val", metavar="SHARDS", help="labelled shards for the kNN monitor (every knn_every epochs "
                   "and at the end; the training shards must be labelled too)")
    p.add_argument("--config", metavar="FILE", help="YAML file of config overrides")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config field (dotted: optim.lr=0.5, model.temperature=0.2, data.batch_size=64)")
    p.add_argument("--out", default="runs/run", metavar="RUN_DIR",
                   help="run directory: config.yaml, metrics.jsonl, checkpoints/ (default runs/run)")
    p.add_argument("--resume", metavar="auto|PATH", help="continue from the newest checkpoint of RUN_DIR (auto) "
                   "or from a checkpoint file")
    p.add_argument("--resume-changed", nargs="+", default=[], metavar="KEY",
                   help="resume although these settings differ from the checkpoint's (data.batch_size, seed, "
                        "world_size, data_set, optim...; a section names all its keys); without it such a "
                        "difference is refused by name")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")

    p = sub.add_parser("export", help="write a trained run's encoder as safetensors + a JSON sidecar",
                       description="Extract the backbone of a run (its newest checkpoint) or of a checkpoint file "
                                   "as a .safetensors file, with a .json sidecar giving the architecture and the "
                                   "input normalisation; plain torch and safetensors load it.")
    p.add_argument("source", type=Path, metavar="RUN_DIR|CHECKPOINT")
    p.add_argument("--out", required=True, type=Path, metavar="FILE.safetensors")


def run(args) -> int:
    if args.command == "export":
        return _export(args)
    return _train(args)


def _train(args) -> int:
    from . import train_config as cfg
    from .errors import MethodError
    try:
        config, settings = cfg.build_for_data(args.method, args.config, args.sets, args.data)
    except MethodError as e:
        print(f"clvr train: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.print_config:
        import yaml
        print(yaml.safe_dump(cfg.to_dict(config), sort_keys=False), end="")
        return 0
    if args.resume_changed and not args.resume:
        print("clvr train: --resume-changed accepts differences from the checkpoint a resume continues; "
              "give --resume auto or --resume PATH", file=sys.stderr)
        return EXIT_USAGE
    from ..pipeline.errors import PipelineError
    from .checkpoint import CheckpointError
    from .trainer import Trainer, TrainingError
    try:
        trainer = Trainer(config, args.data, args.out, resume=args.resume, val=args.val, settings=settings,
                          resume_changed=args.resume_changed)
        summary = trainer.run()
    except (MethodError, PipelineError, CheckpointError) as e:
        print(f"clvr train: {e}", file=sys.stderr)
        return EXIT_FAILED if isinstance(e, TrainingError) else EXIT_USAGE
    except KeyboardInterrupt:
        print("\nclvr train: interrupted twice: stopped at once, without a checkpoint of this step (resume from "
              "the last one with --resume auto)", file=sys.stderr)
        return EXIT_INTERRUPTED
    if trainer.accelerator.is_main_process:
        how = f"stopped by {summary['signal']}" if summary["stopped_by_signal"] else "done"
        print(f"{how}: {summary['steps']}/{summary['total_steps']} steps; checkpoint {summary['checkpoint']}"
              + (f"; {summary['skipped_steps']} step(s) skipped (non-finite loss)" if summary["skipped_steps"] else "")
              + (f"; {summary['skipped_samples']} sample(s) skipped as unreadable (data.on_error = skip; each is "
                 "an event line in metrics.jsonl)" if summary.get("skipped_samples") else "")
              + (f"; {summary['repeats_dropped']} sample(s) a rebuilt stream brought again in the epoch of a skip "
                 "were not served twice" if summary.get("repeats_dropped") else ""),
              file=sys.stderr)
        for note in summary.get("notes") or []:
            print(f"note: {note}", file=sys.stderr)
    return 0


def _export(args) -> int:
    from .checkpoint import CheckpointError
    from .export import export_encoder
    try:
        weights, sidecar = export_encoder(args.source, args.out)
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"clvr export: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote {weights} and {sidecar}")
    return 0
