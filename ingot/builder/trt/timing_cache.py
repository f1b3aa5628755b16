"""A TensorRT timing cache kept between builds: `--timing-cache DIR`.

DIR is a folder holding one file per arch and TensorRT version,

    DIR/sm_90-trt11.4.0.106.timing-cache

because a cache records tactic timings of one GPU model under one TensorRT build (TensorRT
refuses another version's cache, and another device's only with ignore_mismatch): one folder
serves a CI cache shared by a matrix of arch jobs, each reading and writing only its own file.
A missing file is an empty cache; after a successful build the cache the builder ended with is
written back atomically (a temporary file in DIR, then os.replace), so a build killed halfway
leaves the previous cache whole. The manifest records the sha256 of the cache the build started
from (None when there was none).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ingot.builder.errors import BuildError

SUFFIX = ".timing-cache"


@dataclass(frozen=True)
class TimingCacheFile:
    path: Path
    data: bytes  # what the build starts from: b"" for a new cache

    @property
    def sha256(self) -> str | None:
        return hashlib.sha256(self.data).hexdigest() if self.data else None


def cache_path(folder: Path, target: str, tensorrt_version: str) -> Path:
    """The file of `target` (sm_90) and this TensorRT version in `folder`."""
    return Path(folder) / f"{target}-trt{tensorrt_version}{SUFFIX}"


def load_cache(folder: Path, target: str, tensorrt_version: str) -> TimingCacheFile:
    """The cache file's bytes (b"" when it is not there yet); a path that is a file is refused."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise BuildError(f"--timing-cache {folder}: a folder is expected (it holds one cache file per arch and "
                         "TensorRT version), and this is a file")
    path = cache_path(folder, target, tensorrt_version)
    return TimingCacheFile(path, path.read_bytes() if path.is_file() else b"")


def save_cache(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically: a reader sees the old cache or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
