"""A model repository in Triton's layout: `REPO/<model>/<version>/` is a plan bundle.

    repo/
      smol/                 # model name
        config.json         # optional (config.py)
        1/manifest.json ... # version 1: a bundle
        2/manifest.json ...
      minilm/1/...

Version folders are positive integers (Triton ignores names starting with 0, and so do we).
A single bundle is served as a repository of one model, version 1, named after its folder (or
`--model-name`). So is a folder whose only entry is a bundle: what KServe's storage initializer
leaves in /mnt/models when the storage URI is an archive of a bundle folder (`smol.tar.gz` →
/mnt/models/smol/manifest.json).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ingot.serve.config import ServeConfig, read_config
from ingot.serve.errors import NotFound, ServeError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_VERSION = re.compile(r"^[1-9][0-9]*$")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    versions: dict[int, Path]  # every version folder on disk
    config: ServeConfig

    def selected(self) -> list[int]:
        """The versions the policy serves, ascending."""
        return self.config.version_policy.select(list(self.versions))


class Repository:
    def __init__(self, path: Path, model_name: str | None = None):
        path = Path(path)
        if not path.is_dir():
            raise ServeError(f"{path}: not a folder (a model repository or a bundle)")
        path = _only_bundle(path)
        self.path = path
        self.single = (path / "manifest.json").is_file()  # one bundle, served as a repository of one
        self.single_name = model_name or path.resolve().name
        if model_name is not None and not self.single:
            raise ServeError("--model-name is for serving a single bundle; a repository names its models by folder")
        if self.single and not _NAME.match(self.single_name):
            raise ServeError(f"model name {self.single_name!r}: use letters, digits, '_', '-', '.'")

    def names(self) -> list[str]:
        if self.single:
            return [self.single_name]
        return sorted(p.name for p in self.path.iterdir() if p.is_dir() and _NAME.match(p.name))

    def entry(self, name: str) -> ModelEntry:
        """A model's versions and config, read now (a load sees what is on disk at that time)."""
        if self.single:
            if name != self.single_name:
                raise NotFound(f"unknown model {name!r}; this server serves {self.single_name!r}")
            return ModelEntry(name, {1: self.path}, ServeConfig())
        folder = self.path / name
        if not _NAME.match(name) or not folder.is_dir():
            raise NotFound(f"unknown model {name!r} in repository {self.path}; models: {', '.join(self.names()) or 'none'}")
        versions = {int(p.name): p for p in folder.iterdir() if p.is_dir() and _VERSION.match(p.name)}
        return ModelEntry(name, versions, read_config(folder))


def _only_bundle(path: Path) -> Path:
    """`path`, or the bundle folder that is its only visible entry (an unpacked archive)."""
    if (path / "manifest.json").is_file():
        return path
    entries = [p for p in path.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and (entries[0] / "manifest.json").is_file():
        return entries[0]
    return path
