"""Would moments on a grid finer than the tiles, or edge tiles read inside the image, bring DN
nearer the local reference, and the truth? (Issue 27, parts 2 and 3, measured before building.)

    python scripts/moment_stride_study.py                 # both models, tile 128, strides 128 and 64

A slow float64 Dense Normalization written from docs/dense-normalization.md, generalised: the
collect pass runs the model (per-window InstanceNorm, in-image pixels only, as dn does) on
windows of the tile's padded size centred every S pixels from the first tile's centre to the
last's (*edge windows*: also on the image's edges); the apply pass runs the tiles, each feature
pixel normalised with the bilinear blend (hats S wide; beyond the outer centres, theirs) of the
window moments around it — *edge tiles inward*: the edge tiles' windows shifted inside the
image, so the model's own padding meets its edge. S = T is dn's DN: checked against dn's own
output here and in tests/test_fidelity.py. Rings, yardsticks and mosaics: scripts/fidelity.py.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import skimage.data
import skimage.transform
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fidelity  # noqa: E402  (the benchmark's models, yardsticks and mosaics)

from dn_cli.geometry import default_margin  # noqa: E402
from dn_cli.metrics import local_reference, ring_errors, ring_masks, seam_score  # noqa: E402
from dn_cli.models import DEMO_MODEL, load_generator  # noqa: E402
from dn_cli.pipeline import TileRunner  # noqa: E402


def reflect(index: np.ndarray, size: int) -> np.ndarray:
    period = 2 * (size - 1)
    index = np.abs(index) % period
    return np.where(index < size, index, period - index)


class Norm(nn.Module):
    """Stands in for one InstanceNorm2d: the study normalises, knowing the window."""

    def __init__(self, study: FineDN, norm: nn.InstanceNorm2d) -> None:
        super().__init__()
        self.study, self.norm = [study], norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.study[0].normalise(self.norm, x)


class FineDN:
    """Two passes: every moment window collected, then every tile applied."""

    def __init__(
        self,
        model: nn.Module,
        image: np.ndarray,
        tile: int,
        margin: int,
        stride: int,
        edges: bool = False,
        inward: bool = False,
        blend_all: bool = False,
    ) -> None:
        self.model = copy.deepcopy(model).double().eval()
        self._swap(self.model)
        self.image, self.tile, self.margin, self.stride, self.inward = image, tile, margin, stride, inward
        self.blend_all = blend_all or edges  # every window around a pixel, not the tile's 3 × 3 only
        self.height, self.width = image.shape[:2]
        self.side = tile + 2 * margin
        first = tile / 2 - (tile / 2 // stride) * stride if edges else tile / 2  # every S either side of T/2
        last = lambda n: (max(n, -(-n // tile) * tile - tile / 2) if edges else -(-n // tile) * tile - tile / 2) + 1e-9  # noqa: E731
        self.ys, self.xs = np.arange(first, last(self.height), stride), np.arange(first, last(self.width), stride)
        self.moments: list[list[tuple[torch.Tensor, torch.Tensor]]] = []  # per layer: (Ky, Kx, C) each

    def _swap(self, module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, nn.InstanceNorm2d):
                setattr(module, name, Norm(self, child))
            else:
                self._swap(child)

    def window(self, y0: float, x0: float) -> torch.Tensor:
        ys = reflect(np.arange(int(y0), int(y0) + self.side), self.height)
        xs = reflect(np.arange(int(x0), int(x0) + self.side), self.width)
        pixels = torch.from_numpy(self.image[np.ix_(ys, xs)].astype(np.float64))
        return pixels.permute(2, 0, 1)[None] / 127.5 - 1

    def centres(self, origin: float, n: int) -> np.ndarray:
        return origin + (np.arange(n) + 0.5) * self.side / n

    def normalise(self, norm: nn.InstanceNorm2d, x: torch.Tensor) -> torch.Tensor:
        index, self.calls = self.calls, self.calls + 1
        ys, xs = self.centres(self.origin[0], x.shape[-2]), self.centres(self.origin[1], x.shape[-1])
        if self.collecting:
            inside = torch.from_numpy(((ys >= 0) & (ys < self.height))[:, None] & ((xs >= 0) & (xs < self.width)))
            part = x[0][:, inside]
            mean, inverse_std = part.mean(dim=1), 1 / torch.sqrt(part.var(dim=1, unbiased=False) + norm.eps)
            self.found.append((mean, inverse_std))
            mean, inverse_std = mean[:, None, None], inverse_std[:, None, None]
        else:

            def hat(at: np.ndarray, grid: np.ndarray) -> np.ndarray:  # beyond the outer centres: theirs
                at = np.clip(at, grid[0], grid[-1])
                return np.clip(1 - np.abs(at[None, :] - grid[:, None]) / self.stride, 0, None)

            def three(at: np.ndarray, grid: np.ndarray, tile: int) -> np.ndarray:
                """As dn blends: the tile's 3 × 3 windows only, the margin beyond them taking the
                outer ones', windows beyond the grid the edge window's."""
                f, offsets = self.tile // self.stride, np.arange(-1, 2)
                index = np.clip(f * tile + offsets, 0, len(grid) - 1)
                u = np.clip((at - (tile * self.tile + self.tile / 2)) / self.stride, -1, 1)
                weights = np.zeros((len(grid), len(at)))
                for d, k in zip(offsets, index, strict=True):
                    weights[k] += np.clip(1 - np.abs(u - d), 0, None)
                return weights

            if self.blend_all:
                wy, wx = torch.from_numpy(hat(ys, self.ys)), torch.from_numpy(hat(xs, self.xs))  # (K, n)
            else:
                wy, wx = (
                    torch.from_numpy(three(p, g, t))
                    for p, g, t in ((ys, self.ys, self.at[0]), (xs, self.xs, self.at[1]))
                )
            means, inverse_stds = self.moments[index]
            total = torch.einsum("ky,lx->yx", wy, wx)
            mean = torch.einsum("ky,lx,klc->cyx", wy, wx, means) / total
            inverse_std = torch.einsum("ky,lx,klc->cyx", wy, wx, inverse_stds) / total
        y = (x - mean) * inverse_std
        if norm.affine:
            y = y * norm.weight[None, :, None, None] + norm.bias[None, :, None, None]
        return y

    def run(self, y0: float, x0: float, collecting: bool) -> torch.Tensor:
        self.origin, self.collecting, self.calls, self.found = (y0, x0), collecting, 0, []
        return self.model(self.window(y0, x0))

    def collect(self, y0: float, x0: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
        self.run(y0, x0, True)
        return self.found

    def translate(self) -> np.ndarray:
        half = self.side / 2
        with torch.no_grad():
            grid = [[self.collect(cy - half, cx - half) for cx in self.xs] for cy in self.ys]
            for layer in range(len(grid[0][0])):
                means = torch.stack([torch.stack([w[layer][0] for w in row]) for row in grid])
                inverse_stds = torch.stack([torch.stack([w[layer][1] for w in row]) for row in grid])
                self.moments.append((means, inverse_stds))
            out = np.zeros_like(self.image)
            t, m = self.tile, self.margin
            for top in range(0, self.height, t):
                for left in range(0, self.width, t):
                    y0, x0 = top - m, left - m
                    if self.inward:  # edge tiles read inside the image: the model's own padding meets its edge
                        y0 = min(max(y0, 0), max(self.height - self.side, 0))
                        x0 = min(max(x0, 0), max(self.width - self.side, 0))
                    dy, dx = top - y0, left - x0
                    self.at = (top // t, left // t)
                    y = self.run(y0, x0, False)[0, :, dy : dy + t, dx : dx + t]
                    pixels = ((y + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
                    h, w = min(t, self.height - top), min(t, self.width - left)
                    out[top : top + h, left : left + w] = pixels[:h, :w]
        return out


def cost(runner: TileRunner, tile: int, repeats: int) -> dict[str, float]:
    """dn's own pipeline, ``--moment-stride`` tile against half, on a 2048² enlargement of the
    photograph (interleaved, the median over ``repeats``), in output megapixels per second."""
    big = skimage.transform.resize(skimage.data.immunohistochemistry(), (2048, 2048), order=1, preserve_range=True)
    big = np.ascontiguousarray(big.round().astype(np.uint8))
    rates: dict[str, list[float]] = {"tile": [], "half": []}
    for _ in range(repeats):
        for name, stride in (("tile", None), ("half", tile // 2)):
            start = time.perf_counter()
            fidelity.translated(big, runner, policy="dn", tile_size=tile, moment_stride=stride)
            rates[name].append(big.shape[0] * big.shape[1] / 1e6 / (time.perf_counter() - start))
    return {name: float(np.median(values)) for name, values in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tile-size", type=int, default=128)
    parser.add_argument("--strides", type=int, nargs="+", default=[128, 64])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--cost", type=int, metavar="REPEATS", help="only time dn's pipeline, tile against half")
    args = parser.parse_args()
    if args.cost:
        runner = TileRunner(load_generator(DEMO_MODEL), torch.device("cpu"))
        rates = cost(runner, args.tile_size, args.cost)
        print(f"2048², tile {args.tile_size}, demo model, CPU, Mpx/s (median of {args.cost}): {rates}")
        return
    torch.set_grad_enabled(False)
    stains = fidelity.training_script()
    image = skimage.data.immunohistochemistry()
    t = args.tile_size
    for name, path, truth_of in [
        ("DAB → AEC", DEMO_MODEL, stains.dab_to_aec),
        ("DAB → eosin", fidelity.RESTAIN_MODEL, stains.dab_to_eosin),
    ]:
        generator = load_generator(path)
        runner = TileRunner(generator, torch.device("cpu"))
        margin = default_margin(t, generator.stride)
        rings = ring_masks(*image.shape[:2], t)
        truth, local = truth_of(image), local_reference(image, runner, t + 2 * margin)
        rows = {"dn (pipeline)": fidelity.translated(image, runner, policy="dn", tile_size=t)}
        rows["in (pipeline)"] = fidelity.translated(image, runner, policy="in", tile_size=t)
        for stride in args.strides:
            variants = [("", {})] + ([(", edge windows", {"edges": True})] if stride < t else [])
            for label, options in [*variants, (", edge tiles inward", {"inward": True})]:
                rows[f"S = {stride}{label}"] = FineDN(generator.module, image, t, margin, stride, **options).translate()
        print(f"### {name}: tile {t}, margin {margin}\n")
        for label, reference in (("truth", truth), ("local reference", local)):
            print(
                f"Mean |output − {label}|:\n\n| output | "
                + " | ".join(rings)
                + " |\n"
                + "|---" * (len(rings) + 1)
                + "|"
            )
            for key, pixels in rows.items():
                errors = ring_errors(pixels, reference, rings)
                print(f"| {key} | " + " | ".join(f"{errors[r]:.2f}" for r in rings) + " |")
            print()
        check = np.abs(rows[f"S = {t}"].astype(int) - rows["dn (pipeline)"]) if t in args.strides else None
        if check is not None:
            print(
                f"S = {t} against dn's pipeline: max {check.max()}, {100 * (check > 0).mean():.3f} % of values differ\n"
            )
        variants = {f"S = {s}": (s, False) for s in args.strides} | {f"S = {t}, inward": (t, True)}
        print("Seam scores on mosaics:\n\n| seed | untiled | " + " | ".join(variants) + " |")
        print("|---" * (len(variants) + 2) + "|")
        for seed in args.seeds:
            piecework = fidelity.mosaic(image, seed)
            scores = [seam_score(fidelity.untiled(piecework, runner), t)]
            for stride, inward in variants.values():
                scores.append(
                    seam_score(FineDN(generator.module, piecework, t, margin, stride, inward=inward).translate(), t)
                )
            print(f"| {seed} | " + " | ".join(f"{score:.3f}" for score in scores) + " |")
        print(flush=True)


if __name__ == "__main__":
    main()
