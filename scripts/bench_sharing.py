"""Two runs over one folder: sharing it dynamically (claims) against static shards.

    python scripts/bench_sharing.py

Eight tissue slides of mixed sizes (256² to 2048², 64× apart in pixels; scikit-image's IHC
photograph repeated, tiled pyramidal TIFF at 0.5 µm/px) are translated by two concurrent
``dn translate`` processes — each one torch thread, as two devices would be — three ways:
the same command twice (the runs divide the folder by claiming slides, biggest first), and
``--shard 0/2`` with ``--shard 1/2`` (every other slide by path, as a job array splits it
statically). The slides' names are unrelated to their sizes, as in a real folder; here shard 0
draws the three biggest. Reported: each process's wall time and the slides each translated.
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

sys.path.insert(0, str(Path(__file__).parent))
from bench_dn_overhead import machine  # noqa: E402
from bench_scaling import make_slide  # noqa: E402

# name → side: by path, shard 0/2 takes a, c, e, g (8.2 Mpx), shard 1/2 b, d, f, h (0.7 Mpx)
SLIDES = {"a": 2048, "b": 256, "c": 1536, "d": 384, "e": 1024, "f": 512, "g": 768, "h": 512}


def run_pair(folder: Path, out: Path, extra: list[list[str]]) -> dict:
    """Two dn processes started together; their wall times and what each translated."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "dn_cli", "translate", str(folder), "-o", str(out), "--json", "-q"]
    start = time.perf_counter()
    runs = [subprocess.Popen([*command, *more], stdout=subprocess.PIPE, text=True, env=env) for more in extra]
    ended: dict[int, float] = {}
    while len(ended) < len(runs):  # each run's own end (their lines are few: the pipes never fill)
        for number, run in enumerate(runs):
            if number not in ended and run.poll() is not None:
                ended[number] = time.perf_counter() - start
        time.sleep(0.05)
    result = {}
    for number, run in enumerate(runs):
        records = [json.loads(line) for line in run.communicate()[0].splitlines()]
        result[f"run {number}"] = {
            "seconds": round(ended[number], 1),
            "translated": sorted(Path(r["input"]).stem for r in records if r["status"] == "done"),
            "megapixels": round(sum(r["width"] * r["height"] for r in records if r["status"] == "done") / 1e6, 2),
        }
    result["wall_seconds"] = max(r["seconds"] for r in result.values())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="slide sides times this (the tests run it small)")
    args = parser.parse_args()
    sides = {name: max(64, round(side * args.scale)) for name, side in SLIDES.items()}
    results = {"machine": machine(), "slides": {name: f"{side}²" for name, side in sides.items()}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "slides"
        folder.mkdir()
        for name, side in sides.items():
            make_slide(folder / f"{name}.tif", side)
        for label, extra in [
            ("shared (the same command twice)", [[], []]),
            ("static (--shard 0/2, --shard 1/2)", [["--shard", "0/2"], ["--shard", "1/2"]]),
        ]:
            results[label] = run_pair(folder, Path(tmp) / label.split()[0], extra)
            print(f"{label:36s} {results[label]['wall_seconds']:6.1f} s  {results[label]}", file=sys.stderr)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
