"""Load a generator from a checkpoint without running code from the file.

A checkpoint is read with ``torch.load(weights_only=True)``; its family and constructor
parameters are detected from the state dict's keys and shapes, the network is built, and the
weights are loaded strictly (every missing or unexpected key is an error).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dn_cli.errors import ModelError
from dn_cli.models.resnet import ResnetGenerator

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Family:
    """A generator family: how to recognise its state dict and how to build it."""

    name: str
    detect: Callable[[StateDict], dict | None]
    build: Callable[..., nn.Module]


@dataclass
class Generator:
    """A loaded generator in eval mode, with what the pipeline needs to know about it."""

    module: nn.Module
    family: str
    params: dict
    stride: int

    @property
    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.module.parameters())


def _detect_cyclegan_resnet(sd: StateDict) -> dict | None:
    stem = sd.get("model.1.weight")
    if stem is None or stem.ndim != 4 or stem.shape[-1] != 7:
        return None
    blocks = sorted({int(m.group(1)) for k in sd if (m := re.match(r"model\.(\d+)\.conv_block\.", k))})
    if not blocks:
        return None
    convs = sorted(
        int(m.group(1)) for k, v in sd.items() if v.ndim == 4 and (m := re.fullmatch(r"model\.(\d+)\.weight", k))
    )
    return {
        "input_nc": stem.shape[1],
        "output_nc": sd[f"model.{convs[-1]}.weight"].shape[0],
        "ngf": stem.shape[0],
        "n_blocks": len(blocks),
        # Stem conv at 1, then one (conv, norm, relu) triple per down stage before the blocks.
        "n_downsampling": (blocks[0] - 4) // 3,
        "use_dropout": f"model.{blocks[0]}.conv_block.6.weight" in sd,
    }


FAMILIES = [Family("cyclegan-resnet", _detect_cyclegan_resnet, ResnetGenerator)]


def _read_state_dict(path: Path) -> StateDict:
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for foreign or truncated files
        if "Unsupported global" in str(e):
            raise ModelError(
                f"{path} holds pickled Python objects (a whole model?), not a state dict; "
                "dn does not run code from model files"
            ) from e
        raise ModelError(f"cannot read {path}: not a PyTorch checkpoint, or truncated") from e
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{path} does not hold a state dict of tensors")
    # Checkpoints saved from nn.DataParallel prefix every key with "module.".
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _list(keys: list[str], limit: int = 5) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def build_generator(family: Family, params: dict, sd: StateDict, source: str) -> Generator:
    """Build ``family`` with ``params`` and load ``sd`` strictly, naming every key that does not fit."""
    module = family.build(**params)
    expected = module.state_dict()
    problems = []
    if missing := [k for k in expected if k not in sd]:
        problems.append(f"missing keys {_list(missing)}")
    if unexpected := [k for k in sd if k not in expected]:
        problems.append(f"unexpected keys {_list(unexpected)}")
    if mismatched := [k for k in expected if k in sd and sd[k].shape != expected[k].shape]:
        problems.append(f"wrong shapes for {_list(mismatched)}")
    if problems:
        raise ModelError(f"{source} does not match {family.name} {params}: {'; '.join(problems)}")
    module.load_state_dict(sd, strict=True)
    module.eval().requires_grad_(False)
    return Generator(module, family.name, params, getattr(module, "stride", 1))


def load_generator(path: Path) -> Generator:
    """Load the generator in ``path``, detecting its family from the state dict."""
    sd = _read_state_dict(path)
    for family in FAMILIES:
        params = family.detect(sd)
        if params is not None:
            return build_generator(family, params, sd, str(path))
    names = ", ".join(f.name for f in FAMILIES)
    raise ModelError(f"{path} is not a generator of a known family ({names})")
