import json

from tests.conftest import ingot


def test_inspect_table_and_json(bert_bundle):
    proc = ingot("inspect", bert_bundle)
    assert proc.returncode == 0, proc.stderr
    for fragment in ("encoder", "BertModel", "input_ids", "sentence_embedding", "cpu-x86_64", "onnxruntime", "max abs err"):
        assert fragment in proc.stdout, fragment
    data = json.loads(ingot("inspect", bert_bundle, "--json", "--check").stdout)
    assert data["model"]["kind"] == "encoder" and data["schema_version"] == 1
    assert all(len(f["sha256"]) == 64 for t in data["targets"].values() for f in t["files"])


def test_import_ingot_is_light():
    import subprocess
    import sys

    code = "import sys, ingot, ingot.plans, ingot.runtime; print(sorted(m for m in ('torch','onnx','transformers','tensorrt') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
