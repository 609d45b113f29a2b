"""How long dn takes to stop: Ctrl-C or ``kill`` (SIGTERM, as Slurm's scancel) in the middle of a slide.

    python scripts/bench_stop.py [--size 4096]

A tiled pyramidal slide of scikit-image's IHC photograph (``--size``² at 0.5 µm/px) is translated
at the defaults with the bundled model, or with ``--ngf 64`` a ResNet-9 generator of that width
(random weights: a production CycleGAN's size, 16× the bundled model's work). ``--after``
seconds after the run's first temporary appears (inside the first batch's forwards, or the
compile with ``--compile on``), the signal is sent, and the time until the process has exited
(every temporary and claim removed) is reported, with what is left in the output folder. Cases:
SIGINT and SIGTERM to a single run, SIGTERM to a ``--devices cpu,cpu`` parent (which stops its
workers), and SIGTERM with ``--compile on`` (inductor compiling).
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

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_dn_overhead import machine  # noqa: E402
from bench_scaling import make_slide  # noqa: E402

from dn_cli.models.resnet import ResnetGenerator  # noqa: E402

CASES = {
    "Ctrl-C (SIGINT)": ([], signal.SIGINT),
    "kill (SIGTERM)": ([], signal.SIGTERM),
    "kill, --devices cpu,cpu": (["--devices", "cpu,cpu"], signal.SIGTERM),
    "kill while compiling (--compile on)": (["--compile", "on"], signal.SIGTERM),
}


def stop_time(slide: Path, out: Path, extra: list[str], signum: int, after: float) -> dict:
    """Start dn (its messages to a file, as a Slurm task's log), wait until it writes its first
    temporary and ``after`` seconds more, send ``signum`` and time the exit."""
    command = [sys.executable, "-m", "dn_cli", "translate", str(slide), "-o", str(out / "o.tif"), *extra]
    with open(out.with_suffix(".log"), "w+") as log:
        run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 900
        while not list(out.glob(".o.tif.*.partial*")) and run.poll() is None:
            assert time.monotonic() < deadline, "no temporary appeared"
            time.sleep(0.02)
        time.sleep(after)
        sent = time.monotonic()
        run.send_signal(signum)
        run.wait(timeout=900)
        seconds = time.monotonic() - sent
        log.seek(0)
        said = log.read().replace("\r", "\n").strip().splitlines()
    return {
        "seconds": round(seconds, 2),
        "exit": run.returncode,
        "left": sorted(p.name for p in out.iterdir()),
        "said": said[-1:],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--after", type=float, default=8.0, help="seconds after the first temporary: the signal")
    parser.add_argument("--ngf", type=int, help="a ResNet-9 generator this wide instead of the bundled model")
    args = parser.parse_args()
    print(machine(), f"ResNet-9 ngf {args.ngf}" if args.ngf else "the bundled model")
    with tempfile.TemporaryDirectory() as tmp:
        slide = Path(tmp) / "slide.tif"
        make_slide(slide, args.size)
        model = []
        if args.ngf:
            torch.manual_seed(0)
            torch.save(ResnetGenerator(ngf=args.ngf, n_blocks=9).state_dict(), Path(tmp) / "model.pth")
            model = ["--model", str(Path(tmp) / "model.pth")]
        for name, (extra, signum) in CASES.items():
            out = Path(tmp) / name.replace(" ", "_").replace("/", "_").replace(",", "")
            out.mkdir()
            result = stop_time(slide, out, [*model, *extra], signum, args.after)
            print(json.dumps({"case": name, **result}), flush=True)


if __name__ == "__main__":
    main()
