"""Which resolution of a multi-resolution image to read, by level or by pixel size.

Shared by slides (OpenSlide) and pyramidal TIFFs (tifffile), so ``--level`` and ``--mpp`` mean
the same on both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dn_cli.errors import InputError

MAX_UPSAMPLING = 4  # --allow-upsampling enlarges a scan this much at most (16× the pixels)
SCREEN_MPP = 50.0  # µm per pixel: a recorded size this coarse is a screen or print default, not a microscope's


def plausible_mpp(recorded: float | None) -> float | None:
    """A pixel size a file records, or None where no microscope gives it: 72 dpi (353 µm),
    300 dpi (85 µm) and libvips' 1 pixel per mm (1000 µm) are what files get by default."""
    if recorded is None or not math.isfinite(recorded) or not 0 < recorded < SCREEN_MPP:
        return None
    return recorded


@dataclass(frozen=True)
class Resolution:
    """The pixels an image serves: ``level`` read, then shrunk by ``scale`` (1 = as stored)."""

    level: int
    scale: float
    downsample: float  # from full resolution to the pixels served
    mpp: float | None  # µm per served pixel, when the file or the user says
    width: int
    height: int


def choose_resolution(
    name: str,
    size: tuple[int, int],
    downsamples: list[float],
    base_mpp: float | None,
    *,
    level: int | None = None,
    mpp: float | None = None,
    allow_upsampling: bool = False,
) -> Resolution:
    """The resolution asked for: pyramid ``level``, or pixel size ``mpp`` in µm (read from the
    nearest finer level and area-averaged down to it).

    Args:
        name: the file's name, for messages.
        size: full-resolution (width, height) of the part of the image that is served.
        downsamples: each level's downsample from full resolution (the first is 1).
        base_mpp: µm per full-resolution pixel, if known.
        allow_upsampling: accept an ``mpp`` finer than full resolution.
    """
    if mpp is not None:
        if base_mpp is None:
            raise InputError(
                f"{name} records no pixel size: give it with --mpp-override (µm per pixel at full resolution)"
            )
        if mpp < base_mpp * (1 - 1e-6) and not allow_upsampling:
            raise InputError(
                f"--mpp {mpp} is finer than {name} was scanned: its finest is {base_mpp:g} µm/px "
                "(upsampling invents no detail; --allow-upsampling does it anyway)"
            )
        wanted = mpp / base_mpp
        if wanted < 1 / MAX_UPSAMPLING:
            width, height = (pixels(n / wanted) for n in size)
            raise InputError(
                f"--mpp {mpp:g} would enlarge {name} {1 / wanted:.3g}× to {width} × {height} pixels: "
                f"--allow-upsampling goes to {MAX_UPSAMPLING}× at most (--mpp {base_mpp / MAX_UPSAMPLING:g})"
            )
        level = max((i for i, d in enumerate(downsamples) if d <= wanted * (1 + 1e-9)), default=0)
        scale = wanted / downsamples[level]
    else:
        level = level or 0
        if not 0 <= level < len(downsamples):
            raise InputError(f"{name} has levels 0 to {len(downsamples) - 1}, not {level}")
        scale = 1.0
    downsample = downsamples[level] * scale
    width, height = int(size[0] / downsample), int(size[1] / downsample)
    if min(width, height) < 1:
        coarsest = f"--mpp {base_mpp * min(size):g}" if mpp else "a finer level"
        raise InputError(f"{name} would be {width} × {height} pixels at this scale: use {coarsest} at most")
    return Resolution(level, scale, downsample, base_mpp * downsample if base_mpp else None, width, height)


def pixels(count: float) -> str:
    """A pixel count as people read it: ``256,000``, or ``2.6e+18`` past what digits help with."""
    return f"{count:,.0f}" if count < 1e12 else f"{count:.2g}"
