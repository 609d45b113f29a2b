"""``dn bench``: every stage measured on real tissue, in Mpx/s, with the bottleneck named."""

import json

from click.testing import CliRunner

from dn_cli.cli import cli

from .test_pyramid_output import slide_file

KEYS = ("read_mpx_s", "ceiling_mpx_s", "write_mpx_s", "null_mpx_s", "in_mpx_s", "dn_mpx_s")


def test_bench_makes_a_tissue_slide_and_reports_every_stage():
    result = CliRunner().invoke(cli, ["bench", "--size", "512", "--tile-size", "128", "--repeats", "2", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert all(report[key] > 0 for key in KEYS)
    assert all(low <= report[key] <= high for key, (low, high) in report["spread"].items())
    assert report["bottleneck"] in ("reads", "model", "writer")
    assert (report["tiles"], report["repeats"], report["device"]) == (16, 2, "cpu")
    assert report["model"] == "dab2aec_resnet_ngf16.pth" and "bundled sample" in report["slide"]


def test_bench_on_a_given_slide_for_people(tmp_path, tissue, checkpoint):
    slide = slide_file(tmp_path / "s.tif", tissue)
    options = ["--model", str(checkpoint), "--tile-size", "256", "--batch-size", "2", "--repeats", "1"]
    result = CliRunner().invoke(cli, ["bench", str(slide), *options])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"cpu, latest_net_G_A.pth, {slide}: 0.262 Mpx")
    assert [line.split()[0] for line in lines[1:7]] == ["slide", "model", "writer", "pipeline"] + ["pipeline,"] * 2
    assert lines[-1].startswith("bottleneck: ")


def test_quick_bench_measures_a_small_slide_once():
    result = CliRunner().invoke(cli, ["bench", "--quick", "--tile-size", "256", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["tiles"], report["repeats"]) == (16, 1) and "1024²" in report["slide"]
