"""The shared preprocessing step."""

import numpy as np
import pytest
from PIL import Image

from model_store.errors import ConfigError
from model_store.preprocessing import MAX_RESIZE_SHORTER, Preprocessing


def test_resizes_with_the_model_filter_and_normalises():
    prep = Preprocessing((1, 4, 4), "L", "bilinear", (0.2,), (0.5,))
    image = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4)
    pixels = prep.to_pixels(image)
    assert pixels.shape == (1, 4, 4) and pixels.dtype == np.uint8
    want = np.asarray(image.resize((4, 4), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(pixels[0], want)
    batch = prep.normalize(pixels[None])
    assert batch.dtype == np.float32
    np.testing.assert_allclose(batch[0, 0], (want / 255.0 - 0.2) / 0.5,
                               rtol=1e-5, atol=1e-6)


def test_rgb_channels_first_and_per_channel_statistics():
    prep = Preprocessing((3, 2, 2), "RGB", "nearest", (0.0, 0.5, 1.0),
                         (1.0, 0.5, 0.25))
    image = Image.new("RGB", (2, 2), (255, 0, 51))
    batch = prep([image])
    assert batch.shape == (1, 3, 2, 2)
    np.testing.assert_allclose(batch[0, :, 0, 0],
                               [1.0, -1.0, (0.2 - 1.0) / 0.25], rtol=1e-5)


def test_metadata_round_trip():
    prep = Preprocessing((1, 32, 32), "L", "bicubic", (0.1,), (0.3,), 255)
    assert Preprocessing.from_metadata(prep.to_metadata()) == prep


@pytest.mark.parametrize("kwargs,message", [
    ({"color_mode": "CMYK"}, "color_mode must be one of"),
    ({"resize": "magic"}, "resize must be one of"),
    ({"input_shape": (3, 8, 8)}, "does not fit color_mode 'L'"),
    ({"std": (0.0,)}, "std must be positive"),
    ({"std": (1e-30,)}, r"std must be positive and finite \(above 1e-06\)"),
    ({"std": (float("inf"),)}, "std must be positive and finite"),
    ({"std": (float("nan"),)}, "std must be positive and finite"),
    ({"mean": (float("nan"),)}, "mean must be finite"),
    ({"background": 256}, "background must be a gray level"),
    ({"background": 1.7}, "background must be a gray level"),
])
def test_invalid_preprocessing(kwargs, message):
    base = dict(input_shape=(1, 8, 8), color_mode="L", resize="bilinear",
                mean=(0.0,), std=(1.0,))
    base.update(kwargs)
    with pytest.raises(ConfigError, match=message):
        Preprocessing(**base)


def _photo_prep():
    return Preprocessing((3, 224, 224), "RGB", "bicubic",
                         (127 / 255,) * 3, (128 / 255,) * 3,
                         resize_shorter=256)


@pytest.mark.parametrize("size", [(640, 480), (300, 900), (256, 256),
                                  (100, 150)])
def test_shorter_side_then_centre_crop(size):
    """Shorter side to 256 (aspect ratio kept, bicubic), then the centre
    224 x 224: the pixels equal Pillow's own resize-then-crop up to
    rounding (only the kept part is resized; on random noise, where
    bicubic overshoots most, at most 2 levels apart in under 0.5% of the
    values; a crop one pixel off would differ everywhere)."""
    rng = np.random.RandomState(0)
    array = rng.randint(0, 256, (size[1], size[0], 3)).astype(np.uint8)
    image = Image.fromarray(array)
    prep = _photo_prep()
    pixels = prep.to_pixels(image)
    assert pixels.shape == (3, 224, 224)
    scale = 256 / min(size)
    resized = (round(size[0] * scale), round(size[1] * scale))
    assert min(resized) == 256
    want = image.resize(resized, Image.Resampling.BICUBIC)
    left, top = (resized[0] - 224) // 2, (resized[1] - 224) // 2
    want = np.asarray(want)[top:top + 224, left:left + 224]
    difference = np.abs(pixels.transpose(1, 2, 0).astype(np.int16) - want)
    assert difference.max() <= 2
    assert np.count_nonzero(difference) < 0.005 * difference.size


def test_batches_come_out_c_contiguous_whatever_the_input_layout():
    """Decoded pixels are channels-first copies, and a batch stacked from
    transposed views still normalises to a C-ordered array with the same
    values: the predictor then takes it without another copy."""
    prep = _photo_prep()
    rng = np.random.RandomState(1)
    hwc = rng.randint(0, 256, (4, 224, 224, 3)).astype(np.uint8)
    pixels = prep.to_pixels(Image.fromarray(hwc[0]))
    assert pixels.flags["C_CONTIGUOUS"]
    transposed = np.stack([image.transpose(2, 0, 1) for image in hwc])
    assert not transposed.flags["C_CONTIGUOUS"]
    batch = prep.normalize(transposed)
    assert batch.flags["C_CONTIGUOUS"] and batch.dtype == np.float32
    mean = np.asarray(prep.mean).reshape(1, 3, 1, 1)
    std = np.asarray(prep.std).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(
        batch, (hwc.transpose(0, 3, 1, 2) / 255.0 - mean) / std,
        rtol=1e-5, atol=1e-6)


def test_photo_normalisation_is_x_minus_127_over_128():
    prep = _photo_prep()
    pixels = np.array([0, 127, 255], np.uint8).reshape(1, 3, 1, 1)
    pixels = np.broadcast_to(pixels, (1, 3, 224, 224))
    batch = prep.normalize(np.ascontiguousarray(pixels))
    np.testing.assert_allclose(batch[0, :, 0, 0],
                               [-127 / 128, 0.0, 1.0], atol=1e-6)


def test_photo_metadata_round_trip_and_crop_check():
    prep = _photo_prep()
    meta = prep.to_metadata()
    assert meta["resize_shorter"] == 256 and meta["crop"] == [224, 224]
    assert Preprocessing.from_metadata(meta) == prep
    assert "resize_shorter" not in Preprocessing(
        (1, 8, 8), "L", "bilinear", (0.0,), (1.0,)).to_metadata()
    with pytest.raises(ConfigError, match="crop"):
        Preprocessing.from_metadata(dict(meta, crop=[200, 200]))
    with pytest.raises(ConfigError, match="resize_shorter"):
        Preprocessing.from_metadata(dict(meta, resize_shorter=200))


def test_a_resize_shorter_too_large_to_crop_from_is_refused():
    """10**30 was accepted, and then every file of a run failed at
    preprocess ("resample: inconsistent sizes or box")."""
    meta = _photo_prep().to_metadata()
    for value in (10**30, MAX_RESIZE_SHORTER + 1):
        with pytest.raises(ConfigError, match="resize_shorter must be an "
                                              "integer from the crop size"):
            Preprocessing.from_metadata(dict(meta, resize_shorter=value))
    prep = Preprocessing.from_metadata(
        dict(meta, resize_shorter=MAX_RESIZE_SHORTER))
    image = Image.new("RGB", (3, 1000), (200, 100, 50))
    assert prep.to_pixels(image)[:, 0, 0].tolist() == [200, 100, 50]


def test_jpeg_draft_never_reduces_below_the_shorter_side():
    """A large JPEG is decoded at a reduced scale, but its shorter side
    stays at least 256, whatever the aspect ratio and EXIF rotation."""
    import io

    from model_store.images import decode_image

    prep = _photo_prep()
    assert prep.decode_size == (256, 256)
    for size, orientation in [((2400, 1100), 1), ((1100, 2400), 1),
                              ((2400, 1100), 6), ((4000, 520), 1)]:
        buffer = io.BytesIO()
        exif = Image.Exif()
        exif[0x0112] = orientation
        Image.new("RGB", size, (200, 10, 10)).save(buffer, "JPEG",
                                                   exif=exif.tobytes())
        decoded = decode_image(buffer.getvalue(), mode="RGB",
                               target_size=prep.decode_size)
        assert min(decoded.image.size) >= 256
        assert max(decoded.image.size) < max(size)  # it did reduce
        assert prep.to_pixels(decoded.image).shape == (3, 224, 224)


def _jpeg(size, gray=False):
    import io

    rng = np.random.RandomState(size[0] + size[1])
    y, x = np.mgrid[0:size[1], 0:size[0]]
    rgb = np.stack([x % 256, y % 256, (x * y) % 256], -1) + rng.randint(
        -30, 30, (size[1], size[0], 3))
    image = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    (image.convert("L") if gray else image).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@pytest.mark.parametrize("prep, sizes", [
    (_photo_prep(), [(640, 480), (300, 900), (256, 256), (1001, 257),
                     (256, 300)]),
    (Preprocessing((1, 32, 32), "L", "bicubic", (0.1,), (0.3,)),
     [(256, 256), (32, 32), (33, 47), (100, 60)]),
    (Preprocessing((3, 32, 32), "RGB", "bilinear", (0.1,) * 3, (0.3,) * 3),
     [(256, 256), (32, 32), (64, 40)])])
@pytest.mark.parametrize("kernel", [True, False])
def test_pixels_from_the_decoders_samples_equal_those_of_its_image(
        prep, sizes, kernel, monkeypatch):
    """A plain JPEG keeps the decoder's samples; resizing them (with the
    kernel, or through Pillow where it did not compile; whole pixels at
    scale 1 as a crop) gives the pixels the Pillow image gives."""
    from model_store import resample
    from model_store.images import decode_image

    if not kernel:
        monkeypatch.setattr(resample, "compiled", lambda: None)
    for size in sizes:
        for gray in (False, True):
            decoded = decode_image(_jpeg(size, gray), mode=prep.color_mode,
                                   target_size=prep.decode_size)
            assert decoded.samples is not None
            from_samples = prep.pixels_of(decoded)
            assert from_samples.flags["C_CONTIGUOUS"]
            assert np.array_equal(from_samples,
                                  prep.to_pixels(decoded.image)), size
