"""The GPU path: same results as the CPU, reduced precision with float32 statistics.

Skipped where no CUDA device exists (the development machines have none).
"""

import numpy as np
import pytest
import torch

from dn_cli.errors import DeviceMemoryError
from dn_cli.images import ArrayImage, Canvas
from dn_cli.pipeline import TileRunner, translate

from .conftest import make_generator

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def run(image, device, dtype=None, **options):
    canvas = Canvas(image.shape[1], image.shape[0])
    translate(ArrayImage(image), canvas, TileRunner(make_generator(), torch.device(device), dtype), **options)
    return canvas.pixels.astype(int)


@pytest.mark.parametrize("policy", ["dn", "in", "kin", "tin"])
def test_cuda_fp32_matches_cpu(tissue, policy):
    image = np.ascontiguousarray(tissue[:300, :350])
    options = {"policy": policy, "tile_size": 64, "batch_size": 4}
    diff = np.abs(run(image, "cuda", **options) - run(image, "cpu", **options))
    assert diff.max() <= 2 and diff.mean() < 0.05


def test_cuda_fp16_autocast_stays_close(tissue):
    image = np.ascontiguousarray(tissue[:256, :256])
    diff = np.abs(run(image, "cuda", torch.float16, tile_size=64) - run(image, "cpu", tile_size=64))
    assert diff.mean() < 1.0


def test_recorded_moments_are_float32_under_fp16(tissue):
    runner = TileRunner(make_generator(), torch.device("cuda"), torch.float16)
    packed = runner.collect(np.ascontiguousarray(tissue[None, :96, :96]))
    assert packed.dtype == torch.float32 and packed.device.type == "cuda"


def test_a_batch_too_big_for_gpu_memory_is_split_and_a_tile_too_big_names_the_tile_size():
    runner = TileRunner(make_generator(ngf=64), torch.device("cuda"))
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(512 * 2**20 / torch.cuda.get_device_properties(0).total_memory)
    try:
        out = runner.forward(np.zeros((8, 512, 512, 3), np.uint8), None)  # 8 × 64 × 512² float32: 537 MB a layer
        assert out.shape[0] == 8 and runner.max_batch < 8
        with pytest.raises(DeviceMemoryError, match="one tile of 2048² pixels does not fit.*--tile-size"):
            runner.forward(np.zeros((1, 2048, 2048, 3), np.uint8), None)  # 1 GB a layer
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()


def test_two_workers_on_one_gpu_give_the_single_runs_pixels(tmp_path, tissue, checkpoint):
    """--devices on CUDA: workers are spawned processes (CUDA cannot be forked); two on one GPU
    overlap one's reading with the other's forward. Pixels as one process on that GPU."""
    import subprocess
    import sys

    import tifffile

    from .test_reliability import png

    folder = tmp_path / "in"
    for i in range(3):
        png(folder / f"s{i}.png", np.ascontiguousarray(np.roll(tissue, 60 * i, axis=1)[:256, :320]))
    base = [sys.executable, "-m", "dn_cli", "translate", str(folder), "--model", str(checkpoint), "-q"]
    for out, where in (("one", ["--device", "cuda:0"]), ("two", ["--devices", "cuda:0,cuda:0"])):
        done = subprocess.run([*base, "-o", str(tmp_path / out), *where], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    for i in range(3):
        one, two = (tifffile.imread(tmp_path / out / f"s{i}.tif", level=0) for out in ("one", "two"))
        np.testing.assert_array_equal(one, two)
