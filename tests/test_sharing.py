"""Runs sharing one output folder: each slide claimed by one run, with or without ``flock``; a
killed run's slide left to the next; the biggest slides first."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from dn_cli.app import claims
from dn_cli.app.claims import ClaimHeld, claim, claim_path, holder_of

from .test_devices import HANG, wait_for
from .test_reliability import png

# A file system without working locks (Lustre and GPFS mounts often lack them): flock fails as
# it does there. Loaded by every Python process started with this folder first on PYTHONPATH.
NO_LOCKS = """
import errno, fcntl

def _no_locks(*args, **kwargs):
    raise OSError(errno.ENOLCK, "No locks available")

fcntl.flock = _no_locks
"""


def without_flock(env: dict, folder: Path) -> dict:
    """``env`` for Python processes that find ``flock`` failing (``NO_LOCKS`` put in ``folder``)."""
    site = folder / "no_locks"
    site.mkdir()
    (site / "sitecustomize.py").write_text(NO_LOCKS)
    return env | {"PYTHONPATH": os.pathsep.join([str(site), *filter(None, [env.get("PYTHONPATH")])])}


@pytest.fixture(params=["flock", "no flock"])
def file_system(request, tmp_path) -> dict:
    """The environment of dn runs on a file system with working ``flock``, or without."""
    return dict(os.environ) if request.param == "flock" else without_flock(dict(os.environ), tmp_path)


def start_dn(*args, env: dict) -> subprocess.Popen:
    command = [sys.executable, "-m", "dn_cli", "translate", *map(str, args)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def records(process: subprocess.Popen) -> tuple[list[dict], str]:
    stdout, stderr = process.communicate(timeout=HANG)
    assert process.returncode == 0, stderr
    return [json.loads(line) for line in stdout.splitlines()], stderr


@pytest.fixture
def slides(tmp_path, tissue) -> Path:
    """Six PNGs of tissue, of four sizes (small: the runs still overlap, each start costs more than a slide)."""
    folder = tmp_path / "in"
    for i, side in enumerate([384, 256, 256, 192, 128, 128]):
        png(folder / f"s{i}.png", np.ascontiguousarray(np.roll(tissue, 40 * i, axis=1)[:side, :side]))
    return folder


def test_flock_really_fails_where_simulated(file_system):
    code = "import fcntl, tempfile\nwith tempfile.TemporaryFile() as f: fcntl.flock(f, fcntl.LOCK_EX)"
    done = subprocess.run([sys.executable, "-c", code], env=file_system, capture_output=True, text=True)
    assert (done.returncode == 0) == ("no_locks" not in file_system.get("PYTHONPATH", ""))


def test_concurrent_runs_translate_each_slide_once(tmp_path, slides, checkpoint, file_system):
    out = tmp_path / "out"
    args = [slides, "-o", out, "--model", checkpoint, "--tile-size", 64, "--json", "-q"]
    runs = [start_dn(*args, env=file_system) for _ in range(3)]
    results = [records(run) for run in runs]  # every run exits 0: each slide it saw is done by someone
    done = Counter(Path(r["input"]).name for rs, _ in results for r in rs if r["status"] == "done")
    assert done == Counter(f"s{i}.png" for i in range(6))  # each slide exactly once
    others = [r["reason"] for rs, _ in results for r in rs if r["status"] != "done"]
    assert set(others) <= {"done by another run", "another dn run is translating it", "exists"}
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"s{i}.{ext}" for i in range(6) for ext in ("tif", "tif.json")
    )
    for rs, stderr in results:  # the summary tells others' work from this run's
        mine = sum(r["status"] == "done" for r in rs)
        assert f"6 inputs: {mine} translated" in stderr


def test_a_killed_runs_slide_is_left_to_the_next_run(tmp_path, tissue, checkpoint, file_system):
    source = png(tmp_path / "big.png", tissue)
    out = tmp_path / "out" / "big.tif"
    args = [source, "-o", out, "--model", checkpoint, "--tile-size", 64, "--batch-size", 1, "-q"]
    killed = start_dn(*args, env=file_system)
    wait_for(lambda: list(out.parent.glob(".big.tif.*.partial.tif")) or killed.poll() is not None)  # it writes
    assert claim_path(out).exists() and holder_of(out)["pid"] == killed.pid
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    assert holder_of(out) is None  # its claim is left behind, and seen to be a dead run's
    result, stderr = records(start_dn(*args, "--json", env=file_system))
    assert result[0]["status"] == "done", stderr
    assert sorted(p.name for p in out.parent.iterdir()) == ["big.tif", "big.tif.json"]  # no temporary, no claim


def test_a_claim_is_exclusive_until_released(tmp_path):
    final = tmp_path / "o.tif"
    with claim(final):
        with pytest.raises(ClaimHeld):
            claim(final)
        assert holder_of(final)["pid"] == os.getpid()
    assert not claim_path(final).exists() and holder_of(final) is None
    claim(final).release()


def test_a_silent_claim_from_another_node_is_taken_over_and_a_live_one_kept(tmp_path):
    final = tmp_path / "o.tif"
    elsewhere = {"host": "node-7", "boot": "x", "pid": 1, "token": "theirs", "since": 0}
    claim_path(final).write_text(json.dumps(elsewhere))
    with pytest.raises(ClaimHeld):  # its heartbeat is fresh: that run lives, on a node we cannot see into
        claim(final)
    old = time.time() - claims.STALE_AFTER - 1
    os.utime(claim_path(final), (old, old))  # its heartbeat stopped
    with claim(final) as held:
        assert json.loads(claim_path(final).read_text())["token"] == held.token


def test_a_run_whose_claim_was_taken_over_knows_it_and_leaves_the_new_claim(tmp_path, monkeypatch):
    monkeypatch.setattr(claims, "HEARTBEAT", 0.02)
    final = tmp_path / "o.tif"
    stalled = claim(final)
    claim_path(final).unlink()  # taken over (as a run does that found it stale)
    taker = claim(final)
    wait_for(lambda: stalled.lost)
    assert stalled.lost and not taker.lost
    stalled.release()
    assert json.loads(claim_path(final).read_text())["token"] == taker.token
    taker.release()


def test_a_batch_runs_the_biggest_slides_first(tmp_path, slides):
    from click.testing import CliRunner

    from dn_cli.cli import cli

    result = CliRunner().invoke(cli, ["translate", str(slides), "-o", str(tmp_path / "out"), "--dry-run", "--json"])
    order = [Path(json.loads(line)["input"]).name for line in result.stdout.splitlines()]
    sizes = [(slides / name).stat().st_size for name in order]
    assert sizes == sorted(sizes, reverse=True) and order[0] == "s0.png"
    first = CliRunner().invoke(cli, ["translate", str(slides), "-o", "o", "--dry-run", "--json", "--shard", "0/2"])
    names = [Path(json.loads(line)["input"]).name for line in first.stdout.splitlines()]
    assert names == ["s0.png", "s2.png", "s4.png"]  # shards still split the list by path, then go by size
