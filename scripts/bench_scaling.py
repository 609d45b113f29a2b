"""Time and peak memory of translating whole slides of growing size: linear and flat.

    python scripts/bench_scaling.py --sizes 2048 4096 8192 --plot docs/figures/scaling.svg
    python scripts/bench_scaling.py --sizes 20000 --norms dn --layout stripped

Each slide is scikit-image's IHC photograph repeated to ``size × size`` (real tissue), written as
a JPEG tiled pyramidal TIFF at 0.5 µm/px (``--layout stripped``: one deflate-compressed stripped
BigTIFF, the export OpenSlide cannot open, read strip by strip). Every translation runs in a fresh process
(``dn translate`` with the bundled model, DN, tile 512, batch 4, pyramidal TIFF out) that
reports its own wall time and peak resident set size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyvips
import skimage.data

sys.path.insert(0, str(Path(__file__).parent))
from bench_dn_overhead import machine  # noqa: E402
from svg_chart import Panel, Series, write_chart  # noqa: E402

from dn_cli.provenance import sidecar_path  # noqa: E402

LAYOUTS = {  # how the slide is stored: a tiled pyramid (what OpenSlide reads), or one stripped image
    "pyramid": {"tile": True, "pyramid": True, "compression": "jpeg", "Q": 90},
    "stripped": {"bigtiff": True, "compression": "deflate"},  # OpenSlide cannot open it: tifffile reads it
}


def make_slide(path: Path, size: int, layout: str = "pyramid") -> None:
    tissue = pyvips.Image.new_from_array(
        np.ascontiguousarray(skimage.data.immunohistochemistry()), interpretation="srgb"
    )
    repeats = -(-size // 512)
    image = tissue.replicate(repeats, repeats).crop(0, 0, size, size)
    image.tiffsave(str(path), xres=2000, yres=2000, resunit="cm", **LAYOUTS[layout])


def peak_rss_mb() -> float:
    """This process's peak resident set size (VmHWM: unlike ru_maxrss, not the parent's at fork time)."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(status["VmHWM"].split()[0]) / 1024


def child(args: list[str]) -> None:
    """Run one translation in this process and print its peak RSS (MB) and wall time."""
    from dn_cli.cli import cli

    start = time.perf_counter()
    code = cli.main(args, standalone_mode=False)
    seconds = time.perf_counter() - start
    print(json.dumps({"exit": code, "seconds": seconds, "peak_rss_mb": peak_rss_mb()}))


def run_translation(slide: Path, out: Path, norm: str) -> dict:
    """``dn translate`` in a fresh process (so its peak RSS is its own): exit, seconds, peak RSS, norm."""
    done = subprocess.run(
        [sys.executable, __file__, "--child", "translate", str(slide), "-o", str(out), "--norm", norm, "-q"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    run = json.loads(done.stdout.strip().splitlines()[-1])
    # What actually ran, from the output's provenance record, not from what was asked.
    run["norm"] = json.loads(sidecar_path(out).read_text())["norm"]
    return run


def plot(results: dict, path: Path, caption: str) -> None:
    megapixels = {size: size * size / 1e6 for size in results}
    sizes = sorted(results)
    labels = [f"{size}²" for size in sizes]

    def series(key: str, scale: float = 1.0) -> list[Series]:
        norms = results[sizes[0]].keys()
        return [
            Series(norm, [megapixels[s] for s in sizes], [results[s][norm][key] * scale for s in sizes], labels)
            for norm in norms
        ]

    write_chart(
        [
            Panel("Time: linear in pixels", "slide megapixels", "seconds", series("seconds"), proportional_fit=True),
            Panel("Memory: flat", "slide megapixels", "peak RSS (GB)", series("peak_rss_mb", 1 / 1024)),
        ],
        path,
        caption,
    )


def main() -> None:
    if sys.argv[1:2] == ["--child"]:  # before argparse, which would take the child's options for its own
        child(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096, 8192])
    parser.add_argument("--norms", nargs="+", default=["dn", "in"])
    parser.add_argument("--layout", choices=LAYOUTS, default="pyramid", help="how the slide is stored")
    parser.add_argument("--plot", type=Path, help="write the time and memory chart here (SVG)")
    args = parser.parse_args()
    results: dict[int, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            slide = Path(tmp) / f"slide_{size}.tif"
            make_slide(slide, size, args.layout)
            results[size] = {}
            for norm in args.norms:
                run = results[size][norm] = run_translation(slide, Path(tmp) / f"out_{size}_{norm}.tif", norm)
                print(
                    f"{size}² {norm}: {run['seconds']:.1f} s ({run['seconds'] / (size * size / 1e6):.2f} s/Mpx), "
                    f"peak RSS {run['peak_rss_mb']:.0f} MB",
                    flush=True,
                )
    first, last = min(args.sizes), max(args.sizes)
    for norm in args.norms:
        a, b = results[first][norm], results[last][norm]
        print(
            f"{norm}, {last}² / {first}² ({(last / first) ** 2:.0f}× the pixels): "
            f"time {b['seconds'] / a['seconds']:.1f}×, peak RSS {b['peak_rss_mb'] / a['peak_rss_mb']:.2f}×"
        )
    if args.plot:
        caption = f"dn translate, bundled model, tile 512, batch 4, {args.layout} TIFF, CPU: {machine()}"
        plot(results, args.plot, caption)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
