"""dn's pipeline against a plain, slow two-pass Dense Normalization written from
docs/dense-normalization.md alone: none of dn's DN code (layer, moment ring, schedule, tile
reader) is used by the reference, only the model's weights and the image.

The model is affine (InstanceNorms with their own γ and β) and has a downsampled layer; the grid
has ragged edge tiles and skipped tiles.
"""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from dn_cli.dense_norm import DenseNorm2d
from dn_cli.images import ArrayImage, Canvas
from dn_cli.models import Generator
from dn_cli.pipeline import TileRunner, translate

from .conftest import affine_model

T, M = 64, 16  # tile side and margin: the padded tile is 96, a multiple of the model's stride 2
SKIPPED = [(1, 2), (3, 0), (0, 5)]  # an interior tile, a corner tile and one on the top edge


def reflect(index: np.ndarray, size: int) -> np.ndarray:
    """numpy.pad(mode="reflect") as an index map, repeated as often as needed."""
    period = 2 * (size - 1)
    index = np.abs(index) % period
    return np.where(index < size, index, period - index)


class ReferenceNorm(nn.Module):
    """Stands in for one InstanceNorm2d: hands its input to the reference, which knows the tile."""

    def __init__(self, reference: "Reference", norm: nn.InstanceNorm2d) -> None:
        super().__init__()
        self.reference, self.norm = [reference], norm  # a list: the reference is not a submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reference[0].normalise_here(self.norm, x)


class Reference:
    """Two passes over the grid: collect every tile's moments, then apply every tile.

    Any model: a float64 copy of it whose InstanceNorms call back into the reference, which
    numbers them in the order they run.
    """

    def __init__(
        self, model: nn.Module, image: np.ndarray, active: np.ndarray, weighting: str, tile: int = T, margin: int = M
    ) -> None:
        self.model = copy.deepcopy(model).double().eval()
        self._swap_norms(self.model)
        self.image, self.active, self.weighting = image, active, weighting
        self.tile, self.margin = tile, margin
        self.height, self.width = image.shape[:2]
        self.rows, self.cols = active.shape
        self.moments: dict[tuple[int, int], list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def _swap_norms(self, module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, nn.InstanceNorm2d):
                setattr(module, name, ReferenceNorm(self, child))
            else:
                self._swap_norms(child)

    def normalise_here(self, norm: nn.InstanceNorm2d, x: torch.Tensor) -> torch.Tensor:
        row, col = self.at
        index, self.calls = self.calls, self.calls + 1
        return self.dense(row, col, index, norm, x) if self.applying else self.collect(row, col, norm, x)

    def padded_tile(self, row: int, col: int) -> torch.Tensor:
        """The tile grown by the margin, read from the image; only outside it mirrored."""
        t, m = self.tile, self.margin
        ys = reflect(np.arange(row * t - m, row * t + t + m), self.height)
        xs = reflect(np.arange(col * t - m, col * t + t + m), self.width)
        pixels = torch.from_numpy(self.image[np.ix_(ys, xs)].astype(np.float32))
        return (pixels.permute(2, 0, 1)[None] / 127.5 - 1).double()

    def centres(self, row: int, col: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Image coordinates (y, x) of a feature map's pixel centres."""
        t, m = self.tile, self.margin
        s = (t + 2 * m) / size
        k = np.arange(size)
        return row * t - m + (k + 0.5) * s, col * t - m + (k + 0.5) * s

    def inside(self, row: int, col: int, size: int) -> torch.Tensor:
        """Which feature pixels' centres lie in the image: a tile's moments are taken over those."""
        ys, xs = self.centres(row, col, size)
        return torch.from_numpy(((ys >= 0) & (ys < self.height))[:, None] & ((xs >= 0) & (xs < self.width))[None])

    def collect(self, row: int, col: int, norm: nn.InstanceNorm2d, x: torch.Tensor) -> torch.Tensor:
        part = x[0][:, self.inside(row, col, x.shape[-1])]  # (C, in-image pixels)
        mean = part.mean(dim=1)
        inverse_std = 1 / torch.sqrt(part.var(dim=1, unbiased=False) + norm.eps)
        self.moments.setdefault((row, col), []).append((mean, inverse_std))
        return self.normalise(norm, x, mean[:, None, None], inverse_std[:, None, None])

    def dense(self, row: int, col: int, index: int, norm: nn.InstanceNorm2d, x: torch.Tensor) -> torch.Tensor:
        """Every pixel's moments: the weighted mean of the valid tiles' (weights renormalised)."""
        ys, xs = self.centres(row, col, x.shape[-1])
        y, xx = np.meshgrid(ys, xs, indexing="ij")
        weights = self.weights(row, col, y, xx)  # {tile: (h, w) weights}
        total = torch.from_numpy(sum(weights.values()))
        mean = sum(torch.from_numpy(w) * self.moments[tile][index][0][:, None, None] for tile, w in weights.items())
        inverse_std = sum(
            torch.from_numpy(w) * self.moments[tile][index][1][:, None, None] for tile, w in weights.items()
        )
        return self.normalise(norm, x, (mean / total)[None], (inverse_std / total)[None])

    def valid(self, i: int, j: int) -> bool:
        return 0 <= i < self.rows and 0 <= j < self.cols and bool(self.active[i, j])

    def weights(self, row: int, col: int, y: np.ndarray, x: np.ndarray) -> dict[tuple[int, int], np.ndarray]:
        """The valid tiles whose moments pixels at (y, x) blend, with their weights per pixel."""
        if self.weighting == "flat":  # KIN: the 3 × 3 neighbours' mean, constant over the tile
            around = [(i, j) for i in range(row - 1, row + 2) for j in range(col - 1, col + 2)]
            return {tile: np.ones_like(y) for tile in around if self.valid(*tile)}
        t = self.tile
        u, v = (x - t / 2) / t, (y - t / 2) / t  # fractional grid coordinates; tile centres are integers
        weights = {}
        for i, j in np.ndindex(self.rows, self.cols):  # every tile's bilinear hat: 1 at its centre, 0 a tile away
            if self.valid(i, j):
                weights[(i, j)] = np.clip(1 - np.abs(v - i), 0, None) * np.clip(1 - np.abs(u - j), 0, None)
        return weights

    @staticmethod
    def normalise(norm: nn.InstanceNorm2d, x, mean, inverse_std) -> torch.Tensor:
        y = (x - mean) * inverse_std
        if norm.affine:
            y = y * norm.weight[None, :, None, None] + norm.bias[None, :, None, None]
        return y

    def run(self, row: int, col: int, applying: bool) -> torch.Tensor:
        self.at, self.applying, self.calls = (row, col), applying, 0
        return self.model(self.padded_tile(row, col))

    def translate(self) -> np.ndarray:
        with torch.no_grad():
            for tile in np.ndindex(self.rows, self.cols):
                if self.valid(*tile):
                    self.run(*tile, applying=False)
            tiles = list(zip(*np.nonzero(self.active), strict=True))
            out = np.zeros((self.height, self.width, 3), np.uint8)
            t, m = self.tile, self.margin
            for i, j in tiles:
                y = self.run(i, j, applying=True)[0, :, m : m + t, m : m + t]
                pixels = ((y + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
                h, w = min(t, self.height - i * t), min(t, self.width - j * t)
                out[i * t : i * t + h, j * t : j * t + w] = pixels[:h, :w]
        return out


@pytest.fixture(scope="module")
def reference_case(tissue):
    """200 × 330 of tissue: 4 × 6 tiles, the last row 8 pixels high, the last column 10 wide."""
    image = np.ascontiguousarray(tissue[40:240, 100:430])
    active = np.ones((4, 6), bool)
    for tile in SKIPPED:
        active[tile] = False
    return image, active


@pytest.mark.parametrize("fused", [False, True], ids=["fields", "fused"])
@pytest.mark.parametrize("policy, weighting", [("dn", "bilinear"), ("kin", "flat")])
def test_dn_equals_a_slow_two_pass_reference_written_from_the_docs(reference_case, policy, weighting, fused):
    image, active = reference_case
    model = affine_model()
    expected = Reference(affine_model(), image, active, weighting).translate()
    runner = TileRunner(Generator(model, "test", {}, 2), torch.device("cpu"))
    for layer in runner.module.modules():
        if isinstance(layer, DenseNorm2d):
            layer.fused = fused  # the dense pass as a compiled model runs it, here eagerly
    for batch_size in (1, 4):
        canvas = Canvas(image.shape[1], image.shape[0])
        translate(
            ArrayImage(image),
            canvas,
            runner,
            policy=policy,
            tile_size=T,
            margin=M,
            batch_size=batch_size,
            active=active,
        )
        for i, j in zip(*np.nonzero(active), strict=True):
            got = canvas.pixels[i * T : (i + 1) * T, j * T : (j + 1) * T].astype(int)
            want = expected[i * T : (i + 1) * T, j * T : (j + 1) * T].astype(int)
            difference = np.abs(got - want)
            # float32 against float64: a value at .5 may round either way, nothing more
            assert difference.max() <= 1 and (difference > 0).mean() < 1e-3, (policy, batch_size, (i, j))


def test_the_reference_sees_what_dn_must_not_do(reference_case):
    """The reference is sharp enough to catch the mistakes it guards against: edge tiles taking
    moments over their mirrored part too, and skipped tiles left in their neighbours' blend."""
    image, active = reference_case
    model = affine_model()
    expected = Reference(model, image, active, "bilinear").translate()

    class Mirrored(Reference):
        def inside(self, row, col, size):
            return torch.ones(size, size, dtype=torch.bool)

    class Unmasked(Reference):
        def valid(self, i, j):
            return 0 <= i < self.rows and 0 <= j < self.cols

    for mistake in (Mirrored, Unmasked):
        wrong = mistake(model, image, active, "bilinear").translate()
        worst = max(
            np.abs(
                wrong[i * T : (i + 1) * T, j * T : (j + 1) * T].astype(int)
                - expected[i * T : (i + 1) * T, j * T : (j + 1) * T]
            ).max()
            for i, j in zip(*np.nonzero(active), strict=True)
        )
        assert worst > 2, mistake.__name__
