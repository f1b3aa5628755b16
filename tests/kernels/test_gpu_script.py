"""scripts/gpu_kernels.py, which runs on a lent GPU, keeps working: its `--device cpu` smoke run
(tiny shapes under the interpreter) goes through every step and writes its JSON. In-process on the
CPU (the interpreter is on already); in a child process when these tests themselves run on a GPU."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

from tests.conftest import REPO
from tests.kernels.conftest import DEVICE

SCRIPT = REPO / "scripts" / "gpu_kernels.py"


def smoke(out, capsys) -> str:
    if DEVICE == "cpu":
        spec = importlib.util.spec_from_file_location("gpu_kernels_script", SCRIPT)
        script = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(script)
        assert script.main(["--device", "cpu", "--json", str(out)]) == 0
        return capsys.readouterr().out
    env = {**os.environ, "PYTHONPATH": str(REPO), "INGOT_KERNEL_DEVICE": "cpu"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--json", str(out)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_smoke_run_writes_every_section(tmp_path, capsys):
    out = tmp_path / "gpu_kernels.json"
    printed = smoke(out, capsys)
    report = json.loads(out.read_text())
    assert set(report) >= {"machine", "tests", "read_bandwidth", "decode", "prefill", "command"}
    assert report["read_bandwidth"]["triton_gbps"] > 0
    (decode,) = report["decode"]
    assert {"auto_s", "unsplit_s", "fused_s", "sdpa_s", "kv_bytes", "splits"} <= set(decode)
    assert all(decode[k] > 0 for k in ("auto_s", "unsplit_s", "fused_s", "sdpa_s"))
    (prefill,) = report["prefill"]
    assert all(prefill[k] > 0 for k in ("prefill_s", "fused_s", "sdpa_s", "flops"))
    assert "| batch | context | splits |" in printed and "| sequences x new (past) |" in printed
