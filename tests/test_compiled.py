"""``--compile``: the converted generator through torch.compile gives the eager output, compiles
a bounded number of graphs whatever the slide's edges, and falls back to eager when it cannot.

Inductor (kernels generated and built) takes minutes per model on 2 cores, so one test uses it;
the family × policy matrix uses torch.compile's ``eager`` backend: the graphs are captured,
guarded and run through the fused apply form exactly as compiled, only not code-generated.
"""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn
from torch._dynamo.utils import counters

from dn_cli.cli import cli
from dn_cli.image_io import save_picture
from dn_cli.images import ArrayImage, Canvas
from dn_cli.models import Generator
from dn_cli.models.dn_generator import DnResearchGenerator
from dn_cli.models.resnet import ResnetGenerator
from dn_cli.models.unet import UnetGenerator
from dn_cli.pipeline import TileRunner, translate

from .test_models import randomised

CPU = torch.device("cpu")
FAMILIES = {
    "cyclegan-resnet": lambda: ResnetGenerator(ngf=4, n_blocks=1),
    "cut-resnet": lambda: ResnetGenerator(ngf=4, n_blocks=1, antialias_down=True, antialias_up=True),
    "cyclegan-unet": lambda: UnetGenerator(num_downs=5, ngf=4),
    "dn-research": lambda: DnResearchGenerator(features=4, residuals=1),  # the research code's layout, small
}


def translated(runner: TileRunner, image: np.ndarray, policy: str, tile_size: int = 64) -> np.ndarray:
    canvas = Canvas(image.shape[1], image.shape[0])
    translate(ArrayImage(image), canvas, runner, policy=policy, tile_size=tile_size, batch_size=4)
    return canvas.pixels.astype(int)


@pytest.fixture(autouse=True)
def fresh_compiler():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def graphs() -> int:
    return counters["stats"]["unique_graphs"]


# Every family with the two passes every policy uses (dn: collect and apply; in: plain); kin and
# tin, the same passes with other moments, on one family (each compile costs seconds here).
MATRIX = [(family, policy) for family in FAMILIES for policy in ("dn", "in")]
MATRIX += [("cyclegan-resnet", "kin"), ("cyclegan-resnet", "tin")]


@pytest.mark.parametrize("family, policy", MATRIX)
def test_compiled_equals_eager_for_every_family_and_policy(tissue, family, policy):
    net = randomised(FAMILIES[family]())
    generator = Generator(net, family, {}, 32 if family == "cyclegan-unet" else 4)
    tile = 128 if family == "cyclegan-unet" else 64  # the U-Net's stride is 32: tiles of 128 + 2 × 32
    image = np.ascontiguousarray(tissue[:200, :300])
    eager = translated(TileRunner(generator, CPU), image, policy, tile)
    runner = TileRunner(generator, CPU)
    warnings = []
    runner.compile(warnings.append, backend="eager")
    compiled = translated(runner, image, policy, tile)
    assert warnings == [] and runner.compiled and graphs() > 0  # it did compile
    # Whole graphs: a break (a tensor read back while tracing, issue 25) ran the compiled apply
    # pass as dozens of pieces, slower than eager.
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert np.abs(compiled - eager).max() <= 1


def test_inductor_compiles_dn_once_whatever_the_edges(tissue):
    """Two images with different ragged edges: once the first has shown batches of two sizes, the
    second adds no graph. The output is the eager one within a grey level (float reassociation)."""
    generator = Generator(randomised(ResnetGenerator(ngf=4, n_blocks=1)), "cyclegan-resnet", {}, 4)
    runner, eager = TileRunner(generator, CPU), TileRunner(generator, CPU)
    runner.compile(pytest.fail)
    first = np.ascontiguousarray(tissue[:150, :300])  # edges 22 and 44 pixels in; 15 tiles, batches of 4 and 3
    second = np.ascontiguousarray(tissue[:200, :330])  # edges 8 and 10; 24 tiles
    assert np.abs(translated(runner, first, "dn") - translated(eager, first, "dn")).max() <= 1
    compiled_for_the_first = graphs()
    assert np.abs(translated(runner, second, "dn") - translated(eager, second, "dn")).max() <= 1
    assert graphs() == compiled_for_the_first and runner.compiled


class Refuses:
    """A torch.compile backend that cannot compile anything (as a model with an op a compiler
    does not support meets)."""

    def __call__(self, graph: torch.fx.GraphModule, example_inputs):
        raise NotImplementedError("no kernel for this model here")


def test_a_model_that_cannot_compile_runs_eagerly_after_one_warning(tissue):
    generator = Generator(randomised(ResnetGenerator(ngf=4, n_blocks=1)), "cyclegan-resnet", {}, 4)
    image = np.ascontiguousarray(tissue[:130, :200])
    runner = TileRunner(generator, CPU)
    warnings = []
    runner.compile(warnings.append, backend=Refuses())
    out = translated(runner, image, "dn")
    assert len(warnings) == 1 and "could not be compiled" in warnings[0] and "no kernel" in warnings[0]
    assert not runner.compiled and not any(getattr(m, "fused", False) for m in runner.module.modules())
    np.testing.assert_array_equal(out, translated(TileRunner(generator, CPU), image, "dn"))


class Fails(nn.Module):
    def forward(self, x):
        raise IndexError("index 7 is out of bounds")


def test_a_model_failing_on_its_own_is_not_taken_for_a_compiler_failure(tissue):
    from dn_cli.errors import ModelError

    runner = TileRunner(Generator(nn.Sequential(nn.Conv2d(3, 3, 1), nn.InstanceNorm2d(3)), "x", {}, 1), CPU)
    runner.module.append(Fails())
    warnings = []
    runner.compile(warnings.append, backend="eager")
    with pytest.raises(ModelError, match="IndexError: index 7"):
        translated(runner, np.ascontiguousarray(tissue[:100, :100]), "in")
    assert warnings == []


@pytest.fixture
def eager_backend(monkeypatch):
    """``--compile on`` through the CLI, with torch.compile's ``eager`` backend (no inductor build)."""
    monkeypatch.setattr(TileRunner.compile, "__defaults__", ("eager",))


def test_bench_compile_reports_the_compiled_figures_beside_the_eager_ones(eager_backend):
    result = CliRunner().invoke(cli, ["bench", "--quick", "--tile-size", "256", "--compile", "on", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["compiled"]["compiled"] is True and graphs() > 0
    for key in ("ceiling_mpx_s", "in_mpx_s", "dn_mpx_s"):
        assert report[key] > 0 and report["compiled"][key] > 0


def test_the_provenance_record_says_whether_the_model_ran_compiled(tmp_path, tissue, checkpoint, eager_backend):
    image = tmp_path / "tissue.png"
    save_picture(np.ascontiguousarray(tissue[:300, :300]), image)
    for choice in ("on", "off"):
        out = tmp_path / f"{choice}.tif"
        result = CliRunner().invoke(
            cli, ["translate", str(image), "-o", str(out), "--model", str(checkpoint), "--compile", choice, "-q"]
        )
        assert result.exit_code == 0, result.output
        record = json.loads(out.with_name(out.name + ".json").read_text())
        assert (record["compiled"], record["device"], record["precision"]) == (choice == "on", "cpu", "fp32")


def test_auto_on_a_cpu_compiles_only_where_the_slide_repays_it():
    """Saved time = forwards × eager forward × (1 − 1/speed-up), against twice the compile time."""
    from dn_cli.compiled import Costs, worth_it

    costs = Costs(compile_s=60, forward_s=0.5 / 1.5)  # a third of every forward saved
    assert not worth_it(100, 0.5, costs)[0]  # 50 s eager: 17 s saved, for 60 s of compiling
    yes, why = worth_it(2000, 0.5, costs)  # 1000 s eager: 333 s saved
    assert yes and "2000 tile forwards" in why and "save ≈ 333 s" in why and "1.50× faster" in why
    assert not worth_it(10**6, 0.5, Costs(compile_s=1, forward_s=0.5))[0]  # no faster: never


def test_the_history_learns_a_compile_and_expects_the_cached_one_to_be_quicker(tmp_path):
    from dn_cli.compiled import CACHED_FRACTION, FIRST_GUESS, Clock, Costs, History

    history = History(tmp_path)
    assert history.costs("m") is FIRST_GUESS  # nothing measured here yet
    clock = Clock()
    for graph, first in ((True, 30.0), (False, 40.0)):  # the first forward of each graph compiles
        clock.add(graph, 4, first)
    assert clock.costs(cached=False) is None  # not yet run twice
    for _ in range(3):
        clock.add(True, 4, 0.8)
        clock.add(False, 4, 1.0)
    measured = clock.costs(cached=False)
    assert measured == Costs(compile_s=30 - 0.8 + 40 - 1.0, forward_s=0.25, cached=False)
    history.record("m", measured)
    expected = history.costs("m")  # its kernels are on disk now
    assert expected.cached and expected.compile_s == pytest.approx(measured.compile_s * CACHED_FRACTION)
    history.record("m", Costs(compile_s=3.0, forward_s=0.3, cached=True))
    assert history.costs("m") == Costs(compile_s=3.0, forward_s=0.3, cached=True)
    history.path.write_text("{not json")  # damaged: a guess again, and no failure
    assert History(tmp_path).costs("m") is FIRST_GUESS


def test_auto_on_a_cpu_decides_per_slide_says_why_and_learns(tmp_path, tissue, checkpoint, eager_backend, monkeypatch):
    """A small slide runs eagerly and says why (--verbose, the provenance); a compiled run records
    what compiling cost, and the next choice starts from it; where compiling was measured cheap
    and fast for this model, the same slide compiles."""
    from dn_cli.compiled import Costs, History

    cache = tmp_path / "kernels"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(cache))
    image = tmp_path / "tissue.png"
    save_picture(np.ascontiguousarray(tissue[:300, :300]), image)

    def run(name: str, *options: str) -> tuple[dict, str]:
        out = tmp_path / f"{name}.tif"
        args = ["translate", str(image), "-o", str(out), "--model", str(checkpoint), "--tile-size", "32"]
        result = CliRunner().invoke(cli, [*args, "-q", "-v", *options])
        assert result.exit_code == 0, result.output
        return json.loads(out.with_name(out.name + ".json").read_text()), result.stderr

    record, said = run("tiny", "--tile-size", "128")  # 9 tiles: 18 forwards, not worth timing the model for
    assert record["compile_choice"] == "eager: 18 tile forwards, too few to repay a compile" and graphs() == 0
    record, said = run("first")  # 100 tiles of 32: 200 forwards
    assert not record["compiled"] and record["compile_choice"].startswith("eager: 200 tile forwards")
    assert f"dn: tissue.png: {record['compile_choice']}" in said and graphs() == 0
    assert not History(cache).path.exists()  # nothing compiled, nothing learnt

    record, _ = run("asked", "--compile", "on")  # a compile asked for is timed too
    (learnt,) = json.loads(History(cache).path.read_text()).values()
    assert record["compiled"] and learnt["compile_s"] >= 0 and learnt["forward_s"] > 0 and "cached_s" not in learnt
    record, said = run("after")  # decided from what was measured, kernels now cached
    assert "measured here" in record["compile_choice"] and "kernels cached" in record["compile_choice"]

    expected = {}  # as if this machine had compiled this model quickly before, to great effect
    cheap = Costs(compile_s=0.001, forward_s=1e-6, cached=True)
    monkeypatch.setattr(History, "costs", lambda self, key: expected.setdefault(key, cheap))
    record, said = run("second")
    assert record["compiled"] and record["compile_choice"].startswith("compiled: 200 tile forwards") and graphs() > 0
    (key,) = expected
    learnt = json.loads(History(cache).path.read_text())[key]
    assert learnt["forward_s"] > 0 and "cached_s" in learnt  # a cached compile measured too, for the next


def test_compiled_equals_eager_with_moments_every_half_tile(tissue):
    """--moment-stride half changes only the apply pass's weights: compiled whole, same pixels."""
    generator = Generator(randomised(ResnetGenerator(ngf=4, n_blocks=1)), "cyclegan-resnet", {}, 4)
    image = np.ascontiguousarray(tissue[:200, :300])
    canvases = []
    for compiled in (False, True):
        runner = TileRunner(generator, CPU)
        if compiled:
            runner.compile(pytest.fail, backend="eager")
        canvas = Canvas(300, 200)
        translate(ArrayImage(image), canvas, runner, tile_size=64, batch_size=4, moment_stride=32)
        canvases.append(canvas.pixels.astype(int))
    assert graphs() > 0 and not counters["graph_break"], dict(counters["graph_break"])
    assert np.abs(canvases[0] - canvases[1]).max() <= 1
