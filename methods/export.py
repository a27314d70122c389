"""Exported encoders: a trained backbone as ``NAME.safetensors`` plus a JSON sidecar ``NAME.json``.

The weights file holds the backbone's tensors (parameters and buffers such as BatchNorm running
statistics) under the backbone's own names, so plain ``torch`` + ``safetensors`` read it without
clvr; the sidecar says how to rebuild the network (``architecture``: ``kind`` image or video,
``name`` and ``options`` for :func:`clvr.methods.backbones.backbone` or
:func:`clvr.methods.video_backbones.video_backbone`; ``patch_grid`` for an encoder read on the
features of a grid of patches, :class:`~clvr.methods.patch_grid.PatchGridPool`) and how to feed it (``input``: mean, std,
size, layout), where it came from (method, step, checkpoint, clvr version) and the weights'
sha256. :func:`load_encoder` rebuilds it with clvr's network modules only, not its training code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from .. import __version__
from ..shards.fileio import atomic_target, sha256_file, write_atomic
from .checkpoint import CHECKPOINTS, CheckpointError, latest_checkpoint, load_checkpoint
from .patch_grid import PatchGridPool, check_grid

#: the sidecar's ``format``, and the version of its fields
FORMAT = "clvr-encoder"
FORMAT_VERSION = 1
KINDS = ("image", "video")


class EncoderFileError(ValueError):
    """An exported encoder cannot be read or does not match its sidecar; the message names the file."""


def sidecar_path(path) -> Path:
    """The JSON sidecar of a weights file: the same path with ``.json`` for ``.safetensors``."""
    return Path(path).with_suffix(".json")


def export_encoder(source, out, *, verify: bool = True) -> tuple[Path, Path]:
    """Export the encoder of a checkpoint written by ``clvr train``: ``source`` is a checkpoint
    file or a run directory (its latest checkpoint). Writes ``out`` (a ``.safetensors`` file) and
    its JSON sidecar, both atomically; returns both paths. With ``verify`` the architecture is
    built first and must have exactly the checkpoint's tensor names and shapes, so that an
    export which :func:`load_encoder` could not read is never written."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"export to {out}: the file name must end with .safetensors "
                         "(the JSON sidecar goes beside it with .json)")
    ckpt = _checkpoint_of(source)
    state = load_checkpoint(ckpt)
    entry = state.get("encoder")
    if not isinstance(entry, dict):
        raise CheckpointError(f"checkpoint {ckpt} has no 'encoder' entry: it was not written by clvr train, "
                              "so it does not say which weights are the encoder nor how to rebuild it")
    prefix = _field(entry, "prefix", str, ckpt)
    architecture = _architecture(_field(entry, "architecture", dict, ckpt), f"checkpoint {ckpt}", CheckpointError)
    feed = _field(entry, "input", dict, ckpt)
    model = state.get("model")
    if not isinstance(model, dict):
        raise CheckpointError(f"checkpoint {ckpt} has no 'model' state dict")
    tensors = {}
    for key, value in model.items():
        if key.startswith(prefix):
            if not isinstance(value, torch.Tensor):
                raise CheckpointError(f"checkpoint {ckpt}: model entry {key!r} is a {type(value).__name__}, "
                                      "not a tensor")
            # a copy of its own: safetensors refuses tensors that share memory
            tensors[key[len(prefix):]] = value.detach().to("cpu").contiguous().clone()
    if not tensors:
        near = sorted({k.split(".")[0] + "." for k in model})
        raise CheckpointError(f"checkpoint {ckpt}: no model key starts with the encoder prefix {prefix!r} "
                              f"(the model's top-level names: {', '.join(near) or 'none'})")
    if verify:
        _check_tensors(_build(architecture, f"checkpoint {ckpt}"), tensors, f"checkpoint {ckpt}")

    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_target(out, f".{os.getpid()}.tmp") as tmp:
        save_file(tensors, tmp, metadata={"format": "pt"})
        digest = sha256_file(tmp)
    sidecar = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "weights": out.name, "sha256": digest, "tensors": len(tensors),
        "architecture": architecture, "input": feed,
        "method": state.get("method"), "step": state.get("step"),
        "source": str(Path(ckpt).resolve()), "clvr_version": __version__,
    }
    try:
        text = json.dumps(sidecar, indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {ckpt}: its encoder entry cannot be written as JSON ({e})") from None
    side = sidecar_path(out)
    write_atomic(side, text.encode(), tmp_suffix=f".{os.getpid()}.tmp")
    return out, side


def describe(path) -> dict:
    """The sidecar of an exported encoder (``path``: its ``.safetensors`` or ``.json`` file)."""
    path = Path(path)
    side = path if path.suffix == ".json" else sidecar_path(path)
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EncoderFileError(f"{path}: no sidecar {side}; an exported encoder is a .safetensors file with "
                               "a .json of the same name beside it (written by clvr export)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EncoderFileError(f"sidecar {side} is not valid JSON ({e}); export the encoder again") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise EncoderFileError(f"{side} is not the sidecar of a clvr encoder (no \"format\": \"{FORMAT}\")")
    if not isinstance(meta.get("format_version"), int) or meta["format_version"] > FORMAT_VERSION:
        raise EncoderFileError(f"sidecar {side} has format_version {meta.get('format_version')!r}; this clvr "
                               f"({__version__}) reads up to {FORMAT_VERSION}: upgrade clvr")
    _architecture(meta.get("architecture"), f"sidecar {side}")
    return meta


def load_encoder(path, map_location="cpu", *, verify: bool = True) -> nn.Module:
    """Rebuild an exported encoder with clvr's backbone modules and its weights (loaded strictly:
    any missing, unexpected or mis-shaped tensor is an error listing them), in eval mode on
    ``map_location``. With ``verify`` the weights must match the sidecar's sha256."""
    path = Path(path)
    meta = describe(path)
    weights = path.with_suffix(".safetensors")
    if not weights.is_file():
        raise EncoderFileError(f"{weights}: no such weights file (its sidecar is {sidecar_path(weights)})")
    if verify and meta.get("sha256") and sha256_file(weights) != meta["sha256"]:
        raise EncoderFileError(f"{weights} does not match the sha256 in its sidecar {sidecar_path(weights)}: "
                               "the file changed after export, or an export was interrupted; export it again")

    from safetensors.torch import load_file

    try:
        tensors = load_file(str(weights), device="cpu")
    except Exception as e:
        raise EncoderFileError(f"{weights} cannot be read as safetensors ({e}); export it again") from None
    architecture = meta["architecture"]
    model = _build(architecture, f"{weights}")
    _check_tensors(model, tensors, f"{weights}")
    floats = {t.dtype for t in tensors.values() if t.is_floating_point()}
    if len(floats) == 1 and floats != {torch.get_default_dtype()}:
        model.to(floats.pop())            # e.g. weights exported in bfloat16 stay bfloat16
    model.load_state_dict(tensors, strict=True)
    features = architecture.get("num_features")
    if features is not None and getattr(model, "num_features", features) != features:
        raise EncoderFileError(f"{weights}: the sidecar says {features} features, the rebuilt "
                               f"{architecture['name']} gives {model.num_features}")
    return model.to(map_location).eval()


# -- helpers -----------------------------------------------------------------------------------

def _checkpoint_of(source) -> Path:
    source = Path(source)
    if source.is_dir():
        found = latest_checkpoint(source)
        if found is None:
            raise CheckpointError(f"{source}: no checkpoints in {source / CHECKPOINTS}; give a run directory "
                                  "of clvr train or a checkpoint file")
        return found
    if not source.exists():
        raise CheckpointError(f"{source}: no such checkpoint file or run directory")
    return source


def _field(entry: dict, name: str, kind: type, ckpt):
    value = entry.get(name)
    if not isinstance(value, kind):
        raise CheckpointError(f"checkpoint {ckpt}: encoder entry {name!r} must be a {kind.__name__}, "
                              f"got {value!r}")
    return value


def _architecture(arch, where: str, error: type = EncoderFileError) -> dict:
    if not isinstance(arch, dict):
        raise error(f"{where}: 'architecture' must be a dict, got {arch!r}")
    if arch.get("kind") not in KINDS:
        raise error(f"{where}: architecture kind = {arch.get('kind')!r}; choose "
                               f"{' or '.join(map(repr, KINDS))}")
    if not isinstance(arch.get("name"), str):
        raise error(f"{where}: architecture name = {arch.get('name')!r}; must be a backbone name")
    if not isinstance(arch.get("options", {}), dict):
        raise error(f"{where}: architecture options = {arch.get('options')!r}; must be a dict")
    if arch.get("patch_grid") is not None:
        try:
            check_grid(arch["patch_grid"], f"{where}: architecture patch_grid")
        except ValueError as e:
            raise error(str(e)) from None
    return arch


def _build(arch: dict, where: str) -> nn.Module:
    if arch["kind"] == "image":
        from .backbones import backbone as build
    else:
        from .video_backbones import video_backbone as build
    try:
        model = build(arch["name"], **dict(arch.get("options") or {}))
    except (TypeError, ValueError) as e:
        raise EncoderFileError(f"{where}: cannot build the {arch['kind']} backbone {arch['name']!r} "
                               f"with options {arch.get('options') or {}}: {e}") from None
    # a method trained on patches (CPC) is read on its patch grid; the state dict stays the backbone's
    return PatchGridPool(model, **arch["patch_grid"]) if arch.get("patch_grid") else model


def _check_tensors(model: nn.Module, tensors: dict, where: str) -> None:
    """The names and shapes of ``tensors`` must be exactly those of ``model``'s state dict."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    shapes = sorted(f"{k} {tuple(tensors[k].shape)} (the network has {expected[k]})"
                    for k in set(expected) & set(tensors) if tuple(tensors[k].shape) != expected[k])
    problems = [f"{label} ({len(keys)}): {', '.join(keys[:8])}{', ...' if len(keys) > 8 else ''}"
                for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes))
                if keys]
    if problems:
        raise EncoderFileError(f"{where}: the weights do not fit {type(model).__name__}: " + "; ".join(problems))


