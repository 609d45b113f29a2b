"""``dn info``, ``dn models`` and the model options of ``dn translate``."""

import hashlib
import json
import shlex
from pathlib import Path

import pytest
import pyvips
import skimage.io
import torch
from click.testing import CliRunner
from torch import nn

from dn_cli.cli import cli
from dn_cli.models import DEMO_MODEL, families

REPO = Path(__file__).resolve().parents[1]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture
def image(tmp_path, tissue):
    path = tmp_path / "ihc.png"
    skimage.io.imsave(path, tissue[:128, :160], check_contrast=False)
    return path


def test_models_lists_every_family():
    result = invoke("models", "--json")
    assert result.exit_code == 0
    names = [json.loads(line)["name"] for line in result.stdout.splitlines()]
    assert names == [f.name for f in families()] and "cut-resnet" in names and "dn-research" in names


def test_info_on_a_model(checkpoint):
    result = invoke("info", checkpoint, "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["family"] == "cyclegan-resnet" and record["stride"] == 4
    assert record["norm_layers"] == 1 + 2 + 2 * 2 + 2
    assert record["params"]["ngf"] == 8 and record["parameters"] > 0
    text = invoke("info", checkpoint).stdout
    assert "family:" in text and "cyclegan-resnet" in text


def test_info_on_images(image):
    record = json.loads(invoke("info", image, "--json").stdout)
    assert (record["width"], record["height"], record["levels"], record["mpp"]) == (160, 128, 1, None)
    sample = json.loads(invoke("info", REPO / "examples" / "sample_ihc.tif", "--json").stdout)
    assert (sample["width"], sample["height"], sample["mpp"]) == (2560, 1792, 0.5) and sample["levels"] >= 3


def test_translate_uses_the_bundled_model_by_default(tmp_path, image):
    out = tmp_path / "out.png"
    result = invoke("translate", image, "-o", out, "--tile-size", 64, "-q")
    assert result.exit_code == 0, result.output
    assert pyvips.Image.new_from_file(str(out)).width == 160
    record = json.loads((tmp_path / "out.png.json").read_text())
    assert record["model_sha256"] == hashlib.sha256(DEMO_MODEL.read_bytes()).hexdigest()


def test_translate_with_trusted_pickled_model_and_forced_arch(tmp_path, image, generator):
    whole = tmp_path / "whole.pth"
    torch.save(generator.module, whole)
    refused = invoke("translate", image, "-o", tmp_path / "a.png", "--model", whole)
    assert refused.exit_code == 1 and "--trust-model-code" in refused.stderr
    trusted = invoke(
        "translate",
        image,
        "-o",
        tmp_path / "a.png",
        "--model",
        whole,
        "--trust-model-code",
        "-q",
        "--tile-size",
        64,
        "--arch",
        "cyclegan-resnet",
    )
    assert trusted.exit_code == 0, trusted.output


class Plain(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return torch.tanh(self.conv(x))


def test_a_model_without_instance_norm_warns(tmp_path, image):
    torch.save(Plain(), tmp_path / "plain.pth")
    result = invoke(
        "translate",
        image,
        "-o",
        tmp_path / "o.png",
        "--model",
        tmp_path / "plain.pth",
        "--trust-model-code",
        "-q",
        "--tile-size",
        64,
    )
    assert result.exit_code == 0, result.output
    assert "no InstanceNorm layers: DN changes nothing" in result.stderr


def test_unknown_family_is_one_line(tmp_path, image):
    torch.save({"encoder.weight": torch.zeros(2, 2)}, tmp_path / "enc.pth")
    result = invoke("translate", image, "-o", tmp_path / "o.png", "--model", tmp_path / "enc.pth")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "known family (" in lines[0] and "closest is" in lines[0]


def test_readme_first_command_on_the_sample_slide(tmp_path, monkeypatch):
    (line,) = [x for x in (REPO / "README.md").read_text().splitlines() if x.startswith("dn translate examples/")]
    args = [REPO / arg if arg.startswith("examples/") else arg for arg in shlex.split(line)[2:]]
    monkeypatch.chdir(tmp_path)
    result = invoke("translate", *args, "-q")
    assert result.exit_code == 0, result.output
    written = pyvips.Image.new_from_file(str(tmp_path / "out" / "sample.tif"))  # in out/, which git ignores
    assert (written.width, written.height) == (2560, 1792)
    assert pyvips.Image.new_from_file(str(tmp_path / "out" / "sample_preview.png")).width > 0
    assert "/out/" in (REPO / ".gitignore").read_text().splitlines()
