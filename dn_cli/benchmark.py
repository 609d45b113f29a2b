"""How fast each stage of the pipeline runs on this machine, alone and together (``dn bench``).

Every rate is in megapixels of output per second. Stages alone: slide reads (padded tiles,
the pipeline's own reader threads), the model's ceiling (its forward on those same tiles, same
batch size, no I/O), the writer (those tiles into a pyramidal JPEG TIFF). Together: the whole
pipeline with the model (``in`` and ``dn``) and with a pass-through in its place (``null``:
everything but the model). Each measurement is warmed up, then repeated with the stages
interleaved, so a machine that speeds up or slows down during the run affects all alike; the
median is reported with the spread.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dn_cli.geometry import Box, TileGrid, fit_grid
from dn_cli.images import ImageSource
from dn_cli.models import Generator
from dn_cli.pipeline import TileRunner, translate
from dn_cli.prefetch import TileReader
from dn_cli.pyramid_tiff import PyramidTiffSink

MAX_MEGAPIXELS = 64  # the part of a big slide that is measured: enough to time, little enough to hold


class PassThrough(nn.Module):
    """A model that returns its input: the pipeline's cost without a model."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class TopRows(ImageSource):
    """The top ``height`` rows of an image (a big slide's measured part)."""

    def __init__(self, source: ImageSource, height: int) -> None:
        self.source, self.width, self.height = source, source.width, height
        self.mpp = source.mpp

    def read(self, box: Box) -> np.ndarray:
        return self.source.read(box)

    def thumbnail(self, max_side: int) -> np.ndarray:
        full = self.source.thumbnail(max_side)
        return full[: max(1, round(full.shape[0] * self.height / self.source.height))]


def synchronise(device: torch.device) -> None:
    """Wait for the device's queued work, so a timer measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(megapixels: float, work: Callable[[], object], device: torch.device) -> float:
    synchronise(device)
    start = time.perf_counter()
    work()
    synchronise(device)
    return megapixels / (time.perf_counter() - start)


def measure(
    source: ImageSource,
    runner: TileRunner,
    *,
    tile_size: int,
    margin: int,
    batch_size: int,
    repeats: int = 3,
    host_only: bool = False,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Rates of every stage (median and spread over ``repeats``), and the bottleneck; with
    ``host_only``, of the stages without the model: what the host can feed a GPU."""
    grid = fit_grid(source.width, source.height, tile_size, margin, runner.stride, runner.min_size)
    rows = max(1, min(grid.rows, int(MAX_MEGAPIXELS * 1e6 // (source.width * grid.tile_size))))
    part = TopRows(source, min(source.height, rows * grid.tile_size)) if rows < grid.rows else source
    grid = TileGrid(part.width, part.height, grid.tile_size, margin)
    megapixels = part.width * part.height / 1e6
    batches = [range(i, min(i + batch_size, len(grid))) for i in range(0, len(grid), batch_size)]
    with TileReader(part, grid, batches) as reader:
        tiles = [tile for batch in batches for tile in reader.read(batch)]
    model_batches = [np.stack(tiles[b.start : b.stop]) for b in batches]
    null = TileRunner(Generator(PassThrough(), "null", {}, runner.stride, name="pass-through"), runner.device)

    def reads() -> None:
        with TileReader(part, grid, batches) as again:
            for batch in batches:
                again.read(batch)

    def model() -> None:
        for batch in model_batches:
            runner.forward(batch, None)

    def writer() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            sink = PyramidTiffSink(Path(tmp) / "bench.tif", part.width, part.height)
            m = grid.margin
            for index, tile in enumerate(tiles):
                box = grid.output_box(*grid.position(index))
                sink.write(box, tile[m : m + box.height, m : m + box.width])
            sink.close()

    def pipeline(policy: str, with_runner: TileRunner) -> Callable[[], object]:
        def run() -> None:
            with tempfile.TemporaryDirectory() as tmp:
                sink = PyramidTiffSink(Path(tmp) / "bench.tif", part.width, part.height)
                translate(part, sink, with_runner, policy=policy, grid=grid, batch_size=batch_size)

        return run

    stages = {
        "read": reads,
        "ceiling": model,
        "write": writer,
        "null": pipeline("in", null),
        "in": pipeline("in", runner),
        "dn": pipeline("dn", runner),
    }
    if host_only:
        stages = {name: stages[name] for name in ("read", "write", "null")}
    else:
        model()  # warm-up: first forwards allocate and choose kernels
    samples: dict[str, list[float]] = {name: [] for name in stages}
    for repeat in range(repeats):
        for name, work in stages.items():  # interleaved: drifts of the machine affect every stage alike
            if progress is not None:
                progress(f"{name} ({repeat + 1}/{repeats})")
            samples[name].append(_rate(megapixels, work, runner.device))
    rates = {name: statistics.median(values) for name, values in samples.items()}
    alone = {"reads": rates["read"], "writer": rates["write"]}
    if not host_only:
        alone["model"] = rates["ceiling"] / 2  # dn: two forwards
    return {
        **{f"{name}_mpx_s": round(rate, 3) for name, rate in rates.items()},
        "spread": {f"{name}_mpx_s": [round(min(v), 3), round(max(v), 3)] for name, v in samples.items()},
        "bottleneck": min(alone, key=alone.get),
        "megapixels": round(megapixels, 3),
        "tiles": len(grid),
        "tile_size": grid.tile_size,
        "batch_size": batch_size,
        "repeats": repeats,
    }
