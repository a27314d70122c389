"""Training checkpoints: ``RUN/checkpoints/step-00001234.pt``, one per save, the newest few kept.

A checkpoint is written to a temporary file in the same folder, synced to disk and renamed, so a
run killed at any moment (power loss and Ctrl-C included) leaves either the new checkpoint or none
of it, never a truncated file under a checkpoint's name; earlier checkpoints are only pruned once
the new one is in place. :func:`resolve_resume` turns ``--resume auto|PATH`` into the file to load,
and :func:`rng_state` / :func:`set_rng_state` carry every random generator a run draws from
(Python, NumPy, torch CPU and CUDA) so a resumed run continues the same random streams.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import numpy as np
import torch

from ..shards.fileio import atomic_target

#: the folder of a run directory that holds its checkpoints
CHECKPOINTS = "checkpoints"
_NAME = re.compile(r"step-(\d{8,})\.pt")
_RESUME_HINT = "delete it to resume from the one before, or pass --resume PATH"


class CheckpointError(ValueError):
    """A checkpoint cannot be found or read. The message names the file and what to do."""


def checkpoint_path(run_dir, step: int) -> Path:
    """Where the checkpoint of ``step`` lives: ``run_dir/checkpoints/step-{step:08d}.pt``."""
    return Path(run_dir) / CHECKPOINTS / f"step-{step:08d}.pt"


def save_checkpoint(run_dir, step: int, state: dict, keep: int = 3) -> Path:
    """Write ``state`` as the checkpoint of ``step`` atomically, then delete the oldest
    checkpoints beyond the ``keep`` newest (by step; the one just written is never deleted).
    Returns its path. An exception or Ctrl-C while writing leaves no temporary file behind and
    earlier checkpoints (one of the same step included) untouched."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"checkpoint step = {step!r}; must be an integer >= 0")
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"keep = {keep!r}; must be an integer >= 1 (the number of checkpoints to keep)")
    path = checkpoint_path(run_dir, step)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_target(path, f".{os.getpid()}.tmp") as tmp:
        with open(tmp, "wb") as f:
            sink = _WriteRecorder(f)
            try:
                torch.save(state, sink)
                f.flush()
                os.fsync(f.fileno())
            except Exception as e:
                if sink.error is not None and sink.error is not e:
                    # torch reports a failed write as "unexpected pos ...": raise the system's error
                    raise sink.error from e
                raise
    _fsync_dir(folder)
    others = [p for p in list_checkpoints(run_dir) if p != path]
    for old in others[:max(len(others) - (keep - 1), 0)]:
        try:
            old.unlink()
        except FileNotFoundError:      # pruned by another process meanwhile
            pass
    return path


class _WriteRecorder:
    """A file's ``write`` that keeps the first OSError (a full disk) for :func:`save_checkpoint`."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            if self.error is None:
                self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform can open a directory)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def checkpoint_step(path) -> int | None:
    """The step of a checkpoint file name (``step-00001234.pt`` -> 1234), None for other names."""
    m = _NAME.fullmatch(Path(path).name)
    return int(m.group(1)) if m else None


def list_checkpoints(run_dir) -> list[Path]:
    """The run's checkpoint files, oldest step first. Only ``step-NNNNNNNN.pt`` files count:
    temporary files of an interrupted save and anything else in the folder are ignored."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [(checkpoint_step(p), p) for p in folder.iterdir()]
    return [p for step, p in sorted((s, p) for s, p in found if s is not None and p.is_file())]


def latest_checkpoint(run_dir) -> Path | None:
    """The run's checkpoint of the highest step, None when it has none."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def load_checkpoint(path, map_location="cpu") -> dict:
    """A checkpoint written by :func:`save_checkpoint` (a dict), its tensors on ``map_location``.
    A missing, unreadable or non-checkpoint file raises :class:`CheckpointError` naming it."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory; give a checkpoint file "
                              f"({CHECKPOINTS}/step-NNNNNNNN.pt)")
    try:
        f = open(path, "rb")
    except OSError as e:
        raise CheckpointError(f"checkpoint {path} cannot be opened: {e.strerror}") from None
    with f:
        try:
            # our own files: they hold NumPy and Python RNG states, which weights_only refuses
            state = torch.load(f, map_location=map_location, weights_only=False)
        except Exception as e:         # torch reports a cut-off zip as OSError, bad pickles otherwise
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"checkpoint {path} cannot be read ({reason}): it is truncated or corrupt; "
                                  f"{_RESUME_HINT}") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a checkpoint dict; "
                              f"{_RESUME_HINT}")
    return state


def resolve_resume(run_dir, resume) -> Path | None:
    """The checkpoint ``--resume`` asks for: None for None or ""; for ``"auto"`` the run's
    latest checkpoint (None when it has none: a fresh start); otherwise the file given, or the
    latest checkpoint of the run directory given. A path that does not exist, or a directory
    without checkpoints, raises :class:`CheckpointError` naming it."""
    if resume is None or resume == "":
        return None
    if resume == "auto":
        return latest_checkpoint(run_dir)
    path = Path(resume)
    if path.is_file():
        return path
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise CheckpointError(f"--resume {path}: a directory with no checkpoints in {path / CHECKPOINTS}; "
                                  "give a checkpoint file or a run directory")
        return found
    raise CheckpointError(f"--resume {path}: no such checkpoint file; give a checkpoint "
                          f"({CHECKPOINTS}/step-NNNNNNNN.pt), a run directory, or 'auto'")


def rng_state() -> dict:
    """The state of every random generator a run draws from: Python's ``random``, NumPy's global
    generator, torch on the CPU and, when CUDA has been initialised, on every CUDA device."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore generators captured by :func:`rng_state` (states loaded onto a GPU are fine). CUDA
    states are restored on as many devices as both runs have."""
    missing = [k for k in ("python", "numpy", "torch") if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(f"RNG state lacks {', '.join(missing)}: not captured by clvr's rng_state()")
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        for device, s in enumerate(cuda[:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s.cpu(), device)


def seed_everything(seed: int, stream: int = 0) -> None:
    """Seed every generator :func:`rng_state` captures from ``(seed, stream)``: a process of a
    resumed run that has no saved state of its own (more processes than the checkpoint's)."""
    mixed = np.random.SeedSequence([int(seed) % 2 ** 63, int(stream)]).generate_state(2)
    value = int(mixed[0]) << 32 | int(mixed[1])
    random.seed(value)
    np.random.seed(int(mixed[0]))
    torch.manual_seed(value)
