"""How far do translated tiles' glass and the fill of skipped (glass) tiles differ at their borders?

    python scripts/glass_steps.py [--figure docs/figures/glass_steps.png]

The bundled sample slide, translated as the README's quickstart does (bundled model, default
tiles, tissue detection on, every policy): at every edge between a translated tile and a skipped
one, the mean colour of the glass pixels (bright, unstained) in the translated tile's 16-pixel
strip along the edge against the fill's strip beside it, as the largest grey-level difference of
the three channels. Measured for the fill dn writes (glass that meets the translation around it)
and, from the same run, for one flat colour (``policies.glass_colour``, what dn wrote before).
The figure: the worst edge under the flat fill, flat | matched, contrast stretched alike.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
from pathlib import Path

import numpy as np
import pyvips
import torch

from dn_cli.geometry import Box, fit_grid
from dn_cli.images import Canvas
from dn_cli.models import DEMO_MODEL, load_generator
from dn_cli.pipeline import TileRunner, render_glass, translate
from dn_cli.policies import glass_colour
from dn_cli.sources import open_source
from dn_cli.tissue import THRESHOLD_RANGE, saturation, select_tiles

STRIP = 16


def edges(active: np.ndarray):
    """(row, col, d_row, d_col) of every translated tile with a skipped neighbour in direction d."""
    rows, cols = active.shape
    for r in range(rows):
        for c in range(cols):
            for dr, dc in ((0, 1), (0, -1), (1, 0), (-1, 0)):
                if active[r, c] and 0 <= r + dr < rows and 0 <= c + dc < cols and not active[r + dr, c + dc]:
                    yield r, c, dr, dc


def strips(pixels: np.ndarray, box, dr: int, dc: int):
    """The translated tile's strip along the edge and the fill's strip across it."""
    y0, y1, x0, x1 = box.y, box.y + box.height, box.x, box.x + box.width
    if dc == 1:
        return pixels[y0:y1, x1 - STRIP : x1], pixels[y0:y1, x1 : x1 + STRIP]
    if dc == -1:
        return pixels[y0:y1, x0 : x0 + STRIP], pixels[y0:y1, x0 - STRIP : x0]
    if dr == 1:
        return pixels[y1 - STRIP : y1, x0:x1], pixels[y1 : y1 + STRIP, x0:x1]
    return pixels[y0 : y0 + STRIP, x0:x1], pixels[y0 - STRIP : y0, x0:x1]


def steps(pixels: np.ndarray, image: np.ndarray, grid, active: np.ndarray) -> list[tuple[float, int, int, int, int]]:
    """(step, row, col, d_row, d_col) at every edge whose translated strip is mostly glass."""
    found = []
    for r, c, dr, dc in edges(active):
        box = grid.output_box(r, c)
        translated, fill = strips(pixels, box, dr, dc)
        original, _ = strips(image, box, dr, dc)
        glass = (saturation(original) < THRESHOLD_RANGE[1]) & (original.min(axis=2) > 180)
        if glass.mean() >= 0.5:  # tissue reaches the edge: no glass to compare
            step = float(np.abs(translated[glass].mean(axis=0) - fill.reshape(-1, 3).mean(axis=0)).max())
            found.append((step, r, c, dr, dc))
    return found


def figure(path: Path, flat: np.ndarray, matched: np.ndarray, grid, edge: tuple) -> None:
    _, r, c, dr, dc = edge
    box = grid.output_box(r, c)
    cy = box.y + (box.height if dr == 1 else 0 if dr == -1 else box.height // 2)
    cx = box.x + (box.width if dc == 1 else 0 if dc == -1 else box.width // 2)
    crops = [p[max(0, cy - 96) : cy + 96, max(0, cx - 96) : cx + 96].astype(float) for p in (flat, matched)]
    low, high = np.percentile(np.concatenate([c.ravel() for c in crops]), [40, 99.5])  # glass, stretched
    stretched = [np.clip((c - low) * 255 / max(high - low, 1), 0, 255).astype(np.uint8) for c in crops]
    gap = np.full((stretched[0].shape[0], 8, 3), 255, np.uint8)
    both = np.concatenate([stretched[0], gap, stretched[1]], axis=1)
    big = np.repeat(np.repeat(both, 2, axis=0), 2, axis=1)
    pyvips.Image.new_from_array(np.ascontiguousarray(big), interpretation="srgb").write_to_file(str(path))


def measure(policy: str, figure_path: Path | None = None) -> dict:
    slide = Path(str(importlib.resources.files("dn_cli.examples") / "sample_ihc.tif"))
    runner = TileRunner(load_generator(DEMO_MODEL), torch.device("cpu"))
    with open_source(slide) as source:
        grid = fit_grid(source.width, source.height, 512, 16, runner.stride, runner.min_size)
        active, _, _ = select_tiles(source, grid, min_tissue=0.0)
        image = source.read(Box(0, 0, source.width, source.height))
        canvas = Canvas(source.width, source.height)
        translate(source, canvas, runner, policy=policy, tile_size=512, margin=16, active=active)
        flat = canvas.pixels.copy()
        colour = glass_colour(source, grid, active, lambda tile: render_glass(runner, source, grid, tile))
    for index in np.flatnonzero(~active):
        box = grid.output_box(*grid.position(int(index)))
        flat[box.y : box.y + box.height, box.x : box.x + box.width] = colour
    matched, flat_steps = steps(canvas.pixels, image, grid, active), steps(flat, image, grid, active)
    if figure_path is not None and flat_steps:
        figure(figure_path, flat, canvas.pixels, grid, max(flat_steps))
    result = {"policy": policy, "edges": len(matched)}
    for name, found in (("flat", flat_steps), ("matched", matched)):
        values = [step for step, *_ in found]
        result[name] = {"max": round(max(values), 2), "mean": round(float(np.mean(values)), 2)} if values else None
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--figure", type=Path, default=None, help="PNG of the worst edge under dn, flat | matched")
    parser.add_argument("--norms", default="dn,in,kin,tin")
    args = parser.parse_args()
    for policy in args.norms.split(","):
        result = measure(policy, args.figure if policy == "dn" else None)
        print(json.dumps(result))


if __name__ == "__main__":
    main()
