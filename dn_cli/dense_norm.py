"""Dense Normalization: the layer that replaces InstanceNorm, and the converter that swaps it in.

The layer never sees tile coordinates. The pipeline fills one shared :class:`NormContext` per
batch: in ``plain`` mode every layer normalises each tile with its own moments (and records
them); in ``dense`` mode every layer reads the 3 × 3 neighbourhood of tile moments around each
batch item and blends them per feature pixel (DESIGN.md §4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

Weighting = Literal["bilinear", "flat"]


@dataclass
class Neighbourhood:
    """Moments of the 3 × 3 tiles around each batch item, per layer.

    ``moments[i]`` is ``(B, 3, 3, 2, C_i)`` for layer ``i`` (mean, inverse std); ``valid`` is
    ``(B, 3, 3)``, 0 where a neighbour is outside the grid or was skipped, and ``complete`` says
    (without a device sync) that every neighbour is valid. Index ``[1, 1]`` is the tile itself,
    ``[0, 0]`` its upper-left neighbour.
    """

    moments: list[torch.Tensor]
    valid: torch.Tensor
    complete: bool

    def slice(self, items: slice) -> Neighbourhood:
        """The neighbourhoods of some batch items only."""
        return Neighbourhood([m[items] for m in self.moments], self.valid[items], self.complete)


class MomentsRecorded(Exception):  # noqa: N818 (not an error: the collect pass is done)
    """Raised once every norm layer has recorded: collecting needs nothing after that."""


@dataclass
class NormContext:
    """State shared by every DenseNorm2d of one model, set by the pipeline before each forward.

    Attributes:
        tile_size: T in level pixels (feature geometry, DESIGN.md §2).
        margin: m in level pixels.
        mode: ``plain`` (per-tile InstanceNorm) or ``dense`` (moments from ``neighbourhood``).
        record: in plain mode, keep each layer's moments in ``recorded``; once all ``layers``
            have recorded, stop the forward (:class:`MomentsRecorded`): the rest of the network
            cannot change what was recorded (0: never stop).
        weighting: ``bilinear`` for DN, ``flat`` (mean of the valid neighbours) for KIN.
        inside: while recording, for each batch item the part of its padded tile that lies in the
            image, as fractions of the side (top, bottom, left, right); a tile with a part outside
            (mirrored image) records the moments of its in-image part only. None: all are whole.
    """

    tile_size: int = 512
    margin: int = 16
    mode: Literal["plain", "dense"] = "plain"
    record: bool = False
    layers: int = 0
    weighting: Weighting = "bilinear"
    neighbourhood: Neighbourhood | None = None
    inside: list[tuple[float, float, float, float]] | None = None
    recorded: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


def axis_weights(n: int, tile_size: int, margin: int, weighting: Weighting) -> torch.Tensor:
    """``(3, n)`` weights of the neighbours at offsets -1, 0, +1 for the n feature pixels of one axis.

    Feature pixel k of a padded tile sits at ``-m + (k + 0.5) * s`` from the tile's origin, with
    ``s = (T + 2m) / n``; its fractional grid coordinate relative to the tile is
    ``u = (x - T/2) / T`` and a neighbour at offset d gets the bilinear hat ``max(0, 1 - |u - d|)``.
    Both weightings sum to 1 over a complete neighbourhood (flat: 1/3 per axis).
    """
    if weighting == "flat":
        return torch.full((3, n), 1 / 3, dtype=torch.float64)
    stride = (tile_size + 2 * margin) / n
    x = -margin + (torch.arange(n, dtype=torch.float64) + 0.5) * stride
    u = (x - tile_size / 2) / tile_size
    offsets = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)[:, None]
    return (1 - (u[None, :] - offsets).abs()).clamp(min=0)


def dense_fields(
    moments: torch.Tensor, valid: torch.Tensor, complete: bool, wy_t: torch.Tensor, wx: torch.Tensor
) -> torch.Tensor:
    """Per-pixel moments ``(2, B, C, h, w)`` (mean, inverse std) blended from a neighbourhood.

    Args:
        moments: ``(B, 3, 3, 2, C)`` neighbourhood moments.
        valid: ``(B, 3, 3)`` neighbour mask; masked neighbours drop out and the remaining
            weights are renormalised (skipped when ``complete``: the weights already sum to 1).
        wy_t: ``(h, 3)`` row weights (transposed), ``wx``: ``(3, w)`` column weights.
    """
    if not complete:
        moments = moments * valid[..., None, None]
    along_x = torch.einsum("nabmc,bx->mncax", moments, wx)  # (2, B, C, 3, w): small
    fields = torch.matmul(wy_t, along_x)  # the only full-size write
    if not complete:
        total = torch.matmul(wy_t, torch.einsum("nab,bx->nax", valid, wx))  # (B, h, w)
        fields /= total[None, :, None]
    return fields


def fused_dense_norm(
    x: torch.Tensor,
    moments: torch.Tensor,
    valid: torch.Tensor,
    complete: bool,
    wy_t: torch.Tensor,
    wx: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """``(x − μ)·r·γ + β`` with every pixel's μ and r blended where they are used.

    The same numbers as :func:`dense_fields` then the normalisation, written as one broadcast
    expression over small tensors: ``μ(y, x) = Σ_a wy_a(y)·A_a(x)`` with
    ``A_a(x) = Σ_b wx_b(x)·M_ab``, ``(B, C, 3, w)``. Compiled, inductor fuses it into a single pass
    over ``x``: no ``(B, C, h, w)`` field is written and read back. Eagerly each term is a
    full-size temporary, so the eager layer keeps :func:`dense_fields`.
    """
    if not complete:
        moments = moments * valid[..., None, None]
    along_x = torch.einsum("nabmc,bx->mncax", moments, wx)  # (2, B, C, 3, w): small
    wy = wy_t.T[:, None, None, :, None]  # (3, 1, 1, h, 1)
    mean = wy[0] * along_x[0, :, :, 0, None] + wy[1] * along_x[0, :, :, 1, None] + wy[2] * along_x[0, :, :, 2, None]
    inv_std = wy[0] * along_x[1, :, :, 0, None] + wy[1] * along_x[1, :, :, 1, None] + wy[2] * along_x[1, :, :, 2, None]
    if not complete:
        across = torch.einsum("nab,bx->nax", valid, wx)[:, None, :, None]  # (B, 1, 3, 1, w)
        total = wy[0] * across[:, :, 0] + wy[1] * across[:, :, 1] + wy[2] * across[:, :, 2]
        mean, inv_std = mean / total, inv_std / total
    y = (x - mean) * inv_std
    if weight is not None:
        y = y * weight[:, None, None] + bias[:, None, None]
    return y


class DenseNorm2d(nn.Module):
    """InstanceNorm2d whose moments come from the shared :class:`NormContext`.

    Keeps the replaced layer's ``eps`` and affine parameters; statistics are float32 whatever the
    model's precision. ``fused`` picks :func:`fused_dense_norm` for the dense pass (the form a
    compiled model wants) over :func:`dense_fields` (the faster one eagerly).
    """

    def __init__(self, num_features: int, eps: float, context: NormContext, index: int) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.index = index
        self.context = context
        self.weight: nn.Parameter | None = None
        self.bias: nn.Parameter | None = None
        self.fused = False  # fused_dense_norm, for torch.compile: no full-size fields
        self._weights_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, affine={self.weight is not None}, index={self.index}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Moments and normalisation in float32 even under fp16/bf16 autocast.
        with torch.autocast(device_type=x.device.type, enabled=False):
            x32 = x.float()
            y = self._plain(x32) if self.context.mode == "plain" else self._dense(x32)
        return y.to(x.dtype)

    def _plain(self, x: torch.Tensor) -> torch.Tensor:
        # Instance norm is batch norm over a (1, B*C, h, w) view: one fused kernel that also
        # returns the mean and inverse std (biased variance, this layer's eps).
        b, c, h, w = x.shape
        weight = None if self.weight is None else self.weight.float().repeat(b)
        bias = None if self.bias is None else self.bias.float().repeat(b)
        y, mean, inv_std = torch.native_batch_norm(
            x.reshape(1, b * c, h, w), weight, bias, None, None, True, 0.0, self.eps
        )
        y, mean, inv_std = y.view(b, c, h, w), mean.view(b, c), inv_std.view(b, c)
        if self.context.record:
            if self.context.inside is not None:
                y, mean, inv_std = self._in_image_part(x, y, mean, inv_std, self.context.inside)
            self.context.recorded[self.index] = (mean, inv_std)
            if len(self.context.recorded) == self.context.layers:
                raise MomentsRecorded
        return y

    def _in_image_part(
        self, x: torch.Tensor, y: torch.Tensor, mean: torch.Tensor, inv_std: torch.Tensor, inside: list
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tiles that reach past the image normalised with, and recording, the moments of the
        feature pixels whose centres lie in the image (mirrored content would bias them). One tile
        at a time: a tile's moments never depend on the batch it came in."""
        y, mean, inv_std = y.clone(), mean.clone(), inv_std.clone()
        h, w = x.shape[2:]
        for i, (top, bottom, left, right) in enumerate(inside):
            if (top, bottom, left, right) == (0, 1, 0, 1):
                continue
            rows, cols = _span(top, bottom, h), _span(left, right, w)
            var, mean[i] = torch.var_mean(x[i, :, rows, cols], dim=(1, 2), correction=0)
            inv_std[i] = torch.rsqrt(var + self.eps)
            y[i] = (x[i] - mean[i][:, None, None]) * inv_std[i][:, None, None]
            if self.weight is not None:
                y[i] = y[i] * self.weight.float()[:, None, None] + self.bias.float()[:, None, None]
        return y, mean, inv_std

    def _dense(self, x: torch.Tensor) -> torch.Tensor:
        nb = self.context.neighbourhood
        if nb is None:
            raise RuntimeError("DenseNorm2d in dense mode without a neighbourhood")
        wy_t, wx = self._axis_weights(x.shape[2], x.shape[3], x.device)
        if self.fused:
            weight, bias = (None, None) if self.weight is None else (self.weight.float(), self.bias.float())
            return fused_dense_norm(x, nb.moments[self.index], nb.valid, nb.complete, wy_t, wx, weight, bias)
        fields = dense_fields(nb.moments[self.index], nb.valid, nb.complete, wy_t, wx)
        y = torch.sub(x, fields[0], out=fields[0])  # in place: these tensors are the largest here
        y.mul_(fields[1])
        if self.weight is not None:
            y.mul_(self.weight.float()[:, None, None]).add_(self.bias.float()[:, None, None])
        return y

    def _axis_weights(self, h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.context
        key = (h, w, c.tile_size, c.margin, c.weighting, device)
        if key not in self._weights_cache:
            wy, wx = (axis_weights(n, c.tile_size, c.margin, c.weighting).to(device, torch.float32) for n in (h, w))
            self._weights_cache[key] = (wy.T.contiguous(), wx)
        return self._weights_cache[key]


def _span(start: float, stop: float, n: int) -> slice:
    """The feature pixels of an axis of ``n`` whose centres lie in ``[start, stop)`` (fractions of
    the side); at least the one nearest the part's middle, as a sliver may hold no centre."""
    first, end = math.ceil(start * n - 0.5), math.ceil(stop * n - 0.5)
    if end <= first:
        first = min(n - 1, int((start + stop) / 2 * n))
        end = first + 1
    return slice(first, end)


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
