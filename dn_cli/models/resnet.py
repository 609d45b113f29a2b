"""The CycleGAN ResNet generator (Zhu et al. 2017), built from its published structure.

Layer order matches the reference implementation so its ``model.N.*`` state-dict keys load
directly: reflection-padded 7 × 7 stem, stride-2 convolutions down, residual blocks,
transposed convolutions up, a 7 × 7 head and ``tanh``.
"""

from __future__ import annotations

from torch import nn


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
    """CycleGAN ``ResnetGenerator`` with InstanceNorm (no affine), as in ``--norm instance``.

    Args:
        input_nc: input channels (3 for RGB).
        output_nc: output channels.
        ngf: filters of the first convolution.
        n_blocks: residual blocks at the bottleneck.
        n_downsampling: stride-2 stages; the total stride is ``2 ** n_downsampling``.
        use_dropout: dropout inside the residual blocks (CycleGAN ``--no_dropout`` off).
    """

    def __init__(
        self,
        input_nc: int = 3,
        output_nc: int = 3,
        ngf: int = 64,
        n_blocks: int = 9,
        n_downsampling: int = 2,
        use_dropout: bool = False,
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
            layers += [nn.Conv2d(ch, ch * 2, 3, stride=2, padding=1), nn.InstanceNorm2d(ch * 2), nn.ReLU(True)]
        bottleneck = ngf * 2**n_downsampling
        layers += [ResnetBlock(bottleneck, use_dropout) for _ in range(n_blocks)]
        for i in range(n_downsampling, 0, -1):
            ch = ngf * 2**i
            layers += [
                nn.ConvTranspose2d(ch, ch // 2, 3, stride=2, padding=1, output_padding=1),
                nn.InstanceNorm2d(ch // 2),
                nn.ReLU(True),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)
