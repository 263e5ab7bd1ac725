"""The one preprocessing step between a decoded image and the network.

Training, evaluation and the pipeline all call :class:`Preprocessing`, built
from the model's metadata, so they cannot drift apart. It has two halves so
that the pipeline can ship small ``uint8`` pixels between stages and
normalise a whole batch with one vectorised NumPy expression:

* :meth:`Preprocessing.to_pixels`: image -> ``uint8`` array ``(C, H, W)``,
  resized to the model input with the model's resampling filter; or, for
  photo models (``resize_shorter``), resized so that its shorter side has
  that length, keeping the aspect ratio, then cut to the input size at the
  centre (only the part that is kept is resized).
* :meth:`Preprocessing.normalize`: ``uint8`` batch ``(N, C, H, W)`` ->
  ``float32``, scaled to ``[0, 1]``, then ``(x - mean) / std`` per channel.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from model_store.errors import ConfigError
from model_store.images import SAMPLES_MODES, DecodedImage
from model_store.resample import resize_planar, resize_samples

RESIZE_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
COLOR_MODES = {"L": 1, "RGB": 3}
# The smallest std accepted: below it (x - mean) / std is a blow-up, not a
# normalisation (one level of an 8-bit pixel is 1/255 on this scale).
MIN_STD = 1e-6
# A larger shorter side leaves a centre crop too small a part of the image
# for the resampler's float box (every file would fail at preprocess).
MAX_RESIZE_SHORTER = 65_536


def finite(value) -> bool:
    """Whether the number ``value`` is finite as a float (a JSON integer
    beyond float's range is not: math.isfinite raised OverflowError)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How a model wants its input.

    Attributes:
        input_shape: ``(channels, height, width)`` of one example.
        color_mode: ``"L"`` (1 channel) or ``"RGB"`` (3 channels).
        resize: Pillow resampling filter name, see ``RESIZE_FILTERS``.
        mean: per-channel mean, on the ``[0, 1]`` scale.
        std: per-channel standard deviation, on the ``[0, 1]`` scale.
        background: gray level (0-255) that transparent pixels are composited
            on when decoding.
        resize_shorter: when set, the shorter side is resized to this many
            pixels (aspect ratio kept) and the centre ``H x W`` of
            ``input_shape`` is cropped; when None, the image is resized to
            ``H x W`` directly.
    """

    input_shape: tuple[int, int, int]
    color_mode: str
    resize: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    background: int = 0
    resize_shorter: int | None = None

    def __post_init__(self):
        channels = COLOR_MODES.get(self.color_mode)
        if channels is None:
            raise ConfigError(f"color_mode must be one of {sorted(COLOR_MODES)}"
                              f", got {self.color_mode!r}")
        if self.resize not in RESIZE_FILTERS:
            raise ConfigError(f"resize must be one of {sorted(RESIZE_FILTERS)}"
                              f", got {self.resize!r}")
        if len(self.input_shape) != 3 or self.input_shape[0] != channels:
            raise ConfigError(f"input_shape {self.input_shape} does not fit "
                              f"color_mode {self.color_mode!r} ({channels} "
                              f"channel(s))")
        for name in ("mean", "std"):
            if len(getattr(self, name)) != channels:
                raise ConfigError(f"{name} needs {channels} value(s), got "
                                  f"{getattr(self, name)}")
        if not all(finite(m) for m in self.mean):
            raise ConfigError(f"mean must be finite, got {self.mean!r:.200}")
        if not all(finite(s) and s > MIN_STD for s in self.std):
            raise ConfigError(f"std must be positive and finite (above "
                              f"{MIN_STD}), got {self.std!r:.200}")
        with np.errstate(all="ignore"):  # normalize's float32 arithmetic
            std = np.float32(self.std) * np.float32(255.0)
            offset = np.float32(self.mean) / np.float32(self.std)
        if not (np.isfinite(std).all() and np.isfinite(offset).all()):
            # A mean of 1e308 made every input -inf, every prediction NaN;
            # a std of 1e39 every input 0.
            raise ConfigError(f"mean and std must keep (x / 255 - mean) / "
                              f"std finite in float32, in which the network "
                              f"runs; got mean {self.mean}, std {self.std}")
        if type(self.background) is not int or not 0 <= self.background \
                <= 255:
            raise ConfigError(f"background must be a gray level, an integer "
                              f"from 0 to 255, got {self.background!r}")
        if self.resize_shorter is not None and not (
                isinstance(self.resize_shorter, int)
                and max(self.input_shape[1:]) <= self.resize_shorter
                <= MAX_RESIZE_SHORTER):
            raise ConfigError(f"resize_shorter must be an integer from the "
                              f"crop size {list(self.input_shape[1:])} to "
                              f"{MAX_RESIZE_SHORTER:,}, got "
                              f"{self.resize_shorter!r:.100}")

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> "Preprocessing":
        norm = metadata["normalization"]
        shape = tuple(metadata["input_shape"])
        crop = metadata.get("crop")
        if crop is not None and list(crop) != list(shape[1:]):
            raise ConfigError(f"crop {crop} differs from the input height and "
                              f"width {list(shape[1:])}")
        return cls(input_shape=shape,
                   color_mode=metadata["color_mode"],
                   resize=metadata["resize"],
                   mean=tuple(norm["mean"]), std=tuple(norm["std"]),
                   background=int(metadata.get("background", 0)),
                   resize_shorter=metadata.get("resize_shorter"))

    def to_metadata(self) -> dict:
        out = {"input_shape": list(self.input_shape),
               "color_mode": self.color_mode, "resize": self.resize,
               "normalization": {"mean": list(self.mean),
                                 "std": list(self.std)},
               "background": self.background}
        if self.resize_shorter is not None:
            out.update(resize_shorter=self.resize_shorter,
                       crop=list(self.input_shape[1:]))
        return out

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` in Pillow's order."""
        return (self.input_shape[2], self.input_shape[1])

    @property
    def decode_size(self) -> tuple[int, int]:
        """``(width, height)`` a decoder may reduce an image to, at least:
        the input size, or for ``resize_shorter`` a square of that side, so
        that the shorter side still needs no upscaling."""
        if self.resize_shorter is None:
            return self.size
        return (self.resize_shorter, self.resize_shorter)

    def to_pixels(self, image: Image.Image) -> np.ndarray:
        """Resizes one image to the model input: a C-contiguous ``uint8
        (C, H, W)`` array (so that batches stack, normalise and pickle as
        plain copies)."""
        if image.mode != self.color_mode:
            image = image.convert(self.color_mode)
        if self.resize_shorter is not None:
            return resize_planar(image, self.size, RESIZE_FILTERS[self.resize],
                                 self._centre_crop_box(image.size))
        return resize_planar(image, self.size, RESIZE_FILTERS[self.resize])

    def pixels_of(self, decoded: DecodedImage) -> np.ndarray:
        """:meth:`to_pixels` of a decoded image: from the samples the
        decoder kept, when it kept them in this mode (no copy into Pillow
        and back), else from its Pillow image."""
        samples = decoded.samples
        if samples is None or SAMPLES_MODES[samples.shape[2]] != \
                self.color_mode:
            return self.to_pixels(decoded.image)
        box = None if self.resize_shorter is None else \
            self._centre_crop_box((samples.shape[1], samples.shape[0]))
        return resize_samples(samples, self.size, RESIZE_FILTERS[self.resize],
                              box)

    def _centre_crop_box(self, image_size: tuple[int, int]
                         ) -> tuple[float, float, float, float]:
        """The part of an image of ``image_size`` that the centre crop
        keeps, in its own coordinates. Resizing only that part gives the
        same pixels as resizing the whole image (shorter side to
        ``resize_shorter``) and then cropping, up to rounding, for about
        half the work (Pillow's ``resize(box=...)``)."""
        width, height = image_size
        scale = self.resize_shorter / min(width, height)
        size = (max(self.resize_shorter, round(width * scale)),
                max(self.resize_shorter, round(height * scale)))
        crop_w, crop_h = self.size
        left, top = (size[0] - crop_w) // 2, (size[1] - crop_h) // 2
        x_scale, y_scale = width / size[0], height / size[1]
        return (left * x_scale, top * y_scale,
                (left + crop_w) * x_scale, (top + crop_h) * y_scale)

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """Scales a ``uint8`` batch ``(N, C, H, W)`` to network input, a
        C-contiguous ``float32`` array whatever the layout of ``pixels``."""
        if pixels.ndim != 4 or pixels.shape[1:] != tuple(self.input_shape):
            raise ValueError(f"expected a batch of shape (N, "
                             f"{', '.join(map(str, self.input_shape))}), got "
                             f"{pixels.shape}")
        # One fused multiply-add: (x / 255 - mean) / std.
        scale = (1.0 / (255.0 * np.asarray(self.std, np.float32)))
        offset = np.asarray(self.mean, np.float32) / np.asarray(self.std,
                                                                np.float32)
        # Into a C-ordered buffer: on a transposed layout the in-place
        # passes below ran 4-5x slower (bench/README.md).
        out = np.empty(pixels.shape, np.float32)
        np.copyto(out, pixels)
        out *= scale.reshape(1, -1, 1, 1)
        out -= offset.reshape(1, -1, 1, 1)
        return out

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Images -> a ``float32 (N, C, H, W)`` batch, ready to predict."""
        return self.normalize(np.stack([self.to_pixels(i) for i in images]))
