"""How every slide of a run is translated: one immutable ``Settings``, the defaults ``dn translate`` has."""

from __future__ import annotations

from dataclasses import dataclass

from dn_cli.app.model import Model
from dn_cli.policies import Policy

# Settings that decide what an output holds, and the options that give them: an output made with
# other values is not taken for this run's.
OPTIONS = {
    "level": "--level",
    "mpp": "--mpp",
    "mpp_override": "--mpp-override",
    "policy": "--norm",
    "tile_size": "--tile-size",
    "margin": "--margin",
    "tissue": "--tissue",
    "min_tissue": "--min-tissue",
    "compression": "--compression",
    "quality": "--quality",
    "moment_stride": "--moment-stride",
}
# What an output recorded before an option existed was made with.
BEFORE_RECORDED = {"moment_stride": "tile"}
MOMENT_STRIDES = ("tile", "half")


@dataclass(frozen=True)
class Settings:
    """Everything about how one slide is translated, shared by every slide of a batch.

    ``margin`` None: the smallest the model accepts (``geometry.default_margin``); ``tissue``
    None: on for whole-slide images, off for ordinary pictures.
    """

    level: int | None = None
    mpp: float | None = None
    mpp_override: float | None = None
    allow_upsampling: bool = False
    policy: Policy = "dn"
    tile_size: int = 512
    margin: int | None = None
    batch_size: int = 4
    compression: str = "jpeg"
    quality: int = 85
    tissue: bool | None = None
    min_tissue: float = 0.0
    ome: bool = False
    compile_model: str = "auto"  # --compile: on a CPU, auto decides slide by slide
    moment_stride: str = "tile"  # DN's moments at the tiles, or also halfway between them

    def moment_stride_px(self, tile_size: int) -> int | None:
        """The moment stride in pixels for tiles of ``tile_size`` (None: the tiles')."""
        return tile_size // 2 if self.moment_stride == "half" else None

    def options(self) -> dict:
        """The options that decide an output's pixels and bytes, as its provenance records them."""
        return {name: getattr(self, name) for name in OPTIONS}


@dataclass(frozen=True)
class Run:
    """One run: its model, its settings, and what it may do to outputs that exist.

    ``started``: when the run began, before its model loaded — outputs published since are other
    runs', unlocked temporaries older than it dead runs'.
    """

    model: Model
    settings: Settings
    started: float
    overwrite: bool = False
    fail_fast: bool = False
