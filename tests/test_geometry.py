import numpy as np
import pytest

from dn_cli.errors import GeometryError
from dn_cli.geometry import Box, TileGrid, check_geometry, default_margin, reflect_indices
from dn_cli.images import ArrayImage, read_padded


@pytest.mark.parametrize("size", [1, 2, 5, 17])
@pytest.mark.parametrize("start,length", [(-3, 10), (-20, 60), (0, 5), (10, 30)])
def test_reflect_indices_match_numpy_pad(size, start, length):
    pad = 100
    padded = np.pad(np.arange(size), pad, mode="reflect" if size > 1 else "edge")
    assert reflect_indices(start, length, size).tolist() == padded[start + pad : start + pad + length].tolist()


def test_grid_covers_a_ragged_image():
    grid = TileGrid(width=300, height=130, tile_size=64, margin=16)
    assert (grid.rows, grid.cols, len(grid)) == (3, 5, 15)
    assert grid.padded_box(0, 0) == Box(-16, -16, 96, 96)
    assert grid.output_box(2, 4) == Box(256, 128, 44, 2)
    covered = np.zeros((130, 300), int)
    for i in range(len(grid)):
        b = grid.output_box(*grid.position(i))
        covered[b.y : b.y + b.height, b.x : b.x + b.width] += 1
    assert (covered == 1).all()


def test_padded_read_is_real_context_inside_and_reflection_outside():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (37, 50, 3), dtype=np.uint8)
    grid = TileGrid(width=50, height=37, tile_size=16, margin=8)
    pad = 64
    mirrored = np.pad(pixels, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    for i in range(len(grid)):
        b = grid.padded_box(*grid.position(i))
        expected = mirrored[b.y + pad : b.y + pad + b.height, b.x + pad : b.x + pad + b.width]
        np.testing.assert_array_equal(read_padded(ArrayImage(pixels), b), expected)


def test_padded_read_of_a_tiny_image_reflects_repeatedly():
    pixels = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    out = read_padded(ArrayImage(pixels), Box(-5, -5, 12, 12))
    assert out.shape == (12, 12, 3)
    np.testing.assert_array_equal(out[5:7, 5:8], pixels)


def test_default_margin_is_the_smallest_valid_from_16():
    assert default_margin(512, 4) == 16
    assert default_margin(510, 4) == 17
    assert default_margin(256, 256) == 128


def test_refuses_padded_size_not_divisible_by_stride_naming_valid_values():
    with pytest.raises(GeometryError, match=r"--margin 13 / 15 / 17, or --tile-size 504 / 508 / 512"):
        check_geometry(510, 16, 4)
    with pytest.raises(GeometryError, match="no margin fits"):
        check_geometry(129, 16, 4)
    check_geometry(512, 16, 4)


def test_refuses_margin_over_half_the_tile():
    with pytest.raises(GeometryError, match="--margin 32 or less"):
        check_geometry(64, 40, 4)
