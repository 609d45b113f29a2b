"""Shared fixtures: a real tissue image and small real generators."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from torch import nn

import dn_cli
from dn_cli.models import Generator, load_generator
from dn_cli.models.resnet import ResnetGenerator

DEMO_WEIGHTS = Path(dn_cli.__file__).parent / "models" / "weights" / "dab2aec_resnet_ngf16.pth"


def make_generator(seed: int = 0, **params) -> Generator:
    """A small randomly initialised CycleGAN ResNet generator wrapped as dn loads it."""
    params = {"ngf": 8, "n_blocks": 2, **params}
    torch.manual_seed(seed)
    module = ResnetGenerator(**params).eval().requires_grad_(False)
    return Generator(module, "cyclegan-resnet", params, module.stride)


def affine_model() -> nn.Sequential:
    """A small random generator (stride 2) whose InstanceNorms have their own γ and β; it renders
    glass far from the input's colour."""
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.ReflectionPad2d(1),
        nn.Conv2d(3, 8, 3),
        nn.InstanceNorm2d(8, affine=True),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.InstanceNorm2d(16, affine=True, eps=1e-3),
        nn.ReLU(),
        nn.ConvTranspose2d(16, 8, 3, stride=2, padding=1, output_padding=1),
        nn.InstanceNorm2d(8, affine=True),
        nn.ReLU(),
        nn.Conv2d(8, 3, 1),
        nn.Tanh(),
    )
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, nn.InstanceNorm2d):
                layer.weight.copy_(1 + 0.5 * torch.randn_like(layer.weight))
                layer.bias.copy_(0.3 * torch.randn_like(layer.bias))
    return model.eval()


@pytest.fixture(scope="session")
def tissue() -> np.ndarray:
    """scikit-image's immunohistochemistry photograph: 512 × 512 real tissue (DAB + haematoxylin)."""
    return skimage.data.immunohistochemistry()


@pytest.fixture(scope="session")
def generator() -> Generator:
    return make_generator()


@pytest.fixture(scope="session")
def demo_generator() -> Generator:
    """The trained demo generator shipped in the package (DAB → AEC on real IHC tissue)."""
    return load_generator(DEMO_WEIGHTS)


@pytest.fixture
def checkpoint(tmp_path, generator):
    path = tmp_path / "latest_net_G_A.pth"
    torch.save(generator.module.state_dict(), path)
    return path
