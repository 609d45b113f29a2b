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
from typing import Literal, NamedTuple

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
        moment_stride: S, the spacing of the moments the neighbourhood holds (``geometry.MomentGrid``):
            None for the tile centres (T), else T/2.
        neighbourhood: the moments around each batch item (``apply``).
        inside: for each batch item the part of its padded tile that lies in the image, in
            pixels of that tile (top, bottom, left, right): a tile with a part outside (mirrored
            image) is normalised with, and yields, the moments of the feature pixels centred in
            that part (``collect``). None: all are whole. The eager layer crops these parts.
        inside_tensor: the same as a ``(B, 4)`` tensor on the device, for the compiled (fused)
            layer, which masks instead of cropping: numbers would make it specialise on every edge.
    """

    kind: Literal["plain", "collect", "apply"] = "plain"
    tile_size: int = 512
    margin: int = 16
    weighting: Weighting = "bilinear"
    moment_stride: int | None = None
    neighbourhood: Neighbourhood | None = None
    inside: tuple[tuple[int, int, int, int], ...] | None = None
    inside_tensor: torch.Tensor | None = None

    def slice(self, items: slice) -> DensePass:
        """The pass of some batch items only."""
        nb, inside, inside_tensor = self.neighbourhood, self.inside, self.inside_tensor
        return replace(
            self,
            neighbourhood=None if nb is None else nb.slice(items),
            inside=None if inside is None else inside[items],
            inside_tensor=None if inside_tensor is None else inside_tensor[items],
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


def axis_weights(
    n: int, tile_size: int, margin: int, weighting: Weighting, moment_stride: int | None = None
) -> torch.Tensor:
    """``(3, n)`` weights of the neighbours at offsets -1, 0, +1 for the n feature pixels of one axis.

    Feature pixel k of a padded tile sits at ``-m + (k + 0.5) * s`` from the tile's origin, with
    ``s = (T + 2m) / n``; its fractional coordinate on the moment grid relative to the tile is
    ``u = (x - T/2) / S`` (S: the moment stride, T by default: moments at the tile centres; T/2:
    also halfway between them), and the moments at offset d get the bilinear hat
    ``max(0, 1 - |u - d|)``. ``u`` is held within [-1, 1]: with S = T/2 the margin lies beyond
    the outer moments of the neighbourhood and takes theirs (with S = T, ``2m ≤ T`` keeps it
    within already). Both weightings sum to 1 over a complete neighbourhood (flat: 1/3 per axis).
    """
    if weighting == "flat":
        return torch.full((3, n), 1 / 3, dtype=torch.float64)
    stride = (tile_size + 2 * margin) / n
    x = -margin + (torch.arange(n, dtype=torch.float64) + 0.5) * stride
    u = ((x - tile_size / 2) / (moment_stride or tile_size)).clamp(-1, 1)
    offsets = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)[:, None]
    return (1 - (u[None, :] - offsets).abs()).clamp(min=0)


class RowWeights(NamedTuple):
    """The neighbour rows' weights for every feature row, and where the pair they blend changes.

    ``weights`` is ``(3, h)``. Bilinear: rows before ``split`` mix the upper neighbour with the
    tile's own, rows from ``split`` on the tile's own with the lower one, two weights summing to 1
    (the hats cross at the tile's middle, and ``2m ≤ T`` keeps every row within one tile of it).
    ``split`` None: every row weighs the three alike (flat).
    """

    weights: torch.Tensor
    split: int | None


def row_weights(
    n: int, tile_size: int, margin: int, weighting: Weighting, moment_stride: int | None = None
) -> RowWeights:
    """:func:`axis_weights` for the rows, with the split :func:`dense_fields` blends by."""
    # Rows centred above the tile's middle (k + ½ < n/2) mix the upper neighbour; a middle row
    # (odd n) weighs the tile's own alone, on either side. Numbers, not a tensor's: nothing here may
    # read a tensor back, or a compiled model breaks its graph at every layer.
    weights = axis_weights(n, tile_size, margin, weighting, moment_stride)
    return RowWeights(weights, None if weighting == "flat" else n // 2)


def blend_rows(along_x: torch.Tensor, rows: RowWeights, channels_last: bool = False) -> torch.Tensor:
    """``Σ_a wy_a(y)·along_x[..., a, :]`` for every row y: ``(..., C, 3, w)`` → ``(..., C, h, w)``,
    channels innermost in memory if ``channels_last`` (the layout of the feature maps it meets).

    Each half of the rows is one lerp between two ``(..., 1, w)`` rows, so every field value is
    written once and nothing is read back (a matmul over 3 rows is several times slower). Flat
    rows blend to one row, ``(..., 1, w)``, that broadcasts over the tile.
    """
    if rows.split is None:
        return (along_x * rows.weights[:, :1]).sum(dim=-2, keepdim=True)
    wy, split = rows.weights, rows.split
    *lead, c, _, w = along_x.shape
    if channels_last:  # channels innermost in the rows read too, or the lerps cannot vectorise
        along_x = along_x.movedim(-3, -1).contiguous().movedim(-1, -3)
        out = along_x.new_empty(*lead, wy.shape[1], w, c).movedim(-1, -3)
    else:
        out = along_x.new_empty(*lead, c, wy.shape[1], w)
    middle = along_x[..., 1:2, :]
    torch.lerp(middle, along_x[..., 0:1, :], wy[0, :split, None], out=out[..., :split, :])
    torch.lerp(middle, along_x[..., 2:3, :], wy[2, split:, None], out=out[..., split:, :])
    return out


def dense_fields(
    moments: torch.Tensor,
    valid: torch.Tensor,
    complete: bool,
    rows: RowWeights,
    wx: torch.Tensor,
    channels_last: bool = False,
) -> torch.Tensor:
    """Per-pixel moments ``(2, B, C, h, w)`` (mean, inverse std) blended from a neighbourhood
    (``h`` is 1 for flat rows: the fields do not change down the tile).

    Args:
        moments: ``(B, 3, 3, 2, C)`` neighbourhood moments.
        valid: ``(B, 3, 3)`` neighbour mask; masked neighbours drop out and the remaining
            weights are renormalised (skipped when ``complete``: the weights already sum to 1).
        rows: the row weights, ``wx``: ``(3, w)`` column weights.
        channels_last: lay the fields out channels innermost, as the feature maps they meet.
    """
    if not complete:
        moments = moments * valid[..., None, None]
    fields = blend_rows(
        torch.einsum("nabmc,bx->mncax", moments, wx), rows, channels_last
    )  # from (2, B, C, 3, w): small
    if not complete:
        fields /= blend_rows(torch.einsum("nab,bx->nax", valid, wx)[:, None], rows)  # (B, 1, h, w)
    return fields


def fused_dense_norm(
    x: torch.Tensor,
    moments: torch.Tensor,
    valid: torch.Tensor,
    complete: bool,
    wy: torch.Tensor,
    wx: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """``(x − μ)·r·γ + β`` with every pixel's μ and r blended where they are used.

    The same numbers as :func:`dense_fields` then the normalisation, written as one broadcast
    expression over small tensors: ``μ(y, x) = Σ_a wy_a(y)·A_a(x)`` with
    ``A_a(x) = Σ_b wx_b(x)·M_ab``, ``(B, C, 3, w)``. Compiled, inductor fuses it into a single pass
    over ``x``: no ``(B, C, h, w)`` field is written and read back. Eagerly each term is a
    full-size temporary, so the eager layer keeps :func:`dense_fields`. ``wy``: ``(3, h)`` row weights.
    """
    if not complete:
        moments = moments * valid[..., None, None]
    along_x = torch.einsum("nabmc,bx->mncax", moments, wx)  # (2, B, C, 3, w): small
    wy = wy[:, None, None, :, None]  # (3, 1, 1, h, 1)
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
        self._weights_cache: dict[tuple, tuple[RowWeights, torch.Tensor]] = {}

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
        p = self.scope.current
        past_edge = p.kind == "collect" and p.inside_tensor is not None  # some tiles reach past the image
        if not self.fused and (past_edge or x.device.type == "cpu"):
            return self._tile_by_tile(x, p.inside if past_edge else None)  # compiled, p.inside is never read
        # Instance norm is batch norm over a (1, B*C, h, w) view: one fused kernel that also
        # returns the mean and inverse std (biased variance, this layer's eps).
        b, c, h, w = x.shape
        weight = None if self.weight is None else self.weight.float().repeat(b)
        bias = None if self.bias is None else self.bias.float().repeat(b)
        y, mean, inv_std = torch.native_batch_norm(
            x.reshape(1, b * c, h, w), weight, bias, None, None, True, 0.0, self.eps
        )
        y, mean, inv_std = y.view(b, c, h, w), mean.view(b, c), inv_std.view(b, c)
        if past_edge:  # compiled: masked, no shape depending on an edge
            return self._masked_to_image(x, y, mean, inv_std, p.inside_tensor)
        return y, mean, inv_std

    def _tile_by_tile(
        self, x: torch.Tensor, inside: tuple[tuple[int, int, int, int], ...] | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-tile InstanceNorm as moments, then one pass that writes ``x·s + t``: the eager
        form wherever some tiles reach past the image (``inside``), and on a CPU, where it beats
        the batch-norm kernel (docs/benchmarks.md). Tiles that reach past the image are normalised
        with, and yield, the moments of the feature pixels whose centres lie in the image
        (mirrored content would bias them); each tile's moments come from its own pixels only."""
        if inside is None:
            mean = x.mean(dim=(2, 3))
            variance = (x - mean[..., None, None]).square_().mean(dim=(2, 3))
        else:
            side = self.scope.current.tile_size + 2 * self.scope.current.margin
            h, w = x.shape[2:]
            parts = []
            for i, (top, bottom, left, right) in enumerate(inside):
                (r0, r1), (c0, c1) = centred_range(top, bottom, h, side), centred_range(left, right, w, side)
                parts.append(_moments(x[i, :, r0:r1, c0:c1]))
            mean, variance = (torch.stack(m) for m in zip(*parts, strict=True))
        inv_std = torch.rsqrt(variance + self.eps)
        scale = inv_std if self.weight is None else inv_std * self.weight.float()
        shift = -mean * scale if self.bias is None else self.bias.float() - mean * scale
        return torch.addcmul(shift[..., None, None], x, scale[..., None, None]), mean, inv_std

    def _masked_to_image(
        self, x: torch.Tensor, y: torch.Tensor, mean: torch.Tensor, inv_std: torch.Tensor, inside: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`_tile_by_tile`'s parts as a compiled model wants them: every tile masked, no shape
        depending on an edge, whole tiles keeping their plain result (inductor fuses the masked
        sums; eagerly each term would be a full-size temporary)."""
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
        rows, wx = self._axis_weights(x.shape[2], x.shape[3], x.device, p)
        weight, bias = (None, None) if self.weight is None else (self.weight.float(), self.bias.float())
        moments = nb.moments[self.index]
        if self.fused:
            return fused_dense_norm(x, moments, nb.valid, nb.complete, rows.weights, wx, weight, bias)
        if weight is not None:  # γ folded into the inverse stds before blending (it is linear): one pass less
            moments = moments * torch.stack([torch.ones_like(weight), weight])
        # The runner's tiles arrive channels-last, and convolutions keep that order on a CPU.
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        mean, scale = dense_fields(moments, nb.valid, nb.complete, rows, wx, channels_last)
        y = torch.sub(x, mean, out=mean) if mean.shape == x.shape else x - mean  # in place: the largest tensors
        return y.mul_(scale) if bias is None else torch.addcmul(bias[:, None, None], y, scale, out=y)

    def _axis_weights(self, h: int, w: int, device: torch.device, p: DensePass) -> tuple[RowWeights, torch.Tensor]:
        key = (h, w, p.tile_size, p.margin, p.weighting, p.moment_stride, device)
        if key not in self._weights_cache:
            rows = row_weights(h, p.tile_size, p.margin, p.weighting, p.moment_stride)
            wx = axis_weights(w, p.tile_size, p.margin, p.weighting, p.moment_stride)
            self._weights_cache[key] = (
                rows._replace(weights=rows.weights.to(device, torch.float32)),
                wx.to(device, torch.float32),
            )
        return self._weights_cache[key]


def _moments(part: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and biased variance per channel of a ``(C, h, w)`` crop, reduced over one contiguous
    copy in the crop's own memory order (reducing a strided crop directly is several times slower)."""
    if part.stride(0) == 1:  # channels innermost: channels-last feature maps
        pixels, dim = part.permute(1, 2, 0).reshape(-1, part.shape[0]), 0
    else:
        pixels, dim = part.reshape(part.shape[0], -1), 1
    mean = pixels.mean(dim=dim, keepdim=True)
    return mean.flatten(), (pixels - mean).square_().mean(dim=dim)  # not in place: pixels may be a view of x


def centred_range(start: int, stop: int, n: int, side: int) -> tuple[int, int]:
    """``[first, end)``: the feature pixels :func:`_centred_in` picks for one part, as a range
    (the picked pixels are always contiguous)."""
    first = max(0, -((side - 2 * n * start) // (2 * side)))  # ⌈(2n·start − side) / 2·side⌉
    end = min(n, -((side - 2 * n * stop) // (2 * side)))
    if end > first:
        return first, end
    middle = min((start + stop) * n // (2 * side), n - 1)
    return middle, middle + 1


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
