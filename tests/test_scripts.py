"""The benchmark scripts run and report what docs/benchmarks.md quotes (numbers are not checked)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
import torch

SCRIPTS = Path(__file__).parents[1] / "scripts"


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPTS / name), *args], capture_output=True, text=True, timeout=600)


def last_json(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_bench_reports_the_pipeline_against_the_ceiling():
    results = last_json(run_script("bench.py", "--size", "512", "--tile-size", "256", "--batch-sizes", "2"))
    (row,) = results["sweep"]
    assert row["batch_size"] == 2 and row["tiles"] == 4
    # Fractions of what each policy can reach: the ceiling for in, half of it for dn (two forwards).
    assert row["in_fraction"] == pytest.approx(row["in_tiles_per_s"] / row["ceiling_tiles_per_s"])
    assert row["dn_fraction"] == pytest.approx(row["dn_tiles_per_s"] / (row["ceiling_tiles_per_s"] / 2))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machines without a GPU")
def test_bench_cuda_mode_is_skipped_cleanly_without_a_gpu():
    done = run_script("bench.py", "--device", "cuda")
    assert done.returncode == 0
    assert done.stdout == "" and done.stderr.strip() == (
        "bench.py: no CUDA device here; the --device cuda benchmark is skipped"
    )


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bench_cuda_sweep_runs_every_batch_size():
    results = last_json(
        run_script(
            "bench.py",
            "--device",
            "cuda",
            "--size",
            "1024",
            "--tile-size",
            "256",
            "--batch-sizes",
            "2",
            "4",
            "--channels-last",
        )
    )
    assert [row["batch_size"] for row in results["sweep"]] == [2, 4]
    assert results["precision"] == "torch.float16"


def test_scaling_bench_measures_each_size_and_draws_the_chart(tmp_path):
    chart = tmp_path / "scaling.svg"
    results = last_json(
        run_script("bench_scaling.py", "--sizes", "256", "512", "--norms", "in", "dn", "--plot", str(chart))
    )
    assert set(results) == {"256", "512"}
    for runs in results.values():
        for norm, run in runs.items():
            assert run["norm"] == norm  # the child ran the policy asked for
            assert run["exit"] == 0 and run["seconds"] > 0
            assert run["peak_rss_mb"] > 100  # the child's own peak: it loaded torch and ran the model
    svg = ElementTree.parse(chart).getroot()
    assert svg.tag.endswith("svg") and len(svg.findall("{http://www.w3.org/2000/svg}circle")) == 2 * 2 * 2


def test_reliability_runs_cases_and_writes_the_table(tmp_path):
    doc = tmp_path / "reliability.md"
    marks = "<!-- reliability table: scripts/reliability.py -->\nstale table\n<!-- end of table -->"
    doc.write_text(f"intro\n{marks}\nafter\n")
    done = run_script("reliability.py", "--only", "preview is the input", "--out", str(doc))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith("1 cases, 0 failed")
    text = doc.read_text()
    assert text.startswith("intro\n") and text.endswith("after\n") and "stale table" not in text
    assert "| 1 | --preview is the input | `dn translate in.png -o o.tif --preview in.png" in text


def test_small_image_study_reports_before_and_after():
    results = last_json(run_script("small_image_study.py"))
    assert results["mirrored tile (before)"]["max"] > 1
    assert all(row["max"] <= 1 for name, row in results.items() if name.startswith("run whole"))


def test_sharing_bench_runs_both_ways_and_each_slide_once():
    results = last_json(run_script("bench_sharing.py", "--scale", "0.125"))
    static = results["static (--shard 0/2, --shard 1/2)"]
    assert (static["run 0"]["translated"], static["run 1"]["translated"]) == (list("aceg"), list("bdfh"))
    shared = results["shared (the same command twice)"]
    assert sorted(shared["run 0"]["translated"] + shared["run 1"]["translated"]) == list("abcdefgh")


def test_commit_bench_runs_dn_bench_at_each_commit_in_its_own_worktree():
    """HEAD twice: two worktrees, two `dn bench` runs each, and none left behind."""
    results = last_json(
        run_script("bench_commits.py", "HEAD", "HEAD~0", "--size", "256", "--repeats", "1", "--rounds", "1", "--json")
    )
    (row,) = results["commits"].values()  # one commit, however it was named
    assert row["dn_of_half_ceiling"] == pytest.approx(row["dn_mpx_s"] / (row["ceiling_mpx_s"] / 2), abs=0.01)
    listed = subprocess.run(["git", "-C", SCRIPTS.parent, "worktree", "list"], capture_output=True, text=True)
    assert listed.stdout.count("\n") == 1, listed.stdout


@pytest.mark.skipif(shutil.which("taskset") is None, reason="needs taskset (util-linux)")
def test_commit_bench_measures_the_host_stages_on_one_core_then_two():
    args = ("HEAD", "--cores", "1", "2", "--host-only", "--size", "512", "--repeats", "1", "--rounds", "1", "--json")
    results = last_json(run_script("bench_commits.py", *args))
    (one, two) = results["commits"].values()
    assert set(one) == {"read_mpx_s", "write_mpx_s", "null_mpx_s", "null_of_reads_and_writer"}
    fed = 1 / (1 / two["read_mpx_s"] + 1 / two["write_mpx_s"])
    assert two["null_of_reads_and_writer"] == pytest.approx(two["null_mpx_s"] / fed, abs=0.01)
    ((name, scaling),) = results["scaling"].items()
    assert name.endswith("2 ÷ 1 cores") and scaling["write_mpx_s"] == pytest.approx(
        two["write_mpx_s"] / one["write_mpx_s"], abs=0.01
    )


def test_fidelity_reports_every_policy_by_ring_for_both_models():
    done = run_script("fidelity.py", "--tile-size", "128", "--seeds", "0", "--json")
    assert done.returncode == 0, done.stderr
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["model"].split(" (")[0] for r in results] == ["DAB → AEC", "DAB → eosin"]
    for result in results:
        for yardstick in ("truth", "local"):
            assert set(result[yardstick]) == {"untiled", "dn", "in", "kin", "tin", "dn half"}
            assert all(
                set(by_ring) == {"all", "border", "interior", "centre", "seam"}
                for by_ring in result[yardstick].values()
            )
        assert set(result["seams"]["0"]) == {"untiled", "dn", "in", "kin", "tin", "dn half"}


def test_house_measures_the_code_and_finds_no_import_circle():
    figures = last_json(run_script("house.py", "--json"))
    assert figures["modules"] > 40 and figures["cli_lines"] < figures["lines"]
    assert figures["circles"] == [] and figures["functions_over_100_lines"] == 0  # issue 26
