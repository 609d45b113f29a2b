"""Dense Normalization: the layer that replaces InstanceNorm, and the converter that swaps it in.

The layer never sees tile coordinates. The pipeline fills one shared :class:`NormContext` per
batch: in ``plain`` mode every layer normalises each tile with its own moments (and records
them); in ``dense`` mode every layer reads the 3 × 3 neighbourhood of tile moments around each
batch item and blends them per feature pixel (DESIGN.md §4).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

Weighting = Literal["bilinear", "flat"]


@dataclass
class Neighbourhood:
    """Moments of the 3 × 3 tiles around each batch item, per layer.

    ``means[i]`` and ``inv_stds[i]`` are ``(B, 3, 3, C_i)`` for layer ``i``; ``valid`` is
    ``(B, 3, 3)``, 0 where a neighbour is outside the grid or was skipped. Index ``[1, 1]`` is the
    tile itself, ``[0, 0]`` its upper-left neighbour.
    """

    means: list[torch.Tensor]
    inv_stds: list[torch.Tensor]
    valid: torch.Tensor


@dataclass
class NormContext:
    """State shared by every DenseNorm2d of one model, set by the pipeline before each forward.

    Attributes:
        tile_size: T in level pixels (feature geometry, DESIGN.md §2).
        margin: m in level pixels.
        mode: ``plain`` (per-tile InstanceNorm) or ``dense`` (moments from ``neighbourhood``).
        record: in plain mode, keep each layer's moments in ``recorded``.
        weighting: ``bilinear`` for DN, ``flat`` (mean of the valid neighbours) for KIN.
    """

    tile_size: int = 512
    margin: int = 16
    mode: Literal["plain", "dense"] = "plain"
    record: bool = False
    weighting: Weighting = "bilinear"
    neighbourhood: Neighbourhood | None = None
    recorded: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


def axis_weights(n: int, tile_size: int, margin: int, weighting: Weighting) -> torch.Tensor:
    """``(3, n)`` weights of the neighbours at offsets -1, 0, +1 for the n feature pixels of one axis.

    Feature pixel k of a padded tile sits at ``-m + (k + 0.5) * s`` from the tile's origin, with
    ``s = (T + 2m) / n``; its fractional grid coordinate relative to the tile is
    ``u = (x - T/2) / T`` and a neighbour at offset d gets the bilinear hat ``max(0, 1 - |u - d|)``.
    """
    if weighting == "flat":
        return torch.ones(3, n, dtype=torch.float64)
    stride = (tile_size + 2 * margin) / n
    x = -margin + (torch.arange(n, dtype=torch.float64) + 0.5) * stride
    u = (x - tile_size / 2) / tile_size
    offsets = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)[:, None]
    return (1 - (u[None, :] - offsets).abs()).clamp(min=0)


def dense_moments(
    means: torch.Tensor, inv_stds: torch.Tensor, valid: torch.Tensor, wy: torch.Tensor, wx: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel mean and inverse std ``(B, C, h, w)`` blended from a ``(B, 3, 3, C)`` neighbourhood.

    The blend is separable (``wy`` is ``(3, h)``, ``wx`` is ``(3, w)``); masked neighbours drop out
    and the remaining weights are renormalised, which needs one more channel: the blended mask.
    """
    channels = means.shape[-1]
    v = valid[..., None]
    stacked = torch.cat([means * v, inv_stds * v, v], dim=-1)  # (B, 3a, 3b, 2C+1)
    along_x = torch.einsum("nabk,bx->nakx", stacked, wx)
    field_ = torch.einsum("nakx,ay->nkyx", along_x, wy)
    total = field_[:, -1:]
    return field_[:, :channels] / total, field_[:, channels : 2 * channels] / total


class DenseNorm2d(nn.Module):
    """InstanceNorm2d whose moments come from the shared :class:`NormContext`.

    Keeps the replaced layer's ``eps`` and affine parameters; statistics are float32 whatever the
    model's precision.
    """

    def __init__(self, num_features: int, eps: float, context: NormContext, index: int) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.index = index
        self.context = context
        self.weight: nn.Parameter | None = None
        self.bias: nn.Parameter | None = None
        self._weights_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, affine={self.weight is not None}, index={self.index}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Moments and normalisation in float32 even under fp16/bf16 autocast.
        with torch.autocast(device_type=x.device.type, enabled=False):
            x32 = x.float()
            if self.context.mode == "plain":
                var, mean = torch.var_mean(x32, dim=(2, 3), keepdim=True, correction=0)
                inv_std = torch.rsqrt(var + self.eps)
                if self.context.record:
                    self.context.recorded[self.index] = (mean.flatten(1), inv_std.flatten(1))
            else:
                mean, inv_std = self._dense(x32)
            y = (x32 - mean) * inv_std
            if self.weight is not None:
                y = y * self.weight.float()[None, :, None, None] + self.bias.float()[None, :, None, None]
        return y.to(x.dtype)

    def _dense(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        nb = self.context.neighbourhood
        if nb is None:
            raise RuntimeError("DenseNorm2d in dense mode without a neighbourhood")
        wy, wx = self._axis_weights(x.shape[2], x.shape[3], x.device)
        return dense_moments(nb.means[self.index], nb.inv_stds[self.index], nb.valid, wy, wx)

    def _axis_weights(self, h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.context
        key = (h, w, c.tile_size, c.margin, c.weighting, device)
        if key not in self._weights_cache:
            self._weights_cache[key] = tuple(
                axis_weights(n, c.tile_size, c.margin, c.weighting).to(device, torch.float32) for n in (h, w)
            )
        return self._weights_cache[key]


def convert_instance_norm(module: nn.Module, context: NormContext) -> tuple[nn.Module, list[DenseNorm2d]]:
    """Replace every ``nn.InstanceNorm2d`` in ``module`` by a :class:`DenseNorm2d` sharing ``context``.

    Returns the converted module (``module`` itself unless it is an InstanceNorm) and the new
    layers in module order; ``layer.index`` is the position in that list.
    """
    layers: list[DenseNorm2d] = []

    def convert(m: nn.Module) -> nn.Module:
        if isinstance(m, nn.InstanceNorm2d):
            dense = DenseNorm2d(m.num_features, m.eps, context, index=len(layers))
            if m.affine:
                dense.weight = nn.Parameter(m.weight.detach().clone(), requires_grad=False)
                dense.bias = nn.Parameter(m.bias.detach().clone(), requires_grad=False)
            layers.append(dense)
            return dense
        for name, child in m.named_children():
            new = convert(child)
            if new is not child:
                setattr(m, name, new)
        return m

    return convert(module), layers
