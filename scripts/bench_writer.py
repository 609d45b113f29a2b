"""Is the writer the bottleneck? Pyramidal TIFF writing throughput alone versus the model's.

    python scripts/bench_writer.py --size 4096

Writer: ``PyramidTiffSink`` fed ready-made 512-pixel tiles of real tissue (scikit-image's IHC
photograph mirrored out to ``size × size``), per compression. Model: the bundled generator
through the DN pipeline into an in-memory canvas (reads and writing excluded), and the plain
per-tile (``in``) rate. All in Mpx/s on this machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

import dn_cli.huge_pages  # noqa: F401  (before torch allocates: as the dn command runs)

sys.path.insert(0, str(Path(__file__).parent))
from bench_dn_overhead import machine, mirrored_tissue  # noqa: E402

from dn_cli.geometry import TileGrid  # noqa: E402
from dn_cli.images import ArrayImage, Canvas  # noqa: E402
from dn_cli.models import DEMO_MODEL, load_generator  # noqa: E402
from dn_cli.pipeline import TileRunner, translate  # noqa: E402
from dn_cli.pyramid_tiff import PyramidTiffSink  # noqa: E402


def writer_mpx_per_s(pixels, compression: str) -> float:
    height, width = pixels.shape[:2]
    grid = TileGrid(width, height, 512, 0)
    boxes = [grid.output_box(*grid.position(i)) for i in range(len(grid))]
    tiles = [pixels[b.y : b.y + b.height, b.x : b.x + b.width].copy() for b in boxes]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        sink = PyramidTiffSink(Path(tmp) / "out.tif", width, height, mpp=0.5, compression=compression)
        for box, tile in zip(boxes, tiles, strict=True):
            sink.write(box, tile)
        sink.close()
        return width * height / 1e6 / (time.perf_counter() - start)


def model_mpx_per_s(pixels, policy: str) -> float:
    runner = TileRunner(load_generator(DEMO_MODEL), torch.device("cpu"))
    canvas = Canvas(pixels.shape[1], pixels.shape[0])
    start = time.perf_counter()
    translate(ArrayImage(pixels), canvas, runner, policy=policy, tile_size=512, batch_size=4)
    return pixels.shape[0] * pixels.shape[1] / 1e6 / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    args = parser.parse_args()
    pixels = mirrored_tissue(args.size)
    results = {f"writer {c}": writer_mpx_per_s(pixels, c) for c in ("jpeg", "deflate", "none")}
    model_input = pixels[:2048, :2048].copy()
    results.update({f"model {p} (bundled, CPU)": model_mpx_per_s(model_input, p) for p in ("in", "dn")})
    print(f"machine: {machine()}")
    for name, rate in results.items():
        print(f"  {name:26s} {rate:8.2f} Mpx/s")
    print(json.dumps({"machine": machine(), "mpx_per_s": results, "size": args.size}))


if __name__ == "__main__":
    main()
