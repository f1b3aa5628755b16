"""File primitives for bundles: hashing, linking, atomic directory swap."""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import shutil
from pathlib import Path

from ingot.plans.manifest import FileEntry

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_entry(root: Path, rel: str) -> FileEntry:
    path = root / rel
    return FileEntry(path=rel, sha256=sha256_file(path), size=path.stat().st_size)


def link_or_copy(src: Path, dst: Path) -> None:
    """Bundle files are immutable once written, so a hard link is a safe copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def fsync_tree(root: Path) -> None:
    for dirpath, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())


def swap_in(staging: Path, dest: Path) -> None:
    """Make `staging` appear at `dest` in one step; the old `dest` (if any) is removed.

    On Linux, renameat2(RENAME_EXCHANGE) swaps the two folders atomically, so a reader
    sees either the old bundle or the new one. Elsewhere: two renames.
    """
    if not dest.exists():
        os.rename(staging, dest)
        return
    if _exchange(staging, dest):
        shutil.rmtree(staging)  # now holds the old bundle
        return
    old = dest.with_name(f".{dest.name}.ingot-old-{os.getpid()}")
    os.rename(dest, old)
    os.rename(staging, dest)
    shutil.rmtree(old)


def _exchange(a: Path, b: Path) -> bool:
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0
