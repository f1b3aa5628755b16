"""`ingot.serve.ray` on a local Ray cluster: `serve run` with deploy/ray/serve_config.yaml (two
replicas of a tiny Llama with a 1024-token context), queried over HTTP with the stock openai SDK
and urllib. Prefix-aware routing keeps a shared 512-token prefix on one replica, whose prefix
cache hits show in Ray's metrics; prompts without a common prefix spread over both."""

from __future__ import annotations

import concurrent.futures
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
import yaml

from tests import models
from tests.conftest import REPO, built

CONFIG = REPO / "deploy" / "ray" / "serve_config.yaml"


def test_import_ingot_does_not_import_ray():
    code = "import sys, ingot, ingot.serve.server, ingot.serve.http_app; assert 'ray' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO).returncode == 0


def test_without_the_extra_the_error_is_one_line():
    code = "import sys; sys.modules['ray'] = None; import ingot.serve.ray"
    proc = subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 1 and "pip install 'ingot[ray]'" in proc.stderr.splitlines()[-1]


def test_routing_text_reads_each_kind_of_prompt():
    pytest.importorskip("ray.serve")
    from ingot.serve.ray import routing_text

    assert routing_text(b'{"model": "m", "prompt": "You are a pirate."}') == "You are a pirate."
    assert routing_text(b'{"prompt": [["x"]]}') is None and routing_text(b'{"prompt": ["abc"]}') == "abc"
    assert routing_text(b'{"prompt": [5, 17, 3]}') == "5 17 3 "  # ids as text: a shared id prefix is a text prefix
    chat = {"messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": [{"type": "text", "text": "Hi"}]}]}
    assert routing_text(json.dumps(chat).encode()) == "system: Be brief.\nuser: Hi\n"
    assert routing_text(b'{"text_input": "Once"}') == "Once"
    assert routing_text(b"") is None and routing_text(b"not json") is None and routing_text(b"[1]") is None


def test_the_serve_run_config_validates():
    """deploy/ray/serve_config.yaml against Ray Serve's own schema and the application's options."""
    pytest.importorskip("ray.serve")
    from ray.serve.schema import ServeDeploySchema

    from ingot.serve.ray import parse_options

    config = ServeDeploySchema.model_validate(yaml.safe_load(CONFIG.read_text()))
    (app,) = config.applications
    assert app.import_path == "ingot.serve.ray:build_app"
    options = parse_options(app.args)
    assert options.routing == "prefix_aware" and options.autoscaling_config["max_replicas"] == 4
    with pytest.raises(ValueError, match="^ingot.serve.ray: routing: "):
        parse_options({**app.args, "routing": "random"})
    with pytest.raises(ValueError, match="min_replicas"):
        parse_options({**app.args, "autoscaling_config": {"min_replicas": 3, "max_replicas": 2}})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayServe:
    """`serve run CONFIG` in a Ray temp dir of its own; stopped by SIGINT, as a user stops it."""

    def __init__(self, config: dict, timeout: float = 180.0):
        self.tmp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths have a limit
        path = self.tmp / "serve.yaml"
        path.write_text(yaml.safe_dump(config))
        port = config["http_options"]["port"]
        self.url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "RAY_TMPDIR": str(self.tmp), "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0",
               "RAY_metrics_report_interval_ms": "1000"}
        env.pop("RAY_ADDRESS", None)
        self.log = open(self.tmp / "serve.log", "w")  # noqa: SIM115 - closed in stop()
        # SIGINT's default action as a terminal gives it (a job a shell starts with `&` ignores it,
        # and so would `serve run`, until the SIGKILL below)
        self.proc = subprocess.Popen([str(Path(sys.executable).parent / "serve"), "run", str(path)], env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        prefixes = [app["route_prefix"].rstrip("/") for app in config["applications"]]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.output()
            try:
                if all(urllib.request.urlopen(f"{self.url}{prefix}/v2/health/ready", timeout=5).status == 200
                       for prefix in prefixes):
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(1)
        self.stop()
        raise AssertionError(f"serve run was not ready in time: {self.output()}")

    def output(self) -> str:
        return (self.tmp / "serve.log").read_text()[-6000:]

    def metrics(self) -> str:
        (port_file,) = self.tmp.glob("**/session_latest/metrics_export_port_*")
        return urllib.request.urlopen(f"http://127.0.0.1:{port_file.read_text().strip()}/metrics", timeout=10).read().decode()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the session this test started
            self.proc.wait()
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def long_llama(tmp_path_factory) -> Path:
    """The tiny Llama with a 1024-token context (room for a 512-token prefix) and a chat template."""
    folder = models.make_tiny_llama(tmp_path_factory.mktemp("long-llama") / "llama", max_position=1024)
    (folder / "chat_template.jinja").write_text(models.CHATML)
    return built(folder, tmp_path_factory.mktemp("b") / "llama")


@pytest.fixture(scope="module")
def ray_serve(long_llama):
    pytest.importorskip("ray.serve")
    config = yaml.safe_load(CONFIG.read_text())
    config["http_options"] = {"host": "127.0.0.1", "port": free_port()}
    args = config["applications"][0]["args"]
    del args["autoscaling_config"]
    args.update(model=str(long_llama), model_name="llama", num_replicas=2, engine_num_cpus=0.5, threads=1,
                kv_cache_memory="64MiB", metrics_interval_s=1)
    # a second application: the same, where a queue one request longer than the shortest loses affinity
    balanced = {**config["applications"][0], "name": "balanced", "route_prefix": "/balanced",
                "args": {**args, "imbalanced_threshold": 1}}
    config["applications"].append(balanced)
    server = RayServe(config)
    yield server
    server.stop()


def complete(url: str, prompt, max_tokens: int = 2) -> tuple[str, dict]:
    """(the replica that answered, the response)."""
    body = json.dumps({"model": "llama", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}).encode()
    request = urllib.request.Request(url + "/v1/completions", body, {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return response.headers["x-ingot-replica"], json.loads(response.read())


def sample(metrics: str, name: str, replica: str) -> float:
    values = [float(line.rpartition(" ")[2]) for line in metrics.splitlines()
              if line.startswith(name + "{") and f'replica="{replica}"' in line]
    return sum(values)


@pytest.mark.slow
def test_a_shared_prefix_stays_on_one_replica_and_hits_its_cache(ray_serve):
    rnd = random.Random(0)
    prefix = [rnd.randrange(3, 300) for _ in range(512)]
    prompts = [prefix + [rnd.randrange(3, 300) for _ in range(4)] for _ in range(8)]
    first, out = complete(ray_serve.url, prompts[0])
    assert out["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    with concurrent.futures.ThreadPoolExecutor(7) as pool:  # the rest at once: the queues stay balanced enough
        results = list(pool.map(lambda p: complete(ray_serve.url, p), prompts[1:]))
    assert {replica for replica, _ in results} == {first}
    assert all(out["usage"]["prompt_tokens_details"]["cached_tokens"] >= 512 for _, out in results)
    deadline = time.monotonic() + 30  # replicas copy their series every second; Ray exports every second
    while (hits := sample(ray_serve.metrics(), "ray_ingot_prefix_cache_hits_total", first)) < 7 * 512:
        assert time.monotonic() < deadline, f"prefix cache hits of replica {first}: {hits}"
        time.sleep(1)
    metrics = ray_serve.metrics()
    assert sample(metrics, "ray_ingot_prefix_cache_queries_total", first) >= 8 * 516
    assert sample(metrics, "ray_ingot_time_to_first_token_seconds_count", first) >= 8
    assert "ray_ingot_kv_cache_usage_perc{" in metrics and "ray_ingot_num_requests_waiting{" in metrics


@pytest.mark.slow
def test_prompts_without_a_shared_prefix_spread_over_the_replicas(ray_serve):
    """A prompt that matches no replica's history goes to the replica holding the least prompt text
    (SGLang's "smallest tree"), so distinct prompts of one length alternate once the trees even out
    (the other test's prefix sits on one replica: the first prompts here go to the other)."""
    rnd = random.Random(1)
    replicas = Counter(complete(ray_serve.url, [rnd.randrange(3, 300) for _ in range(512)])[0] for _ in range(8))
    assert len(replicas) == 2 and min(replicas.values()) >= 3, replicas


@pytest.mark.slow
def test_the_openai_sdk_streams_a_chat_through_ray(ray_serve):
    import openai

    client = openai.OpenAI(base_url=ray_serve.url + "/v1", api_key="unused", max_retries=0)
    chunks = list(client.chat.completions.create(model="llama", messages=[{"role": "user", "content": "Hi!"}],
                                                 max_tokens=5, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[-1].usage.completion_tokens == 5 and chunks[0].choices[0].delta.role == "assistant"
    with pytest.raises(openai.NotFoundError, match="unknown model"):
        client.completions.create(model="nope", prompt="Hi", max_tokens=2)


@pytest.mark.slow
def test_a_much_longer_queue_loses_its_prefix_affinity(ray_serve):
    """imbalanced_threshold 1: concurrent requests sharing a prefix overflow to the other replica."""
    rnd = random.Random(2)
    prefix = [rnd.randrange(3, 300) for _ in range(512)]
    url = ray_serve.url + "/balanced"
    first, _ = complete(url, prefix + [5])
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        replicas = Counter(pool.map(lambda i: complete(url, prefix + [6 + i], max_tokens=32)[0], range(12)))
    assert len(replicas) == 2 and replicas[first] >= 1, replicas
