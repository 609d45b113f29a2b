"""Translate an image tile by tile: read, collect moments, apply the generator, write.

Joins a source, a converted generator and a sink; reports progress through a callback and
never prints.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dn_cli.compiled import MIN_FORWARDS, Clock, History, keep_kernels_on_disk, worth_it
from dn_cli.dense_norm import DensePass, Neighbourhood, PassScope, collecting_model, convert_instance_norm
from dn_cli.device import autocast, exact_fp32
from dn_cli.errors import DeviceMemoryError, ModelError, first_line
from dn_cli.geometry import Box, MomentGrid, TileGrid, check_geometry, default_margin, fit_grid
from dn_cli.images import ImageSource, Sink, read_padded
from dn_cli.models import Generator
from dn_cli.moments import MomentLayout, MomentRing, ThumbnailMoments
from dn_cli.output_stage import OutputStage
from dn_cli.policies import FLAT_STD, POLICIES, Policy, collects, glass_colour, is_flat, uses_thumbnail, weighting
from dn_cli.prefetch import TileReader
from dn_cli.schedule import Step, apply_only, by_tile_rows, rows_in_flight, single_pass, two_pass
from dn_cli.stopping import Stop


class TileRunner:
    """A generator converted to DN on its device, run on batches of uint8 RGB tiles.

    Args:
        generator: the loaded generator (left unchanged; a converted copy is kept).
        device: where the model runs.
        dtype: autocast dtype, or None for float32.
    """

    def __init__(self, generator: Generator, device: torch.device, dtype: torch.dtype | None = None) -> None:
        self.scope = PassScope()
        module, self.layers = convert_instance_norm(copy.deepcopy(generator.module), self.scope)
        self.module = module.to(device).eval()
        self.collecting = collecting_model(self.module, self.layers)
        self.layout = MomentLayout([layer.num_features for layer in self.layers])
        self.geometry = DensePass()  # tile size, margin and weighting of the image being translated
        self.stride, self.min_size, self.name = generator.stride, generator.min_size, generator.name
        self.device, self.dtype = device, dtype
        exact_fp32(device, dtype)
        self.max_batch = 1 << 30  # lowered when a batch turns out too big for the device
        self.eager: tuple[nn.Module, nn.Module] | None = None  # while compiled: the models to fall back on
        self.warn: Callable[[str], None] = lambda message: None
        self.clock = Clock()  # the compiled forwards, timed while learning what compiling costs
        self.eager_per_tile: dict[tuple[int, int], float] = {}  # (padded side, batch) → seconds, measured
        self.learning: tuple[History, str, bool] | None = None  # where a measured compile is recorded
        self.learnt: set[str] = set()

    def compile(self, warn: Callable[[str], None], backend: str | Callable = "inductor") -> None:
        """Run both passes through ``torch.compile``, the apply pass in its fused form. Each is
        compiled on first use, its batch dimension marked dynamic where the model allows (the last,
        smaller batch of a slide need not compile again); edges travel as tensors, so no edge
        compiles again either. A model that fails to compile runs eagerly from then on, after one
        ``warn``. ``backend``: torch.compile's (inductor generates kernels; the tests also use
        lighter ones)."""
        keep_kernels_on_disk(warn)
        self.eager, self.warn = (self.module, self.collecting), warn
        for layer in self.layers:
            layer.fused = True
        self.module = torch.compile(self.module, backend=backend)
        self.collecting = torch.compile(self.collecting, backend=backend)

    @property
    def compiled(self) -> bool:
        """Whether the model runs through torch.compile (False again after a fallback to eager)."""
        return self.eager is not None

    @property
    def precision(self) -> str:
        """The forward's precision, named as ``--precision`` names it."""
        return {None: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[self.dtype]

    def compile_if_it_pays(self, forwards: int, padded: int, batch: int, key: str, warn: Callable[[str], None]) -> str:
        """``--compile auto`` on a CPU: compile now if a job of ``forwards`` tile forwards of
        ``padded``-pixel tiles saves enough (``compiled.worth_it``), judged by one eager forward
        timed here and what compiling ``key`` (model and geometry) cost this machine before.
        Returns the choice and why, in words."""
        if forwards < MIN_FORWARDS:
            return f"eager: {forwards} tile forwards, too few to repay a compile"
        history = History(keep_kernels_on_disk(warn))
        costs = history.costs(key)
        yes, why = worth_it(forwards, self.eager_seconds_per_tile(padded, batch), costs)
        if yes:
            self.compile(warn)
            self.learn_as(key, warn)
        return f"{'compiled' if yes else 'eager'}: {why}"

    def eager_seconds_per_tile(self, padded: int, batch: int) -> float:
        """One eager forward of ``batch`` blank tiles, timed (once per geometry; the second of two
        runs, the first choosing kernels). Convolutions take as long whatever the pixels."""
        if (padded, batch) not in self.eager_per_tile:
            tiles = np.zeros((batch, padded, padded, 3), np.uint8)
            try:
                self.forward(tiles, None)
                start = time.perf_counter()
                self.forward(tiles, None)
            except ModelError as e:
                raise ModelError(f"{e} (on blank tiles, timing the model for --compile auto)") from e
            self.eager_per_tile[padded, batch] = (time.perf_counter() - start) / batch
        return self.eager_per_tile[padded, batch]

    def learn_as(self, key: str, warn: Callable[[str], None]) -> None:
        """Time this compiled run on a CPU, to record under ``key`` what compiling cost (:meth:`learn`)."""
        if self.compiled and self.device.type == "cpu" and self.learning is None and key not in self.learnt:
            history = History(keep_kernels_on_disk(warn))
            self.learning = (history, key, history.knows(key))
            self.clock = Clock()  # from this geometry's first forward, which compiles

    def learn(self) -> None:
        """Record what compiling cost, once the compiled graphs have run a few times: the next
        ``--compile auto`` choice for that model and geometry starts from it."""
        if self.learning is None or not self.compiled:
            return
        history, key, cached = self.learning
        measured = self.clock.costs(cached)
        if measured is not None:
            history.record(key, measured)
            self.learning = None
            self.learnt.add(key)

    def _call(self, collecting: bool, x: torch.Tensor):
        model = self.collecting if collecting else self.module
        if self.eager is None:
            return model(x)
        torch._dynamo.maybe_mark_dynamic(x, 0)
        try:
            if self.learning is None:  # timed only to learn, on a CPU (a CUDA forward returns before it has run)
                return model(x)
            start = time.perf_counter()
            y = model(x)
            self.clock.add(collecting, len(x), time.perf_counter() - start)
            return y
        except Exception as e:  # torch.compile raises many kinds; a real failure of the model shows eagerly
            if too_big(e):
                raise
            self._uncompile()
            y = self._call(collecting, x)  # raises if the model itself fails
            cause = getattr(e, "inner_exception", None) or e  # the backend's own error, not dynamo's wrapper
            self.warn(
                f"{self.name} could not be compiled ({type(cause).__name__}: {first_line(cause)}); it runs eagerly"
            )
            return y

    def _uncompile(self) -> None:
        self.module, self.collecting = self.eager
        self.eager = None
        for layer in self.layers:
            layer.fused = False

    def stage(self, tiles: list[np.ndarray] | np.ndarray) -> torch.Tensor:
        """Tiles as the model's input on the host: one uint8 ``(B, h, w, 3)`` tensor, pinned for
        an asynchronous copy where the device is a GPU (done ahead, off the feeding loop)."""
        x = torch.from_numpy(np.require(np.stack(tiles), requirements=["C", "W"]))  # reads may be read-only views
        return x.pin_memory() if self.device.type == "cuda" else x

    def _forward(self, tiles: np.ndarray | torch.Tensor, dense_pass: DensePass) -> torch.Tensor | tuple:
        """The model's output for one pass, or for a collect pass the packed moments (``MomentLayout``)."""
        x = tiles if isinstance(tiles, torch.Tensor) else self.stage(tiles)
        x = x.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(127.5).sub_(1)
        collecting = dense_pass.kind == "collect"
        with torch.inference_mode(), autocast(self.device, self.dtype), self.scope.running(dense_pass):
            try:
                with Stop.interruptible():  # Ctrl-C, kill, Slurm's SIGTERM: within a layer, not a batch
                    y = self._call(collecting, x)
            except Exception as e:  # the model's own failure, named; memory is _run's to handle
                if too_big(e):
                    raise
                raise ModelError(f"{self.name} failed: {type(e).__name__}: {first_line(e)}") from e
        if collecting:
            return self.layout.pack(y)
        if y.shape[-2:] != x.shape[-2:]:  # load refuses such models; a model may still change its mind
            raise ModelError(
                f"{self.name} gave {y.shape[-1]} × {y.shape[-2]} pixels for a {x.shape[-1]} × {x.shape[-2]} tile: "
                "dn needs an output the size of its input"
            )
        return y

    def _run(self, tiles: np.ndarray, dense_pass: DensePass) -> torch.Tensor:
        """The output (or, collecting, the packed moments) of a batch, in forwards of at most
        ``max_batch`` tiles: a batch too big for the device's memory or a kernel's index range is
        split in halves until it fits, and later batches start at the size that fit."""
        results = []
        start = 0
        while start < len(tiles):
            part = slice(start, start + self.max_batch)
            try:
                results.append(self._forward(tiles[part], dense_pass.slice(part)))
            except (torch.cuda.OutOfMemoryError, RuntimeError) as e:  # OutOfMemoryError: torch.OutOfMemoryError too
                if not too_big(e):
                    raise
                size = len(tiles[part])
                if size == 1:
                    fp16 = "" if self.dtype or self.device.type == "cpu" else ", or use --precision fp16"
                    raise DeviceMemoryError(
                        f"one tile of {tiles.shape[1]}² pixels does not fit in {self.device} memory at once: "
                        f"lower --tile-size{fp16}"
                    ) from e
                self.max_batch = size // 2
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            start = part.stop
        return results[0] if len(results) == 1 else torch.cat(results)

    def collect(self, tiles: np.ndarray, inside: list[tuple[int, int, int, int]] | None = None) -> torch.Tensor:
        """Per-tile moments of every norm layer, ``(B, 2, C_total)``, under patch-wise IN.

        Args:
            inside: the in-image part of each tile (``TileGrid.inside``): tiles that reach past
                the image's edge take the moments of that part only.
        """
        side = self.geometry.tile_size + 2 * self.geometry.margin
        if inside is None or all(part == (0, side, 0, side) for part in inside):
            return self._run(tiles, replace(self.geometry, kind="collect"))
        bounds = torch.tensor(inside, dtype=torch.int64).to(self.device, non_blocking=True)
        return self._run(tiles, replace(self.geometry, kind="collect", inside=tuple(inside), inside_tensor=bounds))

    def forward(self, tiles: np.ndarray, neighbourhood: Neighbourhood | None) -> torch.Tensor:
        """The model's output in [-1, 1] for whole padded tiles.

        With ``neighbourhood`` None each tile is normalised with its own moments (plain IN).
        """
        kind = "plain" if neighbourhood is None else "apply"
        return self._run(tiles, replace(self.geometry, kind=kind, neighbourhood=neighbourhood))

    def apply(
        self, tiles: np.ndarray, neighbourhood: Neighbourhood | None, crop: int, size: int | tuple[int, int]
    ) -> np.ndarray:
        """Translate tiles; keep the ``size`` square (or ``(height, width)``) after ``crop`` pixels,
        as uint8 RGB."""
        return self.apply_async(tiles, neighbourhood, crop, size)()

    def apply_async(
        self,
        tiles: np.ndarray | torch.Tensor,
        neighbourhood: Neighbourhood | None,
        crop: int,
        size: int | tuple[int, int],
    ) -> Callable[[], np.ndarray]:
        """:meth:`apply` with the wait for the result left to the caller: returns a function that
        waits for the uint8 pixels to reach the host and returns them."""
        height, width = (size, size) if isinstance(size, int) else size
        y = self.forward(tiles, neighbourhood)[:, :, crop : crop + height, crop : crop + width]
        with torch.inference_mode():  # the model's output is an inference tensor: changed in place here
            finite = torch.isfinite(y).all()  # NaN would silently become black pixels: checked on arrival
            y = y.float().add_(1).mul_(127.5).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
            if self.device.type == "cuda":  # copied to pinned memory behind the forward; an event marks the end
                host = torch.empty(y.shape, dtype=torch.uint8, pin_memory=True)
                host.copy_(y, non_blocking=True)
                ready = torch.cuda.Event()
                ready.record()
            else:
                host, ready = y, None

        def result() -> np.ndarray:
            if ready is not None:
                ready.synchronize()
            if not finite.item():
                hint = (
                    ": try --precision fp32" if self.dtype == torch.float16 else ": its weights or this input break it"
                )
                raise ModelError(f"{self.name} gives NaN or infinite values{hint}")
            return host.numpy()

        return result

    def image_moments(self, source: ImageSource, side: int) -> torch.Tensor:
        """The whole image's moments, ``(1, 2, C_total)``: those of its thumbnail, at most ``side``
        pixels (TIN's moments, and what near-constant tiles carry under DN)."""
        thumbnail = fit_to_stride(source.thumbnail(side), self.stride, self.min_size)
        return self.collect(np.array(thumbnail[None]))  # a writable copy: thumbnails may be read-only


def too_big(error: BaseException) -> bool:
    """Whether a forward failed only for its size: out of device or host memory, or past a kernel's
    32-bit index range (the message torch gives for each)."""
    text = str(error)
    return isinstance(error, torch.cuda.OutOfMemoryError) or any(
        phrase in text for phrase in ("can't allocate memory", "32-bit index math", "out of memory")
    )


def fit_to_stride(image: np.ndarray, stride: int, min_size: int = 1) -> np.ndarray:
    """Resize a uint8 RGB image so both sides are multiples of ``stride`` (at most half a stride
    off) and at least ``min_size``."""
    h, w = (max(stride, min_size, round(n / stride) * stride) for n in image.shape[:2])
    if (h, w) == image.shape[:2]:
        return image
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float()  # a copy: images may be read-only
    x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    return x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


@contextmanager
def naming_tiles(grid: TileGrid, tiles: list[int]):
    """A model's failure on a batch says where in the image that batch lies."""
    try:
        yield
    except ModelError as e:
        box = grid.output_box(*grid.position(tiles[0]))
        raise ModelError(f"{e} (tiles from x {box.x}, y {box.y} on)") from e


def translate_whole(
    source: ImageSource, sink: Sink, runner: TileRunner, progress: Callable[[int, int], None] | None
) -> None:
    """An image that fits in one tile, run whole, as the model itself would run it: padded only
    up to a multiple of the stride (and the model's smallest input), nothing mirrored into it
    beyond that. Every policy is plain InstanceNorm on a single tile, so each gives this."""
    if progress is not None:
        progress(0, 1)
    height, width = source.height, source.width
    padded_h, padded_w = (max(-(-n // runner.stride) * runner.stride, runner.min_size) for n in (height, width))
    padded = read_padded(source, Box(0, 0, padded_w, padded_h))
    sink.write(Box(0, 0, width, height), runner.apply(padded[None], None, 0, (height, width))[0])
    sink.close()
    if progress is not None:
        progress(1, 1)


def translate(
    source: ImageSource,
    sink: Sink,
    runner: TileRunner,
    *,
    policy: Policy = "dn",
    tile_size: int = 512,
    margin: int | None = None,
    batch_size: int = 4,
    progress: Callable[[int, int], None] | None = None,
    active: np.ndarray | None = None,
    two_pass_oracle: bool = False,
    flat_std: float = FLAT_STD,
    grid: TileGrid | None = None,
    moment_stride: int | None = None,
) -> TileGrid:
    """Translate ``source`` into ``sink`` tile by tile with the given normalisation policy.

    Args:
        policy: ``dn`` dense moments, ``in`` per-tile, ``kin`` 3 × 3 mean, ``tin`` thumbnail.
        tile_size: tile side; a tile larger than the image shrinks to fit it (``geometry.fit_grid``).
        margin: context read around each tile; None picks DESIGN.md's default for the model.
        grid: the slide's tile grid, made once by the caller (``tile_size`` and ``margin`` are then
            not used); None: made here from them.
        progress: called with (tiles done, tiles total) before the first and after each applied batch.
        active: ``(rows, cols)`` booleans; inactive tiles (glass) are neither read nor run: they
            are filled with the model's own rendering of glass, meeting the translated glass
            beside them (``OutputStage``), and masked out of their neighbours' DN moments.
        two_pass_oracle: collect every tile before applying any (the reference the single pass
            must match; memory grows with the grid area).
        flat_std: tiles whose own pixels vary less than this carry the image's moments
            (``policies.is_flat``; 0: none do, as in the paper).
        moment_stride: ``dn`` only: collect moments on windows centred every this many pixels
            (``geometry.MomentGrid``: half the tile size; None or the tile size: at the tiles).
    """
    try:
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; expected one of {POLICIES}")
        if grid is None:
            margin = default_margin(tile_size, runner.stride) if margin is None else margin
            check_geometry(tile_size, margin, runner.stride)
            grid = fit_grid(source.width, source.height, tile_size, margin, runner.stride, runner.min_size)
        if max(source.width, source.height) <= grid.tile_size and not two_pass_oracle:
            translate_whole(source, sink, runner, progress)
            return grid
        runner.geometry = DensePass(tile_size=grid.tile_size, margin=grid.margin, weighting=weighting(policy))
        background = np.zeros(3, np.uint8)
        if active is not None and not active.all():  # the glass: one tile with the image's moments only
            background = glass_colour(source, grid, active, lambda tile: render_glass(runner, source, grid, tile))
        windows = None
        if moment_stride not in (None, grid.tile_size) and collects(policy) and runner.layout.total:
            if policy != "dn":
                raise ValueError(f"a moment stride is DN's: not for policy {policy!r}")
            windows = MomentGrid(grid, moment_stride)
            runner.geometry = replace(runner.geometry, moment_stride=moment_stride)
        output = OutputStage(sink, grid, background, progress, skipping=active is not None and not active.all())
        try:
            tile_pass = TilePass(source, grid, runner, policy, active, flat_std)
            if windows is None:
                tile_pass.run(batch_size, two_pass_oracle, output, progress)
            else:
                tile_pass.run_on_windows(windows, batch_size, output, progress)
            output.close()
        except BaseException:
            output.abort()
            raise
        sink.close()
    except BaseException:
        sink.abort()  # an error or Ctrl-C, even before the first tile or while closing, leaves nothing behind
        raise
    return grid


def render_glass(runner: TileRunner, source: ImageSource, grid: TileGrid, tile: np.ndarray) -> np.ndarray:
    """A padded tile translated with the whole image's moments (``policies.glass_colour``)."""
    neighbourhood = None
    if runner.layout.total:
        image = ThumbnailMoments(runner.layout, runner.image_moments(source, grid.padded_size))
        neighbourhood = image.gather([0])
    return runner.apply(tile[None], neighbourhood, grid.margin, grid.tile_size)[0]


class TilePass:
    """The loop of one image: tiles read ahead, collected (DN, KIN), applied and handed to the
    output stage in raster order; skipped tiles drop out of collection and reading."""

    def __init__(
        self,
        source: ImageSource,
        grid: TileGrid,
        runner: TileRunner,
        policy: Policy,
        active: np.ndarray | None,
        flat_std: float,
    ) -> None:
        self.source, self.grid, self.runner, self.policy = source, grid, runner, policy
        self.active, self.flat_std = active, flat_std
        self.image_moments: torch.Tensor | None = None  # the thumbnail's moments, taken at the first flat tile

    def steps(self, batch_size: int, two_pass_oracle: bool) -> tuple[list, MomentRing | ThumbnailMoments | None]:
        """(each step with its active tiles, where moments are kept)."""
        grid, runner = self.grid, self.runner
        moments: MomentRing | ThumbnailMoments | None = None
        if not collects(self.policy) or runner.layout.total == 0:
            steps = apply_only(grid.rows, grid.cols, batch_size)
            if uses_thumbnail(self.policy) and runner.layout.total:
                moments = ThumbnailMoments(runner.layout, runner.image_moments(self.source, grid.padded_size))
        else:
            steps = (two_pass if two_pass_oracle else single_pass)(grid.rows, grid.cols, batch_size)
            slots = rows_in_flight(steps, grid.cols)
            moments = MomentRing(runner.layout, grid.rows, grid.cols, slots, runner.device)
        plan = [(step, [i for i in step.tiles if self.active is None or self.active.flat[i]]) for step in steps]
        # Skipped tiles drop out of collection; apply steps keep them, to write background in order.
        return [(step, tiles) for step, tiles in plan if tiles or step.kind == "apply"], moments

    def stage(self, tiles: list[np.ndarray], collecting: bool) -> tuple[torch.Tensor, np.ndarray | None]:
        """On the staging thread: the batch as the model's input, and (collecting) which tiles are flat."""
        g = self.grid  # flatness matters only to collected moments: in and tin never ask
        flat = np.array([is_flat(t, g.margin, g.tile_size, self.flat_std) for t in tiles]) if collecting else None
        return self.runner.stage(tiles), flat

    def run(self, batch_size: int, two_pass_oracle: bool, output: OutputStage, progress) -> None:
        grid, runner = self.grid, self.runner
        plan, moments = self.steps(batch_size, two_pass_oracle)
        # Collected batches are read once, ahead of the model, and wait here until applied (an
        # apply step covers the same tiles as the collect step of the same range).
        collecting = [tiles for step, tiles in plan if step.kind == "collect"]
        reading = collecting or [tiles for _, tiles in plan if tiles]
        pending: dict[int, tuple[torch.Tensor, np.ndarray]] = {}
        applied = 0
        if progress is not None:
            progress(0, len(grid))
        stage = lambda tiles: self.stage(tiles, bool(collecting))  # noqa: E731
        with TileReader(self.source, grid, reading, stage=stage) as reader:
            for step, tiles in plan:
                if step.kind == "collect":
                    batch, flat = pending[step.tiles.start] = reader.read(tiles)
                    self.collect(batch, flat, tiles, moments, oldest_needed_row=grid.position(applied)[0] - 1)
                    continue
                result = None
                if tiles:
                    batch = pending.pop(step.tiles.start)[0] if pending else reader.read(tiles)[0]
                    neighbourhood = moments.gather(tiles) if moments is not None else None
                    with naming_tiles(grid, tiles):
                        result = runner.apply_async(batch, neighbourhood, grid.margin, grid.tile_size)
                output.put(step.tiles, tiles, result)  # written in raster order, which the sinks rely on
                applied = step.tiles.stop

    def run_on_windows(self, windows: MomentGrid, batch_size: int, output: OutputStage, progress) -> None:
        """The loop with moments on a finer grid: before each tile row, the windows its
        neighbourhoods need are read and collected (a reader of their own), then the row's tiles
        are read and applied. A window is collected if a tile whose neighbourhood holds it is
        active (``MomentGrid.tiles_of``), so an active tile's neighbourhood is always complete."""
        grid, runner, f = self.grid, self.runner, windows.factor
        moments = MomentRing(runner.layout, windows.rows, windows.cols, 4, runner.device, f, grid.cols)
        active = self.active

        def kept(step: Step) -> list[int]:
            if step.kind == "collect":
                return [i for i in step.tiles if active is None or active.flat[windows.tiles_of(i)].any()]
            return [i for i in step.tiles if active is None or active.flat[i]]

        plan = [(step, kept(step)) for step in by_tile_rows(grid.rows, grid.cols, f, batch_size)]
        plan = [(step, items) for step, items in plan if items or step.kind == "apply"]
        collecting = [items for step, items in plan if step.kind == "collect"]
        applying = [items for step, items in plan if step.kind == "apply" and items]
        if progress is not None:
            progress(0, len(grid))
        applied = 0
        with (
            TileReader(self.source, windows, collecting, stage=lambda w: self.stage(w, True)) as window_reader,
            TileReader(self.source, grid, applying, stage=lambda t: self.stage(t, False)) as tile_reader,
        ):
            for step, items in plan:
                if step.kind == "collect":
                    batch, flat = window_reader.read(items)
                    oldest_needed_row = f * grid.position(applied)[0] - 1
                    self.collect(batch, flat, items, moments, oldest_needed_row, windows)
                    continue
                result = None
                if items:
                    batch = tile_reader.read(items)[0]
                    with naming_tiles(grid, items):
                        result = runner.apply_async(batch, moments.gather(items), grid.margin, grid.tile_size)
                output.put(step.tiles, items, result)
                applied = step.tiles.stop

    def collect(
        self,
        batch: torch.Tensor,
        flat: np.ndarray,
        tiles: list[int],
        moments: MomentRing,
        oldest_needed_row: int,
        windows: MomentGrid | None = None,
    ) -> None:
        """One batch's moments into the ring; flat tiles (or windows) carry the image's instead."""
        grid, runner = self.grid, self.runner
        where = grid if windows is None else windows
        with naming_tiles(grid, tiles if windows is None else [windows.tiles_of(i)[0] for i in tiles]):
            packed = runner.collect(batch, [where.inside(*where.position(i)) for i in tiles])
        if flat.any():  # their tiny variance would swamp their neighbours: the image's instead
            if self.image_moments is None:
                self.image_moments = runner.image_moments(self.source, grid.padded_size)[0]
            packed[torch.as_tensor(np.flatnonzero(flat), device=packed.device)] = self.image_moments
        moments.write(tiles, packed, oldest_needed_row)
