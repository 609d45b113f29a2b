import pytest
import torch

from dn_cli.errors import ModelError
from dn_cli.models import load_generator
from dn_cli.models.resnet import ResnetGenerator


@pytest.mark.parametrize(
    "params",
    [
        {"ngf": 8, "n_blocks": 2},
        {"ngf": 16, "n_blocks": 3, "use_dropout": True},
        {"ngf": 4, "n_blocks": 1, "n_downsampling": 3, "output_nc": 1},
    ],
)
def test_resnet_checkpoint_loads_with_detected_parameters_and_identical_output(tmp_path, params):
    torch.manual_seed(0)
    net = ResnetGenerator(**params).eval()
    path = tmp_path / "latest_net_G_A.pth"
    torch.save(net.state_dict(), path)
    loaded = load_generator(path)
    expected = {"input_nc": 3, "output_nc": 3, "n_downsampling": 2, "use_dropout": False, **params}
    assert loaded.family == "cyclegan-resnet"
    assert loaded.params == expected
    assert loaded.stride == 2 ** expected["n_downsampling"]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), net(x), rtol=0, atol=0)


def test_data_parallel_prefix_is_stripped(tmp_path, generator):
    path = tmp_path / "g.pth"
    torch.save({f"module.{k}": v for k, v in generator.module.state_dict().items()}, path)
    assert load_generator(path).params["ngf"] == 8


def test_strict_loading_names_the_keys_that_do_not_fit(tmp_path, generator):
    sd = generator.module.state_dict()
    sd["model.99.weight"] = torch.zeros(1)
    del sd["model.4.bias"]
    torch.save(sd, tmp_path / "g.pth")
    with pytest.raises(ModelError, match=r"missing keys model\.4\.bias; unexpected keys model\.99\.weight"):
        load_generator(tmp_path / "g.pth")


def test_unknown_and_unreadable_files_are_refused(tmp_path, checkpoint):
    with pytest.raises(ModelError, match="not found"):
        load_generator(tmp_path / "missing.pth")
    torch.save({"encoder.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(ModelError, match="not a generator of a known family"):
        load_generator(tmp_path / "other.pth")
    (tmp_path / "truncated.pth").write_bytes(checkpoint.read_bytes()[:2000])
    with pytest.raises(ModelError, match="truncated"):
        load_generator(tmp_path / "truncated.pth")
    torch.save(ResnetGenerator(ngf=4, n_blocks=1), tmp_path / "whole.pth")
    with pytest.raises(ModelError, match="pickled Python objects"):
        load_generator(tmp_path / "whole.pth")
