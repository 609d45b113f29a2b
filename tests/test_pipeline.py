"""The whole tile pipeline on a real tissue image with a real generator."""

import contextlib
import threading

import numpy as np
import pytest
import torch
from torch import nn

from dn_cli.dense_norm import DensePass, WholeForwardCollecting
from dn_cli.errors import GeometryError
from dn_cli.geometry import TileGrid
from dn_cli.images import ArrayImage, Canvas, read_padded
from dn_cli.metrics import seam_score
from dn_cli.moments import MomentLayout, MomentRing
from dn_cli.pipeline import TileRunner, fit_to_stride, translate

from .conftest import make_generator

CPU = torch.device("cpu")


def run(image, runner, **options):
    canvas = Canvas(image.shape[1], image.shape[0])
    translate(ArrayImage(image), canvas, runner, **options)
    return canvas.pixels


def to_uint8(y: torch.Tensor) -> np.ndarray:
    return ((y + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


@pytest.fixture(scope="module")
def runner():
    return TileRunner(make_generator(), CPU)


@pytest.fixture(scope="module")
def ragged(tissue):
    """300 × 350: a 5 × 6 grid of 64-pixel tiles with a ragged last row and column."""
    return np.ascontiguousarray(tissue[:300, :350])


@pytest.mark.parametrize("batch_size", [1, 2, 3, 4, 5, 7])
@pytest.mark.parametrize("shape", [(300, 350), (64, 448), (448, 64), (128, 128)])  # ragged, 1 × N, N × 1, 2 × 2
def test_the_single_pass_schedule_equals_the_two_pass_one(runner, tissue, batch_size, shape):
    """The schedule only (moments collected a few rows ahead, a ring of rows, batches across rows):
    the same layer either way, so what each policy computes is held by the independent reference
    (test_reference_dn, dn and kin) — here it only must not matter in which order tiles come."""
    image = np.ascontiguousarray(tissue[: shape[0], : shape[1]])
    options = {"policy": "dn", "tile_size": 64, "margin": 16, "batch_size": batch_size}
    single = run(image, runner, **options)
    oracle = run(image, runner, **options, two_pass_oracle=True)
    np.testing.assert_array_equal(single, oracle)
    assert single.shape == image.shape


def test_dn_runs_the_same_on_channels_last_weights(ragged):
    """The memory layout GPU users (and scripts/bench.py --channels-last) pick for speed."""
    channels_last = TileRunner(make_generator(), CPU)
    channels_last.module = channels_last.module.to(memory_format=torch.channels_last)
    options = {"policy": "dn", "tile_size": 64, "margin": 16, "batch_size": 4}
    diff = np.abs(
        run(ragged, channels_last, **options).astype(int) - run(ragged, TileRunner(make_generator(), CPU), **options)
    )
    assert diff.max() <= 1 and diff.mean() < 1e-3


def test_in_policy_equals_the_plain_model_per_tile(runner, ragged):
    out = run(ragged, runner, policy="in", tile_size=64, margin=16, batch_size=3)
    grid = TileGrid(350, 300, 64, 16)
    module = make_generator().module
    for index in range(len(grid)):
        row, col = grid.position(index)
        tile = read_padded(ArrayImage(ragged), grid.padded_box(row, col))
        with torch.no_grad():
            y = module(torch.from_numpy(np.ascontiguousarray(tile))[None].permute(0, 3, 1, 2).float() / 127.5 - 1)
        box = grid.output_box(row, col)
        expected = to_uint8(y)[0, 16 : 16 + box.height, 16 : 16 + box.width]
        got = out[box.y : box.y + box.height, box.x : box.x + box.width]
        diff = np.abs(got.astype(int) - expected)
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3  # float rounding at .5 only


def fixed_moments_model(module: nn.Module, moments: list[tuple[torch.Tensor, torch.Tensor]]) -> list:
    """Hooks that make every InstanceNorm of ``module`` use given (mean, var): an independent oracle."""
    norms = [m for m in module.modules() if isinstance(m, nn.InstanceNorm2d)]

    def hook(norm, mean, var):
        return lambda _m, inputs, _out: (
            (inputs[0] - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + norm.eps)
        )

    return [n.register_forward_hook(hook(n, mean, var)) for n, (mean, var) in zip(norms, moments, strict=True)]


def test_tin_normalises_every_tile_with_the_thumbnail_moments(runner, ragged):
    out = run(ragged, runner, policy="tin", tile_size=64, margin=16)
    module = make_generator().module
    # Oracle: the original model's IN moments measured on the same thumbnail, frozen by hooks.
    thumb = fit_to_stride(ArrayImage(ragged).thumbnail(96), 4)
    moments = []
    hooks = [
        n.register_forward_hook(lambda _m, i, _o: moments.append(torch.var_mean(i[0], (2, 3), correction=0)[::-1]))
        for n in module.modules()
        if isinstance(n, nn.InstanceNorm2d)
    ]
    with torch.no_grad():
        module(torch.from_numpy(thumb)[None].permute(0, 3, 1, 2).float() / 127.5 - 1)
    for h in hooks:
        h.remove()
    hooks = fixed_moments_model(module, [(m[0], v[0]) for m, v in moments])
    grid = TileGrid(350, 300, 64, 16)
    for row, col in [(0, 0), (2, 3), (4, 5)]:
        tile = read_padded(ArrayImage(ragged), grid.padded_box(row, col))
        with torch.no_grad():
            y = module(torch.from_numpy(np.ascontiguousarray(tile))[None].permute(0, 3, 1, 2).float() / 127.5 - 1)
        box = grid.output_box(row, col)
        expected = to_uint8(y)[0, 16 : 16 + box.height, 16 : 16 + box.width]
        diff = np.abs(out[box.y : box.y + box.height, box.x : box.x + box.width].astype(int) - expected)
        assert diff.max() <= 1
    for h in hooks:
        h.remove()


def test_dn_seams_are_at_the_untiled_level_on_real_tissue(demo_generator, tissue):
    # The trained demo generator on real tissue, a 4 × 4 grid of 128-pixel tiles: per-tile IN
    # shows the grid, KIN less so; DN scores like the same model run untiled.
    runner = TileRunner(demo_generator, CPU)
    scores = {p: seam_score(run(tissue, runner, policy=p, tile_size=128), 128) for p in ("in", "kin", "dn")}
    untiled = seam_score(run(tissue, runner, policy="in", tile_size=512, margin=0), 128)
    assert scores["dn"] < scores["kin"] < scores["in"] and scores["in"] > 1.2
    assert abs(scores["dn"] - untiled) < 0.03


@pytest.mark.parametrize("policy", ["dn", "kin", "in"])
def test_neighbouring_tiles_agree_exactly_where_they_overlap_only_with_dn(demo_generator, tissue, policy):
    # With a margin beyond the generator's reach, two tiles compute the same slide pixels from the
    # same context; DN's normalisation is one field over the slide, so they must agree exactly.
    runner = TileRunner(demo_generator, CPU)
    grid = TileGrid(512, 512, tile_size=128, margin=64)
    runner.geometry = DensePass(tile_size=128, margin=64, weighting="flat" if policy == "kin" else "bilinear")
    tiles = np.stack([read_padded(ArrayImage(tissue), grid.padded_box(*grid.position(i))) for i in range(len(grid))])
    ring = MomentRing(runner.layout, grid.rows, grid.cols, slots=grid.rows, device=CPU)
    ring.write(range(len(grid)), runner.collect(tiles), oldest_needed_row=-1)
    pair = range(grid.cols + 1, grid.cols + 3)  # tiles (1, 1) and (1, 2)
    left, right = runner.forward(tiles[pair.start : pair.stop], None if policy == "in" else ring.gather(pair))
    # Slide columns 240..271 straddle their border; tile (1, 1) reads from x = 64, tile (1, 2) from 192.
    columns = np.arange(240, 272)
    diff = (left[:, 64:192, columns - 64] - right[:, 64:192, columns - 192]).abs().max().item()
    assert diff == 0 if policy == "dn" else diff > 0.02


def test_moment_ring_refuses_to_evict_a_row_still_needed():
    ring = MomentRing(MomentLayout([2]), rows=5, cols=2, slots=2, device=CPU)
    ring.write(range(0, 2), torch.zeros(2, 2, 2), oldest_needed_row=0)
    ring.write(range(2, 4), torch.zeros(2, 2, 2), oldest_needed_row=0)
    with pytest.raises(RuntimeError, match="too small"):
        ring.write(range(4, 6), torch.zeros(2, 2, 2), oldest_needed_row=0)


def test_a_model_without_instance_norm_runs_unchanged(tissue):
    class Plain(nn.Module):
        def forward(self, x):
            return torch.tanh(x)

    from dn_cli.models import Generator

    runner = TileRunner(Generator(Plain(), "plain", {}, 1), CPU)
    out = run(tissue[:100, :100].copy(), runner, policy="dn", tile_size=32)
    expected = to_uint8(torch.tanh(torch.from_numpy(tissue[:100, :100].copy())[None].permute(0, 3, 1, 2) / 127.5 - 1))
    np.testing.assert_array_equal(out, expected[0])


def test_geometry_is_checked_before_any_work(runner, ragged):
    with pytest.raises(GeometryError):
        run(ragged, runner, tile_size=63, margin=16)


def test_seam_score_sees_a_tile_grid_and_not_smooth_content():
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:256, 0:256]
    smooth = np.stack([128 + 60 * np.sin(x / 17.0) * np.cos(y / 23.0)] * 3, axis=-1)
    smooth += rng.normal(0, 3, smooth.shape)
    assert 0.9 < seam_score(smooth, 64) < 1.1
    offsets = rng.normal(0, 10, (4, 4, 3)).repeat(64, 0).repeat(64, 1)  # a colour shift per tile
    assert seam_score(smooth + offsets, 64) > 1.5


def test_flat_tiles_carry_the_image_moments_no_halos_and_uniform_glass(demo_generator, tissue):
    # Tissue in the middle 2 × 2 tiles of a 4 × 4 grid, noisy glass around it. A glass tile's
    # inverse std is huge: shared as it is, it swamps the border of its tissue neighbours (a
    # halo) and renders its own glass as amplified noise. Carrying the image's moments instead,
    # it does neither, and the field stays continuous.
    rng = np.random.default_rng(0)
    image = np.clip(rng.normal(241, 1.5, (512, 512, 1)).repeat(3, axis=2), 0, 255).astype(np.uint8)
    image[128:384, 128:384] = tissue[128:384, 128:384]
    runner = TileRunner(demo_generator, CPU)
    reference = run(image, runner, policy="in", tile_size=128).astype(int)
    band = np.zeros((512, 512), bool)
    band[128:384, 128:384] = True
    band[144:368, 144:368] = False  # 16 pixels of tissue along the glass
    glass = np.zeros((512, 512), bool)
    glass[16:-16, 16:-16] = True
    glass[96:416, 96:416] = False  # glass away from the tissue and the image border

    def measure(**options) -> tuple[float, float, float]:
        out = run(image, runner, policy="dn", tile_size=128, **options).astype(int)
        shade = out.mean(axis=2)
        corners = [shade[r : r + 64, c : c + 64].mean() for r in (16, 432) for c in (16, 432)]
        return np.abs(out - reference).max(axis=2)[band].mean(), shade[glass].std(), np.ptp(corners)

    halo, glass_std, corner_spread = measure()
    paper_halo, paper_glass_std, paper_corner_spread = measure(flat_std=0.0)  # every tile its own, as in the paper
    assert halo < 0.7 * paper_halo and glass_std < 0.6 * paper_glass_std
    assert corner_spread < 0.2 < paper_corner_spread  # glass far from tissue: one shade


class IndexLimited(nn.Module):
    """A real generator behind a kernel that refuses batches above 2, as CUDA kernels refuse
    tensors past 32-bit indexing."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        if x.shape[0] > 2:
            raise RuntimeError("input tensor must fit into 32-bit index math")
        return self.net(x)


@pytest.mark.parametrize("policy", ["dn", "in"])
def test_a_batch_too_big_for_a_kernel_is_split_and_gives_the_same_result(ragged, policy):
    from dn_cli.models import Generator

    limited = TileRunner(Generator(IndexLimited(make_generator().module), "x", {}, 4), CPU)
    options = {"policy": policy, "tile_size": 64, "margin": 16, "batch_size": 5}
    split = run(ragged, limited, **options).astype(int)
    whole = run(ragged, TileRunner(make_generator(), CPU), **options)
    diff = np.abs(split - whole)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-4  # float rounding of other batch shapes only
    assert limited.max_batch == 2  # learnt once, kept for the following batches


def test_fp32_on_cuda_turns_tf32_off():
    from dn_cli.device import exact_fp32

    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = True
        exact_fp32(torch.device("cuda"), torch.float16)  # reduced precision: the defaults stay
        assert torch.backends.cudnn.allow_tf32
        exact_fp32(torch.device("cuda"), None)  # the flags are set without a GPU present
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


class Gates:
    """Makes each stage wait for a later step of another stage: a pipeline whose stages ran one
    after the other would wait for ever, so these waits prove overlap by order, not by time."""

    TIMEOUT = 60.0  # seconds: only a deadlock (stages in sequence) takes this long

    def __init__(self) -> None:
        self.condition = threading.Condition()
        self.reads_started: set[int] = set()
        self.forwards_started = 0
        self.open = False  # not while dn probes the model at load

    def __deepcopy__(self, memo):  # the runner's copy of the model waits on the same gates
        return self

    def mark(self, what: str, value: int) -> None:
        with self.condition:
            if what == "read":
                self.reads_started.add(value)
            else:
                self.forwards_started = max(self.forwards_started, value)
            self.condition.notify_all()

    def wait(self, until, why: str) -> None:
        with self.condition:
            if not self.condition.wait_for(until, timeout=self.TIMEOUT):
                raise AssertionError(f"the stages ran one after the other: {why}")


class GatedModel(nn.Module):
    """A real generator whose forward on tile k (one tile a batch) starts only once the read of
    tile k + 1 has: reads run ahead of the model."""

    def __init__(self, net: nn.Module, gates: Gates, tiles: int) -> None:
        super().__init__()
        self.net, self.gates, self.tiles = net, gates, tiles

    def forward(self, x):
        if self.gates.open:
            k = self.gates.forwards_started
            self.gates.mark("forward", k + 1)
            if k + 1 < self.tiles:
                self.gates.wait(lambda: k + 1 in self.gates.reads_started, f"forward {k} before read {k + 1}")
        return self.net(x)


class GatedImage(ArrayImage):
    def __init__(self, pixels, gates: Gates, grid: TileGrid) -> None:
        super().__init__(pixels)
        self.gates, self.grid = gates, grid

    def read(self, box):
        row, col = (box.y + self.grid.margin) // self.grid.tile_size, (box.x + self.grid.margin) // self.grid.tile_size
        self.gates.mark("read", row * self.grid.cols + col)
        return super().read(box)


class GatedCanvas(Canvas):
    """Writes tile k only once the model has started on tile k + 1: writes run behind the model."""

    def __init__(self, width, height, gates: Gates, tiles: int, tile_size: int) -> None:
        super().__init__(width, height)
        self.gates, self.tiles, self.tile_size = gates, tiles, tile_size

    def write(self, box, pixels):
        k = (box.y // self.tile_size) * (self.pixels.shape[1] // self.tile_size) + box.x // self.tile_size
        if k + 1 < self.tiles:
            self.gates.wait(lambda: self.gates.forwards_started >= k + 2, f"wrote {k} before forward {k + 1}")
        super().write(box, pixels)


def test_stages_overlap_reads_ahead_and_writes_behind_the_model(tissue):
    # 16 tiles, one a batch: the model's forward k waits for the read of tile k + 1 to start, and
    # the write of tile k for forward k + 1 to start. Run one after the other, either would wait
    # for ever; overlapped, the translation completes, and is the plain one.
    from dn_cli.models import Generator

    gates = Gates()
    image = np.ascontiguousarray(tissue[:256, :256])
    runner = TileRunner(Generator(GatedModel(make_generator().module, gates, 16), "x", {}, 4), CPU)
    grid = TileGrid(256, 256, 64, 16)
    canvas = GatedCanvas(256, 256, gates, 16, 64)
    gates.open = True
    translate(GatedImage(image, gates, grid), canvas, runner, policy="in", tile_size=64, margin=16, batch_size=1)
    assert gates.forwards_started == 16 and gates.reads_started == set(range(16))
    gates.open = False
    np.testing.assert_array_equal(canvas.pixels, run(image, runner, policy="in", tile_size=64, batch_size=1))


class InFlightImage(ArrayImage):
    """Counts reads in progress; each takes a while, as a slide's do."""

    def __init__(self, pixels) -> None:
        super().__init__(pixels)
        self.in_flight = self.started = 0
        self.lock = threading.Lock()

    def read(self, box):
        with self.lock:
            self.in_flight += 1
            self.started += 1
        try:
            threading.Event().wait(0.05)
            return super().read(box)
        finally:
            with self.lock:
                self.in_flight -= 1


@pytest.mark.parametrize("leave", ["at the end", "on an error"])
def test_reader_threads_end_with_the_reader(tissue, leave):
    """The slide is closed right after the reader: no read may still run, or start, then."""
    from dn_cli.prefetch import TileReader

    image = InFlightImage(np.ascontiguousarray(tissue))
    grid = TileGrid(512, 512, 64, 16)
    batches = [range(i, i + 8) for i in range(0, 64, 8)]
    with pytest.raises(KeyboardInterrupt) if leave == "on an error" else contextlib.nullcontext():
        with TileReader(image, grid, batches, workers=4) as reader:
            reader.read(batches[0])
            if leave == "on an error":
                raise KeyboardInterrupt  # Ctrl-C with reads queued and in flight
            for batch in batches[1:]:
                reader.read(batch)
    started = image.started
    assert image.in_flight == 0
    assert not [t.name for t in threading.enumerate() if t.name.startswith(("dn-read", "dn-stage"))]
    threading.Event().wait(0.2)
    assert image.started == started  # nothing queued started afterwards


def test_collecting_stops_after_the_last_norm_layer_with_the_same_moments(tissue):
    runner = TileRunner(make_generator(), CPU)
    tiles = np.stack([np.ascontiguousarray(tissue[:96, :96]), np.ascontiguousarray(tissue[96:192, :96])])
    last_conv = [m for m in runner.module.modules() if isinstance(m, nn.Conv2d)][-1]
    calls = []
    hook = last_conv.register_forward_hook(lambda *_: calls.append(1))
    early = runner.collect(tiles)
    assert calls == []  # the output convolution, after the last norm layer, never ran
    runner.collecting = WholeForwardCollecting(runner.module, runner.layers)
    whole = runner.collect(tiles)
    hook.remove()
    assert calls == [1]
    torch.testing.assert_close(early, whole, rtol=0, atol=0)


class Stateful(nn.Module):
    """A user's generator with Python state in its forward (a call counter): tracing it would
    change the counter, so it is never traced."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


def test_a_users_own_model_is_collected_by_whole_forwards_with_the_same_result(tissue):
    from dn_cli.models import Generator

    cut = TileRunner(make_generator(), CPU)
    whole = TileRunner(Generator(Stateful(make_generator().module), "x", {}, 4), CPU)
    assert isinstance(whole.collecting, WholeForwardCollecting) and not isinstance(
        cut.collecting, type(whole.collecting)
    )
    image = np.ascontiguousarray(tissue[:200, :260])
    options = {"policy": "dn", "tile_size": 64, "margin": 16, "batch_size": 3}
    np.testing.assert_array_equal(run(image, whole, **options), run(image, cut, **options))
    assert whole.module.calls == 2 * 7  # each forward ran the user's own code: 7 batches collected, 7 applied


@pytest.mark.parametrize("tile_size", [512, 384])  # larger than the image, and exactly its longer side
@pytest.mark.parametrize("policy", ["dn", "in", "kin", "tin"])
def test_an_image_that_fits_in_one_tile_is_what_the_model_itself_makes_of_it(demo_generator, tissue, policy, tile_size):
    # 256 × 384 of the IHC photograph: before, it was mirrored out to a whole 512 tile and came
    # out 1.2 grey levels off on average, 44 at most.
    image = np.ascontiguousarray(tissue[:256, :384])
    out = run(image, TileRunner(demo_generator, CPU), policy=policy, tile_size=tile_size)
    with torch.no_grad():
        own = to_uint8(demo_generator.module(torch.from_numpy(image)[None].permute(0, 3, 1, 2).float() / 127.5 - 1))
    assert np.abs(out.astype(int) - own[0]).max() <= 1
