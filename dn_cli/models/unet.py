"""The pix2pix / CycleGAN U-Net generator (``unet_256``, ``unet_128``), from its published structure.

Blocks nest recursively (keys ``model.model.1.model.3.model.3...``): each block downsamples
with a 4 × 4 stride-2 convolution, runs the inner block, upsamples with a 4 × 4 transposed
convolution and concatenates its input (skip connection). The total stride is
``2 ** num_downs``: 256 for ``unet_256``, so ``T + 2m`` must be a multiple of 256.
"""

from __future__ import annotations

import re

import torch
from torch import nn


class UnetBlock(nn.Module):
    """One level of the U-Net: down, ``inner`` block, up, and (except outermost) the skip concat."""

    def __init__(
        self,
        outer_nc: int,
        inner_nc: int,
        input_nc: int | None = None,
        inner: nn.Module | None = None,
        outermost: bool = False,
        use_dropout: bool = False,
    ) -> None:
        super().__init__()
        self.outermost = outermost
        input_nc = outer_nc if input_nc is None else input_nc
        down_conv = nn.Conv2d(input_nc, inner_nc, 4, stride=2, padding=1)
        if outermost:
            layers = [down_conv, inner, nn.ReLU(True), nn.ConvTranspose2d(inner_nc * 2, outer_nc, 4, 2, 1), nn.Tanh()]
        elif inner is None:  # innermost
            layers = [
                nn.LeakyReLU(0.2, True),
                down_conv,
                nn.ReLU(True),
                nn.ConvTranspose2d(inner_nc, outer_nc, 4, 2, 1),
                nn.InstanceNorm2d(outer_nc),
            ]
        else:
            layers = [
                nn.LeakyReLU(0.2, True),
                down_conv,
                nn.InstanceNorm2d(inner_nc),
                inner,
                nn.ReLU(True),
                nn.ConvTranspose2d(inner_nc * 2, outer_nc, 4, 2, 1),
                nn.InstanceNorm2d(outer_nc),
            ]
            if use_dropout:
                layers.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x) if self.outermost else torch.cat([x, self.model(x)], 1)


class UnetGenerator(nn.Module):
    """U-Net with InstanceNorm; ``num_downs`` 8 is ``unet_256``, 7 is ``unet_128``."""

    def __init__(
        self, input_nc: int = 3, output_nc: int = 3, num_downs: int = 8, ngf: int = 64, use_dropout: bool = False
    ) -> None:
        super().__init__()
        self.stride = 2**num_downs
        block = UnetBlock(ngf * 8, ngf * 8)
        for _ in range(num_downs - 5):
            block = UnetBlock(ngf * 8, ngf * 8, inner=block, use_dropout=use_dropout)
        for mult in (4, 2, 1):
            block = UnetBlock(ngf * mult, ngf * mult * 2, inner=block)
        self.model = UnetBlock(output_nc, ngf, input_nc=input_nc, inner=block, outermost=True)

    def forward(self, x):
        return self.model(x)


def infer_params(sd: dict[str, torch.Tensor]) -> dict | None:
    """Constructor parameters from a ``model.model.*`` state dict (None if it is not one)."""
    first, last = sd.get("model.model.0.weight"), sd.get("model.model.3.weight")
    if first is None or last is None:
        return None
    # Inner blocks: model.model.1 then .model.3 repeatedly; count the down convolutions.
    inner = [k for k in sd if re.fullmatch(r"model\.model\.1(\.model\.3)*\.model\.1\.weight", k)]
    # Dropout has no weights: eval-mode output is the same with or without it.
    return {"input_nc": first.shape[1], "output_nc": last.shape[1], "num_downs": 1 + len(inner), "ngf": first.shape[0]}
