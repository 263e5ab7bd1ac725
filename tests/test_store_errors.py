"""A store error (a GCS 503) at EVERY call a run makes to the output's
object store outside the Beam pipeline: the lock, recovery, the checks,
the ledger merge, reading the staged counts, publishing, removing the
staging and the lock.

Each scenario (a plain run into an empty output, a ``--skip-done`` run
that also merges the ledger, an ``--overwrite``) is run once cleanly,
counting the calls its driver makes to Beam's ``FileSystems`` on
``memstore://`` paths; then, for each k of them, the same run again with
the k-th call raising, and the next run (``--skip-done``, no faults)
after it. The failed run must say so in one line and the documented exit
code, never a traceback; the next run must leave every input exactly once
in predictions and errors (read back with pyarrow) and a manifest whose
counts add up to what it matched.

The pipeline itself (Beam's workers and their retries) is another path:
its calls are not counted, and it is run for real once per distinct
input state (what the output's ledger and errors hold), then replayed
from what it staged (see :class:`Pipelines`), so that the few hundred
runs take seconds.

The same sweeps run again (fewer scenarios, see :data:`CLIENT_SWEEPS`)
with what an object-store client raises where Beam lets it through
unwrapped (:data:`FLAVORS`: google-api-core's ServiceUnavailable, Beam's
S3ClientError, azure-core's HttpResponseError; none is an OSError), at
the calls that raise it on that store.
"""

import errno
import io
import json
import os
import re
import shutil
import threading

import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems

from pipeline import ledger, outputs, run
from tests import client_errors
from tests.object_store import Bucket

SAMPLES = os.path.join(os.path.dirname(__file__), os.pardir, "samples",
                       "digits")
OUTPUT = "memstore://acme-lake/vision/labels"
# The FileSystems operations that reach a store.
OPERATIONS = ("match", "exists", "open", "create", "rename", "delete",
              "last_updated", "checksum", "copy", "mkdirs")
# What Beam's filesystems raise for a store that fails a request.
BATCHED = {"match": "Match", "rename": "Rename", "delete": "Delete",
           "copy": "Copy", "checksum": "Checksum"}


def store_error(operation: str, path: str) -> OSError:
    """A GCS 503 for ``operation`` on ``path``, as Beam raises it."""
    cause = OSError(f"503 {operation.upper()} https://storage.googleapis.com"
                    f"/{path.split('://', 1)[1]}: We encountered an internal "
                    f"error. Please try again.")
    if operation in BATCHED:
        return BeamIOError(f"{BATCHED[operation]} operation failed",
                           {path: cause})
    return cause


class Flavor:
    """How one kind of store fails a request: ``error(operation, path)``
    is what it raises; ``raises``, the operations that raise it as it is
    (the sweeps fail only those); ``on_close``, those whose request is
    made when the returned file is closed (an upload: nothing is written);
    ``marker``, what the one line must show of it; ``named``, the type a
    failed run's line must name ("": any, e.g. OSError or BeamIOError)."""

    def __init__(self, error, raises=OPERATIONS, on_close=(), marker="503",
                 named=""):
        self.error, self.raises = error, raises
        self.on_close, self.marker, self.named = on_close, marker, named


# What Beam lets through unwrapped, per store (model_store.fs.is_store_error
# lists where): on GCS the object is written when its file is closed.
_S3_OPERATIONS = {"open": "HeadObject", "create": "CreateMultipartUpload"}
FLAVORS = {
    "OSError": Flavor(store_error),
    "gcs": Flavor(lambda operation, path: client_errors.gcs_unavailable(
        "POST" if operation in ("create", "rename") else "GET", path),
        raises=("open", "create", "exists", "last_updated", "delete",
                "rename"), on_close=("create",), named="ServiceUnavailable"),
    "s3": Flavor(lambda operation, path: client_errors.s3_slow_down(
        _S3_OPERATIONS[operation]), raises=("open", "create"),
        marker="HTTP 503: An error occurred (SlowDown)",
        named="S3ClientError"),
    "azure": Flavor(lambda operation, path: client_errors.azure_server_busy(),
                    raises=("open", "create", "delete", "rename"),
                    on_close=("create",), marker="ServerBusy",
                    named="HttpResponseError"),
}


class _FailsOnClose(io.BytesIO):
    """A file being written whose upload, on close, fails: nothing is
    written."""

    def __init__(self, error: Exception):
        super().__init__()
        self._error = error

    def close(self):
        if not self.closed:
            super().close()
            raise self._error


def _first_path(args, kwargs):
    value = args[0] if args else next(iter(kwargs.values()), None)
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return value if isinstance(value, str) else None


class StoreFaults:
    """Counts the calls to ``FileSystems`` on ``memstore://`` paths made
    outside the pipeline (``calls``: ``(operation, path)``), and makes
    call number ``fail_at`` (from 1) fail as ``flavor`` says (default:
    raise :func:`store_error`)."""

    def __init__(self, monkeypatch):
        self.calls, self.fail_at, self.in_pipeline = [], None, False
        self.flavor = FLAVORS["OSError"]
        self._lock = threading.Lock()
        for name in OPERATIONS:
            monkeypatch.setattr(FileSystems, name, staticmethod(
                self._counted(name, getattr(FileSystems, name))))

    def _counted(self, name, real):
        def call(*args, **kwargs):
            path = _first_path(args, kwargs)
            if path and path.startswith("memstore://") \
                    and not self.in_pipeline:
                with self._lock:
                    self.calls.append((name, path))
                    failing = len(self.calls) == self.fail_at
                if failing:
                    error = self.flavor.error(name, path)
                    if name in self.flavor.on_close:
                        return _FailsOnClose(error)
                    raise error
            return real(*args, **kwargs)
        return call


class Pipelines:
    """Runs each distinct pipeline once for real (its calls not counted),
    then replays it: what it staged is put back in the run's staging,
    after the same listings ``_build`` makes on the output (the ledger
    and errors with --skip-done), so the counted calls are those of a
    real run (checked by :func:`test_a_replayed_run_makes_the_calls_of_a_real_one`).
    A pipeline depends on the run (its id, inputs, options) and on what
    the output's ledger and errors hold; nothing else it reads."""

    def __init__(self, monkeypatch, faults: StoreFaults):
        self.faults, self.recorded = faults, {}
        self.real = run._execute
        monkeypatch.setattr(run, "_execute", self.execute)
        real_wait = run._wait

        def wait(*args):
            faults.in_pipeline = True
            try:
                return real_wait(*args)
            finally:
                faults.in_pipeline = False
        monkeypatch.setattr(run, "_wait", wait)

    def _key(self, config, paths):
        """The run, and with --skip-done the rows of the output's ledger
        and errors (not their files: a merge renames them)."""
        done = sorted({str(row) for name, data in list(Bucket.objects.items())
                      if config.skip_done
                      and name.startswith((f"{config.output}/_ledger/",
                                           f"{config.output}/errors/"))
                      and name.endswith(".parquet")
                      for row in pq.read_table(io.BytesIO(data)).to_pylist()})
        return (paths.run_id, tuple(config.inputs), config.skip_done,
                tuple(done))

    def execute(self, config, options, runner, stored, patterns, paths,
                *args):
        key = self._key(config, paths)
        if key not in self.recorded:
            before = set(Bucket.objects)
            result = self.real(config, options, runner, stored, patterns,
                               paths, *args)
            staged = {name: data for name, data in Bucket.objects.items()
                      if name not in before
                      and name.startswith(paths.staging + "/")}
            self.recorded[key] = (result, staged)
            return result
        result, staged = self.recorded[key]
        if config.skip_done:  # what _build lists
            outputs.ledger_files(config.output)
            outputs.error_files(config.output)
        Bucket.objects.update(staged)
        return result


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A folder of four sample digits."""
    folder = tmp_path_factory.mktemp("in")
    for name in sorted(os.listdir(SAMPLES))[:4]:
        shutil.copy(os.path.join(SAMPLES, name), folder / name)
    return str(folder)


@pytest.fixture(scope="module")
def pipelines():
    """Recorded pipelines, shared by the module's tests."""
    return {}


@pytest.fixture
def harness(monkeypatch, pipelines):
    faults = StoreFaults(monkeypatch)
    faults.pipelines = Pipelines(monkeypatch, faults)
    faults.pipelines.recorded = pipelines
    # The next run is another process: a lock the failed run could not
    # remove is its dead owner's.
    monkeypatch.setattr(outputs, "_pid_alive", lambda pid: False)
    # Reads one after the other: the k-th call is the same in every run.
    monkeypatch.setattr(outputs, "PARALLEL_READS", 1)
    monkeypatch.setattr(ledger, "COMPACT_FILES", 2)  # a merge to fail
    return faults


def classify(cli, run_id, inputs, *extra):
    """``imgclass classify`` into OUTPUT with the run id ``run_id``."""
    args = ["classify", "--output", OUTPUT, "-q", *extra]
    for path in inputs:
        args += ["--input", path]
    previous = run.new_run_id
    run.new_run_id = lambda now: run_id
    try:
        return cli(*args)
    finally:
        run.new_run_id = previous


def samples(folder):
    return sorted(os.path.join(folder, n) for n in os.listdir(folder))


# Scenarios: (the inputs of the runs that set the output up, the faulty
# run's options); the faulty run classifies the whole folder. The runs
# share what they can (a pipeline run for real takes over a second).
def scenarios(folder):
    files = samples(folder)
    return {
        "plain": ([], []),
        # Two earlier runs: two ledger files, merged by the faulty run.
        "skip-done": ([files[:2], files[2:3]], ["--skip-done"]),
        "overwrite": ([files[:2]], ["--overwrite"]),
    }


def set_up(cli, earlier):
    Bucket.reset({})
    for n, paths in enumerate(earlier):
        code, _, err = classify(cli, f"20260101T00000{n}Z-earlier{n}", paths,
                                "--skip-done")
        assert code == 0, err
    return dict(Bucket.objects)


FAULTY, NEXT = "20260102T000000Z-faulty", "20260103T000000Z-next"


def rows(kind):
    return [path for name, data in sorted(Bucket.objects.items())
            if name.startswith(f"{OUTPUT}/{kind}/")
            and name.endswith(".parquet")
            for path in pq.read_table(io.BytesIO(data)).column(
                "path").to_pylist()]


def problems(code, err, marker="503", named=""):
    """What is wrong with how a run that met a store error ended (its exit
    code and stderr); [] if nothing. ``marker``: what the line must show
    of the store's error; ``named``: the error's type, that a run failed
    by it must name."""
    found = []
    lines = err.strip().splitlines()
    said = [line for line in lines if line.startswith("imgclass:")]
    if "Traceback" in err:
        found.append(f"a traceback: {lines[-1] if lines else ''}")
    elif code == 1:
        if len(said) != 1 or said != lines or "run failed" not in said[0] \
                or marker not in said[0] or named not in said[0]:
            found.append(f"exit 1 with {lines}")
    elif code == 2:
        # The probe of check_output: "cannot be written" (documented).
        if len(lines) != 1 or "cannot be written" not in lines[0] \
                or marker not in lines[0]:
            found.append(f"exit 2 with {lines}")
    elif code == 0:
        # Harmless: the lock or staging left behind, the merge postponed
        # (a warning that names the cause).
        if [line for line in lines if "warning" not in line
                or marker not in line]:
            found.append(f"exit 0 with {lines}")
    else:
        found.append(f"exit {code}: {lines}")
    return found


def state():
    """What the output holds, to tell outputs left alike (the lock by its
    presence only: it holds the time it was taken)."""
    return tuple(sorted((name, name.endswith("/_lock") or data)
                        for name, data in Bucket.objects.items()))


def check_next_run(cli, folder, extra, checked):
    """The next run, without faults: its problems, [] if none. Runs are
    deterministic (their ids fixed), so an output left as one already
    ``checked`` (e.g. by a failure before the run changed anything) is
    recovered from in the same way: not run again."""
    before = state()
    if before in checked:
        return checked[before]
    checked[before] = found = _next_run(cli, folder, extra)
    return found


def left_a_run(output, run_id):
    """Whether run ``run_id`` left anything but its lock and a staging
    that recovery discards (one without a publish record)."""
    staging = f"{output}/{outputs.STAGING}/{run_id}/"
    return f"{staging}{outputs.PUBLISH}" in Bucket.objects or any(
        run_id in name for name in Bucket.objects
        if not name.startswith(staging) and not name.endswith("/_lock"))


def _next_run(cli, folder, extra):
    """When the failed run left nothing that counts, the same command
    again, as if it had never run (its id too, so that its pipeline is
    replayed); else a --skip-done run."""
    if left_a_run(OUTPUT, FAULTY):
        code, _, err = classify(cli, NEXT, [folder], "--skip-done")
    else:
        code, _, err = classify(cli, FAULTY, [folder], *extra)
    if code != 0:
        return [f"the next run: exit {code}: {err.strip()[-300:]}"]
    found = []
    got = sorted(rows("predictions") + rows("errors"))
    if got != samples(folder):
        found.append(f"the next run: outputs hold {got}")
    manifest = json.loads(Bucket.objects[f"{OUTPUT}/_manifest.json"])
    counts = manifest["counts"]
    if counts["matched"] != len(samples(folder)) or counts["matched"] != \
            counts["predicted"] + counts["failed"] + counts["skipped"]:
        found.append(f"the next run: counts {counts}")
    return found


def calls_of(faults, start, clean_run):
    """The store calls ``clean_run`` makes on the output ``start``. When
    its pipeline ran for real, it is run again, replayed: the calls must
    be the same (the replays of :class:`Pipelines` are faithful)."""
    recorded = len(faults.pipelines.recorded)
    made = _calls(faults, start, clean_run)
    if len(faults.pipelines.recorded) > recorded:
        assert _calls(faults, start, clean_run) == made, "a replay differs"
    assert made, "no store call counted"
    return made


def _calls(faults, start, clean_run):
    Bucket.reset(start)
    faults.calls.clear()
    clean_run()
    # A merged ledger file's name is random.
    return [(operation, re.sub("[0-9a-f]{32}", "*", path))
            for operation, path in faults.calls]


def faulty_calls(clean, flavor):
    """The numbers (from 1) of the calls of ``clean`` that ``flavor``
    fails."""
    return [k for k, (operation, _) in enumerate(clean, 1)
            if operation in flavor.raises]


def run_scenario(cli, faults, folder, name):
    """Sweeps scenario ``name`` with ``faults.flavor``: ``(the clean run's
    calls, the calls failed, what went wrong)``."""
    earlier, extra = scenarios(folder)[name]
    inputs = [folder]
    start = set_up(cli, earlier)

    def clean_run():
        code, _, err = classify(cli, FAULTY, inputs, *extra)
        assert code == 0, err
    clean = calls_of(faults, start, clean_run)
    failures, checked, swept = [], {}, faulty_calls(clean, faults.flavor)
    for k in swept:
        Bucket.reset(start)
        faults.calls.clear()
        faults.fail_at = k
        try:
            code, _, err = classify(cli, FAULTY, inputs, *extra)
        except Exception as error:  # noqa: BLE001 - a traceback
            code, err = None, f"Traceback: raised {error!r}"
        finally:
            faults.fail_at = None
        if len(faults.calls) < k:
            failures.append(f"k={k}: not reached (runs differ)")
            continue
        call = faults.calls[k - 1]
        found = problems(code, err, faults.flavor.marker,
                         faults.flavor.named) + check_next_run(
            cli, folder, extra, checked)
        if found:
            failures.append(f"k={k} {call}: {'; '.join(found)}")
    return clean, swept, failures


@pytest.mark.parametrize("name", ["plain", "skip-done", "overwrite"])
def test_a_store_error_at_any_call_is_one_line_and_the_next_run_recovers(
        cli, harness, inputs, name):
    clean, _, failures = run_scenario(cli, harness, inputs, name)
    assert not failures, (f"{len(failures)} of {len(clean)} calls:\n"
                          + "\n".join(failures))


# A client's error (not an OSError), each scenario with one store's.
CLIENT_SWEEPS = [("gcs", "plain"), ("s3", "skip-done"),
                 ("azure", "overwrite")]


@pytest.mark.parametrize("flavor,name", CLIENT_SWEEPS)
def test_a_client_error_at_any_call_is_one_line_and_the_next_run_recovers(
        cli, harness, inputs, flavor, name):
    """As an OSError: the client's type and message in one line, the same
    exit code, and the next run recovers exactly once."""
    harness.flavor = FLAVORS[flavor]
    clean, swept, failures = run_scenario(cli, harness, inputs, name)
    assert swept, "no call fails"
    assert not failures, (f"{len(failures)} of {len(swept)} calls:\n"
                          + "\n".join(failures))


class Ticks:
    """A watcher's clock and wait, on fake time from ``start``: a wait
    moves the clock on; the first wait once the first window has ended
    (it was published, or failed) stops the watcher."""

    def __init__(self, start: float, stop: threading.Event):
        from pipeline.watch import window_at

        self.now, self.stop = start, stop
        self.first_end = window_at(start, WINDOW).end

    def __call__(self) -> float:
        return self.now

    def wait(self, seconds: float) -> bool:
        if self.now >= self.first_end:
            self.stop.set()
        self.now += seconds
        return self.stop.is_set()


WINDOW = 60


def watch_once(folder, run_id, start):
    """``imgclass watch`` on ``folder`` into OUTPUT for one window from
    ``start`` (fake time); what it raised, or None."""
    from pipeline.watch import watch

    stop = threading.Event()
    ticks = Ticks(start, stop)
    previous = run.new_run_id
    run.new_run_id = lambda now: run_id
    try:
        watch(run.ClassifyConfig(inputs=[folder], output=OUTPUT),
              interval=WINDOW, window=WINDOW, settle=0, stop_event=stop,
              log=io.StringIO(), clock=ticks, wait=ticks.wait)
    except Exception as error:  # noqa: BLE001 - judged by the caller
        return error
    finally:
        run.new_run_id = previous
    return None


@pytest.mark.parametrize("flavor", ["OSError", "gcs"])
def test_a_store_error_at_any_call_of_a_watcher_stops_it_in_one_line_or_waits(
        harness, inputs, flavor):
    """A watcher meeting a store error (an OSError, or a client's error) at
    any call outside the pipelines: before watching it stops with
    RunFailed ('imgclass: watch failed: ...', exit 1; the output's write
    probe: ConfigError, exit 2); in a window, the window fails and its
    files wait; the next watcher publishes every input once."""
    harness.flavor = FLAVORS[flavor]
    start = (int(os.path.getmtime(inputs)) // WINDOW + 2) * WINDOW

    def clean_run():
        assert watch_once(inputs, FAULTY, start) is None
        assert sorted(rows("predictions") + rows("errors")) == \
            samples(inputs)
    clean = calls_of(harness, {}, clean_run)
    failures, checked = [], {}
    for k in faulty_calls(clean, harness.flavor):
        Bucket.reset({})
        harness.calls.clear()
        harness.fail_at = k
        try:
            error = watch_once(inputs, FAULTY, start)
        finally:
            harness.fail_at = None
        call = harness.calls[k - 1] if len(harness.calls) >= k else None
        found = []
        if error is not None and not (
                isinstance(error, run.RunFailed)
                and harness.flavor.marker in str(error)
                and harness.flavor.named in str(error)
                or "cannot be written" in str(error)):
            found.append(f"raised {error!r}")
        state_before = state()
        if state_before not in checked:  # as _next_run
            error = watch_once(inputs, NEXT if left_a_run(OUTPUT, FAULTY)
                               else FAULTY, start + 3600)
            got = sorted(rows("predictions") + rows("errors"))
            checked[state_before] = (
                [f"the next watcher raised {error!r}"] if error else []) + (
                [f"the next watcher: outputs hold {got}"]
                if got != samples(inputs) else [])
        found += checked[state_before]
        if found:
            failures.append(f"k={k} {call}: {'; '.join(found)}")
    assert not failures, (f"{len(failures)} of "
                          f"{len(faulty_calls(clean, harness.flavor))} "
                          f"calls:\n" + "\n".join(failures))


# The models commands on a model store in memstore://. Listing (a match)
# is wrapped by Beam on every store, so these fail opens, creates, exists.
MODELS = "memstore://acme-models/store"
MODEL_COMMANDS = {"list": ["models", "list"], "show": ["models", "show",
                                                       "tiny"],
                  "verify": ["models", "verify", "tiny@1"],
                  "promote": ["models", "promote", "tiny@1", "--alias",
                              "prod"]}


def models_command(cli, faults, start, command, k, flavor):
    """``imgclass --store MODELS command`` on the store ``start`` with its
    ``k``-th call failing as ``flavor`` says: ``(exit code, stderr
    lines)``; a traceback's exit code is None."""
    Bucket.reset(start)
    faults.calls.clear()
    faults.flavor, faults.fail_at = flavor, k
    try:
        code, _, err = cli("--store", MODELS, *command)
    except Exception as error:  # noqa: BLE001 - a traceback
        code, err = None, f"Traceback: raised {error!r}"
    finally:
        faults.fail_at = None
    return code, err.strip().splitlines()


@pytest.mark.parametrize("command", MODEL_COMMANDS)
def test_a_client_error_in_a_models_command_ends_it_as_an_oserror_does(
        cli, monkeypatch, command):
    """At every call that GCS's, S3's or Azure's client fails unwrapped, a
    models command ends as with Beam's OSError at that call: the same exit
    code, no traceback, at most one line, naming the client's error."""
    from tests.test_store import save

    Bucket.reset({})
    save(MODELS)
    start = dict(Bucket.objects)
    faults = StoreFaults(monkeypatch)
    assert cli("--store", MODELS, *MODEL_COMMANDS[command])[0] == 0
    clean, failures, swept = list(faults.calls), [], 0
    for flavor in ("gcs", "s3", "azure"):
        for k in faulty_calls(clean, FLAVORS[flavor]):
            swept += 1
            code, lines = models_command(cli, faults, start,
                                         MODEL_COMMANDS[command], k,
                                         FLAVORS[flavor])
            expected, _ = models_command(cli, faults, start,
                                         MODEL_COMMANDS[command], k,
                                         FLAVORS["OSError"])
            if code is None or code != expected or len(lines) > 1 or (
                    lines and FLAVORS[flavor].marker not in lines[0]):
                failures.append(f"{flavor} k={k} {clean[k - 1]}: exit "
                                f"{code} (OSError: {expected}): {lines}")
    assert swept, "no call fails"
    assert not failures, (f"{len(failures)} of {swept} calls:\n"
                          + "\n".join(failures))


@pytest.mark.parametrize("command", MODEL_COMMANDS)
def test_a_store_error_at_any_call_of_a_models_command_is_one_line(
        cli, monkeypatch, command):
    """At every call a models command makes on the store, listings
    included, a 503 ends it in one line naming the 503 and exit code 1 (a
    failure, not a mistake: a scheduler tries again), never a traceback;
    or list and verify report the version that cannot be read as they
    report a broken one; or, where the command can tell that the file it
    failed to open is not there (an alias file a model lacks), it prints
    what it prints without the 503."""
    from tests.test_store import save

    Bucket.reset({})
    save(MODELS)
    start = dict(Bucket.objects)
    faults = StoreFaults(monkeypatch)
    args = ("--store", MODELS, *MODEL_COMMANDS[command])
    clean_code, clean_out, _ = cli(*args)
    assert clean_code == 0
    clean, failures = list(faults.calls), []
    assert any(operation == "match" for operation, _ in clean)
    for k in range(1, len(clean) + 1):
        Bucket.reset(start)
        faults.calls.clear()
        faults.fail_at = k
        try:
            code, out, err = cli(*args)
        except Exception as error:  # noqa: BLE001 - a traceback
            code, out, err = None, "", f"Traceback: raised {error!r}"
        finally:
            faults.fail_at = None
        lines = err.strip().splitlines()
        if (code, out, lines) == (0, clean_out, []):
            continue
        if lines:  # the command stopped: one line, exit 1
            told = code == 1 and len(lines) == 1 and "503" in lines[0]
        else:  # list and verify report a version that cannot be read
            told = code is not None and "cannot be " in out
        if not told:
            failures.append(f"k={k} {clean[k - 1]}: exit {code}: {lines} "
                            f"{out!r:.300}")
    assert not failures, (f"{len(failures)} of {len(clean)} calls:\n"
                          + "\n".join(failures))


def test_a_model_file_gcs_says_is_not_found_is_missing(cli, monkeypatch):
    """GCS's client opens a missing object with NotFound (not an OSError):
    a model store's first save (no aliases.json yet) and a version without
    its weights read it as missing, as on other stores."""
    from tests.object_store import MemStore
    from tests.test_store import save

    real = MemStore.open

    def gcs_open(self, path, *args, **kwargs):
        if path not in Bucket.objects:
            name = path.split("://", 1)[1]
            raise client_errors.NotFound(f"GET https://storage.googleapis.com"
                                         f"/{name}: No such object: {name}")
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(MemStore, "open", gcs_open)
    Bucket.reset({})
    save(MODELS)
    assert cli("--store", MODELS, "models", "show", "tiny")[0] == 0
    del Bucket.objects[f"{MODELS}/tiny/1/weights.npz"]
    code, _, err = cli("--store", MODELS, "models", "show", "tiny@1")
    assert code == 2 and err == (f"imgclass: error: model file {MODELS}/"
                                 f"tiny/1/weights.npz is missing\n"), err


@pytest.mark.parametrize("flavor", ["OSError", "gcs"])
def test_an_aliases_file_the_store_fails_to_read_is_not_taken_for_none(
        cli, monkeypatch, flavor):
    """models promote reads aliases.json, adds the alias and writes it
    back: a 503 reading it stops promote in one line, the file and its
    other aliases as they were (it was taken for no file, and rewritten
    with the new alias alone); the next promote adds the alias."""
    from tests.test_store import save

    Bucket.reset({})
    save(MODELS)
    assert cli("--store", MODELS, "models", "promote", "tiny@1", "--alias",
               "prod")[0] == 0
    start, aliases = dict(Bucket.objects), f"{MODELS}/tiny/aliases.json"
    faults = StoreFaults(monkeypatch)
    staging = ["models", "promote", "tiny@1", "--alias", "staging"]
    assert cli("--store", MODELS, *staging)[0] == 0
    k = faults.calls.index(("open", aliases)) + 1
    code, lines = models_command(cli, faults, start, staging, k,
                                 FLAVORS[flavor])
    assert code == 1 and len(lines) == 1 and "503" in lines[0], lines
    assert f"{aliases} cannot be read" in lines[0]
    assert Bucket.objects[aliases] == start[aliases]
    assert cli("--store", MODELS, *staging)[0] == 0
    assert json.loads(Bucket.objects[aliases]) == {"prod": 1, "staging": 1}


@pytest.mark.parametrize("command", MODEL_COMMANDS)
def test_a_local_store_folder_that_cannot_be_listed_is_one_line(
        cli, monkeypatch, tmp_path, command):
    """A local model store whose folders cannot be listed (no permission,
    an NFS mount's EIO) ends a models command in one line naming the
    folder and the reason, exit 1, never a traceback (verify: its report
    of the model)."""
    from tests.test_store import save

    root = str(tmp_path / "store")
    save(root)
    listdir = os.listdir

    def refused(path="."):
        if os.fspath(path).startswith(root):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return listdir(path)

    monkeypatch.setattr(os, "listdir", refused)
    code, out, err = cli("--store", root, *MODEL_COMMANDS[command])
    told = (f"the model store cannot be listed ({root}): [Errno 13] "
            f"Permission denied: '{root}': run again once that is fixed\n")
    # verify reports each model it checks on stdout: FAILED, the reason
    expected = ("", f"imgclass: error: {told}") if command != "verify" \
        else (f"FAILED  tiny@1: {told}", "")
    assert (code, out, err) == (1, *expected)
