"""``dn bench``: every stage measured on real tissue, in Mpx/s, with the bottleneck named."""

import json

import numpy as np
import torch
from click.testing import CliRunner

from dn_cli import benchmark
from dn_cli.cli import cli
from dn_cli.geometry import Box
from dn_cli.images import ArrayImage
from dn_cli.pipeline import TileRunner

from .test_pyramid_output import slide_file

KEYS = ("read_mpx_s", "ceiling_mpx_s", "write_mpx_s", "null_mpx_s", "in_mpx_s", "dn_mpx_s")


def test_bench_makes_a_tissue_slide_and_reports_every_stage():
    result = CliRunner().invoke(cli, ["bench", "--size", "512", "--tile-size", "128", "--repeats", "2", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report["spread"]) == set(KEYS)
    # The bottleneck is the slowest stage of the figures shown (the model at half its ceiling: dn
    # runs two forwards per tile).
    alone = {"reads": report["read_mpx_s"], "model": report["ceiling_mpx_s"] / 2, "writer": report["write_mpx_s"]}
    assert report["bottleneck"] == min(alone, key=alone.get)
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


def test_host_only_bench_measures_what_a_gpu_can_be_fed_without_running_the_model():
    result = CliRunner().invoke(cli, ["bench", "--size", "512", "--tile-size", "128", "--repeats", "1", "--host-only"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines[1:4]] == ["slide", "writer", "pipeline"] and len(lines) == 5
    assert lines[-1] in ("bottleneck: reads", "bottleneck: writer")
    report = json.loads(CliRunner().invoke(cli, ["bench", "--quick", "--host-only", "--json"]).stdout)
    assert set(report["spread"]) == {"read_mpx_s", "write_mpx_s", "null_mpx_s"} and report["repeats"] == 1


def test_quick_bench_measures_a_small_slide_once():
    result = CliRunner().invoke(cli, ["bench", "--quick", "--tile-size", "256", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["tiles"], report["repeats"]) == (16, 1) and "1024²" in report["slide"]


class CountedImage(ArrayImage):
    def __init__(self, pixels) -> None:
        super().__init__(pixels)
        self.boxes = []

    def read(self, box: Box):
        self.boxes.append(box)
        return super().read(box)


def test_each_stage_measures_the_work_it_names(tissue, generator, monkeypatch):
    """Counted, not timed: every stage runs on the same tiles, the model's ceiling is one forward
    per tile, dn two, and a slide bigger than the cap is measured on its top rows only."""
    monkeypatch.setattr(benchmark, "MAX_MEGAPIXELS", 0.15)  # 512² in tiles of 128: the top 2 rows
    image = CountedImage(np.ascontiguousarray(tissue))
    runner = TileRunner(generator, torch.device("cpu"))
    forwarded = []
    for model in (runner.module, runner.collecting):  # dn's collect forward runs the model cut short
        model.register_forward_pre_hook(lambda _, args: forwarded.append(len(args[0])))
    repeats = 2
    report = benchmark.measure(image, runner, tile_size=128, margin=16, batch_size=3, repeats=repeats)
    assert (report["tiles"], report["megapixels"]) == (8, round(512 * 256 / 1e6, 3))
    assert max(box.y + box.height for box in image.boxes) <= 256  # never below the measured part
    # Tile reads: one gathering pass, then per repeat the reads alone and three whole pipelines.
    assert len(image.boxes) == 8 * (1 + 4 * repeats)
    # Forwards, in tiles: the warm-up, then per repeat the ceiling, `in` (one each) and `dn` (two).
    assert sum(forwarded) == 8 * (1 + 4 * repeats)
    assert sorted(set(forwarded)) == [2, 3]  # batches of 3, the last of 2: the pipeline's own
