"""Configuration mistakes stop the run before any work, with exit code 2 and
one line that names the problem; the model commands' exit codes."""

import contextlib
import json
import os
import shutil

import numpy as np
import pytest

from model_store.store import DEFAULT_ROOT
from tests.conftest import traced_peak


@pytest.fixture
def images(tmp_path, split):
    from tests.conftest import write_digits
    folder = str(tmp_path / "images")
    write_digits(folder, split, 4, nested=False)
    return folder


@pytest.fixture
def tampered_store(tmp_path):
    root = str(tmp_path / "store")
    shutil.copytree(DEFAULT_ROOT, root)
    weights = os.path.join(root, "digits-cnn", "1", "weights.npz")
    data = bytearray(open(weights, "rb").read())
    data[1000] ^= 0x01
    open(weights, "wb").write(bytes(data))
    return root


@pytest.mark.parametrize("args,message", [
    (["--model", "nope"], "no model named 'nope'"),
    (["--model", "digits-cnn@9"], "model 'digits-cnn' has no version 9"),
    (["--model", "digits-cnn@0"], "invalid model version '0'"),
    (["--model", "digits-cnn@"], "invalid model version ''"),
    (["--model", "digits-cnn@staging"], "model 'digits-cnn' has no alias 'staging'"),
    (["--top-k", "0"], "expected a positive integer, got 0"),
    (["--top-k", "11"], "top_k 11 exceeds the 10 classes"),
    # Python's int() reads other scripts' digits and '_' separators; the
    # model versions, the run date and the store take ASCII digits only.
    (["--top-k", "\u0663"], "expected a positive integer, got '\u0663'"),
    (["--batch-size", "1_000"], "expected a positive integer, got '1_000'"),
    (["--run-date", "2026-13-01"], "--run-date must be YYYY-MM-DD"),
    # An ISO week date Python reads, but no reader takes as a date (a
    # Delta commit failed on it, after the work, and at every later run).
    (["--partition-by", "run_date", "--run-date", "2026-W01-1"],
     "--run-date must be YYYY-MM-DD, got '2026-W01-1'"),
    (["--partition-by", "hour"], "invalid choice: 'hour'"),
    (["--batch-size", "many"], "expected a positive integer, got 'many'"),
    (["--batch-size", "1000000"], "--batch-size 1,000,000 would hold 6.1 GB "
                                  "of pixels per batch for model "
                                  "digits-cnn@1 (1x32x32 per image); give at "
                                  "most 349,525 (the default is 256)"),
    (["--min-confidence", "1.5"], "expected a probability from 0 to 1, "
                                  "got '1.5'"),
    (["--min-confidence", "nan"], "expected a probability from 0 to 1"),
    # float() also reads other scripts' digits and '_' separators.
    (["--min-confidence", "\u0660.\u0665"], "expected a probability from "
                                           "0 to 1, got '\u0660.\u0665'"),
    (["--min-confidence", "0.9_9"], "expected a probability from 0 to 1, "
                                    "got '0.9_9'"),
    (["--no_such_beam_option=1"], "unknown option(s) --no_such_beam_option"),
    (["--no-such-option"], "unknown option(s) --no-such-option; see the "
                           "command's --help"),
    (["--direct_num_workers=-1"], "--direct_num_workers must be >= 0"),
    (["--direct_num_workers=100000"], "--direct_num_workers 100000 is more "
                                      "than 4 per core of this machine's "),
    (["--runner=PrismRunner"], "--runner=PrismRunner would download the "
                               "Prism binary (imgclass downloads nothing"),
    # A word that is no option nor the value of one (Beam's parser drops
    # it): '--summary-json' takes no file, so the run must not go on and
    # leave the user waiting for a file it never writes.
    (["--summary-json", "summary.json"], "unrecognized argument(s) "
                                         "'summary.json': not an option"),
    (["--direct_num_workers", "1", "stray"], "unrecognized argument(s) "
                                             "'stray'"),
    (["--", "stray"], "unrecognized argument(s) 'stray'"),
    (["--environment_type=bogus"], "--environment_type=bogus is not an "
                                   "environment Beam knows; use DOCKER"),
])
def test_option_mistakes_exit_2_before_any_work(cli, images, tmp_path, args,
                                                message):
    output = tmp_path / "out"
    code, _, err = cli("classify", "--input", images, "--output", output,
                       *args)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) <= 2  # argparse adds a usage line
    # Refused: no folder (nor a lock or staging in it) is left behind.
    assert not output.exists()


def test_an_empty_output_is_refused_not_taken_as_the_working_folder(
        cli, images, tmp_path, monkeypatch):
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    code, _, err = cli("classify", "--input", images, "--output", "")
    assert code == 2
    assert err == "imgclass: error: --output is empty; give an output " \
                  "folder\n"
    assert os.listdir(here) == []


def test_missing_input_exits_2(cli, tmp_path):
    code, _, err = cli("classify", "--input", tmp_path / "missing",
                       "--output", tmp_path / "out")
    assert code == 2 and "does not exist" in err and "missing" in err
    code, _, err = cli("classify", "--input", tmp_path / "gone" / "*.png",
                       "--output", tmp_path / "out")
    assert code == 2 and "does not exist" in err


def test_an_input_that_matches_no_file_is_refused_leaving_no_folder(
        cli, images, tmp_path):
    """A glob typo ('*.jpeg' for .jpg files) is one line and exit 2 before
    any work, not an empty run that then blocks the corrected rerun."""
    output = tmp_path / "deep" / "out"
    typo = os.path.join(images, "*.jpeg")
    code, _, err = cli("classify", "--input", images, "--input", typo,
                       "--output", output)
    assert code == 2
    [line] = err.strip().splitlines()
    assert f"input {typo!r} matches no file" in line
    assert "--allow-empty" in line and images + "'" not in line
    assert not (tmp_path / "deep").exists()
    code, _, err = cli("classify", "--input", os.path.join(images, "*.jpg"),
                       "--output", output)
    assert code == 0, err
    assert "warning" not in err  # a digit, given to the digits model
    with open(output / "_manifest.json") as handle:
        assert json.load(handle)["counts"]["matched"] == 1


def test_matching_nothing_is_about_the_listing_not_what_is_new(
        images, tmp_path):
    from model_store.errors import ConfigError
    from pipeline.run import ClassifyConfig, check_matches

    def check(inputs, output, **kwargs):
        check_matches(ClassifyConfig(inputs=[str(i) for i in inputs],
                                     output=str(output), **kwargs))

    check([images], tmp_path / "out", skip_done=True)
    check([os.path.join(images, "*.png")], tmp_path / "out")
    # Only the output lies in the input: the output is never matched.
    inbox = tmp_path / "inbox"
    (inbox / "out" / "predictions").mkdir(parents=True)
    (inbox / "out" / "predictions" / "part-0.parquet").write_bytes(b"x")
    with pytest.raises(ConfigError, match="matches no file"):
        check([inbox], inbox / "out")
    check([inbox], inbox / "out", allow_empty=True)
    with pytest.raises(ConfigError, match=r"inputs .* match no file"):
        check([os.path.join(images, "**", "*.PNG"), tmp_path / "inbox" / "*"],
              tmp_path / "elsewhere")
    # What the run reports as an error row is not "nothing".
    os.symlink(tmp_path / "gone", inbox / "dangling.png")
    check([inbox], inbox / "out")


def test_unwritable_output_exits_2(cli, images, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, _, err = cli("classify", "--input", images, "--output",
                       blocker / "out")
    assert code == 2 and "cannot be created" in err
    code, _, err = cli("classify", "--input", images, "--output", blocker)
    assert code == 2 and "is a file" in err


def test_model_failing_verification_exits_2(cli, images, tmp_path,
                                            tampered_store):
    code, _, err = cli("--store", tampered_store, "classify", "--input",
                       images, "--output", tmp_path / "out")
    assert code == 2
    assert "digits-cnn@1" in err and "sha256" in err
    assert not (tmp_path / "out" / "predictions").exists()


def test_models_verify_exit_codes(cli, tampered_store):
    code, out, _ = cli("models", "verify")
    assert code == 0 and "ok      digits-cnn@1" in out
    code, out, _ = cli("--store", tampered_store, "models", "verify")
    assert code == 1 and "FAILED  digits-cnn@1" in out and "sha256" in out
    for command in ("show", "verify"):  # a typo is a mistake, not FAILED
        code, out, err = cli("models", command, "nope@1")
        assert code == 2 and "no model named 'nope'" in err and not out
    code, _, err = cli("models", "verify", "digits-cnn@9")
    assert code == 2 and "has no version 9" in err


def test_models_list_and_show(cli):
    code, out, _ = cli("models", "list")
    assert code == 0 and "digits-cnn" in out
    code, out, _ = cli("models", "show", "digits-cnn")
    assert code == 0
    assert "conv1" in out and "Conv2DLayer" in out and "(None, 10)" in out


def test_evaluate_json_reports_the_required_accuracy(cli, tmp_path):
    plot = tmp_path / "confusion.png"
    code, out, _ = cli("evaluate", "--model", "digits-cnn", "--json",
                       "--plot", plot)
    assert code == 0
    metrics = json.loads(out)
    assert metrics["accuracy"] >= 0.985
    assert metrics["n_test"] == 360
    assert (metrics["model"], metrics["version"]) == ("digits-cnn", 1)
    confusion = metrics["confusion_matrix"]
    assert sum(map(sum, confusion)) == 360
    assert sum(confusion[i][i] for i in range(10)) / 360 == pytest.approx(
        metrics["accuracy"], abs=1e-6)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_plot_path_without_extension_reports_the_file_written(
        cli, tmp_path):
    """--plot DIR/cm writes cm.png, as matplotlib names it, and says so."""
    code, out, err = cli("evaluate", "--plot", tmp_path / "cm")
    assert code == 0, err
    assert out.strip().splitlines()[-1] == f"wrote {tmp_path / 'cm.png'}"
    assert os.listdir(tmp_path) == ["cm.png"]
    assert (tmp_path / "cm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("classes, counts", [(30, 900), (31, 0)])
def test_a_plot_of_many_classes_leaves_the_counts_out(
        tmp_path, monkeypatch, classes, counts):
    """Each cell's count was a text to lay out: 150 classes took 13 s and
    ImageNet's 1,000 (efficientnet-lite0's) many minutes, for digits no
    one could read. Above PLOT_COUNTS_UP_TO classes the cells are left
    without them."""
    from matplotlib.axes import Axes

    from model_store.evaluate import PLOT_COUNTS_UP_TO, plot_confusion

    assert PLOT_COUNTS_UP_TO == 30
    drawn = []
    monkeypatch.setattr(Axes, "text", lambda self, *a, **k: drawn.append(a))
    plot = tmp_path / "cm.png"
    plot_confusion({"confusion_matrix": np.eye(classes, dtype=int).tolist(),
                    "per_class": {f"c{n}": {} for n in range(classes)},
                    "model": "m", "version": 1, "accuracy": 1.0,
                    "n_test": classes}, str(plot))
    assert len(drawn) == counts
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("json_option", [[], ["--json"]])
def test_a_plot_the_disk_cannot_hold_keeps_the_metrics(cli, tmp_path,
                                                       json_option,
                                                       monkeypatch):
    """A plot that passes the early check and fails to write (a full disk,
    made by matplotlib's write failing with ENOSPC; a link to /dev/full is
    refused early now, as a device) is one line, exit 2, after the metrics
    were printed."""
    import errno

    from matplotlib.figure import Figure

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(Figure, "savefig", full_disk)
    plot = tmp_path / "confusion.png"
    code, out, err = cli("evaluate", "--plot", plot, *json_option)
    assert code == 2
    assert err == (f"imgclass: error: --plot {str(plot)!r} could not be "
                   f"written: No space left on device\n")
    if json_option:
        assert json.loads(out)["n_test"] == 360
    else:
        assert out.startswith("digits-cnn@1: accuracy ")
        assert "wrote" not in out


@pytest.mark.parametrize("kind", ["fifo", "link to a fifo", "device",
                                  "device without an extension"])
def test_a_plot_path_that_is_no_regular_file_is_refused_at_once(
        cli, tmp_path, kind):
    """A FIFO blocked the writability check forever (opened to append,
    waiting for a reader); a FIFO, a link to one or to a device is refused
    in one line before evaluating (a device without an extension was taken
    for the name of a new file: /dev/null wrote /dev/null.png). An alarm
    makes a hang a failure."""
    import signal

    fifo = tmp_path / "confusion.png"
    os.mkfifo(fifo)
    plot = {"fifo": fifo, "device without an extension": tmp_path / "null"
            }.get(kind, tmp_path / "link.png")
    if kind != "fifo":
        plot.symlink_to(fifo if kind == "link to a fifo" else "/dev/null")

    def hung(*_):
        raise TimeoutError("the --plot check blocked")
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    try:
        code, out, err = cli("evaluate", "--plot", plot)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert (code, out) == (2, "")
    assert err == (f"imgclass: error: --plot {str(plot)!r} is not a regular "
                   f"file (a FIFO, device or socket); give the name of a new "
                   f"or regular file\n")


@pytest.mark.parametrize("args,message", [
    (["train", "--dataset", "digits", "--name", "x", "--base",
      "efficientnet-lite0"], "--base applies to --data (your labelled "
                             "folders), not to --dataset digits"),
    (["train", "--dataset", "digits", "--name", "x", "--fine-tune-blocks",
      "2"], "--fine-tune-blocks applies to --data"),
    (["--store", "", "models", "list"], "--store: is empty"),
    (["models", "list", "--store", " "], "--store: is empty"),
    (["train", "--dataset", "digits", "--name", "x", "--val-fraction",
      "0.3"], "--val-fraction applies to --data"),
    (["train", "--dataset", "digits", "--name", "x", "--limit", "100"],
     "--limit applies to --dataset fashion-mnist only"),
    # --no-augment silently won over --augment-copies; with the digits it
    # was refused as an --augment-copies that was never given.
    (["train", "--data", "samples/digits", "--name", "x", "--spec",
      "model_store/specs/digits-cnn.json", "--augment-copies", "5",
      "--no-augment"], "give --augment-copies N or --no-augment, not both"),
    (["train", "--dataset", "fashion-mnist", "--name", "x", "--limit", "10",
      "--epochs", "1", "--augment-copies", "2", "--no-augment"],
     "give --augment-copies N or --no-augment, not both"),
    (["train", "--dataset", "digits", "--name", "x", "--no-augment"],
     "--no-augment applies to --data and --dataset fashion-mnist, not to "
     "--dataset digits"),
    (["train", "--data", "samples/digits", "--name", "x", "--spec",
      "model_store/specs/digits-cnn.json", "--limit", "100"],
     "--limit applies to --dataset fashion-mnist only"),
    (["train", "--data", "samples/digits", "--name", "x", "--spec",
      "model_store/specs/digits-cnn.json", "--val-data", "samples/digits",
      "--val-fraction", "0.3"], "give --val-data PATH or --val-fraction F, "
                                "not both"),
    (["train", "--data", "samples/digits", "--name", "x", "--base", "nope"],
     "--base: no model named 'nope' in the store STORE; stored models: none "
     "(see 'imgclass models list'); nor is it one of the shipped models"),
    (["evaluate", "--dataset", "digits", "--data", "samples/digits"],
     "give --data (your labelled folders) or --dataset (built-in test "
     "images), not both"),
    (["evaluate", "--plot", "/no/such/folder/confusion.png"],
     "--plot '/no/such/folder/confusion.png': the folder '/no/such/folder' "
     "does not exist"),
    (["evaluate", "--plot", "samples"], "--plot 'samples' is a folder"),
    (["evaluate", "--plot", "/proc/x.png"], "--plot '/proc/x.png' cannot "
     "be written: No such file or directory"),
    (["evaluate", "--plot", "confusion.txt"], "--plot 'confusion.txt': "
     "matplotlib cannot write .txt files; use one of .eps, .jpeg"),
    (["evaluate", "--plot", "confusion.png.gz"], "cannot write .gz files"),
    # An empty value (a script's unset "$VAR") is not the option left out
    # (--base "" was a traceback), nor the working folder (--data "").
    (["train", "--data", "samples/digits", "--name", "x", "--base", ""],
     "argument --base: is empty: give a value, or leave the option out"),
    (["train", "--data", "", "--name", "x", "--spec",
      "model_store/specs/digits-cnn.json"], "argument --data: is empty"),
    (["train", "--data", "samples/digits", "--name", "x", "--spec",
      "model_store/specs/digits-cnn.json", "--val-data", " "],
     "argument --val-data: is empty"),
    (["evaluate", "--data", ""], "argument --data: is empty"),
    (["evaluate", "--plot", ""], "argument --plot: is empty"),
    (["models", "import", "onnx", "x.onnx", "--name", "x", "--classes", ""],
     "argument --classes: is empty"),
])
def test_train_and_evaluate_mistakes_stop_before_any_work(
        cli, tmp_path, args, message):
    """Options that would be ignored (and give another model than asked
    for) or a --plot that cannot be written: one line, exit 2, before
    training or evaluating (nothing saved to the store)."""
    store = tmp_path / "store"
    code, out, err = cli("--store", store, *args)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("imgclass: error: ")
    assert message.replace("STORE", str(store)) in lines[0]
    assert not store.exists()


def test_every_help_is_complete(cli):
    for command in ([], ["models"], ["models", "list"], ["models", "show"],
                    ["models", "verify"], ["train"], ["evaluate"],
                    ["classify"]):
        with pytest.raises(SystemExit) as done:
            cli(*command, "--help")
        assert done.value.code == 0


def test_missing_compiler_is_one_clear_line(tmp_path):
    import subprocess
    import sys
    env = dict(os.environ, CXX="no-such-compiler-g++")
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "evaluate"],
                          env=env, capture_output=True, text=True)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("imgclass: error: imgclass needs a C++ "
                                "compiler for Theano and "
                                "'no-such-compiler-g++' was not found")
    assert "apt-get install g++" in lines[-1]


@pytest.mark.parametrize("variable,value,message", [
    ("OMP_NUM_THREADS", "abc", "OMP_NUM_THREADS should be a number, got "
                               "'abc'"),
    ("THEANO_FLAGS", "mode=bogus", "Expected one of those string 'Mode'"),
    ("XDG_CACHE_HOME", "FILE", "Unable to create the compiledir directory"),
    ("THEANO_FLAGS", "floatX=float16", "floatX=float16, which Theano cannot "
                                       "run on the CPU"),
    ("THEANO_FLAGS", "cxx=/no/such/g++", "cxx=/no/such/g++, which was not "
                                         "found"),
])
def test_an_environment_theano_cannot_run_with_is_one_line(
        tmp_path, variable, value, message):
    import subprocess
    import sys
    if value == "FILE":  # a cache folder that is a file
        value = str(tmp_path / "file")
        open(value, "w").close()
    # Without the THEANO_FLAGS an in-process import of the engine left
    # (its compile folder, which would win over XDG_CACHE_HOME's).
    env = {key: text for key, text in os.environ.items()
           if key != "THEANO_FLAGS"}
    env[variable] = value
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "models",
                           "show", "digits-cnn"],
                          env=env, capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and message in done.stderr
    assert done.stderr.startswith("imgclass: error: ")


@pytest.mark.parametrize("args,message", [
    (["--runner=NoSuchRunner"], "--runner=NoSuchRunner is not supported; "
                                "use one of DirectRunner, PortableRunner"),
    (["--runner=DaskRunner"], "--runner=DaskRunner is not supported"),
    (["--runner=apache_beam.runners.dask.dask_runner.DaskRunner"],
     "is not supported"),
    (["--direct_num_workers=abc"], "Beam option: argument "
                                   "--direct_num_workers: invalid int value: "
                                   "'abc'"),
    (["--direct_running_mode=fast"], "argument --direct_running_mode: "
                                     "invalid choice: 'fast'"),
    (["--runner=DataflowRunner"], "--runner=DataflowRunner needs --project "
                                  "and --region and --temp_location=gs://"),
    (["--runner=DataflowRunner", "--project=p", "--region=r",
      "--temp_location=/tmp/x"],
     "--runner=DataflowRunner needs --temp_location=gs://BUCKET/PATH"),
    (["--runner=PortableRunner"], "--runner=PortableRunner needs "
                                  "--job_endpoint=HOST:PORT"),
    (["--input", "hdfs2://cluster/images"],
     "--input 'hdfs2://cluster/images': no filesystem for hdfs2://"),
    (["--input", "gs://bucket/images"],
     "gs:// needs Beam's gcp extra; install it with pip install "
     "'imgclass[gcp]'"),
    (["--run-date", "2026-11-26"], "--run-date only applies with "
                                   "--partition-by run_date"),
])
def test_configuration_mistakes_are_one_line_and_exit_2(
        cli, images, tmp_path, args, message):
    output = tmp_path / "out"
    code, out, err = cli("classify", "--input", images, "--output", output,
                         *args)
    assert code == 2
    assert err.strip().splitlines() == [f"imgclass: error: "
                                        f"{err.split('error: ', 1)[1].strip()}"]
    assert message in err
    assert out == "" and not output.exists()


def test_an_output_on_an_unknown_filesystem_is_one_line(cli, images):
    code, _, err = cli("classify", "--input", images, "--output", "foo://x")
    assert code == 2
    assert err.strip().splitlines() == [
        "imgclass: error: --output 'foo://x': no filesystem for foo:// (give "
        "a local path, or gs://, s3://, hdfs://, azfs://)"]


@pytest.mark.parametrize("window", ["inf", "nan", "1e999"])
def test_watch_refuses_a_window_that_is_not_a_number_of_seconds(
        cli, tmp_path, window):
    code, _, err = cli("watch", "--input", tmp_path, "--output",
                       tmp_path / "out", "--window", window)
    assert code == 2
    assert err.strip().splitlines() == [
        f"imgclass: error: --window must be a finite number of seconds, got "
        f"{float(window)!r}"]


def test_an_unreachable_job_endpoint_fails_in_time_naming_it(
        cli, images, tmp_path, monkeypatch):
    import socket
    import time

    import pipeline.run

    with socket.socket() as sock:  # a port where nothing listens
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    monkeypatch.setattr(pipeline.run, "ENDPOINT_TIMEOUT_SECONDS", 0.5)
    started = time.monotonic()
    code, _, err = cli("classify", "--input", images, "--output",
                       tmp_path / "out", "--runner=PortableRunner",
                       f"--job_endpoint=localhost:{port}")
    assert time.monotonic() - started < 10
    assert code == 2
    assert err.strip().splitlines() == [
        f"imgclass: error: --job_endpoint=localhost:{port}: no job service "
        f"answered within 0.5 s; start it or fix the address"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [["models", "list"], ["models", "verify"],
                                     ["models", "list", "--json"]])
def test_a_mistyped_store_is_refused_not_listed_empty(cli, tmp_path, command):
    """A CI step 'models verify' on a store path with a typo must fail, not
    report "no models to verify" and pass."""
    code, out, err = cli("--store", tmp_path / "no-such-store", *command)
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        f"imgclass: error: --store {tmp_path / 'no-such-store'} does not "
        f"exist: give the folder of a model store"]


def test_a_store_from_the_environment_is_named_as_such(cli, tmp_path,
                                                       monkeypatch):
    """With no --store, a message naming '--store' would send the user
    looking for an option they never typed."""
    missing = tmp_path / "no-such-store"
    monkeypatch.setenv("IMGCLASS_MODEL_STORE", str(missing))
    code, out, err = cli("models", "verify")
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        f"imgclass: error: the store {missing} (from $IMGCLASS_MODEL_STORE) "
        f"does not exist: give the folder of a model store"]


def test_evaluating_a_model_on_a_dataset_of_other_classes_is_refused(
        cli, tmp_path):
    """A folder-trained model evaluated on the digits would report an
    accuracy over classes it does not have, with exit 0."""
    from tests.test_cli import save_three_class_model
    root = str(tmp_path / "store")
    save_three_class_model(root)
    code, out, err = cli("--store", root, "evaluate", "--model", "three")
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        "imgclass: error: three@1 classifies a, b, c, not the dataset's 0, "
        "1, 2, 3, 4, ... (10 classes): evaluate it on labelled folders of "
        "its classes with --data"]


@pytest.mark.parametrize("model,dataset,given", [
    ("fashion-cnn", "fashion-mnist", []),
    ("digits-cnn", "digits", ["--dataset", "fashion-mnist"])])
def test_evaluating_on_the_other_built_in_dataset_names_the_right_one(
        cli, model, dataset, given):
    """fashion-cnn evaluated without --dataset (the digits) was told to
    give --data, not the --dataset it was made for."""
    code, out, err = cli("evaluate", "--model", model, *given)
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        f"imgclass: error: {model}@1 classifies the {dataset} classes, not "
        f"the {'fashion-mnist' if given else 'digits'} ones: give --dataset "
        f"{dataset}"]


@pytest.mark.parametrize("alias", ["prod\n", "a" * 101])
def test_an_alias_with_a_newline_or_too_long_is_refused(cli, tmp_path, alias):
    """'prod\\n' was stored, broke `models list` rows across lines and was
    never found again as NAME@prod."""
    root = str(tmp_path / "store")
    shutil.copytree(DEFAULT_ROOT, root)
    code, out, err = cli("--store", root, "models", "promote",
                         "digits-cnn@1", "--alias", alias)
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert "invalid alias" in err
    assert not os.path.exists(os.path.join(root, "digits-cnn",
                                           "aliases.json")) or alias not in \
        json.load(open(os.path.join(root, "digits-cnn", "aliases.json")))


def test_a_spec_that_is_a_folder_is_refused_in_one_line(cli, tmp_path):
    code, _, err = cli("--store", tmp_path / "store", "train", "--dataset",
                       "digits", "--name", "x", "--spec", tmp_path)
    assert code == 2 and err.count("\n") == 1, err
    assert f"--spec {tmp_path} is a folder" in err


@pytest.mark.parametrize("kind", ["fifo", "symlink loop"])
def test_a_spec_that_cannot_be_read_is_refused_in_one_line(
        cli, tmp_path, kind):
    """A FIFO hung the command (open() waits for a writer); a symlink loop
    was an OSError traceback (exit 1)."""
    from tests.conftest import within

    spec = tmp_path / "spec.json"
    if kind == "fifo":
        os.mkfifo(spec)
        message = f"--spec {spec} is a FIFO, not a regular file"
    else:
        spec.symlink_to(spec)
        message = (f"cannot read spec file {spec}: Too many levels of "
                   f"symbolic links")
    with within(20):
        code, _, err = cli("--store", tmp_path / "store", "train",
                           "--dataset", "digits", "--name", "x", "--spec",
                           spec)
    assert code == 2 and err.count("\n") == 1, err
    assert message in err
    assert not (tmp_path / "store").exists()



def test_a_spec_over_the_json_limit_is_refused_unread(cli, tmp_path):
    """train --spec with a 6 GB sparse file took 49 s and 12 GB of memory
    to say it is not valid JSON. Refused from its first 16 MiB now (1 GiB
    here), as the store's JSON files are."""
    import model_store.train  # noqa: F401 - its imports are not the read

    spec = tmp_path / "spec.json"
    with open(spec, "wb") as handle:
        handle.truncate(2**30)
    (code, _, err), peak = traced_peak(lambda: cli(
        "--store", tmp_path / "store", "train", "--dataset", "digits",
        "--name", "x", "--spec", spec))
    assert peak < 64 * 2**20, peak
    assert code == 2
    assert err.splitlines() == [
        f"imgclass: error: spec file {spec} is larger than 16 MiB, the "
        f"limit for a spec file: give the network spec's JSON file"]
    assert not (tmp_path / "store").exists()

@pytest.mark.parametrize("command", [
    ["models", "list"], ["models", "verify"], ["models", "show", "x"],
    ["models", "promote", "x@1"],
    ["models", "import", "onnx", "m.onnx", "--name", "x"],
    ["train", "--dataset", "digits", "--name", "x"],
    ["evaluate", "--model", "x"]])
def test_a_store_whose_filesystem_is_not_installed_is_refused_in_one_line(
        cli, command):
    """--store foo:// (or gs:// without Beam's GCP extra) was a ValueError
    traceback (exit 1) from Beam, in every model command."""
    code, out, err = cli("--store", "foo://bucket/models", *command)
    assert (code, out) == (2, "") and err.count("\n") == 1, err
    assert "--store 'foo://bucket/models': no filesystem for foo://" in err


def test_a_model_folder_whose_filesystem_is_not_installed_is_refused(cli):
    code, _, err = cli("models", "show", "foo://bucket/models/x/1")
    assert code == 2 and err.count("\n") == 1, err
    assert "model 'foo://bucket/models/x/1': no filesystem for foo://" in err


def test_a_seed_numpy_cannot_take_is_refused_before_any_work(cli, tmp_path):
    """--seed -1 was a NumPy traceback (exit 1), with --base only after the
    features of every image had been computed."""
    code, _, err = cli("--store", tmp_path / "store", "train", "--dataset",
                       "digits", "--name", "x", "--seed", "-1")
    assert code == 2 and err.count("\n") == 1, err
    assert "--seed must be an integer from 0 to 4294967295" in err
    assert not (tmp_path / "store").exists()


DIGITS_LAYERS = json.load(open(os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "model_store", "specs", "digits-cnn.json")))["layers"]
SHAPE_MESSAGE = ("spec 'input_shape' must be [channels, height, width] of "
                 "positive integers, got ")


@pytest.mark.parametrize("spec,message", [
    ([{"input_shape": [1, 32, 32], "layers": DIGITS_LAYERS}],
     "a network spec must be a JSON object, got list"),
    ("digits", "a network spec must be a JSON object, got str"),
    ({"input_shape": [1, 32], "layers": DIGITS_LAYERS},
     SHAPE_MESSAGE + "[1, 32]"),
    ({"input_shape": [1, 32, 32, 1], "layers": DIGITS_LAYERS},
     SHAPE_MESSAGE + "[1, 32, 32, 1]"),
    ({"input_shape": [1, 32.5, 32], "layers": DIGITS_LAYERS},
     SHAPE_MESSAGE + "[1, 32.5, 32]"),
    ({"input_shape": ["1", 32, 32], "layers": DIGITS_LAYERS},
     SHAPE_MESSAGE + "['1', 32, 32]"),
    ({"input_shape": [0, 32, 32], "layers": DIGITS_LAYERS},
     SHAPE_MESSAGE + "[0, 32, 32]"),
    ({"input_shape": [1, -32, 32], "layers": DIGITS_LAYERS},
     SHAPE_MESSAGE + "[1, -32, 32]"),
    ({"input_shape": "1x32x32", "layers": DIGITS_LAYERS},
     SHAPE_MESSAGE + "'1x32x32'"),
    ({"input_shape": [1, 32, 32], "layers": DIGITS_LAYERS[:-1]},
     "the last layer 'fc2' (dense, nonlinearity identity) does not output "
     'class probabilities: end the spec with {"type": "softmax", "name": '
     '"prob"}'),
    ({"input_shape": [1, 32, 32], "layers": DIGITS_LAYERS[:-1] + [
        {"type": "activation", "name": "p", "nonlinearity": "sigmoid"}]},
     "the last layer 'p' (activation, nonlinearity sigmoid) does not "
     "output class probabilities"),
])
@pytest.mark.parametrize("data", [["--data", "samples/digits"],
                                  ["--dataset", "digits"]])
def test_a_malformed_spec_is_refused_in_one_line_before_training(
        cli, tmp_path, spec, message, data):
    """A spec whose top level is not an object, or whose input_shape is not
    three positive integers, was a traceback with --data; one that does not
    end in a softmax trained, and classify wrote confidences above 1."""
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    store = tmp_path / "store"
    code, out, err = cli("--store", store, "train", *data, "--name", "x",
                         "--spec", path)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"spec file {path}: {message}" in err
    assert not store.exists()


def test_a_stored_model_without_a_final_softmax_is_refused(cli, tmp_path):
    """A version whose spec.json does not end in a softmax (edited, or
    saved before this was checked): classify wrote its scores as
    confidences above 1; now it stops before any work, verify reports it
    and no new version like it can be saved."""
    from model_store.errors import ConfigError
    from model_store.spec import build_network
    from model_store.store import save_model
    from tests.test_cli import save_three_class_model

    root = str(tmp_path / "store")
    spec_path = os.path.join(save_three_class_model(root, weight=1.0)
                             .location, "spec.json")
    spec = json.load(open(spec_path))
    spec["layers"].pop()  # the softmax
    json.dump(spec, open(spec_path, "w"))
    message = ("model three@1: the last layer 'out' (dense, nonlinearity "
               "identity) does not output class probabilities")
    code, out, err = cli("--store", root, "classify", "-q", "--model",
                         "three", "--input", "samples/digits/more",
                         "--output", tmp_path / "out")
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out").exists()
    code, out, _ = cli("--store", root, "models", "verify")
    assert code == 1 and out.startswith("FAILED  three@1") and message in out
    with pytest.raises(ConfigError, match="model three@2: the last layer"):
        save_model(build_network(spec), name="three", root=root, metadata={
            "class_names": ["a", "b", "c"], "input_shape": [1, 8, 8],
            "color_mode": "L", "resize": "bilinear",
            "normalization": {"mean": [0.0], "std": [1.0]}})


@pytest.mark.parametrize("quiet", [["-q"], []])
def test_an_input_whose_name_is_not_utf8_runs_with_and_without_q(
        cli, images, tmp_path, quiet):
    import pyarrow.parquet as pq

    folder = os.path.join(str(tmp_path), os.fsdecode(b"dir\xe9"))
    shutil.copytree(images, folder)
    output = str(tmp_path / "out")
    code, _, err = cli("classify", "--input", folder, "--output", output,
                       *quiet)
    assert code == 0, err
    if quiet:
        assert err == ""
    else:  # the start line shows the name as rows store it
        assert f"classifying {tmp_path}/dir%E9 with " in err
    rows = pq.read_table(os.path.join(output, "predictions")).num_rows
    assert rows == len(os.listdir(images))


@pytest.mark.parametrize("name,says", [
    ("o_br[a]", "holds [, which Beam's file writers read as a pattern"),
    ("o_q?", "holds ?, which Beam's file writers read as a pattern"),
    ("o_s*", "holds *, which Beam's file writers read as a pattern"),
    (os.fsdecode(b"nb_\xe9"), "is not a UTF-8 name (its bad bytes shown as "
                              "%XX)"),
])
def test_an_output_name_beam_cannot_write_is_refused_leaving_nothing(
        cli, images, tmp_path, name, says):
    before = sorted(os.listdir(tmp_path))
    output = os.path.join(str(tmp_path), name, "labels")
    code, _, err = cli("classify", "--input", images, "--output", output)
    assert code == 2
    (line,) = err.splitlines()
    shown = output.replace("\udce9", "%E9")
    assert line.startswith(f"imgclass: error: output {shown!r} {says}")
    assert sorted(os.listdir(tmp_path)) == before  # no folder, no probe


@pytest.mark.parametrize("level", ["ERROR", "INFO"])
def test_a_library_error_with_a_traceback_is_imgclass_lines(
        capsys, monkeypatch, level):
    """Beam logs a failed pipeline's error with its traceback: one line
    (the command says the rest), or with -v (INFO) every line, each
    starting with imgclass:."""
    import logging

    from pipeline import logs

    monkeypatch.setenv(logs.BEAM_LOG_LEVEL_ENV, level)
    logs.configure()
    try:
        try:
            raise OSError("Couldn't deserialize thrift\npage header failed")
        except OSError:
            logging.getLogger("apache_beam.runners").exception("it failed")
    finally:
        monkeypatch.undo()
        logs.configure()
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "imgclass: ERROR: it failed"
    assert all(line.startswith("imgclass:") for line in lines)
    if level == "ERROR":
        assert len(lines) == 1
    else:
        assert "imgclass:   Traceback (most recent call last):" in lines
        assert lines[-1] == "imgclass:   page header failed"


def test_beam_option_values_may_follow_as_separate_words(cli, images,
                                                         tmp_path):
    """'--temp_location DIR', as Beam's own docs write options, is not a
    stray word."""
    output = tmp_path / "out"
    code, _, err = cli("classify", "--input", images, "--output", output,
                       "--temp_location", str(tmp_path / "temp"),
                       "--direct_num_workers", "1", "-q")
    assert (code, err) == (0, "")
    assert (output / "_SUCCESS").exists()


@pytest.mark.parametrize("args", [["--top-k", "11"], ["--model", "nope"]])
def test_a_refused_watch_leaves_no_folder_behind(cli, images, tmp_path,
                                                 args):
    output = tmp_path / "new" / "out"
    code, _, err = cli("watch", "--input", images, "--output", output, *args)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("variable,value,message", [
    ("IMGCLASS_BEAM_LOG_LEVEL", "LOUD", "IMGCLASS_BEAM_LOG_LEVEL='LOUD' is "
                                        "not a log level"),
    ("IMGCLASS_PROGRESS_SECONDS", "soon", "IMGCLASS_PROGRESS_SECONDS='soon' "
                                          "is not a number of seconds >= 0"),
    ("IMGCLASS_PROGRESS_SECONDS", "-1", "IMGCLASS_PROGRESS_SECONDS='-1' is "
                                        "not a number of seconds >= 0"),
])
@pytest.mark.parametrize("command", ["classify", "watch"])
def test_an_imgclass_variable_without_meaning_is_one_line_before_any_work(
        cli, images, tmp_path, monkeypatch, variable, value, message,
        command):
    output = tmp_path / "out"
    monkeypatch.setenv(variable, value)
    code, out, err = cli(command, "--input", images, "--output", output)
    monkeypatch.undo()
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [f"imgclass: error: "
                                        f"{err.split('error: ', 1)[1].strip()}"]
    assert message in err and not output.exists()


@pytest.mark.parametrize("damage", ["not gzip", "cut short", "wrong size"])
def test_a_damaged_fashion_mnist_install_is_one_line(cli, tmp_path,
                                                     monkeypatch, damage):
    import gzip

    from model_store import fashion

    idx = b"\x00\x00\x08\x03" + b"\x00\x00\x00\x1c" * 3 + b"\x00" * 100
    data = {"not gzip": b"junk", "cut short": gzip.compress(idx)[:20],
            "wrong size": gzip.compress(idx)}[damage]
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (tmp_path / name).write_bytes(data)
    monkeypatch.setattr(fashion, "FASHION_DIR", str(tmp_path))
    code, out, err = cli("evaluate", "--model", "fashion-cnn", "--dataset",
                         "fashion-mnist")
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        f"imgclass: error: Fashion-MNIST file "
        f"{tmp_path}/train-images-idx3-ubyte.gz cannot be read "
        f"{err.split(' cannot be read ', 1)[1].strip()}"]
    assert err.strip().endswith("apt-get install --reinstall "
                                "dataset-fashion-mnist")


def test_a_full_disk_under_stdout_is_one_line_not_a_traceback(
        capsys, monkeypatch):
    """'imgclass models list --json > models.jsonl' on a full disk."""
    import errno
    import io
    import sys

    from pipeline.cli import main

    class Full(io.StringIO):
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sys, "stdout", Full())
    code = main(["models", "list", "--json"])
    monkeypatch.undo()
    assert code == 1
    assert capsys.readouterr().err.splitlines() == [
        "imgclass: error: cannot write the standard output: No space left "
        "on device"]


@pytest.mark.parametrize("command", ["classify", "watch"])
def test_an_output_in_the_model_store_is_refused_before_any_work(
        cli, images, tmp_path, command):
    """The run's folders there would be read as models or versions: the
    workers refused the model after the work, or ``models verify`` failed
    on a folder the run made; a folder inside a model's was made (the lock)
    before the model was loaded, which then refused a folder it called
    "not a version"."""
    store = tmp_path / "store"
    shutil.copytree(os.path.join(DEFAULT_ROOT, "digits-cnn"),
                    store / "digits-cnn")
    copy = tmp_path / "elsewhere" / "digits-cnn"
    shutil.copytree(store / "digits-cnn", copy)
    cases = [(store, "digits-cnn", store), (store / "newout", "digits-cnn",
                                            store),
             (store / "digits-cnn" / "x", "digits-cnn", store),
             (store / "digits-cnn" / "1" / "out", "digits-cnn", store),
             (copy / "out", str(copy / "1"), copy)]
    for output, model, folder in cases:
        code, _, err = cli("--store", store, command, "--input", images,
                           "--output", output, "--model", model)
        assert code == 2
        assert err.strip().splitlines() == [
            f"imgclass: error: output '{output}' lies in {folder}, which "
            f"holds models: the store would read its folders as models or "
            f"versions; give an --output outside it"]
    assert sorted(os.listdir(store)) == ["digits-cnn"]
    assert sorted(os.listdir(store / "digits-cnn")) == ["1", "aliases.json"]
    assert sorted(os.listdir(copy)) == ["1", "aliases.json"]
    assert "out" not in os.listdir(store / "digits-cnn" / "1")


def test_summary_json_into_a_closed_stdout_is_refused_before_any_work(
        images, tmp_path, monkeypatch, capsys):
    """``imgclass classify --summary-json >&-``: Python's stdout is None
    and print() wrote nothing: the run exited 0 and the scheduler got no
    summary, without a word."""
    import sys

    from pipeline.cli import main
    output = tmp_path / "out"
    monkeypatch.setattr(sys, "stdout", None)
    code = main(["classify", "--input", images, "--output", str(output),
                 "--summary-json"])
    assert code == 2
    assert capsys.readouterr().err.splitlines() == [
        "imgclass: error: --summary-json: the standard output is closed; "
        "redirect it to a file, or leave the option out"]
    assert not output.exists()


def test_a_mistyped_model_folder_is_named_not_the_output_beside_it(
        cli, images, tmp_path):
    """``--model runs/model-2 --output runs/preds`` with no such model
    folder: the line said the output 'lies in runs, which holds models',
    sending the user after the wrong option."""
    code, _, err = cli("classify", "--input", images, "--output",
                       tmp_path / "preds", "--model", tmp_path / "model-2")
    assert code == 2
    assert "holds models" not in err
    assert str(tmp_path / "model-2") in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "preds").exists()


@pytest.mark.parametrize("link", ["dangling", "loop"])
def test_an_output_through_a_broken_symlink_names_the_link(
        cli, images, tmp_path, link):
    """It said 'cannot be created: File exists', which tells no way out."""
    out = tmp_path / "out"
    if link == "dangling":
        out.symlink_to(tmp_path / "unmounted" / "labels")
        why = (f"points at {tmp_path}/unmounted/labels, which does not "
               f"exist (an unmounted disk?)")
    else:
        out.symlink_to(tmp_path / "back")
        (tmp_path / "back").symlink_to(out)
        why = "loops (it leads back to itself)"
    for output in (out, out / "night"):
        code, _, err = cli("classify", "--input", images, "--output", output)
        assert code == 2
        assert err.strip().splitlines() == [
            f"imgclass: error: output '{output}' cannot be created: {out} "
            f"is a symbolic link that {why}"]


def _run_command(*args, env=None, stderr=None):
    """``imgclass ARGS`` in a process of its own: ``(exit code, stdout,
    stderr or "")``, with ``env`` added to the environment and stderr
    sent to the file ``stderr`` if given."""
    import subprocess
    import sys

    with open(stderr, "w") if stderr else contextlib.nullcontext() as err:
        done = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", *map(str, args)],
            env=dict(os.environ, **(env or {})), stdout=subprocess.PIPE,
            stderr=err or subprocess.PIPE, timeout=300)
    return (done.returncode, done.stdout.decode("ascii", "replace"),
            (done.stderr or b"").decode("ascii", "replace"))


def _store_with_class_names(store, names):
    """A store holding digits-cnn@1 whose classes are called ``names``."""
    shutil.copytree(os.path.join(DEFAULT_ROOT, "digits-cnn"),
                    store / "digits-cnn")
    path = store / "digits-cnn" / "1" / "metadata.json"
    metadata = json.loads(path.read_text())
    metadata["class_names"] = names
    path.write_text(json.dumps(metadata, ensure_ascii=False))


@pytest.mark.parametrize("command", ["models list", "evaluate"])
def test_what_the_output_encoding_cannot_show_is_escaped_not_a_traceback(
        tmp_path, split, command):
    """PYTHONIOENCODING=ascii with a store path or class names holding
    'ö', '—', '×': a UnicodeEncodeError traceback, exit 1, after printing
    part of the output."""
    from tests.conftest import write_digits

    store = tmp_path / "stö—re"
    store.mkdir()
    args = ["--store", store, "models", "list"]
    escaped = f"no models in {tmp_path}/st\\xf6\\u2014re"
    if command == "evaluate":
        names = [f"{digit}\u00e9\u2014\u00d7" for digit in range(10)]
        _store_with_class_names(store, names)
        truth = write_digits(str(tmp_path / "flat"), split, 20,
                             nested=False)
        for path, label in truth.items():
            folder = tmp_path / "data" / names[int(label)]
            folder.mkdir(parents=True, exist_ok=True)
            shutil.move(path, folder)
        args = ["--store", store, "evaluate", "--model", "digits-cnn",
                "--data", tmp_path / "data"]
        escaped = "7\\xe9\\u2014\\xd7"
    code, out, err = _run_command(*args, env={"PYTHONIOENCODING": "ascii"})
    assert (code, err) == (0, "")
    assert escaped in out
    if command == "evaluate":
        assert "confusion matrix" in out  # printed to the end


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="Linux's full "
                    "device")
@pytest.mark.parametrize("case", ["a run", "a mistake"])
def test_a_stderr_that_cannot_be_written_changes_no_outcome(images, tmp_path,
                                                            case):
    """'imgclass classify ... 2>/dev/full': the first message failed the
    run (exit 1, nothing published), and a mistake exited 1, not 2."""
    output = tmp_path / "out"
    args = ["classify", "--input", images, "--output", output,
            "--summary-json"] + (["--top-k", "0"] if case == "a mistake"
                                 else [])
    code, out, _ = _run_command(*args, stderr="/dev/full")
    if case == "a mistake":
        assert (code, out) == (2, "")
        assert not output.exists()
        return
    assert code == 0
    assert json.loads(out)["counts"]["predicted"] == 4
    assert (output / "_SUCCESS").exists()


@pytest.mark.parametrize("case", ["onnx missing", "onnx not a model",
                                  "classes blank line", "spec missing",
                                  "spec a fifo", "spec not json"])
def test_a_newline_in_a_file_name_given_is_shown_escaped_on_one_line(
        cli, tmp_path, case):
    """The ONNX file, --classes file and --spec file were named raw in
    their errors: a newline in the name split the one line in two (and a
    byte that is not UTF-8 showed as '\\udcXX'); they are %XX, as data
    paths are."""
    odd = tmp_path / "a\nb"
    store = tmp_path / "store"
    if case == "spec a fifo":
        os.mkfifo(odd)
    elif case != "onnx missing" and case != "spec missing":
        odd.write_text("a\n\nb\n" if case == "classes blank line"
                       else "not json")
    if case.startswith("spec"):
        data = tmp_path / "data"
        for name in ("x", "y"):
            (data / name).mkdir(parents=True)
            for n in range(2):
                (data / name / f"{n}.png").write_bytes(b"")
        args = ["train", "--data", data, "--name", "m", "--spec", odd]
    elif case == "classes blank line":
        args = ["models", "import", "onnx", tmp_path / "m.onnx", "--name",
                "m", "--classes", odd]
    else:
        args = ["models", "import", "onnx", odd, "--name", "m"]
    code, _, err = cli("--store", store, *args)
    assert code == 2 and err.count("\n") == 1, err
    assert f"{tmp_path}/a%0Ab" in err
