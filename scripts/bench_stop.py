"""How long dn takes to stop: Ctrl-C or ``kill`` (SIGTERM, as Slurm's scancel) in the middle of a slide.

    python scripts/bench_stop.py [--size 4096]

A tiled pyramidal slide of scikit-image's IHC photograph (``--size``² at 0.5 µm/px) is translated
with the bundled model at the defaults; once the run has translated ``--after`` seconds past
its first temporary, the signal is sent, and the time until the process has exited (every
temporary and claim removed) is reported, with what is left in the output folder. Cases: SIGINT
and SIGTERM to a single run, SIGTERM to a ``--devices cpu,cpu`` parent (which stops its workers),
and SIGTERM in the middle of ``torch.compile`` (``--compile on``, sent 3 s into the slide).
Slurm sends SIGKILL 30 s after SIGTERM; the tests check the same by what ran after the signal
(tests/test_trial3.py), this script by the clock.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_dn_overhead import machine  # noqa: E402
from bench_scaling import make_slide  # noqa: E402

CASES = {
    "Ctrl-C (SIGINT)": ([], signal.SIGINT),
    "kill (SIGTERM)": ([], signal.SIGTERM),
    "kill, --devices cpu,cpu": (["--devices", "cpu,cpu"], signal.SIGTERM),
    "kill while compiling (--compile on)": (["--compile", "on"], signal.SIGTERM),
}


def stop_time(slide: Path, out: Path, extra: list[str], signum: int, after: float) -> dict:
    command = [sys.executable, "-m", "dn_cli", "translate", str(slide), "-o", str(out / "o.tif"), "-q", *extra]
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while not list(out.glob(".o.tif.*.partial*")) and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(after)
    sent = time.monotonic()
    run.send_signal(signum)
    _, stderr = run.communicate(timeout=600)
    return {
        "seconds": round(time.monotonic() - sent, 2),
        "exit": run.returncode,
        "left": sorted(p.name for p in out.iterdir()),
        "said": stderr.strip().splitlines()[-1:] or [""],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--after", type=float, default=5.0, help="seconds of translating before the signal")
    args = parser.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        slide = Path(tmp) / "slide.tif"
        make_slide(slide, args.size)
        for name, (extra, signum) in CASES.items():
            out = Path(tmp) / name.replace(" ", "_").replace("/", "_")
            out.mkdir()
            after = 3.0 if "--compile" in extra else args.after
            print(json.dumps({"case": name, **stop_time(slide, out, extra, signum, after)}), flush=True)


if __name__ == "__main__":
    main()
