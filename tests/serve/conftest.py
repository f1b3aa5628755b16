"""`ingot serve` as a real process on 127.0.0.1, queried with the stock tritonclient."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO


class Server:
    """One `python -m ingot serve ...` process: free ports, READY awaited, stopped by SIGTERM."""

    def __init__(self, path: Path, *args: str, ready_timeout: float = 120.0, kv_cache_memory: str = "64MiB"):
        env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ingot", "serve", str(path), "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0",
             "--threads", "1", "--kv-cache-memory", kv_cache_memory, *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.ready_line = self._await_ready(ready_timeout)
        fields = dict(f.split("=", 1) for f in self.ready_line.split()[1:])
        self.url, self.metrics_url = fields["grpc"], f"http://{fields['metrics']}/metrics"
        self.http = f"http://{fields['http']}"

    def _await_ready(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith("READY"):
                return line.strip()
            if not line and self.proc.poll() is not None:
                raise AssertionError(f"ingot serve exited {self.proc.returncode}: {self.proc.stderr.read()}")
        self.proc.kill()
        raise AssertionError("ingot serve did not print READY in time")

    def client(self):
        import tritonclient.grpc as grpcclient

        return grpcclient.InferenceServerClient(self.url)

    def aio_client(self):
        import tritonclient.grpc.aio as aioclient

        return aioclient.InferenceServerClient(self.url)

    def metrics(self) -> dict[str, float]:
        """Every sample as `name{labels}` → value."""
        text = urllib.request.urlopen(self.metrics_url, timeout=10).read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out

    def metric(self, name: str, model: str, version: str = "1") -> float:
        return self.metrics()[f'{name}{{model_name="{model}",model_version="{version}"}}']

    def stop(self, sig=signal.SIGTERM, timeout: float = 60.0) -> tuple[int, str]:
        """Signal (None: already signalled) and wait; (exit code, stderr)."""
        if sig is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        return self.proc.returncode, self.proc.stderr.read()


def make_repo(root: Path, models: dict[str, dict[int, Path]], configs: dict[str, dict] | None = None) -> Path:
    """REPO/<model>/<version>/ copies of bundles, with optional config.json files."""
    for name, versions in models.items():
        for v, bundle in versions.items():
            shutil.copytree(bundle, root / name / str(v))
        if configs and name in configs:
            (root / name / "config.json").write_text(json.dumps(configs[name]))
    return root


@pytest.fixture(scope="session")
def tiny_repo(chat_llama_bundle, bert_bundle, cnn_bundle, tmp_path_factory) -> Path:
    """The tiny Llama (with a chat template), a tiny encoder and a tiny classifier."""
    return make_repo(tmp_path_factory.mktemp("repo"), {"llama": {1: chat_llama_bundle}, "bert": {1: bert_bundle},
                                                        "cnn": {1: cnn_bundle}},
                     {"cnn": {"dynamic_batching": {"max_batch_size": 8, "max_queue_delay_us": 20000}}})


@pytest.fixture(scope="module")
def server(tiny_repo):
    s = Server(tiny_repo)
    yield s
    code, err = s.stop()
    assert code == 0, err
