"""Reading, verifying, writing and merging bundles.

Layout: `manifest.json`, `tokenizer/...` (shared by all targets) and `targets/<name>/...`.
Writes go to a staging folder beside the destination and are swapped in at the end, so
a failed build leaves the previous bundle exactly as it was.
"""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from ingot.plans.errors import ChecksumError, IncompatibleBundleError, ManifestError
from ingot.plans.files import file_entry, fsync_tree, link_or_copy, sha256_file, swap_in
from ingot.plans.manifest import FORMAT, SCHEMA_VERSION, FileEntry, Manifest, ModelInfo, Target

MANIFEST = "manifest.json"


def read_manifest(root: Path) -> Manifest:
    """Parse and validate `root/manifest.json`, with one clear line for each way it fails."""
    root = Path(root)
    if not root.exists():
        raise ManifestError(f"bundle not found: {root}")
    path = root / MANIFEST
    if root.is_file():  # a model file (.gguf, .onnx) where a bundle folder goes
        raise ManifestError(f"{root} is a file, not an ingot bundle folder: build one first with "
                            f"`ingot build {root} -o DIR`")
    if not path.is_file():
        raise ManifestError(f"{root} is not an ingot bundle (no {MANIFEST})")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"{path} is not valid JSON (truncated or corrupt): {e}") from e
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ManifestError(f"{path} is not an ingot bundle manifest (format is not {FORMAT!r})")
    version = raw.get("schema_version")
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise ManifestError(
            f"{path} has schema version {version}, newer than this ingot reads ({SCHEMA_VERSION}): upgrade ingot"
        )
    try:
        return Manifest.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise ManifestError(f"{path} is invalid: {where}: {first['msg']}") from e


@dataclass(frozen=True)
class Bundle:
    root: Path
    manifest: Manifest

    def path(self, rel: str) -> Path:
        return self.root / rel

    def verify(self, files: list[FileEntry] | None = None) -> None:
        """Check size and sha256 of `files` (default: all); raise ChecksumError naming the file."""
        for entry in self.manifest.files() if files is None else files:
            path = self.root / entry.path
            if not path.is_file():
                raise ChecksumError(f"bundle file missing: {entry.path} (in {self.root})")
            if path.stat().st_size != entry.size or sha256_file(path) != entry.sha256:
                raise ChecksumError(
                    f"checksum mismatch: {entry.path} in {self.root} is corrupt or was changed after the build"
                )

    def verify_target(self, target: Target) -> None:
        """Check the files running `target` needs: its own and the shared ones."""
        shared = self.manifest.tokenizer.files if self.manifest.tokenizer else []
        self.verify([*shared, *target.files])


def open_bundle(root: Path, verify: bool = True) -> Bundle:
    bundle = Bundle(Path(root), read_manifest(Path(root)))
    if verify:
        bundle.verify()
    return bundle


class BundleWriter:
    """Stages a bundle beside `dest`; `commit()` merges it with any bundle at `dest` and swaps it in.

    Use as a context manager: leaving it without a commit (an exception) removes the staging
    folder and leaves `dest` untouched.
    """

    def __init__(self, dest: Path, overwrite: bool = False):
        self.dest = Path(dest).absolute()
        self.overwrite = overwrite
        self._existing = self._check_dest()
        self.staging = self.dest.parent / f".{self.dest.name}.ingot-staging-{uuid.uuid4().hex[:8]}"

    def __enter__(self) -> BundleWriter:
        self.staging.mkdir(parents=True)
        return self

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)

    def _check_dest(self) -> Bundle | None:
        dest = self.dest
        if not dest.exists():
            return None
        if not dest.is_dir():
            raise ManifestError(f"output {dest} exists and is not a folder")
        if not (dest / MANIFEST).exists():
            if any(dest.iterdir()):
                raise ManifestError(
                    f"output {dest} exists and is not an ingot bundle; choose a new folder or remove it"
                )
            return None
        if self.overwrite:
            return None
        return Bundle(dest, read_manifest(dest))

    def check_model(self, model: ModelInfo) -> None:
        """Refuse early (before any compile) a bundle at `dest` of another model; commit() checks the rest."""
        if self._existing is not None and self._existing.manifest.model != model:
            raise _incompatible(str(self.dest), ["model"])

    def path(self, rel: str) -> Path:
        """Where to write bundle file `rel` (parent folders are created)."""
        path = self.staging / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def entry(self, rel: str) -> FileEntry:
        return file_entry(self.staging, rel)

    def add_from(self, bundle: Bundle, files: list[FileEntry]) -> None:
        """Carry files over from another (verified here) bundle."""
        bundle.verify(files)
        for f in files:
            target = self.staging / f.path
            if not target.exists():
                link_or_copy(bundle.root / f.path, target)

    def commit(self, manifest: Manifest) -> Manifest:
        """Merge with the bundle already at `dest` (its other targets are kept), then swap in."""
        if self._existing is not None:
            manifest = merge_manifests(self._existing.manifest, manifest, str(self.dest))
            carried = [t for n, t in self._existing.manifest.targets.items() if n not in self._new_targets(manifest)]
            self.add_from(self._existing, [f for t in carried for f in t.files])
        self._check_files(manifest)
        (self.staging / MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
        fsync_tree(self.staging)
        swap_in(self.staging, self.dest)
        return manifest

    def _new_targets(self, merged: Manifest) -> set[str]:
        return {n for n in merged.targets if (self.staging / "targets" / n).exists()}

    def _check_files(self, manifest: Manifest) -> None:
        listed = {f.path for f in manifest.files()}
        on_disk = {str(p.relative_to(self.staging).as_posix()) for p in self.staging.rglob("*") if p.is_file()}
        assert listed == on_disk, f"staged files differ from the manifest: {sorted(listed ^ on_disk)}"


def merge_manifests(base: Manifest, new: Manifest, where: str) -> Manifest:
    """`base` plus every target of `new`; both must describe the same model."""
    if base.signature() != new.signature():
        raise _incompatible(where, sorted(k for k, v in base.signature().items() if new.signature().get(k) != v))
    merged = base
    for target in new.targets.values():
        merged = merged.with_target(target)
    return merged


def _incompatible(where: str, diff: list[str]) -> IncompatibleBundleError:
    return IncompatibleBundleError(
        f"{where} holds a bundle of a different model or build ({', '.join(diff)} differ); "
        "use another output folder, or --overwrite to replace it"
    )


def merge_bundles(dest: Path, sources: list[Path], overwrite: bool = False) -> Manifest:
    """`ingot merge`: one bundle holding every target of `sources` (e.g. per-arch CI builds)."""
    bundles = [open_bundle(Path(s), verify=False) for s in sources]
    for b in bundles[1:]:
        _same_build(bundles[0], b)
    merged = bundles[0].manifest
    seen: dict[str, Path] = {}
    for b in bundles:
        for name, target in b.manifest.targets.items():
            if name in seen and merged.targets[name] != target:
                raise IncompatibleBundleError(f"target {name} is in both {seen[name]} and {b.root} with different files")
            seen[name] = b.root
        merged = merge_manifests(merged, b.manifest, str(b.root))
    # targets by name: the merged manifest is the same bytes whatever order the builds come in
    merged = merged.model_copy(update={"targets": dict(sorted(merged.targets.items()))})
    with BundleWriter(dest, overwrite=overwrite) as w:
        for b in bundles:
            shared = b.manifest.tokenizer.files if b.manifest.tokenizer else []
            w.add_from(b, [*shared, *(f for t in b.manifest.targets.values() for f in t.files)])
        return w.commit(merged)


def _same_build(a: Bundle, b: Bundle) -> None:
    """Refuse to merge bundles of two models, or two builds of one (other precision, limits, ...)."""
    ma, mb = a.manifest, b.manifest
    if ma.model != mb.model:
        ids = f"{ma.model.id} and {mb.model.id}" if ma.model.id != mb.model.id else f"both {ma.model.id}, other sources"
        raise IncompatibleBundleError(
            f"{a.root} and {b.root} are different models ({ids}); ingot merge takes builds of one model "
            "(e.g. one per GPU arch)"
        )
    diff = sorted(k for k, v in ma.signature().items() if mb.signature().get(k) != v)
    if diff:
        raise IncompatibleBundleError(
            f"{a.root} and {b.root} are different builds of {ma.model.id} ({', '.join(diff)} differ); "
            "ingot merge takes targets built with the same options"
        )


def staging_leftovers(dest: Path) -> list[Path]:
    """Staging folders a killed process left beside `dest` (for diagnostics and tests)."""
    dest = Path(dest).absolute()
    return sorted(dest.parent.glob(f".{dest.name}.ingot-staging-*"))


__all__ = ["MANIFEST", "Bundle", "BundleWriter", "merge_bundles", "open_bundle", "read_manifest"]
