"""EfficientNet-Lite0 through `module:function`: top-1 on real photos matches torch."""

import numpy as np
import pytest

from ingot.runtime import load
from tests.conftest import ingot

pytestmark = [pytest.mark.real, pytest.mark.slow]  # each builds or loads a real model
PHOTOS = ["chelsea", "coffee", "rocket", "astronaut"]


@pytest.fixture(scope="module")
def bundle(effnet_bundle):
    return effnet_bundle


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
