"""Dense Normalization: the layer that replaces InstanceNorm, and the converter that swaps it in.

The layer never sees tile coordinates. Each forward of a converted model runs one
:class:`DensePass`, a value the runner sets for that forward only (``PassScope.running``):
``plain`` normalises each tile with its own moments; ``collect`` does the same over each tile's
in-image part and yields the moments; ``apply`` blends, per feature pixel, the 3 × 3
neighbourhood of tile moments around each batch item (DESIGN.md §4). Layers read the pass and
write nothing back: collecting runs a copy of the model's graph cut after its last norm layer
that returns every layer's moments (:func:`collecting_model`).
"""

from __future__ import annotations

import operator
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import fx, nn

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


@dataclass(frozen=True)
class DensePass:
    """What one forward of a converted model does.

    Attributes:
        kind: ``plain`` (per-tile InstanceNorm), ``collect`` (per-tile, over the in-image part,
            yielding the moments) or ``apply`` (moments blended from ``neighbourhood``).
        tile_size: T in level pixels (feature geometry, DESIGN.md §2).
        margin: m in level pixels.
        weighting: ``bilinear`` for DN, ``flat`` (mean of the valid neighbours) for KIN.
        neighbourhood: the moments around each batch item (``apply``).
        inside: ``(B, 4)`` integers, for each batch item the part of its padded tile that lies in
            the image, in pixels of that tile (top, bottom, left, right): a tile with a part
            outside (mirrored image) is normalised with, and yields, the moments of the feature
            pixels centred in that part (``collect``). A tensor, not numbers, so that a compiled
            model does not specialise on every edge. None: all are whole.
    """

    kind: Literal["plain", "collect", "apply"] = "plain"
    tile_size: int = 512
    margin: int = 16
    weighting: Weighting = "bilinear"
    neighbourhood: Neighbourhood | None = None
    inside: torch.Tensor | None = None

    def slice(self, items: slice) -> DensePass:
        """The pass of some batch items only."""
        nb, inside = self.neighbourhood, self.inside
        return replace(
            self,
            neighbourhood=None if nb is None else nb.slice(items),
            inside=None if inside is None else inside[items],
        )


class PassScope:
    """Where the DN layers of one converted model find the pass of the current forward. Only its
    runner sets it, for one forward at a time; outside ``running`` every layer is plain."""

    def __init__(self) -> None:
        self.current = DensePass()

    @contextmanager
    def running(self, dense_pass: DensePass) -> Iterator[None]:
        previous, self.current = self.current, dense_pass
        try:
            yield
        finally:
            self.current = previous


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
    """InstanceNorm2d whose moments follow the pass in its :class:`PassScope`.

    Keeps the replaced layer's ``eps`` and affine parameters; statistics are float32 whatever the
    model's precision. ``fused`` picks :func:`fused_dense_norm` for the apply pass (the form a
    compiled model wants) over :func:`dense_fields` (the faster one eagerly).
    """

    def __init__(self, num_features: int, eps: float, scope: PassScope, index: int) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.index = index
        self.scope = scope
        self.weight: nn.Parameter | None = None
        self.bias: nn.Parameter | None = None
        self.fused = False  # fused_dense_norm, for torch.compile: no full-size fields
        self._weights_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, affine={self.weight is not None}, index={self.index}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scope.current.kind != "apply":
            return self.collect(x)[0]
        with torch.autocast(device_type=x.device.type, enabled=False):  # float32 even under fp16/bf16
            return self._dense(x.float()).to(x.dtype)

    def collect(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(output, mean, inverse std)`` of per-tile InstanceNorm, each tile over its in-image
        part; moments and normalisation in float32 even under fp16/bf16."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            y, mean, inv_std = self._plain(x.float())
        return y.to(x.dtype), mean, inv_std

    def _plain(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # Instance norm is batch norm over a (1, B*C, h, w) view: one fused kernel that also
        # returns the mean and inverse std (biased variance, this layer's eps).
        b, c, h, w = x.shape
        weight = None if self.weight is None else self.weight.float().repeat(b)
        bias = None if self.bias is None else self.bias.float().repeat(b)
        y, mean, inv_std = torch.native_batch_norm(
            x.reshape(1, b * c, h, w), weight, bias, None, None, True, 0.0, self.eps
        )
        y, mean, inv_std = y.view(b, c, h, w), mean.view(b, c), inv_std.view(b, c)
        inside = self.scope.current.inside
        if self.scope.current.kind == "collect" and inside is not None:
            y, mean, inv_std = self._in_image_part(x, y, mean, inv_std, inside)
        return y, mean, inv_std

    def _in_image_part(
        self, x: torch.Tensor, y: torch.Tensor, mean: torch.Tensor, inv_std: torch.Tensor, inside: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tiles that reach past the image normalised with, and yielding, the moments of the
        feature pixels whose centres lie in the image (mirrored content would bias them); whole
        tiles keep their plain result. Each tile on its own: its moments never depend on the
        batch it came in."""
        side = self.scope.current.tile_size + 2 * self.scope.current.margin
        h, w = x.shape[2:]
        rows, cols = _centred_in(inside[:, 0:2], h, side), _centred_in(inside[:, 2:4], w, side)
        mask = (rows[:, :, None] & cols[:, None, :])[:, None].to(x.dtype)  # (B, 1, h, w)
        count = mask.sum(dim=(2, 3))
        part_mean = (x * mask).sum(dim=(2, 3)) / count
        part_var = ((x - part_mean[..., None, None]).square() * mask).sum(dim=(2, 3)) / count
        part_inv_std = torch.rsqrt(part_var + self.eps)
        part = (x - part_mean[..., None, None]) * part_inv_std[..., None, None]
        if self.weight is not None:
            part = part * self.weight.float()[:, None, None] + self.bias.float()[:, None, None]
        whole = ((inside[:, 0] == 0) & (inside[:, 1] == side) & (inside[:, 2] == 0) & (inside[:, 3] == side))[:, None]
        return (
            torch.where(whole[..., None, None], y, part),
            torch.where(whole, mean, part_mean),
            torch.where(whole, inv_std, part_inv_std),
        )

    def _dense(self, x: torch.Tensor) -> torch.Tensor:
        p = self.scope.current
        nb = p.neighbourhood
        if nb is None:
            raise RuntimeError("DenseNorm2d applying without a neighbourhood")
        wy_t, wx = self._axis_weights(x.shape[2], x.shape[3], x.device, p)
        if self.fused:
            weight, bias = (None, None) if self.weight is None else (self.weight.float(), self.bias.float())
            return fused_dense_norm(x, nb.moments[self.index], nb.valid, nb.complete, wy_t, wx, weight, bias)
        fields = dense_fields(nb.moments[self.index], nb.valid, nb.complete, wy_t, wx)
        y = torch.sub(x, fields[0], out=fields[0])  # in place: these tensors are the largest here
        y.mul_(fields[1])
        if self.weight is not None:
            y.mul_(self.weight.float()[:, None, None]).add_(self.bias.float()[:, None, None])
        return y

    def _axis_weights(self, h: int, w: int, device: torch.device, p: DensePass) -> tuple[torch.Tensor, torch.Tensor]:
        key = (h, w, p.tile_size, p.margin, p.weighting, device)
        if key not in self._weights_cache:
            wy, wx = (axis_weights(n, p.tile_size, p.margin, p.weighting).to(device, torch.float32) for n in (h, w))
            self._weights_cache[key] = (wy.T.contiguous(), wx)
        return self._weights_cache[key]


def _centred_in(bounds: torch.Tensor, n: int, side: int) -> torch.Tensor:
    """``(B, n)``: which of the ``n`` feature pixels along an axis of a ``side``-pixel padded tile
    have their centres, at ``(k + ½)·side/n``, in ``[start, stop)`` (``bounds`` ``(B, 2)`` integer
    pixels; integer arithmetic, exact); at least the one nearest the part's middle, as a sliver
    may hold no centre."""
    k = torch.arange(n, device=bounds.device)
    start, stop = bounds[:, 0:1], bounds[:, 1:2]
    centres = (2 * k + 1) * side  # 2n × each centre, in pixels
    inside = (centres >= 2 * n * start) & (centres < 2 * n * stop)
    middle = ((start + stop) * n // (2 * side)).clamp(max=n - 1)
    return inside | (~inside.any(dim=1, keepdim=True) & (k == middle))


def convert_instance_norm(module: nn.Module, scope: PassScope) -> tuple[nn.Module, list[DenseNorm2d]]:
    """Replace every ``nn.InstanceNorm2d`` in ``module`` by a :class:`DenseNorm2d` reading ``scope``.

    Returns the converted module (``module`` itself unless it is an InstanceNorm) and the new
    layers in module order; ``layer.index`` is the position in that list.
    """
    layers: list[DenseNorm2d] = []

    def convert(m: nn.Module) -> nn.Module:
        if isinstance(m, nn.InstanceNorm2d):
            dense = DenseNorm2d(m.num_features, m.eps, scope, index=len(layers))
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


class _Tracer(fx.Tracer):
    """Traces a converted model with its DN layers as opaque calls."""

    def is_leaf_module(self, m: nn.Module, qualified_name: str) -> bool:
        return isinstance(m, DenseNorm2d) or super().is_leaf_module(m, qualified_name)


class CollectingLayer(nn.Module):
    """A DN layer's collect, as a module the cut graph calls: ``(output, mean, inverse std)``."""

    def __init__(self, layer: DenseNorm2d) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.layer.collect(x)


class WholeForwardCollecting(nn.Module):
    """Collecting for a model fx cannot trace: the whole forward, each layer's moments taken by a
    hook from its input (computed twice: the price of a model that cannot be cut)."""

    def __init__(self, module: nn.Module, layers: list[DenseNorm2d]) -> None:
        super().__init__()
        self.module, self.layers = module, layers

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        moments: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

        def take(layer: DenseNorm2d, inputs: tuple, _output) -> None:
            moments[layer.index] = layer.collect(inputs[0])[1:]

        hooks = [layer.register_forward_hook(take) for layer in self.layers]
        try:
            self.module(x)
        finally:
            for hook in hooks:
                hook.remove()
        return tuple(m for index in range(len(self.layers)) for m in moments[index])


def collecting_model(module: nn.Module, layers: list[DenseNorm2d]) -> nn.Module:
    """A model that returns every DN layer's ``(mean, inverse std)`` in layer order, flattened,
    under per-tile IN over each tile's in-image part: the converted model's graph cut after its
    last norm layer (nothing there can change what was collected; for a ResNet generator that
    skips the output convolutions), with no state and no exception. Only models built of dn's
    own and torch's modules are traced: tracing runs a forward on proxies, and a user's class may
    keep Python state or branch on it (a trace would change the state, or bake one branch in).
    Those, and anything torch.fx cannot cut, are collected by the whole forward instead."""
    if not all(type(m).__module__.startswith(("dn_cli.", "torch.nn.")) for m in module.modules()):
        return WholeForwardCollecting(module, layers)
    try:
        graph = _Tracer().trace(module)
    except Exception:  # any user code fx cannot follow
        return WholeForwardCollecting(module, layers)
    root = fx.GraphModule(module, graph)
    moments: dict[int, tuple[fx.Node, fx.Node]] = {}
    for node in list(graph.nodes):
        if node.op != "call_module" or not isinstance(layer := root.get_submodule(node.target), DenseNorm2d):
            continue
        if layer.index in moments:  # one layer run twice: its moments would be ambiguous
            return WholeForwardCollecting(module, layers)
        name = f"collecting_{layer.index}"
        root.add_submodule(name, CollectingLayer(layer))
        with graph.inserting_after(node):
            collected = graph.call_module(name, node.args, node.kwargs)
        with graph.inserting_after(collected):
            parts = [graph.call_function(operator.getitem, (collected, k)) for k in range(3)]
        node.replace_all_uses_with(parts[0])
        graph.erase_node(node)
        moments[layer.index] = (parts[1], parts[2])
    if sorted(moments) != list(range(len(layers))):
        return WholeForwardCollecting(module, layers)
    output = next(node for node in graph.nodes if node.op == "output")
    output.args = (tuple(m for index in range(len(layers)) for m in moments[index]),)
    graph.eliminate_dead_code()
    root.recompile()
    root.delete_all_unused_submodules()
    return root
