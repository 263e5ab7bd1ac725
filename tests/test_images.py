"""Tests of model_store.images: decoding, mode conversion and the error paths.

Every test builds its image with NumPy, saves it with Pillow in a real file
format and compares the decoded pixels with values computed here, not with
another Pillow conversion.
"""

from __future__ import annotations

import io
import pickle
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

from model_store.errors import ImgclassError
from model_store.images import (
    DEFAULT_MAX_PIXELS,
    MAX_JPEG_SCANS,
    DecodedImage,
    ImageDecodeError,
    ImageTooLargeError,
    _convert,
    decode_image,
)


def encode(img: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **params)
    return buffer.getvalue()


def pixels(decoded: DecodedImage) -> np.ndarray:
    return np.asarray(decoded.image, dtype=np.int64)


def luma(rgb) -> np.ndarray:
    """ITU-R 601-2 luma, the rule Pillow documents for RGB -> L."""
    rgb = np.asarray(rgb, dtype=np.float64)
    return rgb @ np.array([0.299, 0.587, 0.114])


def blend(colour, alpha, background) -> np.ndarray:
    """A colour of the given alpha (0..255) composited over a gray background."""
    colour = np.asarray(colour, dtype=np.float64)
    a = np.asarray(alpha, dtype=np.float64)[..., None] / 255.0
    return colour * a + background * (1.0 - a)


def gray_rgb(values) -> np.ndarray:
    return np.repeat(np.asarray(values, dtype=np.float64)[..., None], 3, axis=-1)


def assert_close(actual, expected, tolerance) -> None:
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape
    assert np.abs(actual - expected).max() <= tolerance, (actual, expected)


def paletted(mode: str, indexes, colours) -> Image.Image:
    img = Image.fromarray(np.asarray(indexes, dtype=np.uint8)).convert("L")
    img = img.convert(mode) if mode == "PA" else Image.frombytes("P", img.size, img.tobytes())
    img.putpalette([channel for colour in colours for channel in colour])
    return img


# --- mode conversion --------------------------------------------------------
# Each case returns (file bytes, expected RGB pixels) for a background level.

COLOURS = [(200, 100, 50), (10, 220, 30), (0, 0, 255)]
ALPHAS = [0, 255, 128]


def case_1(background):
    bits = np.array([[False, True, True, False]])
    return encode(Image.fromarray(bits), "PNG"), gray_rgb(bits * 255.0)


def case_l(background):
    values = np.array([[0, 1, 100, 254, 255]], dtype=np.uint8)
    return encode(Image.fromarray(values), "PNG"), gray_rgb(values)


def case_p(background):
    img = paletted("P", [[0, 1, 2, 1]], COLOURS)
    return encode(img, "PNG"), np.array([[COLOURS[i] for i in (0, 1, 2, 1)]], dtype=float)


def case_p_transparency(background):
    img = paletted("P", [[0, 1, 2]], COLOURS)
    expected = [[COLOURS[0], COLOURS[1], (background,) * 3]]
    return encode(img, "PNG", transparency=2), np.array(expected, dtype=float)


def case_gif_transparency(background):
    img = paletted("P", [[0, 1, 2]], COLOURS)
    expected = [[(background,) * 3, COLOURS[1], COLOURS[2]]]
    return encode(img, "GIF", transparency=0), np.array(expected, dtype=float)


def case_rgb(background):
    rgb = np.array([[(255, 0, 0), (0, 255, 0), (0, 0, 255), (10, 200, 30)]], dtype=np.uint8)
    return encode(Image.fromarray(rgb), "PNG"), rgb


def case_rgba(background):
    rgba = np.array([[(*c, a) for c, a in zip(COLOURS, ALPHAS)]], dtype=np.uint8)
    return encode(Image.fromarray(rgba), "PNG"), blend(rgba[..., :3], rgba[..., 3], background)


def case_la(background):
    la = np.array([[(200, 0), (200, 255), (200, 128), (40, 64)]], dtype=np.uint8)
    img = Image.fromarray(la[..., 0]).convert("LA")
    img.putalpha(Image.fromarray(la[..., 1]))
    return encode(img, "PNG"), gray_rgb(blend(la[..., :1], la[..., 1], background)[..., 0])


def case_pa(background):
    img = paletted("PA", [[0, 1, 2]], COLOURS)
    img.putalpha(Image.fromarray(np.array([ALPHAS], dtype=np.uint8)))
    return encode(img, "TIFF"), blend([COLOURS], [ALPHAS], background)


def case_cmyk(background):
    cmyk = np.array([[(0, 0, 0, 0), (255, 0, 0, 0), (0, 255, 0, 0), (0, 0, 0, 255),
                      (100, 0, 0, 0)]], dtype=np.uint8)
    expected = [[(255, 255, 255), (0, 255, 255), (255, 0, 255), (0, 0, 0), (155, 255, 255)]]
    return encode(Image.fromarray(cmyk, "CMYK"), "TIFF"), np.array(expected, dtype=float)


SIXTEEN_BIT = np.array([[0, 257, 32896, 25700, 65535]], dtype=np.uint16)
SIXTEEN_BIT_AS_8 = [[0, 1, 128, 100, 255]]


def case_i16(background):
    img = Image.fromarray(SIXTEEN_BIT)
    assert img.mode == "I;16"
    return encode(img, "PNG"), gray_rgb(SIXTEEN_BIT_AS_8)


def case_i16b(background):
    img = Image.fromarray(SIXTEEN_BIT.astype(">u2"))
    assert img.mode == "I;16B"
    return encode(img, "TIFF"), gray_rgb(SIXTEEN_BIT_AS_8)


def case_i32(background):
    values = np.array([[0, 32896, 65535, 70000, -10]], dtype=np.int32)
    return encode(Image.fromarray(values), "TIFF"), gray_rgb([[0, 128, 255, 255, 0]])


def case_f(background):
    values = np.array([[-5.0, 0.4, 127.6, 254.5, 300.0, np.nan]], dtype=np.float32)
    return encode(Image.fromarray(values), "TIFF"), gray_rgb([[0, 0, 128, 254, 255, 0]])


CASES = {
    "1": (case_1, "1"), "L": (case_l, "L"), "P": (case_p, "P"),
    "P+tRNS": (case_p_transparency, "P"), "GIF transparency": (case_gif_transparency, "P"),
    "RGB": (case_rgb, "RGB"), "RGBA": (case_rgba, "RGBA"), "LA": (case_la, "LA"),
    "PA": (case_pa, "PA"), "CMYK": (case_cmyk, "CMYK"), "I;16": (case_i16, "I;16"),
    "I;16B": (case_i16b, "I;16B"), "I": (case_i32, "I"), "F": (case_f, "F"),
}


@pytest.mark.parametrize("background", [0, 255, 90])
@pytest.mark.parametrize("name", CASES)
def test_every_source_mode_converts_to_rgb_and_l(name, background):
    make, source_mode = CASES[name]
    data, expected_rgb = make(background)
    assert Image.open(io.BytesIO(data)).mode == source_mode  # the case tests what it says

    rgb = decode_image(data, mode="RGB", background=background)
    gray = decode_image(data, mode="L", background=background)

    assert rgb.image.mode == "RGB" and gray.image.mode == "L"
    assert_close(pixels(rgb), expected_rgb, tolerance=1)
    assert_close(pixels(gray), luma(expected_rgb), tolerance=1)


def test_sixteen_bit_is_scaled_not_clipped():
    decoded = decode_image(encode(Image.fromarray(SIXTEEN_BIT), "PNG"), mode="L")
    assert pixels(decoded)[0, -1] == 255
    assert abs(pixels(decoded)[0, 2] - 128) <= 1  # 32896 / 257 = 128, not clipped to 255


def test_rgba_alpha_extremes_and_half():
    rgba = np.array([[(200, 100, 50, 0), (200, 100, 50, 255), (200, 100, 50, 128)]], np.uint8)
    out = pixels(decode_image(encode(Image.fromarray(rgba), "PNG"), mode="RGB", background=0))
    assert out[0, 0].tolist() == [0, 0, 0]           # fully transparent: background only
    assert out[0, 1].tolist() == [200, 100, 50]      # opaque: colour kept
    assert_close(out[0, 2], [100, 50, 25], tolerance=1)  # half: blended


def test_ycbcr_converts():
    # No file format Pillow reads opens as YCbCr, so test the conversion step.
    rgb = np.array([[(255, 0, 0), (0, 255, 0), (30, 60, 90), (128, 128, 128)]], np.uint8)
    ycbcr = Image.fromarray(rgb).convert("YCbCr")
    assert_close(np.asarray(_convert(ycbcr, "RGB", 0)), rgb, tolerance=3)
    assert_close(np.asarray(_convert(ycbcr, "L", 0)), luma(rgb), tolerance=3)


def test_rgb_to_l_uses_standard_luma():
    rgb = np.array([[(255, 0, 0), (0, 255, 0), (0, 0, 255)]], dtype=np.uint8)
    out = pixels(decode_image(encode(Image.fromarray(rgb), "PNG"), mode="L"))
    assert_close(out, [[76, 150, 29]], tolerance=1)


def test_cmyk_jpeg_converts():
    cmyk = np.zeros((16, 16, 4), dtype=np.uint8)
    cmyk[..., 0] = 255  # pure cyan
    data = encode(Image.fromarray(cmyk, "CMYK"), "JPEG", quality=95)
    assert_close(pixels(decode_image(data, mode="RGB")).mean(axis=(0, 1)), [0, 255, 255], 3)


# --- formats, animation, orientation ------------------------------------------

BLOCKS = np.kron(np.array([[0, 1], [2, 3]]), np.ones((16, 16), dtype=int))
BLOCK_COLOURS = np.array([(255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 255, 255)], np.uint8)


@pytest.mark.parametrize("fmt, params, tolerance", [
    ("PNG", {}, 0), ("BMP", {}, 0), ("TIFF", {}, 0), ("GIF", {}, 0),
    ("WEBP", {"lossless": True}, 0), ("JPEG", {"quality": 95, "subsampling": 0}, 12),
])
def test_formats_decode(fmt, params, tolerance):
    rgb = BLOCK_COLOURS[BLOCKS]
    decoded = decode_image(encode(Image.fromarray(rgb), fmt, **params), mode="RGB")
    assert (decoded.width, decoded.height) == (32, 32)
    assert_close(pixels(decoded), rgb, tolerance)
    # Loaded and detached from the file: no file left to read, and its
    # pixels survive a round trip through pickle (Beam's hand-over).
    assert getattr(decoded.image, "fp", None) is None
    assert_close(np.asarray(pickle.loads(pickle.dumps(decoded.image))), rgb, tolerance)


@pytest.mark.parametrize("fmt, params", [
    ("GIF", {}), ("PNG", {}), ("WEBP", {"lossless": True}),
])
def test_animation_gives_first_frame(fmt, params):
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    frames = [Image.new("RGB", (8, 8), colour) for colour in colours]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, **params)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    assert_close(pixels(decode_image(data, mode="RGB")), np.full((8, 8, 3), [255, 0, 0]), 0)


# What each EXIF orientation does to the stored pixels to display them.
ORIENT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1, :],
    5: lambda a: a.T,
    6: lambda a: np.rot90(a, k=-1),  # 90 degrees clockwise
    7: lambda a: a[::-1, ::-1].T,
    8: lambda a: np.rot90(a, k=1),   # 90 degrees counter-clockwise
}


def exif_with(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


@pytest.mark.parametrize("orientation", ORIENT)
def test_exif_orientation_png(orientation):
    stored = np.arange(6 * 4, dtype=np.uint8).reshape(4, 6) * 10  # 6 wide, 4 high
    data = encode(Image.fromarray(stored), "PNG", exif=exif_with(orientation))
    decoded = decode_image(data, mode="L")
    expected = ORIENT[orientation](stored)
    assert (decoded.width, decoded.height) == (expected.shape[1], expected.shape[0])
    assert_close(pixels(decoded), expected, 0)


def test_exif_orientation_6_jpeg_rotates_and_swaps_size():
    layout = np.array([[255, 0, 0, 0], [0, 0, 120, 0]])
    stored = np.kron(layout, np.ones((16, 16))).astype(np.uint8)
    assert stored.shape == (32, 64)
    data = encode(Image.fromarray(stored), "JPEG", quality=95, exif=exif_with(6))
    decoded = decode_image(data, mode="L")
    assert (decoded.width, decoded.height) == (32, 64)
    assert decoded.image.size == (32, 64)
    assert_close(pixels(decoded), np.rot90(stored, k=-1), tolerance=6)


# --- JPEG reduction while decoding -----------------------------------------------

def test_draft_reduces_large_jpeg():
    rng = np.random.default_rng(3)
    big = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).resize((2048, 2048))
    data = encode(big, "JPEG")
    for mode in ("L", "RGB"):
        decoded = decode_image(data, mode=mode, target_size=(32, 32))
        width, height = decoded.image.size
        assert 32 <= width < 2048 and 32 <= height < 2048
        assert (decoded.width, decoded.height) == (2048, 2048)
        assert decoded.image.mode == mode
    full = decode_image(data, mode="L")
    assert full.image.size == (2048, 2048)


def test_draft_respects_target_in_displayed_orientation():
    # Stored 2048x256, displayed 256x2048 (orientation 6). The target is in
    # displayed terms, so the reduction must still be at least 128 wide.
    data = encode(Image.new("L", (2048, 256), 90), "JPEG", exif=exif_with(6))
    decoded = decode_image(data, mode="L", target_size=(128, 32))
    width, height = decoded.image.size
    assert 128 <= width < 256 and 32 <= height < 2048
    assert (decoded.width, decoded.height) == (256, 2048)


def test_target_size_is_ignored_by_other_formats():
    decoded = decode_image(encode(Image.new("RGB", (300, 200)), "PNG"), mode="RGB",
                           target_size=(10, 10))
    assert decoded.image.size == (300, 200)


def pillow_reference(data: bytes, mode: str, target_size) -> np.ndarray:
    """What Pillow alone makes of a JPEG: draft to the target, load,
    convert (the reference for the simplejpeg path)."""
    with Image.open(io.BytesIO(data)) as img:
        if target_size is not None:
            img.draft(mode, target_size)
        img.load()
        return np.asarray(img.convert(mode), dtype=np.int64)


@pytest.fixture
def simplejpeg_calls(monkeypatch):
    """The calls decode_image makes to simplejpeg.decode_jpeg."""
    import simplejpeg

    calls = []
    real = simplejpeg.decode_jpeg

    def counted(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(simplejpeg, "decode_jpeg", counted)
    return calls


def photo(width: int, height: int, gray: bool = False) -> Image.Image:
    """Smooth gradients and noise: JPEG content with detail at every scale."""
    rng = np.random.default_rng(width * 7 + height)
    y, x = np.mgrid[0:height, 0:width]
    planes = [(x * 255 // max(1, width - 1)), (y * 255 // max(1, height - 1)),
              ((x + y) * 3) % 256]
    rgb = np.stack(planes, -1) + rng.integers(-20, 20, (height, width, 3))
    image = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    return image.convert("L") if gray else image


@pytest.mark.parametrize("size", [(37, 23), (256, 256), (1001, 601)])
@pytest.mark.parametrize("params", [
    {"quality": 90}, {"quality": 75, "subsampling": 0},
    {"quality": 95, "subsampling": 1}, {"quality": 80, "progressive": True},
    {"gray": True}, {"orientation": 1}, {"orientation": None}])
def test_a_plain_jpeg_decodes_to_pillows_own_pixels(simplejpeg_calls, size,
                                                    params):
    """Plain JPEGs (upright EXIF included) take libjpeg-turbo through
    simplejpeg: at every scale Pillow's draft picks (1, 1/2, 1/4, 1/8, and
    a target larger than the image) and in both modes, the pixels and
    sizes are Pillow's own."""
    params = dict(params)
    image = photo(*size, gray=params.pop("gray", False))
    if "orientation" in params:  # a camera's EXIF, upright
        exif = Image.Exif()
        exif[0x010F] = "Camera"
        if params["orientation"] is not None:
            exif[0x0112] = params["orientation"]
        params = {"exif": exif}
    data = encode(image, "JPEG", **params)
    targets = [(8, 8), (size[0] // 4, size[1] // 4), (size[0] // 2 + 1, 8),
               size, (2 * size[0], 2 * size[1])]
    for mode in ("L", "RGB"):
        for target in targets:
            decoded = decode_image(data, mode=mode, target_size=target)
            expected = pillow_reference(data, mode, target)
            assert (decoded.width, decoded.height) == size
            assert np.array_equal(pixels(decoded), expected), (mode, target)
    assert len(simplejpeg_calls) == 2 * len(targets)
    rgb = decode_image(data, mode="RGB")
    assert np.array_equal(pixels(rgb), pillow_reference(data, "RGB", None))
    assert len(simplejpeg_calls) == 2 * len(targets) + 1


@pytest.mark.parametrize("size", [(1, 1), (7, 30), (5, 3)])
def test_a_jpeg_under_8_pixels_is_decoded_as_pillow_decodes_it(
        simplejpeg_calls, size):
    """Below 8 pixels libjpeg's scales are ambiguous (1/8 and 1/1 both give
    1x1): such JPEGs take Pillow's path."""
    data = encode(photo(*size), "JPEG", quality=90)
    for target in ((1, 1), (8, 8)):
        decoded = decode_image(data, mode="RGB", target_size=target)
        assert np.array_equal(pixels(decoded),
                              pillow_reference(data, "RGB", target))
    assert not simplejpeg_calls


def test_a_jpeg_libjpeg_warns_about_is_decoded_as_pillow_decodes_it(
        simplejpeg_calls):
    """Extraneous bytes before a marker: libjpeg warns, simplejpeg refuses
    it, and Pillow's path decodes it as Pillow does."""
    data = encode(photo(64, 48), "JPEG", quality=90)
    sos = data.index(b"\xff\xda")
    damaged = data[:sos] + b"\x00\x00\x00" + data[sos:]
    decoded = decode_image(damaged, mode="RGB", target_size=(16, 16))
    assert simplejpeg_calls, "simplejpeg was not tried"
    assert np.array_equal(pixels(decoded),
                          pillow_reference(damaged, "RGB", (16, 16)))


@pytest.mark.parametrize("image_mode, mode, target, exif", [
    ("RGB", "RGB", (8, 8), "exif"), ("RGB", "RGB", (8, 8), "xmp"),
    ("CMYK", "RGB", (8, 8), None), ("RGB", "L", None, None)])
def test_jpegs_simplejpeg_would_read_otherwise_take_pillows_path(
        simplejpeg_calls, image_mode, mode, target, exif):
    """An orientation to apply (EXIF, or XMP's, which Pillow reads too),
    CMYK (Adobe's colour transform) and a colour JPEG to "L" without a
    target (Pillow's luma of the RGB, not libjpeg's Y) go Pillow's way,
    with Pillow's pixels."""
    params = {}
    if exif == "exif":
        params["exif"] = Image.Exif()
        params["exif"][0x0112] = 6  # turned a quarter
    elif exif == "xmp":
        params["xmp"] = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
                         b'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-synt'
                         b'ax-ns#"><rdf:Description xmlns:tiff="http://ns.'
                         b'adobe.com/tiff/1.0/" tiff:Orientation="6"/>'
                         b'</rdf:RDF></x:xmpmeta>')
    data = encode(photo(40, 30).convert(image_mode), "JPEG", **params)
    decoded = decode_image(data, mode=mode, target_size=target)
    assert not simplejpeg_calls
    with Image.open(io.BytesIO(data)) as img:  # CMYK converts through RGB
        if target is not None:
            img.draft(mode, target)
        img.load()
        rgb = ImageOps.exif_transpose(img).convert("RGB")
    expected = np.asarray(rgb.convert(mode), dtype=np.int64)
    assert np.array_equal(pixels(decoded), expected)


@pytest.mark.parametrize("segment", [
    b"\xff\x01",  # TEM: a marker without a length
    b"\xff\xe0\x00\x08JFIF\x00\x01",  # JFIF without its version's 2nd byte
    b"\xff\xe2\x00\x0fICC_PROFILE\x00\x01",  # ICC chunk without its count
    b"\xff\xed\x00\x16Photoshop 3.0\x008BIM\x03\xed",  # resource cut at its name
], ids=["tem", "jfif", "icc", "photoshop"])
@pytest.mark.parametrize("mode, target", [
    ("RGB", None), ("RGB", (16, 16)), ("L", (16, 16)), ("L", None)])
def test_a_jpeg_header_pillow_cannot_parse_is_refused_in_every_mode(
        simplejpeg_calls, segment, mode, target):
    """A segment right after SOI that libjpeg skips but Pillow's marker
    parser refuses the file for. The file takes Pillow's path, so whether
    it is an error does not depend on the mode or target ("L" without a
    target always went that way)."""
    data = encode(photo(64, 48), "JPEG", quality=90)
    damaged = data[:2] + segment + data[2:]
    with pytest.raises(ImageDecodeError, match="not an image"):
        decode_image(damaged, mode=mode, target_size=target)
    assert not simplejpeg_calls


def exif_segment(entries) -> bytes:
    """An APP1 EXIF segment of one little-endian IFD: ``(tag, type, count,
    4-byte value)`` entries, written as given (even where Pillow's own
    writer would refuse them)."""
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHI", *entry[:3]) + entry[3] for entry in entries)
    payload = b"Exif\x00\x00II*\x00\x08\x00\x00\x00" + ifd + b"\x00" * 4
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


@pytest.mark.parametrize("mode, target", [
    ("RGB", None), ("RGB", (16, 16)), ("L", (16, 16)), ("L", None)])
def test_a_jpeg_whose_exif_resolution_pillow_cannot_read_is_refused_in_every_mode(
        simplejpeg_calls, mode, target):
    """An upright EXIF with a ResolutionUnit and an empty text XResolution:
    Pillow's parser, reading the DPI from it, refuses the file (it indexes
    the value as a fraction). libjpeg does not read EXIF; the file takes
    Pillow's path so that the outcome does not depend on mode or target."""
    data = encode(photo(64, 48), "JPEG", quality=90)
    exif = exif_segment([(0x011A, 2, 1, b"\x00" * 4),  # XResolution: ""
                         (0x0128, 3, 1, b"\x02\x00\x00\x00")])  # inches
    damaged = data[:2] + exif + data[2:]
    with pytest.raises(ImageDecodeError, match="not an image"):
        decode_image(damaged, mode=mode, target_size=target)
    assert not simplejpeg_calls


# --- decompression bombs -------------------------------------------------------

def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height 1-bit pixels (no pixel data)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b""))
            + chunk(b"IEND", b""))


def test_bomb_is_rejected_from_the_header():
    pillow_limit = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageTooLargeError) as caught:
        decode_image(png_header_only(20000, 20000), mode="L")
    message = str(caught.value)
    assert "20000x20000" in message and "400,000,000" in message
    assert f"{DEFAULT_MAX_PIXELS:,}" in message
    assert Image.MAX_IMAGE_PIXELS == pillow_limit  # Pillow's global left as it was


def _with_last_scan_repeated(data: bytes, copies: int) -> bytes:
    """A JPEG whose last scan (its SOS segment and entropy-coded data, up
    to EOI) is written ``copies`` times: libjpeg decodes each one again."""
    last = data.rindex(b"\xff\xda")
    assert data.endswith(b"\xff\xd9")
    return data[:last] + data[last:-2] * copies + b"\xff\xd9"


@pytest.mark.parametrize("mode,target", [("RGB", None), ("L", (8, 8))])
def test_a_jpeg_of_too_many_scans_is_refused_before_decoding(mode, target):
    """A scan bomb (a small file whose scans libjpeg decodes one after the
    other, each over the whole image) is refused from its marker count, on
    both decoding paths; as many scans as the limit still decode."""
    photo = Image.fromarray(np.random.RandomState(3).randint(
        0, 256, (64, 48, 3), dtype=np.uint8))
    data = encode(photo, "JPEG", progressive=True, quality=80)
    scans = data.count(b"\xff\xda")
    at_limit = _with_last_scan_repeated(data, MAX_JPEG_SCANS - scans + 1)
    assert decode_image(at_limit, mode=mode, target_size=target).width == 48
    with pytest.raises(ImageDecodeError, match=(
            rf"JPEG of {MAX_JPEG_SCANS + 1:,} scans, over the limit of "
            rf"{MAX_JPEG_SCANS:,}")):
        decode_image(_with_last_scan_repeated(data, MAX_JPEG_SCANS - scans + 2),
                     mode=mode, target_size=target)


def test_max_pixels_argument_is_the_limit():
    data = encode(Image.new("L", (100, 100)), "PNG")
    with pytest.raises(ImageTooLargeError, match=r"100x100 = 10,000 pixels.*9,999"):
        decode_image(data, mode="L", max_pixels=9_999)
    assert decode_image(data, mode="L", max_pixels=10_000).image.size == (100, 100)


def test_pillow_global_limit_does_not_override_ours(monkeypatch):
    # Pillow raises above twice its global limit; our max_pixels must decide.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
    data = encode(Image.new("L", (100, 100), 7), "PNG")
    assert pixels(decode_image(data, mode="L")).max() == 7
    assert Image.MAX_IMAGE_PIXELS == 1_000
    with pytest.raises(ImageTooLargeError, match="9,000"):
        decode_image(data, mode="L", max_pixels=9_000)


# --- bad bytes -----------------------------------------------------------------

def noise_image() -> Image.Image:
    rng = np.random.default_rng(5)
    return Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))


def halved(data: bytes) -> bytes:
    return data[: len(data) // 2]


@pytest.mark.parametrize("data, expected", [
    (b"", "empty file (0 bytes)"),
    (np.random.default_rng(0).bytes(4096), "not an image"),
    (b"Hello,\nthis is a text file, not an image.\n" * 20, "not an image"),
    (halved(encode(noise_image(), "JPEG")), "truncated or corrupt"),
    (halved(encode(noise_image(), "PNG")), "truncated or corrupt"),
    (halved(encode(noise_image(), "GIF")), "truncated or corrupt"),
    (encode(noise_image(), "PNG")[:20], "truncated or corrupt"),
], ids=["empty", "random", "text", "truncated-jpeg", "truncated-png", "truncated-gif",
        "header-only"])
def test_bad_bytes_raise_one_line_decode_error(data, expected):
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(data, mode="RGB")
    assert not isinstance(caught.value, ImageTooLargeError)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, ImgclassError)
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message and "\r" not in message


EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\n"
       b"0 0 moveto 100 100 lineto stroke showpage\n")


def test_formats_outside_the_list_are_never_opened(monkeypatch):
    """An EPS file (Pillow would hand it to Ghostscript, an outside
    program), a PDF or an ICO is "not an image": no plugin but those of
    FORMATS is tried."""
    from PIL import EpsImagePlugin
    called = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript",
                        lambda *a, **k: called.append(a))
    icon = encode(noise_image().resize((32, 32)), "ICO")
    for data in (EPS, icon, encode(noise_image(), "PDF")):
        with pytest.raises(ImageDecodeError,
                           match="not an image in a format imgclass reads "
                                 r"\(BMP, GIF, JPEG, PNG, PPM, TIFF, "
                                 r"WEBP\)"):
            decode_image(data, mode="RGB")
    assert called == []
    assert decode_image(encode(noise_image(), "PPM"), mode="L").width == 64


@pytest.mark.parametrize("kwargs, word", [
    ({"mode": "RGBA"}, "'RGBA'"),
    ({"mode": "L", "target_size": (0, 10)}, "target_size"),
    ({"mode": "L", "max_pixels": 0}, "max_pixels"),
    ({"mode": "L", "background": 256}, "background"),
])
def test_invalid_arguments_are_value_errors(kwargs, word):
    with pytest.raises(ValueError, match=word) as caught:
        decode_image(encode(Image.new("L", (4, 4)), "PNG"), **kwargs)
    assert not isinstance(caught.value, ImageDecodeError)
    if "'RGBA'" == word:
        assert "'L'" in str(caught.value) and "'RGB'" in str(caught.value)


def jpeg_claiming(width, height, *, real=(32, 32)):
    """The attacker's file: a real small JPEG whose frame header claims
    ``width`` x ``height`` pixels."""
    buffer = io.BytesIO()
    Image.new("L", real, 100).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    at = data.index(b"\xff\xc0")
    data[at + 5:at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@pytest.mark.parametrize("target", [None, (32, 32)])
def test_a_jpeg_header_claiming_more_pixels_than_its_data_is_a_decode_error(
        target):
    data = jpeg_claiming(7000, 7000)
    with pytest.raises(ImageDecodeError, match="claims 7000x7000 pixels"):
        decode_image(data, mode="L", target_size=target)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("params", [{}, {"progressive": True, "optimize": True},
                                    {"optimize": True, "subsampling": 2}])
def test_large_uniform_jpegs_are_not_taken_for_inconsistent_ones(params):
    """The least data a real JPEG can have (one colour, progressive,
    optimised Huffman tables) is still well above the bound."""
    buffer = io.BytesIO()
    Image.new("RGB", (4000, 3000), (9, 9, 9)).save(buffer, "JPEG", **params)
    decoded = decode_image(buffer.getvalue(), mode="L", target_size=(32, 32))
    assert (decoded.width, decoded.height) == (4000, 3000)
