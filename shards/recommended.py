"""A shard set's recommended view recipe, kept in its manifest.

Whoever knows the data best (the person who shards it, or clvr's own demo, which measured it)
can record the view recipe that learns on it. ``clvr train`` with ``preset = auto`` then trains
with it, and its plan says so: the same data with the wrong crops or colours learns nothing
(the digits with the generic 32-px CIFAR recipe: kNN 13% where chance is 10%, with the demo's
recipe 94%).

The manifest's ``recommended`` entry::

    "recommended": {"recipe": {...a recipe mapping, as a --recipe YAML file holds...},
                    "source": "where it came from (a file, or the demo's measurement)"}

The recipe is plain data here (this layer imports no torch or DALI); ``clvr.pipeline.recipe``
checks it when a loader builds it, and the shard command checks it before writing when that is
possible.
"""

from __future__ import annotations

from pathlib import Path

from .errors import ShardError

#: the manifest key
KEY = "recommended"


def read_recipe_file(path) -> dict:
    """The recipe mapping in the YAML file ``path``; a ShardError naming it otherwise."""
    import yaml
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ShardError(f"--recipe {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ShardError(f"--recipe {path}: cannot read it ({e})") from None
    except yaml.YAMLError as e:
        raise ShardError(f"--recipe {path}: not valid YAML ({e})") from None
    if not isinstance(data, dict) or not data:
        raise ShardError(f"--recipe {path}: a recipe file holds a mapping of recipe settings (base, size, crop, "
                         f"jitter, ...), got {type(data).__name__ if data is not None else 'nothing'}")
    return data


def entry(recipe: dict, source: str) -> dict:
    """The manifest's ``recommended`` value."""
    return {"recipe": recipe, "source": source}


def recommended(manifest: dict | None, where: str = "manifest") -> dict | None:
    """The ``recommended`` entry of ``manifest`` (None when it has none); a ShardError naming
    ``where`` when it is malformed."""
    if not isinstance(manifest, dict) or manifest.get(KEY) is None:
        return None
    value = manifest[KEY]
    if not isinstance(value, dict) or not isinstance(value.get("recipe"), dict):
        raise ShardError(f"{where}: '{KEY}' must be {{\"recipe\": {{...}}, \"source\": \"...\"}}, got {value!r}")
    return value
