"""``dn translate`` end to end on a real tissue photograph, and its error paths."""

import subprocess
import sys

import numpy as np
import pytest
import pyvips
import skimage.io
from click.testing import CliRunner

from dn_cli.cli import cli


@pytest.fixture
def image(tmp_path, tissue):
    path = tmp_path / "ihc.png"
    skimage.io.imsave(path, tissue[:200, :300], check_contrast=False)
    return path


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_one_line_error(result, *fragments):
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dn: error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif"])
def test_translate_writes_an_image_of_the_same_size(tmp_path, image, checkpoint, suffix):
    out = tmp_path / f"out{suffix}"
    result = invoke("translate", image, "-o", out, "--model", checkpoint, "--tile-size", 64, "-q")
    assert result.exit_code == 0, result.output
    written = pyvips.Image.new_from_file(str(out))
    assert (written.width, written.height, written.bands) == (300, 200, 3)
    assert result.stderr == ""
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


def test_png_output_equals_a_reference_written_from_the_docs(tmp_path, image, checkpoint, generator, tissue):
    """The CLI end to end (reading, model loading, DN, writing) against the slow two-pass
    reference of tests/test_reference_dn.py, which shares no DN code with dn."""
    from .test_reference_dn import Reference

    out = tmp_path / "out.png"
    assert invoke("translate", image, "-o", out, "--model", checkpoint, "--tile-size", 64, "-q").exit_code == 0
    pixels = tissue[:200, :300]
    expected = Reference(generator.module, pixels, np.ones((4, 5), bool), "bilinear", tile=64, margin=16).translate()
    difference = np.abs(skimage.io.imread(out).astype(int) - expected)
    assert difference.max() <= 1 and (difference > 0).mean() < 1e-3  # float32 against float64 rounding


def test_progress_bar_on_stderr_unless_quiet(tmp_path, image, checkpoint):
    result = invoke("translate", image, "-o", tmp_path / "o.png", "--model", checkpoint, "--tile-size", 64)
    assert result.exit_code == 0
    assert "tile/s" in result.stderr and "/20 " in result.stderr
    assert result.stdout == ""


def test_refuses_to_overwrite_without_flag(tmp_path, image, checkpoint):
    out = tmp_path / "out.png"
    out.write_bytes(b"precious")
    assert_one_line_error(invoke("translate", image, "-o", out, "--model", checkpoint), "exists", "--overwrite")
    assert out.read_bytes() == b"precious"
    assert invoke("translate", image, "-o", out, "--model", checkpoint, "--overwrite", "-q").exit_code == 0
    assert out.read_bytes() != b"precious"


@pytest.mark.parametrize(
    "case,args,fragments",
    [
        ("missing input", ["{tmp}/nope.png", "--model", "{ckpt}"], ["input not found"]),
        ("not an image", ["{ckpt}", "--model", "{ckpt}"], ["cannot read"]),
        ("missing model", ["{img}", "--model", "{tmp}/nope.pth"], ["model file not found"]),
        ("image as model", ["{img}", "--model", "{img}"], ["not a PyTorch checkpoint"]),
        (
            "bad tile size",
            ["{img}", "--model", "{ckpt}", "--tile-size", "61"],
            ["stride 4", "--tile-size 56 / 60 / 64"],
        ),
        ("huge margin", ["{img}", "--model", "{ckpt}", "--tile-size", "64", "--margin", "40"], ["--margin 32 or less"]),
        ("no cuda", ["{img}", "--model", "{ckpt}", "--device", "cuda:7"], ["cuda:7"]),
        ("bad device", ["{img}", "--model", "{ckpt}", "--device", "tpu"], ["device"]),
        ("bad norm", ["{img}", "--model", "{ckpt}", "--norm", "bn"], ["--norm"]),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, image, checkpoint, case, args, fragments):
    args = [a.format(tmp=tmp_path, img=image, ckpt=checkpoint) for a in args]
    out = tmp_path / "out.png"
    assert_one_line_error(invoke("translate", *args, "-o", out), *fragments)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


def test_unknown_output_format_is_refused(tmp_path, image, checkpoint):
    assert_one_line_error(invoke("translate", image, "-o", tmp_path / "o.bmp", "--model", checkpoint), ".bmp", ".png")


def test_debug_shows_the_traceback(tmp_path, image):
    result = invoke("translate", image, "-o", tmp_path / "o.png", "--model", tmp_path / "nope.pth", "--debug")
    assert result.exit_code != 0
    assert isinstance(result.exception, Exception) and "model file not found" in str(result.exception)


def test_real_subprocess(tmp_path, image, checkpoint):
    out = tmp_path / "out.jpg"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dn_cli",
            "translate",
            str(image),
            "-o",
            str(out),
            "--model",
            str(checkpoint),
            "--tile-size",
            "64",
            "--norm",
            "kin",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert out.exists() and done.stdout == ""
    failed = subprocess.run(
        [sys.executable, "-m", "dn_cli", "translate", str(image), "-o", str(out), "--model", str(checkpoint)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert failed.returncode == 1
    assert failed.stderr.strip().splitlines() == [
        f"dn: error: {out} exists, made with other settings (--norm kin, --tile-size 64); use --overwrite to replace it"
    ]


def test_the_readme_option_table_is_the_help_and_the_help_reads_well():
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    rows = [line.replace("\\|", "/") for line in readme.splitlines() if line.startswith("| `-")]  # \| in a cell
    first_cells = [row.split("|")[1] for row in rows]
    documented = {option for cell in first_cells for option in re.findall(r"--[a-z0-9-]+", cell)}
    translate = cli.commands["translate"]
    offered = {o for p in translate.params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")}
    assert documented == offered - {"--help"}
    text = invoke("translate", "--help").output
    assert "--mpp MICRONS" in text and "ΜM" not in text  # click upper-cases metavars: µm would become ΜM


def test_moments_every_half_tile_are_recorded_and_checked(tmp_path, image, checkpoint):
    import json

    out = tmp_path / "o.tif"
    half = invoke("translate", image, "-o", out, "--model", checkpoint, "--tile-size", 64, "--moment-stride", "half")
    assert half.exit_code == 0, half.output
    assert json.loads(out.with_name("o.tif.json").read_text())["options"]["moment_stride"] == "half"
    again = invoke("translate", image, "-o", out, "--model", checkpoint, "--tile-size", 64)
    assert_one_line_error(again, "made with other settings (--moment-stride half)")
    refused = invoke(
        "translate", image, "-o", tmp_path / "x.tif", "--model", checkpoint, "--moment-stride", "half", "--norm", "in"
    )
    assert_one_line_error(refused, "--moment-stride half places DN's moments: it needs --norm dn, not in")
    assert not (tmp_path / "x.tif").exists()
