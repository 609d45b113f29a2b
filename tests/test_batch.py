"""Batches: folders of slides, failures one at a time, resuming, sharding, pipelines."""

import json

import numpy as np
import pytest
import pyvips
from click.testing import CliRunner

from dn_cli.app.batch import expand_inputs, parse_shard, plan_jobs, shard
from dn_cli.cli import cli
from dn_cli.errors import DnError


@pytest.fixture
def folder(tmp_path, tissue):
    """Two good slides (tiled pyramidal TIFF at 0.5 µm/px) and one corrupt file in between, by name
    and by size (a batch runs the biggest first)."""
    slides = tmp_path / "slides"
    slides.mkdir()
    for name, crop in (("a_good.tif", tissue[:384, :384]), ("c_good.tif", tissue[256:, 256:])):
        pyvips.Image.new_from_array(np.ascontiguousarray(crop), interpretation="srgb").tiffsave(
            str(slides / name), tile=True, pyramid=True, xres=2000, yres=2000, resunit="cm"
        )
    middle = (slides / "a_good.tif").stat().st_size + (slides / "c_good.tif").stat().st_size
    (slides / "b_corrupt.svs").write_bytes(b"II*\x00" + b"\x00" * (middle // 2))
    return slides


def run(*args, stdin=None):
    return CliRunner().invoke(cli, ["translate", *map(str, args), "--tile-size", "128", "-q"], input=stdin)


def test_a_corrupt_slide_fails_alone_and_a_rerun_resumes(tmp_path, folder, checkpoint):
    out = tmp_path / "out"
    first = run(folder, "-o", out, "--model", checkpoint)
    assert first.exit_code == 1
    assert sorted(p.name for p in out.iterdir()) == ["a_good.tif", "a_good.tif.json", "c_good.tif", "c_good.tif.json"]
    errors = [line for line in first.stderr.splitlines() if line.startswith("dn: error:")]
    assert len(errors) == 1 and "b_corrupt.svs" in errors[0]
    assert "3 inputs: 2 translated, 0 skipped, 1 failed (b_corrupt.svs)" in first.stderr
    assert "Traceback" not in first.output

    again = run(folder, "-o", out, "--model", checkpoint, "--json")
    records = [json.loads(line) for line in again.stdout.splitlines()]
    assert [r["status"] for r in records] == ["skipped", "failed", "skipped"]
    assert again.exit_code == 1


def test_fail_fast_stops_at_the_first_failure(tmp_path, folder, checkpoint):
    result = run(folder, "-o", tmp_path / "out", "--model", checkpoint, "--fail-fast", "--json")
    assert result.exit_code == 1
    assert [json.loads(line)["status"] for line in result.stdout.splitlines()] == ["done", "failed", "not attempted"]
    assert not (tmp_path / "out" / "c_good.tif").exists()
    assert "3 inputs: 1 translated, 0 skipped, 1 failed, 1 not attempted (--fail-fast) (b_corrupt.svs)" in result.stderr


def test_json_lines_describe_each_slide(tmp_path, folder, checkpoint):
    (folder / "b_corrupt.svs").unlink()
    result = run(folder, "-o", tmp_path / "out", "--model", checkpoint, "--json")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["status"], r["width"], r["mpp"]) for r in records] == [("done", 384, 0.5), ("done", 256, 0.5)]
    assert records[0]["output"] == str(tmp_path / "out" / "a_good.tif")


def test_paths_from_stdin_and_dry_run(tmp_path, folder, checkpoint):
    listing = f"{folder / 'c_good.tif'}\n{folder / 'a_good.tif'}\n"
    dry = run("-", "-o", tmp_path / "out", "--dry-run", "--json", stdin=listing)
    assert dry.exit_code == 0
    assert [json.loads(line)["input"] for line in dry.stdout.splitlines()] == [
        str(folder / "a_good.tif"),
        str(folder / "c_good.tif"),
    ]
    assert not (tmp_path / "out").exists()
    done = run("-", "-o", tmp_path / "out", "--model", checkpoint, stdin=listing)
    assert done.exit_code == 0 and (tmp_path / "out" / "c_good.tif").exists()


def test_shards_are_disjoint_and_cover_the_inputs(tmp_path, folder):
    seen = []
    for k in (0, 1):  # job array indices: --array=0-1
        result = run(folder, "-o", tmp_path / "out", "--shard", f"{k}/2", "--dry-run", "--json")
        seen += [json.loads(line)["input"] for line in result.stdout.splitlines()]
    assert sorted(seen) == sorted(str(p) for p in folder.iterdir())
    assert shard(list(range(7)), 2, 3) == [2, 5]
    assert parse_shard("0/8") == (0, 8) and parse_shard("7/8") == (7, 8)
    for bad in ("8/8", "-1/2", "0/0", "two"):
        with pytest.raises(DnError, match="--shard"):
            parse_shard(bad)


def test_folder_expansion_keeps_mrxs_data_and_dicom_series_whole(tmp_path):
    for name in (
        "x.mrxs",
        "x/Data0000.dat",
        "x/Slidedat.ini",
        "sub/y.svs",
        "series/1.dcm",
        "series/2.dcm",
        "notes.txt",
        ".hidden.tif",
    ):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()
    flat = expand_inputs([tmp_path])
    assert [p.relative_to(tmp_path).as_posix() for p, _, _ in flat] == ["x.mrxs"]
    deep = expand_inputs([tmp_path], recursive=True)
    assert [p.relative_to(tmp_path).as_posix() for p, _, _ in deep] == ["series/1.dcm", "sub/y.svs", "x.mrxs"]
    jobs = plan_jobs(deep, tmp_path / "out", one_file=False)
    assert [j.output.relative_to(tmp_path / "out").as_posix() for j in jobs] == ["series/1.tif", "sub/y.tif", "x.tif"]


def test_dry_run_decides_as_the_run_does(tmp_path, folder, checkpoint):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_good.tif").write_bytes(b"not dn's")  # an output dn did not write: the run fails on it
    (out / "c_good_preview.png").write_bytes(b"")  # a picture in the way, without --overwrite
    args = [folder / "a_good.tif", folder / "c_good.tif", "-o", out, "--preview", out, "--model", checkpoint]
    actions = [json.loads(line)["action"] for line in run(*args, "--dry-run", "--json").stdout.splitlines()]
    assert actions[0].startswith("fail (") and "dn did not write it" in actions[0]
    assert actions[1].startswith("fail (") and "c_good_preview.png exists" in actions[1]
    real = [json.loads(line)["status"] for line in run(*args, "--json").stdout.splitlines()]
    assert real == ["failed", "failed"]
