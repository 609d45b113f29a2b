"""Open any input, read by region: whole-slide formats through OpenSlide, other TIFFs through
tifffile, everything else through libvips."""

from __future__ import annotations

from pathlib import Path

from dn_cli.errors import InputError
from dn_cli.image_io import VipsImage
from dn_cli.images import ImageSource
from dn_cli.slides import SlideImage, slide_format
from dn_cli.tiff_image import TiffImage, Unsupported, incomplete, is_ome, is_tiff


def open_source(
    path: Path,
    *,
    level: int | None = None,
    mpp: float | None = None,
    mpp_override: float | None = None,
    allow_upsampling: bool = False,
) -> ImageSource:
    """The image to translate, at the chosen resolution where the file has several."""
    if not path.exists():
        raise InputError(f"input not found: {path}")
    if path.is_dir():
        raise InputError(f"{path} is a folder, not an image")
    if not path.is_file():
        raise InputError(f"{path} is a pipe or a device, not a file: dn reads images region by region; save it first")
    if is_tiff(path) and (damage := incomplete(path)):
        raise InputError(f"cannot read {path}: damaged or incomplete ({damage})")
    resolution = {"level": level, "mpp": mpp, "mpp_override": mpp_override, "allow_upsampling": allow_upsampling}
    fmt = slide_format(path)
    if fmt is not None and not (fmt == "generic-tiff" and is_ome(path)):  # OpenSlide sees one level of an OME-TIFF
        return SlideImage(path, **resolution)
    if is_tiff(path):
        try:
            return TiffImage(path, **resolution)
        except Unsupported:
            pass  # libvips reads it, as one level
    if level or mpp:
        raise InputError(f"{path.name} has one resolution only: --level and --mpp need a slide or a pyramidal TIFF")
    image = VipsImage(path)
    image.mpp = image.mpp or mpp_override  # never over a recorded pixel size
    return image
