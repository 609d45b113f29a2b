"""Open any input: whole-slide formats through OpenSlide, ordinary images through pyvips."""

from __future__ import annotations

from pathlib import Path

from dn_cli.errors import InputError
from dn_cli.image_io import open_image
from dn_cli.images import ImageSource
from dn_cli.slides import SlideImage, is_slide


def open_source(
    path: Path, *, level: int | None = None, mpp: float | None = None, mpp_override: float | None = None
) -> ImageSource:
    """The image to translate: a slide at the chosen resolution, or an ordinary image in memory."""
    if not path.exists():
        raise InputError(f"input not found: {path}")
    if is_slide(path):
        return SlideImage(path, level=level, mpp=mpp, mpp_override=mpp_override)
    if level or mpp:
        raise InputError(f"{path.name} is not a whole-slide image: --level and --mpp need one")
    image = open_image(path)
    if mpp_override:
        image.mpp = mpp_override
    return image
