"""Each DoFn and PTransform on its own, with Beam's TestPipeline."""

import io
import os

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.io.filesystem import FileMetadata
from apache_beam.ml.inference.base import RunInference
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from model_store.datasets import digit_image
from model_store.store import load_model
from pipeline.run import make_runner, pipeline_options
from transforms import schema
from transforms.decode import DecodeBatchFn, Example
from transforms.predict import PredictBatchesFn, TheanoModelHandler
from transforms.read import MatchFiles


@pytest.fixture(scope="module")
def model():
    return load_model("digits-cnn")


def beam_pipeline():
    """A TestPipeline on the in-process runner (never Prism)."""
    return test_pipeline.TestPipeline(runner=make_runner(pipeline_options([])))


def write(folder, name, data):
    path = os.path.join(folder, name)
    with open(path, "wb") as handle:
        handle.write(data)
    return FileMetadata(path, len(data), 0.0)


def png_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_decode_batch_routes_each_failure_to_its_stage(model, tmp_path):
    folder = str(tmp_path)
    good = write(folder, "good.png", png_bytes(
        Image.new("RGBA", (40, 30), (255, 255, 255, 255))))
    gray = write(folder, "gray.png", png_bytes(Image.new("L", (8, 8), 200)))
    junk = write(folder, "junk.png", b"junk")
    gone = FileMetadata(os.path.join(folder, "deleted.png"), 10, 0.0)
    with beam_pipeline() as p:
        out = (p | beam.Create([[good, junk], [gone, gray]])
               | beam.ParDo(DecodeBatchFn(model.preprocessing,
                                          run_id="r1")).with_outputs(
                   "errors", main="examples"))
        assert_that(
            out.examples | beam.FlatMap(lambda batch: [
                (os.path.basename(e.path), e.pixels.shape, e.pixels.dtype.name,
                 e.width, e.height, int(e.pixels.min()), int(e.pixels.max()))
                for e in batch]),
            equal_to([("good.png", (1, 32, 32), "uint8", 40, 30, 255, 255),
                      ("gray.png", (1, 32, 32), "uint8", 8, 8, 200, 200)]),
            label="examples")
        assert_that(out.errors | beam.Map(lambda e: (
            os.path.basename(e["path"]), e["stage"], e["error_type"],
            e["run_id"])),
            equal_to([("deleted.png", "read", "FileNotFoundError", "r1"),
                      ("junk.png", "decode", "ImageDecodeError", "r1")]),
            label="errors")


def test_predict_batches_writes_sorted_top_k_rows(model, split):
    prep = model.preprocessing
    examples = [Example(f"d{i}", prep.to_pixels(digit_image(
        split.test_images[i])), 8, 8) for i in range(20)]
    labels = [str(split.test_labels[i]) for i in range(20)]
    fn = PredictBatchesFn(model.ref, store=None,
                          expected_sha256=model.weights_sha256, top_k=4,
                          run_id="r")
    with beam_pipeline() as p:
        tables = (p | beam.Create([examples[:7], examples[7:]])
                  | beam.ParDo(fn).with_outputs("errors", main="rows"))

        def check(table):
            assert table.schema.equals(schema.PREDICTIONS)
            for row in table.to_pylist():
                scores = [t["score"] for t in row["top_k"]]
                assert len(scores) == 4 and scores == sorted(scores,
                                                             reverse=True)
                assert row["top_k"][0]["label"] == row["label"]
                assert row["class_id"] == int(row["label"])
            return [(r["path"], r["label"]) for r in table.to_pylist()]

        assert_that(tables.rows | beam.FlatMap(check),
                    equal_to(list(zip([e.path for e in examples], labels))))
        assert_that(tables.errors, equal_to([]), label="no errors")


def test_predict_refuses_a_model_that_differs_on_the_worker(model):
    fn = PredictBatchesFn(model.ref, store=None, expected_sha256="0" * 64,
                          top_k=1, run_id="r")
    with pytest.raises(Exception, match="deploy the same model store"):
        with beam_pipeline() as p:
            _ = p | beam.Create([[]]) | beam.ParDo(fn)


def test_match_files_is_recursive_and_globs_cross_folders(tmp_path):
    for name in ("a.png", "sub/b.png", "sub/deeper/c.jpg", "sub/d.txt"):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    root = str(tmp_path)
    with beam_pipeline() as p:
        every = (p | "all" >> beam.Create([os.path.join(root, "**")])
                 | "m1" >> MatchFiles()).files | "p1" >> beam.Map(
                     lambda m: m.path)
        assert_that(every, equal_to([os.path.join(root, n) for n in (
            "a.png", "sub/b.png", "sub/deeper/c.jpg", "sub/d.txt")]),
            label="all")
        pngs = (p | "png" >> beam.Create([os.path.join(root, "**", "*.png")])
                | "m2" >> MatchFiles()).files | "p2" >> beam.Map(
                    lambda m: m.path)
        assert_that(pngs, equal_to([os.path.join(root, "sub/b.png")]),
                    label="png")


def test_model_handler_in_beams_run_inference(model, split):
    """A user's own pipeline: RunInference with the store's model."""
    prep = model.preprocessing
    inputs = [prep([digit_image(split.test_images[i])])[0] for i in range(12)]
    want = [int(split.test_labels[i]) for i in range(12)]
    handler = TheanoModelHandler("digits-cnn", min_batch_size=4,
                                 max_batch_size=8)
    with beam_pipeline() as p:
        labels = (p | beam.Create(inputs) | RunInference(handler)
                  | beam.Map(lambda r: int(np.argmax(r.inference))))
        assert_that(labels, equal_to(want))
