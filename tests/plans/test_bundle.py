"""Bundle writes are atomic and merge targets; reads check every byte."""

import json
import os

import pytest

from ingot.plans import (
    BundleWriter, ChecksumError, IncompatibleBundleError, ManifestError, merge_bundles, open_bundle, read_manifest,
)
from ingot.plans.bundle import staging_leftovers
from tests.conftest import tree_digest
from tests.plans.test_manifest import manifest


def write(dest, *targets, model_id="m", payload=b"plan"):
    m = manifest(*targets)
    m = m.model_copy(update={"model": m.model.model_copy(update={"id": model_id})})
    with BundleWriter(dest) as w:
        built = {}
        for name, t in m.targets.items():
            w.path(t.entrypoint).write_bytes(payload + name.encode())
            built[name] = t.model_copy(update={"files": [w.entry(t.entrypoint)]})
        return w.commit(m.model_copy(update={"targets": built}))


def test_write_then_open_verifies(tmp_path):
    write(tmp_path / "b", "cpu-x86_64")
    b = open_bundle(tmp_path / "b")
    assert list(b.manifest.targets) == ["cpu-x86_64"]
    assert (tmp_path / "b" / "targets/cpu-x86_64/model.onnx").read_bytes() == b"plancpu-x86_64"


def test_flipped_byte_names_the_file(tmp_path):
    write(tmp_path / "b", "cpu-x86_64")
    f = tmp_path / "b" / "targets/cpu-x86_64/model.onnx"
    data = bytearray(f.read_bytes())
    data[3] ^= 0x01
    f.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="targets/cpu-x86_64/model.onnx"):
        open_bundle(tmp_path / "b")


def test_missing_file_is_named(tmp_path):
    write(tmp_path / "b", "cpu-x86_64")
    (tmp_path / "b" / "targets/cpu-x86_64/model.onnx").unlink()
    with pytest.raises(ChecksumError, match="missing: targets/cpu-x86_64/model.onnx"):
        open_bundle(tmp_path / "b")


@pytest.mark.parametrize("mutate,match", [
    (lambda t: t[: len(t) // 2], "not valid JSON"),
    (lambda t: "", "not valid JSON"),
    (lambda t: json.dumps({"format": "ingot-bundle", "schema_version": 1}), "is invalid: ingot_version"),
    (lambda t: json.dumps({"hello": 1}), "not an ingot bundle manifest"),
])
def test_bad_manifests(tmp_path, mutate, match):
    write(tmp_path / "b", "cpu-x86_64")
    path = tmp_path / "b" / "manifest.json"
    path.write_text(mutate(path.read_text()))
    with pytest.raises(ManifestError, match=match):
        read_manifest(tmp_path / "b")


def test_adding_a_target_keeps_the_others(tmp_path):
    write(tmp_path / "b", "cpu-x86_64")
    write(tmp_path / "b", "cpu-aarch64")
    b = open_bundle(tmp_path / "b")
    assert sorted(b.manifest.targets) == ["cpu-aarch64", "cpu-x86_64"]
    assert staging_leftovers(tmp_path / "b") == []


def test_other_model_is_refused_and_bundle_kept(tmp_path):
    write(tmp_path / "b", "cpu-x86_64")
    before = tree_digest(tmp_path / "b")
    with pytest.raises(IncompatibleBundleError, match="different model"):
        write(tmp_path / "b", "cpu-aarch64", model_id="other")
    assert tree_digest(tmp_path / "b") == before
    assert staging_leftovers(tmp_path / "b") == []


def test_failure_before_commit_leaves_bundle_untouched(tmp_path):
    write(tmp_path / "b", "cpu-x86_64")
    before = tree_digest(tmp_path / "b")
    with pytest.raises(RuntimeError), BundleWriter(tmp_path / "b") as w:
        w.path("targets/cpu-x86_64/model.onnx").write_bytes(b"half")
        raise RuntimeError("build failed")
    assert tree_digest(tmp_path / "b") == before
    assert staging_leftovers(tmp_path / "b") == []


def test_non_bundle_output_is_refused(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(ManifestError, match="not an ingot bundle"):
        BundleWriter(tmp_path / "out")
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def test_empty_folder_is_fine(tmp_path):
    (tmp_path / "out").mkdir()
    write(tmp_path / "out", "cpu-x86_64")
    assert read_manifest(tmp_path / "out").targets


def test_merge(tmp_path):
    write(tmp_path / "a", "cpu-x86_64")
    write(tmp_path / "b", "sm_90")
    merged = merge_bundles(tmp_path / "ab", [tmp_path / "a", tmp_path / "b"])
    assert sorted(merged.targets) == ["cpu-x86_64", "sm_90"]
    b = open_bundle(tmp_path / "ab")
    assert (b.root / "targets/sm_90/model.onnx").read_bytes() == b"plansm_90"


def test_merge_refuses_conflicts_and_corruption(tmp_path):
    write(tmp_path / "a", "cpu-x86_64")
    write(tmp_path / "b", "cpu-x86_64", payload=b"other")
    with pytest.raises(IncompatibleBundleError, match="cpu-x86_64 is in both"):
        merge_bundles(tmp_path / "ab", [tmp_path / "a", tmp_path / "b"])
    write(tmp_path / "c", "sm_90", model_id="other")
    with pytest.raises(IncompatibleBundleError):
        merge_bundles(tmp_path / "ac", [tmp_path / "a", tmp_path / "c"])
    write(tmp_path / "d", "sm_80")
    os.truncate(tmp_path / "d" / "targets/sm_80/model.onnx", 2)
    with pytest.raises(ChecksumError, match="sm_80"):
        merge_bundles(tmp_path / "ad", [tmp_path / "a", tmp_path / "d"])
    assert not (tmp_path / "ab").exists() and not (tmp_path / "ad").exists()
