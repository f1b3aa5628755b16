"""deploy/kserve/ and the Dockerfile, without a cluster or a container engine: the manifests
against KServe's CRD schemas (v0.20.0, which embed Kubernetes' Pod and container schemas), and
the image's entrypoint, with the runtime's args, on a folder laid out as KServe's storage
initializer lays out /mnt/models."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import jsonschema
import pytest
import yaml

from ingot.serve.repository import Repository
from tests.conftest import REPO

SCHEMAS = json.loads((Path(__file__).parent / "data" / "kserve-v0.20.0-schemas.json").read_text())
RUNTIME = REPO / "deploy" / "kserve" / "servingruntime.yaml"
ISVC = REPO / "deploy" / "kserve" / "inferenceservice.yaml"


def strict(schema):
    """As `kubectl apply --validate=strict`: an unknown field is an error, not silently pruned."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if schema.get("type") == "object" and "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    return schema


def validate(doc: dict) -> None:
    group_version = doc["apiVersion"]
    schema = strict(SCHEMAS[f"{group_version}/{doc['kind']}"])
    jsonschema.validate(doc, schema, cls=jsonschema.Draft7Validator)
    name = doc["metadata"]["name"]
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63, name  # a DNS-1035 label


def test_manifests_validate_against_the_kserve_crds():
    runtime, isvc = yaml.safe_load(RUNTIME.read_text()), yaml.safe_load(ISVC.read_text())
    validate(runtime)
    validate(isvc)
    spec = runtime["spec"]
    assert set(spec["protocolVersions"]) == {"v2", "grpc-v2"}
    assert [f["name"] for f in spec["supportedModelFormats"]] == ["ingot"]
    ports = {p["name"]: p["containerPort"] for p in spec["containers"][0]["ports"]}
    assert ports == {"http1": 8000, "grpc": 8001, "metrics": 8002}
    model = isvc["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "ingot" and model["runtime"] == runtime["metadata"]["name"]
    assert model["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert model["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert isvc["spec"]["predictor"]["autoScaling"]["metrics"]


def test_the_schema_check_catches_mistakes():
    isvc = yaml.safe_load(ISVC.read_text())
    isvc["spec"]["predictor"]["model"]["readinessProbe"]["httpGet"]["paht"] = "/v2/health/ready"
    with pytest.raises(jsonschema.ValidationError, match="paht"):
        validate(isvc)
    runtime = yaml.safe_load(RUNTIME.read_text())
    runtime["spec"]["containers"][0]["ports"][0]["containerPort"] = "8000"
    with pytest.raises(jsonschema.ValidationError, match="integer"):
        validate(runtime)


def dockerfile() -> dict[str, str]:
    """The Dockerfile's instructions (continuation lines joined), last one of each kind."""
    text = re.sub(r"\\\n\s*", " ", (REPO / "Dockerfile").read_text())
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out[word] = rest.strip()
    return out


def test_dockerfile_runs_ingot_serve_as_a_non_root_user():
    d = dockerfile()
    assert json.loads(d["ENTRYPOINT"]) == ["ingot", "serve", "/mnt/models", "--host", "0.0.0.0"]  # the pod's network
    assert d["USER"].split(":")[0] not in ("0", "root") and d["USER"].split(":")[0].isdigit()
    assert set(d["EXPOSE"].split()) == {"8000", "8001", "8002"}
    assert "/v2/health/ready" in d["HEALTHCHECK"]


@pytest.fixture
def mnt_models(chat_llama_bundle, tmp_path) -> Path:
    """An S3 prefix holding a bundle's files, as the storage initializer leaves it: /mnt/models/manifest.json."""
    return Path(shutil.copytree(chat_llama_bundle, tmp_path / "mnt" / "models"))


def test_storage_initializer_layouts_are_served(chat_llama_bundle, tmp_path):
    prefix = Path(shutil.copytree(chat_llama_bundle, tmp_path / "a" / "models"))
    assert Repository(prefix, model_name="smol").names() == ["smol"]
    archive = tmp_path / "b" / "models"  # smol.tar.gz of the bundle folder, unpacked into /mnt/models
    shutil.copytree(chat_llama_bundle, archive / "smol")
    repo = Repository(archive, model_name="smol")
    assert repo.names() == ["smol"] and repo.entry("smol").versions == {1: archive / "smol"}
    assert Repository(archive).names() == ["smol"]
    repository = tmp_path / "c" / "models"  # a repository: one folder per model, one per version
    shutil.copytree(chat_llama_bundle, repository / "smol" / "1")
    assert Repository(repository).names() == ["smol"] and not Repository(repository).single


def test_the_image_command_serves_mnt_models(mnt_models):
    """ENTRYPOINT + the ServingRuntime's args + the InferenceService's, `{{.Name}}` filled in; the
    probes and the HEALTHCHECK answer on the HTTP port."""
    entrypoint = json.loads(dockerfile()["ENTRYPOINT"])
    runtime, isvc = yaml.safe_load(RUNTIME.read_text()), yaml.safe_load(ISVC.read_text())
    name = isvc["metadata"]["name"]
    args = [a.replace("{{.Name}}", name) for a in runtime["spec"]["containers"][0]["args"]]
    assert args[0].split("=")[0] == "--model-name"  # KServe names the model after the InferenceService
    args += [a for a in isvc["spec"]["predictor"]["model"]["args"] if not a.startswith("--kv-cache-memory")]
    command = [str(mnt_models) if a == "/mnt/models" else a for a in entrypoint[1:]] + args
    # any free ports (the image's are 8000-8002); a small KV cache and one thread for the test machine
    command += ["--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", "--kv-cache-memory", "64MiB",
                "--threads", "1"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ingot", *command], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("READY"), (line, proc.poll(), proc.stderr.read() if proc.poll() is not None else "")
        fields = dict(f.split("=", 1) for f in line.split()[1:])
        assert fields["http"].startswith("0.0.0.0:") and fields["models"] == name  # bound for the pod's network
        http = f"http://127.0.0.1:{fields['http'].rsplit(':', 1)[1]}"
        model = isvc["spec"]["predictor"]["model"]
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert urllib.request.urlopen(http + model[probe]["httpGet"]["path"], timeout=10).status == 200
        assert urllib.request.urlopen(f"{http}/v2/models/{name}/ready", timeout=10).status == 200
        healthcheck = json.loads(dockerfile()["HEALTHCHECK"].split(" CMD ", 1)[1])
        assert healthcheck[0] == "python3"
        check = [sys.executable, *[a.replace("127.0.0.1:8000", http.removeprefix("http://")) for a in healthcheck[1:]]]
        assert subprocess.run(check, check=False, timeout=30).returncode == 0
        body = json.dumps({"model": name, "prompt": "Hello", "max_tokens": 4, "temperature": 0}).encode()
        request = urllib.request.Request(f"{http}/v1/completions", body, {"content-type": "application/json"})
        out = json.loads(urllib.request.urlopen(request, timeout=60).read())
        assert out["usage"]["completion_tokens"] == 4
    finally:
        proc.terminate()
        assert proc.wait(60) == 0, proc.stderr.read()
