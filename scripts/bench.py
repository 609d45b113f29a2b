"""Throughput against the ceiling: how close the whole pipeline runs to the model's own speed.

    python scripts/bench.py --size 2048                # CPU, bundled model
    python scripts/bench.py --device cuda --batch-size 16 --channels-last   # where a GPU exists

Ceiling: the converted model's forward on random padded tiles (batch B), no I/O, in plain mode
(``in``) — tiles/s. End to end: ``dn``'s pipeline on a real-tissue slide (scikit-image's IHC
photograph repeated, tiled pyramidal TIFF at 0.5 µm/px, read through OpenSlide, written as a
pyramidal JPEG TIFF), for ``in`` and ``dn``, as a fraction of the ceiling (``dn`` runs two
forwards per tile, so its target is half the ceiling). DN overhead: time spent inside the DN
layers in dense mode beyond what plain InstanceNorm costs, per tile.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_dn_overhead import machine  # noqa: E402
from bench_memory import make_slide  # noqa: E402

from dn_cli.dense_norm import DenseNorm2d  # noqa: E402
from dn_cli.device import autocast_dtype, select_device  # noqa: E402
from dn_cli.geometry import default_margin  # noqa: E402
from dn_cli.image_io import PyramidTiffSink  # noqa: E402
from dn_cli.models import DEMO_MODEL, load_generator  # noqa: E402
from dn_cli.moments import MomentRing  # noqa: E402
from dn_cli.pipeline import TileRunner, translate  # noqa: E402
from dn_cli.slides import SlideImage  # noqa: E402


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ceiling(runner: TileRunner, padded: int, batch: int, repeats: int) -> float:
    """Tiles/s of the bare forward (plain IN) on random tiles."""
    tiles = np.random.default_rng(0).integers(0, 256, (batch, padded, padded, 3), dtype=np.uint8)
    runner.context.mode = "plain"
    runner.forward(tiles, None)  # warm-up
    synchronise(runner.device)
    start = time.perf_counter()
    for _ in range(repeats):
        runner.forward(tiles, None)
    synchronise(runner.device)
    return repeats * batch / (time.perf_counter() - start)


def end_to_end(runner: TileRunner, slide: Path, policy: str, tile: int, batch: int) -> tuple[float, int]:
    """Tiles/s of the whole pipeline, slide file to pyramidal TIFF, and the number of tiles."""
    with SlideImage(slide) as source, tempfile.TemporaryDirectory() as tmp:
        sink = PyramidTiffSink(Path(tmp) / "out.tif", source.width, source.height, mpp=source.mpp)
        synchronise(runner.device)
        start = time.perf_counter()
        grid = translate(source, sink, runner, policy=policy, tile_size=tile, batch_size=batch)
        synchronise(runner.device)
        return len(grid) / (time.perf_counter() - start), len(grid)


def dn_layer_overhead(runner: TileRunner, padded: int, tile: int, margin: int, batch: int) -> float:
    """Seconds per tile inside DN layers in dense mode minus the same layers in plain mode."""
    tiles = np.random.default_rng(1).integers(0, 256, (batch, padded, padded, 3), dtype=np.uint8)
    spent = {"total": 0.0}
    starts: dict = {}

    def before(module, _inputs):
        synchronise(runner.device)
        starts[module] = time.perf_counter()

    def after(module, _inputs, _output):
        synchronise(runner.device)
        spent["total"] += time.perf_counter() - starts.pop(module)

    layers = [m for m in runner.module.modules() if isinstance(m, DenseNorm2d)]
    hooks = [h for m in layers for h in (m.register_forward_pre_hook(before), m.register_forward_hook(after))]
    runner.context.tile_size, runner.context.margin = tile, margin
    ring = MomentRing(runner.layout, 1, batch, 1, runner.device)
    ring.write(range(batch), runner.collect(tiles), oldest_needed_row=-1)
    neighbourhood = ring.gather(range(batch))
    try:
        timings = {}
        for mode, nb in (("plain", None), ("dense", neighbourhood)):
            runner.forward(tiles, nb)  # warm-up
            spent["total"] = 0.0
            for _ in range(3):
                runner.forward(tiles, nb)
            timings[mode] = spent["total"] / (3 * batch)
    finally:
        for hook in hooks:
            hook.remove()
    return timings["dense"] - timings["plain"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--model", type=Path, default=DEMO_MODEL)
    args = parser.parse_args()

    device = select_device(args.device)
    generator = load_generator(args.model)
    runner = TileRunner(generator, device, autocast_dtype(args.precision, device))
    if args.channels_last:
        runner.module = runner.module.to(memory_format=torch.channels_last)
    margin = default_margin(args.tile_size, generator.stride)
    padded = args.tile_size + 2 * margin
    results = {"machine": machine(), "device": str(device), "model": args.model.name, **vars(args)}
    results["ceiling_tiles_per_s"] = ceiling(runner, padded, args.batch_size, repeats=5)
    with tempfile.TemporaryDirectory() as tmp:
        slide = Path(tmp) / "slide.tif"
        make_slide(slide, args.size)
        for policy in ("in", "dn"):
            rate, tiles = end_to_end(runner, slide, policy, args.tile_size, args.batch_size)
            target = results["ceiling_tiles_per_s"] / (1 if policy == "in" else 2)
            results[f"{policy}_tiles_per_s"] = rate
            results[f"{policy}_fraction"] = rate / target
    results["dn_overhead_s_per_tile"] = dn_layer_overhead(runner, padded, args.tile_size, margin, args.batch_size)
    print(f"machine: {results['machine']}, device {device}, model {args.model.name}, batch {args.batch_size}")
    print(f"  ceiling (forward only)   {results['ceiling_tiles_per_s']:7.2f} tiles/s")
    for policy in ("in", "dn"):
        print(
            f"  {policy} end to end           {results[f'{policy}_tiles_per_s']:7.2f} tiles/s = "
            f"{results[f'{policy}_fraction']:.2f} of {'the ceiling' if policy == 'in' else 'half the ceiling'}"
        )
    print(f"  DN layers, dense − plain {results['dn_overhead_s_per_tile'] * 1000:7.1f} ms per tile")
    print(json.dumps({k: (str(v) if isinstance(v, Path) else v) for k, v in results.items()}))


if __name__ == "__main__":
    main()
