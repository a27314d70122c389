"""Reading input files (whole, with few system calls, with a reject reason on failure), and
writing output files atomically."""

from __future__ import annotations

import os
from contextlib import contextmanager

from .errors import Reject


@contextmanager
def atomic_target(path, tmp_suffix: str = ".tmp"):
    """Yield the temporary path ``path + tmp_suffix`` to write; when the block ends it replaces
    ``path`` (readers see the old file or the whole new one), and when the block fails (Ctrl-C
    included) it is removed."""
    tmp = os.fspath(path) + tmp_suffix
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def sha256_file(path) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks."""
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_problems(path, record: dict) -> list[str]:
    """How the file at ``path`` differs from its manifest ``record`` (``bytes``, ``sha256``)."""
    problems = []
    size = os.path.getsize(path)
    if size != record["bytes"]:
        problems.append(f"{path}: {size} bytes, manifest says {record['bytes']}")
    digest = sha256_file(path)
    if digest != record["sha256"]:
        problems.append(f"{path}: sha256 {digest[:12]}… does not match the manifest's {record['sha256'][:12]}…")
    return problems


def write_atomic(path, data: bytes, tmp_suffix: str = ".tmp") -> None:
    """Write ``data`` to ``path`` through :func:`atomic_target`."""
    with atomic_target(path, tmp_suffix) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def read_bytes(path: str) -> bytes:
    """The whole file (``os.read`` in a loop: about half the cost of ``open().read()`` on small files)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        chunks = []
        while True:
            chunk = os.read(fd, max(size, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            size = 1 << 20  # the file grew, or the size was wrong: read the rest in blocks
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    finally:
        os.close(fd)


def text_lines(path) -> list[tuple[int, str | None]]:
    """(line number, text) for each line of a UTF-8 text file; text is None for a line that is not
    valid UTF-8, so one bad line is rejected instead of the whole file."""
    raw = read_bytes(str(path))
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    out = []
    for n, line in enumerate(raw.splitlines(), start=1):
        try:
            out.append((n, line.decode("utf-8")))
        except UnicodeDecodeError:
            out.append((n, None))
    return out


def read_input(path: str, what: str = "file") -> bytes:
    """Read an input file; a missing or unreadable one becomes a :class:`Reject` naming the cause."""
    try:
        return read_bytes(path)
    except FileNotFoundError:
        raise Reject(f"missing {what}") from None
    except IsADirectoryError:
        raise Reject(f"{what} is a directory") from None
    except ValueError:
        raise Reject(f"{what} path holds a NUL byte") from None
    except OSError as e:
        raise Reject(f"cannot read {what}: {e.strerror}") from None
