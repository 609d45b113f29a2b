"""The DN layer, its interpolation and the converter, against plain and slow references."""

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from dn_cli.dense_norm import (
    CollectingLayer,
    DenseNorm2d,
    DensePass,
    PassScope,
    axis_weights,
    convert_instance_norm,
    dense_fields,
    row_weights,
)
from dn_cli.moments import MomentLayout, MomentRing
from dn_cli.pipeline import TileRunner

from .conftest import make_generator

T, M = 64, 16  # tile size and margin used throughout: padded tiles are 96 pixels


def moment_ring(values: torch.Tensor, valid: torch.Tensor) -> MomentRing:
    """A ring holding a ``(rows, cols, C)`` grid of means (inverse stds = means + 2); tiles where
    ``valid`` is False are never written, as if skipped."""
    rows, cols, channels = values.shape
    ring = MomentRing(MomentLayout([channels]), rows, cols, slots=rows, device=torch.device("cpu"))
    for index in range(rows * cols):
        row, col = divmod(index, cols)
        if valid[row, col]:
            packed = torch.stack([values[row, col], values[row, col] + 2])[None]
            ring.write([index], packed, oldest_needed_row=-1)
    return ring


def field_for_tile(ring: MomentRing, row: int, col: int, n: int, weighting="bilinear") -> torch.Tensor:
    nb = ring.gather(range(row * ring.cols + col, row * ring.cols + col + 1))
    rows, wx = row_weights(n, T, M, weighting), axis_weights(n, T, M, weighting).float()
    fields = dense_fields(nb.moments[0], nb.valid, nb.complete, rows._replace(weights=rows.weights.float()), wx)
    fields = fields.expand(-1, -1, -1, n, -1)  # flat rows: one row for the whole tile
    torch.testing.assert_close(fields[1], fields[0] + 2)  # inverse stds blend the same way
    return fields[0, 0]  # means, (C, n, n)


def reference_field(values, valid, row, col, n):
    """Slow, obvious DESIGN.md §4: bilinear blend in global slide coordinates, masked, renormalised."""
    rows, cols, channels = values.shape
    values, valid = values.double().numpy(), valid.numpy()  # numpy scalars: the loop runs in seconds, not tens
    stride = (T + 2 * M) / n
    out = np.zeros((channels, n, n))
    for ky in range(n):
        for kx in range(n):
            y = row * T - M + (ky + 0.5) * stride
            x = col * T - M + (kx + 0.5) * stride
            v, u = (y - T / 2) / T, (x - T / 2) / T
            i0, j0 = math.floor(v), math.floor(u)
            acc, total = np.zeros(channels), 0.0
            for i, wi in ((i0, 1 - (v - i0)), (i0 + 1, v - i0)):
                for j, wj in ((j0, 1 - (u - j0)), (j0 + 1, u - j0)):
                    if 0 <= i < rows and 0 <= j < cols and valid[i, j] and wi * wj > 0:
                        acc += wi * wj * values[i, j]
                        total += wi * wj
            out[:, ky, kx] = acc / total
    return torch.from_numpy(out)


@pytest.mark.parametrize("n", [96, 48, 24])  # feature maps at stride 1, 2, 4
def test_vectorised_interpolation_equals_per_pixel_reference(n):
    torch.manual_seed(n)
    values = torch.randn(4, 5, 3)
    valid = torch.rand(4, 5) > 0.3
    tiles = [(r, c) for r in range(4) for c in range(5) if valid[r, c]]
    ring = moment_ring(values, valid)
    for row, col in tiles:
        torch.testing.assert_close(
            field_for_tile(ring, row, col, n).double(),
            reference_field(values, valid, row, col, n),
            atol=1e-5,
            rtol=1e-5,
        )


def test_field_is_continuous_across_seams():
    torch.manual_seed(1)
    values = torch.randn(2, 3, 4)
    ring = moment_ring(values, torch.ones(2, 3, dtype=torch.bool))
    left, right = field_for_tile(ring, 0, 0, 96), field_for_tile(ring, 0, 1, 96)
    # Where two padded tiles overlap they see the same slide pixels: the fields must agree exactly.
    torch.testing.assert_close(left[:, :, T : T + 2 * M], right[:, :, 0 : 2 * M], atol=1e-6, rtol=0)
    # The jump across the seam (last output pixel of one tile to the first of the next)
    # is no bigger than the field's ordinary per-pixel slope.
    jump = (right[:, :, M] - left[:, :, M + T - 1]).abs().max()
    slope = left[:, :, M : M + T].diff(dim=2).abs().max()
    assert jump <= slope + 1e-6


def test_missing_neighbours_are_masked_and_weights_renormalised():
    values = torch.zeros(3, 3, 1)
    values[1, 1] = 5.0
    values[1, 2] = 100.0  # skipped tile: must not leak into its neighbour
    valid = torch.ones(3, 3, dtype=torch.bool)
    valid[1, 2] = False
    field = field_for_tile(moment_ring(values, valid), 1, 1, 96)
    assert field.max() <= 5 + 1e-5  # the blend of 0s and the tile's own 5, nothing of the 100
    # The border of a 1 × 1 grid reduces to replicate padding: the tile's own moments everywhere.
    alone = moment_ring(torch.full((1, 1, 2), 3.0), torch.ones(1, 1, dtype=torch.bool))
    torch.testing.assert_close(field_for_tile(alone, 0, 0, 48), torch.full((2, 48, 48), 3.0))


def test_kin_weighting_is_the_mean_of_valid_neighbours_constant_over_the_tile():
    torch.manual_seed(2)
    values = torch.randn(3, 4, 2)
    valid = torch.ones(3, 4, dtype=torch.bool)
    valid[0, 0] = False
    field = field_for_tile(moment_ring(values, valid), 1, 1, 24, weighting="flat")
    expected = values[0:3, 0:3][valid[0:3, 0:3]].mean(dim=0)
    torch.testing.assert_close(field, expected[:, None, None].expand(2, 24, 24))


def test_bilinear_axis_weights_are_a_partition_of_unity():
    for n in (96, 48, 24):
        for weighting in ("bilinear", "flat"):
            w = axis_weights(n, T, M, weighting)
            torch.testing.assert_close(w.sum(0), torch.ones(n, dtype=torch.float64))
            assert (w[1] > 0).all()  # the tile itself always contributes


def test_converter_swaps_every_instance_norm_at_known_paths():
    module = make_generator(n_blocks=3).module
    converted, layers = convert_instance_norm(module, PassScope())
    assert not any(isinstance(m, nn.InstanceNorm2d) for m in converted.modules())
    assert isinstance(converted.model[2], DenseNorm2d)
    assert isinstance(converted.model[10].conv_block[2], DenseNorm2d)
    assert isinstance(converted.model[10].conv_block[6], DenseNorm2d)
    assert len(layers) == 1 + 2 + 2 * 3 + 2
    assert [layer.index for layer in layers] == list(range(len(layers)))
    assert [layer.num_features for layer in layers][:3] == [8, 16, 32]


def test_converter_keeps_eps_and_affine_parameters():
    torch.manual_seed(3)
    norm = nn.InstanceNorm2d(4, eps=1e-3, affine=True)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    original = nn.Sequential(nn.Conv2d(3, 4, 3), norm)
    converted, (layer,) = convert_instance_norm(
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.InstanceNorm2d(4, eps=1e-3, affine=True)), PassScope()
    )
    converted.load_state_dict(original.state_dict())
    assert layer.eps == 1e-3
    x = torch.randn(2, 3, 20, 20)
    torch.testing.assert_close(converted(x), original(x), atol=1e-5, rtol=1e-5)


def with_affine_norms(generator):
    """The generator with trained-looking InstanceNorm affine weights (every real checkpoint of
    the DN research code and many CycleGANs have them), not the identity."""
    generator = copy.deepcopy(generator)
    torch.manual_seed(4)
    for m in generator.module.modules():
        if isinstance(m, nn.InstanceNorm2d):
            m.affine = True
            m.weight = nn.Parameter(1 + 0.5 * torch.randn(m.num_features), requires_grad=False)
            m.bias = nn.Parameter(0.3 * torch.randn(m.num_features), requires_grad=False)
    return generator


@pytest.mark.parametrize("affine", [False, True])
def test_one_tile_grid_equals_the_original_model(generator, tissue, affine):
    generator = with_affine_norms(generator) if affine else generator
    runner = TileRunner(generator, torch.device("cpu"))
    runner.geometry = DensePass(tile_size=T, margin=M)
    tile = np.ascontiguousarray(tissue[:96, :96])[None]
    ring = MomentRing(runner.layout, rows=1, cols=1, slots=1, device=torch.device("cpu"))
    ring.write(range(1), runner.collect(tile), oldest_needed_row=-1)
    dense = runner.forward(tile, ring.gather(range(1)))
    x = torch.from_numpy(tile).permute(0, 3, 1, 2).float() / 127.5 - 1
    torch.testing.assert_close(dense, generator.module(x), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(runner.forward(tile, None), generator.module(x), atol=1e-5, rtol=1e-4)


def test_statistics_stay_float32_under_reduced_precision():
    layer = DenseNorm2d(3, 1e-5, PassScope(), index=0)
    x = (torch.randn(1, 3, 16, 16) * 300).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, mean, inv_std = layer.collect(x)
    assert y.dtype == torch.bfloat16
    assert mean.dtype == inv_std.dtype == torch.float32
    torch.testing.assert_close(y.float(), nn.functional.instance_norm(x.float()), atol=0.05, rtol=0.02)


def test_tiles_past_the_image_edge_record_the_moments_of_their_in_image_part(generator, tissue):
    """The top-left tile of a 64-pixel grid (margin 16): its padded box starts 16 pixels before the
    image. Every norm layer records, for it, the moments of the feature pixels inside the image;
    an interior tile records those of its whole padded box, as plain InstanceNorm does."""
    from dn_cli.geometry import TileGrid
    from dn_cli.images import ArrayImage, read_padded

    runner = TileRunner(generator, torch.device("cpu"))
    grid = TileGrid(256, 256, 64, 16)
    tiles = np.stack([read_padded(ArrayImage(tissue[:256, :256]), grid.padded_box(*grid.position(i))) for i in (0, 5)])
    inside = [grid.inside(*grid.position(i)) for i in (0, 5)]
    assert inside == [(16, 96, 16, 96), (0, 96, 0, 96)]  # pixels of the padded tile
    runner.geometry = DensePass(tile_size=64, margin=16)
    seen = {}

    def keep(collecting, inputs, output):
        seen[collecting.layer.index] = (inputs[0].clone(), output[1:])

    layers = [m for m in runner.module.modules() if isinstance(m, DenseNorm2d)]
    hooks = [m.register_forward_hook(keep) for m in runner.collecting.modules() if isinstance(m, CollectingLayer)]
    runner.collect(tiles, inside)
    for h in hooks:
        h.remove()
    for index, (x, (mean, inv_std)) in seen.items():
        first = round(x.shape[2] * 16 / 96 + 0.5 - 1e-9)  # the first feature pixel centred in the image
        var, expected_mean = torch.var_mean(x[0, :, first:, first:], dim=(1, 2), correction=0)
        torch.testing.assert_close(mean[0], expected_mean, atol=1e-5, rtol=1e-5, msg=f"layer {index}")
        torch.testing.assert_close(inv_std[0], torch.rsqrt(var + layers[index].eps), atol=1e-4, rtol=1e-4)
        var, expected_mean = torch.var_mean(x[1], dim=(1, 2), correction=0)  # the interior tile: all of it
        torch.testing.assert_close(mean[1], expected_mean, atol=1e-5, rtol=1e-5)
    # Every layer (the last too: no exception ends the pass before its hook), every scale.
    assert len(seen) == len(layers) and {x.shape[2] for x, _ in seen.values()} == {96, 48, 24}


@pytest.mark.parametrize("weighting", ["bilinear", "flat"])
@pytest.mark.parametrize("masked", [False, True])
def test_the_fused_dense_norm_equals_fields_then_normalisation(weighting, masked):
    """The form a compiled model runs (μ and r blended where used) gives the numbers of the eager
    one (two full-size fields), to float32 rounding, with and without masked neighbours."""
    from dn_cli.dense_norm import fused_dense_norm

    torch.manual_seed(0)
    batch, channels, h, w = 3, 8, 24, 20
    x = torch.randn(batch, channels, h, w) * 3 + 1
    moments = torch.randn(batch, 3, 3, 2, channels)
    moments[:, :, :, 1] = moments[:, :, :, 1].abs() + 0.2  # inverse stds are positive
    valid = (torch.rand(batch, 3, 3) > 0.4).float() if masked else torch.ones(batch, 3, 3)
    valid[:, 1, 1] = 1  # a tile always has its own moments
    rows = row_weights(h, T, M, weighting)
    rows = rows._replace(weights=rows.weights.float())
    wx = axis_weights(w, T, M, weighting).float()
    gamma, beta = torch.randn(channels), torch.randn(channels)
    fields = dense_fields(moments, valid, not masked, rows, wx)
    expected = (x - fields[0]) * fields[1] * gamma[:, None, None] + beta[:, None, None]
    fused = fused_dense_norm(x, moments, valid, not masked, rows.weights, wx, gamma, beta)
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)
