"""Vendor slide formats written at test time by real writer libraries, read through OpenSlide."""

import json
import shutil
import struct
import warnings

import numpy as np
import openslide
import pytest
import pyvips
import tifffile
from click.testing import CliRunner
from skimage.transform import resize

from dn_cli.cli import cli
from dn_cli.geometry import Box
from dn_cli.sources import open_source

APERIO = "Aperio Image Library v12.0.15"


def shrink(pixels: np.ndarray, factor: int) -> np.ndarray:
    h, w = pixels.shape[:2]
    return (resize(pixels, (h // factor, w // factor), anti_aliasing=True) * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def svs(tmp_path_factory, tissue):
    """An Aperio SVS as tifffile writes it: tiled JPEG level 0 whose description carries the
    pixel size, a stripped thumbnail page, then tiled reduced levels (JPEG tiles need imagecodecs)."""
    pixels = np.ascontiguousarray(np.tile(tissue, (2, 3, 1))[:1024, :1536])
    glass = pixels.copy()
    glass[:, 1024:] = 242  # a third of the slide is empty glass
    path = tmp_path_factory.mktemp("svs") / "case.svs"
    first = f"{APERIO}\n1536x1024 [0,0 1536x1024] (256x256) JPEG/RGB Q=90|AppMag = 20|MPP = 0.499"
    with tifffile.TiffWriter(path) as tif:
        tif.write(glass, tile=(256, 256), compression="jpeg", photometric="rgb", description=first, metadata=None)
        tif.write(
            shrink(glass, 4),
            rowsperstrip=16,
            compression="jpeg",
            photometric="rgb",
            metadata=None,
            description=f"{APERIO}\n1536x1024 -> 384x256",
        )
        for factor in (4, 16):
            tif.write(
                shrink(glass, factor),
                tile=(64, 64),
                compression="jpeg",
                photometric="rgb",
                subfiletype=1,
                metadata=None,
                description=f"{APERIO}\n1536x1024 -> {1536 // factor}x{1024 // factor}",
            )
    return path


def translate(*args):
    return CliRunner().invoke(cli, ["translate", *map(str, args), "-q", "--tile-size", "256"])


def test_openslide_reads_the_svs_as_aperio_with_its_pixel_size(svs):
    with openslide.OpenSlide(str(svs)) as slide:
        assert slide.properties["openslide.vendor"] == "aperio"
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.499)
        assert slide.level_dimensions == ((1536, 1024), (384, 256), (96, 64))
        assert "thumbnail" in slide.associated_images
    info = json.loads(CliRunner().invoke(cli, ["info", str(svs), "--json"]).stdout)
    assert (info["format"], info["mpp"], info["levels"]) == ("aperio", 0.499, 3)


@pytest.mark.parametrize(
    "args,size,mpp",
    [
        ([], (1536, 1024), 0.499),
        (["--level", "1"], (384, 256), 0.499 * 4),
        (["--mpp", "1.0"], (766, 510), 1.0),  # level 0 (0.499) shrunk by 2.004
    ],
)
def test_svs_translated_at_the_chosen_scale_and_recorded(tmp_path, svs, checkpoint, args, size, mpp):
    out = tmp_path / "out.tif"
    result = translate(svs, "-o", out, "--model", checkpoint, *args)
    assert result.exit_code == 0, result.output
    with openslide.OpenSlide(str(out)) as slide:
        assert slide.dimensions == size
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(mpp, rel=1e-6)
    record = json.loads((tmp_path / "out.tif.json").read_text())
    assert record["mpp"] == pytest.approx(mpp) and record["tissue_tiles"] is not None


def test_tissue_detection_on_the_svs_skips_the_glass(tmp_path, svs, checkpoint):
    result = translate(svs, "-o", tmp_path / "out.tif", "--model", checkpoint, "--json")
    record = json.loads(result.stdout)
    assert record["tiles"] == 24 and 0 < record["tiles_skipped"] <= 8  # the glass third: 8 of 24 tiles at most


def dicomize(svs, folder, levels: list[int]) -> list[str]:
    """The SVS converted to a DICOM WSI series (one file per level) by wsidicomizer, reading the
    SVS through tiffslide (its opentile reader would need the system's libturbojpeg); 64-pixel
    tiles, levels made by halving."""
    folder.mkdir()
    with warnings.catch_warnings():  # pydicom's deprecations inside the writer, not dn's concern
        warnings.simplefilter("ignore", DeprecationWarning)
        from wsidicomizer import WsiDicomizer
        from wsidicomizer.sources import TiffSlideSource

        return WsiDicomizer.convert(
            svs,
            folder,
            tile_size=64,
            add_missing_levels=True,
            include_levels=levels,
            include_label=False,
            include_overview=False,
            include_thumbnail=False,
            preferred_source=TiffSlideSource,
        )


@pytest.fixture(scope="module")
def dicom(tmp_path_factory, svs):
    folder = tmp_path_factory.mktemp("dicom") / "case"
    assert len(dicomize(svs, folder, [0, 1, 2, 3])) == 4  # levels 1536, 768, 384, 192 wide: whole tiles
    return folder


def test_a_dicom_level_openslide_cannot_decode_is_one_line(tmp_path, svs, checkpoint):
    # Level 4 (96 × 64) is a tile and a half wide; the writer stores the half tile cropped, which
    # OpenSlide refuses to decode. The tissue thumbnail comes from that level: the error names the file and the level.
    folder = tmp_path / "case"
    dicomize(svs, folder, [0, 1, 2, 3, 4])
    result = translate(sorted(folder.glob("*.dcm"))[0], "-o", tmp_path / "out.tif", "--model", checkpoint)
    assert result.exit_code == 1
    assert result.stderr.startswith("dn: error: cannot read") and "(level 4)" in result.stderr
    assert "unexpected" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_openslide_reads_the_dicom_series_with_its_pixel_size(dicom):
    instance = sorted(dicom.glob("*.dcm"))[0]
    with openslide.OpenSlide(str(instance)) as slide:  # any file of the series opens all of it
        assert slide.properties["openslide.vendor"] == "dicom"
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.499)
        assert slide.level_dimensions == tuple((1536 >> k, 1024 >> k) for k in range(4))
    info = json.loads(CliRunner().invoke(cli, ["info", str(instance), "--json"]).stdout)
    assert (info["format"], info["mpp"], info["levels"]) == ("dicom", pytest.approx(0.499), 4)


@pytest.mark.parametrize(
    "args,size,mpp",
    [
        ([], (1536, 1024), 0.499),
        (["--level", "1"], (768, 512), 0.499 * 2),
        (["--mpp", "1.5"], (510, 340), 1.5),  # level 1 (0.998) shrunk by 1.503
    ],
)
def test_dicom_folder_translated_once_at_the_chosen_scale(tmp_path, dicom, checkpoint, args, size, mpp):
    out = tmp_path / "out"
    result = translate(dicom, "-o", out, "--model", checkpoint, "--json", *args)
    assert result.exit_code == 0, result.output
    outputs = sorted(out.glob("*.tif"))
    assert len(outputs) == 1  # a series of four files is one slide
    with openslide.OpenSlide(str(outputs[0])) as slide:
        assert slide.dimensions == size
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(mpp, rel=1e-6)
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert json.loads(outputs[0].with_name(outputs[0].name + ".json").read_text())["tissue_tiles"] is not None
    if not args:  # the glass third: some of the 24 tiles (at coarser scales tissue reaches every column)
        assert record["tiles_skipped"] > 0


def test_a_flat_folder_of_two_dicom_slides_gives_two_outputs(tmp_path, svs, dicom, checkpoint):
    """A flat export: two slides' series in one folder. Each series is one slide, named after
    what its header calls it, never after an instance UID."""
    flat = tmp_path / "export"
    flat.mkdir()
    second = tmp_path / "second"
    dicomize(svs, second, [0, 1])
    for path in [*dicom.glob("*.dcm"), *second.glob("*.dcm")]:
        shutil.copy(path, flat / path.name)
    dry = translate(flat, "-o", tmp_path / "out", "--dry-run", "--json")
    assert len(dry.stdout.splitlines()) == 2, dry.output
    result = translate(flat, "-o", tmp_path / "out", "--model", checkpoint, "--norm", "in", "--json")
    assert result.exit_code == 0, result.output
    outputs = sorted(p.name for p in (tmp_path / "out").glob("*.tif"))
    assert len(outputs) == 2 and not any(name[0].isdigit() for name in outputs), outputs
    sizes = set()
    for name in outputs:
        with openslide.OpenSlide(str(tmp_path / "out" / name)) as slide:
            sizes.add(slide.dimensions)
    assert sizes == {(1536, 1024)}


def leica_scn(path, tissue, offset=(96, 64), nm_per_pixel=500):
    """A Leica SCN written at test time: a tiled BigTIFF whose ImageDescription is the SCN XML
    (a collection, one brightfield main image placed at ``offset`` pixels inside it, its two
    pyramid levels), the layout OpenSlide's leica driver reads. OpenSlide reports the main image's
    place as openslide.bounds-*: the slide is the collection, the scanned part lies inside it."""
    (h, w), (ox, oy) = tissue.shape[:2], offset
    size = f'sizeX="{w * nm_per_pixel}" sizeY="{h * nm_per_pixel}"'
    xml = (
        '<?xml version="1.0" encoding="utf-8"?><scn xmlns="http://www.leica-microsystems.com/scn/2010/10/01">'
        f'<collection sizeX="{(w + 2 * ox) * nm_per_pixel}" sizeY="{(h + 2 * oy) * nm_per_pixel}"><image>'
        f'<view {size} offsetX="{ox * nm_per_pixel}" offsetY="{oy * nm_per_pixel}"/>'
        "<scanSettings><objectiveSettings><objective>20</objective></objectiveSettings><illuminationSettings>"
        "<illuminationSource>brightfield</illuminationSource></illuminationSettings></scanSettings>"
        f'<pixels sizeX="{w}" sizeY="{h}"><dimension sizeX="{w}" sizeY="{h}" ifd="0"/>'
        f'<dimension sizeX="{w // 2}" sizeY="{h // 2}" ifd="1"/></pixels></image></collection></scn>'
    )
    per_cm = 1e7 / nm_per_pixel
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for k, level in enumerate((tissue, np.ascontiguousarray(tissue[::2, ::2]))):
            tif.write(
                level,
                tile=(128, 128),
                photometric="rgb",
                compression="zlib",
                metadata=None,
                description=xml if k == 0 else None,
                resolution=(per_cm / 2**k, per_cm / 2**k),
                resolutionunit="CENTIMETER",
            )
    return path


def test_a_slide_with_bounds_is_read_from_its_scanned_region(tmp_path, tissue, checkpoint):
    path = leica_scn(tmp_path / "slide.scn", tissue)
    with openslide.OpenSlide(str(path)) as raw:
        assert raw.properties["openslide.vendor"] == "leica" and raw.dimensions == (704, 640)
        assert (raw.properties["openslide.bounds-x"], raw.properties["openslide.bounds-y"]) == ("96", "64")
    with open_source(path) as source:
        assert (source.width, source.height, source.mpp) == (512, 512, 0.5)
        np.testing.assert_array_equal(source.read(Box(10, 20, 64, 48)), tissue[20:68, 10:74])  # lossless
        with openslide.OpenSlide(str(path)) as raw:
            level1 = np.asarray(raw.read_region((96, 64), 1, (256, 256)))[..., :3]
        np.testing.assert_array_equal(source.thumbnail(256), level1)
    result = translate(path, "-o", tmp_path / "o.tif", "--model", checkpoint, "--norm", "in", "--no-tissue", "--json")
    assert result.exit_code == 0, result.output
    assert (json.loads(result.stdout)["width"], json.loads(result.stdout)["height"]) == (512, 512)


def mirax(path, pixels, side=128, missing=((1, 1),), fill_rgb=(230, 220, 250), mpp=0.25):
    """A 3DHistech MIRAX slide written at test time: ``NAME.mrxs`` beside a folder holding
    Slidedat.ini, Index.dat and one data file of PNG camera images (``side`` pixels, two zoom
    levels), the layout OpenSlide's mirax driver reads. Images listed in ``missing`` (column,
    row) were never scanned: OpenSlide returns them transparent and reports the slide's fill
    colour as openslide.background-color."""
    rows, cols = pixels.shape[0] // side, pixels.shape[1] // side
    folder = path.with_suffix("")
    folder.mkdir()
    scanned = pixels.copy()  # what the scanner's own level 1 shows: the fill where it took no image
    for x, y in missing:
        scanned[y * side : (y + 1) * side, x * side : (x + 1) * side] = fill_rgb
    data, index_entries = bytearray(), []
    for concat in (1, 2):
        entries = []
        for y in range(0, rows, concat):
            for x in range(0, cols, concat):
                if concat == 1 and (x, y) in missing:
                    continue
                block = scanned[y * side : (y + concat) * side, x * side : (x + concat) * side]
                image = block if concat == 1 else shrink(block, concat)
                png = pyvips.Image.new_from_array(np.ascontiguousarray(image), interpretation="srgb").pngsave_buffer()
                entries.append((y * cols + x, len(data), len(png), 0))
                data += png
        index_entries.append(entries)
    slide_id = "0123456789abcdef"
    header = b"01.02" + slide_id.encode()
    # Index.dat: [header][hier root → table][nonhier root], the table one pointer per level, each to
    # (0, first page), a page being (entries, next page = 0, then entries of 4 int32).
    table_at = len(header) + 8
    pages_at = table_at + 4 * len(index_entries)
    index, pages = bytearray(header), bytearray()
    index += struct.pack("<ii", table_at, 0)
    for entries in index_entries:
        start = pages_at + len(pages)
        index += struct.pack("<i", start)
        pages += struct.pack("<ii", 0, start + 8) + struct.pack("<ii", len(entries), 0)
        for entry in entries:
            pages += struct.pack("<iiii", *entry)
    (folder / "Index.dat").write_bytes(bytes(index + pages))
    (folder / "Data0000.dat").write_bytes(bytes(data))
    r, g, b = fill_rgb
    sections = "".join(
        f"[LAYER_0_LEVEL_{k}_SECTION]\nOVERLAP_X=0\nOVERLAP_Y=0\nMICROMETER_PER_PIXEL_X={mpp * 2**k}\n"
        f"MICROMETER_PER_PIXEL_Y={mpp * 2**k}\nIMAGE_FORMAT=PNG\nIMAGE_FILL_COLOR_BGR={(b << 16) | (g << 8) | r}\n"
        f"DIGITIZER_WIDTH={side}\nDIGITIZER_HEIGHT={side}\nIMAGE_CONCAT_FACTOR={min(k, 1)}\n"
        for k in range(2)
    )
    (folder / "Slidedat.ini").write_text(
        f"[GENERAL]\nSLIDE_ID={slide_id}\nIMAGENUMBER_X={cols}\nIMAGENUMBER_Y={rows}\nOBJECTIVE_MAGNIFICATION=20\n"
        "CameraImageDivisionsPerSide=1\n[HIERARCHICAL]\nHIER_COUNT=1\nNONHIER_COUNT=0\nINDEXFILE=Index.dat\n"
        "HIER_0_NAME=Slide zoom level\nHIER_0_COUNT=2\nHIER_0_VAL_0_SECTION=LAYER_0_LEVEL_0_SECTION\n"
        "HIER_0_VAL_1_SECTION=LAYER_0_LEVEL_1_SECTION\n[DATAFILE]\nFILE_COUNT=1\nFILE_0=Data0000.dat\n" + sections
    )
    path.write_bytes(b"")  # OpenSlide only asks that it exists
    return path


def test_a_mirax_slide_fills_what_was_never_scanned_with_its_background(tmp_path, tissue, checkpoint):
    fill = (230, 220, 250)
    path = mirax(tmp_path / "case.mrxs", tissue, fill_rgb=fill)
    with openslide.OpenSlide(str(path)) as raw:
        assert raw.properties["openslide.vendor"] == "mirax" and raw.dimensions == (512, 512)
        assert raw.properties["openslide.background-color"] == "E6DCFA"
        assert np.asarray(raw.read_region((128, 128), 0, (128, 128)))[..., 3].max() == 0  # transparent
    with open_source(path) as source:
        assert (source.width, source.height, source.mpp) == (512, 512, 0.25)
        pixels = source.read(Box(64, 64, 256, 256))  # the missing image and the tissue around it
        expected = tissue[64:320, 64:320].copy()
        expected[64:192, 64:192] = fill
        np.testing.assert_array_equal(pixels, expected)  # PNG: lossless
        thumbnail = source.thumbnail(256).astype(int)  # from level 1, where the hole is filled too
        assert np.abs(thumbnail[72:120, 72:120] - np.array(fill)).max() <= 1
    result = translate(path, "-o", tmp_path / "o.tif", "--model", checkpoint, "--norm", "in", "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert (record["width"], record["height"], record["mpp"]) == (512, 512, 0.25)
