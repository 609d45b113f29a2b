"""What the DN layer costs per tile: the dense (apply) forward against the plain one, eager and compiled.

    python scripts/bench_dn_layer.py                         # the bundled demo model, tiles of 256
    python scripts/bench_dn_layer.py --ngf 64 --blocks 9 --tile-size 512 --device cuda --precision fp16

The plain forward normalises each tile with its own moments (per-tile InstanceNorm, the
model's own cost); the dense forward blends every feature pixel's moments from the 3 × 3 tiles
around it. Their difference is what DN adds to a forward. Eagerly the dense layer writes two
full-size fields (μ and r) and reads them back (``dense_fields``); compiled, it runs the fused
form (``fused_dense_norm``), which inductor folds into the normalisation. Both forms are timed
eagerly, the fused one compiled too. The collect forward (cut after the last norm layer) is
timed beside them, so each policy's cost per tile follows: ``in`` a plain forward, ``tin`` a
dense one, ``dn`` and ``kin`` a collect and a dense. Each figure is the median of ``--repeats``
timed runs of ``--steps`` batches of real tissue tiles, after warm-up, the forwards interleaved.
``--channels-last`` runs the model's weights and activations in channels-last memory order
(NHWC), which convolution libraries prefer on some devices.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import skimage.data
import torch

import dn_cli.huge_pages  # noqa: F401  (before torch allocates: as the dn command runs)

sys.path.insert(0, str(Path(__file__).parent))
from bench_dn_overhead import machine  # noqa: E402

from dn_cli.dense_norm import DenseNorm2d, DensePass  # noqa: E402
from dn_cli.geometry import default_margin  # noqa: E402
from dn_cli.models import DEMO_MODEL, Generator, load_generator  # noqa: E402
from dn_cli.models.resnet import ResnetGenerator  # noqa: E402
from dn_cli.pipeline import TileRunner  # noqa: E402

PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def tissue_tiles(count: int, side: int) -> np.ndarray:
    """``count`` padded tiles of real tissue (the IHC photograph mirrored out as needed)."""
    tissue = skimage.data.immunohistochemistry()
    reps = -(-side // tissue.shape[0]) + 1
    big = np.pad(tissue, ((0, reps * 512), (0, reps * 512), (0, 0)), mode="symmetric")
    step = max(1, (big.shape[1] - side) // max(1, count))
    return np.stack([big[:side, i * step : i * step + side] for i in range(count)])


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def per_tile_ms(works: dict, tiles: int, steps: int, repeats: int, device: torch.device) -> dict[str, float]:
    """Median milliseconds per tile of ``steps`` calls of each work (each call on ``tiles`` tiles),
    the works interleaved repeat by repeat so a drifting machine affects all alike."""
    for work in works.values():  # warm-up (and, compiled, the compilation)
        work()
        work()
    samples: dict[str, list[float]] = {name: [] for name in works}
    for _ in range(repeats):
        for name, work in works.items():
            synchronise(device)
            start = time.perf_counter()
            for _ in range(steps):
                work()
            synchronise(device)
            samples[name].append((time.perf_counter() - start) * 1000 / (steps * tiles))
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ngf", type=int, help="a random CycleGAN ResNet of this width (default: the demo model)")
    parser.add_argument("--blocks", type=int, default=9)
    parser.add_argument("--tile-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true", help="eager only")
    parser.add_argument("--channels-last", action="store_true", help="weights and input in NHWC memory order")
    args = parser.parse_args()

    device = torch.device(args.device)
    if args.ngf:
        torch.manual_seed(0)
        net = ResnetGenerator(ngf=args.ngf, n_blocks=args.blocks).eval()
        generator, name = Generator(net, "cyclegan-resnet", {}, net.stride), f"ResNet-{args.blocks} ngf {args.ngf}"
    else:
        generator, name = load_generator(DEMO_MODEL), "demo model"
    runner = TileRunner(generator, device, PRECISIONS[args.precision])
    if args.channels_last:
        runner.module.to(memory_format=torch.channels_last)
    margin = default_margin(args.tile_size, runner.stride)
    runner.geometry = DensePass(tile_size=args.tile_size, margin=margin)
    tiles = tissue_tiles(args.batch_size, args.tile_size + 2 * margin)
    staged = runner.stage(tiles)
    packed = runner.collect(tiles)  # the tiles' own moments stand in for their neighbours'
    around = packed[:, None, None].expand(len(tiles), 3, 3, *packed.shape[1:]).contiguous()
    neighbourhood = runner.layout.neighbourhood(around, torch.ones(len(tiles), 3, 3, device=device), complete=True)

    def plain() -> None:
        runner.forward(staged, None)

    def dense() -> None:
        runner.forward(staged, neighbourhood)

    def collect() -> None:
        runner.collect(staged)

    results = {"machine": machine(), "model": name, "tile_size": args.tile_size, "batch_size": args.batch_size}
    results["device"], results["precision"] = str(device), args.precision
    results["channels_last"] = args.channels_last
    base, base_collecting = runner.module, runner.collecting
    # Compiled, dn always runs the fused form (the fields form writes into slices, which dynamo
    # cannot trace whole: it recompiles per layer; issue 18 measured it at twice the fused cost).
    modes = [("eager", False), ("eager", True)] + ([] if args.no_compile else [("compiled", True)])
    for mode, fused in modes:
        for layer in base.modules():
            if isinstance(layer, DenseNorm2d):
                layer.fused = fused
        torch._dynamo.reset()
        runner.module = torch.compile(base) if mode == "compiled" else base
        runner.collecting = torch.compile(base_collecting) if mode == "compiled" else base_collecting
        works = {"plain": plain, "dense": dense, "collect": collect}
        timing = per_tile_ms(works, len(tiles), args.steps, args.repeats, device)
        timing["dn_cost"] = timing["dense"] - timing["plain"]
        # What each policy runs per tile: in a plain forward, tin an apply, dn and kin a collect and an apply.
        timing |= {"in": timing["plain"], "tin": timing["dense"], "dn": timing["collect"] + timing["dense"]}
        label = f"{mode}, {'fused' if fused else 'fields'}"
        results[label] = {key: round(value, 2) for key, value in timing.items()}
        print(
            f"{label:17s} plain {timing['plain']:8.2f} ms/tile   dense {timing['dense']:8.2f} ms/tile   "
            f"DN adds {timing['dn_cost']:7.2f} ms/tile ({timing['dense'] / timing['plain']:.2f}×)   "
            f"collect {timing['collect']:8.2f} ms/tile",
            file=sys.stderr,
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
