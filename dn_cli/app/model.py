"""The model a run translates with: loaded once, named and hashed for provenance."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dn_cli.models import DEMO_MODEL, Generator, generator_of_module, load_generator
from dn_cli.provenance import file_sha256


@dataclass
class Model:
    """A generator and where it came from: a file (``path``), or a live module (``path`` None).

    Sent to ``--devices`` workers without its weights when it has a file (each worker loads it,
    as TorchScript cannot be pickled); a live module travels whole.
    """

    generator: Generator | None
    path: Path | None
    sha256: str
    arch: str | None = None
    trust_code: bool = False

    @property
    def name(self) -> str:
        """How messages and provenance name it: its file's name, or its class's."""
        return self.path.name if self.path is not None else self.loaded().name

    @property
    def where(self) -> str:
        """What provenance records as the model: its file's full path, or ``module <class>``."""
        return str(self.path.resolve()) if self.path is not None else f"module {self.loaded().name}"

    def loaded(self) -> Generator:
        """The generator, loaded here if this copy came without it."""
        if self.generator is None:
            self.generator = load_generator(self.path, arch=self.arch, trust_code=self.trust_code)
        return self.generator

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if self.path is not None:
            state["generator"] = None
        return state


def load_model(
    model: str | Path | nn.Module | Model | None = None, *, arch: str | None = None, trust_code: bool = False
) -> Model:
    """A model file (every format ``dn translate`` loads), a live ``torch.nn.Module`` (its family
    and stride found as a file's), or None for the bundled demo model. ``arch`` forces a
    family; ``trust_code`` allows pickled whole-model files (which can run code on loading)."""
    if isinstance(model, Model):
        return model
    if isinstance(model, nn.Module):
        generator = generator_of_module(model, arch=arch)
        return Model(generator, None, module_sha256(generator.module), arch)
    path = Path(DEMO_MODEL if model is None else model)
    return Model(load_generator(path, arch=arch, trust_code=trust_code), path, file_sha256(path), arch, trust_code)


def module_sha256(module: nn.Module) -> str:
    """A live module's identity: the hash of its weights' names, types, shapes and values."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
