"""Wall time of each normalisation policy on one large image, relative to plain per-tile IN.

    python scripts/bench_dn_overhead.py --size 3072 --ngf 64 --blocks 9

DN runs two forwards per tile (collect, then apply), so its floor is 2× ``in``; everything
beyond that is interpolation, statistics and bookkeeping. The image is scikit-image's
immunohistochemistry photograph mirrored out to ``size × size`` (real tissue everywhere); it
is translated in memory so file encoding, the same for every policy, does not dilute the ratio.
The generator is a CycleGAN ResNet with random weights (time does not depend on the weights).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import skimage.data
import torch

import dn_cli.huge_pages  # noqa: F401  (before torch allocates: as the dn command runs)
from dn_cli.images import ArrayImage, Canvas
from dn_cli.models import Generator
from dn_cli.models.resnet import ResnetGenerator
from dn_cli.pipeline import TileRunner, translate


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads"


def mirrored_tissue(size: int) -> np.ndarray:
    tissue = skimage.data.immunohistochemistry()
    reps = -(-size // tissue.shape[0]) + 1
    return np.ascontiguousarray(
        np.pad(tissue, ((0, reps * 512), (0, reps * 512), (0, 0)), mode="symmetric")[:size, :size]
    )


def time_policy(image: np.ndarray, runner: TileRunner, policy: str, **options) -> float:
    canvas = Canvas(image.shape[1], image.shape[0])
    start = time.perf_counter()
    translate(ArrayImage(image), canvas, runner, policy=policy, **options)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=3072)
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--blocks", type=int, default=9)
    parser.add_argument("--policies", default="in,dn,kin,tin")
    args = parser.parse_args()

    torch.manual_seed(0)
    module = ResnetGenerator(ngf=args.ngf, n_blocks=args.blocks).eval()
    runner = TileRunner(Generator(module, "cyclegan-resnet", {}, module.stride), torch.device("cpu"))
    image = mirrored_tissue(args.size)
    options = {"tile_size": args.tile_size, "batch_size": args.batch_size}
    time_policy(image[:1024, :1024], runner, "dn", **options)  # warm-up

    print(f"machine: {machine()}")
    print(
        f"image {args.size}², tile {args.tile_size}, batch {args.batch_size}, ResNet ngf {args.ngf}, "
        f"{args.blocks} blocks"
    )
    seconds = {p: time_policy(image, runner, p, **options) for p in args.policies.split(",")}
    for policy, s in seconds.items():
        print(f"  {policy:4s} {s:8.1f} s   {s / seconds['in']:.2f}× in")
    print(json.dumps({"machine": machine(), "seconds": seconds, **vars(args)}))


if __name__ == "__main__":
    main()
