"""Abuse `dn` the way a new user (or a hostile afternoon) would, and write the table of what happened.

    python scripts/reliability.py --out docs/reliability.md

Every case runs `dn` as a real process in a fresh folder holding a real tissue photograph
(``in.png``, 300 × 200), a tiled pyramidal slide (``slide.tif``, 512² at 0.5 µm/px) and a small
generator (``model.pth``), plus whatever the case adds. After each run the folder is compared
with what it held before. A case passes when: it ends within the time limit; an error is one
line on stderr, names no "unexpected" error and shows no traceback; nothing was left half
written (no ``.partial`` file); no file that existed before changed unless the case asked for
``--overwrite`` of exactly that file; and the exit status and the files made are what the case
expects. The table lists every case with its command, exit status, message and the files
made or changed; the script exits 1 if any case failed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyvips
import skimage.data
import tifffile
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from dn_cli.app import claims  # noqa: E402
from dn_cli.models.resnet import ResnetGenerator  # noqa: E402
from dn_cli.native_paths import printable  # noqa: E402

TIMEOUT = 180


def save(pixels: np.ndarray, path: Path, **options) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pyvips.Image.new_from_array(np.ascontiguousarray(pixels), interpretation="srgb").write_to_file(str(path), **options)


def slide(path: Path, pixels: np.ndarray, mpp: float = 0.5) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pyvips.Image.new_from_array(np.ascontiguousarray(pixels), interpretation="srgb").tiffsave(
        str(path), tile=True, pyramid=True, compression="jpeg", xres=1000 / mpp, yres=1000 / mpp, resunit="cm"
    )


def generator(**params) -> ResnetGenerator:
    torch.manual_seed(0)
    return ResnetGenerator(**{"ngf": 8, "n_blocks": 2, **params}).eval()


def tissue() -> np.ndarray:
    return skimage.data.immunohistochemistry()


def base(folder: Path) -> None:
    save(tissue()[:200, :300], folder / "in.png")
    slide(folder / "slide.tif", tissue())
    torch.save(generator().state_dict(), folder / "model.pth")


# Extra set-ups a case can ask for: each takes the case's folder.
def small(name: str, width: int, height: int | None = None):
    """A crop of the tissue photograph; tall ones are the photograph stacked."""
    stacked = np.concatenate([tissue()] * 10)
    return lambda d: save(stacked[: height or width, :width], d / name)


def nan_model(d: Path) -> None:
    net = generator()
    with torch.no_grad():
        next(net.parameters()).fill_(float("nan"))
    torch.save(net.state_dict(), d / "nan.pth")


def one_channel_model(d: Path) -> None:
    torch.save(generator(output_nc=1).state_dict(), d / "grey.pth")


def main_pickle(d: Path) -> None:
    code = (
        "import torch\nfrom torch import nn\n"
        "class Gen(nn.Module):\n    def __init__(s):\n        super().__init__(); s.c = nn.Conv2d(3, 3, 3, padding=1)\n"
        "    def forward(s, x): return s.c(x)\n"
        f"torch.save(Gen(), {str(d / 'whole.pth')!r})\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def collisions(d: Path) -> None:
    save(tissue()[:128, :128], d / "c" / "sub1" / "x.tif")
    save(tissue()[128:256, :128], d / "c" / "sub2" / "x.png")
    save(tissue()[256:384, :128], d / "c" / "x.jpg")


def same_stem(d: Path) -> None:
    save(tissue()[:128, :128], d / "s" / "x.png")
    save(tissue()[128:256, :128], d / "s" / "x.jpg")


def folder_of_slides(d: Path) -> None:
    for name in ("a", "b", "c", "d"):
        save(tissue()[:128, :128], d / "f" / f"{name}.png")


def self_output(d: Path) -> None:
    save(tissue()[:128, :128], d / "same" / "a.png")
    save(tissue()[:128, :128], d / "same" / "a.tif")


def symlink_loop(d: Path) -> None:
    save(tissue()[:128, :128], d / "loop" / "a.png")
    (d / "loop" / "again").symlink_to(d / "loop")


def corrupt_slide(d: Path) -> None:
    (d / "bad.svs").write_bytes(b"II*\x00" + b"\x00" * 100)


def big_corrupt_slide(d: Path) -> None:
    (d / "bad.svs").write_bytes(b"II*\x00" + b"\x00" * (1 << 21))


def truncated_model(d: Path) -> None:
    (d / "cut.pth").write_bytes((d / "model.pth").read_bytes()[:500])


def text_file(d: Path) -> None:
    (d / "notes.txt").write_text("not an image\n")


def truncated_png(d: Path) -> None:
    (d / "cut.png").write_bytes((d / "in.png").read_bytes()[:2000])


def stripped_tiff(d: Path) -> None:
    tifffile.imwrite(d / "strips.tif", tissue(), photometric="rgb", compression="zlib", rowsperstrip=16, bigtiff=True)


def truncated_tiff(d: Path) -> None:
    stripped_tiff(d)
    data = (d / "strips.tif").read_bytes()
    (d / "cut.tif").write_bytes(data[: len(data) * 2 // 3])


def alpha_png(d: Path) -> None:
    rgba = np.dstack([tissue()[:100, :100], np.full((100, 100), 128, np.uint8)])
    pyvips.Image.new_from_array(rgba, interpretation="srgb").write_to_file(str(d / "alpha.png"))


def grey_png(d: Path) -> None:
    pyvips.Image.new_from_array(tissue()[:100, :100, 0].copy(), interpretation="b-w").write_to_file(str(d / "grey.png"))


def png16(d: Path) -> None:
    image = pyvips.Image.new_from_array(tissue()[:100, :100].astype(np.uint16) * 257, interpretation="rgb16")
    image.write_to_file(str(d / "deep.png"))


def empty_file(name: str):
    return lambda d: (d / name).write_bytes(b"")


def existing_output(d: Path) -> None:
    (d / "out.tif").write_bytes(b"precious")


def a_file(d: Path) -> None:
    (d / "afile").write_bytes(b"a file, not a folder")


def stale_partial(d: Path) -> None:
    stale = d / ".out.tif.abcd1234.partial.tif"
    stale.write_bytes(b"left by kill -9")
    old = time.time() - 3600
    os.utime(stale, (old, old))


def done_without_preview(d: Path) -> None:
    subprocess.run(dn("translate", "in.png", "-o", "out.tif", "--model", "model.pth", "-q"), cwd=d, check=True)


def done_without_sidecar(d: Path) -> None:
    done_without_preview(d)
    (d / "out.tif.json").unlink()


# Set-ups of the second trial (issue 16).
LATIN1 = os.fsdecode(b"caf\xe9")  # a name that is not UTF-8, as Windows shares keep them


def foreign_record(d: Path) -> None:
    (d / "o.tif.json").write_text('{"notes": 1}\n')


def dangling_link(d: Path) -> None:
    (d / "o.tif").symlink_to(Path("nowhere") / "o.tif")  # relative: the message names no machine path


def zip_bomb(d: Path) -> None:
    with zipfile.ZipFile(d / "model.pth") as real, zipfile.ZipFile(d / "bomb.pt", "w", zipfile.ZIP_DEFLATED) as out:
        for entry in real.infolist():
            if entry.filename.endswith("/data/0"):
                with out.open(entry.filename, "w", force_zip64=True) as big:
                    for _ in range(512):
                        big.write(bytes(1 << 20))
            else:
                out.writestr(entry.filename, real.read(entry))


def latin1_name(d: Path) -> None:
    save(tissue()[:64, :64], d / "utf8.png")
    (d / "utf8.png").rename(d / f"{LATIN1}.png")


def pyramid_cut(d: Path) -> None:
    data = (d / "slide.tif").read_bytes()
    (d / "cut.tif").write_bytes(data[: len(data) * 9 // 10])


def rotated_photo(d: Path) -> None:
    image = pyvips.Image.new_from_array(np.ascontiguousarray(tissue()[:96, :160]), interpretation="srgb").copy()
    image.set_type(pyvips.GValue.gint_type, "orientation", 6)
    image.jpegsave(str(d / "photo.jpg"))


def code_pickle(d: Path) -> None:
    (d / "evil.pth").write_bytes(pickle.dumps({"weights": RunsACommand()}, protocol=4))


class RunsACommand:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def made_with_model(d: Path) -> None:
    subprocess.run(dn("translate", "in.png", "-o", "out", "--model", "model.pth", "-q"), cwd=d, check=True)


def stack(d: Path) -> None:
    tifffile.imwrite(d / "stack.tif", np.stack([tissue()[:64, :64]] * 3), photometric="rgb")


# Third trial (issue 24): claims another run left, or that are no claims.
def claim_file(age: float = 0, content: bytes | None = None, **holder):
    """``out/.in.tif.claim`` as another run left it, its heartbeat ``age`` seconds old (negative:
    dated in the future)."""

    def make(d: Path) -> None:
        path = claims.claim_path(d / "out" / "in.tif")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if content is not None else json.dumps({"token": "theirs", **holder}).encode())
        os.utime(path, (time.time() - age,) * 2)

    return make


def dead_pid() -> int:
    ended = subprocess.Popen(["true"])
    ended.wait()
    return ended.pid


def other_namespace_claim(d: Path) -> None:
    """A live run in another container on this host: its pid is no process of this namespace."""
    here = {"host": claims.HOST, "boot": claims.BOOT, "pid_namespace": "pid:[4026531000]", "pid": dead_pid()}
    claim_file(**here)(d)


def claim_not_a_file(kind: str):
    def make(d: Path) -> None:
        path = claims.claim_path(d / "out" / "in.tif")
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(path) if kind == "fifo" else path.mkdir()

    return make


def immutable_stale_claim(d: Path) -> None:
    claim_file(age=claims.STALE_AFTER + 1, host="node-7", pid=4711)(d)
    subprocess.run(["chattr", "+i", str(claims.claim_path(d / "out" / "in.tif"))], check=True)


def mutable_again(d: Path) -> None:
    subprocess.run(["chattr", "-i", str(claims.claim_path(d / "out" / "in.tif"))], check=False)


def full_disk(d: Path) -> None:
    """``disk/``: a 2 MB file system (tmpfs, as root) with every block taken."""
    (d / "disk").mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(d / "disk")], check=True)
    (d / "disk" / "out").mkdir()
    fill_up(d / "disk" / "filler")


def fill_up(path: Path) -> None:
    """Write ``path`` until its file system has no block left: files can then be made, not filled."""
    with open(path, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


def unmount(d: Path) -> None:
    subprocess.run(["umount", "-l", str(d / "disk")], check=False)


def published_meanwhile(*args: str):
    """``out/in.tif`` made by ``dn translate in.png -o out ARGS``, dated as if published by a run
    that started after this one."""

    def make(d: Path) -> None:
        subprocess.run(dn("translate", "in.png", "-o", "out", "-q", *args), cwd=d, check=True)
        later = time.time() + 60
        os.utime(d / "out" / "in.tif", (later, later))

    return make


@dataclass
class Case:
    name: str
    args: list[str]
    ok: bool  # exit 0 expected
    setup: list = field(default_factory=list)
    makes: list[str] = field(default_factory=list)  # files that must exist afterwards
    may_change: list[str] = field(default_factory=list)  # existing files it may replace (--overwrite)
    stdin: str | None = None
    signal_after: str | None = None  # send SIGINT / SIGTERM / SIGKILL once this file pattern appears
    signal: int = signal.SIGINT
    fragment: str = ""  # the message must contain it
    stdout_lines: int | None = None  # how many lines stdout must have (--json, --dry-run)
    cleanup: list = field(default_factory=list)  # undo what a setup did outside the folder's files


M = ["--model", "model.pth", "-q"]
CASES = [
    # Hangs
    Case("8 × 8 PNG to a pyramidal TIFF", ["in8.png", "-o", "o.tif", *M], True, [small("in8.png", 8)], ["o.tif"]),
    Case("16 × 16 PNG to a pyramidal TIFF", ["in16.png", "-o", "o.tif", *M], True, [small("in16.png", 16)], ["o.tif"]),
    Case("36 × 36 PNG to a pyramidal TIFF", ["in36.png", "-o", "o.tif", *M], True, [small("in36.png", 36)], ["o.tif"]),
    Case("slide at --mpp 32 (8 × 8 px)", ["slide.tif", "-o", "o.tif", "--mpp", "32", *M], True, [], ["o.tif"]),
    Case("slide at --mpp 100 (2 × 2 px)", ["slide.tif", "-o", "o.tif", "--mpp", "100", *M], True, [], ["o.tif"]),
    # Slides lost or destroyed
    Case(
        "same name in subfolders, --recursive",
        ["c", "-o", "out", "--recursive", *M],
        True,
        [collisions],
        ["out/sub1/x.tif", "out/sub2/x.tif", "out/x.tif"],
    ),
    Case("x.png and x.jpg in one folder", ["s", "-o", "out", *M], False, [same_stem], fragment="written twice"),
    Case("--preview is the input", ["in.png", "-o", "o.tif", "--preview", "in.png", *M], False, fragment="input"),
    Case(
        "-o the input folder, --overwrite",
        ["same", "-o", "same", "--overwrite", *M],
        False,
        [self_output],
        fragment="is the input folder",
    ),
    Case("-o is the input, --overwrite", ["in.png", "-o", "in.png", "--overwrite", *M], False, fragment="input"),
    Case("--preview is -o", ["in.png", "-o", "o.png", "--preview", "o.png", *M], False, fragment="twice"),
    Case("output exists (one file)", ["in.png", "-o", "out.tif", *M], False, [existing_output], fragment="--overwrite"),
    Case(
        "output exists, not dn's (batch)",
        ["in.png", "slide.tif", "-o", "out", *M],
        False,
        [lambda d: (d / "out").mkdir(), lambda d: (d / "out" / "in.tif").write_bytes(b"precious")],
        ["out/slide.tif", "out/slide.tif.json"],
        fragment="did not write it",
    ),
    Case(
        "rerun adds a preview asked for later",
        ["in.png", "-o", "out.tif", "--preview", "p.png", *M],
        True,
        [done_without_preview],
        ["p.png"],
    ),
    Case(
        "rerun restores a lost provenance record",
        ["in.png", "-o", "out.tif", *M],
        True,
        [done_without_sidecar],
        ["out.tif.json"],
    ),
    Case("stale partial of a killed run", ["in.png", "-o", "out.tif", *M], True, [stale_partial], ["out.tif"]),
    Case(
        "preview folder cannot be made",
        ["in.png", "-o", "o.tif", "--preview", "afile/p/", *M],
        False,
        [a_file],
        fragment="a file stands where its folder",
    ),
    # Wrong results
    Case("model with NaN weights", ["in.png", "-o", "o.tif", "--model", "nan.pth"], False, [nan_model], fragment="NaN"),
    Case("--min-tissue 1", ["slide.tif", "-o", "o.tif", "--min-tissue", "1", *M], False, fragment="min-tissue"),
    Case("--mpp finer than the scan", ["slide.tif", "-o", "o.tif", "--mpp", "0.25", *M], False, fragment="finer"),
    Case(
        "--mpp finer, --allow-upsampling",
        ["slide.tif", "-o", "o.tif", "--mpp", "0.25", "--allow-upsampling", *M],
        True,
        [],
        ["o.tif"],
    ),
    # Job arrays
    Case("--shard 0/8", ["f", "-o", "out", "--shard", "0/8", *M], True, [folder_of_slides], ["out/a.tif"]),
    Case("--shard 5/8 of 4 inputs (empty)", ["f", "-o", "out", "--shard", "5/8", *M], True, [folder_of_slides]),
    Case("--shard 8/8", ["f", "-o", "out", "--shard", "8/8", *M], False, [folder_of_slides], fragment="from 0"),
    Case("--shard two", ["f", "-o", "out", "--shard", "two", *M], False, [folder_of_slides], fragment="K/N"),
    # Errors that must be one clear line
    Case("1 × 1 image", ["in1.png", "-o", "o.png", *M], True, [small("in1.png", 1)], ["o.png"]),
    Case("2 × 2 image", ["in2.png", "-o", "o.png", *M], True, [small("in2.png", 2)], ["o.png"]),
    Case("10 × 5000 image", ["in10.png", "-o", "o.tif", *M], True, [small("in10.png", 10, 5000)], ["o.tif"]),
    Case("--tile-size 100000", ["in.png", "-o", "o.tif", "--tile-size", "100000", *M], False, fragment="tile-size"),
    Case(
        "--tile-size 8192 on a small image", ["in.png", "-o", "o.tif", "--tile-size", "8192", *M], True, [], ["o.tif"]
    ),
    Case("--mpp nan", ["slide.tif", "-o", "o.tif", "--mpp", "nan", *M], False, fragment="pixel size"),
    Case("--mpp inf", ["slide.tif", "-o", "o.tif", "--mpp", "inf", *M], False, fragment="pixel size"),
    Case("--mpp 1000", ["slide.tif", "-o", "o.tif", "--mpp", "1000", *M], False, fragment="--mpp 256"),
    Case("--mpp-override -1", ["slide.tif", "-o", "o.tif", "--mpp-override", "-1", *M], False),
    Case(
        "output folder cannot be made", ["in.png", "-o", "afile/o.tif", *M], False, [a_file], fragment="a file stands"
    ),
    Case("output folder not writable (/sys)", ["in.png", "-o", "/sys/o.tif", *M], False, fragment="cannot write in"),
    Case("-o an existing file without extension", ["in.png", "slide.tif", "-o", "afile", *M], False, [a_file]),
    Case(
        "whole-model pickle from __main__",
        ["in.png", "-o", "o.tif", "--model", "whole.pth", "--trust-model-code"],
        False,
        [main_pickle],
        fragment="state_dict",
    ),
    Case("dn info on a folder", ["@info", "."], False, fragment="folder"),
    Case(
        "1-channel model", ["in.png", "-o", "o.tif", "--model", "grey.pth"], False, [one_channel_model], fragment="1 ch"
    ),
    Case("dn info on a 1-channel model", ["@info", "grey.pth"], False, [one_channel_model], fragment="1 channel"),
    # Smaller surprises
    Case("- with -o x.tif, one path", ["-", "-o", "x.tif", *M], True, [], ["x.tif"], stdin="in.png\n"),
    Case("- with -o x.tif, two paths", ["-", "-o", "x.tif", *M], False, stdin="in.png\nslide.tif\n", fragment="folder"),
    Case("--preview x.jpg", ["in.png", "-o", "o.tif", "--preview", "x.jpg", *M], True, [], ["x.jpg"]),
    Case(
        "symlink loop, --recursive",
        ["loop", "-o", "out", "--recursive", "--json", *M],
        True,
        [symlink_loop],
        ["out/a.tif"],
        stdout_lines=1,
    ),
    Case("--precision fp16 on the CPU", ["in.png", "-o", "o.png", "--precision", "fp16", *M], True, [], ["o.png"]),
    # Plain bad input
    Case("missing input", ["nope.png", "-o", "o.tif", *M], False, fragment="not found"),
    Case("corrupt slide", ["bad.svs", "-o", "o.tif", *M], False, [corrupt_slide]),
    Case("text file as input", ["notes.txt", "-o", "o.tif", *M], False, [text_file], fragment="cannot read"),
    Case("truncated PNG", ["cut.png", "-o", "o.tif", *M], False, [truncated_png]),
    Case("empty PNG", ["empty.png", "-o", "o.tif", *M], False, [empty_file("empty.png")]),
    Case("stripped BigTIFF", ["strips.tif", "-o", "o.tif", *M], True, [stripped_tiff], ["o.tif"]),
    Case("truncated stripped TIFF", ["cut.tif", "-o", "o.tif", *M], False, [truncated_tiff], fragment="damaged"),
    Case("--level 9 on a stripped TIFF", ["strips.tif", "-o", "o.tif", "--level", "9", *M], False, [stripped_tiff]),
    Case("PNG with alpha", ["alpha.png", "-o", "o.tif", *M], True, [alpha_png], ["o.tif"]),
    Case("greyscale PNG", ["grey.png", "-o", "o.tif", *M], True, [grey_png], ["o.tif"]),
    Case("16-bit PNG", ["deep.png", "-o", "o.tif", *M], True, [png16], ["o.tif"]),
    Case("missing model", ["in.png", "-o", "o.tif", "--model", "nope.pth"], False, fragment="not found"),
    Case("truncated model", ["in.png", "-o", "o.tif", "--model", "cut.pth"], False, [truncated_model]),
    Case("empty model file", ["in.png", "-o", "o.tif", "--model", "e.pth"], False, [empty_file("e.pth")]),
    Case("image as model", ["in.png", "-o", "o.tif", "--model", "in.png"], False),
    Case("bad tile size", ["in.png", "-o", "o.tif", "--tile-size", "61", *M], False, fragment="--tile-size"),
    Case("margin too large", ["in.png", "-o", "o.tif", "--tile-size", "64", "--margin", "40", *M], False),
    Case("--device cuda:7", ["in.png", "-o", "o.tif", "--device", "cuda:7", *M], False),
    Case("--device tpu", ["in.png", "-o", "o.tif", "--device", "tpu", *M], False),
    Case("--norm bn", ["in.png", "-o", "o.tif", "--norm", "bn", *M], False),
    Case("-o o.bmp", ["in.png", "-o", "o.bmp", *M], False, fragment=".bmp"),
    Case("--level on a PNG", ["in.png", "-o", "o.tif", "--level", "1", *M], False),
    Case("--level 9 on a slide", ["slide.tif", "-o", "o.tif", "--level", "9", *M], False, fragment="levels"),
    Case("--level and --mpp", ["slide.tif", "-o", "o.tif", "--level", "1", "--mpp", "1", *M], False),
    Case("--batch-size 0", ["in.png", "-o", "o.tif", "--batch-size", "0", *M], False),
    Case("--quality 0", ["in.png", "-o", "o.tif", "--quality", "0", *M], False),
    Case(
        "--tissue-mask with --no-tissue",
        ["slide.tif", "-o", "o.tif", "--tissue-mask", "m.png", "--no-tissue", *M],
        False,
    ),
    Case("empty stdin", ["-", "-o", "out", *M], False, stdin="", fragment="no inputs"),
    Case("folder without slides", ["empty", "-o", "out", *M], False, [lambda d: (d / "empty").mkdir()]),
    Case("a corrupt slide in a batch", ["in.png", "bad.svs", "-o", "out", *M], False, [corrupt_slide], ["out/in.tif"]),
    # Interruptions
    Case(
        "Ctrl-C while translating",
        ["slide.tif", "-o", "o.tif", "--tile-size", "64", *M],
        False,
        signal_after=".o.tif.*",
        signal=signal.SIGINT,
    ),
    Case(
        "kill (SIGTERM) while translating",
        ["slide.tif", "-o", "o.tif", "--tile-size", "64", *M],
        False,
        signal_after=".o.tif.*",
        signal=signal.SIGTERM,
    ),
    Case(
        "failed --overwrite keeps the old output",
        ["bad.svs", "-o", "out.tif", "--overwrite", *M],
        False,
        [existing_output, corrupt_slide],
    ),
    # Second trial (issue 16): a user's file replaced
    Case("a record dn did not write", ["in.png", "-o", "o.tif", *M], False, [foreign_record], fragment="o.tif.json"),
    # Wrong results with exit 0
    Case(
        "--mpp-override on a slide that records 0.5",
        ["slide.tif", "-o", "o.tif", "--mpp-override", "0.25", *M],
        True,
        [],
        ["o.tif"],
    ),
    Case("empty input (an unset variable)", ["", "-o", "out", *M], False, fragment="is empty"),
    Case("empty -o", ["in.png", "-o", "", *M], False, fragment="is empty"),
    Case(
        "--compression webp (warned)",
        ["in.png", "-o", "o.tif", "--compression", "webp", *M],
        True,
        [],
        ["o.tif"],
        fragment="OpenSlide",
    ),
    Case(
        "--mpp 0.001 --allow-upsampling",
        ["slide.tif", "-o", "o.tif", "--mpp", "0.001", "--allow-upsampling", *M],
        False,
        fragment="4× at most",
    ),
    Case(
        "--mpp 1e-300 --allow-upsampling",
        ["slide.tif", "-o", "o.tif", "--mpp", "1e-300", "--allow-upsampling", *M],
        False,
        fragment="to 2.6e+302 × 2.6e+302 pixels",
    ),
    # Resources
    Case(
        "zip-bomb model (512 MB in 0.5 MB)",
        ["in.png", "-o", "o.tif", "--model", "bomb.pt"],
        False,
        [zip_bomb],
        fragment="refused before unpacking",
    ),
    # Unclear errors and lost work
    Case(
        "a name that is not UTF-8",
        [f"{LATIN1}.png", "-o", "out", *M],
        True,
        [latin1_name],
        [f"out/{LATIN1}.tif", f"out/{LATIN1}.tif.json"],
    ),
    Case("-o of 254 bytes (its record: 259)", ["in.png", "-o", "a" * 250 + ".tif", *M], False, fragment="259 bytes"),
    Case("-o a dangling symlink", ["in.png", "-o", "o.tif", *M], False, [dangling_link], fragment="does not exist"),
    Case(
        "a 70000-px-wide .jpg",
        ["wide.png", "-o", "o.jpg", "--tile-size", "64", *M],
        False,
        [lambda d: save(np.full((8, 70000, 3), 220, np.uint8), d / "wide.png")],
        fragment="o.jpg would be 70000",
    ),
    Case(
        "6000 × 4 with --preview and --tissue-mask",
        ["thin.png", "-o", "o.tif", "--preview", "p.png", "--tissue-mask", "m.png", *M],
        True,
        [small("thin.png", 6000, 4)],
        ["o.tif", "p.png", "m.png"],
    ),
    Case("a pyramid TIFF cut at 90 %", ["cut.tif", "-o", "o.tif", *M], False, [pyramid_cut], fragment="damaged"),
    Case("dn info on a pyramid TIFF cut at 90 %", ["@info", "cut.tif"], False, [pyramid_cut], fragment="damaged"),
    Case(
        "-0: NUL-separated paths on stdin",
        ["-", "-0", "-o", "out", *M],
        True,
        [],
        ["out/in.tif", "out/slide.tif"],
        stdin="in.png\0slide.tif\0",
    ),
    Case("/dev/stdin as input", ["/dev/stdin", "-o", "o.tif", *M], False, stdin="not an image", fragment="pipe"),
    # Smaller
    Case(
        "--preview is -o (roles named)",
        ["in.png", "-o", "o.png", "--preview", "o.png", *M],
        False,
        fragment="as the output of",
    ),
    Case("a photo with EXIF orientation 6", ["photo.jpg", "-o", "o.png", *M], True, [rotated_photo], ["o.png"]),
    Case(
        "--preview p.webp",
        ["in.png", "-o", "o.tif", "--preview", "p.webp", *M],
        False,
        fragment="pictures are .png or .jpg",
    ),
    Case("-o ts.tif/ (a folder)", ["in.png", "-o", "ts.tif/", *M], True, [], ["ts.tif/in.tif"]),
    Case(
        "--format ome-tiff for a .png (warned)",
        ["in.png", "-o", "o.png", "--format", "ome-tiff", *M],
        True,
        [],
        ["o.png"],
        fragment="ignored",
    ),
    Case(
        "a pickle that runs code",
        ["in.png", "-o", "o.tif", "--model", "evil.pth"],
        False,
        [code_pickle],
        fragment="would run code",
    ),
    Case(
        "--fail-fast: a line for every input",
        ["bad.svs", "in.png", "slide.tif", "-o", "out", "--fail-fast", "--json", *M],
        False,
        [big_corrupt_slide],  # the biggest: a batch goes biggest first
        stdout_lines=3,
        fragment="2 not attempted",
    ),
    Case(
        "rerun with another model (warned)",
        ["in.png", "-o", "out", "-q"],
        True,
        [made_with_model],
        fragment="made with another model",
    ),
    Case(
        "a 3-page stack, not a pyramid (warned)",
        ["stack.tif", "-o", "o.tif", *M],
        True,
        [stack],
        ["o.tif"],
        fragment="only the first is translated",
    ),
    # Third trial (issue 24): slides never made, claims that trap a folder
    Case(
        "a live claim from another pid namespace",
        ["in.png", "-o", "out", "--json", *M],
        True,
        [other_namespace_claim],
        fragment="",
        stdout_lines=1,
    ),
    Case(
        "a full disk (claim cannot be written)",
        ["in.png", "-o", "disk/out", *M],
        False,
        [full_disk],
        fragment="cannot claim a slide in disk/out: no space left on device",
        cleanup=[unmount],
    ),
    Case(
        "another run published it meanwhile, with another model",
        ["in.png", "-o", "out", "--model", "model.pth", "-q"],
        True,
        [published_meanwhile("--model", "model.pth", "--tile-size", "64")],
        fragment="made meanwhile by another run with other settings (--tile-size 64",
    ),
    Case(
        "another run published it meanwhile, without the preview asked",
        ["in.png", "-o", "out", "--preview", "out/", *M],
        True,
        [published_meanwhile("--model", "model.pth")],
        ["out/in_preview.png"],
    ),
    Case("a claim of random bytes (fresh)", ["in.png", "-o", "out", *M], True, [claim_file(content=bytes(range(256)))]),
    Case(
        "a claim of random bytes (old)",
        ["in.png", "-o", "out", *M],
        True,
        [claim_file(age=claims.STALE_AFTER + 1, content=bytes(range(256)))],
        ["out/in.tif"],
        may_change=["out/.in.tif.claim"],  # taken over, then released
    ),
    Case("a claim that is a folder", ["in.png", "-o", "out", *M], False, [claim_not_a_file("folder")], fragment="is a"),
    Case("a claim that is a FIFO", ["in.png", "-o", "out", *M], False, [claim_not_a_file("fifo")], fragment="a FIFO"),
    Case(
        "an immutable stale claim",
        ["in.png", "-o", "out", *M],
        False,
        [immutable_stale_claim],
        fragment="run 4711 on node-7 that dn cannot remove",
        cleanup=[mutable_again],
    ),
    Case(
        "a claim dated an hour ahead",
        ["in.png", "-o", "out", "--model", "model.pth"],
        True,
        [claim_file(age=-3600, host="node-7", pid=4711)],
        fragment="a clock ahead on node-7?",
    ),
    Case("--devices auto", ["in.png", "slide.tif", "-o", "out", "--devices", "auto", *M], True, [], ["out/in.tif"]),
    Case(
        "--devices cuda without a GPU, --dry-run",
        ["in.png", "-o", "out", "--devices", "cuda", "--dry-run", *M],
        False,
        fragment="--devices cuda: no CUDA device",
    ),
    Case(
        "find -print0 without -0",
        ["-", "-o", "out", *M],
        False,
        stdin="in.png\0slide.tif\0",
        fragment="-0 reads them",
    ),
]


def dn(*args: str) -> list[str]:
    return [sys.executable, "-m", "dn_cli", *args]


def snapshot(folder: Path) -> dict[str, str]:
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            files[path.relative_to(folder).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


def run_case(case: Case, folder: Path, timeout: float = TIMEOUT) -> dict:
    base(folder)
    for step in case.setup:
        step(folder)
    before = snapshot(folder)
    argv = dn("info", *case.args[1:]) if case.args[0] == "@info" else dn("translate", *case.args)
    start = time.monotonic()
    process = subprocess.Popen(
        argv,
        cwd=folder,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as a terminal sends it: a shell starts background jobs with SIGINT ignored, which
        # Python (and so dn) then keeps ignoring; this script may itself run in the background.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    hung = False
    if case.signal_after:
        while not list(folder.glob(case.signal_after)) and process.poll() is None and time.monotonic() - start < 60:
            time.sleep(0.02)
        process.send_signal(case.signal)
    try:
        stdout, stderr = process.communicate(case.stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        hung = True
    after = snapshot(folder)
    for step in case.cleanup:
        step(folder)
    made = sorted(set(after) - set(before))
    changed = sorted(p for p in before if p in after and after[p] != before[p])
    removed = sorted(set(before) - set(after))
    lines = [line for line in stderr.splitlines() if line.strip()]
    # Warnings and a batch's summary aside, what is left is the error.
    errors = [line for line in lines if not line.startswith("dn: warning:") and not re.match(r"\d+ inputs?: ", line)]
    problems = []
    if hung:
        problems.append("hung")
    if (process.returncode == 0) != case.ok:
        problems.append(f"exit {process.returncode}")
    if "Traceback" in stderr or any("unexpected" in line for line in lines):
        problems.append("traceback or unexpected error")
    if not case.ok and not case.makes and len(errors) != 1:
        problems.append(f"{len(errors)} lines on stderr")
    if case.fragment and case.fragment not in stderr:
        problems.append(f"message lacks {case.fragment!r}")
    if partial := [p for p in after if ".partial" in p]:
        problems.append(f"partial left: {partial}")
    if bad := [p for p in changed + removed if p not in case.may_change and ".partial" not in p]:
        problems.append(f"changed: {bad}")
    if case.stdout_lines is not None and len(stdout.splitlines()) != case.stdout_lines:
        problems.append(f"{len(stdout.splitlines())} lines on stdout")
    if missing := [p for p in case.makes if p not in after]:
        problems.append(f"not made: {missing}")
    if not case.ok and [p for p in made if not p.endswith(".json") and p not in case.makes]:
        problems.append(f"made despite failing: {made}")
    return {
        "case": case,
        "command": " ".join(
            ["dn", *(["info", *case.args[1:]] if case.args[0] == "@info" else ["translate", *case.args])]
        ),
        "exit": "hang" if hung else process.returncode,
        "message": errors[-1] if errors else (lines[-1] if lines else ""),
        "made": made,
        "changed": changed + removed,
        "seconds": time.monotonic() - start,
        "problems": problems,
    }


def cell(text: str) -> str:
    return printable(text).replace("|", "\\|").replace("\n", " ")  # printable: names that are not UTF-8


def table(results: list[dict]) -> str:
    rows = [
        "| # | case | command | exit | stderr (last line) | on disk afterwards | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for number, r in enumerate(results, 1):
        disk = ", ".join(f"+{p}" for p in r["made"]) or "nothing new"
        if r["changed"]:
            disk += "; changed: " + ", ".join(r["changed"])
        verdict = "ok" if not r["problems"] else "FAIL: " + "; ".join(r["problems"])
        rows.append(
            f"| {number} | {cell(r['case'].name)} | `{cell(r['command'])}` | {r['exit']} | "
            f"{cell(r['message'][:160]) or '–'} | {cell(disk)} | {verdict} |"
        )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="write the table into this Markdown file's generated section")
    parser.add_argument("--only", help="run only cases whose name contains this")
    parser.add_argument("--timeout", type=float, default=TIMEOUT, help="seconds before a run counts as hung")
    args = parser.parse_args()
    cases = [c for c in CASES if not args.only or args.only in c.name]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for number, case in enumerate(cases, 1):
            folder = Path(tmp) / f"case{number}"
            folder.mkdir()
            result = run_case(case, folder, args.timeout)
            results.append(result)
            status = "ok" if not result["problems"] else "FAIL " + "; ".join(result["problems"])
            print(f"{number:3d} {case.name:45s} exit {result['exit']!s:4s} {result['seconds']:5.1f}s {status}")
            print(f"      {cell(result['message'])}", flush=True)
            shutil.rmtree(folder, ignore_errors=True)
    text = table(results)
    if args.out:
        doc = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        start, end = "<!-- reliability table: scripts/reliability.py -->", "<!-- end of table -->"
        if start in doc and end in doc:
            doc = doc[: doc.index(start) + len(start)] + "\n" + text + "\n" + doc[doc.index(end) :]
        else:
            doc += f"\n{start}\n{text}\n{end}\n"
        args.out.write_text(doc, encoding="utf-8")
    failed = sum(bool(r["problems"]) for r in results)
    print(f"{len(results)} cases, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
