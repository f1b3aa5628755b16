"""The CI build pipeline of examples/ci/, run here with the CPU targets: one job per target
builds its own bundle (`ingot build --json`), a last job merges them and checks every file.
The GPU jobs of the workflow run the same script with an sm target."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, tree_digest

CI = REPO / "examples" / "ci"
TARGETS = ("cpu-x86_64", "cpu-aarch64")  # aarch64 is cross-built and verified on this machine's CPU


def _sh(script: str, *args, cwd: Path) -> subprocess.CompletedProcess:
    """A CI step as the workflow runs it: bash, `ingot` on PATH."""
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(["bash", str(CI / script), *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def jobs(tiny_cnn_py, tmp_path_factory) -> Path:
    """The matrix jobs: each target built separately, as on separate runners."""
    out = tmp_path_factory.mktemp("ci")
    for target in TARGETS:
        _sh("build-target.sh", f"{tiny_cnn_py}:model", target, out, cwd=out)
    return out


def test_each_job_prints_a_machine_readable_summary(jobs):
    for target in TARGETS:
        summary = json.loads((jobs / f"build-{target}.json").read_text())
        bundle = jobs / f"bundle-{target}"
        assert summary["format"] == "ingot-build-summary/1"
        assert [t["name"] for t in summary["targets"]] == [target]
        assert summary["verified"] is True and summary["targets"][0]["verification"]["ran_on"] == "cpu-x86_64"
        for f in summary["files"]:  # the hashes are those of the files written
            assert hashlib.sha256((bundle / f["path"]).read_bytes()).hexdigest() == f["sha256"]
        stages = {t["stage"]: t["seconds"] for t in summary["timings"]}
        assert {"export to ONNX", f"compile {target}", f"verify {target}", "write bundle"} <= set(stages)
        assert all(s >= 0 for s in stages.values()) and summary["total_seconds"] >= sum(stages.values()) - 0.01
        assert summary["manifest"]["targets"][target]["entrypoint"] == summary["targets"][0]["entrypoint"]
        assert summary["quantization"] is None and summary["precision"] == "fp32"


def test_merge_is_deterministic_and_checked(jobs, tmp_path):
    parts = [jobs / f"bundle-{t}" for t in TARGETS]
    _sh("merge.sh", tmp_path / "a", *parts, cwd=tmp_path)
    _sh("merge.sh", tmp_path / "b", *reversed(parts), cwd=tmp_path)
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b"), "the order of the jobs changes nothing"
    manifest = json.loads((tmp_path / "a.json").read_text())  # `ingot inspect --check --json`
    assert list(manifest["targets"]) == sorted(TARGETS)
    _sh("merge.sh", tmp_path / "c", tmp_path / "a", *parts, cwd=tmp_path)  # a merged bundle merges again
    assert tree_digest(tmp_path / "c") == tree_digest(tmp_path / "a")


def test_merge_refuses_another_build_of_the_model(jobs, tiny_cnn_py, tmp_path):
    _sh("build-target.sh", f"{tiny_cnn_py}:model", "cpu-aarch64", tmp_path, "--dim", "batch=1:4", cwd=tmp_path)
    proc = subprocess.run(["bash", str(CI / "merge.sh"), tmp_path / "m", jobs / "bundle-cpu-x86_64",
                           tmp_path / "bundle-cpu-aarch64"], capture_output=True, text=True,
                          env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    assert proc.returncode == 1 and "different builds" in proc.stderr and "inputs" in proc.stderr, proc.stderr
    assert not (tmp_path / "m").exists()


def test_the_workflow_runs_these_scripts_per_arch_then_merges():
    workflow = yaml.safe_load((CI / "github-actions.yml").read_text())
    workflow["on"] = workflow.pop(True)  # PyYAML reads the key `on` as YAML 1.1's boolean; GitHub does not
    schema = json.loads((REPO / "tests" / "cli" / "data" / "github-workflow-schema.json").read_text())["schema"]
    import jsonschema

    jsonschema.validate(workflow, schema)  # GitHub's workflow syntax (SchemaStore)
    with pytest.raises(jsonschema.ValidationError):  # the schema does catch a job without a runner
        jsonschema.validate({**workflow, "jobs": {"x": {"steps": [{"run": "true"}]}}}, schema)
    jobs = workflow["jobs"]
    arches = [m["arch"] for m in jobs["gpu"]["strategy"]["matrix"]["include"]]
    assert arches == sorted(arches) and all(a.startswith("sm_") for a in arches)
    runs = {name: "\n".join(s.get("run", "") for s in job["steps"]) for name, job in jobs.items()}
    assert "build-target.sh" in runs["gpu"] and "${{ matrix.arch }}" in runs["gpu"]
    assert "build-target.sh" in runs["cpu"] and "cpu-x86_64" in runs["cpu"]
    assert jobs["merge"]["needs"] == ["gpu", "cpu"] and "merge.sh" in runs["merge"]
    assert "[tensorrt]" in runs["gpu"] and "[tensorrt]" not in runs["cpu"]
    uploads = [s for s in jobs["merge"]["steps"] if s.get("uses", "").startswith("actions/upload-artifact")]
    assert uploads and "bundle" in uploads[0]["with"]["path"].split()
