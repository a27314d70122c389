"""The PNG figures of ``clvr eval``'s report.

Each drawing function writes one PNG and returns its path:

- :func:`loss_curve`       the pre-training loss against the optimizer step, from the training
  records of ``metrics.jsonl``. Steps skipped for a non-finite loss (``on_nonfinite=skip``, logged
  with loss NaN) are left out, and the title says how many. The learning rate, when logged, is
  drawn on a second y axis (right, lighter colour). The top axis is in epochs: exact when the run
  logged kNN records (their fractional epoch gives the steps per epoch), otherwise ticks at the
  first logged step of each epoch.
- :func:`knn_curve`        the kNN monitor's top-1 (and top-5) accuracy against the epoch, with
  markers, y from 0 to 1, the last value written next to its point, and optional dashed reference
  lines (``baselines={"random init": 0.12}``).
- :func:`embedding_plot`   one scatter plot per set of features (e.g. the trained encoder next to a
  random-init one) of the same samples, projected to 2-D by PCA or t-SNE and coloured by class, so
  one sees whether the representation separates the classes.

and the pieces they are made of: :func:`read_metrics` (``metrics.jsonl`` -> records, the last
record of each step when a resumed run logged a step twice), :func:`curves_available`,
:func:`pca` (numpy, deterministic signs) and :func:`tsne` (scikit-learn, on a seeded subsample).

Figures are drawn with ``matplotlib.figure.Figure`` and the Agg canvas directly, never pyplot: no
global backend is switched, no window can open, and nothing is left in pyplot's figure registry.
numpy, matplotlib (>= 3.7) and scikit-learn are imported by the functions that need them, so
importing this module is cheap. A PNG is written to a temporary file in its directory and renamed over the
target (``os.replace``): a reader never sees half a PNG, and a failed drawing leaves no file. The
figure's title and a one-line summary are stored in the PNG's ``Title`` and ``Description`` text
chunks.

Features and labels may be numpy arrays or torch tensors (torch is never imported here).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

if TYPE_CHECKING:
    import numpy as np

__all__ = ["curves_available", "embedding_plot", "knn_curve", "loss_curve", "pca", "read_metrics", "tsne"]

LOSS_COLOR, LR_COLOR = "tab:blue", "tab:orange"
TOP1_COLOR, TOP5_COLOR = "tab:blue", "tab:green"
MIN_TSNE_POINTS = 5
MAX_LEGEND_CLASSES = 30
DPI = 100


# -- metrics.jsonl --------------------------------------------------------------------------------

def _kind(record: Mapping) -> str:
    """"knn" for a kNN monitor record, "event" for a named event (a collapse), "train" for a
    training one."""
    if "event" in record:
        return "event"
    return "knn" if "knn_top1" in record else "train"


def read_metrics(path) -> list[dict]:
    """The records of a ``metrics.jsonl`` written by ``clvr train``, sorted by step.

    One JSON object per line; blank lines are ignored. A run killed and resumed logs some steps
    again: of the records of one step, the last one of each kind (training record, kNN record) is
    kept. At one step the training record comes before the kNN record, as the trainer writes them.
    Raises ValueError naming the file and line for a line that is not a JSON object with an integer
    "step".
    """
    path = Path(path)
    last: dict[tuple[int, str], dict] = {}
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {number}: not valid JSON ({e.msg}, column {e.colno})") from None
            step = record.get("step") if isinstance(record, dict) else None
            if not isinstance(step, int) or isinstance(step, bool):
                raise ValueError(f"{path}, line {number}: expected a JSON object with an integer \"step\", "
                                 f"got {line.strip()[:80]!r}")
            key = (step, _kind(record))
            last.pop(key, None)  # re-insert: the dict keeps the last occurrence
            last[key] = record
    order = {"train": 0, "event": 1, "knn": 2}
    return [last[k] for k in sorted(last, key=lambda k: (k[0], order[k[1]]))]


def _training(records: Iterable[Mapping]) -> list[Mapping]:
    return [r for r in records if "loss" in r and _kind(r) == "train"]


def _knn(records: Iterable[Mapping]) -> list[Mapping]:
    return [r for r in records if "knn_top1" in r]


def curves_available(records: Sequence[Mapping]) -> dict:
    """Which curves ``records`` can draw: ``{"loss": bool, "knn": bool}``."""
    return {"loss": bool(_training(records)), "knn": bool(_knn(records))}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# -- writing a figure -----------------------------------------------------------------------------

def _figure(width: float, height: float):
    try:
        from matplotlib.figure import Figure
    except ImportError as e:  # not among clvr's required dependencies
        raise ImportError("clvr's report figures need matplotlib (>= 3.7): pip install matplotlib") from e
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _png_path(out) -> Path:
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"{out}: a figure is written as PNG; give a path ending in .png")
    return out


def _save(fig, out: Path, title: str, description: str) -> Path:
    """Render ``fig`` to ``out`` atomically: a temporary file in the same directory, then os.replace."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    canvas = FigureCanvasAgg(fig)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0o666 & ~umask, like open()
    try:
        with os.fdopen(fd, "wb") as fh:
            canvas.print_png(fh, metadata={"Title": title, "Description": description})
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


# -- loss curve -----------------------------------------------------------------------------------

def _steps_per_epoch(records: Sequence[Mapping]) -> float | None:
    """Steps per epoch from the kNN records (their epoch is step / steps_per_epoch), if they agree."""
    ratios = {round(r["step"] / r["epoch"], 6) for r in _knn(records)
              if _finite(r.get("epoch")) and r["epoch"] > 0 and _finite(r.get("step"))}
    return ratios.pop() if len(ratios) == 1 else None


def _epoch_ticks(train: Sequence[Mapping], most: int = 10) -> tuple[list[int], list[str]]:
    """The first logged step of each epoch (from the training records' integer epoch), at most ``most``."""
    firsts, seen = [], set()
    for r in train:
        e = r.get("epoch")
        if _finite(e) and e not in seen:
            seen.add(e)
            firsts.append((r["step"], e))
    every = max(1, math.ceil(len(firsts) / most))
    firsts = firsts[::every]
    return [s for s, _ in firsts], [f"{e:g}" for _, e in firsts]


def _epoch_axis(ax, records: Sequence[Mapping], train: Sequence[Mapping]) -> None:
    spe = _steps_per_epoch(records)
    if spe:
        top = ax.secondary_xaxis("top", functions=(lambda s: s / spe, lambda e: e * spe))
        top.set_xlabel("epoch")
        return
    steps, labels = _epoch_ticks(train)
    if len(steps) > 1:
        top = ax.secondary_xaxis("top")
        top.set_xticks(steps, labels=labels)
        top.set_xlabel("epoch (first logged step of each)")


def loss_curve(records: Sequence[Mapping], out, title: str = "") -> Path:
    """Draw the pre-training loss against the step (learning rate on a second axis) to ``out``.

    ``records`` are :func:`read_metrics`' (training records are those with a "loss"). Non-finite
    losses (skipped steps) are left out and counted in the title. Raises ValueError when there is
    no training record.
    """
    out = _png_path(out)
    train = _training(records)
    if not train:
        raise ValueError("no training record (a line with \"loss\") to draw the loss curve from; "
                         "is this the metrics.jsonl of a `clvr train` run?")
    kept = [r for r in train if _finite(r["loss"])]
    skipped = len(train) - len(kept)
    heading = title or "pre-training loss"
    if skipped:
        heading += f" ({skipped} skipped step{'s' if skipped != 1 else ''} with non-finite loss not shown)"

    fig = _figure(8, 4.5)
    ax = fig.subplots()
    handles = ax.plot([r["step"] for r in kept], [r["loss"] for r in kept], color=LOSS_COLOR, lw=1.5,
                      marker="." if len(kept) < 50 else None, label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss", color=LOSS_COLOR)
    ax.grid(alpha=0.3)
    lr = [(r["step"], r["lr"]) for r in train if _finite(r.get("lr"))]
    if lr:
        twin = ax.twinx()
        handles += twin.plot(*zip(*lr), color=LR_COLOR, alpha=0.55, lw=1.2, label="learning rate")
        twin.set_ylabel("learning rate", color=LR_COLOR)
        twin.tick_params(axis="y", colors=LR_COLOR)
        twin.set_ylim(bottom=0)
    _epoch_axis(ax, records, train)
    ax.legend(handles=handles, loc="upper right")
    ax.set_title(heading)
    summary = f"loss at {len(kept)} logged steps, {skipped} skipped (non-finite)"
    if kept:
        summary += f"; last loss {kept[-1]['loss']:.4g} at step {kept[-1]['step']}"
    return _save(fig, out, heading, summary)


# -- kNN curve ------------------------------------------------------------------------------------

def _check_baselines(baselines: Mapping[str, float] | None) -> dict[str, float]:
    checked = {}
    for name, value in (baselines or {}).items():
        if not _finite(value):
            raise ValueError(f"baseline {name!r}: expected a finite number, got {value!r}")
        checked[str(name)] = float(value)
    return checked


def knn_curve(records: Sequence[Mapping], out, title: str = "", *,
              baselines: Mapping[str, float] | None = None) -> Path:
    """Draw the kNN monitor's top-1 (and top-5) accuracy against the epoch to ``out``.

    ``records`` are :func:`read_metrics`' (kNN records are those with "knn_top1"); the x axis is the
    epoch, or the step when a record has no epoch. ``baselines`` maps a name to an accuracy drawn
    as a dashed horizontal line. Raises ValueError when there is no kNN record.
    """
    out = _png_path(out)
    knn = _knn(records)
    if not knn:
        raise ValueError("no kNN record (a line with \"knn_top1\") to draw the kNN curve from; "
                         "the run needs --val and knn_every > 0")
    refs = _check_baselines(baselines)
    by_epoch = all(_finite(r.get("epoch")) for r in knn)
    xname = "epoch" if by_epoch else "step"
    heading = title or "kNN accuracy (monitor)"

    fig = _figure(7, 4.5)
    ax = fig.subplots()
    last = []
    for key, label, color, marker in (("knn_top1", "top-1", TOP1_COLOR, "o"), ("knn_top5", "top-5", TOP5_COLOR, "s")):
        points = [(r[xname], r[key]) for r in knn if _finite(r.get(key))]
        if not points:
            continue
        xs, ys = zip(*points)
        ax.plot(xs, ys, color=color, marker=marker, ms=5, lw=1.5, label=label)
        ax.annotate(f"{ys[-1]:.3f}", xy=(xs[-1], ys[-1]), xytext=(5, 5), textcoords="offset points",
                    color=color, fontsize=9)
        last.append(f"last {label} {ys[-1]:.4f} at {xname} {xs[-1]:g}")
    for (name, value), color in zip(refs.items(), ("0.35", "tab:red", "tab:purple", "tab:brown", "tab:gray") * 10):
        ax.axhline(value, ls="--", lw=1, color=color, label=f"{name} ({value:.3f})")
    ax.set_ylim(0, 1)
    ax.margins(x=0.08)  # room for the last value's label
    ax.set_xlabel(xname)
    ax.set_ylabel("kNN accuracy")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(heading)
    return _save(fig, out, heading, "; ".join(last) or "no finite kNN accuracy")


# -- projections ----------------------------------------------------------------------------------

def _numpy(x) -> np.ndarray:
    """A numpy array from a numpy array, a torch tensor (detached, on the CPU) or a nested sequence."""
    import numpy as np
    if hasattr(x, "detach"):
        x = x.detach()
    if hasattr(x, "cpu"):
        x = x.cpu()
    if str(getattr(x, "dtype", "")) == "torch.bfloat16":  # numpy has no bfloat16
        x = x.float()
    return np.asarray(x)


def _features(features, name: str = "features") -> np.ndarray:
    import numpy as np
    x = _numpy(features)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D (samples, dimensions) array, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise ValueError(f"{name}: expected real numbers, got dtype {x.dtype}")
    x = x.astype(np.float64)
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: {int((~np.isfinite(x)).sum())} non-finite value(s) (NaN or inf)")
    return x


def pca(features, dim: int = 2) -> np.ndarray:
    """Project ``features`` (N, D) on their ``dim`` principal components: (N, dim) float64.

    Centres the rows and takes the SVD in float64; component k is the k-th right singular vector,
    its sign fixed so that its largest-magnitude loading is positive (the first such one on a tie),
    so the projection is the same on every run and platform.
    """
    import numpy as np
    x = _features(features)
    n, d = x.shape
    if not 1 <= dim <= min(n, d):
        raise ValueError(f"pca: dim must be between 1 and min(samples, dimensions) = {min(n, d)}, got {dim}")
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    components = vt[:dim]
    signs = np.sign(components[np.arange(dim), np.abs(components).argmax(axis=1)])
    components = components * np.where(signs == 0, 1.0, signs)[:, None]
    return centred @ components.T


def _subsample(n: int, max_points: int, seed: int) -> np.ndarray:
    """Sorted row indices: all ``n`` rows, or ``max_points`` of them drawn uniformly without replacement."""
    import numpy as np
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


def _perplexity(n: int) -> float:
    """sklearn's default 30, lowered for small sets to (n - 1) / 3, but not below 2 (< n, as TSNE needs)."""
    return max(min(30.0, (n - 1) / 3), 2.0)


def tsne(features, seed: int = 0, max_points: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """2-D t-SNE of at most ``max_points`` rows of ``features``: (points (M, 2) float64, indices (M,)).

    Subsampling: when there are more than ``max_points`` rows, ``max_points`` of them are drawn
    uniformly at random without replacement, regardless of class, by
    ``numpy.random.default_rng(seed)``; the indices are returned sorted, and ``points[i]`` is the
    embedding of row ``indices[i]``. The same (N, max_points, seed) always draws the same rows, so
    several feature sets of the same samples are embedded on the same points. Otherwise every row
    is used. scikit-learn's TSNE runs with init="pca", random_state=seed and a perplexity of
    min(30, (M - 1) / 3), at least 2.
    """
    import numpy as np
    x = _features(features)
    if max_points < MIN_TSNE_POINTS:
        raise ValueError(f"tsne: max_points must be at least {MIN_TSNE_POINTS}, got {max_points}")
    if len(x) < MIN_TSNE_POINTS:
        raise ValueError(f"tsne: needs at least {MIN_TSNE_POINTS} samples, got {len(x)}")
    from sklearn.manifold import TSNE
    index = _subsample(len(x), max_points, seed)
    model = TSNE(n_components=2, init="pca", perplexity=_perplexity(len(index)), random_state=seed)
    return model.fit_transform(x[index]).astype(np.float64), index


# -- embedding plot -------------------------------------------------------------------------------

def _labels(labels) -> np.ndarray:
    import numpy as np
    y = _numpy(labels)
    if y.ndim != 1:
        raise ValueError(f"labels: expected a 1-D array of class indices, got shape {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if not (np.issubdtype(y.dtype, np.floating) and np.isfinite(y).all() and (y == np.round(y)).all()):
            raise ValueError(f"labels: expected integer class indices, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        bad = int((y < 0).sum())
        raise ValueError(f"labels: class indices must be >= 0; {bad} label(s) are negative (smallest {y.min()})")
    return y


def _class_names(class_names, present: np.ndarray) -> dict[int, str]:
    if class_names is None:
        return {int(c): str(int(c)) for c in present}
    if isinstance(class_names, Mapping):
        missing = [int(c) for c in present if int(c) not in class_names]
        if missing:
            raise ValueError(f"class_names: no name for class(es) {missing[:10]}")
        return {int(c): str(class_names[int(c)]) for c in present}
    names = list(class_names)
    if present.size and present.max() >= len(names):
        raise ValueError(f"class_names: {len(names)} name(s), but the labels go up to {present.max()}")
    return {int(c): str(names[int(c)]) for c in present}


def _colors(num_classes: int):
    """A qualitative palette indexed by class: tab10, tab20 beyond 10 classes, sampled turbo beyond 20."""
    import numpy as np
    from matplotlib import colormaps
    if num_classes <= 10:
        return colormaps["tab10"].colors[:num_classes]
    if num_classes <= 20:
        return colormaps["tab20"].colors[:num_classes]
    return colormaps["turbo"](np.linspace(0, 1, num_classes))


def _project(panels: Mapping[str, np.ndarray], method: str, seed: int, max_points: int):
    """{name: (M, 2) points} and the shared sorted row indices they are of."""
    n = len(next(iter(panels.values())))
    if method == "pca":
        index = _subsample(n, max_points, seed)
        return {name: pca(x, 2)[index] for name, x in panels.items()}, index
    projected, index = {}, None
    for name, x in panels.items():
        projected[name], index = tsne(x, seed=seed, max_points=max_points)
    return projected, index


def embedding_plot(panels: Mapping[str, Any], labels, out, method: str = "pca", class_names=None,
                   title: str = "", seed: int = 0, max_points: int = 2000) -> Path:
    """Scatter plots of 2-D projections of feature sets of the same samples, coloured by class.

    ``panels`` maps a name (the subplot's title) to (N, D) features; all share ``labels`` (N,),
    integer classes >= 0. ``method`` is "pca" (fitted on all rows) or "tsne". At most
    ``max_points`` points are drawn, the same seeded class-agnostic subsample (see :func:`tsne`)
    in every panel. ``class_names``: a sequence indexed by class or a mapping class -> name
    (default: the class numbers). Colours are per class, the same in every panel.
    """
    import numpy as np
    out = _png_path(out)
    if method not in ("pca", "tsne"):
        raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}")
    if not panels:
        raise ValueError("panels: no features to draw (give at least one name -> features)")
    y = _labels(labels)
    arrays = {}
    for name, features in panels.items():
        arrays[name] = x = _features(features, f"panel {name!r}")
        if len(x) != len(y):
            raise ValueError(f"panel {name!r} has {len(x)} rows but there are {len(y)} labels; "
                             "every panel must hold the features of the labelled samples, in order")
    if len(y) < 2:
        raise ValueError(f"embedding_plot: needs at least 2 samples, got {len(y)}")
    if max_points < 2:
        raise ValueError(f"max_points must be at least 2, got {max_points}")
    present = np.unique(y)
    names = _class_names(class_names, present)
    projected, index = _project(arrays, method, seed, max_points)
    colors = np.asarray(_colors(int(present.max()) + 1))
    shown = y[index]
    order = np.random.default_rng(seed).permutation(len(index))  # no class systematically on top

    fig = _figure(4.2 * len(panels) + 1.8, 4.4)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    axis = "PC" if method == "pca" else "t-SNE"
    size = 14 if len(index) <= 500 else 6
    for ax, (name, points) in zip(axes, projected.items()):
        ax.scatter(points[order, 0], points[order, 1], c=colors[shown[order]], s=size, linewidths=0, alpha=0.85)
        ax.set_title(name)
        ax.set_xlabel(f"{axis} 1")
        ax.set_ylabel(f"{axis} 2")
        if method == "pca":
            ax.set_aspect("equal", adjustable="datalim")
        ax.tick_params(labelsize=7)
    if len(present) <= MAX_LEGEND_CLASSES:
        from matplotlib.lines import Line2D
        handles = [Line2D([], [], ls="", marker="o", color=colors[c], label=names[int(c)]) for c in present]
        fig.legend(handles=handles, loc="outside right center", title="class", fontsize=8,
                   ncols=1 if len(present) <= 15 else 2)
    heading = title or f"{'PCA' if method == 'pca' else 't-SNE'} of the features"
    heading += f" ({len(index)} of {len(y)} samples)" if len(index) < len(y) else f" ({len(y)} samples)"
    fig.suptitle(heading)
    summary = f"{method} of {', '.join(map(repr, arrays))}; {len(index)} points, {len(present)} classes"
    return _save(fig, out, heading, summary)
