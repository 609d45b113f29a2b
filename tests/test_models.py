"""Every supported family: built here, saved as its framework saves it, loaded back through dn."""

import numpy as np
import pytest
import torch
from torch import nn

from dn_cli.dense_norm import DensePass
from dn_cli.errors import ModelError
from dn_cli.models import load_generator
from dn_cli.models.dn_generator import DnResearchGenerator
from dn_cli.models.loading import families
from dn_cli.models.resnet import ResnetGenerator
from dn_cli.models.unet import UnetGenerator
from dn_cli.moments import MomentRing
from dn_cli.pipeline import TileRunner

# (family, network, parameters dn must detect, input size)
CASES = [
    (
        "cyclegan-resnet",
        lambda: ResnetGenerator(ngf=8, n_blocks=2),
        {"ngf": 8, "n_blocks": 2, "use_dropout": False},
        64,
    ),
    (
        "cyclegan-resnet",
        lambda: ResnetGenerator(ngf=16, n_blocks=3, use_dropout=True),
        {"ngf": 16, "n_blocks": 3, "use_dropout": True},
        64,
    ),
    (
        "cyclegan-resnet",
        lambda: ResnetGenerator(ngf=4, n_blocks=1, n_downsampling=3),
        {"n_downsampling": 3, "output_nc": 3},
        64,
    ),
    (
        "cut-resnet",
        lambda: ResnetGenerator(ngf=8, n_blocks=2, antialias_down=True, antialias_up=True),
        {"antialias_down": True, "antialias_up": True, "n_downsampling": 2},
        64,
    ),
    (
        "cut-resnet",
        lambda: ResnetGenerator(ngf=8, n_blocks=2, antialias_down=True, antialias_up=False),
        {"antialias_down": True, "antialias_up": False},
        64,
    ),
    (
        "cut-resnet",
        lambda: ResnetGenerator(ngf=8, n_blocks=1, antialias_down=False, antialias_up=True),
        {"antialias_down": False, "antialias_up": True},
        64,
    ),
    ("cyclegan-unet", lambda: UnetGenerator(num_downs=7, ngf=4), {"num_downs": 7, "ngf": 4}, 128),
    ("cyclegan-unet", lambda: UnetGenerator(num_downs=8, ngf=2, use_dropout=True), {"num_downs": 8}, 256),
    ("dn-research", lambda: DnResearchGenerator(features=8, residuals=2), {"features": 8, "residuals": 2}, 64),
]


def randomised(net: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for name, p in net.named_parameters():
        nn.init.normal_(p, std=0.2 if name.endswith("weight") else 0.05)
    return net.eval()


@pytest.mark.parametrize("family,make,expected,size", CASES)
def test_family_loads_with_detected_parameters_and_identical_output(tmp_path, family, make, expected, size):
    net = randomised(make())
    path = tmp_path / "latest_net_G.pth"
    torch.save(net.state_dict(), path)  # what save_networks / the DN code write
    loaded = load_generator(path)
    assert loaded.family == family
    assert expected.items() <= loaded.params.items()
    assert loaded.stride == net.stride
    assert loaded.norm_layers == sum(isinstance(m, nn.InstanceNorm2d) for m in net.modules()) > 0
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), net(x), rtol=0, atol=0)


@pytest.mark.parametrize("family,make,expected,size", [CASES[i] for i in (0, 3, 6, 8)])
def test_dn_on_a_one_tile_grid_equals_each_family(tmp_path, family, make, expected, size):
    net = randomised(make())
    runner = TileRunner(load_generator_from(net, tmp_path), torch.device("cpu"))
    runner.geometry = DensePass(tile_size=size, margin=0)
    tile = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    ring = MomentRing(runner.layout, 1, 1, 1, torch.device("cpu"))
    ring.write([0], runner.collect(tile), oldest_needed_row=-1)
    with torch.no_grad():
        expected_out = net(torch.from_numpy(tile).permute(0, 3, 1, 2).float() / 127.5 - 1)
    torch.testing.assert_close(runner.forward(tile, ring.gather(range(1))), expected_out, atol=2e-5, rtol=1e-4)


def load_generator_from(net, tmp_path, **kwargs):
    torch.save(net.state_dict(), tmp_path / "g.pth")
    return load_generator(tmp_path / "g.pth", **kwargs)


def test_wrapped_and_prefixed_checkpoints(tmp_path, generator):
    sd = generator.module.state_dict()
    other = {k: torch.zeros_like(v) for k, v in sd.items()}
    for name, obj in [
        ("wrapped", {"epoch": 7, "state_dict": sd}),
        ("cyclegan-pair", {"netG_A": sd, "netG_B": other, "optimizer": {"lr": 1e-4}}),
        ("data-parallel", {f"module.{k}": v for k, v in sd.items()}),
    ]:
        torch.save(obj, tmp_path / f"{name}.pth")
        loaded = load_generator(tmp_path / f"{name}.pth")
        torch.testing.assert_close(loaded.module.state_dict(), sd, msg=name)


def test_torchscript_is_rebuilt_from_its_weights(tmp_path, generator):
    torch.jit.script(generator.module).save(str(tmp_path / "scripted.pt"))
    torch.jit.trace(generator.module, torch.randn(1, 3, 32, 32)).save(str(tmp_path / "traced.pt"))
    for name in ("scripted.pt", "traced.pt"):
        loaded = load_generator(tmp_path / name)
        assert loaded.file_format == "TorchScript" and loaded.family == "cyclegan-resnet"
        x = torch.randn(1, 3, 48, 48)
        with torch.no_grad():
            torch.testing.assert_close(loaded.module(x), generator.module(x))


class CustomGenerator(nn.Module):
    """A generator of no known family (module-level so it can be pickled)."""

    def __init__(self):
        super().__init__()
        self.encode = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.InstanceNorm2d(4), nn.ReLU())
        self.decode = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(4, 3, 3, padding=1), nn.Tanh())

    def forward(self, x):
        return self.decode(self.encode(x))


def test_pickled_modules_need_trust(tmp_path, generator):
    torch.save(generator.module, tmp_path / "whole.pth")
    with pytest.raises(ModelError, match="--trust-model-code"):
        load_generator(tmp_path / "whole.pth")
    trusted = load_generator(tmp_path / "whole.pth", trust_code=True)
    assert trusted.family == "cyclegan-resnet" and trusted.file_format == "pickled module"

    torch.save(randomised(CustomGenerator()), tmp_path / "custom.pth")
    custom = load_generator(tmp_path / "custom.pth", trust_code=True)
    assert (custom.family, custom.stride, custom.norm_layers) == ("CustomGenerator", 2, 1)


def with_tracked_instance_norm(module: nn.Module) -> nn.Module:
    """``module`` with every InstanceNorm recording running averages (``track_running_stats=True``)."""
    for name, child in module.named_children():
        if isinstance(child, nn.InstanceNorm2d):
            setattr(module, name, nn.InstanceNorm2d(child.num_features, track_running_stats=True))
        else:
            with_tracked_instance_norm(child)
    return module


def test_pre_0_4_running_statistics_are_ignored(tmp_path, generator):
    # PyTorch < 0.4 saved running_mean/var for InstanceNorm (unused); old CycleGAN checkpoints have them.
    sd = dict(generator.module.state_dict())
    tracked = with_tracked_instance_norm(ResnetGenerator(ngf=8, n_blocks=2)).state_dict()
    sd.update({k: v for k, v in tracked.items() if k.endswith(("running_mean", "running_var"))})
    torch.save(sd, tmp_path / "old.pth")
    loaded = load_generator(tmp_path / "old.pth")
    torch.testing.assert_close(loaded.module.state_dict(), generator.module.state_dict())
    assert loaded.notes == ["ignored 18 unused InstanceNorm running statistics (PyTorch < 0.4)"]
    assert loaded.warnings == []


def test_models_trained_with_running_averages_load_with_a_warning(tmp_path):
    module = with_tracked_instance_norm(ResnetGenerator(ngf=8, n_blocks=2)).eval()
    torch.save(module.state_dict(), tmp_path / "tracked.pth")
    torch.save(module, tmp_path / "tracked_module.pth")
    for loaded in (
        load_generator(tmp_path / "tracked.pth"),
        load_generator(tmp_path / "tracked_module.pth", trust_code=True),
    ):
        (warning,) = loaded.warnings
        assert "track_running_stats=True" in warning and "differ from the model's eval mode" in warning


def test_arch_forces_a_family(tmp_path, generator):
    path = tmp_path / "g.pth"
    torch.save(generator.module.state_dict(), path)
    assert load_generator(path, arch="cyclegan-resnet").family == "cyclegan-resnet"
    with pytest.raises(ModelError, match="not a dn-research state dict"):
        load_generator(path, arch="dn-research")
    with pytest.raises(ModelError, match="unknown --arch 'resnet'; known: cut-resnet, cyclegan-resnet"):
        load_generator(path, arch="resnet")


def test_strict_loading_names_the_keys_that_do_not_fit(tmp_path, generator):
    sd = generator.module.state_dict()
    sd["model.99.weight"] = torch.zeros(1)
    del sd["model.4.bias"]
    torch.save(sd, tmp_path / "g.pth")
    with pytest.raises(ModelError, match=r"missing keys model\.4\.bias; unexpected keys model\.99\.weight"):
        load_generator(tmp_path / "g.pth")


def test_unknown_family_names_the_families_and_the_closest(tmp_path, generator):
    sd = dict(generator.module.state_dict())
    sd["extra_head.weight"] = torch.zeros(3, 3, 1, 1)
    torch.save(sd, tmp_path / "g.pth")
    names = ", ".join(f.name for f in families())
    with pytest.raises(
        ModelError,
        match=rf"known family \({names}\); closest is cyclegan-resnet, "
        r"but it has keys that do not fit: extra_head\.weight",
    ):
        load_generator(tmp_path / "g.pth")
    torch.save({"encoder.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(ModelError, match="not a generator of a known family"):
        load_generator(tmp_path / "other.pth")


def test_wrong_input_channels_are_refused(tmp_path):
    with pytest.raises(ModelError, match="expects 1 input channel; dn translates RGB images"):
        load_generator_from(ResnetGenerator(input_nc=1, ngf=4, n_blocks=1), tmp_path)


def test_unreadable_files_are_refused(tmp_path, checkpoint):
    with pytest.raises(ModelError, match="not found"):
        load_generator(tmp_path / "missing.pth")
    (tmp_path / "truncated.pth").write_bytes(checkpoint.read_bytes()[:2000])
    with pytest.raises(ModelError, match="truncated"):
        load_generator(tmp_path / "truncated.pth")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "meta.pth")
    with pytest.raises(ModelError, match="without a state dict"):
        load_generator(tmp_path / "meta.pth")


# The Dense Normalization and URUST repositories' generator (Kaminyou/Dense-Normalization and
# Kaminyou/URUST, models/generator.py, downsample.py, upsample.py), written here from their
# published structure: the attribute names are what their checkpoints' keys are made of.
class PublishedDownsample(nn.Module):
    def __init__(self, features):
        super().__init__()
        self.reflectionpad = nn.ReflectionPad2d(1)
        self.conv = nn.Conv2d(features, features, kernel_size=3, stride=2)

    def forward(self, x):
        return self.conv(self.reflectionpad(x))


class PublishedUpsample(nn.Module):
    def __init__(self, features):
        super().__init__()
        self.model = nn.Sequential(
            nn.ReplicationPad2d(1), nn.ConvTranspose2d(features, features, kernel_size=4, stride=2, padding=3)
        )

    def forward(self, x):
        return self.model(x)


class RegisteredAffineNorm(nn.Module):
    """Their TIN / KIN / DN layers as trained (per-tile statistics), where the affine weights got
    registered: ``(1, C, 1, 1)`` parameters named ``weight`` and ``bias``."""

    def __init__(self, features):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1, features, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, features, 1, 1))

    def forward(self, x):
        return torch.nn.functional.instance_norm(x) * self.weight + self.bias


class PublishedBlock(nn.Module):
    def __init__(self, norm, in_features, out_features, up=False, down=False):
        super().__init__()
        self.up, self.down = up, down
        if up:
            self.upsample = PublishedUpsample(in_features)
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=3, stride=1, padding=1)
        self.instancenorm = norm(out_features)
        self.relu = nn.ReLU(True)
        if down:
            self.downsample = PublishedDownsample(out_features)

    def forward(self, x):
        x = self.upsample(x) if self.up else x
        x = self.relu(self.instancenorm(self.conv(x)))
        return self.downsample(x) if self.down else x


class PublishedResnetBlock(nn.Module):
    def __init__(self, norm, features):
        super().__init__()
        self.model = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(features, features, kernel_size=3),
            norm(features),
            nn.ReLU(True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(features, features, kernel_size=3),
            norm(features),
        )

    def forward(self, x):
        return x + self.model(x)


class PublishedGenerator(nn.Module):
    def __init__(self, norm, features=8, residuals=2):
        super().__init__()
        f = features
        self.reflectionpad = nn.ReflectionPad2d(3)
        self.block1 = nn.Sequential(nn.Conv2d(3, f, kernel_size=7), norm(f), nn.ReLU(True))
        self.downsampleblock2 = PublishedBlock(norm, f, f * 2, down=True)
        self.downsampleblock3 = PublishedBlock(norm, f * 2, f * 4, down=True)
        self.resnetblocks4 = nn.Sequential(*[PublishedResnetBlock(norm, f * 4) for _ in range(residuals)])
        self.upsampleblock5 = PublishedBlock(norm, f * 4, f * 2, up=True)
        self.upsampleblock6 = PublishedBlock(norm, f * 2, f, up=True)
        self.block7 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(f, 3, kernel_size=7), nn.Tanh())

    def forward(self, x):
        x = self.downsampleblock3(self.downsampleblock2(self.block1(self.reflectionpad(x))))
        return self.block7(self.upsampleblock6(self.upsampleblock5(self.resnetblocks4(x))))


@pytest.mark.parametrize("norm", [nn.InstanceNorm2d, RegisteredAffineNorm], ids=["in", "tin-kin-dn"])
def test_the_research_codes_published_checkpoints_load_and_translate_the_same(tmp_path, norm):
    net = randomised(PublishedGenerator(norm)).eval()
    path = tmp_path / "latest_net_G.pth"
    torch.save(net.state_dict(), path)  # what their training scripts write
    loaded = load_generator(path)
    assert loaded.family == "dn-research"
    assert loaded.params == {"in_channels": 3, "features": 8, "residuals": 2, "affine": norm is RegisteredAffineNorm}
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), net(x), rtol=1e-5, atol=1e-5)
