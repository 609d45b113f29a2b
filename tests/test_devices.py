"""``--devices``: one worker per device over one folder, the same pixels as one device, a dead
worker costing its slide only, and Ctrl-C leaving no process and no partial file."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from click.testing import CliRunner

from dn_cli.app.claims import holder_of
from dn_cli.cli import cli

from .test_reliability import png


def start_dn(*args, **popen) -> subprocess.Popen:
    command = [sys.executable, "-m", "dn_cli", "translate", *map(str, args)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (read from /proc: no tools needed)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
        except (OSError, ValueError):
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if entry.name.isdigit() and fields[0] != "Z":  # zombies are dead
            parents[int(entry.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


HANG = 1800  # seconds: a safety net against a hang, far past any run under load (waits are on events)


def wait_for(condition, seconds: float = HANG) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def slides(tmp_path, tissue) -> Path:
    """Five PNGs of tissue, one big enough to be still translating when the test acts."""
    folder = tmp_path / "in"
    png(folder / "big.png", np.ascontiguousarray(np.tile(tissue, (2, 2, 1))))
    for i, side in enumerate([384, 256, 256, 128]):
        png(folder / f"s{i}.png", np.ascontiguousarray(np.roll(tissue, 40 * i, axis=1)[:side, :side]))
    return folder


def pixels(path: Path) -> np.ndarray:
    return tifffile.imread(path, level=0)


def test_two_cpu_workers_give_a_single_runs_pixels(tmp_path, slides, checkpoint):
    args = ["--model", checkpoint, "--tile-size", 64, "-q"]
    single = CliRunner().invoke(cli, ["translate", str(slides), "-o", str(tmp_path / "one"), *map(str, args)])
    assert single.exit_code == 0, single.output
    run = start_dn(slides, "-o", tmp_path / "two", *args, "--devices", "cpu,cpu", "--json")
    stdout, stderr = run.communicate(timeout=HANG)
    assert run.returncode == 0, stderr
    records = [json.loads(line) for line in stdout.splitlines()]
    assert sorted(Path(r["input"]).name for r in records) == sorted(p.name for p in slides.iterdir())
    assert {r["status"] for r in records} == {"done"} and "5 inputs: 5 translated" in stderr
    for name in ("big", "s0", "s1", "s2", "s3"):
        np.testing.assert_array_equal(
            pixels(tmp_path / "two" / f"{name}.tif"), pixels(tmp_path / "one" / f"{name}.tif")
        )


def test_a_dead_worker_costs_its_slide_only(tmp_path, slides, checkpoint):
    (slides / "s4_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)  # fails alone, as in one process
    out = tmp_path / "out"
    run = start_dn(slides, "-o", out, "--model", checkpoint, "--tile-size", 64, "--devices", "cpu,cpu", "--json", "-q")
    wait_for(lambda: list(out.glob(".big.tif.*.partial.tif")) or run.poll() is not None)
    worker = holder_of(out / "big.tif")["pid"]  # the worker translating the big slide
    assert worker in descendants(run.pid)
    os.kill(worker, signal.SIGKILL)  # as a decoder's crash on a bad slide, or the OOM killer, would
    stdout, stderr = run.communicate(timeout=HANG)
    assert run.returncode == 1, stderr
    status = {Path(r["input"]).name: (r["status"], r.get("error", "")) for r in map(json.loads, stdout.splitlines())}
    assert status.pop("big.png")[1] in {f"worker {n}/2 on cpu (pid {worker}) died (signal SIGKILL)" for n in (1, 2)}
    assert status.pop("s4_corrupt.png")[0] == "failed"
    assert {s for s, _ in status.values()} == {"done"}  # every other slide, by the workers left
    assert "6 inputs: 4 translated, 0 skipped, 2 failed" in stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(f"s{i}.{e}" for i in range(4) for e in ("tif", "tif.json"))


@pytest.mark.parametrize("how", ["Ctrl-C", "kill"])
def test_stopping_leaves_no_process_and_no_partial_file(tmp_path, slides, checkpoint, how):
    out = tmp_path / "out"
    args = ["--model", checkpoint, "--tile-size", 64, "--devices", "cpu,cpu", "-q"]
    run = start_dn(slides, "-o", out, *args, start_new_session=True)  # its own process group, as in a terminal
    wait_for(lambda: list(out.glob(".big.tif.*.partial.tif")) or run.poll() is not None)
    workers = descendants(run.pid)
    assert len(workers) >= 2
    if how == "Ctrl-C":
        os.killpg(run.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches every process of the group
    else:
        run.send_signal(signal.SIGTERM)  # kill: the parent alone
    _, stderr = run.communicate(timeout=HANG)
    assert run.returncode == 130 and "dn: interrupted" in stderr and "Traceback" not in stderr, stderr
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers))
    left = [p.name for p in out.iterdir()] if out.exists() else []
    assert not [name for name in left if name.startswith(".")]  # no temporary, no claim
    assert all(name.endswith((".tif", ".tif.json")) for name in left)  # only whole outputs
    assert "big.tif" not in left  # its worker was stopped mid-slide, not left to finish it


def test_devices_are_checked_before_any_work(tmp_path, slides, checkpoint):
    for spec, reason in [("cpu,gpu7", "unknown device"), ("all", "no CUDA device"), (",", "give devices")]:
        if spec == "all" and torch.cuda.is_available():
            continue
        result = CliRunner().invoke(cli, ["translate", str(slides), "-o", str(tmp_path / "o"), "--devices", spec])
        assert result.exit_code == 1 and reason in result.output, result.output
    both = CliRunner().invoke(cli, ["translate", str(slides), "-o", "o", "--devices", "cpu", "--device", "cpu"])
    assert both.exit_code == 2 and "give one" in both.output
    assert not (tmp_path / "o").exists()


def test_one_file_with_devices_is_one_file(tmp_path, slides, checkpoint):
    """Nothing to deal out: it runs on the first device, and refuses an existing output as ever."""
    args = ["translate", str(slides / "s3.png"), "-o", str(tmp_path / "o.tif"), "--model", str(checkpoint)]
    assert CliRunner().invoke(cli, [*args, "--devices", "cpu,cpu", "-q"]).exit_code == 0
    again = CliRunner().invoke(cli, [*args, "--devices", "cpu,cpu", "-q"])
    assert again.exit_code == 1 and "exists (use --overwrite" in again.output
