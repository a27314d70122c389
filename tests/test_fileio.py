"""atomic_target / write_atomic: the one way clvr writes files that must never be seen half-done
(shards' index files, manifests, checkpoints, exported encoders, eval caches)."""

import os

import pytest

from clvr.shards.fileio import atomic_target, write_atomic


def test_success_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    with atomic_target(path, ".1.tmp") as tmp:
        assert tmp == os.fspath(path) + ".1.tmp" and path.read_bytes() == b"old"   # not yet visible
        with open(tmp, "wb") as f:
            f.write(b"new")
    assert path.read_bytes() == b"new" and sorted(os.listdir(tmp_path)) == ["f.bin"]


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt])
def test_a_failed_block_keeps_the_old_file_and_removes_the_temporary(tmp_path, error):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    with pytest.raises(error):
        with atomic_target(path) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"half")
            raise error()
    assert path.read_bytes() == b"old" and sorted(os.listdir(tmp_path)) == ["f.bin"]
    with pytest.raises(error):              # failing before anything was written is fine too
        with atomic_target(path):
            raise error()
    assert sorted(os.listdir(tmp_path)) == ["f.bin"]


def test_write_atomic(tmp_path):
    write_atomic(tmp_path / "a.txt", b"abc")
    assert (tmp_path / "a.txt").read_bytes() == b"abc" and sorted(os.listdir(tmp_path)) == ["a.txt"]
