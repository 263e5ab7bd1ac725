"""The baseline: what a Beam user would write without imgclass.

Beam's ``RunInference`` with a straightforward ``ModelHandler`` around the
same compiled predictor, and per-element preprocessing as in Beam's PyTorch
image-classification example: open the file, decode it fully with Pillow,
resize, normalise. Batching is left at Beam's defaults; results are written
as text, as in that example. Run by ``bench/run.py`` as a command, so that
its wall time includes process start like ``imgclass classify``'s.

    python bench/baseline.py --input 'corpus/*.jpg' --output /tmp/base
"""

import argparse
import io
from typing import Any, Iterable, Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import (
    KeyedModelHandler,
    ModelHandler,
    PredictionResult,
    RunInference,
)
from PIL import Image

from pipeline.run import make_runner, pipeline_options


class PlainTheanoHandler(ModelHandler[np.ndarray, PredictionResult, Any]):
    """Loads the stored model and calls the compiled predictor per batch."""

    def load_model(self):
        from model_store.compile import compile_predictor
        from model_store.store import load_model
        return compile_predictor(load_model("digits-cnn"))

    def run_inference(self, batch: Sequence[np.ndarray], model,
                      inference_args: Optional[dict] = None
                      ) -> Iterable[PredictionResult]:
        probs = model(np.stack(batch))
        return [PredictionResult(x, p) for x, p in zip(batch, probs)]


def read_image(path: str, *, mean: float,
               std: float) -> tuple[str, np.ndarray]:
    with FileSystems.open(path) as handle:
        image = Image.open(io.BytesIO(handle.read())).convert("L")
    image = image.resize((32, 32), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    return path, ((pixels - mean) / std)[np.newaxis]


def normalization(ref: str = "digits-cnn") -> dict:
    """The model's own mean and std (its metadata), as a user would copy
    them into their preprocessing: one grey channel."""
    from model_store.store import load_model
    stats = load_model(ref).metadata["normalization"]
    return {"mean": float(stats["mean"][0]), "std": float(stats["std"][0])}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    args, beam_args = parser.parse_known_args()
    options = pipeline_options(beam_args)
    stats = normalization()
    with beam.Pipeline(runner=make_runner(options), options=options) as p:
        _ = (p
             | beam.Create([args.input])
             | fileio.MatchAll()
             | beam.Map(lambda m: m.path)
             | beam.Reshuffle()
             | beam.Map(read_image, **stats)
             | RunInference(KeyedModelHandler(PlainTheanoHandler()))
             | beam.MapTuple(
                 lambda path, r: f"{path},{int(np.argmax(r.inference))}")
             | beam.io.WriteToText(args.output))


if __name__ == "__main__":
    main()
