"""The report of ``clvr eval``: ``results.json``, ``results.md`` and the figures.

``results.json`` (``format: clvr-eval-results``) holds, under ``protocols``, one entry per
protocol run; each score is ``{"top1": .., "top5": ..}`` (shares in [0, 1]) under the key of the
encoder it belongs to: ``learned``, ``raw_pixels``, ``random_init`` or ``supervised``::

    protocols.knn.k200 / k20                  kNN, t = 0.07
    protocols.linear.sgd / logistic           frozen features, linear layer
    protocols.linear.logistic_shares.1% / 10% logistic regression fitted on that share of the labels
    protocols.svm.linear_svm                  frozen features, linear SVM
    protocols.semi.1% / 10%                   fine-tuned on that share of the labels
                                              (+ labelled_samples, epochs)
    protocols.transfer.linear / finetune      on the transfer data
    supervised_from_scratch.1% / 10% / 100%   val accuracy of the architecture trained with labels
    subsets                                   the label-subset files used (relative to OUT)
    plots                                     the figures written (relative to OUT)
    skipped                                   what was not run or drawn, and why
    data.SET.unlabelled_left_out              samples of SET without a label (-1): never trained
                                              on nor scored (labelled_samples: the others)
    classes.notes                             classes the trained-on set has and the scored one lacks
    skipped_samples                           samples skipped as unreadable (on_error = skip):
                                              {"set", "shard", "key", "reason"}
    notes                                     the above in words (also printed and in results.md)

``results.md`` is the same as a table of protocol x label share, with the baselines beside the
learned encoder, followed by the figures.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

ROWS = [  # frozen-feature protocols after kNN: (protocol, key, label in the table, setting)
    ("linear", "sgd", "linear", "SGD, cosine"),
    ("linear", "logistic", "linear", "logistic regression"),
    ("svm", "linear_svm", "SVM", "linear SVM"),
]


def _fmt(score) -> str:
    if not isinstance(score, dict) or "top1" not in score:
        return "–"
    return f"{100 * score['top1']:.1f}"


def _delta(row: dict) -> str:
    a, b = row.get("learned"), row.get("random_init")
    if not (isinstance(a, dict) and isinstance(b, dict) and "top1" in a and "top1" in b):
        return "–"
    return f"{100 * (a['top1'] - b['top1']):+.1f}"


def _cells(entry: dict) -> list[str]:
    """learned, raw pixels, random init, supervised, learned - random init."""
    return [_fmt(entry.get("learned")), _fmt(entry.get("raw_pixels")), _fmt(entry.get("random_init")),
            _fmt(entry.get("supervised")), _delta(entry)]


def table_rows(results: dict) -> list[list[str]]:
    """The rows of the results table: protocol, setting, labels, learned, raw pixels, random
    init, supervised, learned - random init (top-1, %)."""
    p = results.get("protocols", {})
    cfg = results.get("config", {})
    rows = []
    for key, entry in p.get("knn", {}).items():                 # every k, in the configured order
        rows.append(["kNN", f"k={key[1:]}, t={cfg.get('knn_temperature', 0.07):g}", "100%", *_cells(entry)])
    for protocol, key, label, setting in ROWS:
        entry = p.get(protocol, {}).get(key)
        if entry:
            rows.append([label, setting, "100%", *_cells(entry)])
    for share, entry in _by_share(p.get("linear", {}).get("logistic_shares", {})):
        rows.append(["linear", "logistic regression", share, *_cells(entry)])
    for share, entry in _by_share(p.get("semi", {})):
        rows.append(["semi-supervised", f"fine-tune, {entry.get('epochs')} epochs", share, *_cells(entry)])
    for key, setting in (("linear", "logistic regression"), ("finetune", "fine-tune")):
        entry = p.get("transfer", {}).get(key)
        if entry:
            rows.append(["transfer", setting, "100%", *_cells(entry)])
    for share, entry in _by_share(results.get("supervised_from_scratch", {})):
        rows.append(["supervised from scratch", f"{entry.get('epochs')} epochs", share, "–", "–", "–",
                     _fmt(entry), "–"])
    return rows


def _by_share(entries: dict) -> list:
    """``{"10%": .., "1%": ..}`` items in increasing label share."""
    return sorted(entries.items(), key=lambda kv: float(kv[0].rstrip("%")))


def header(results: dict) -> list[str]:
    name = results.get("encoder", {}).get("method") or "learned"
    return ["protocol", "setting", "labels", name, "raw pixels", "random init", "supervised", f"{name} − random"]


def markdown_table(results: dict) -> str:
    head = header(results)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(results)]
    return "\n".join(lines)


def text_table(results: dict) -> str:
    """The table for a terminal: aligned columns."""
    rows = [header(results)] + table_rows(results)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for n, r in enumerate(rows):
        out.append("  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def caption(results: dict) -> str:
    enc = results.get("encoder", {})
    arch = enc.get("architecture", {})
    data = results.get("data", {})
    val = data.get("val", {})
    options = ", ".join(f"{k}={v}" for k, v in (arch.get("options") or {}).items())
    return (f"Top-1 accuracy (%) on {val.get('spec')} ({val.get('samples')} samples, {val.get('classes')} classes) "
            f"of `{enc.get('method')}` ({arch.get('name')}{', ' + options if options else ''}, step "
            f"{enc.get('step')}); the baselines have the same architecture and labels. `random init`: random "
            "weights under the same protocol; `raw pixels`: the eval view's pixels as the features; `supervised`: trained from scratch with the labels (all of them "
            "for frozen-feature protocols at 100%, the same subset for rows of fewer labels). Top-5 is in results.json.")


def markdown(results: dict) -> str:
    lines = [f"# clvr eval: {results.get('encoder', {}).get('method')}", "", markdown_table(results), "",
             caption(results), ""]
    notes = results.get("notes") or []
    if notes:
        lines += ["Notes:", ""] + [f"- {n}" for n in notes] + [""]
    samples = results.get("skipped_samples") or []
    if samples:
        lines += ["Samples skipped as unreadable:", ""] + \
            [f"- {e.get('set')}: {e.get('shard')}: key {e.get('key')}: {e.get('reason')}" for e in samples[:100]]
        lines += ([f"- ... and {len(samples) - 100} more (results.json)"] if len(samples) > 100 else []) + [""]
    skipped = results.get("skipped") or {}
    if skipped:
        lines += ["Not run or not drawn:", ""] + [f"- {k}: {v}" for k, v in skipped.items()] + [""]
    subsets = results.get("subsets") or {}
    if subsets:
        lines += ["Label subsets: " + ", ".join(f"{k} `{v}`" for k, v in subsets.items()), ""]
    for name, path in (results.get("plots") or {}).items():
        lines += [f"## {name}", "", f"![{name}]({path})", ""]
    return "\n".join(lines)


def _write(path: Path, text: str) -> None:
    from ..shards.fileio import write_atomic
    write_atomic(path, text.encode(), tmp_suffix=f".{os.getpid()}.tmp")


def write_results(evaluation) -> None:
    """``results.json`` and ``results.md`` of an :class:`~.evaluate.Evaluation` as it stands."""
    out = evaluation.out
    results = evaluation.results
    if hasattr(evaluation, "notes"):
        results["notes"] = evaluation.notes()
    _write(out / "results.json", json.dumps(results, indent=1, allow_nan=False) + "\n")
    _write(out / "results.md", markdown(results))


def write_plots(evaluation) -> dict:
    """The figures, each in its own try: one that cannot be drawn is recorded in ``skipped``
    with the reason, and the others are still drawn."""
    from . import plots
    ev = evaluation
    out, results = ev.out, ev.results
    drawn, skipped = {}, results.setdefault("skipped", {})

    def attempt(name, filename, draw):
        try:
            draw(out / filename)
            drawn[name] = filename
            skipped.pop(name, None)
        except Exception as e:  # a figure never stops the report; the reason is kept
            skipped[name] = f"{type(e).__name__}: {e}"

    metrics = ev.run_dir / "metrics.jsonl" if ev.run_dir else None
    records = None
    if metrics is not None and metrics.is_file():
        try:
            records = plots.read_metrics(metrics)
        except (OSError, ValueError) as e:          # e.g. a killed run's half-written last line
            skipped["pre-training curves"] = f"{type(e).__name__}: {e}"
    else:
        skipped["pre-training curves"] = ("no run directory with metrics.jsonl beside the encoder "
                                          "(evaluate the run directory to get them)")
    if records is not None:
        have = plots.curves_available(records)
        attempt("pre-training loss", "loss_curve.png",
                lambda p: plots.loss_curve(records, p, title=f"{ev.name}: pre-training loss"))
        if have["knn"]:
            attempt("kNN accuracy during pre-training", "knn_curve.png",
                    lambda p: plots.knn_curve(records, p, title=f"{ev.name}: kNN on the run's val shards",
                                              baselines=_monitor_baseline(ev)))
        else:
            skipped["kNN accuracy during pre-training"] = "the run did not monitor kNN (clvr train --val)"
    panels = {}
    labels = None
    for which in ev.which():
        if which == "supervised" and "100%" not in results.get("supervised_from_scratch", {}):
            continue
        try:
            f, lab, _ = ev.features(which, "val")
        except Exception as e:
            skipped[f"embedding of {which}"] = f"{type(e).__name__}: {e}"
            continue
        panels[{"learned": ev.name, "random_init": "random init", "raw_pixels": "raw pixels"}.get(which, which)] = f
        labels = lab
    if panels:
        classes = ev.shards["val"].classes
        for method in ("pca", "tsne"):
            attempt(f"val features ({method.upper() if method == 'pca' else 't-SNE'})", f"embedding_{method}.png",
                    lambda p, m=method: plots.embedding_plot(panels, labels, p, method=m, class_names=classes,
                                                             title=f"val features, {m.upper() if m == 'pca' else 't-SNE'}",
                                                             seed=ev.config.seed,
                                                             max_points=ev.config.tsne_points))
    try:
        views = _run_views(ev)
    except Exception as e:  # an unreadable config.yaml, a method no longer registered
        views = None
        skipped["views of the pre-training recipe"] = f"{type(e).__name__}: {e}"
    if views is not None:
        from ..pipeline.preview import preview
        attempt("views of the pre-training recipe", "views.png",
                lambda p: preview(views["data"], views["views"], p, recipe=views["recipe"],
                                  view_options=views["view_options"], samples=6, device=ev.config.device))
    elif "views of the pre-training recipe" not in skipped:
        skipped["views of the pre-training recipe"] = "no run directory with config.yaml beside the encoder"
    results["plots"] = drawn
    write_results(ev)
    return drawn


def _monitor_baseline(ev) -> dict | None:
    """Random init's kNN top-1 as a line on the monitor's curve, only when it measures the same
    thing: the run's --val shards and k (from the run's data.json and config.yaml)."""
    import yaml
    knn = ev.results.get("protocols", {}).get("knn", {})
    try:
        val = json.loads((ev.run_dir / "data.json").read_text()).get("val")
        k = (yaml.safe_load((ev.run_dir / "config.yaml").read_text()) or {}).get("knn_k")
    except (OSError, ValueError, AttributeError, yaml.YAMLError):
        return None
    entry = knn.get(f"k{k}", {})
    if val is None or Path(str(val)).resolve() != Path(str(ev.sets["val"])).resolve() or "random_init" not in entry:
        return None
    return {"random init": entry["random_init"]["top1"]}


def _run_views(ev):
    """The views and recipe the run trained with (from its config.yaml and its method)."""
    if ev.run_dir is None or not (ev.run_dir / "config.yaml").is_file():
        return None
    import yaml

    from .registry import get_method
    cfg = yaml.safe_load((ev.run_dir / "config.yaml").read_text()) or {}
    cls = get_method(cfg.get("method", ev.name))
    data = cfg.get("data") or {}
    recipe = data.get("recipe") or cls.recipe
    shards = ev.sets["train"]                    # the run's own shards when it recorded them
    specs = ev.run_dir / "data.json"
    if specs.is_file():
        try:
            recorded = json.loads(specs.read_text()).get("data")
        except (OSError, ValueError, AttributeError):
            recorded = None
        if recorded and Path(str(recorded)).exists():
            shards = recorded
    return {"data": shards, "views": data.get("views") or cls.views, "recipe": recipe,
            "view_options": {**cls.view_options, **(data.get("view_options") or {})}}
