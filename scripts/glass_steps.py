"""How far do translated tiles' glass and the fill of skipped (glass) tiles differ at their borders?

    python scripts/glass_steps.py [--figure docs/figures/glass_steps.png]

The bundled sample slide, translated as the README's quickstart does (bundled model, default
tiles, tissue detection on, every policy): at every edge between a translated tile and a skipped
one, the mean colour of the glass pixels (bright, unstained) in the translated tile's 16-pixel
strip along the edge against the fill beside it, as the largest grey-level difference of the
three channels. The figure shows the worst edge: translated strip | fill, contrast stretched.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
from pathlib import Path

import numpy as np
import pyvips
import torch

from dn_cli.geometry import fit_grid
from dn_cli.images import Canvas
from dn_cli.models import DEMO_MODEL, load_generator
from dn_cli.pipeline import TileRunner, translate
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


def measure(policy: str, figure: Path | None = None) -> dict:
    slide = Path(str(importlib.resources.files("dn_cli.examples") / "sample_ihc.tif"))
    runner = TileRunner(load_generator(DEMO_MODEL), torch.device("cpu"))
    with open_source(slide) as source:
        grid = fit_grid(source.width, source.height, 512, 16, runner.stride, runner.min_size)
        active, _, _ = select_tiles(source, grid, min_tissue=0.0)
        image = source.read(grid.output_box(0, 0).__class__(0, 0, source.width, source.height))
        canvas = Canvas(source.width, source.height)
        translate(source, canvas, runner, policy=policy, tile_size=512, margin=16, active=active)
    steps, worst = [], None
    for r, c, dr, dc in edges(active):
        box = grid.output_box(r, c)
        translated, fill = strips(canvas.pixels, box, dr, dc)
        original, _ = strips(image, box, dr, dc)
        glass = (saturation(original) < THRESHOLD_RANGE[1]) & (original.min(axis=2) > 180)
        if glass.mean() < 0.5:  # tissue reaches the edge: no glass to compare
            continue
        step = float(np.abs(translated[glass].mean(axis=0) - fill.reshape(-1, 3).mean(axis=0)).max())
        steps.append(step)
        if worst is None or step > worst[0]:
            worst = (step, translated, fill)
    if figure is not None and worst is not None:
        both = np.concatenate([worst[1], worst[2]], axis=1 if worst[1].shape[0] > worst[1].shape[1] else 0)
        low, high = np.percentile(both, [1, 99])
        stretched = np.clip((both.astype(float) - low) * 255 / max(high - low, 1), 0, 255).astype(np.uint8)
        big = np.repeat(np.repeat(stretched, 2, axis=0), 2, axis=1)
        pyvips.Image.new_from_array(np.ascontiguousarray(big), interpretation="srgb").write_to_file(str(figure))
    return {
        "policy": policy,
        "edges": len(steps),
        "max": round(max(steps), 2) if steps else None,
        "mean": round(float(np.mean(steps)), 2) if steps else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--figure", type=Path, default=None, help="PNG of the worst edge under dn")
    parser.add_argument("--norms", default="dn,in,kin,tin")
    args = parser.parse_args()
    for policy in args.norms.split(","):
        result = measure(policy, args.figure if policy == "dn" else None)
        print(json.dumps(result))


if __name__ == "__main__":
    main()
