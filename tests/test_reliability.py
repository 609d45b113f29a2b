"""Never lose a slide, never hang, never lie: each case of the hostile trial (docs/reliability.md)."""

from __future__ import annotations

import json
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import pyvips
import tifffile
import torch
from click.testing import CliRunner
from torch import nn

from dn_cli.cli import cli
from dn_cli.errors import DeviceMemoryError, ModelError, OutputError
from dn_cli.geometry import Box
from dn_cli.models import Generator
from dn_cli.outputs import Partial, clear_stale_partials
from dn_cli.pipeline import TileRunner
from dn_cli.provenance import write_sidecar
from dn_cli.pyramid_tiff import PyramidTiffSink

from .test_pyramid_output import slide_file

CPU = torch.device("cpu")


def png(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pyvips.Image.new_from_array(np.ascontiguousarray(pixels), interpretation="srgb").write_to_file(str(path))
    return path


def dn(*args, stdin=None):
    return CliRunner().invoke(cli, [str(a) for a in args], input=stdin)


def one_error_line(result, *fragments) -> str:
    assert result.exit_code != 0, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dn: error: "), result.stderr
    assert "unexpected" not in lines[0] and "Traceback" not in result.output and "b'" not in lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def files_in(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def partials(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".partial" in p.name]


@pytest.fixture
def image(tmp_path, tissue):
    return png(tmp_path / "in.png", tissue[:200, :300])


# 1. Hangs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("side", [1, 8, 16, 36])
def test_a_tiny_image_is_written_to_a_pyramid_without_hanging(tmp_path, tissue, side):
    # libvips asks for more of the stream after its end: each ask must be answered.
    sink = PyramidTiffSink(tmp_path / "o.tif", side, side)
    done = threading.Thread(
        target=lambda: (sink.write(Box(0, 0, side, side), tissue[:side, :side]), sink.close()), daemon=True
    )
    done.start()
    done.join(timeout=60)
    assert not done.is_alive(), "the writer hung"
    assert pyvips.Image.new_from_file(str(tmp_path / "o.tif")).width == side


@pytest.mark.parametrize("shape", [(1, 1), (2, 2), (8, 8), (36, 36), (5000, 10)])
def test_tiny_and_thin_images_are_translated(tmp_path, tissue, checkpoint, shape):
    source = png(tmp_path / "in.png", np.concatenate([tissue] * 10)[: shape[0], : shape[1]])
    out = tmp_path / "o.tif"
    result = dn("translate", source, "-o", out, "--model", checkpoint, "-q")
    assert result.exit_code == 0, result.output
    assert pyvips.Image.new_from_file(str(out)).height == shape[0]


def test_a_tile_larger_than_the_image_shrinks_to_it(tmp_path, image, checkpoint):
    out = tmp_path / "o.tif"
    assert dn("translate", image, "-o", out, "--model", checkpoint, "--tile-size", 8192, "-q").exit_code == 0
    assert json.loads((tmp_path / "o.tif.json").read_text())["tile_size"] == 300
    one_error_line(dn("translate", image, "-o", out, "--tile-size", 100000), "--tile-size", "8192")


# 2–6. Slides lost or destroyed ------------------------------------------------------------------


def test_outputs_keep_the_folder_layout_so_equal_names_never_collide(tmp_path, tissue, checkpoint):
    png(tmp_path / "in" / "sub1" / "x.png", tissue[:64, :64])
    png(tmp_path / "in" / "sub2" / "x.png", tissue[64:128, :64])
    png(tmp_path / "in" / "x.png", tissue[128:192, :64])
    dry = dn("translate", tmp_path / "in", "-o", tmp_path / "out", "--recursive", "--dry-run", "--json")
    outputs = [json.loads(line)["output"] for line in dry.stdout.splitlines()]
    assert len(set(outputs)) == 3
    result = dn("translate", tmp_path / "in", "-o", tmp_path / "out", "--recursive", "--model", checkpoint, "-q")
    assert result.exit_code == 0, result.output
    made = sorted(p for p in files_in(tmp_path / "out") if p.endswith(".tif"))
    assert made == ["sub1/x.tif", "sub2/x.tif", "x.tif"]


def test_a_clash_is_refused_before_any_work(tmp_path, tissue, checkpoint):
    png(tmp_path / "in" / "x.png", tissue[:64, :64])
    png(tmp_path / "in" / "x.jpg", tissue[:64, :64])
    for extra in ([], ["--dry-run"], ["--shard", "1/2"]):
        one_error_line(
            dn("translate", tmp_path / "in", "-o", tmp_path / "out", "--model", checkpoint, *extra),
            "written twice",
            "x.jpg",
            "x.png",
        )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["{in}", "-o", "{dir}/o.tif", "--preview", "{in}"],
        ["{in}", "-o", "{in}", "--overwrite"],
        ["{dir}", "-o", "{dir}", "--overwrite"],  # in.png → in.tif, an input too; refused as the input folder
        ["{in}", "-o", "{dir}/o.tif", "--tissue-mask", "{in}", "--overwrite"],
    ],
)
def test_no_option_writes_over_an_input(tmp_path, image, checkpoint, tissue, args):
    png(tmp_path / "in.tif", tissue[:64, :64])
    before = files_in(tmp_path)
    args = [a.format(**{"in": image, "dir": tmp_path}) for a in args]
    line = one_error_line(dn("translate", *args, "--model", checkpoint))
    assert "input of this run" in line or "is the input folder" in line
    assert files_in(tmp_path) == before


def test_the_preview_may_not_be_the_output(tmp_path, image, checkpoint):
    one_error_line(
        dn("translate", image, "-o", tmp_path / "o.png", "--preview", tmp_path / "o.png", "--model", checkpoint),
        "written twice",
    )
    assert not (tmp_path / "o.png").exists()


def test_a_file_another_run_is_writing_is_left_to_it(tmp_path, image, checkpoint):
    out = tmp_path / "o.tif"
    other = Partial(out)  # a live run's locked temporary
    try:
        one_error_line(dn("translate", image, "-o", out, "--model", checkpoint), "another dn run")
        batch = dn("translate", image, "-o", tmp_path, "--model", checkpoint, "--json", "-q")  # → in.tif: free
        assert json.loads(batch.stdout)["status"] == "done"
        assert other.path.exists() and not out.exists()
    finally:
        other.discard()


def test_publishing_never_replaces_a_file_that_appeared_meanwhile(tmp_path):
    final = tmp_path / "o.tif"
    mine = Partial(final)
    mine.path.write_bytes(b"mine")
    final.write_bytes(b"theirs")  # another run finished first
    with pytest.raises(OutputError, match="appeared while dn was writing it"):
        mine.publish()
    assert final.read_bytes() == b"theirs" and partials(tmp_path) == []
    again = Partial(final)
    again.path.write_bytes(b"mine")
    again.publish(overwrite=True)
    assert final.read_bytes() == b"mine"


def test_partials_of_dead_runs_are_cleared_and_live_ones_kept(tmp_path, image, checkpoint):
    out = tmp_path / "o.tif"
    dead = tmp_path / ".o.tif.abcd1234.partial.tif"
    dead.write_bytes(b"left by kill -9")
    live = Partial(out)
    try:
        assert clear_stale_partials(out, started=dead.stat().st_mtime + 1) is True  # busy: live is locked
        assert not dead.exists() and live.path.exists()
    finally:
        live.discard()
    dead.write_bytes(b"left by kill -9")
    result = dn("translate", image, "-o", out, "--model", checkpoint, "-q")
    assert result.exit_code == 0 and out.exists()
    assert partials(tmp_path) == []


def test_a_slide_is_done_only_when_everything_asked_exists(tmp_path, image, checkpoint):
    out = tmp_path / "out" / "o.tif"
    (tmp_path / "afile").write_bytes(b"a file where a folder is asked")
    failed = dn("translate", image, "-o", out, "--preview", tmp_path / "afile" / "p.png", "--model", checkpoint)
    one_error_line(failed, "a file stands where its folder")
    assert files_in(tmp_path / "out") == {}  # nothing half made: no output without its preview

    assert dn("translate", image, "-o", out, "--model", checkpoint, "-q").exit_code == 0
    tiff = out.read_bytes()
    (tmp_path / "out" / "o.tif.json").unlink()  # lost, e.g. to a full disk
    again = dn("translate", image, "-o", out, "--preview", tmp_path / "p.png", "--model", checkpoint, "-q")
    assert again.exit_code == 0, again.output  # completes what is missing, translates nothing
    assert out.read_bytes() == tiff
    assert json.loads((tmp_path / "out" / "o.tif.json").read_text())["source"] == str(image.resolve())
    assert pyvips.Image.new_from_file(str(tmp_path / "p.png")).width > 0
    one_error_line(dn("translate", image, "-o", out, "--model", checkpoint), "exists", "--overwrite")


def test_an_existing_file_dn_did_not_write_is_never_taken_for_done(tmp_path, image, checkpoint):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "in.tif").write_bytes(b"precious")
    result = dn("translate", image, "-o", tmp_path / "out", "--model", checkpoint, "--json", "-q")
    assert result.exit_code == 1 and json.loads(result.stdout)["status"] == "failed"
    assert "did not write it" in result.stderr
    assert (tmp_path / "out" / "in.tif").read_bytes() == b"precious"


@pytest.mark.skipif(not Path("/dev/full").is_char_device(), reason="needs /dev/full")
def test_a_full_disk_is_named(tissue):
    with pytest.raises(OutputError, match="no space left on device"):
        write_sidecar(Path("/dev/full"), {"software": "dn"})
    sink = PyramidTiffSink(Path("/dev/full"), 512, 512)
    with pytest.raises(OutputError, match="no space left on device"):
        for row in range(0, 512, 64):
            sink.write(Box(0, row, 512, 64), tissue[row : row + 64])
        sink.close()
    assert Path("/dev/full").is_char_device()  # the sink leaves the file it was given alone


# 7–9. Wrong results with exit 0 -----------------------------------------------------------------


def test_nan_weights_are_refused_when_the_model_is_loaded(tmp_path, image, generator):
    broken = {k: v.clone() for k, v in generator.module.state_dict().items()}
    next(v for v in broken.values() if v.is_floating_point()).fill_(float("nan"))
    torch.save(broken, tmp_path / "nan.pth")
    one_error_line(dn("translate", image, "-o", tmp_path / "o.tif", "--model", tmp_path / "nan.pth"), "nan.pth", "NaN")
    one_error_line(dn("info", tmp_path / "nan.pth"), "NaN")
    assert not (tmp_path / "o.tif").exists()


def test_non_finite_outputs_are_an_error_naming_the_model(tissue):
    class Overflowing(nn.Module):
        def forward(self, x):
            return torch.log(x - 2)  # NaN for every input

    runner = TileRunner(Generator(Overflowing(), "x", {}, 1, name="overflow.pth"), CPU)
    with pytest.raises(ModelError, match="overflow.pth gives NaN"):
        runner.apply(np.ascontiguousarray(tissue[None, :64, :64]), None, 0, 64)


def test_all_tissue_can_never_be_erased(tmp_path, tissue, checkpoint):
    slide = slide_file(tmp_path / "s.tif", np.ascontiguousarray(tissue))
    result = dn("translate", slide, "-o", tmp_path / "o.tif", "--min-tissue", 1, "--model", checkpoint)
    assert result.exit_code == 2 and "--min-tissue" in result.stderr
    glass = slide_file(tmp_path / "glass.tif", np.full((512, 512, 3), 235, np.uint8))  # or tissue too faint to see
    faint = dn("translate", glass, "-o", tmp_path / "g.tif", "--model", checkpoint, "--tile-size", 128, "-q")
    assert faint.exit_code == 0 and "no tissue found" in faint.stderr
    assert json.loads((tmp_path / "g.tif.json").read_text())["tissue_tiles"] == 16


def test_a_pixel_size_finer_than_the_scan_is_refused_unless_asked(tmp_path, tissue, checkpoint):
    slide = slide_file(tmp_path / "s.tif", np.ascontiguousarray(tissue), mpp=0.5)
    out = tmp_path / "o.tif"
    one_error_line(dn("translate", slide, "-o", out, "--mpp", 0.25, "--model", checkpoint), "finer", "0.5 µm/px")
    assert not out.exists()
    asked = dn("translate", slide, "-o", out, "--mpp", 0.25, "--allow-upsampling", "--model", checkpoint, "-q")
    assert asked.exit_code == 0 and pyvips.Image.new_from_file(str(out)).width == 1024


# 10. Job arrays ---------------------------------------------------------------------------------


def test_shards_count_from_zero_like_job_arrays_and_an_empty_one_succeeds(tmp_path, tissue):
    for name in "abcd":
        png(tmp_path / "in" / f"{name}.png", tissue[:64, :64])
    seen = []
    for k in range(8):  # --array=0-7
        result = dn("translate", tmp_path / "in", "-o", tmp_path / "out", "--shard", f"{k}/8", "--dry-run", "--json")
        assert result.exit_code == 0, result.output
        seen += [json.loads(line)["input"] for line in result.stdout.splitlines()]
        if k >= 4:
            assert "is empty: nothing to do" in result.stderr
    assert sorted(Path(p).name for p in seen) == ["a.png", "b.png", "c.png", "d.png"]


# 11–13. Errors that are one clear line ----------------------------------------------------------


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--mpp", "nan"], "not a pixel size"),
        (["--mpp", "inf"], "not a pixel size"),
        (["--mpp-override", "nan"], "not a pixel size"),
        (["--mpp", "1000"], "--mpp 256 at most"),
    ],
)
def test_unusable_pixel_sizes(tmp_path, tissue, checkpoint, args, fragment):
    slide = slide_file(tmp_path / "s.tif", np.ascontiguousarray(tissue))
    one_error_line(dn("translate", slide, "-o", tmp_path / "o.tif", *args, "--model", checkpoint), fragment)


def test_unwritable_or_impossible_output_paths(tmp_path, image, checkpoint):
    (tmp_path / "afile").write_bytes(b"x")
    one_error_line(dn("translate", image, "-o", tmp_path / "afile" / "o.tif", "--model", checkpoint), "a file stands")
    one_error_line(dn("translate", image, image, "-o", tmp_path / "afile", "--model", checkpoint), "not a folder")
    assert partials(tmp_path) == [] and (tmp_path / "afile").read_bytes() == b"x"


def test_a_pickled_model_whose_class_lives_in_the_training_script(tmp_path, image):
    import subprocess
    import sys

    code = (
        "import torch\nfrom torch import nn\nclass Gen(nn.Module):\n    def forward(self, x): return x\n"
        f"torch.save(Gen(), {str(tmp_path / 'whole.pth')!r})\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    result = dn("translate", image, "-o", tmp_path / "o.tif", "--model", tmp_path / "whole.pth", "--trust-model-code")
    one_error_line(result, "cannot be imported", "state_dict()")


def test_messages_name_things_plainly(tmp_path, checkpoint):
    one_error_line(dn("info", tmp_path), "is a folder")
    (tmp_path / "notes.txt").write_text("hello")
    one_error_line(dn("translate", tmp_path / "notes.txt", "-o", tmp_path / "o.tif"), "not a slide or image format")
    (tmp_path / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    one_error_line(dn("translate", tmp_path / "cut.png", "-o", tmp_path / "o.tif"), "cannot read")


def test_a_truncated_image_fails_instead_of_reading_grey(tmp_path, image, checkpoint):
    cut = tmp_path / "cut.png"
    cut.write_bytes(image.read_bytes()[:3000])
    one_error_line(dn("translate", cut, "-o", tmp_path / "o.tif", "--model", checkpoint), "damaged")
    assert not (tmp_path / "o.tif").exists()


def test_a_one_channel_model_is_refused_when_loaded(tmp_path, image):
    from dn_cli.models.resnet import ResnetGenerator

    torch.save(ResnetGenerator(ngf=8, n_blocks=1, output_nc=1).state_dict(), tmp_path / "grey.pth")
    one_error_line(dn("translate", image, "-o", tmp_path / "o.tif", "--model", tmp_path / "grey.pth"), "1 channel;")
    one_error_line(dn("info", tmp_path / "grey.pth"), "1 channel;")


def test_counts_are_spelt_right(tmp_path, image, checkpoint):
    result = dn("translate", image, "nope.png", "-o", tmp_path / "out", "--model", checkpoint, "-q")
    assert "2 inputs: 1 translated" in result.stderr


# 14–19. Smaller surprises -----------------------------------------------------------------------


def test_stdin_with_a_file_output_and_a_jpeg_preview(tmp_path, image, checkpoint):
    out, preview = tmp_path / "x.tif", tmp_path / "x.jpg"
    result = dn("translate", "-", "-o", out, "--preview", preview, "--model", checkpoint, "-q", stdin=f"{image}\n")
    assert result.exit_code == 0, result.output
    assert out.is_file() and preview.is_file()
    assert pyvips.Image.new_from_file(str(preview)).get("vips-loader") == "jpegload"
    two = dn("translate", "-", "-o", tmp_path / "y.tif", stdin=f"{image}\n{image}\n")
    one_error_line(two, "names one file", "give a folder")


def test_a_symlink_loop_is_searched_once(tmp_path, tissue):
    png(tmp_path / "in" / "a.png", tissue[:64, :64])
    (tmp_path / "in" / "loop").symlink_to(tmp_path / "in")
    dry = dn("translate", tmp_path / "in", "-o", tmp_path / "out", "--recursive", "--dry-run", "--json")
    assert [Path(json.loads(line)["input"]).name for line in dry.stdout.splitlines()] == ["a.png"]


@pytest.mark.parametrize("args", [["--tile-size", "128"], ["--norm", "tin"], ["--mpp", "0.4", "--allow-upsampling"]])
def test_no_stray_warnings(tmp_path, checkpoint, args):
    slide = Path(__file__).resolve().parents[1] / "examples" / "sample_ihc.tif"  # tissue, glass, skipped tiles
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = dn("translate", slide, "-o", tmp_path / "o.tif", *args, "--model", checkpoint, "-q", "--debug")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""


def test_tifffile_reads_the_output_pixels(tmp_path, image, checkpoint):
    out = tmp_path / "o.tif"
    assert dn("translate", image, "-o", out, "--model", checkpoint, "-q").exit_code == 0
    with tifffile.TiffFile(out) as tif:
        pixels = tif.pages[0].asarray()  # JPEG tiles: needs imagecodecs
    reference = pyvips.Image.new_from_file(str(out)).numpy()
    np.testing.assert_array_equal(pixels, reference)


def test_reduced_precision_on_the_cpu_is_warned_about(tmp_path, image, checkpoint):
    result = dn("translate", image, "-o", tmp_path / "o.png", "--precision", "bf16", "--model", checkpoint, "-q")
    assert result.exit_code == 0 and "dn: warning: --precision bf16 on the CPU" in result.stderr


# 20–21. Batch isolation and atomic outputs, through real models that fail or watch -------------


class FailsOnBrightTiles(nn.Module):
    """A real generator that raises a non-dn error part-way through a bright image."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.norm = nn.InstanceNorm2d(3)

    def forward(self, x):
        if x.mean() > 0.5:
            raise RuntimeError("kernel failure")
        return torch.tanh(self.norm(self.conv(x)))


class WatchesTheOutput(FailsOnBrightTiles):
    """Records, at every forward, whether the final output name exists yet."""

    final: Path | None = None
    seen: list[bool] = []

    def forward(self, x):
        WatchesTheOutput.seen.append(self.final.exists())
        return super().forward(x)


def model_file(tmp_path: Path, module: nn.Module) -> Path:
    path = tmp_path / "model.pt"
    torch.save(module, path)
    return path


def test_a_slide_failing_part_way_fails_alone(tmp_path, tissue):
    dark = np.ascontiguousarray(tissue[:128, :128] // 3)
    bright = dark.copy()
    bright[64:] = 200 + np.random.default_rng(0).integers(0, 56, bright[64:].shape)  # its second row of tiles
    png(tmp_path / "in" / "a_dark.png", dark)  # breaks the model; noise makes it the biggest file, run first
    png(tmp_path / "in" / "b_bright.png", bright)
    png(tmp_path / "in" / "c_dark.png", dark)
    model = model_file(tmp_path, FailsOnBrightTiles())
    args = ["--model", model, "--trust-model-code", "--tile-size", 64, "--batch-size", 1, "--json", "-q"]
    result = dn("translate", tmp_path / "in", "-o", tmp_path / "out", *args)
    assert result.exit_code == 1
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(Path(r["input"]).name, r["status"]) for r in records] == [
        ("b_bright.png", "failed"),
        ("a_dark.png", "done"),
        ("c_dark.png", "done"),
    ]
    assert "b_bright.png: model.pt failed: RuntimeError: kernel failure (tiles from x 0, y 64 on)" in result.stderr
    assert sorted(files_in(tmp_path / "out")) == ["a_dark.tif", "a_dark.tif.json", "c_dark.tif", "c_dark.tif.json"]


def test_the_final_name_appears_only_when_complete_and_a_failed_overwrite_keeps_the_old(tmp_path, tissue):
    dark = np.ascontiguousarray(tissue[:128, :128] // 3)
    source = png(tmp_path / "in.png", dark)
    out = tmp_path / "o.tif"
    WatchesTheOutput.final, WatchesTheOutput.seen = out, []
    model = model_file(tmp_path, WatchesTheOutput())
    args = ["--model", model, "--trust-model-code", "--tile-size", 64, "--batch-size", 1, "-q"]
    assert dn("translate", source, "-o", out, *args).exit_code == 0
    assert len(WatchesTheOutput.seen) >= 4 and not any(WatchesTheOutput.seen)
    old = out.read_bytes()
    bright = dark.copy()
    bright[64:] = 250
    png(tmp_path / "in.png", bright)
    assert dn("translate", source, "-o", out, *args, "--overwrite").exit_code == 1
    assert out.read_bytes() == old and partials(tmp_path) == []


@pytest.mark.parametrize("stem", ["slide[1] (copy)", "a" * 240])
def test_awkward_and_long_names_get_temporaries_of_their_own(tmp_path, image, checkpoint, stem):
    out = tmp_path / f"{stem}.tif"
    assert dn("translate", image, "-o", out, "--model", checkpoint, "-q").exit_code == 0
    other = Partial(tmp_path / "slide1 (copy).tif")  # a live run on a name the glob pattern would match
    try:
        assert clear_stale_partials(out, started=0) is False
    finally:
        other.discard()
    assert out.is_file()


def test_running_out_of_memory_for_one_tile_names_the_tile_size(tissue):
    class Greedy(nn.Module):
        def forward(self, x):
            if x.shape[-1] < 64:  # runs when dn probes it at load
                return x
            return torch.empty(2**45, device=x.device)  # more than any machine has

    runner = TileRunner(Generator(Greedy(), "x", {}, 1, name="greedy.pth"), CPU)
    with pytest.raises(DeviceMemoryError, match="one tile of 64² pixels does not fit in cpu memory.*--tile-size"):
        runner.forward(np.ascontiguousarray(tissue[None, :64, :64]), None)


def test_a_folder_as_model(tmp_path, image):
    one_error_line(dn("translate", image, "-o", tmp_path / "o.tif", "--model", tmp_path), "is a folder")


def test_a_write_failing_for_lack_of_room_is_named_and_leaves_nothing(tmp_path):
    import resource
    import subprocess
    import sys

    sample = Path(__file__).resolve().parents[1] / "examples" / "sample_ihc.tif"
    done = subprocess.run(
        [sys.executable, "-m", "dn_cli", "translate", str(sample), "-o", str(tmp_path / "o.tif"), "--level", "1", "-q"],
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000)),  # like a disk filling up
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == ["dn: error: cannot write o.tif: file too large"]
    assert list(tmp_path.iterdir()) == []
