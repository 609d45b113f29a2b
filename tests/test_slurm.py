"""dn on a real Slurm: the README's job script as a job array, with static shards and with tasks
sharing the folder; a task cancelled mid-slide leaves nothing and a resubmitted one finishes.

The cluster (``slurm_cluster``) is started here; where it cannot start (no slurm-wlm, not root)
the tests are skipped with the reason, which ``-ra`` prints."""

import json
import re
import shlex
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from dn_cli.cli import cli

from .slurm_cluster import Cluster, Unavailable
from .test_reliability import png
from .test_sharing import without_flock

ROOT = Path(__file__).resolve().parents[1]
JOB_SCRIPT = ROOT / "scripts" / "dn-slurm.sbatch"
SMALL = ["--cpus-per-task=1", "--mem=1G"]  # this machine's share for each task, not a GPU node's


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    cluster = Cluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except Unavailable as e:
        cluster.stop()
        pytest.skip(f"no Slurm cluster could be started here: {e}")
    cluster.env["DN"] = f"{shlex.quote(sys.executable)} -m dn_cli"  # dn as this Python runs it
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def slides(tmp_path_factory, tissue):
    """Six PNGs of tissue of mixed sizes."""
    folder = tmp_path_factory.mktemp("slides")
    for i, side in enumerate([512, 448, 384, 320, 256, 192]):
        png(folder / f"s{i}.png", np.ascontiguousarray(np.roll(tissue, 50 * i, axis=0)[:side, :side]))
    return folder


@pytest.fixture(scope="module")
def model(tmp_path_factory, generator):
    import torch

    path = tmp_path_factory.mktemp("model") / "model.pth"
    torch.save(generator.module.state_dict(), path)
    return path


OPTIONS = ["--tile-size", "64", "-q"]


@pytest.fixture(scope="module")
def single_run(tmp_path_factory, slides, model) -> Path:
    out = tmp_path_factory.mktemp("single")
    result = CliRunner().invoke(cli, ["translate", str(slides), "-o", str(out), "--model", str(model), *OPTIONS])
    assert result.exit_code == 0, result.output
    return out


def submit(slurm: Cluster, folder: Path, *sbatch: str, args: list[str]) -> str:
    done = slurm.slurm("sbatch", "--parsable", *SMALL, *sbatch, str(JOB_SCRIPT), *args, cwd=folder)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split(";")[0]


def records(folder: Path, job: str) -> list[dict]:
    """Every task's JSON lines, from the files the job script names (dn-JOB_TASK.jsonl): nothing
    else is in them, as jq needs (the messages go to dn-JOB_TASK.log)."""
    lines = []
    for log in sorted(folder.glob(f"dn-{job}_*.jsonl")):
        lines += [json.loads(line) for line in log.read_text().splitlines()]
    return lines


def same_pixels(out: Path, single: Path) -> None:
    names = sorted(p.name for p in single.glob("*.tif"))
    assert sorted(p.name for p in out.iterdir()) == sorted([*names, *(f"{n}.json" for n in names)])
    for name in names:
        np.testing.assert_array_equal(tifffile.imread(out / name, level=0), tifffile.imread(single / name, level=0))


@pytest.mark.parametrize("sharing", ["static", "dynamic"])
def test_a_job_array_translates_each_slide_once(tmp_path, slurm, slides, model, single_run, sharing):
    """Shared dynamically, on a file system without flock, as cluster file systems (Lustre, GPFS)
    are often mounted: the tasks' Python finds flock failing (``test_sharing.without_flock``)."""
    out = tmp_path / "out"
    saved = dict(slurm.env)
    if sharing == "static":
        slurm.env["DN_SHARDS"] = "static"
    else:
        slurm.env.update(without_flock(saved, tmp_path))
    try:
        job = submit(slurm, tmp_path, args=[str(slides), str(out), str(model), *OPTIONS])
        slurm.wait()
    finally:
        slurm.env.clear()
        slurm.env.update(saved)
    logs = " ".join(log.read_text() for log in tmp_path.glob("dn-*.log"))
    lines = records(tmp_path, job)
    assert len(list(tmp_path.glob(f"dn-{job}_*.log"))) == 4, logs  # the script's array: four tasks
    assert "dn: error" not in logs and "Traceback" not in logs and "failed" not in {r["status"] for r in lines}
    done = Counter(Path(r["input"]).name for r in lines if r["status"] == "done")
    assert done == Counter(p.name for p in slides.iterdir()), logs  # every slide exactly once
    if sharing == "static":
        assert len(lines) == 6  # each task sees its own share only
    else:
        assert len(lines) == 24  # each task sees every slide, and leaves to others what they have
    same_pixels(out, single_run)


def test_a_cancelled_task_leaves_nothing_and_a_resubmitted_one_finishes(tmp_path, slurm, tissue, model):
    folder = tmp_path / "in"
    png(folder / "big.png", np.ascontiguousarray(np.tile(tissue, (2, 2, 1))))
    out = tmp_path / "out"
    args = [str(folder), str(out), str(model), "--tile-size", "64", "--batch-size", "1", "-q"]
    job = submit(slurm, tmp_path, "--array=0", args=args)
    deadline = time.monotonic() + 300
    while not list(out.glob(".big.tif.*.partial.tif")):  # claimed and translating
        assert time.monotonic() < deadline and slurm.jobs(), (tmp_path / f"dn-{job}_0.log").read_text()
        time.sleep(0.2)
    slurm.slurm("scancel", job, check=True)
    slurm.wait()
    assert list(out.iterdir()) == []  # no partial file, no claim: dn heard SIGTERM and cleaned up
    log = (tmp_path / f"dn-{job}_0.log").read_text()
    assert "dn: interrupted" in log and "Traceback" not in log
    again = submit(slurm, tmp_path, "--array=0", args=args)
    slurm.wait()
    assert [r["status"] for r in records(tmp_path, again)] == ["done"]
    assert sorted(p.name for p in out.iterdir()) == ["big.tif", "big.tif.json"]


def test_the_readme_gives_the_job_script_it_runs():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    assert JOB_SCRIPT.read_text() in blocks
