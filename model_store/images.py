"""Turn the bytes of an image file into a Pillow image of one fixed mode.

This module is pure Pillow and NumPy (no Beam, no Theano) so that it can be
tested and reused on its own. :func:`decode_image` is the single entry point:

* bad bytes only ever raise :class:`ImageDecodeError` (a ``ValueError``) with a
  one-line message, so a pipeline can record the failure and move on;
* the pixel count is checked from the header, before any pixel is decoded,
  against the caller's ``max_pixels`` (the decompression-bomb guard);
* large JPEGs are reduced while decoding when a target size is given;
* a plain JPEG (upright, no Adobe colour transform, 1 or 3 components,
  Huffman-coded) is decoded by libjpeg-turbo through ``simplejpeg``, which
  skips Pillow's marker parsing in Python (55 us of 200 per 256x256 JPEG):
  the same library at the same scale, so the same pixels; anything else,
  any JPEG libjpeg has a warning about and any header Pillow's marker
  parser refuses, takes Pillow's path;
* a JPEG of more than :data:`MAX_JPEG_SCANS` scans is refused before any
  decoding (a "scan bomb": see :func:`_check_jpeg_scans`);
* a JPEG whose header claims more pixels than its data can hold (libjpeg
  would fill the missing part with gray and report success) is refused
  (see :func:`_check_jpeg_data`); Pillow's ``LOAD_TRUNCATED_IMAGES`` stays
  off, so data that ends early is refused too;
* only the raster formats of :data:`FORMATS` are read: Pillow's other
  plugins are never tried, so a file cannot reach an outside program
  (Pillow's EPS plugin runs Ghostscript on the file) or a rarely used
  parser;
* the EXIF orientation is applied, animations give their first frame, and every
  Pillow mode is converted to ``"L"`` or ``"RGB"``, with transparency
  composited over a uniform gray background.

Pillow has its own, global bomb guard (``PIL.Image.MAX_IMAGE_PIXELS``). This
module leaves it as it is: if it rejects an image, the image is opened again
with that guard briefly lifted, under a lock, so that ``max_pixels`` alone
decides (see :func:`decode_image`). Between ``MAX_IMAGE_PIXELS`` and twice that,
Pillow only warns (``DecompressionBombWarning``); with the default
``max_pixels`` such images are rejected by our own check anyway.
"""

from __future__ import annotations

import io
import threading

import numpy as np
from PIL import ExifTags, Image, ImageOps

try:
    import simplejpeg
except ImportError:  # a dependency; without it every JPEG takes Pillow's path
    simplejpeg = None

from model_store.errors import ImgclassError

DEFAULT_MAX_PIXELS = 50_000_000
# Scans one JPEG may hold: encoders write 1 (baseline) or about 10
# (progressive). libjpeg decodes every scan it is given, each over the
# whole image, so a small file of many tiny scans costs CPU without bound:
# 10,000 scans of 17 bytes over a 1024x1024 image (359 kB) took 0.8 s to
# decode, 5,000 over 2048x2048 (1.1 MB) 1.6 s, and the time grows with
# scans x pixels up to the pixel limit.
MAX_JPEG_SCANS = 1_000
# The Pillow formats decode_image reads (JPEG includes the multi-picture
# JPEGs of many cameras, which Pillow opens as MPO; PPM includes PGM and
# PBM); any other file is "not an image" for imgclass.
FORMATS = ("BMP", "GIF", "JPEG", "PNG", "PPM", "TIFF", "WEBP")

_MODES = ("L", "RGB")
# EXIF orientations 5-8 turn the picture by a quarter: width and height swap.
_QUARTER_TURNS = frozenset({5, 6, 7, 8})
# Orientations 2-8 mirror or turn it; 1 (or none) is upright.
_TRANSPOSED = frozenset(range(2, 9))
# Integer modes whose samples are 16-bit (0..65535). Pillow opens 16-bit PNG
# and TIFF as "I;16"/"I;16B" (older versions: "I"), so "I" is read the same way.
_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
# 257 = 65535 / 255: scales full 16-bit white to full 8-bit white exactly.
_SIXTEEN_TO_EIGHT = 257.0
# Serialises the rare decodes that lift Pillow's global limit, so that two of
# them cannot restore each other's saved value.
_PILLOW_LIMIT_LOCK = threading.Lock()
# JPEG frames whose scans are Huffman-coded (baseline, extended, progressive,
# lossless): every 8x8 block costs at least one bit in the first scan that
# codes it. Arithmetic-coded and hierarchical frames are not checked.
_HUFFMAN_FRAMES = frozenset({0xC0, 0xC1, 0xC2, 0xC3})


class ImageDecodeError(ImgclassError, ValueError):
    """A file's bytes cannot be used as an image; the message is one line."""


class ImageTooLargeError(ImageDecodeError):
    """The image has more pixels than the limit (decompression-bomb guard)."""


class DecodedImage:
    """A decoded image and the size of its source.

    Attributes:
        image: The pixels, converted to the requested mode and fully loaded
            (independent of the input bytes). Smaller than ``width`` x
            ``height`` when a JPEG was reduced while decoding.
        width: Width of the source image as displayed (EXIF orientation
            applied), before any reduction while decoding.
        height: Height of the source image, likewise.
        samples: The same pixels as a C-contiguous ``uint8`` array in the
            layout the resize kernel reads (:func:`image_of_samples`), when
            the decoder made them so (a plain JPEG); else None. ``image``
            is then made from them the first time it is asked for.
    """

    __slots__ = ("width", "height", "samples", "_image")

    def __init__(self, image: Image.Image | None, width: int, height: int,
                 *, samples: np.ndarray | None = None):
        if (image is None) == (samples is None):
            raise ValueError("give the image or its samples, not both")
        self._image, self.samples = image, samples
        self.width, self.height = width, height

    @property
    def image(self) -> Image.Image:
        if self._image is None:
            self._image = image_of_samples(self.samples)
        return self._image

    def __repr__(self) -> str:
        return (f"DecodedImage({self.width}x{self.height}, "
                f"{'samples' if self.samples is not None else 'image'})")


#: The mode of decoded samples, by their last dimension (DecodedImage).
SAMPLES_MODES = {1: "L", 4: "RGB"}


def image_of_samples(samples: np.ndarray) -> Image.Image:
    """The Pillow image of ``samples``: ``uint8 (H, W, 1)`` is an "L"
    image, ``(H, W, 4)`` an "RGB" one stored as RGBX (Pillow's own
    layout of RGB, which the resize kernel reads without a copy)."""
    height, width, channels = samples.shape
    if channels == 1:
        return Image.fromarray(samples[:, :, 0])
    return Image.frombytes("RGB", (width, height), samples, "raw", "RGBX")


def decode_image(data: bytes, *, mode: str, target_size: tuple[int, int] | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, background: int = 0) -> DecodedImage:
    """Decodes an image file's bytes into an upright image of mode ``mode``.

    Args:
        data: The whole file's content, in any format Pillow reads.
        mode: ``"L"`` (8-bit gray) or ``"RGB"``.
        target_size: ``(width, height)`` the caller will resize to. A JPEG is
            then decoded at a reduced scale (1/2, 1/4 or 1/8) that is still at
            least this large in both directions; other formats ignore it.
        max_pixels: Images whose header claims more pixels are rejected
            before their pixels are decoded.
        background: Gray level (0..255) that transparent pixels are
            composited over.

    Returns:
        The converted image and the source's displayed width and height.

    Raises:
        ValueError: An argument is invalid (a programming error, not bad data).
        ImageTooLargeError: The image has more than ``max_pixels`` pixels.
        ImageDecodeError: The bytes are not a readable image.
    """
    _check_arguments(mode, target_size, max_pixels, background)
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    _check_jpeg_scans(data)
    plain = _plain_jpeg(data, mode, target_size, max_pixels)
    if plain is not None:
        return plain
    try:
        return _decode(data, mode, target_size, max_pixels, background)
    except Image.DecompressionBombError:
        # Pillow's global limit fired before our own check could run. Open the
        # image again with it lifted, so that max_pixels alone decides: our
        # check reads the header size before decoding any pixel, so this is
        # as safe. This only happens for images over twice Pillow's limit
        # (about 179 million pixels by default).
        with _PILLOW_LIMIT_LOCK:
            saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
            try:
                return _decode(data, mode, target_size, max_pixels, background)
            finally:
                Image.MAX_IMAGE_PIXELS = saved


def _check_arguments(mode: str, target_size: tuple[int, int] | None, max_pixels: int,
                     background: int) -> None:
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, _MODES))}, not {mode!r}")
    if target_size is not None and not (
            len(target_size) == 2 and all(isinstance(n, int) and n > 0 for n in target_size)):
        raise ValueError(f"target_size must be two positive integers, not {target_size!r}")
    if not (isinstance(max_pixels, int) and max_pixels > 0):
        raise ValueError(f"max_pixels must be a positive integer, not {max_pixels!r}")
    if not (isinstance(background, int) and 0 <= background <= 255):
        raise ValueError(f"background must be a gray level from 0 to 255, not {background!r}")


def _decode(data: bytes, mode: str, target_size: tuple[int, int] | None, max_pixels: int,
            background: int) -> DecodedImage:
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as img:
            width, height = img.size
            check_pixels(width, height, max_pixels)
            if img.format in ("JPEG", "MPO"):
                _check_jpeg_data(data, img)
            orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
            turned = orientation in _QUARTER_TURNS
            if turned:
                width, height = height, width
            if target_size is not None:
                # Only JPEG implements draft(); elsewhere it does nothing. It
                # works on the stored pixels, before the EXIF rotation.
                draft_width, draft_height = target_size
                img.draft(mode, (draft_height, draft_width) if turned else target_size)
            img.load()
            # Leaving the with block closes only the file, not the loaded
            # pixels. exif_transpose copies even an upright image (0.27 ms
            # of 1.6 for a 361x510 photo), so it runs only where it turns.
            upright = ImageOps.exif_transpose(img) if orientation in _TRANSPOSED else img
    except (ImageDecodeError, Image.DecompressionBombError, MemoryError):
        raise
    except Image.UnidentifiedImageError as exc:
        raise ImageDecodeError(f"not an image in a format imgclass reads "
                               f"({', '.join(FORMATS)})") from exc
    except Exception as exc:
        # Pillow's plugins raise all sorts of built-in exceptions on hostile or
        # damaged input (OSError, SyntaxError, struct.error, EOFError,
        # IndexError, zlib.error...); none of them may stop a bulk run.
        raise ImageDecodeError(f"truncated or corrupt image data: {_one_line(exc)}") from exc
    try:
        image = _convert(upright, mode, background)
    except MemoryError:
        raise
    except Exception as exc:
        raise ImageDecodeError(
            f"cannot convert pixel mode {upright.mode} to {mode}: {_one_line(exc)}") from exc
    return DecodedImage(image=image, width=width, height=height)


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    """ImageTooLargeError when an image of ``width`` x ``height`` has more
    than ``max_pixels`` pixels (a decompression bomb guard)."""
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"image is {width}x{height} = {width * height:,} pixels, "
            f"over the limit of {max_pixels:,}")


def to_mode(image: Image.Image, *, mode: str, background: int = 0) -> Image.Image:
    """A decoded Pillow image of any mode -> ``mode``, converted exactly as
    :func:`decode_image` converts (16-bit scaled, alpha composited over
    ``background``); for callers that decode images themselves. An image
    that already has that mode is returned as it is, not copied."""
    _check_arguments(mode, None, DEFAULT_MAX_PIXELS, background)
    return _convert(image, mode, background)
def _check_jpeg_data(data: bytes, img: Image.Image) -> None:
    """Refuses a JPEG whose file is too short for the size its header
    claims (e.g. 7000x7000 over the data of 32x32 pixels).

    A Huffman-coded JPEG spends at least one bit per MCU (the smallest unit
    of 8x8 blocks the frame's sampling allows) in its first scan; libjpeg
    pads data that ends early with gray and only warns, so Pillow's
    ``load()`` would succeed. A bound, not a full check: it catches headers
    that claim far more pixels than the file holds.
    """
    if _jpeg_frame_marker(data) not in _HUFFMAN_FRAMES or not img.layer:
        return
    width, height = img.size
    h_max = max(layer[1] for layer in img.layer) or 1
    v_max = max(layer[2] for layer in img.layer) or 1
    mcus = -(-width // (8 * h_max)) * -(-height // (8 * v_max))
    if len(data) * 8 < mcus:
        raise ImageDecodeError(
            f"truncated or inconsistent JPEG: its header claims "
            f"{width}x{height} pixels, which need at least {mcus // 8:,} "
            f"bytes of image data, but the file has {len(data):,} bytes")


def _check_jpeg_scans(data: bytes) -> None:
    """Refuses a progressive JPEG (or MPO) of more than
    :data:`MAX_JPEG_SCANS` scans before anything is decoded. Only
    progressive scans can skip blocks by the thousand (an end-of-band run)
    over a buffer of the whole image; a sequential scan codes every block
    it covers, so its cost follows the file's size. A JPEG whose frame this
    module's parser cannot find is counted too (libjpeg skips garbage that
    stops it). The count of start-of-scan markers in the file is an upper
    bound of its scans: inside entropy-coded data a 0xFF byte is followed
    by 0x00 (stuffing) or by a marker; counting costs about 50 us per
    60 kB, so sequential JPEGs, most of them, are not counted."""
    if data[:2] != b"\xff\xd8" or _jpeg_frame_marker(data) in _SEQUENTIAL_FRAMES:
        return
    scans = data.count(b"\xff\xda")
    if scans > MAX_JPEG_SCANS:
        raise ImageDecodeError(
            f"JPEG of {scans:,} scans, over the limit of {MAX_JPEG_SCANS:,} "
            f"(encoders write about 10): a decompression bomb, refused "
            f"before decoding")


# SOFn markers of sequential (not progressive) frames, Huffman or
# arithmetic coded, lossless included.
_SEQUENTIAL_FRAMES = frozenset({0xC0, 0xC1, 0xC3, 0xC5, 0xC7, 0xC9, 0xCB, 0xCD,
                                0xCF})


def _jpeg_frame_marker(data: bytes) -> int | None:
    """The SOFn marker of a JPEG (the segment that gives its size)."""
    return next((marker for marker, _ in _jpeg_segments(data)
                 if _is_frame(marker)), None)


def _is_frame(marker: int) -> bool:
    return 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)


def _jpeg_segments(data: bytes):
    """``(marker, payload)`` of each segment of a JPEG before its first
    scan (SOS), as far as the data is well formed; markers without a
    length give an empty payload."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # no length
            yield marker, b""
            i += 2
        elif marker == 0xDA:  # start of scan
            return
        else:
            end = i + 2 + int.from_bytes(data[i + 2:i + 4], "big")
            yield marker, data[i + 4:end]
            i = end


# Huffman-coded frames simplejpeg takes (baseline, extended, progressive).
# An EXIF orientation other than upright, any other APP1 (XMP, which may
# hold an orientation too) and APP14 "Adobe" (a colour transform) send a
# file to Pillow's path.
_PLAIN_FRAMES = frozenset({0xC0, 0xC1, 0xC2})
# TEM, a marker without a length: libjpeg skips it, Pillow's marker parser
# refuses it (see _pillow_refuses).
_TEM = 0x01


def _upright_exif(payload: bytes) -> bool:
    """Whether an APP1 segment is EXIF whose orientation (if any) is
    upright; False for anything Pillow should read (XMP, damaged EXIF,
    a resolution Pillow's parser fails on)."""
    if not payload.startswith(b"Exif\x00\x00"):
        return False
    exif = Image.Exif()
    try:
        exif.load(payload)
        return exif.get(ExifTags.Base.Orientation, 1) not in _TRANSPOSED \
            and not _short_resolution(exif)
    except Exception:  # noqa: BLE001 - Pillow's path tells what is wrong
        return False


def _short_resolution(exif: Image.Exif) -> bool:
    """Whether an EXIF's XResolution is text, bytes or a tuple shorter
    than the (numerator, denominator) pair Pillow's JPEG parser indexes
    it as when a ResolutionUnit is there too (to read the DPI): Pillow
    then refuses the file (IndexError), though libjpeg never reads EXIF."""
    resolution = exif.get(ExifTags.Base.XResolution)
    return ExifTags.Base.ResolutionUnit in exif \
        and isinstance(resolution, (str, bytes, tuple)) and len(resolution) < 2


def _pillow_refuses(marker: int, payload: bytes) -> bool:
    """Whether Pillow's marker parser may refuse a segment that libjpeg
    reads without a warning: TEM, and APP segments too short for the
    fields Pillow reads from them (a JFIF version, an ICC chunk's marker
    count, a Photoshop resource's name length). Such a file takes
    Pillow's path, so that it is refused whatever the mode and target."""
    if marker == 0xE0 and payload.startswith(b"JFIF"):
        return len(payload) < 7
    if marker == 0xE2 and payload.startswith(b"ICC_PROFILE\x00"):
        return len(payload) < 14
    if marker == 0xED and payload.startswith(b"Photoshop 3.0\x00"):
        return _photoshop_resource_cut_at_name(payload)
    return marker == _TEM


def _photoshop_resource_cut_at_name(payload: bytes) -> bool:
    """Whether an APP13 "Photoshop 3.0" segment's chain of 8BIM
    resources ends just before a resource's name length, the one place
    where Pillow's walk of it fails (it stops quietly anywhere else)."""
    offset = 14
    while payload[offset:offset + 4] == b"8BIM":
        if len(payload) <= offset + 6:  # type and resource id
            return len(payload) == offset + 6
        offset += 7 + payload[offset + 6]  # name length, then the name
        offset += offset & 1
        if len(payload) < offset + 4:
            return False
        offset += 4 + int.from_bytes(payload[offset:offset + 4], "big")
        offset += offset & 1
    return False


def _plain_layout(data: bytes) -> tuple[int, int, int, int] | None:
    """``(width, height, h_max, v_max)`` of a JPEG simplejpeg decodes as
    Pillow does (see :data:`_PLAIN_FRAMES`), else None."""
    if simplejpeg is None or data[:3] != b"\xff\xd8\xff":
        return None
    frame, exif_seen = None, False
    for marker, payload in _jpeg_segments(data):
        if (marker == 0xE1 and (exif_seen or not _upright_exif(payload))) \
                or (marker == 0xEE and payload.startswith(b"Adobe")) \
                or _pillow_refuses(marker, payload):
            return None
        exif_seen = exif_seen or marker == 0xE1
        if _is_frame(marker):
            if marker not in _PLAIN_FRAMES or frame is not None:
                return None
            frame = payload
    if frame is None or len(frame) < 6 or frame[0] != 8 \
            or frame[5] not in (1, 3) or len(frame) < 6 + 3 * frame[5]:
        return None
    height, width = (int.from_bytes(frame[1:3], "big"),
                     int.from_bytes(frame[3:5], "big"))
    sampling = frame[7:6 + 3 * frame[5]:3]
    return (width, height, max(v >> 4 for v in sampling) or 1,
            max(v & 15 for v in sampling) or 1)


def _plain_jpeg(data: bytes, mode: str, target_size: tuple[int, int] | None,
                max_pixels: int) -> DecodedImage | None:
    """A plain JPEG (:func:`_plain_layout`) decoded by ``simplejpeg`` at
    the scale Pillow's ``draft`` picks, or None: not such a JPEG, or one
    libjpeg warns about (truncated, corrupt): Pillow's path then decides,
    and words the error. The size and data checks come first, as there."""
    if mode == "L" and target_size is None:
        return None  # Pillow's luma of the RGB, not libjpeg's Y: its path
    layout = _plain_layout(data)
    if layout is None:
        return None
    width, height, h_max, v_max = layout
    if min(width, height) < 8:
        # below 8 pixels two of libjpeg's M/8 scales can give the same
        # size, so the size decoded would not tell which one it took
        return None
    check_pixels(width, height, max_pixels)
    if len(data) * 8 < -(-width // (8 * h_max)) * -(-height // (8 * v_max)):
        return None  # Pillow's path refuses it (_check_jpeg_data)
    scale = 1
    if target_size is not None:  # JpegImageFile.draft's choice
        fits = min(width // target_size[0], height // target_size[1])
        scale = next((s for s in (8, 4, 2, 1) if fits >= s), 1)
    size = (-(-height // scale), -(-width // scale))
    try:
        samples = simplejpeg.decode_jpeg(
            data, colorspace="GRAY" if mode == "L" else "RGBX",
            min_height=size[0], min_width=size[1])
    except Exception:  # noqa: BLE001 - Pillow's path tells what is wrong
        return None
    if samples.shape[:2] != size:  # libjpeg took an M/8 scale Pillow lacks
        return None  # (from 8 pixels up, each scale gives its own size)
    return DecodedImage(None, width, height, samples=samples)


def _convert(img: Image.Image, mode: str, background: int) -> Image.Image:
    """Converts a loaded image of any Pillow mode to ``mode``."""
    if img.mode in _SIXTEEN_BIT_MODES:
        # Scale, don't clip: Pillow's own conversion to "L" clips at 255,
        # which would turn most of a 16-bit image white.
        img = _gray(np.asarray(img, dtype=np.float64) / _SIXTEEN_TO_EIGHT)
    elif img.mode == "F":
        # Float samples are taken to be on the 0..255 scale (Pillow's own
        # convention, e.g. for "L" -> "F"): clipped to it, NaN as black.
        img = _gray(np.asarray(img, dtype=np.float64))
    elif img.has_transparency_data:
        # Dropping the alpha would reveal whatever colour the transparent
        # pixels happen to hold; composite them over the background instead.
        rgba = img.convert("RGBA")
        backdrop = Image.new("RGBA", rgba.size, (background, background, background, 255))
        img = Image.alpha_composite(backdrop, rgba).convert("RGB")
    elif img.mode not in _MODES:
        # "1", "P", "CMYK", "YCbCr"...: through RGB, so that "L" is always
        # Pillow's standard luma of the displayed colours.
        img = img.convert("RGB")
    # The image is already a copy of its own: Pillow's same-mode convert
    # would copy it again.
    return img if img.mode == mode else img.convert(mode)


def _gray(samples: np.ndarray) -> Image.Image:
    """Makes an "L" image from samples on the 0..255 scale, rounding and clipping."""
    samples = np.nan_to_num(samples, nan=0.0, posinf=255.0, neginf=0.0)
    return Image.fromarray(np.rint(np.clip(samples, 0.0, 255.0)).astype(np.uint8))


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
