"""ResNet generators of CycleGAN (Zhu et al. 2017) and CUT / FastCUT (Park et al. 2020).

Built from the published structure, in the reference layer order so their ``model.N.*``
state-dict keys load directly: reflection-padded 7 × 7 stem, downsampling, residual blocks,
upsampling, a 7 × 7 head and ``tanh``. CycleGAN downsamples with stride-2 convolutions and
upsamples with transposed convolutions; CUT's default antialiased variant uses a stride-1
convolution followed by a blur-pool ``Downsample``, and a blur ``Upsample`` before a stride-1
convolution (Zhang 2019), each with a fixed binomial filter stored as the buffer ``filt``.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn


def binomial_filter(size: int) -> torch.Tensor:
    """Normalised 2-D binomial filter: [1, 2, 1] ⊗ [1, 2, 1] / 16 for size 3."""
    row = torch.tensor([math.comb(size - 1, k) for k in range(size)], dtype=torch.float32)
    kernel = row[:, None] * row[None, :]
    return kernel / kernel.sum()


class BlurDownsample(nn.Module):
    """Blur with a 3 × 3 binomial filter, then keep every second pixel (reflection padding)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("filt", binomial_filter(3)[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x):
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), self.filt, stride=2, groups=x.shape[1])


class BlurUpsample(nn.Module):
    """Double the resolution by a transposed convolution with a 4 × 4 binomial filter (× 4)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("filt", (binomial_filter(4) * 4)[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x):
        y = F.conv_transpose2d(
            F.pad(x, (1, 1, 1, 1), mode="replicate"), self.filt, stride=2, padding=2, groups=x.shape[1]
        )
        return y[:, :, 1:-1, 1:-1]


class ResnetBlock(nn.Module):
    """Two reflection-padded 3 × 3 convolutions with InstanceNorm and a skip connection."""

    def __init__(self, dim: int, use_dropout: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, 3),
            nn.InstanceNorm2d(dim),
            nn.ReLU(True),
        ]
        if use_dropout:
            layers.append(nn.Dropout(0.5))
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), nn.InstanceNorm2d(dim)]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """``ResnetGenerator`` with InstanceNorm (no affine), as trained with ``--norm instance``.

    Args:
        input_nc: input channels (3 for RGB).
        output_nc: output channels.
        ngf: filters of the first convolution.
        n_blocks: residual blocks at the bottleneck.
        n_downsampling: down/up stages; the total stride is ``2 ** n_downsampling``.
        use_dropout: dropout inside the residual blocks (CycleGAN without ``--no_dropout``).
        antialias_down: CUT's blur-pool downsampling (False: CycleGAN / ``--no_antialias``).
        antialias_up: CUT's blur upsampling (False: CycleGAN / ``--no_antialias_up``).
    """

    def __init__(
        self,
        input_nc: int = 3,
        output_nc: int = 3,
        ngf: int = 64,
        n_blocks: int = 9,
        n_downsampling: int = 2,
        use_dropout: bool = False,
        antialias_down: bool = False,
        antialias_up: bool = False,
    ) -> None:
        super().__init__()
        self.stride = 2**n_downsampling
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(input_nc, ngf, 7),
            nn.InstanceNorm2d(ngf),
            nn.ReLU(True),
        ]
        for i in range(n_downsampling):
            ch = ngf * 2**i
            if antialias_down:
                layers += [
                    nn.Conv2d(ch, ch * 2, 3, padding=1),
                    nn.InstanceNorm2d(ch * 2),
                    nn.ReLU(True),
                    BlurDownsample(ch * 2),
                ]
            else:
                layers += [nn.Conv2d(ch, ch * 2, 3, stride=2, padding=1), nn.InstanceNorm2d(ch * 2), nn.ReLU(True)]
        bottleneck = ngf * 2**n_downsampling
        layers += [ResnetBlock(bottleneck, use_dropout) for _ in range(n_blocks)]
        for i in range(n_downsampling, 0, -1):
            ch = ngf * 2**i
            if antialias_up:
                layers += [BlurUpsample(ch), nn.Conv2d(ch, ch // 2, 3, padding=1)]
            else:
                layers += [nn.ConvTranspose2d(ch, ch // 2, 3, stride=2, padding=1, output_padding=1)]
            layers += [nn.InstanceNorm2d(ch // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


def infer_params(sd: dict[str, torch.Tensor]) -> dict | None:
    """Constructor parameters from a ``model.N.*`` state dict (None if it is not one)."""
    stem = sd.get("model.1.weight")
    blocks = sorted({int(m.group(1)) for k in sd if (m := re.match(r"model\.(\d+)\.conv_block\.", k))})
    if stem is None or stem.ndim != 4 or not blocks:
        return None
    filters = sorted(int(m.group(1)) for k in sd if (m := re.fullmatch(r"model\.(\d+)\.filt", k)))
    convs = sorted(
        int(m.group(1)) for k, v in sd.items() if v.ndim == 4 and (m := re.fullmatch(r"model\.(\d+)\.weight", k))
    )
    down_convs = [i for i in convs if 1 < i < blocks[0]]
    return {
        "input_nc": stem.shape[1],
        "output_nc": sd[f"model.{convs[-1]}.weight"].shape[0],
        "ngf": stem.shape[0],
        "n_blocks": len(blocks),
        "n_downsampling": len(down_convs),
        "use_dropout": f"model.{blocks[0]}.conv_block.6.weight" in sd,
        "antialias_down": any(i < blocks[0] for i in filters),
        "antialias_up": any(i > blocks[-1] for i in filters),
    }
