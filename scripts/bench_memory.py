"""Peak memory of translating whole slides of growing size: it must stay flat.

    python scripts/bench_memory.py --sizes 2048 8192

Each slide is scikit-image's IHC photograph repeated to ``size × size`` (real tissue), written as
a JPEG tiled pyramidal TIFF at 0.5 µm/px. Every translation runs in a fresh process
(``dn translate`` with the bundled model, DN, tile 512, batch 4, pyramidal TIFF out) that
reports its own peak resident set size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyvips
import skimage.data


def make_slide(path: Path, size: int) -> None:
    tissue = pyvips.Image.new_from_array(
        np.ascontiguousarray(skimage.data.immunohistochemistry()), interpretation="srgb"
    )
    repeats = -(-size // 512)
    image = tissue.replicate(repeats, repeats).crop(0, 0, size, size)
    image.tiffsave(str(path), tile=True, pyramid=True, compression="jpeg", Q=90, xres=2000, yres=2000, resunit="cm")


def child(args: list[str]) -> None:
    """Run one translation in this process and print its peak RSS (MB) and wall time."""
    from dn_cli.cli import cli

    start = time.perf_counter()
    code = cli.main(args, standalone_mode=False)
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {"exit": code, "seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--norm", default="dn")
    args, rest = parser.parse_known_args()
    if rest and rest[0] == "--child":
        child(rest[1:])
        return
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            slide = Path(tmp) / f"slide_{size}.tif"
            make_slide(slide, size)
            out = Path(tmp) / f"out_{size}.tif"
            done = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    "translate",
                    str(slide),
                    "-o",
                    str(out),
                    "--norm",
                    args.norm,
                    "-q",
                ],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            results[size] = json.loads(done.stdout.strip().splitlines()[-1])
            print(
                f"{size}²: peak RSS {results[size]['peak_rss_mb']:.0f} MB, {results[size]['seconds']:.0f} s", flush=True
            )
    first, last = args.sizes[0], args.sizes[-1]
    print(f"peak RSS {last}² / {first}²: {results[last]['peak_rss_mb'] / results[first]['peak_rss_mb']:.2f}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
