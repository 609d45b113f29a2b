"""The Python face (``import dn_cli as dn``): the same pipeline and safety as ``dn translate``,
silent, errors raised with the command's words."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from torch import nn

import dn_cli as dn

from .conftest import affine_model
from .test_reference_dn import Reference
from .test_reliability import dn as dn_command
from .test_reliability import one_error_line, png


@pytest.fixture
def slides(tmp_path, tissue):
    """Two small pictures of real tissue in a folder."""
    png(tmp_path / "in" / "a.png", tissue[:200, :300])
    png(tmp_path / "in" / "b.png", tissue[200:360, 100:400])
    return tmp_path / "in"


def test_an_array_is_translated_as_the_independent_reference_does_it(tissue):
    image = np.ascontiguousarray(tissue[40:240, 100:430])  # ragged last row and column of tiles
    model = affine_model()  # a live module of no known family: its stride is probed
    expected = Reference(affine_model(), image, np.ones((4, 6), bool), "bilinear", 64, 16).translate()
    got = dn.translate_array(image, model, tile_size=64, margin=16, tissue=False, device="cpu")
    difference = np.abs(got.astype(int) - expected)
    assert got.shape == image.shape and got.dtype == np.uint8
    assert difference.max() <= 1 and (difference > 0).mean() < 1e-3  # float32 against float64 rounding
    assert isinstance(model[2], nn.InstanceNorm2d) and not model.training  # the caller's module untouched


def test_a_module_and_its_checkpoint_are_the_same_model(tissue, checkpoint, generator):
    image = tissue[:150, :200]
    from_file = dn.translate_array(image, checkpoint, tile_size=64, device="cpu")
    from_module = dn.translate_array(image, generator.module, tile_size=64, device="cpu")
    assert np.array_equal(from_file, from_module)
    assert dn.load_model(generator.module).generator.family == "cyclegan-resnet"  # detected as for files


def test_a_slide_from_python_is_the_slide_the_command_makes(tmp_path, slides, checkpoint):
    source = slides / "a.png"
    assert dn_command("translate", source, "-o", tmp_path / "cli.tif", "--model", checkpoint, "-q").exit_code == 0
    result = dn.translate_slide(source, tmp_path / "py.tif", checkpoint)
    assert result.status == "done" and (result.width, result.height) == (300, 200) and result.tiles == 1
    assert result.output == tmp_path / "py.tif" and (tmp_path / "py.tif.json").exists()
    with tifffile.TiffFile(tmp_path / "cli.tif") as tif:
        levels = len(tif.pages)
    assert levels > 1
    for level in range(levels):
        cli, py = (tifffile.imread(tmp_path / name, key=level) for name in ("cli.tif", "py.tif"))
        assert np.array_equal(cli, py)
    record = json.loads((tmp_path / "py.tif.json").read_text())
    assert record["options"] == json.loads((tmp_path / "cli.tif.json").read_text())["options"]


def test_the_library_prints_nothing_and_logs_its_warnings(tmp_path, slides, checkpoint, tissue, capfd, caplog):
    (slides / "broken.png").write_bytes(b"not a picture")
    progress = []
    with caplog.at_level(logging.INFO, logger="dn"):
        dn.translate_array(tissue[:100, :100], checkpoint, tile_size=64, device="cpu")
        dn.translate_slide(slides / "a.png", tmp_path / "one.tif", checkpoint, device="cpu")
        results = dn.translate_slides(
            slides, tmp_path / "out", checkpoint, device="cpu", on_progress=lambda *p: progress.append(p)
        )
        dn.translate_slide(slides / "a.png", tmp_path / "fp16.tif", checkpoint, device="cpu", precision="fp16")
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert sorted(r.status for r in results) == ["done", "done", "failed"]
    assert any(label == "[1/3] a.png" and done == total == 1 for label, done, total in progress), progress
    logged = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "dn"]
    assert any(level == "ERROR" and "broken.png" in message for level, message in logged), logged
    assert any(level == "WARNING" and "--precision fp16 on the CPU" in message for level, message in logged), logged


def test_bad_input_raises_with_the_message_the_command_prints(tmp_path, slides, checkpoint):
    with pytest.raises(dn.DnError, match=r"expected an RGB image as a \(height, width, 3\) uint8 array"):
        dn.translate_array(np.zeros((10, 10), np.float32), checkpoint)
    with pytest.raises(dn.ModelError):
        dn.load_model(tmp_path / "missing.pth")
    with pytest.raises(dn.DnError, match="is a folder: translate_slides"):
        dn.translate_slide(slides, tmp_path / "x.tif", checkpoint)
    cases = [
        ([slides / "nothing.png", tmp_path / "x.tif"], {}),
        ([slides / "a.png", tmp_path / "x.txt"], {}),
        ([slides / "a.png", tmp_path / "x.tif"], {"level": 1, "mpp": 0.5}),
    ]
    for (source, output), options in cases:
        flags = [f"--{name}={value}" for name, value in options.items()]
        line = dn_command("translate", source, "-o", output, "--model", checkpoint, *flags).stderr.strip()
        with pytest.raises(dn.DnError) as raised:
            dn.translate_slide(source, output, checkpoint, **options)
        assert line.endswith(str(raised.value)), (line, raised.value)


def test_an_existing_output_is_refused_then_replaced_only_when_asked(tmp_path, slides, checkpoint):
    output = tmp_path / "a.tif"
    first = dn.translate_slide(slides / "a.png", output, checkpoint)
    before = output.read_bytes()
    with pytest.raises(dn.OutputError) as raised:
        dn.translate_slide(slides / "a.png", output, checkpoint)
    line = one_error_line(dn_command("translate", slides / "a.png", "-o", output, "--model", checkpoint))
    assert line == f"dn: error: {raised.value}" and output.read_bytes() == before
    again = dn.translate_slide(slides / "a.png", output, checkpoint, overwrite=True)
    assert first.status == again.status == "done"
    assert [r.status for r in dn.translate_slides(slides, tmp_path / "folder", checkpoint)] == ["done"] * 2
    again = dn.translate_slides(slides, tmp_path / "folder", checkpoint)
    assert [(r.status, r.record()["reason"]) for r in again] == [("skipped", "exists")] * 2
    shards = [dn.translate_slides(slides, tmp_path / "shards", checkpoint, shard=(k, 2)) for k in (0, 1)]
    assert sorted(r.input.name for results in shards for r in results) == ["a.png", "b.png"]


def test_a_batch_reports_each_failure_in_its_result_as_the_json_lines_do(tmp_path, slides, checkpoint):
    (slides / "broken.png").write_bytes(b"not a picture")
    results = dn.translate_slides([slides / "broken.png", slides / "a.png"], tmp_path / "py", checkpoint)
    command = dn_command("translate", slides / "broken.png", slides / "a.png", "-o", tmp_path / "cli")
    lines = [
        json.loads(line)
        for line in dn_command(
            "translate",
            slides / "broken.png",
            slides / "a.png",
            "-o",
            tmp_path / "cli2",
            "--model",
            checkpoint,
            "--json",
        ).stdout.splitlines()
    ]
    assert command.exit_code == 1
    by_name = {r.input.name: r for r in results}
    assert by_name["a.png"].status == "done" and by_name["broken.png"].status == "failed"
    assert by_name["broken.png"].error == next(line["error"] for line in lines if line["status"] == "failed")
    assert by_name["broken.png"].record().keys() == {"input", "output", "status", "error"}


def test_a_runner_converts_once_and_serves_many_calls(tmp_path, slides, checkpoint, tissue):
    runner = dn.Runner(checkpoint, device="cpu")
    tiles = runner.tiles
    first = runner.translate_array(tissue[:120, :130], tile_size=64)
    assert np.array_equal(first, dn.translate_array(tissue[:120, :130], runner, tile_size=64))
    assert np.array_equal(first, dn.translate_array(tissue[:120, :130], checkpoint, tile_size=64, device="cpu"))
    assert runner.translate_slide(slides / "a.png", tmp_path / "a.tif").status == "done"
    assert [r.status for r in runner.translate_slides(slides, tmp_path / "out")] == ["done"] * 2
    assert runner.tiles is tiles and runner.device == "cpu"


def test_slides_are_dealt_over_devices_from_python(tmp_path, slides, checkpoint, caplog):
    with caplog.at_level(logging.WARNING, logger="dn"):
        results = dn.translate_slides(slides, tmp_path / "out", checkpoint, devices=["cpu", "cpu"], precision="bf16")
    assert any("--precision bf16 on the CPU" in r.getMessage() for r in caplog.records)
    assert sorted(r.status for r in results) == ["done", "done"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.tif", "a.tif.json", "b.tif", "b.tif.json"]


def test_moments_every_half_tile_from_python(tissue, checkpoint):
    image = tissue[:200, :300]
    half = dn.translate_array(image, checkpoint, tile_size=64, tissue=False, moment_stride="half", device="cpu")
    tile = dn.translate_array(image, checkpoint, tile_size=64, tissue=False, device="cpu")
    assert half.shape == image.shape and np.abs(half.astype(int) - tile).mean() > 0.05


def test_unknown_options_are_type_errors():
    with pytest.raises(TypeError, match="tile_sise"):
        dn.translate_array(np.zeros((8, 8, 3), np.uint8), tile_sise=64)


def test_importing_dn_is_quick_and_names_its_face():
    code = "import sys, dn_cli as dn; print('torch' in sys.modules, dn.__version__, sorted(dn.__all__)[:3])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("False 0.1.0")
    assert all(getattr(dn, name) is not None for name in dn.__all__)
    assert issubclass(dn.OutputError, dn.DnError) and dn.Status.DONE == "done"
