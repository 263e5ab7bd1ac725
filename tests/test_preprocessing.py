"""The shared preprocessing step."""

import numpy as np
import pytest
from PIL import Image

from model_store.errors import ConfigError
from model_store.preprocessing import Preprocessing


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
])
def test_invalid_preprocessing(kwargs, message):
    base = dict(input_shape=(1, 8, 8), color_mode="L", resize="bilinear",
                mean=(0.0,), std=(1.0,))
    base.update(kwargs)
    with pytest.raises(ConfigError, match=message):
        Preprocessing(**base)
