"""Each DoFn and PTransform on its own, with Beam's TestPipeline."""

import io
import os
import threading
import time
import typing

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.io.filesystem import FileMetadata
from apache_beam.ml.inference.base import RunInference
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import FixedWindows, IntervalWindow, TimestampedValue
from apache_beam.utils.timestamp import Timestamp
from PIL import Image

from model_store.datasets import digit_image
from model_store.errors import ConfigError, ImgclassError
from model_store.store import load_model
from pipeline.run import make_runner, pipeline_options
from tests.conftest import write_bad_files, write_digits
from transforms import schema
from transforms.classify import ClassifyImages
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


def test_decoding_on_threads_keeps_order_errors_and_counts(model, tmp_path,
                                                            monkeypatch):
    """Two decoding threads (used for files that are slow to decode;
    forced here): each batch's examples keep its order, every bad file
    is an error row of its stage, and Beam's counters, updated in Beam's
    own thread, count every file."""
    from apache_beam.metrics import MetricsFilter

    import transforms.decode as decode

    monkeypatch.setattr(decode, "THREADED_DECODE_SECONDS", 0.0)
    folder = str(tmp_path)
    files = []
    for i in range(24):
        files.append(write(folder, f"f{i:02d}.png", b"junk") if i % 5 == 3
                     else write(folder, f"f{i:02d}.png", png_bytes(
                         Image.new("L", (8, 8), 10 * i))))
    batches = [files[:12], files[12:]]
    p = beam_pipeline()
    out = (p | beam.Create(batches)
           | beam.ParDo(DecodeBatchFn(model.preprocessing, run_id="r",
                                      threads=2)).with_outputs(
               "errors", main="examples"))
    good = [f for i, f in enumerate(files) if i % 5 != 3]
    assert_that(out.examples | beam.Map(lambda batch: [
        (os.path.basename(e.path), int(e.pixels[0, 0, 0])) for e in batch]),
        equal_to([[(os.path.basename(f.path), 10 * files.index(f))
                   for f in part if f in good] for part in batches]),
        label="examples in order")
    assert_that(out.errors | beam.Map(lambda e: (os.path.basename(
        e["path"]), e["stage"])), equal_to([
            (f"f{i:02d}.png", "decode") for i in range(24) if i % 5 == 3]),
        label="errors")
    result = p.run()
    result.wait_until_finish()
    counters = {c.key.metric.name: c.committed for c in result.metrics().query(
        MetricsFilter().with_namespace("imgclass"))["counters"]}
    assert counters["files_decoded"] == len(good) == 19
    assert counters["files_failed_decode"] == 5


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


class _HeldPredictor:
    """A predictor whose calls wait until ``release`` is set, and fail for
    batches of ``fail_size`` examples."""

    def __init__(self, predictor, fail_size=None):
        self._predictor = predictor
        self.stored = predictor.stored
        self.started, self.release = threading.Event(), threading.Event()
        self._fail_size = fail_size

    def predict(self, batch):
        self.started.set()
        assert self.release.wait(60)
        if len(batch) == self._fail_size:
            raise RuntimeError("the network failed")
        return self._predictor.predict(batch)


def held_predict_fn(model, **held):
    """A set-up PredictBatchesFn in a bundle, whose predictor is a
    :class:`_HeldPredictor`."""
    fn = PredictBatchesFn(model.ref, store=None,
                          expected_sha256=model.weights_sha256, top_k=1,
                          run_id="r")
    fn.setup()
    fn._predictor = _HeldPredictor(fn._predictor, **held)
    fn.start_bundle()
    return fn, fn._predictor


def digit_examples(model, split, count):
    prep = model.preprocessing
    return [Example(f"d{i}", prep.to_pixels(digit_image(split.test_images[i])),
                    8, 8) for i in range(count)]


def test_predict_hands_beams_thread_back_while_the_network_runs(model, split):
    """While one batch is in the network, Beam's thread returns to decode
    the next; each batch's rows come out once, in order, in the batch's
    own window and timestamp, the last at the end of the bundle."""
    examples = digit_examples(model, split, 6)
    fn, held = held_predict_fn(model)
    first, second = IntervalWindow(0, 10), IntervalWindow(10, 20)
    assert list(fn.process(examples[:4], first, Timestamp(1))) == []
    assert held.started.wait(60) and not held.release.is_set()
    held.release.set()
    out = list(fn.process(examples[4:], second, Timestamp(12)))
    out += list(fn.finish_bundle())
    fn.teardown()
    assert [(v.windows, v.timestamp, v.value.column("path").to_pylist())
            for v in out] == [
        ((first,), Timestamp(1), ["d0", "d1", "d2", "d3"]),
        ((second,), Timestamp(12), ["d4", "d5"])]
    labels = [label for v in out for label in v.value.column("label")
              .to_pylist()]
    assert labels == [str(split.test_labels[i]) for i in range(6)]


def test_a_failed_network_call_makes_error_rows_of_its_batch_only(model,
                                                                  split):
    examples = digit_examples(model, split, 5)
    fn, held = held_predict_fn(model, fail_size=2)
    held.release.set()
    window = IntervalWindow(0, 10)
    out = list(fn.process(examples[:2], window, Timestamp(3)))
    out += list(fn.process(examples[2:], window, Timestamp(4)))
    out += list(fn.finish_bundle())
    fn.teardown()
    errors = [o for o in out if isinstance(o, beam.pvalue.TaggedOutput)]
    assert [(e.tag, e.value.value["path"], e.value.value["stage"],
             e.value.timestamp) for e in errors] == [
        (schema.ERRORS_TAG, path, "predict", Timestamp(3))
        for path in ("d0", "d1")]
    assert errors[0].value.value["message"] == "the network failed"
    tables = [o for o in out if not isinstance(o, beam.pvalue.TaggedOutput)]
    assert [t.value.column("path").to_pylist() for t in tables] == [
        ["d2", "d3", "d4"]]


def test_a_bundle_retried_after_failing_with_a_batch_in_flight_gives_each_row_once(
        model, split):
    """A runner that retries a failed bundle on the same DoFn instance
    (its outputs discarded) gets each batch's rows once from the retry:
    the batch left in flight by the failed attempt is neither emitted
    into the retry nor lost."""
    examples = digit_examples(model, split, 6)
    fn, held = held_predict_fn(model)
    held.release.set()
    window = IntervalWindow(0, 10)
    list(fn.process(examples[:3], window, Timestamp(1)))
    list(fn.process(examples[3:], window, Timestamp(2)))  # batch 1's rows
    # ... and the bundle fails here, batch 2 in flight: Beam retries it.
    fn.start_bundle()
    out = list(fn.process(examples[:3], window, Timestamp(1)))
    out += list(fn.process(examples[3:], window, Timestamp(2)))
    out += list(fn.finish_bundle())
    fn.teardown()
    paths = [path for v in out for path in v.value.column("path").to_pylist()]
    assert paths == [f"d{i}" for i in range(6)]
    labels = [label for v in out for label in v.value.column("label")
              .to_pylist()]
    assert labels == [str(split.test_labels[i]) for i in range(6)]


def test_predicted_rows_stay_in_their_batchs_window_in_a_pipeline(model,
                                                                  split):
    examples = digit_examples(model, split, 9)
    fn = PredictBatchesFn(model.ref, store=None,
                          expected_sha256=model.weights_sha256, top_k=1,
                          run_id="r")
    batches = [TimestampedValue(examples[i:i + 3], 10 * i) for i in (0, 3, 6)]
    with beam_pipeline() as p:
        rows = (p | beam.Create(batches) | beam.WindowInto(FixedWindows(10))
                | beam.ParDo(fn).with_outputs("errors", main="rows"))
        assert_that(rows.rows | beam.Map(
            lambda t, w=beam.DoFn.WindowParam: (int(w.start),
                                                t.column("path").to_pylist())),
            equal_to([(0, ["d0", "d1", "d2"]), (30, ["d3", "d4", "d5"]),
                      (60, ["d6", "d7", "d8"])]))


def test_predict_leaves_unsure_rows_unlabelled_but_keeps_top_k(model):
    fn = PredictBatchesFn(model.ref, store=None,
                          expected_sha256=model.weights_sha256, top_k=2,
                          run_id="r", min_confidence=0.6)
    fn.setup()
    probs = np.full((3, 10), 0.01, np.float32)
    probs[0, 3], probs[1, 7], probs[2, 5] = 0.91, 0.59, 0.6
    examples = [Example(f"p{i}", None, 8, 8) for i in range(3)]
    rows = fn._table(examples, probs).to_pylist()
    assert [(r["label"], r["class_id"]) for r in rows] == [
        ("3", 3), (None, None), ("5", 5)]
    assert rows[1]["top_k"][0] == {"label": "7", "score": pytest.approx(0.59)}
    assert rows[1]["confidence"] == pytest.approx(0.59)


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


def test_batched_files_arrive_as_listed_with_what_the_skip_check_learnt(
        tmp_path):
    """Between stages files travel as plain tuples (no pickling): what
    reaches the batches is still each file's ``FileMetadata`` (size and
    modification time as listed), what cannot be read an error row, and a
    ``MatchedFile``'s ledger facts survive the spread."""
    from transforms.read import BatchFiles
    from transforms.skip import MatchedFile

    for i in range(5):
        (tmp_path / f"{i}.png").write_bytes(b"x" * i)
        os.utime(tmp_path / f"{i}.png", (1.5e9 + i / 4, 1.5e9 + i / 4))
    os.mkfifo(tmp_path / "pipe.png")
    listed = [FileMetadata(str(tmp_path / f"{i}.png"), i, 1.5e9 + i / 4)
              for i in range(5)]
    learnt = [MatchedFile(m, sha256=f"{i:064x}", retried_stage="read")
              for i, m in enumerate(listed)]

    def described(batch):
        return sorted((type(m).__name__, m.path, m.size_in_bytes,
                       m.last_updated_in_seconds,
                       getattr(m, "sha256", None)) for m in batch)

    with beam_pipeline() as p:
        found = (p | beam.Create([str(tmp_path / "*")]) | MatchFiles())
        batches = found.files | "files" >> BatchFiles(10)
        assert_that(batches | "d1" >> beam.Map(described), equal_to(
            [described(listed)]), label="files")
        assert_that(found.errors | beam.Map(lambda r: r["path"]),
                    equal_to([str(tmp_path / "pipe.png")]), label="errors")
        wrapped = (p | "learnt" >> beam.Create(learnt)
                   | "matched" >> BatchFiles(10))
        assert_that(wrapped | "d2" >> beam.Map(described), equal_to(
            [described(learnt)]), label="matched")


def test_classify_images_turns_patterns_into_rows_and_error_rows(
        model, split, tmp_path):
    """The README's composite transform: patterns in (overlapping ones
    match a file once), a table of rows per batch and an error row per
    unusable file out, every file in exactly one."""
    folder = str(tmp_path / "in")
    truth = write_digits(folder, split, 12, seed=3)
    bad = write_bad_files(os.path.join(folder, "bad"))
    patterns = [os.path.join(folder, "**"), os.path.join(folder, "batch0/*")]

    def check_predictions(rows):
        assert sorted(path for path, *_ in rows) == sorted(truth)
        assert {(run_id, k) for _, _, run_id, k in rows} == {("r7", 3)}
        correct = sum(label == truth[path] for path, label, *_ in rows)
        assert correct >= len(truth) - 1

    with beam_pipeline() as p:
        out = (p | beam.Create(patterns)
               | ClassifyImages("digits-cnn", top_k=3, batch_size=5,
                                run_id="r7"))
        rows = out["predictions"] | beam.FlatMap(lambda table: [
            (r["path"], r["label"], r["run_id"], len(r["top_k"]))
            for r in table.to_pylist()] if table.schema.equals(
                schema.PREDICTIONS) else [("wrong schema", None, None, 0)])
        assert_that(rows, check_predictions)
        assert_that(out["errors"] | beam.Map(
            lambda r: (r["path"], r["stage"], r["run_id"])),
            equal_to([(path, stage, "r7") for path, stage in bad.items()]),
            label="error rows")


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


def test_model_handler_takes_images_and_returns_labels(model, split):
    """Decoded images in (Pillow and uint8 arrays, any mode), normalised with
    the model's own preprocessing; labels and top-k out."""
    images = [digit_image(split.test_images[i], 24) for i in range(6)]
    images[1] = images[1].convert("RGBA")
    images[2] = np.asarray(images[2].convert("RGB"))
    want = [str(split.test_labels[i]) for i in range(6)]
    handler = TheanoModelHandler("digits-cnn", inputs="images",
                                 outputs="top_k", top_k=3, max_batch_size=4)
    with beam_pipeline() as p:
        rows = (p | beam.Create(images) | RunInference(handler)
                | beam.Map(lambda r: (r.inference["label"], r.model_id,
                                      [label for label, _ in
                                       r.inference["top_k"]][0],
                                      len(r.inference["top_k"]))))
        assert_that(rows, equal_to([(w, model.ref, w, 3) for w in want]))


def test_model_handler_refuses_unnormalised_uint8_arrays(model):
    handler = TheanoModelHandler("digits-cnn")
    predictor = handler.load_model()
    pixels = np.zeros((1, 32, 32), np.uint8)
    with pytest.raises(ValueError, match="inputs='images'"):
        handler.run_inference([pixels], predictor)


def test_model_handler_follows_model_updates(model, tmp_path):
    """RunInference's model updates name a version folder; results carry the
    new model's id."""
    handler = TheanoModelHandler("digits-cnn@1")
    handler.update_model_path(model.location)
    predictor = handler.load_model()
    (result,) = handler.run_inference(
        [np.zeros((1, 32, 32), np.float32)], predictor)
    assert result.model_id == model.ref and predictor.stored.location == \
        model.location
    handler.update_model_path(str(tmp_path / "no-such-version"))
    with pytest.raises(ImgclassError, match="no-such-version"):
        handler.load_model()


def test_model_handler_passes_beam_options_through():
    handler = TheanoModelHandler("digits-cnn", large_model=True,
                                 model_copies=2, max_batch_duration_secs=5,
                                 min_batch_size=2, max_batch_size=9)
    assert handler.share_model_across_processes()
    assert handler.model_copies() == 2
    assert handler.batch_elements_kwargs() == {
        "min_batch_size": 2, "max_batch_size": 9,
        "max_batch_duration_secs": 5}


def test_offline_options_never_use_the_downloading_direct_runner():
    from pipeline.run import offline_options
    with beam.Pipeline(options=offline_options()) as p:
        assert_that(p | beam.Create([1, 2]) | beam.Map(lambda x: x * 2),
                    equal_to([2, 4]))
    assert type(p.runner).__name__ == "FnApiRunner"
    assert offline_options("--runner=PortableRunner",
                           "--job_endpoint=embed").view_as(
        beam.options.pipeline_options.StandardOptions).runner == \
        "PortableRunner"


def test_options_views_share_their_values_as_beams_do():
    """The options' views are made once per class (Beam asks for one about
    350 times a run): a value set through one view is what every other view
    and a pickled copy read, and the flags given are parsed."""
    import pickle

    from apache_beam.options.pipeline_options import (
        DebugOptions,
        DirectOptions,
        PipelineOptions,
        StandardOptions,
    )

    from pipeline.run import offline_options

    options = offline_options("--direct_num_workers=3",
                              "--experiments=a", "--experiments=b")
    assert options.view_as(DirectOptions).direct_num_workers == 3
    options.view_as(StandardOptions).streaming = True
    options.view_as(DebugOptions).add_experiment("c")
    for copy in (options, pickle.loads(pickle.dumps(options))):
        assert copy.view_as(StandardOptions).streaming is True
        assert copy.view_as(StandardOptions).runner == "FnApiRunner"
        assert copy.view_as(DebugOptions).experiments == ["a", "b", "c"]
        assert copy.get_all_options()["direct_num_workers"] == 3
    fresh = PipelineOptions(["--experiments=a"])
    assert fresh.view_as(DebugOptions).experiments == ["a"]


def test_match_files_takes_files_settled_elsewhere_only_as_they_were(
        tmp_path):
    """``settled`` (the watcher settled them by its own clock: modified in
    the future) takes those files as they were then, not once changed; the
    others still settle by their time."""
    from transforms.read import file_version

    now = int(time.time())
    paths = {}
    for name, mtime in (("kept.png", now + 3600), ("changed.png", now + 3600),
                        ("ahead.png", now + 3600), ("old.png", now - 600)):
        path = tmp_path / name
        path.write_bytes(b"x")
        os.utime(path, (mtime, mtime))
        paths[name] = str(path)
    settled = [file_version(FileMetadata(paths[n], 1, now + 3600))
               for n in ("kept.png", "changed.png")]
    (tmp_path / "changed.png").write_bytes(b"xy")
    os.utime(paths["changed.png"], (now + 3600, now + 3600))
    with beam_pipeline() as p:
        found = (p | beam.Create([str(tmp_path / "*")])
                 | MatchFiles(settle_seconds=30, listed_at=now,
                              settled=settled)).files | beam.Map(
                                  lambda m: m.path)
        assert_that(found, equal_to([paths["kept.png"], paths["old.png"]]))


@pytest.mark.parametrize("sharing", [{"large_model": True},
                                     {"model_copies": 1}])
def test_model_handler_runs_with_a_model_shared_across_processes(model, split,
                                                                 sharing):
    """large_model / model_copies: Beam hands run_inference a proxy to the
    model in another process, which passes method calls only."""
    images = [digit_image(split.test_images[i], 24) for i in range(4)]
    want = [(str(split.test_labels[i]), model.ref) for i in range(4)]
    handler = TheanoModelHandler("digits-cnn", inputs="images",
                                 outputs="top_k", top_k=2, **sharing)
    with beam_pipeline() as p:
        rows = (p | beam.Create(images) | RunInference(handler)
                | beam.Map(lambda r: (r.inference["label"], r.model_id)))
        assert_that(rows, equal_to(want))


@pytest.mark.parametrize("batch_size", [0, -1, 1.5, "8", None, True])
def test_batch_files_refuses_a_batch_size_that_is_not_a_positive_integer(
        batch_size):
    from transforms.read import BatchFiles
    with pytest.raises(ConfigError, match="batch_size must be a positive"):
        BatchFiles(batch_size)


@pytest.mark.parametrize("argument", [
    {"store": 5}, {"run_id": 5}, {"run_id": None}, {"progress_folder": 3}])
def test_classify_images_refuses_non_text_arguments_when_built(argument):
    (name,) = argument
    with pytest.raises(ConfigError, match=f"^{name} must be a string"):
        ClassifyImages("digits-cnn@1", **argument)


@pytest.mark.parametrize("model_ref", [5, None, ""])
def test_classify_images_refuses_a_model_ref_that_is_not_text_when_built(
        model_ref):
    with pytest.raises(ConfigError, match="^model_ref must be"):
        ClassifyImages(model_ref)


def test_match_files_refuses_a_run_id_that_is_not_text_when_built():
    with pytest.raises(ConfigError, match="^run_id must be a string"):
        MatchFiles(run_id=5)


@pytest.mark.parametrize("min_confidence", ["0.5", None, True])
def test_classify_images_refuses_a_min_confidence_that_is_not_a_number(
        min_confidence):
    with pytest.raises(ConfigError, match="^min_confidence must be"):
        ClassifyImages("digits-cnn@1", min_confidence=min_confidence)


def test_match_files_refuses_one_folder_given_as_a_string_to_exclude():
    """exclude="out" would exclude folders o, u and t, and list "out"."""
    with pytest.raises(ConfigError, match=r"exclude=\['out'\]"):
        MatchFiles(exclude="out")


def test_model_handler_refuses_an_option_beam_does_not_know():
    """A misspelt Beam option would be ignored: batches of Beam's size."""
    with pytest.raises(ConfigError, match="max_batch_sise"):
        TheanoModelHandler("digits-cnn", max_batch_sise=8)


@pytest.mark.parametrize("argument", [
    {"model_ref": 5}, {"model_ref": None}, {"model_ref": ""},
    {"model_ref": "digits-cnn", "store": 5}])
def test_model_handler_refuses_non_text_references_when_built(argument):
    (name, *_) = reversed(argument)
    with pytest.raises(ConfigError, match=f"^{name} must be"):
        TheanoModelHandler(**argument)


@pytest.mark.parametrize("dtype", [np.int64, np.int8, np.uint16, bool])
def test_model_handler_refuses_integer_arrays_as_unnormalised(model, dtype):
    handler = TheanoModelHandler("digits-cnn")
    pixels = np.zeros((1, 32, 32), dtype)
    with pytest.raises(ConfigError, match="inputs='images'"):
        handler.run_inference([pixels], handler.load_model())


def test_model_handler_takes_images_with_one_channel_axis(model, split):
    image = digit_image(split.test_images[0], 24)
    handler = TheanoModelHandler("digits-cnn", inputs="images")
    loaded = handler.load_model()
    (want,) = handler.run_inference([image], loaded)
    (got,) = handler.run_inference([np.asarray(image)[:, :, None]], loaded)
    np.testing.assert_allclose(got.inference, want.inference, atol=1e-6)


@pytest.mark.parametrize("pixels", [
    np.zeros((8, 8, 5), np.uint8), np.zeros((0, 0), np.uint8),
    Image.new("L", (0, 5))])
def test_model_handler_refuses_images_it_cannot_read_naming_them(model,
                                                                 pixels):
    handler = TheanoModelHandler("digits-cnn", inputs="images")
    with pytest.raises(ConfigError, match="inputs='images'"):
        handler.run_inference([pixels], handler.load_model())


def test_model_handler_lists_at_most_the_models_classes_and_no_more(model):
    """As ClassifyImages: the default top_k is capped at the classes, a
    larger top_k asked for is a mistake."""
    pixels = model.preprocessing([Image.new("L", (8, 8))])
    (row,) = TheanoModelHandler("digits-cnn", outputs="top_k").run_inference(
        pixels, TheanoModelHandler("digits-cnn").load_model())
    assert len(row.inference["top_k"]) == 5
    handler = TheanoModelHandler("digits-cnn", outputs="top_k", top_k=11)
    with pytest.raises(ConfigError, match="top_k 11 exceeds the 10 classes"):
        handler.run_inference(pixels, handler.load_model())


@pytest.mark.parametrize("table_schema", ["path: string", None,
                                          [("path", "string")]])
def test_writers_refuse_a_schema_that_is_not_a_pyarrow_schema_when_built(
        tmp_path, table_schema):
    """It failed in the worker that finalized the write, after the run."""
    from transforms.write import WriteRows, WriteTables
    for writer in (WriteTables, WriteRows):
        with pytest.raises(ConfigError, match="^table_schema must be a "
                                              "pyarrow.Schema"):
            writer(str(tmp_path / "out"), table_schema)


@pytest.mark.parametrize("argument", [["--direct_num_workers=2"], None, 5])
def test_offline_options_refuse_what_is_not_one_option_string(argument):
    """A list (Beam's own PipelineOptions takes one) was an AttributeError
    on 'startswith'."""
    from pipeline.run import offline_options
    with pytest.raises(ConfigError, match=r"offline_options\(\*"):
        offline_options(argument)


def test_classify_images_refuses_a_loaded_model_that_is_not_one_when_built():
    """It was an AttributeError on 'class_names' when the pipeline was
    applied."""
    with pytest.raises(ConfigError, match="^loaded must be"):
        ClassifyImages("digits-cnn@1", loaded="digits-cnn@1")


def test_classify_images_refuses_batches_too_large_to_hold_when_applied():
    """As the command line's --batch-size: a million 32x32 images a batch
    would hold 6 GB of pixels in each worker."""
    p = beam.Pipeline(options=pipeline_options([]))
    with pytest.raises(ConfigError, match=r"^batch_size 1,000,000 would "
                                          r"hold .* give at most 349,525"):
        _ = p | beam.Create(["*.png"]) | ClassifyImages("digits-cnn@1",
                                                        batch_size=10 ** 6)


@pytest.mark.parametrize("argument", [
    {"settle_seconds": "30"}, {"settle_seconds": -1},
    {"settle_seconds": float("nan")}, {"listed_at": "now"},
    {"listed_at": True}])
def test_match_files_refuses_times_that_are_not_numbers_when_built(argument):
    """settle_seconds='30' failed in the worker listing the files."""
    (name,) = argument
    with pytest.raises(ConfigError, match=f"^{name} must be"):
        MatchFiles(**argument)


@pytest.mark.parametrize("name", ["metadata.json", "weights.npz"])
def test_model_handler_follows_an_update_naming_a_file_of_the_version(
        model, name):
    """Beam's WatchFilePattern watches files, never folders: an update
    names e.g. STORE/digits-cnn/*/metadata.json; its version is loaded."""
    handler = TheanoModelHandler("digits-cnn@1")
    handler.update_model_path(os.path.join(model.location, name))
    assert handler.load_model().stored.location == model.location


def test_match_files_makes_an_error_row_of_a_pattern_that_names_nothing(
        tmp_path, monkeypatch):
    """An empty pattern listed the whole working folder; one that is not a
    string stopped the run with a TypeError in the worker."""
    write(str(tmp_path), "a.png", b"x")
    monkeypatch.chdir(tmp_path)
    with beam_pipeline() as p:
        out = (p | beam.Create(["", 5, b"a.png"])
               | "Untyped" >> beam.Map(lambda pattern: pattern)
               .with_output_types(typing.Any)
               | MatchFiles(run_id="r"))
        assert_that(out.files, equal_to([]), label="files")
        assert_that(out.errors | beam.Map(lambda r: (
            r["path"], r["stage"], r["error_type"], r["run_id"])),
            equal_to([("", "read", "ValueError", "r"),
                      ("5", "read", "TypeError", "r"),
                      ("b'a.png'", "read", "TypeError", "r")]),
            label="errors")


def test_classify_transforms_refuse_inputs_of_the_wrong_type_when_applied():
    """Paths instead of FileMetadata batches, or numbers for patterns,
    failed in the workers with AttributeError / TypeError."""
    from apache_beam.typehints.decorators import TypeCheckError

    from transforms.classify import ClassifyBatches
    for inputs, transform in (([["a.png"]], ClassifyBatches()),
                              ([FileMetadata("a.png", 1, 0.0)],
                               ClassifyBatches()),
                              ([5], ClassifyImages()), ([5], MatchFiles())):
        p = beam.Pipeline(options=pipeline_options([]))
        with pytest.raises(TypeCheckError, match="type hint violation"):
            _ = p | beam.Create(inputs) | transform


def test_model_handler_refuses_images_over_max_pixels_before_decoding(
        model, tmp_path):
    """As ClassifyImages' max_pixels: a lazily opened image (Image.open, as
    the README passes them) was decoded whatever its size."""
    from model_store.images import ImageTooLargeError
    path = tmp_path / "big.png"
    Image.new("L", (400, 300)).save(path)
    handler = TheanoModelHandler("digits-cnn", inputs="images",
                                 max_pixels=100_000)
    loaded = handler.load_model()
    with Image.open(path) as image:
        with pytest.raises(ImageTooLargeError, match="400x300 = 120,000 "
                           "pixels, over the limit of 100,000"):
            handler.run_inference([image], loaded)
    with pytest.raises(ConfigError, match="max_pixels must be a positive"):
        TheanoModelHandler("digits-cnn", inputs="images", max_pixels=0)


def test_model_handler_names_the_shape_it_takes_for_arrays_of_another(model):
    """A batch mixing shapes was numpy's 'all input arrays must have the
    same shape'."""
    handler = TheanoModelHandler("digits-cnn")
    batch = [np.zeros((1, 32, 32), np.float32),
             np.zeros((1, 16, 16), np.float32)]
    with pytest.raises(ConfigError, match=r"\(1, 32, 32\) arrays .* got "
                                          r"\(1, 16, 16\).*inputs='images'"):
        handler.run_inference(batch, handler.load_model())


@pytest.mark.parametrize("inputs", ["arrays", "images"])
def test_model_handler_returns_nothing_for_an_empty_batch(model, inputs):
    """Beam hands one over with min_batch_size=0; it stopped the run with
    numpy's 'need at least one array to stack'."""
    handler = TheanoModelHandler("digits-cnn", inputs=inputs)
    assert list(handler.run_inference([], handler.load_model())) == []


@pytest.mark.parametrize("option", ["min_batch_size", "max_batch_size"])
def test_model_handler_refuses_batch_sizes_that_are_not_positive(option):
    with pytest.raises(ConfigError, match=f"^{option} must be a positive"):
        TheanoModelHandler("digits-cnn", **{option: 0})


def test_match_files_refuses_excluded_folders_that_are_not_strings():
    """A pathlib.Path stopped the run with a TypeError in the workers."""
    import pathlib
    with pytest.raises(ConfigError, match="^exclude must be folders given "
                                          "as strings, got PosixPath"):
        MatchFiles(exclude=[pathlib.Path("out")])


def test_model_handler_labels_no_image_whose_probabilities_are_not_finite(
        model):
    """As ClassifyImages' error rows: a NaN input got a label with a NaN
    confidence, which no threshold catches; the batch fails instead (Beam's
    RunInference(...).with_exception_handling() routes it)."""
    handler = TheanoModelHandler("digits-cnn", outputs="top_k")
    batch = [np.full((1, 32, 32), np.nan, np.float32)]
    with pytest.raises(FloatingPointError, match="not finite"):
        handler.run_inference(batch, handler.load_model())


def test_classify_images_refuses_a_loaded_model_of_another_name():
    """It classified with the loaded model, whatever model_ref said."""
    fashion = load_model("fashion-cnn")
    with pytest.raises(ConfigError, match="loaded is fashion-cnn@1, not "
                                          "a version of digits-cnn"):
        ClassifyImages("digits-cnn@1", loaded=fashion)
    assert ClassifyImages("fashion-cnn", loaded=fashion).stored is fashion


@pytest.mark.parametrize("embeddings", ["false", 0, None])
def test_classify_images_refuses_embeddings_that_is_not_a_bool(embeddings):
    """embeddings='false' added the embedding column."""
    with pytest.raises(ConfigError, match="^embeddings must be True or "
                                          "False"):
        ClassifyImages("digits-cnn@1", embeddings=embeddings)
