"""Shared fixtures: a real tissue image and small real generators."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch

from dn_cli.models import Generator
from dn_cli.models.resnet import ResnetGenerator


def make_generator(seed: int = 0, **params) -> Generator:
    """A small randomly initialised CycleGAN ResNet generator wrapped as dn loads it."""
    params = {"ngf": 8, "n_blocks": 2, **params}
    torch.manual_seed(seed)
    module = ResnetGenerator(**params).eval().requires_grad_(False)
    return Generator(module, "cyclegan-resnet", params, module.stride)


@pytest.fixture(scope="session")
def tissue() -> np.ndarray:
    """scikit-image's immunohistochemistry photograph: 512 × 512 real tissue (DAB + haematoxylin)."""
    return skimage.data.immunohistochemistry()


@pytest.fixture(scope="session")
def generator() -> Generator:
    return make_generator()


@pytest.fixture
def checkpoint(tmp_path, generator):
    path = tmp_path / "latest_net_G_A.pth"
    torch.save(generator.module.state_dict(), path)
    return path
