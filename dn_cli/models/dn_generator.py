"""The ResNet generator of the Dense Normalization / KIN research code (Ho et al. 2022, 2024).

Same plan as CycleGAN's, with named blocks (``block1``, ``downsampleblock2/3``,
``resnetblocks4``, ``upsampleblock5/6``, ``block7``): each down block is a 3 × 3 convolution,
InstanceNorm, ReLU and a stride-2 reflection-padded 3 × 3 convolution (``Downsample``: its
``reflectionpad`` and ``conv``); each up block a replication-padded 4 × 4 transposed
convolution (stride 2; ``Upsample.model``) followed by the same 3 × 3 convolution, InstanceNorm
and ReLU. The output has as many channels as the input. Layout as published in
Kaminyou/Dense-Normalization and Kaminyou/URUST (``models/generator.py``, ``downsample.py``,
``upsample.py``). Their norm layers are either ``nn.InstanceNorm2d`` (no weights), or their own
TIN / KIN / DN layers, which keep affine weights shaped ``(1, C, 1, 1)`` when registered: loaded
here as an affine InstanceNorm.
"""

from __future__ import annotations

import re

import torch
from torch import nn


class Downsample(nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.reflectionpad = nn.ReflectionPad2d(1)
        self.conv = nn.Conv2d(features, features, 3, stride=2)

    def forward(self, x):
        return self.conv(self.reflectionpad(x))


class Upsample(nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.model = nn.Sequential(
            nn.ReplicationPad2d(1), nn.ConvTranspose2d(features, features, 4, stride=2, padding=3)
        )

    def forward(self, x):
        return self.model(x)


class BasicBlock(nn.Module):
    """[upsample] → 3 × 3 conv → InstanceNorm → ReLU → [downsample]."""

    def __init__(
        self, in_features: int, out_features: int, up: bool = False, down: bool = False, affine: bool = False
    ) -> None:
        super().__init__()
        if up:
            self.upsample = Upsample(in_features)
        self.conv = nn.Conv2d(in_features, out_features, 3, padding=1)
        self.instancenorm = nn.InstanceNorm2d(out_features, affine=affine)
        self.relu = nn.ReLU(True)
        if down:
            self.downsample = Downsample(out_features)

    def forward(self, x):
        if hasattr(self, "upsample"):
            x = self.upsample(x)
        x = self.relu(self.instancenorm(self.conv(x)))
        return self.downsample(x) if hasattr(self, "downsample") else x


class ResidualBlock(nn.Module):
    def __init__(self, features: int, affine: bool = False) -> None:
        super().__init__()
        self.model = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(features, features, 3),
            nn.InstanceNorm2d(features, affine=affine),
            nn.ReLU(True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(features, features, 3),
            nn.InstanceNorm2d(features, affine=affine),
        )

    def forward(self, x):
        return x + self.model(x)


class DnResearchGenerator(nn.Module):
    """``Generator(in_channels, features, residuals)`` of the DN / KIN code, total stride 4;
    ``affine``: norm layers with weights (the research code's TIN / KIN / DN layers)."""

    stride = 4

    def __init__(self, in_channels: int = 3, features: int = 64, residuals: int = 9, affine: bool = False) -> None:
        super().__init__()
        f, a = features, affine
        self.reflectionpad = nn.ReflectionPad2d(3)
        self.block1 = nn.Sequential(nn.Conv2d(in_channels, f, 7), nn.InstanceNorm2d(f, affine=a), nn.ReLU(True))
        self.downsampleblock2 = BasicBlock(f, f * 2, down=True, affine=a)
        self.downsampleblock3 = BasicBlock(f * 2, f * 4, down=True, affine=a)
        self.resnetblocks4 = nn.Sequential(*[ResidualBlock(f * 4, affine=a) for _ in range(residuals)])
        self.upsampleblock5 = BasicBlock(f * 4, f * 2, up=True, affine=a)
        self.upsampleblock6 = BasicBlock(f * 2, f, up=True, affine=a)
        self.block7 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(f, in_channels, 7), nn.Tanh())

    def forward(self, x):
        x = self.downsampleblock3(self.downsampleblock2(self.block1(self.reflectionpad(x))))
        return self.block7(self.upsampleblock6(self.upsampleblock5(self.resnetblocks4(x))))


def infer_params(sd: dict[str, torch.Tensor]) -> dict | None:
    stem = sd.get("block1.0.weight")
    if stem is None:
        return None
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"resnetblocks4\.(\d+)\.", k))}
    return {
        "in_channels": stem.shape[1],
        "features": stem.shape[0],
        "residuals": len(blocks),
        "affine": "block1.1.weight" in sd,
    }


NORM_AFFINE = re.compile(r"(block1\.1|.*\.instancenorm|resnetblocks4\.\d+\.model\.[26])\.(weight|bias)$")


def adapt_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The research code's TIN / KIN / DN layers keep affine weights as ``(1, C, 1, 1)``:
    InstanceNorm's are ``(C,)``."""
    return {k: v.flatten() if NORM_AFFINE.match(k) and v.dim() == 4 else v for k, v in sd.items()}
