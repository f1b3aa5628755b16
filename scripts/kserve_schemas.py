"""Extract the OpenAPI v3 schemas that tests/serve/test_kserve.py validates deploy/kserve/ against,
from KServe's CRDs (no cluster needed).

    git clone --depth 1 -b v0.20.0 https://github.com/kserve/kserve
    python scripts/kserve_schemas.py kserve/config/crd/full tests/serve/data/kserve-v0.20.0-schemas.json

Source: kserve/kserve v0.20.0, config/crd/full/serving.kserve.io_servingruntimes.yaml (v1alpha1)
and serving.kserve.io_inferenceservices.yaml (v1beta1). The InferenceService schema is cut to
what a predictor of a custom runtime uses: the other components (transformer, explainer, canary)
and the built-in framework predictors (sklearn, xgboost, ...) are dropped, so a manifest that
uses them fails validation instead of passing unchecked. The Pod and container fields inside
(probes, resources, ports, securityContext) are Kubernetes' own schemas, as the CRD embeds them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

_FRAMEWORKS = ("huggingface", "lightgbm", "onnx", "paddle", "pmml", "pytorch", "sklearn", "tensorflow", "triton",
               "xgboost", "workerSpec")


def _schema(crd: Path, version: str) -> dict:
    doc = yaml.safe_load(crd.read_text())
    (entry,) = [v for v in doc["spec"]["versions"] if v["name"] == version]
    return entry["schema"]["openAPIV3Schema"]


def main(crd_dir: str, out: str) -> None:
    crds = Path(crd_dir)
    runtime = _schema(crds / "serving.kserve.io_servingruntimes.yaml", "v1alpha1")
    isvc = _schema(crds / "serving.kserve.io_inferenceservices.yaml", "v1beta1")
    spec = isvc["properties"]["spec"]["properties"]
    for component in ("transformer", "explainer", "canary"):
        spec.pop(component, None)
    for name in _FRAMEWORKS:
        spec["predictor"]["properties"].pop(name, None)
    schemas = {"source": "kserve/kserve v0.20.0 config/crd/full (openAPIV3Schema)",
               "serving.kserve.io/v1alpha1/ServingRuntime": runtime,
               "serving.kserve.io/v1beta1/InferenceService": isvc}
    Path(out).write_text(json.dumps(schemas, sort_keys=True, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python scripts/kserve_schemas.py KSERVE/config/crd/full OUT.json")
    main(*sys.argv[1:])
