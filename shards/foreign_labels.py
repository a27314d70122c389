"""Where the labels of a foreign WebDataset set come from, and how they become class ids
(``clvr shard index --label-key`` / ``--classes-from``; the rules are in :mod:`.foreign`).

A label is read as text from a component (``KEY.cls``: an integer id or a class name) or from a
field of the sample's ``.json``. Integer labels are the class ids themselves (``-1``: no label);
other labels are class names, numbered in sorted order or as another set numbers them.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ShardError
from .format import CLS_EXT, META_EXT, UNLABELLED
from .manifest import read_manifest

if TYPE_CHECKING:          # (foreign imports this module)
    from .foreign import ForeignSample

#: components that hold a sample's label as text (an integer id or a class name), in the order tried
LABEL_EXTS = (CLS_EXT, "cls2", "label", "class", "target")
#: fields of a ``.json`` member tried for the label when no label component exists
JSON_LABEL_FIELDS = ("label", "cls", "class", "class_id", "class_idx", "label_id", "target", "category_id",
                     "class_name", "category")
_INT = re.compile(r"[+-]?\d+")


def label_source_text(source: str | None) -> str:
    if source and source.startswith("json:"):
        return f"the field {source[5:]!r} of the .json members"
    return f"the .{source} members"


def _label_text(data: bytes, where: str):
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ShardError(f"{where}: the label is not UTF-8 text") from None
    if not text:
        return None
    return int(text) if _INT.fullmatch(text) else text


def _json_of(sample: ForeignSample, where: str):
    data = sample.data(META_EXT)
    if data is None:
        return None
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:
        raise ShardError(f"{where}.json: not valid JSON ({e})") from None


def _json_field(obj, path: str):
    for part in path.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return obj


def _json_label(value, where: str, source: str):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ShardError(f"{where}: {source} is {json.dumps(value)[:40]}, not a class id or name")
    if isinstance(value, float):
        if not value.is_integer():
            raise ShardError(f"{where}: {source} is {value}, not a class id")
        return int(value)
    if isinstance(value, str):
        value = value.strip()
        return (int(value) if _INT.fullmatch(value) else value) or None
    return value


def source_of_key(label_key: str) -> str | None:
    """The label source ``--label-key`` names: ``cls``, ``json:FIELD``, or None (``none``)."""
    label_key = label_key.strip()
    if label_key.lower() == "none":
        return None
    if label_key.startswith("json:"):
        if not label_key[5:]:
            raise ShardError("--label-key json:FIELD needs a field name, e.g. json:label")
        return label_key
    return label_key.lstrip(".").lower()


def check_source(source: str, label_key: str, present) -> None:
    """``--label-key``'s source must be among the set's components (lower-case extensions)."""
    need = META_EXT if source.startswith("json:") else source
    if need not in present:
        what = "the samples have no .json member" if need == META_EXT else f"no sample has a .{need} member"
        raise ShardError(f"--label-key {label_key}: {what} (components: {', '.join(sorted(present))}; "
                         "json:FIELD reads a .json field)")


def find_label_source(samples: list[tuple[Path, ForeignSample]]) -> tuple[str | None, str]:
    """(label source, hint) found in ``samples``: the first of :data:`LABEL_EXTS` they have, else
    the first of :data:`JSON_LABEL_FIELDS` in their ``.json`` members (the first 256 looked at),
    else None with a hint saying how to name one."""
    present = Counter(e for _, s in samples for e in s.exts())
    for ext in LABEL_EXTS:
        if ext in present:
            return ext, ""
    if META_EXT in present:
        for tar, s in samples[:256]:
            try:
                obj = _json_of(s, f"{tar}: key {s.key}")
            except ShardError:          # a broken .json is named when (if) its label is read
                continue
            if isinstance(obj, dict):
                for name in JSON_LABEL_FIELDS:
                    if name in obj:
                        return f"json:{name}", ""
        return None, (f"no {_exts_text()} member and no label field in the .json members; name the "
                      "field with --label-key json:FIELD")
    return None, f"no {_exts_text()} member (name another with --label-key EXT or json:FIELD)"


def _exts_text() -> str:
    return "/".join("." + e for e in LABEL_EXTS)


def raw_label(tar: Path, sample: ForeignSample, source: str):
    where = f"{tar}: key {sample.key}"
    if source.startswith("json:"):
        obj = _json_of(sample, where)
        return _json_label(_json_field(obj, source[5:]), where, f"the .json field {source[5:]!r}")
    data = sample.data(source)
    return None if data is None else _label_text(data, f"{where}: .{source}")


def assign_labels(values: list, where: list[str], classes_from: dict | None) -> tuple[list[int], dict | None]:
    """Class ids for raw label values (int, str or None) and the classes {names, ids}.

    Integer values are the ids themselves (``-1``: unlabelled); otherwise the values are class
    names, numbered in sorted order, or by ``classes_from`` (another set's classes)."""
    present = [v for v in values if v is not None]
    if not present:
        return [UNLABELLED] * len(values), None
    if all(isinstance(v, int) for v in present):
        for v, w in zip(values, where):
            if v is not None and v < UNLABELLED:
                raise ShardError(f"{w}: label {v} is not a class id (ids are 0 or more; -1 marks no label)")
        ids = [UNLABELLED if v is None else v for v in values]
        top = max(ids)
        if top < 0:
            return ids, None
        names = list(classes_from["names"]) if classes_from else []
        names += [str(i) for i in range(len(names), top + 1)]
        return ids, {"names": names, "ids": {n: i for i, n in enumerate(names)}}
    if classes_from:
        table = dict(classes_from["ids"])
        names = list(classes_from["names"])
    else:
        names = sorted({str(v) for v in present})
        table = {n: i for i, n in enumerate(names)}
    ids = []
    for v, w in zip(values, where):
        if v is None:
            ids.append(UNLABELLED)
        elif str(v) not in table:
            raise ShardError(f"{w}: class {str(v)!r} is not one of the classes of --classes-from "
                             f"({', '.join(names[:8])}{' ...' if len(names) > 8 else ''})")
        else:
            ids.append(table[str(v)])
    return ids, {"names": names, "ids": table}


def classes_of(path) -> dict:
    manifest = read_manifest(path)
    classes = manifest.get("classes")
    if not isinstance(classes, dict) or not classes.get("names"):
        raise ShardError(f"--classes-from {path}: its manifest has no classes")
    return classes
