"""``clvr shard ...``: the command line of the sharding tools."""

from __future__ import annotations

import argparse
import os
import random
import re
import sys
from pathlib import Path

from .errors import ShardError, StrictReject

DEMOS = ("digits", "digits-video", "digits-objects", "digits-captions")  # built in clvr.shards.demo

EXIT_REJECTS = 1     # --strict saw a reject; verify found problems
EXIT_USAGE = 2       # bad arguments, unusable input or OUT
EXIT_INTERRUPTED = 130


MIN_SHARD_BYTES = 3 * 512  # one member header, its data block, and the end-of-archive blocks


def _bytes(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*", text.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 500M, 1G, 1048576)")
    unit = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}[m.group(2)]
    if m.group(3).startswith("i"):
        unit = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[m.group(2)]
    size = int(float(m.group(1)) * unit)
    if size < MIN_SHARD_BYTES:
        raise argparse.ArgumentTypeError(f"{text} is under the smallest possible shard ({MIN_SHARD_BYTES} bytes)")
    return size


def _fraction(text: str) -> float:
    v = float(text)
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return v


def _positive(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return v


def _recipe_option(p) -> None:
    p.add_argument("--recipe", type=Path, default=None, metavar="FILE",
                   help="a view recipe (YAML) that learns on this data, recorded in the manifest: clvr train "
                        "uses it by default (preset=auto) and says so in its plan")


def _common(p: argparse.ArgumentParser, split_default: float = 0.0) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--shard-size", type=_positive, default=1000, metavar="N",
                   help="samples per shard (default 1000)")
    g.add_argument("--max-shard-bytes", type=_bytes, default=None, metavar="SIZE",
                   help="also start a new shard before one passes SIZE (e.g. 500M, 1GiB); a sample "
                        "larger than SIZE gets a shard of its own")
    g.add_argument("--shuffle", action="store_true", help="shuffle the samples (seeded) before writing")
    g.add_argument("--seed", type=int, default=0, help="seed of --shuffle and the split (default 0)")
    g.add_argument("--val-fraction", type=_fraction, default=split_default, metavar="F",
                   help="stratified split: write OUT/train and OUT/val" +
                   (f" (default {split_default})" if split_default else ""))
    g.add_argument("--workers", type=_positive, default=os.cpu_count() or 1, metavar="N",
                   help="worker processes (default: all cores); output is identical for any N")
    g.add_argument("--strict", action="store_true", help="stop with a non-zero exit at the first reject")
    g.add_argument("--overwrite", action="store_true", help="replace a complete shard set already in OUT")
    g.add_argument("--no-resume", dest="resume", action="store_false",
                   help="start over instead of resuming an interrupted run into OUT")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    _recipe_option(g)
    g.add_argument("--fsync", action="store_true",
                   help="flush each shard to disk before renaming it (survives a power loss; slower)")


def _image_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("images")
    g.add_argument("--verify", dest="verify", action="store_true", default=True,
                   help="decode every image fully to catch corrupt or truncated files (default)")
    g.add_argument("--no-verify", dest="verify", action="store_false",
                   help="check image headers only (faster; truncated files pass)")
    g.add_argument("--max-side", type=_positive, default=None, metavar="PX",
                   help="re-encode images whose longer side exceeds PX, aspect kept")
    g.add_argument("--max-pixels", type=_positive, default=None, metavar="N",
                   help="reject images with more pixels (default 89478485, PIL's bomb limit)")
    g.add_argument("--jpeg-quality", type=int, default=95, metavar="Q", help="quality of re-encoded JPEGs")


def build_parser(sub) -> None:
    shard = sub.add_parser("shard", help="turn a dataset into WebDataset shards with DALI indexes",
                           description="Turn a dataset into WebDataset tar shards, DALI index files and "
                                       "a manifest. See docs/sample-format.md.")
    kinds = shard.add_subparsers(dest="shard_command", metavar="KIND")
    kinds.required = True

    p = kinds.add_parser("images", help="an ImageFolder tree, a flat folder, or a CSV/JSONL list")
    p.add_argument("src", type=Path, help="folder, or .csv/.jsonl listing path[,label]")
    p.add_argument("out", type=Path)
    _common(p)
    _image_options(p)
    p.add_argument("--proposals", choices=["felzenszwalb"], default=None,
                   help="add unsupervised object boxes (for object-crop views on unlabelled data)")
    p.add_argument("--max-proposals", type=_positive, default=16, metavar="K")
    p.set_defaults(run=cmd_images)

    p = kinds.add_parser("coco", help="COCO detection annotations: images with boxes and categories")
    p.add_argument("instances", type=Path, help="instances_*.json")
    p.add_argument("images_dir", type=Path)
    p.add_argument("out", type=Path)
    _common(p)
    _image_options(p)
    p.add_argument("--keep-crowd", action="store_true", help="keep iscrowd boxes in boxes.f32")
    p.set_defaults(run=cmd_coco)

    p = kinds.add_parser("videos", help="video files (class folders optional)")
    p.add_argument("src", type=Path)
    p.add_argument("out", type=Path)
    _common(p)
    g = p.add_argument_group("videos")
    g.add_argument("--transcode", choices=["none", "vp9", "mjpeg"], default="none",
                   help="re-encode so DALI's CPU decoder can read every video (VP9/WebM or MJPEG/MKV)")
    g.add_argument("--fps", type=float, default=None, help="frame rate of transcoded videos")
    g.add_argument("--max-side", type=_positive, default=None, metavar="PX", help="downscale when transcoding")
    g.add_argument("--crf", type=int, default=32, help="VP9 quality when transcoding (lower is better)")
    g.add_argument("--no-verify", dest="verify", action="store_false", default=True,
                   help="count packets instead of decoding every frame")
    p.set_defaults(run=cmd_videos)

    p = kinds.add_parser("pairs", help="image-text pairs from a JSONL file")
    p.add_argument("captions", type=Path, help='JSONL: {"image": path, "caption": text[, "label": ..]}')
    p.add_argument("out", type=Path)
    _common(p)
    _image_options(p)
    p.set_defaults(run=cmd_pairs)

    p = kinds.add_parser("demo", help="embedded handwritten-digits datasets (no download)")
    p.add_argument("name", choices=DEMOS)
    p.add_argument("out", type=Path)
    _common(p, split_default=0.2)
    p.add_argument("--limit", type=_positive, default=None, help="use only the first N digits")
    p.set_defaults(run=cmd_demo)

    p = kinds.add_parser("verify", help="check shards against the manifest, decode every sample")
    p.add_argument("out", type=Path)
    p.add_argument("--sample", type=_positive, default=None, metavar="N",
                   help="decode N random samples per split instead of all (structure is always checked)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(run=cmd_verify)

    p = kinds.add_parser("preview", help="a PNG contact sheet of random samples (boxes, captions, frames)")
    p.add_argument("out", type=Path)
    p.add_argument("--png", type=Path, default=None, help="where to write it (default OUT/preview.png)")
    p.add_argument("--count", type=_positive, default=24)
    p.add_argument("--columns", type=_positive, default=8)
    p.add_argument("--split", default=None, help="which split (default: the first)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=cmd_preview)

    p = kinds.add_parser("index", help="index WebDataset tars written by other tools (no rewrite)",
                         description="Write DALI index files and a manifest for WebDataset tars that clvr did "
                                     "not write (img2dataset, webdataset.ShardWriter: KEY.jpg + KEY.cls/.txt), "
                                     "without rewriting them. Samples without an image are left out and counted; "
                                     "unknown extensions are reported. Labels come from .cls/.cls2/.label/.class/.target "
                                     "or a label field of .json (see --label-key).")
    p.add_argument("src", nargs="+", type=Path, metavar="SRC", help="a folder of .tar files, or the tars")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="write the index files and manifest here (default: beside the tars)")
    p.add_argument("--label-key", default=None, metavar="KEY",
                   help="where the labels are: a component (cls, cls2, label, class, target, ...), json:FIELD for a "
                        "field of the .json members (json:label, json:class_name), or none (default: the first "
                        "of cls, cls2, label, class, target, then json:label/cls/class/class_id/.../class_name/"
                        "category)")
    _recipe_option(p)
    p.add_argument("--classes-from", type=Path, default=None, metavar="DIR",
                   help="number the classes as this other shard set does (index a val set with its train set's "
                        "classes)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(run=cmd_index)

    p = kinds.add_parser("info", help="a readable summary of a shard set")
    p.add_argument("out", type=Path)
    p.set_defaults(run=cmd_info)


# ----------------------------------------------------------------------------- commands

def _image_opts(args):
    from .images import DEFAULT_MAX_PIXELS, ImageOptions
    return ImageOptions(verify=args.verify, max_side=args.max_side,
                        max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS, jpeg_quality=args.jpeg_quality)


def _splits(items, args):
    from .job import Split
    from .split import stratified_split

    if args.val_fraction > 0:
        train, val = stratified_split(items, args.val_fraction, args.seed)
        return _shuffle_splits([Split("train", train), Split("val", val)], args)
    return _shuffle_splits([Split(None, items)], args)


def _shuffle_splits(splits, args):
    """``--shuffle``: each split shuffled with its own seed drawn from ``--seed``."""
    from .job import Split
    from .split import shuffled

    if not args.shuffle:
        return splits
    return [Split(s.name, shuffled(s.items, random.Random(f"{args.seed}/{s.name}").randrange(2**32)))
            for s in splits]


def _recommendation(args, default: dict | None = None) -> dict | None:
    """The manifest's recommended recipe: --recipe FILE, else ``default`` (the demo's)."""
    from .recommended import entry, read_recipe_file
    if getattr(args, "recipe", None) is not None:
        return entry(read_recipe_file(args.recipe), f"--recipe {args.recipe}")
    return default


def _run(args, kind, splits, prepare, options, classes=None, categories=None, notes=(), recommended=None):
    from .job import JobConfig, print_summary, run_job

    recommended = _recommendation(args, recommended)
    cfg = JobConfig(kind=kind, out=args.out, command=["clvr", *args.argv], options=options,
                    shard_size=args.shard_size, max_shard_bytes=args.max_shard_bytes, workers=args.workers,
                    strict=args.strict, overwrite=args.overwrite, seed=args.seed, classes=classes,
                    categories=categories, progress=args.progress, resume=args.resume, fsync=args.fsync,
                    listing_notes=list(notes), recommended=recommended)
    result = run_job(cfg, splits, prepare, log=lambda m: print(m, file=sys.stderr))
    print_summary(result, args.out)
    return result


def _shared_options(args, **extra):
    keys = ("shard_size", "max_shard_bytes", "shuffle", "seed", "val_fraction")
    return {**{k: getattr(args, k) for k in keys}, **extra}


def _out_not_inside(src: Path, out: Path) -> None:
    src, out = src.resolve(), out.resolve()
    if out == src or src in out.parents:
        raise ShardError(f"{out}: OUT lies inside SRC {src}; its shards would be read as input. "
                         "Choose an OUT outside SRC")


def cmd_images(args) -> int:
    from .image_sources import PrepareImageFile, list_file, list_folder

    if args.src.is_dir():
        _out_not_inside(args.src, args.out)
        items, classes, notes = list_folder(args.src)
        root = args.src
    elif args.src.is_file():
        items, classes, root, notes = list_file(args.src)
    else:
        raise ShardError(f"{args.src}: no such folder or file")
    if not items:
        raise ShardError(f"{args.src}: found no images")
    opts = _image_opts(args)
    prepare = PrepareImageFile(root, opts, args.proposals, args.max_proposals)
    _run(args, "images", _splits(items, args), prepare,
         _shared_options(args, **opts.__dict__, proposals=args.proposals, max_proposals=args.max_proposals),
         classes=classes, notes=notes)
    return 0


def cmd_coco(args) -> int:
    from .coco import PrepareCocoImage, load_coco

    if not args.images_dir.is_dir():
        raise ShardError(f"{args.images_dir}: not a folder")
    items, categories, notes = load_coco(args.instances)
    opts = _image_opts(args)
    _run(args, "coco", _splits(items, args), PrepareCocoImage(args.images_dir, opts, args.keep_crowd),
         _shared_options(args, **opts.__dict__, keep_crowd=args.keep_crowd), categories=categories, notes=notes)
    return 0


def cmd_videos(args) -> int:
    from .image_sources import list_folder
    from .videos import VIDEO_SUFFIXES, PrepareVideoFile, VideoOptions

    _out_not_inside(args.src, args.out)
    items, classes, notes = list_folder(args.src, VIDEO_SUFFIXES, what="video")
    if not items:
        raise ShardError(f"{args.src}: found no videos ({', '.join(sorted(VIDEO_SUFFIXES))})")
    opts = VideoOptions(transcode=args.transcode, verify=args.verify, max_side=args.max_side, fps=args.fps,
                        crf=args.crf)
    result = _run(args, "videos", _splits(items, args), PrepareVideoFile(args.src, opts),
                  _shared_options(args, **opts.__dict__), classes=classes, notes=notes)
    _warn_codecs(result)
    return 0


def _warn_codecs(result) -> None:
    from .videos import gpu_only_codecs, gpu_present

    gpu_only = {}
    for s in result.splits:
        for codec, n in gpu_only_codecs(s.manifest.get("stats", {})).items():
            gpu_only[codec] = gpu_only.get(codec, 0) + n
    if gpu_only:
        what = ", ".join(f"{n} {c}" for c, n in sorted(gpu_only.items()))
        where = ("this machine has no NVIDIA GPU, so clvr's pipeline will not be able to decode them here"
                 if not gpu_present() else "they will decode only on the GPU (--device gpu)")
        print(f"warning: {what} video(s) use codecs DALI's CPU decoder cannot read (it takes VP8, VP9 and "
              f"MJPEG); {where}. Re-run with --transcode vp9 to make them CPU-decodable.", file=sys.stderr)


def cmd_pairs(args) -> int:
    from .pairs import PreparePair, load_pairs

    items, classes, notes = load_pairs(args.captions)
    opts = _image_opts(args)
    _run(args, "pairs", _splits(items, args), PreparePair(args.captions.parent, opts),
         _shared_options(args, **opts.__dict__), classes=classes, notes=notes)
    return 0


def cmd_demo(args) -> int:
    from .demo import CLASS_NAMES, PrepareDemo, build_items, compose_object_items, demo_recommendation
    from .job import Split
    from .split import stratified_split

    if args.val_fraction <= 0:
        raise ShardError("demo datasets are always split: --val-fraction must be > 0")
    digits = build_items(args.name, args.seed, args.limit)
    train, val = stratified_split(digits, args.val_fraction, args.seed)
    if args.name == "digits-objects":
        train = compose_object_items(train, args.seed)
        val = compose_object_items(val, args.seed + 1)
    splits = _shuffle_splits([Split("train", train), Split("val", val)], args)
    categories = ([{"id": i, "name": n} for i, n in enumerate(CLASS_NAMES)]
                  if args.name == "digits-objects" else None)
    _run(args, f"demo:{args.name}", splits, PrepareDemo(args.name),
         _shared_options(args, demo=args.name, limit=args.limit), classes=CLASS_NAMES, categories=categories,
         recommended=demo_recommendation(args.name))
    return 0


def cmd_verify(args) -> int:
    from .verify import verify

    problems = verify(args.out, sample=args.sample, seed=args.seed, progress=args.progress)
    if problems:
        print(f"{args.out}: {len(problems)} problem(s):", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return EXIT_REJECTS
    print(f"{args.out}: OK")
    return 0


def cmd_preview(args) -> int:
    from .preview import preview

    try:
        dest = preview(args.out, args.png or args.out / "preview.png", count=args.count, columns=args.columns,
                       seed=args.seed, split=args.split)
    except ValueError as e:
        raise ShardError(str(e)) from None
    print(f"wrote {dest}")
    return 0


def cmd_info(args) -> int:
    from .info import describe

    print(describe(args.out))
    return 0


def cmd_index(args) -> int:
    from .foreign import index_foreign
    result = index_foreign(args.src if len(args.src) > 1 else args.src[0], args.out, progress=args.progress,
                           command=["clvr", *getattr(args, "argv", [])], label_key=args.label_key,
                           classes_from=args.classes_from, recommended=_recommendation(args))
    print(result.summary())
    return 0


def run(args) -> int:
    try:
        return args.run(args)
    except StrictReject as e:
        print(f"clvr shard: error: {e}", file=sys.stderr)
        return EXIT_REJECTS
    except ShardError as e:
        print(f"clvr shard: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\nclvr shard: interrupted; nothing incomplete was left looking whole. Re-run the same "
              "command to resume.", file=sys.stderr)
        return EXIT_INTERRUPTED
