"""``--compile auto`` against ``off`` end to end on one slide: cold kernel cache, then warm.

    python scripts/bench_compile.py --size 8192            # the issue 25 measurement (CPU)
    python scripts/bench_compile.py --size 2048 --runs off auto-cold

Each run is ``dn translate`` in a fresh process (bundled model, DN, tile 512, batch 4, pyramidal
TIFF out) on a tissue slide made like ``bench_scaling.py``'s; what it decided and whether it ran
compiled are read from the output's provenance. All runs share one kernel cache (and the compile
history kept in it); a ``-cold`` run empties it first, a ``-warm`` run finds what the runs before
it left. The default order: ``off``; ``auto-cold`` (nothing measured: the first guess decides);
``on-cold`` and ``on-warm`` (a compile from scratch, then with cached kernels: both recorded);
``auto-warm`` (deciding from what this machine measured).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_dn_overhead import machine  # noqa: E402
from bench_scaling import make_slide  # noqa: E402

RUNS = ("off", "auto-cold", "on-cold", "on-warm", "auto-warm")


def translate(slide: Path, out: Path, choice: str, cache: Path) -> dict:
    compile_model = choice.split("-")[0]
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache)}
    command = [sys.executable, "-m", "dn_cli", "translate", str(slide), "-o", str(out), "-q", "-v"]
    start = time.perf_counter()
    done = subprocess.run([*command, "--compile", compile_model], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{choice}: {done.stderr.strip()}")
    record = json.loads(out.with_name(out.name + ".json").read_text())
    return {"seconds": round(seconds, 1), "compiled": record["compiled"], "choice": record.get("compile_choice")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--runs", nargs="+", default=list(RUNS), help=f"in order; any of {RUNS}")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        slide = Path(tmp) / "slide.tif"
        make_slide(slide, args.size)
        for choice in args.runs:
            cache = Path(tmp) / "kernels"
            if choice.endswith("-cold"):
                shutil.rmtree(cache, ignore_errors=True)
            print(f"{choice}…", file=sys.stderr)
            results[choice] = translate(slide, Path(tmp) / f"{choice}.tif", choice, cache)
            print(json.dumps({choice: results[choice]}), file=sys.stderr)
    print(json.dumps({"machine": machine(), "size": args.size, "runs": results}))


if __name__ == "__main__":
    main()
