"""The repository layout, version policies and config files, without a server."""

from __future__ import annotations

import json

import pytest

from ingot.serve.config import ServeConfig, VersionPolicy, read_config
from ingot.serve.errors import NotFound, ServeError
from ingot.serve.repository import Repository
from tests.conftest import ingot


def test_version_policies_select_as_triton_does():
    available = [1, 2, 3, 10]
    assert VersionPolicy().select(available) == [10]
    assert VersionPolicy.model_validate({"latest": {"num_versions": 2}}).select(available) == [3, 10]
    assert VersionPolicy.model_validate({"all": {}}).select(available) == available
    assert VersionPolicy.model_validate({"specific": {"versions": [2, 7]}}).select(available) == [2]
    with pytest.raises(ValueError, match="one of latest, all, specific"):
        VersionPolicy.model_validate({"all": {}, "latest": {}})


def test_repository_reads_versions_and_configs(tmp_path):
    for folder in ("m/1", "m/2", "m/03", "m/x", "m/0", "other/1", ".hidden/1"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "m" / "config.yaml").write_text("version_policy:\n  all: {}\nmax_queue_size: 8\n")
    repo = Repository(tmp_path)
    assert repo.names() == ["m", "other"]
    entry = repo.entry("m")
    assert sorted(entry.versions) == [1, 2] and entry.selected() == [1, 2] and entry.config.max_queue_size == 8
    with pytest.raises(NotFound, match="unknown model 'nope'"):
        repo.entry("nope")
    with pytest.raises(NotFound):
        repo.entry("../m")


@pytest.mark.parametrize("text, message", [
    ('{"max_queue_size": 0}', "max_queue_size"),
    ('{"dynamic_batching": {"max_delay": 5}}', "dynamic_batching.max_delay"),
    ('{"llm": {"max_num_seqs": -1}}', "llm.max_num_seqs"),
    ("{not json", "config.json"),
])
def test_a_bad_config_is_one_line_naming_the_field(tmp_path, text, message):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ServeError, match=message.replace(".", r"\.")) as info:
        read_config(tmp_path)
    assert "\n" not in str(info.value)


def test_defaults():
    c = ServeConfig()
    assert c.version_policy.select([1, 2]) == [2] and c.dynamic_batching is not None and c.default_timeout_s is None
    assert ServeConfig.model_validate(json.loads('{"dynamic_batching": null}')).dynamic_batching is None


def test_single_bundle_is_a_repository_of_one(llama_bundle):
    repo = Repository(llama_bundle)
    assert repo.names() == [llama_bundle.name] and repo.entry(llama_bundle.name).versions == {1: llama_bundle}
    assert Repository(llama_bundle, model_name="chat").names() == ["chat"]


def test_serve_refuses_bad_input_with_one_line(tmp_path):
    proc = ingot("serve", tmp_path / "missing", "--grpc-port", "0", "--metrics-port", "0", timeout=60)
    assert proc.returncode == 1 and proc.stderr.strip().startswith("error:") and "not a folder" in proc.stderr
    assert "Traceback" not in proc.stderr
    (tmp_path / "empty").mkdir()
    proc = ingot("serve", tmp_path / "empty", "--grpc-port", "0", "--metrics-port", "0", timeout=60)
    assert proc.returncode == 1 and "no models" in proc.stderr
