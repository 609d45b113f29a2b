"""The second hostile trial (issue 16): a user's file never replaced, no wrong result with exit 0,
one clear line for every bad input. Numbers are the trial's (docs/reliability.md)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import zipfile
from xml.etree import ElementTree

import numpy as np
import openslide
import pytest
import pyvips
import tifffile
import torch
import torch.nn.functional as F
from torch import nn

from dn_cli.geometry import Box
from dn_cli.pyramid_tiff import PyramidTiffSink
from dn_cli.sources import open_source

from .test_reliability import dn, files_in, one_error_line, partials, png


@pytest.fixture
def image(tmp_path, tissue):
    return png(tmp_path / "in.png", tissue[:200, :300])


# 1. A user's file replaced ----------------------------------------------------------------------


def test_a_record_dn_did_not_write_is_never_replaced(tmp_path, image, checkpoint):
    out = tmp_path / "o.tif"
    theirs = tmp_path / "o.tif.json"
    theirs.write_text('{"notes": 1}\n')
    one_error_line(dn("translate", image, "-o", out, "--model", checkpoint, "-q"), "o.tif.json", "--overwrite")
    assert theirs.read_text() == '{"notes": 1}\n' and not out.exists() and not partials(tmp_path)
    # A batch: that slide fails, named; the others are made.
    folder = tmp_path / "batch"
    png(folder / "a.png", np.full((40, 40, 3), 200, np.uint8))
    png(folder / "b.png", np.full((40, 40, 3), 100, np.uint8))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.tif.json").write_text("mine")
    result = dn("translate", folder, "-o", tmp_path / "out", "--model", checkpoint, "-q")
    assert result.exit_code == 1 and "a.tif.json exists" in result.stderr
    assert (tmp_path / "out" / "a.tif.json").read_text() == "mine" and not (tmp_path / "out" / "a.tif").exists()
    assert (tmp_path / "out" / "b.tif").exists() and (tmp_path / "out" / "b.tif.json").exists()
    # --overwrite replaces it, as it replaces every other file.
    assert dn("translate", image, "-o", out, "--model", checkpoint, "-q", "--overwrite").exit_code == 0
    assert json.loads(theirs.read_text())["software"].startswith("dn ")


def real_dn(*args, **kwargs) -> subprocess.CompletedProcess:
    """``dn`` as its own process, so the standard streams are real file descriptors."""
    return subprocess.run([sys.executable, "-m", "dn_cli", *map(str, args)], **kwargs)


# 4. Empty paths ---------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [["", "-o", "out"], ["in.png", "-o", ""], ["in.png", "-o", "o.tif", "--preview", " "]])
def test_an_empty_path_is_a_usage_error(tmp_path, image, checkpoint, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    before = files_in(tmp_path)
    result = dn("translate", *args, "--model", checkpoint, "-q")
    assert result.exit_code == 2 and "is empty" in result.stderr, result.output
    assert files_in(tmp_path) == before


# 11, 19. Closed or vanished standard streams ----------------------------------------------------


def test_a_closed_stdout_stops_the_json_lines_not_the_translations(tmp_path, tissue, checkpoint):
    for name in "abc":
        png(tmp_path / "in" / f"{name}.png", tissue[:48, :48])
    dn_process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dn_cli",
            "translate",
            tmp_path / "in",
            "-o",
            tmp_path / "out",
            "--json",
            "-q",
            "--model",
            checkpoint,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    with dn_process:
        first = dn_process.stdout.readline()  # then the reader goes, as `| head -1` does
        dn_process.stdout.close()
        stderr = dn_process.stderr.read().decode()
    assert dn_process.returncode == 0, stderr
    assert json.loads(first)["status"] == "done" and stderr == "3 inputs: 3 translated, 0 skipped, 0 failed\n"
    assert sorted(p.name for p in (tmp_path / "out").glob("*.tif")) == ["a.tif", "b.tif", "c.tif"]


def test_a_closed_stderr_costs_no_slide(tmp_path, image, checkpoint):
    out = tmp_path / "o.tif"
    done = real_dn(
        "translate",
        image,
        "-o",
        out,
        "--model",
        checkpoint,
        stderr=subprocess.DEVNULL,
        close_fds=True,
        preexec_fn=lambda: os.close(2),
    )
    assert done.returncode == 0 and out.exists() and out.with_name("o.tif.json").exists()
    assert json.loads(out.with_name("o.tif.json").read_text())["software"].startswith("dn ")


def test_json_to_a_closed_stdout_is_refused(tmp_path, image, checkpoint):
    done = real_dn(
        "translate",
        image,
        "-o",
        tmp_path / "o.tif",
        "--json",
        "--model",
        checkpoint,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: os.close(1),
    )
    assert done.returncode == 2 and "stdout is closed" in done.stderr
    assert not (tmp_path / "o.tif").exists()


# 20. Inputs from stdin and from pipes -----------------------------------------------------------


def test_stdin_closed_is_one_line(tmp_path, checkpoint):
    done = real_dn(
        "translate",
        "-",
        "-o",
        tmp_path / "out",
        "--model",
        checkpoint,
        capture_output=True,
        text=True,
        preexec_fn=lambda: os.close(0),
    )
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "dn: error: - reads paths from stdin, but stdin is closed"
    ]


def test_nul_separated_paths_are_read(tmp_path, tissue, checkpoint):
    a = png(tmp_path / "with\nnewline.png", tissue[:40, :40])
    b = png(tmp_path / "b.png", tissue[:40, :40])
    result = dn(
        "translate", "-", "-0", "-o", tmp_path / "out", "--model", checkpoint, "-q", stdin=f"{a}\0{b}\0".encode()
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").glob("*.tif")) == ["b.tif", "with\nnewline.tif"]


def test_a_pipe_as_input_says_what_it_is(tmp_path, checkpoint):
    done = real_dn(
        "translate",
        "/dev/stdin",
        "-o",
        tmp_path / "o.tif",
        "--model",
        checkpoint,
        input=b"not an image",
        capture_output=True,
    )
    line = one_line(done)
    assert "pipe or a device" in line and "not found" not in line


def one_line(done: subprocess.CompletedProcess) -> str:
    stderr = done.stderr.decode() if isinstance(done.stderr, bytes) else done.stderr
    lines = stderr.strip().splitlines()
    assert done.returncode != 0 and len(lines) == 1 and lines[0].startswith("dn: error: "), stderr
    assert "unexpected" not in lines[0]
    return lines[0]


# 6, 20. Models whose output does not fit their input, or that fail mid-run ------------------------


class Upsampler(nn.Module):
    """A 2× super-resolution net: its output is twice its input's size."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return F.interpolate(self.conv(x), scale_factor=2)


class ValidConvolutions(nn.Module):
    """Convolutions without padding: the output is smaller than the input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 5)

    def forward(self, x):
        return self.conv(x)


class FailsLater(nn.Module):
    """Runs at load and on the first batch of a slide, then fails (an index past a table, say)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.norm = nn.InstanceNorm2d(3)
        self.calls = 0

    def forward(self, x):
        self.calls += x.shape[-1] == 96  # padded tiles of 64 + 2 × 16 (the probes at load are other sizes)
        if self.calls > 1:
            raise IndexError("index 7 is out of bounds for dimension 0 with size 7")
        return self.norm(self.conv(x))


@pytest.mark.parametrize(("module", "size"), [(Upsampler(), "2 × 2 pixels for a 1 × 1"), (ValidConvolutions(), "")])
def test_a_model_whose_output_is_not_its_input_size_is_refused_at_load(tmp_path, image, module, size):
    model = tmp_path / "model.pt"
    torch.save(module, model)
    result = dn("translate", image, "-o", tmp_path / "o.tif", "--model", model, "--trust-model-code")
    line = one_error_line(result, "model.pt", "the size of its input", size)
    assert "broadcast" not in line and not (tmp_path / "o.tif").exists() and not partials(tmp_path)


def test_a_model_failing_mid_run_is_named_with_the_tile(tmp_path, tissue):
    model = tmp_path / "flaky.pt"
    torch.save(FailsLater(), model)
    source = png(tmp_path / "in.png", tissue[:256, :256])
    result = dn(
        "translate",
        source,
        "-o",
        tmp_path / "o.tif",
        "--model",
        model,
        "--trust-model-code",
        "--tile-size",
        64,
        "--batch-size",
        2,
        "--norm",
        "in",
        "-q",
    )
    one_error_line(result, "flaky.pt failed: IndexError: index 7", "(tiles from x 128, y 0 on)")
    assert not (tmp_path / "o.tif").exists() and not partials(tmp_path)


# 10. Zip bombs ----------------------------------------------------------------------------------


def test_a_zip_bomb_checkpoint_is_refused_before_unpacking(tmp_path, image, checkpoint):
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(checkpoint) as real, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as out:
        for entry in real.infolist():
            if entry.filename.endswith("/data/0"):  # the first tensor's bytes: torch would inflate them all
                with out.open(entry.filename, "w", force_zip64=True) as big:  # 512 MB of zeros in < 1 MB
                    for _ in range(512):
                        big.write(bytes(1 << 20))
            else:
                out.writestr(entry.filename, real.read(entry))
    assert bomb.stat().st_size < 2 << 20
    result = dn("translate", image, "-o", tmp_path / "o.tif", "--model", bomb)
    one_error_line(result, "bomb.pt would unpack 0.5 GB from ", "refused before unpacking")
    assert dn("info", bomb).exit_code == 1


# 5, 24. Output options that a format ignores, or readers cannot open ------------------------------


def test_webp_tiffs_warn_that_openslide_cannot_open_them(tmp_path, image, checkpoint):
    out = tmp_path / "o.tif"
    result = dn("translate", image, "-o", out, "--model", checkpoint, "--compression", "webp", "-q")
    assert result.exit_code == 0 and "OpenSlide" in result.stderr and "cannot open WebP" in result.stderr
    with pytest.raises(openslide.OpenSlideError, match="50001"):  # what the warning says
        openslide.OpenSlide(str(out))
    assert tifffile.imread(out).shape == (200, 300, 3)  # and what it says reads it


def test_options_a_picture_ignores_are_named_and_jpeg_takes_the_quality(tmp_path, image, checkpoint):
    result = dn(
        "translate",
        image,
        "-o",
        tmp_path / "o.png",
        "--model",
        checkpoint,
        "-q",
        "--format",
        "ome-tiff",
        "--quality",
        50,
    )
    assert result.exit_code == 0 and "--format and --quality ignored: o.png is not a .tif" in result.stderr
    sizes = {}
    for quality in (30, 95):
        out = tmp_path / f"q{quality}.jpg"
        result = dn("translate", image, "-o", out, "--model", checkpoint, "-q", "--quality", quality)
        assert result.exit_code == 0 and result.stderr == "", result.stderr
        sizes[quality] = out.stat().st_size
    assert sizes[30] < sizes[95] / 2


# 7. Upsampling bounded ---------------------------------------------------------------------------


def half_micron_tiff(path, pixels):
    """A tiled TIFF (no pyramid) recording 0.5 µm per pixel in its resolution tags."""
    tifffile.imwrite(
        path, pixels, tile=(256, 256), photometric="rgb", resolution=(20000, 20000), resolutionunit="CENTIMETER"
    )
    return path


@pytest.mark.parametrize("mpp", ["0.001", "1e-300"])
def test_upsampling_is_bounded_and_names_the_size(tmp_path, checkpoint, tissue, mpp):
    slide = half_micron_tiff(tmp_path / "s.tif", tissue)
    result = dn("translate", slide, "-o", tmp_path / "o.tif", "--model", checkpoint, "--mpp", mpp, "--allow-upsampling")
    one_error_line(result, "would enlarge s.tif", " pixels: --allow-upsampling goes to 4× at most (--mpp 0.125)")
    result = dn(
        "translate",
        slide,
        "-o",
        tmp_path / "o.tif",
        "--model",
        checkpoint,
        "--mpp",
        0.25,
        "--allow-upsampling",
        "--norm",
        "in",
        "-q",
    )
    assert result.exit_code == 0 and pyvips.Image.new_from_file(str(tmp_path / "o.tif")).width == 1024


# 9. An abort stops the writer at once -----------------------------------------------------------


def test_an_abort_does_not_write_the_rest_of_the_image(tmp_path):
    """The writer once computed and compressed every unwritten row before failing on the short
    stream (minutes on a big slide; Slurm kills after 30 s): an abort stops it at the next strip,
    so the temporary holds about what was written (a flat band here), not the whole 16384² pyramid."""
    path = tmp_path / "big.tif"
    sink = PyramidTiffSink(path, 16384, 16384)
    for y in range(0, 2048, 512):
        sink.write(Box(0, y, 16384, 512), np.full((512, 16384, 3), 128, np.uint8))
    sink.abort()
    assert not sink.writing
    assert path.stat().st_size < 1 << 20  # the whole image: 5.9 MB


# 13, 15. Names decided before the work ----------------------------------------------------------


def test_a_record_name_past_the_limit_is_refused_before_any_work(tmp_path, tissue, checkpoint):
    source = png(tmp_path / "in.png", tissue[:40, :40])
    out = tmp_path / "out" / ("a" * 250 + ".tif")  # 254 bytes fit; its record's 259 do not
    for _ in range(2):  # and a rerun says the same
        line = one_error_line(dn("translate", source, "-o", out, "--model", checkpoint, "-q"))
        assert ".tif.json: a name of 259 bytes, past the 255 its file system takes" in line
        assert not (tmp_path / "out").exists()
    deep = tmp_path.joinpath(*["d" * 200] * 21, "x.png")
    one_error_line(dn("translate", deep, "-o", tmp_path / "o.tif"), "bytes, past the system's 4096")


def test_a_dangling_link_as_output_is_refused_before_the_work(tmp_path, image, checkpoint):
    out = tmp_path / "o.tif"
    out.symlink_to(tmp_path / "nowhere" / "o.tif")
    one_error_line(dn("translate", image, "-o", out, "--model", checkpoint), "is a link to", "does not exist")
    assert out.is_symlink() and not partials(tmp_path)


def test_a_size_a_format_cannot_hold_is_refused_before_the_work_naming_the_output(tmp_path, checkpoint):
    wide = png(tmp_path / "wide.png", np.full((8, 70000, 3), 200, np.uint8))
    result = dn("translate", wide, "-o", tmp_path / "o.jpg", "--model", checkpoint, "--tile-size", 64)
    line = one_error_line(result, "o.jpg would be 70000 × 8 pixels: JPEG holds at most 65535")
    assert ".partial" not in line and not partials(tmp_path)


# 14, 21, 23. Folders and clashes ----------------------------------------------------------------


def test_the_input_folder_as_output_is_refused_from_the_start(tmp_path, tissue, checkpoint):
    png(tmp_path / "in" / "a.png", tissue[:40, :40])
    for out in (tmp_path / "in", tmp_path / "in" / "."):
        one_error_line(dn("translate", tmp_path / "in", "-o", out, "--model", checkpoint), "is the input folder")
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["a.png"]


def test_clashes_name_each_role(tmp_path, image, checkpoint):
    result = dn("translate", image, "-o", tmp_path / "o.png", "--preview", tmp_path / "o.png", "--model", checkpoint)
    one_error_line(result, "as the output of", "and as the preview of")
    result = dn(
        "translate",
        image,
        "-o",
        tmp_path / "o.tif",
        "--preview",
        tmp_path / "p.png",
        "--tissue-mask",
        tmp_path / "p.png",
        "--model",
        checkpoint,
    )
    one_error_line(result, "as the tissue mask of", "and as the preview of")


def test_picture_and_folder_names_mean_what_they_say(tmp_path, image, checkpoint):
    for name in ("p.webp", "p.tif"):
        one_error_line(
            dn("translate", image, "-o", tmp_path / "o.tif", "--preview", tmp_path / name), "pictures are .png or .jpg"
        )
        assert not (tmp_path / name).exists()
    result = dn(
        "translate",
        image,
        "-o",
        f"{tmp_path / 'ts.tif'}/",
        "--model",
        checkpoint,
        "-q",
        "--preview",
        f"{tmp_path / 'p.webp'}/",
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ts.tif" / "in.tif").is_file() and (tmp_path / "p.webp" / "in_preview.png").is_file()


# 25. A malicious pickle is called what it is -----------------------------------------------------


class RunsACommand:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.mark.parametrize("protocol", [2, 4])
def test_a_pickle_that_runs_code_says_so_and_what_trust_means(tmp_path, image, protocol, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "evil.pth"
    model.write_bytes(pickle.dumps({"weights": RunsACommand()}, protocol=protocol))
    line = one_error_line(dn("translate", image, "-o", tmp_path / "o.tif", "--model", model))
    assert "would run code from the file" in line and "--trust-model-code" in line and "truncated" not in line
    assert not (tmp_path / "pwned").exists()


# 26, 27. Batches that say what happened ---------------------------------------------------------


def test_a_rerun_with_another_model_does_not_pass_for_done(tmp_path, tissue, checkpoint):
    png(tmp_path / "in" / "a.png", tissue[:40, :40])
    out = tmp_path / "out"
    assert dn("translate", tmp_path / "in", "-o", out, "--model", checkpoint, "-q").exit_code == 0
    before = files_in(out)
    again = dn("translate", tmp_path / "in", "-o", out, "-q", "--json")  # the bundled model this time
    assert again.exit_code == 0
    assert json.loads(again.stdout)["reason"] == "exists, made with another model"
    assert "was made with another model" in again.stderr and "--overwrite replaces it" in again.stderr
    same = dn("translate", tmp_path / "in", "-o", out, "-q", "--json", "--model", checkpoint)
    assert json.loads(same.stdout)["reason"] == "exists" and same.stderr == ""
    assert files_in(out) == before


# 12. Names that are not UTF-8 -------------------------------------------------------------------


def test_names_that_are_not_utf8_are_translated_and_recorded(tmp_path, tissue, checkpoint):
    folder = tmp_path / os.fsdecode(b"d\xe9p\xf4t")  # latin-1, as a Windows share keeps them
    source = folder / os.fsdecode(b"caf\xe9.png")
    folder.mkdir()
    png(tmp_path / "utf8.png", tissue[:64, :64]).rename(source)  # libvips itself cannot be given the name
    out = folder / "out"
    done = real_dn(
        "translate",
        folder,
        "-o",
        out,
        "--model",
        checkpoint,
        "-q",
        "--preview",
        out,
        "--format",
        "ome-tiff",
        capture_output=True,
    )
    assert done.returncode == 0, done.stderr
    made = sorted(os.fsencode(p.name) for p in out.iterdir())
    assert made == [b"caf\xe9.ome.tif", b"caf\xe9.ome.tif.json", b"caf\xe9_preview.png"]
    record = json.loads((out / os.fsdecode(b"caf\xe9.ome.tif.json")).read_text())
    assert os.fsencode(record["source"]) == os.fsencode(source.resolve())
    with tifffile.TiffFile(out / os.fsdecode(b"caf\xe9.ome.tif")) as tif:
        assert tif.pages[0].shape == (64, 64, 3)
    one = real_dn(
        "translate", source, "-o", folder / os.fsdecode(b"s\xe9.tif"), "--model", checkpoint, "-q", capture_output=True
    )
    assert one.returncode == 0 and (folder / os.fsdecode(b"s\xe9.tif")).exists(), one.stderr


# 17. Thin images: pictures that fit them, and never at the translation's cost ---------------------


def test_pictures_of_a_thin_image_are_made(tmp_path, checkpoint, tissue):
    thin = png(tmp_path / "thin.png", np.concatenate([tissue[:4]] * 12, axis=1)[:, :6000])  # 6000 × 4
    out = tmp_path / "o.tif"
    result = dn(
        "translate",
        thin,
        "-o",
        out,
        "--model",
        checkpoint,
        "-q",
        "--preview",
        tmp_path / "p.png",
        "--tissue-mask",
        tmp_path / "m.png",
    )
    assert result.exit_code == 0 and result.stderr == "", result.output
    preview = pyvips.Image.new_from_file(str(tmp_path / "p.png"))
    assert preview.height == 1 and preview.width > 1000
    assert pyvips.Image.new_from_file(str(tmp_path / "m.png")).height == 1


def test_a_failed_preview_keeps_the_translation(tmp_path, image, checkpoint, monkeypatch):
    def fails(*_args):
        raise RuntimeError("drawing failed")

    monkeypatch.setattr("dn_cli.app.slide.side_by_side", fails)  # the one failure injected: dn's own drawing
    out, preview = tmp_path / "o.tif", tmp_path / "p.png"
    result = dn("translate", image, "-o", out, "--model", checkpoint, "-q", "--preview", preview)
    one_error_line(result, "the preview failed (RuntimeError: drawing failed); o.tif is made and kept")
    assert out.exists() and out.with_name("o.tif.json").exists() and not preview.exists() and not partials(tmp_path)
    monkeypatch.undo()
    again = dn("translate", image, "-o", out, "--model", checkpoint, "-q", "--preview", preview, "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["status"] == "completed" and preview.exists()


# 18. Truncated pyramids -------------------------------------------------------------------------


@pytest.mark.parametrize("writer", ["libvips", "tifffile", "ome-tiff"])
@pytest.mark.parametrize("kept", [0.7, 0.9])
def test_a_truncated_pyramid_is_damaged_for_info_and_translate(tmp_path, tissue, checkpoint, writer, kept):
    whole = tmp_path / "whole.tif"
    pixels = np.ascontiguousarray(np.tile(tissue, (2, 2, 1)))
    if writer == "libvips":
        pyvips.Image.new_from_array(pixels, interpretation="srgb").tiffsave(
            str(whole), tile=True, pyramid=True, compression="jpeg", xres=2000, yres=2000, resunit="cm"
        )
    elif writer == "tifffile":
        with tifffile.TiffWriter(whole) as tif:
            for k in range(3):
                tif.write(
                    pixels[:: 2**k, :: 2**k],
                    tile=(256, 256),
                    photometric="rgb",
                    compression="jpeg",
                    subfiletype=int(k > 0),
                )
    else:  # dn's own OME-TIFF: levels in SubIFDs
        png(tmp_path / "in.png", pixels)
        assert (
            dn(
                "translate",
                tmp_path / "in.png",
                "-o",
                whole,
                "--format",
                "ome-tiff",
                "--norm",
                "in",
                "-q",
                "--model",
                checkpoint,
            ).exit_code
            == 0
        )
    assert dn("info", whole).exit_code == 0
    cut = tmp_path / "cut.tif"
    cut.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * kept)])
    one_error_line(dn("info", cut), "cut.tif: damaged or incomplete")
    one_error_line(dn("translate", cut, "-o", tmp_path / "o.tif", "--model", checkpoint), "damaged or incomplete")
    assert not (tmp_path / "o.tif").exists()


# 22. EXIF orientation ---------------------------------------------------------------------------


def test_a_photo_is_translated_upright(tmp_path, tissue, checkpoint):
    photo = tmp_path / "photo.jpg"
    image = pyvips.Image.new_from_array(np.ascontiguousarray(tissue[:96, :160]), interpretation="srgb").copy()
    image.set_type(pyvips.GValue.gint_type, "orientation", 6)  # stored landscape, shown rotated 90° clockwise
    image.jpegsave(str(photo), Q=95)
    out = tmp_path / "o.png"
    assert dn("translate", photo, "-o", out, "--model", checkpoint, "-q", "--norm", "in").exit_code == 0
    upright = pyvips.Image.new_from_file(str(photo)).autorot().numpy()
    translated = pyvips.Image.new_from_file(str(out)).numpy()
    assert translated.shape == upright.shape == (160, 96, 3)
    same = png(tmp_path / "upright.png", upright)  # the same pixels, stored upright
    assert dn("translate", same, "-o", tmp_path / "u.png", "--model", checkpoint, "-q", "--norm", "in").exit_code == 0
    np.testing.assert_array_equal(translated, pyvips.Image.new_from_file(str(tmp_path / "u.png")).numpy())
    info = json.loads(dn("info", photo, "--json").stdout)
    assert (info["width"], info["height"]) == (96, 160)


# 28. A stack is not a pyramid -------------------------------------------------------------------


def test_a_multi_page_tiff_that_is_not_a_pyramid_warns(tmp_path, tissue, checkpoint):
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.stack([tissue[:64, :64]] * 3), photometric="rgb")  # three full-size pages
    result = dn("translate", stack, "-o", tmp_path / "o.tif", "--model", checkpoint, "-q", "--norm", "in")
    assert result.exit_code == 0
    assert "stack.tif holds 2 more images besides the first, not levels of a pyramid" in result.stderr
    pyramid = tmp_path / "pyramid.tif"
    pyvips.Image.new_from_array(np.ascontiguousarray(tissue), interpretation="srgb").tiffsave(
        str(pyramid), pyramid=True, tile=True, tile_width=64, tile_height=64
    )
    result = dn("translate", pyramid, "-o", tmp_path / "p.tif", "--model", checkpoint, "-q", "--norm", "in")
    assert result.exit_code == 0 and "more image" not in result.stderr


# 29. A full TMPDIR is not a damaged input -------------------------------------------------------


@pytest.fixture
def full_tmpdir(tmp_path):
    """A 2 MB file system (tmpfs, mounted as root), too small for a decoded big picture."""
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2M", "tmpfs", str(small)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip() or 'not root'}")
    yield small
    subprocess.run(["umount", str(small)], check=True)


def test_a_full_tmpdir_is_named_not_blamed_on_the_input(tmp_path, tissue, checkpoint, full_tmpdir):
    big = tmp_path / "big.png"  # over 100 MB decoded: libvips decodes it into TMPDIR
    pyvips.Image.new_from_array(np.ascontiguousarray(tissue), interpretation="srgb").replicate(12, 12).pngsave(
        str(big), compression=1
    )
    done = real_dn(
        "translate",
        big,
        "-o",
        tmp_path / "o.tif",
        "--model",
        checkpoint,
        "-q",
        capture_output=True,
        text=True,
        env={**os.environ, "TMPDIR": str(full_tmpdir)},
    )
    line = one_line(done)
    assert f"no room to decode it in {full_tmpdir} (no space left on device)" in line and "damaged" not in line


# Regressions nothing caught (the trial's fifty breaks) ---------------------------------------------


def test_outputs_get_the_modes_of_plain_new_files(tmp_path, image, checkpoint):
    old = os.umask(0o022)
    try:
        out = tmp_path / "o.tif"
        result = dn("translate", image, "-o", out, "--model", checkpoint, "-q", "--preview", tmp_path / "p.png")
        assert result.exit_code == 0
        for made in (out, tmp_path / "o.tif.json", tmp_path / "p.png"):
            assert made.stat().st_mode & 0o777 == 0o644, made  # not mkstemp's 0600: others in the lab read them
    finally:
        os.umask(old)


def test_folders_are_searched_whatever_the_case_of_extensions(tmp_path, tissue):
    for name in ("X.SVS", "Y.TIF", "z.Png", "w.JPEG"):
        (tmp_path / name).touch()
    from dn_cli.app.batch import expand_inputs

    assert sorted(p.name for p, _, _ in expand_inputs([tmp_path])) == ["X.SVS", "Y.TIF", "w.JPEG", "z.Png"]


def test_provenance_records_the_resolved_source_and_model(tmp_path, tissue, checkpoint, monkeypatch):
    png(tmp_path / "in.png", tissue[:40, :40])
    monkeypatch.chdir(tmp_path)
    assert dn("translate", "in.png", "-o", "o.tif", "--model", checkpoint.name, "-q").exit_code == 0
    record = json.loads((tmp_path / "o.tif.json").read_text())
    assert record["source"] == str((tmp_path / "in.png").resolve())
    assert record["model"] == str(checkpoint.resolve())


@pytest.mark.parametrize(("unit", "per_unit"), [("INCH", 25400 / 0.5), ("CENTIMETER", 10000 / 0.5)])
def test_pixel_sizes_read_from_resolution_tags_in_either_unit(tmp_path, tissue, unit, per_unit):
    path = tmp_path / "stripped.tif"  # stripped: read by tifffile, not OpenSlide
    tifffile.imwrite(path, tissue, photometric="rgb", resolution=(per_unit, per_unit), resolutionunit=unit)
    with open_source(path) as source:
        assert source.mpp == pytest.approx(0.5)


def test_a_pictures_pixel_size_is_its_resolution_inverted(tmp_path, tissue):
    path = tmp_path / "scan.png"  # pHYs of 2000 pixels per mm: 0.5 µm, read through libvips
    pyvips.Image.new_from_array(np.ascontiguousarray(tissue), interpretation="srgb").copy(xres=2000, yres=2000).pngsave(
        str(path)
    )
    with open_source(path) as source:
        assert source.mpp == pytest.approx(0.5)


@pytest.mark.parametrize("fmt", ["tiff", "ome-tiff"])
def test_outputs_record_the_pixel_size_in_the_units_readers_expect(tmp_path, checkpoint, tissue, fmt):
    slide = half_micron_tiff(tmp_path / "s.tif", tissue)
    out = tmp_path / ("o.ome.tif" if fmt == "ome-tiff" else "o.tif")
    result = dn("translate", slide, "-o", out, "--model", checkpoint, "-q", "--norm", "in", "--format", fmt)
    assert result.exit_code == 0, result.output
    with tifffile.TiffFile(out) as tif:
        tags = tif.pages[0].tags
        assert tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
        numerator, denominator = tags["XResolution"].value
        assert numerator / denominator == pytest.approx(20000)  # pixels per cm
        if fmt == "ome-tiff":
            pixels = ElementTree.fromstring(tif.ome_metadata).find(".//{*}Pixels")
            assert pixels.get("PhysicalSizeXUnit") == "µm" and float(pixels.get("PhysicalSizeX")) == 0.5
    if fmt == "tiff":
        with openslide.OpenSlide(str(out)) as read:
            assert float(read.properties["openslide.mpp-x"]) == pytest.approx(0.5)


def test_a_scaled_tiff_read_starts_at_the_rounded_origin(tmp_path, tissue):
    """At --mpp 0.75 over a 0.5 µm level (scale 1.5) the box at x = 1 starts at level pixel 1.5:
    rounded to 2, as slides do, not cut to 1."""
    path = tmp_path / "stripped.tif"
    tifffile.imwrite(path, tissue, photometric="rgb", resolution=(20000, 20000), resolutionunit="CENTIMETER")
    with open_source(path, mpp=0.75) as source:
        patch = source.read(Box(1, 1, 20, 20))
    level = tissue[2:32, 2:32].astype(float)  # ceil(20 × 1.5) = 30 pixels from (2, 2)
    edges = np.arange(21) * 1.5
    weights = np.clip(np.minimum(edges[1:, None], np.arange(1, 31)) - np.maximum(edges[:-1, None], np.arange(30)), 0, 1)
    expected = np.einsum("yi,xj,ijc->yxc", weights, weights, level) / 2.25
    assert np.abs(patch - expected).max() <= 1


def test_a_slide_thumbnail_comes_from_the_level_the_requested_level_and_shrink_reach(tmp_path, tissue):
    """Each level of this pyramid shows a different picture (made so), so the thumbnail tells which
    level it was taken from: --level 1 shrunk 2× is level 2, not level 1 shrunk."""
    path = tmp_path / "levels.tif"
    pictures = [tissue, tissue[::2, ::2] // 2, 255 - tissue[::4, ::4]]
    with tifffile.TiffWriter(path) as tif:
        for k, picture in enumerate(pictures):
            tif.write(np.ascontiguousarray(picture), tile=(64, 64), photometric="rgb", subfiletype=int(k > 0))
    with open_source(path, level=1) as source:
        assert (source.width, source.level) == (256, 1)
        np.testing.assert_array_equal(source.thumbnail(128), pictures[2])
