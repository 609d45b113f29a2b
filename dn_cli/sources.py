"""Open any input: whole-slide formats through OpenSlide, ordinary images through pyvips."""

from __future__ import annotations

from pathlib import Path

from dn_cli.errors import InputError
from dn_cli.image_io import open_image
from dn_cli.images import ImageSource
from dn_cli.slides import SlideImage, is_slide


def open_source(
    path: Path,
    *,
    level: int | None = None,
    mpp: float | None = None,
    mpp_override: float | None = None,
    allow_upsampling: bool = False,
) -> ImageSource:
    """The image to translate: a slide at the chosen resolution, or an ordinary image in memory."""
    if not path.exists():
        raise InputError(f"input not found: {path}")
    if path.is_dir():
        raise InputError(f"{path} is a folder, not an image")
    if is_slide(path):
        return SlideImage(path, level=level, mpp=mpp, mpp_override=mpp_override, allow_upsampling=allow_upsampling)
    if level or mpp:
        raise InputError(f"{path.name} is not a whole-slide image: --level and --mpp need one")
    image = open_image(path)
    if mpp_override:
        image.mpp = mpp_override
    return image
