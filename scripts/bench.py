"""Throughput against the ceiling: how close the whole pipeline runs to the model's own speed.

    python scripts/bench.py --size 2048                     # CPU, bundled model
    python scripts/bench.py --device cuda --channels-last   # where a GPU exists: batch sweep 4…32

Where no GPU exists, ``--device cuda`` prints that it is skipped and exits 0.

Ceiling and end to end are ``dn bench``'s measurements (``dn_cli.benchmark``: warmed up, the
stages interleaved and repeated three times, the ceiling taken on the slide's own tiles at the
same batch size), on a real-tissue slide (scikit-image's IHC photograph repeated, tiled pyramidal
TIFF at 0.5 µm/px, read through OpenSlide, written as a pyramidal JPEG TIFF), for ``in`` and
``dn``, as a fraction of the ceiling (``dn`` runs two forwards per tile, so its target is half
the ceiling; its collect pass stops after the last norm layer, so it may exceed 1); for ``in``
a fraction above 1.05 would be a measurement bug. DN overhead: time spent inside the DN
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

import dn_cli.huge_pages  # noqa: F401  (before torch allocates: as the dn command runs)

sys.path.insert(0, str(Path(__file__).parent))
from bench_dn_overhead import machine  # noqa: E402
from bench_scaling import make_slide  # noqa: E402

from dn_cli import benchmark  # noqa: E402
from dn_cli.dense_norm import DenseNorm2d, DensePass  # noqa: E402
from dn_cli.device import autocast_dtype, select_device  # noqa: E402
from dn_cli.errors import DeviceMemoryError  # noqa: E402
from dn_cli.geometry import default_margin  # noqa: E402
from dn_cli.models import DEMO_MODEL, load_generator  # noqa: E402
from dn_cli.moments import MomentRing  # noqa: E402
from dn_cli.pipeline import TileRunner  # noqa: E402
from dn_cli.slides import SlideImage  # noqa: E402


def dn_layer_overhead(runner: TileRunner, padded: int, tile: int, margin: int, batch: int) -> float:
    """Seconds per tile inside DN layers in dense mode minus the same layers in plain mode."""
    tiles = np.random.default_rng(1).integers(0, 256, (batch, padded, padded, 3), dtype=np.uint8)
    spent = {"total": 0.0}
    starts: dict = {}

    def before(module, _inputs):
        benchmark.synchronise(runner.device)
        starts[module] = time.perf_counter()

    def after(module, _inputs, _output):
        benchmark.synchronise(runner.device)
        spent["total"] += time.perf_counter() - starts.pop(module)

    layers = [m for m in runner.module.modules() if isinstance(m, DenseNorm2d)]
    hooks = [h for m in layers for h in (m.register_forward_pre_hook(before), m.register_forward_hook(after))]
    runner.geometry = DensePass(tile_size=tile, margin=margin)
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


def measure(runner: TileRunner, slide: Path, tile: int, margin: int, batch: int) -> dict:
    """Ceiling and end-to-end rates (``dn bench``'s: warmed up, interleaved, repeated, the ceiling on
    the same tiles and batch size) in tiles/s, and the DN layer overhead, at one batch size."""
    with SlideImage(slide) as source:
        rates = benchmark.measure(source, runner, tile_size=tile, margin=margin, batch_size=batch, repeats=3)
    tiles_per_mpx = rates["tiles"] / rates["megapixels"]
    row = {"batch_size": batch, "tiles": rates["tiles"], "ceiling_tiles_per_s": rates["ceiling_mpx_s"] * tiles_per_mpx}
    for policy, forwards in (("in", 1), ("dn", 2)):
        row[f"{policy}_tiles_per_s"] = rates[f"{policy}_mpx_s"] * tiles_per_mpx
        row[f"{policy}_fraction"] = rates[f"{policy}_mpx_s"] / (rates["ceiling_mpx_s"] / forwards)
    row["spread_mpx_s"] = rates["spread"]
    row["dn_overhead_s_per_tile"] = dn_layer_overhead(runner, tile + 2 * margin, tile, margin, batch)
    return row


def report(row: dict) -> None:
    print(f"batch {row['batch_size']} ({row['tiles']} tiles)")
    print(f"  ceiling (forward only)   {row['ceiling_tiles_per_s']:7.2f} tiles/s")
    for policy, target in (("in", "the ceiling"), ("dn", "half the ceiling")):
        print(
            f"  {policy} end to end           {row[f'{policy}_tiles_per_s']:7.2f} tiles/s = "
            f"{row[f'{policy}_fraction']:.2f} of {target}"
        )
    print(f"  DN layers, dense − plain {row['dn_overhead_s_per_tile'] * 1000:7.1f} ms per tile", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, help="slide side in pixels (default 2048; 8192 on a GPU)")
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--batch-sizes", type=int, nargs="+", help="default 4; a sweep 4 8 16 32 on a GPU")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto", help="auto = fp16 autocast on CUDA, fp32 elsewhere")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--model", type=Path, default=DEMO_MODEL)
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench.py: no CUDA device here; the --device cuda benchmark is skipped", file=sys.stderr)
        return

    device = select_device(args.device)
    on_gpu = device.type == "cuda"
    size = args.size or (8192 if on_gpu else 2048)
    batch_sizes = args.batch_sizes or ([4, 8, 16, 32] if on_gpu else [4])
    generator = load_generator(args.model)
    runner = TileRunner(generator, device, autocast_dtype(args.precision, device))
    if args.channels_last:
        runner.module = runner.module.to(memory_format=torch.channels_last)
    margin = default_margin(args.tile_size, generator.stride)
    results = {
        "machine": machine(),
        "device": torch.cuda.get_device_name(device) if on_gpu else "cpu",
        "model": args.model.name,
        "size": size,
        "tile_size": args.tile_size,
        "precision": str(runner.dtype or torch.float32),
        "channels_last": args.channels_last,
        "sweep": [],
    }
    print(
        f"machine: {results['machine']}, device {results['device']}, model {args.model.name}, "
        f"{size}² slide, tile {args.tile_size}, {results['precision']}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        slide = Path(tmp) / "slide.tif"
        make_slide(slide, size)
        for batch in batch_sizes:
            try:
                row = measure(runner, slide, args.tile_size, margin, batch)
            except DeviceMemoryError:
                print(f"batch {batch}: out of GPU memory; the sweep stops here", flush=True)
                break
            finally:
                if on_gpu:
                    torch.cuda.empty_cache()
            results["sweep"].append(row)
            report(row)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
