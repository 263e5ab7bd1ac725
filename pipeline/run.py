"""Assembling and running the classification pipeline."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import io
import os
import re
import signal
import sys
import tempfile
import threading
import time
import uuid
from typing import Optional, Sequence

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import (
    DirectOptions,
    GoogleCloudOptions,
    PipelineOptions,
    PortableOptions,
    PrismRunnerOptions,
    StandardOptions,
)

from model_store import DEFAULT_MODEL, fs
from model_store.errors import ConfigError, ImgclassError
from model_store.images import DEFAULT_MAX_PIXELS
from pipeline import (
    collection,
    inputs,
    layout,
    ledger,
    outputs,
    signals,
    tables,
)
from pipeline.progress import Monitor
from transforms import schema
from transforms.classify import ClassifyBatches
from transforms.common import METRICS_NAMESPACE
from transforms.defaults import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_SKIP_BY,
    PARTITIONS,
    check_batch_size,
    top_k_for,
)
from transforms.files import DEFAULT_MAX_FILE_BYTES, escape_path
from transforms.progress import progress_seconds
from transforms.read import BatchFiles, MatchFiles
from transforms.schema import ERRORS_TAG, SKIPPED_TAG
from transforms.skip import NEW, SkipDone, count_retried, ledger_table
from transforms.write import WriteRows, WriteTables

# Names under which users ask for Beam's local runner. Beam 2.77's DirectRunner
# first tries to download and start the Prism runner; this project runs the
# in-process FnApiRunner instead, which never touches the network.
_LOCAL_RUNNERS = {None, "DirectRunner", "direct", "directrunner",
                  "SwitchingDirectRunner", "FnApiRunner"}
# The other runners the project supports (tested or documented in
# deploy/README.md); any other is refused: e.g. Beam's DaskRunner drops
# outputs emitted in finish_bundle and runs only the last sink.
SUPPORTED_RUNNERS = ("DirectRunner", "PortableRunner", "FlinkRunner",
                     "SparkRunner", "DataflowRunner", "PrismRunner")
# How long a --job_endpoint may take to answer before the run is refused.
ENDPOINT_TIMEOUT_SECONDS = 30.0


class RunFailed(ImgclassError, RuntimeError):
    """The pipeline ran but its result is not trustworthy (exit code 1)."""


@dataclasses.dataclass
class ClassifyConfig:
    """What ``imgclass classify`` was asked to do."""
    inputs: Sequence[str]
    output: str
    model_ref: str = DEFAULT_MODEL
    store: Optional[str] = None
    top_k: Optional[int] = None  # None: transforms.defaults.top_k_for
    batch_size: int = DEFAULT_BATCH_SIZE
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    min_confidence: float = 0.0
    partition_by: str = "none"
    run_date: Optional[str] = None
    overwrite: bool = False
    skip_done: bool = False
    skip_done_by: Optional[str] = None  # None: DEFAULT_SKIP_BY; given
    # without skip_done, a mistake (even the default: the user meant it)
    retry_errors: bool = False
    # Inputs that match no file at all are a mistake (a glob typo) unless
    # this is set (a nightly job over a folder that may be empty).
    allow_empty: bool = False
    beam_args: Sequence[str] = ()
    emit_embeddings: bool = False
    table_format: str = tables.DEFAULT_FORMAT
    iceberg_catalog: Optional[str] = None
    iceberg_namespace: Optional[str] = None  # None: the default
    # Used by ``imgclass watch`` (pipeline/watch.py); unset for ``classify``.
    # An explicit Hive partition path, e.g. "date=2026-11-26/hour=13"
    # (overrides partition_by); leave out files modified less than
    # ``settle`` seconds ago or named as in progress (transforms.read.
    # is_settled) at ``listed_at`` (the watcher's clock; default: when the
    # pipeline is built), unless ``settled_files`` holds their
    # transforms.read.file_version (the watcher settled them by its own
    # clock: modified in the future); the time window recorded in the
    # manifest.
    partition: Optional[str] = None
    settle: Optional[float] = None
    listed_at: Optional[float] = None
    settled_files: Sequence[tuple] = ()
    window: Optional[dict] = None


def new_run_id(now: datetime.datetime) -> str:
    return f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


class _OneViewPerClass(PipelineOptions):
    """Beam's options, whose views are made once per options class. Beam
    asks a pipeline's options for a view (``TypeOptions``,
    ``StandardOptions``, ...) about 350 times per run, and each new view
    parses the flags again with a new argparse parser (0.13 s of a run over
    the 39 samples, bench/README.md). A view keeps no values of its own:
    they live in the ``_all_options`` it shares with these options, so one
    view per class answers every caller as a new one would."""

    def view_as(self, cls):
        views = self.__dict__.setdefault("_views", {})
        if cls not in views:
            views[cls] = super().view_as(cls)
        return views[cls]


def pipeline_options(beam_args: Sequence[str]) -> PipelineOptions:
    """Beam options from the command line; unknown ones, values Beam cannot
    parse and runners the project does not support are mistakes."""
    beam_args = list(beam_args)
    if not any(a.startswith("--default_sdk_harness_log_level")
               for a in beam_args):
        # Worker processes log every gRPC channel at INFO; keep the terminal
        # for warnings, progress and the summary.
        beam_args.insert(0, "--default_sdk_harness_log_level=WARNING")
    options = _OneViewPerClass(beam_args)
    known = _parse(options, retain_unknown_options=False)
    every = _parse(options, retain_unknown_options=True)
    unknown = sorted(set(every) - set(known))
    if unknown:
        given = {arg.split("=", 1)[0].lstrip("-").replace("-", "_"):
                 arg.split("=", 1)[0] for arg in beam_args
                 if arg.startswith("--")}
        raise ConfigError(f"unknown option(s) "
                          f"{', '.join(given.get(u, '--' + u) for u in unknown)}"
                          f"; see the command's --help and Beam's pipeline "
                          f"options")
    stray = _parse(options, add_extra_args_fn=_catch_stray).get(_STRAY)
    if stray:
        raise ConfigError(f"unrecognized argument(s) {' '.join(stray)!r}: "
                          f"not an option, nor the value of one (e.g. "
                          f"--summary-json takes none); see the command's "
                          f"--help")
    _check_local_workers(options.view_as(DirectOptions))
    _check_runner(options)
    return options


# Local workers per core at most: each worker of a multi-processing run is
# a process holding Beam, Theano and the model (about 350 MB for
# digits-cnn), and more workers than cores only share them.
MAX_LOCAL_WORKERS_PER_CORE = 4


def _check_local_workers(direct: DirectOptions) -> None:
    workers, cores = direct.direct_num_workers, os.cpu_count() or 1
    if workers is not None and workers < 0:
        raise ConfigError(f"--direct_num_workers must be >= 0, got {workers}")
    if workers is not None and workers > MAX_LOCAL_WORKERS_PER_CORE * cores:
        raise ConfigError(
            f"--direct_num_workers {workers} is more than "
            f"{MAX_LOCAL_WORKERS_PER_CORE} per core of this machine's "
            f"{cores}; give at most {MAX_LOCAL_WORKERS_PER_CORE * cores} "
            f"(0: one per core), or run on a distributed runner")


def offline_options(*beam_args: str) -> PipelineOptions:
    """Pipeline options for pipelines of your own that never download
    anything: unless another runner is asked for, Beam's in-process
    ``FnApiRunner`` (which honours ``--direct_running_mode`` and
    ``--direct_num_workers``) instead of the ``DirectRunner``, which first
    tries to download Prism. Unknown options are refused, as on the command
    line."""
    for arg in beam_args:
        if not isinstance(arg, str):
            raise ConfigError(f"offline_options takes each Beam option as a "
                              f"string argument of its own, got {arg!r}: "
                              f"offline_options(*args) for a list")
    options = pipeline_options(beam_args)
    standard = options.view_as(StandardOptions)
    if standard.runner in _LOCAL_RUNNERS:
        standard.runner = "FnApiRunner"
    return options


# Beam's option parser drops words that are neither an option nor the value
# of one; a catch-all positional argument collects them.
_STRAY = "imgclass_stray_arguments"


def _catch_stray(parser) -> None:
    parser.add_argument(_STRAY, nargs="*")


def _parse(options: PipelineOptions, **kwargs) -> dict:
    """Beam's argparse prints its usage and exits on a bad value; here that
    is one line."""
    printed = io.StringIO()
    try:
        with contextlib.redirect_stderr(printed), \
                contextlib.redirect_stdout(printed):
            return options.get_all_options(**kwargs)
    except SystemExit:
        lines = printed.getvalue().strip().splitlines() or ["invalid option"]
        message = lines[-1].split("error: ", 1)[-1]
        raise ConfigError(f"Beam option: {message}") from None


def _runner_name(name: Optional[str]) -> Optional[str]:
    """The supported runner ``name`` means (any case, with or without
    ``Runner``, or Beam's class path), else None."""
    if name in _LOCAL_RUNNERS:
        return "DirectRunner"
    module, _, short = name.rpartition(".")
    if module and not module.startswith("apache_beam.runners."):
        return None
    for supported in SUPPORTED_RUNNERS:
        if short.lower() in (supported.lower(),
                             supported.lower()[:-len("runner")]):
            return supported
    return None


def _check_runner(options: PipelineOptions) -> None:
    name = options.view_as(StandardOptions).runner
    runner = _runner_name(name)
    if runner is None:
        raise ConfigError(f"--runner={name} is not supported; use one of "
                          f"{', '.join(SUPPORTED_RUNNERS)}")
    if runner == "DataflowRunner":
        cloud = options.view_as(GoogleCloudOptions)
        missing = [f"--{o}" for o in ("project", "region")
                   if not getattr(cloud, o)]
        if not any((getattr(cloud, o) or "").startswith("gs://")
                   for o in ("temp_location", "staging_location")):
            missing.append("--temp_location=gs://BUCKET/PATH (Dataflow "
                           "stages and keeps temporary files in Cloud "
                           "Storage)")
        if missing:
            raise ConfigError(f"--runner=DataflowRunner needs "
                              f"{' and '.join(missing)}")
        try:
            import apache_beam.runners.dataflow.dataflow_runner  # noqa: F401
        except ImportError:
            raise ConfigError("--runner=DataflowRunner needs Beam's gcp "
                              "extra; install it with pip install "
                              "'imgclass[gcp]'") from None
    _check_environment_type(options.view_as(PortableOptions))
    endpoint = options.view_as(PortableOptions).job_endpoint
    if runner == "PortableRunner" and not endpoint:
        raise ConfigError("--runner=PortableRunner needs --job_endpoint=HOST:"
                          "PORT (a running job service) or --job_endpoint="
                          "embed; or name the engine: --runner=FlinkRunner "
                          "or SparkRunner")
    if runner == "PrismRunner" and not endpoint and not options.view_as(
            PrismRunnerOptions).prism_location:
        raise ConfigError("--runner=PrismRunner would download the Prism "
                          "binary (imgclass downloads nothing at run time): "
                          "give --prism_location=PATH of a Prism binary, or "
                          "--job_endpoint=HOST:PORT of a running Prism; or "
                          "leave --runner unset for the in-process runner")
    if runner in ("PortableRunner", "FlinkRunner", "SparkRunner") and \
            endpoint and endpoint != "embed":
        _check_endpoint(endpoint)


def _check_environment_type(portable: PortableOptions) -> None:
    """Refuses an --environment_type Beam does not know (it would otherwise
    fail only when a portable runner submits the job, and never locally)."""
    from apache_beam.portability import common_urns

    kind = portable.environment_type
    if kind and not (kind.startswith("beam:env:") or kind == "LOOPBACK"
                     or hasattr(common_urns.environments, kind)):
        raise ConfigError(f"--environment_type={kind} is not an environment "
                          f"Beam knows; use DOCKER, PROCESS, EXTERNAL or "
                          f"LOOPBACK (or a beam:env: URN)")


def _check_endpoint(endpoint: str) -> None:
    """Fails within ENDPOINT_TIMEOUT_SECONDS when nothing answers at the
    job service ``endpoint`` (Beam itself waits minutes, then fails with an
    empty FutureTimeoutError)."""
    import grpc

    channel = grpc.insecure_channel(endpoint)
    try:
        grpc.channel_ready_future(channel).result(
            timeout=ENDPOINT_TIMEOUT_SECONDS)
    except grpc.FutureTimeoutError:
        raise ConfigError(f"--job_endpoint={endpoint}: no job service "
                          f"answered within {ENDPOINT_TIMEOUT_SECONDS:g} s; "
                          f"start it or fix the address") from None
    finally:
        channel.close()


def make_runner(options: PipelineOptions):
    """The runner to use: the in-process FnApiRunner for local runs (it
    honours --direct_running_mode and --direct_num_workers), else Beam's
    runner of that name."""
    name = options.view_as(StandardOptions).runner
    if _runner_name(name) != "DirectRunner":
        return None
    if options.view_as(StandardOptions).streaming:
        raise ConfigError("--streaming is not supported by the local runner; "
                          "use 'imgclass watch' for continuous runs")
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    from pipeline.worker import local_runner

    _set_local_worker_environment(options.view_as(DirectOptions))
    # As Beam's DirectRunner does when it picks the FnApiRunner: give the
    # workers the pipeline options.
    encoded = JobServiceHandle.encode_pipeline_options(
        options.get_all_options())
    provision = fn_runner.ExtendedProvisionInfo(
        beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
    return local_runner(provision_info=provision)


def _set_local_worker_environment(direct: DirectOptions) -> None:
    """What worker processes of a multi-processing local run inherit
    (unless already set): OpenMP threads and Python's hash seed."""
    if direct.direct_running_mode != "multi_processing":
        return
    # N workers with one OpenMP thread per core each would oversubscribe
    # the cores (bench/README.md).
    workers = direct.direct_num_workers or os.cpu_count() or 1
    os.environ.setdefault("OMP_NUM_THREADS",
                          str(max(1, (os.cpu_count() or 1) // workers)))
    # Theano keys one compiled module by a str hash; with a fixed seed the
    # workers find it in the cache instead of compiling it, each in turn,
    # under Theano's machine-wide lock (bench/README.md).
    os.environ.setdefault("PYTHONHASHSEED", "0")


def validate(config: ClassifyConfig,
             ) -> tuple[ClassifyConfig, list[str], Optional[str]]:
    """Every check that can fail before work starts: ``(config with a local
    output made absolute, patterns, partition)``."""
    if not config.output:  # '' would be the working folder
        raise ConfigError("--output is empty; give an output folder")
    config = _with_absolute_output(config)
    if not config.inputs:
        raise ConfigError("give at least one --input")
    if config.partition_by not in PARTITIONS:
        raise ConfigError(f"--partition-by must be one of "
                          f"{', '.join(PARTITIONS)}, got "
                          f"{config.partition_by!r}")
    if config.run_date is not None:
        _check_run_date(config)
    for path in config.inputs:
        outputs.check_filesystem(path, "--input")
    patterns = inputs.input_patterns(config.inputs, config.output)
    if config.skip_done_by is not None and not config.skip_done:
        raise ConfigError("--skip-done-by only applies with --skip-done")
    if config.retry_errors and not config.skip_done:
        raise ConfigError("--retry-errors only applies with --skip-done "
                          "(without it, every file is classified)")
    if config.overwrite and config.skip_done:
        raise ConfigError("--overwrite and --skip-done contradict each other: "
                          "--skip-done adds to the earlier runs that "
                          "--overwrite would remove")
    outputs.check_outside_models(config.output, store=config.store,
                                 model_ref=config.model_ref)
    outputs.check_output(config.output)
    if config.settle is not None and not config.settle >= 0:
        raise ConfigError(f"settle must be >= 0 seconds, got "
                          f"{config.settle!r}")
    progress_seconds()
    return config, patterns, _partition(config)


def _with_absolute_output(config: ClassifyConfig) -> ClassifyConfig:
    """``config`` with a local output as an absolute path (symbolic links
    kept): whatever a run records (the publish record, manifests) then
    names the same files from any working directory, so that a run killed
    while publishing is completed by a run started elsewhere."""
    if fs.is_uri(config.output):
        return config
    return dataclasses.replace(config, output=os.path.abspath(config.output))


def _check_run_date(config: ClassifyConfig) -> None:
    # The digits' pattern first: Python 3.11 also reads ISO week dates
    # ('2026-W01-1'), which no partition reader (nor Delta) takes as a date.
    try:
        if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", config.run_date):
            raise ValueError
        datetime.date.fromisoformat(config.run_date)
    except ValueError:
        raise ConfigError(f"--run-date must be YYYY-MM-DD, got "
                          f"{config.run_date!r}") from None
    if config.partition_by != "run_date":
        raise ConfigError("--run-date only applies with --partition-by "
                          "run_date")


def _partition(config: ClassifyConfig) -> Optional[str]:
    """The run's Hive partition path (checked), or None."""
    if config.partition is not None:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*=[^/=]+"
                            r"(/[A-Za-z][A-Za-z0-9_]*=[^/=]+)*",
                            config.partition):
            raise ConfigError(f"partition must be key=value[/key=value...], "
                              f"got {config.partition!r}")
        return config.partition
    if config.partition_by == "run_date":
        run_date = config.run_date or datetime.datetime.now(
            datetime.timezone.utc).date().isoformat()
        return f"run_date={run_date}"
    return None


def table_spec(config: ClassifyConfig,
               partition: Optional[str]) -> Optional[tables.TableSpec]:
    """The Delta or Iceberg tables to commit to (None for plain Parquet);
    checked before any work."""
    if config.overwrite and config.table_format != tables.DEFAULT_FORMAT:
        raise ConfigError(f"--overwrite does not apply to --table-format "
                          f"{config.table_format}: a table keeps every "
                          f"run's commit; give a new --output for a new "
                          f"table")
    return tables.table_spec(config.table_format, config.output,
                             catalog=config.iceberg_catalog,
                             namespace=config.iceberg_namespace,
                             partition=partition)


def run_classify(config: ClassifyConfig, *, log=None,
                 output_locked: bool = False,
                 started: Optional[float] = None) -> dict:
    """Runs the whole job; returns the manifest.

    Holds the output's lock (unless the caller, ``watch``, holds it:
    ``output_locked``), completes interrupted publishing, and only then
    decides whether the output holds an earlier run. A run that raises
    leaves no output folder it created (if still empty).

    ``started``: the ``time.monotonic()`` from which the summary counts the
    wall time (the command line passes its process's start, so that
    imports, model loading and compiling are counted); default: now.

    Raises:
        ConfigError (and other ImgclassError): a mistake found before work.
        RunFailed: the pipeline failed, or its counts cannot be established
            or do not add up; nothing was published.
        KeyboardInterrupt: Ctrl-C (or SIGTERM, as the command line sets
            it) before publishing started; nothing was published.

    Ctrl-C or SIGTERM once publishing has started waits for it to end:
    the run is published whole, a note says so, and the returned
    manifest's ``deferred_signals`` names the signals (e.g. ``SIGINT``).
    """
    log = log if log is not None else sys.stderr
    started = time.monotonic() if started is None else started
    options = pipeline_options(config.beam_args)
    runner = make_runner(options)
    # Once publishing starts (``_run`` calls ``hold``), Ctrl-C and SIGTERM
    # wait until the run is published and reported: it then succeeds.
    with signals.deferrable() as hold:
        with outputs.removed_unless_used(config.output), \
                failing_on_store_errors(config.output, "nothing was "
                                        "published: run again once that "
                                        "is fixed"):
            manifest = _run(config, options, runner, log, output_locked,
                            started, hold)
        # Not in the published manifest: publishing is part of the wall time.
        manifest = dict(manifest, wall_seconds=round(
            time.monotonic() - started, 3))
        _summary(manifest, config, log)
        held = [signal.Signals(s).name for s in hold()]
        if held:
            print(f"imgclass: {' and '.join(held)} arrived while run "
                  f"{manifest['run_id']} was being published; it was "
                  f"completed (published whole)", file=log)
    return dict(manifest, deferred_signals=held)


@contextlib.contextmanager
def failing_on_store_errors(output: str, then: str):
    """A store error (``fs.is_store_error``: an object store's 503, its
    client's own error or Beam's OSError, a full disk) that escapes the
    block, as RunFailed: ``OUTPUT: Type: error line; then``. For what
    recovery and publishing do not report themselves: the lock, the
    checks, the ledger listing, reading the staged files, a watcher's
    markers. Errors of imgclass's own (the model store's) and bugs pass."""
    try:
        yield
    except Exception as error:
        if not fs.is_store_error(error):
            raise
        raise RunFailed(f"{fs.shown(output)}: {type(error).__name__}: "
                        f"{fs.error_line(error)}; {then}") from error


def check_matches(config: ClassifyConfig) -> None:
    """Refuses inputs that match no file at all, unless ``allow_empty``."""
    if config.allow_empty:
        return
    empty = inputs.unmatched(config.inputs, config.output)
    if empty:
        names = ", ".join(repr(escape_path(i)) for i in empty)
        raise ConfigError(
            f"input{'s' if len(empty) > 1 else ''} {names} "
            f"match{'' if len(empty) > 1 else 'es'} no file; check the "
            f"pattern (a typo, the extension?), or pass --allow-empty if an "
            f"empty input is expected")


def _run(config, options, runner, log, output_locked, started,
         hold) -> dict:
    """run_classify's work, once the Beam options are known."""
    from model_store.store import load_model

    config, patterns, partition = validate(config)
    spec = table_spec(config, partition)  # its mistakes, before any work
    tables.open_catalog(spec)
    check_matches(config)
    now = datetime.datetime.now(datetime.timezone.utc)
    run_id = new_run_id(now)
    with (contextlib.nullcontext() if output_locked
          else outputs.locked(config.output, run_id, log=log)):
        recover(config.output, log)
        # Judged on the output as recovery left it, before any work.
        layout.check(config.output, layout.layout_of(partition),
                     config.table_format, overwrite=config.overwrite)
        tables.check_catalog_lists(spec, outputs.PARTITIONED)
        tables.check_tables(spec, outputs.PARTITIONED,
                            published=outputs.holds_published_run(
                                config.output))
        outputs.check_earlier_run(
            config.output, overwrite=config.overwrite,
            incremental=config.skip_done,
            overwritable=layout.overwritable(config.output))
        if config.skip_done:
            outputs.check_done_files(config.output)
        if not config.overwrite:  # --overwrite deletes the ledger files
            merge_ledger(config.output, log)
        stored = load_model(config.model_ref, root=config.store)
        config = dataclasses.replace(config, top_k=top_k_for(
            config.top_k, len(stored.class_names), stored.ref))
        check_batch_size(config.batch_size, stored.preprocessing.input_shape,
                         stored.ref)
        paths = outputs.RunOutputs(config.output, run_id, partition)
        try:  # until publishing starts, any way out removes the staging
            staged, manifest = _stage(config, options, runner, stored,
                                      patterns, paths, (now, started), log)
            # From here on the run is published whole (run_classify); a
            # stop that a library swallowed on the way raises here instead.
            hold()
        except BaseException:
            paths.discard_staging()
            raise
        _publish(paths, staged, manifest, overwrite=config.overwrite)
    return manifest


def recover(output: str, log) -> None:
    """Completes interrupted publishing in ``output`` (holding its lock);
    RunFailed, saying how to get out, when it cannot."""
    try:
        recovered = outputs.recover(output)
    except Exception as error:  # e.g. a full disk: the next run retries
        raise RunFailed(
            f"could not complete the interrupted publishing in {output}: "
            f"{type(error).__name__}: {fs.error_line(error)}; fix that "
            f"and run again (each run retries it), or, to abandon that run, "
            f"move {_pending(output)} out of {output} (files it already "
            f"moved stay, listed in its {outputs.PUBLISH})") from error
    if recovered:
        print(f"imgclass: finished publishing interrupted run(s) "
              f"{', '.join(recovered)}", file=log)


def _pending(output: str) -> str:
    """The staging folders of the runs recovery could not complete; all of
    staging when there are none or they cannot be listed (the store that
    failed recovery may fail this listing too)."""
    try:
        pending = outputs.pending_publishes(output)
    except Exception:  # noqa: BLE001 - the error being reported is the cause
        pending = []
    return ", ".join(pending) or fs.join(output, outputs.STAGING)


def merge_ledger(output: str, log) -> None:
    """Merges the small ledger files of ``output`` (``pipeline/ledger.py``),
    holding its lock, once :func:`recover` is done and the output passed
    the checks (a refused run changes nothing); a failure is one warning."""
    try:
        ledger.compact(output)
    except Exception as error:  # the ledger is whole, in more files
        print(f"imgclass: warning: the ledger files in {output} were not "
              f"merged ({type(error).__name__}: "
              f"{fs.error_line(error)}); the next run tries again",
              file=log)


def _stage(config, options, runner, stored, patterns, paths, started, log):
    """Runs the pipeline into staging; ``(staged files, manifest)``.
    ``started``: (UTC datetime, ``time.monotonic()``) the run started."""
    runner_name = type(runner).__name__ if runner else options.view_as(
        StandardOptions).runner
    result, seconds, startup = _execute(
        config, options, runner, stored, patterns, paths,
        f"with {stored.ref} on {runner_name}", log, started[1])
    staged = paths.staged_files()
    table = table_spec(config, paths.partition)
    manifest = {
        "run_id": paths.run_id,
        "started_at": started[0].isoformat(timespec="seconds"),
        "finished_at": datetime.datetime.now(
            datetime.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(seconds, 3),
        "startup_seconds": round(startup, 3),
        "model": {"name": stored.name, "version": str(stored.version),
                  "weights_sha256": stored.weights_sha256,
                  "location": stored.location},
        "inputs": [escape_path(i) for i in config.inputs],
        "patterns": patterns,
        "output": config.output,
        "partition": paths.partition,
        "layout": layout.layout_of(paths.partition),
        "table": table.to_dict() if table else None,
        "counts": _counts(paths, staged, retries=config.skip_done),
        "low_confidence": _low_confidence(staged, config.min_confidence),
        "skip_done": config.skip_done,
        "skip_done_by": _skip_done_by(config) if config.skip_done else None,
        "retry_errors": config.retry_errors,
        **({"window": config.window} if config.window is not None else {}),
        "metrics": _metrics(result),
        "runner": runner_name,
        "options": options.get_all_options(drop_default=True),
        "settings": {"top_k": config.top_k, "batch_size": config.batch_size,
                     "max_pixels": config.max_pixels,
                     "max_file_bytes": config.max_file_bytes,
                     "min_confidence": config.min_confidence},
        "files": paths.destinations(staged),
    }
    return staged, manifest


def _execute(config, options, runner, stored, patterns, paths, what, log,
             started):
    """Builds and runs the pipeline; ``(result, seconds, start-up seconds
    before it, from the monotonic time started)``."""
    every = progress_seconds()
    with tempfile.TemporaryDirectory(prefix="imgclass-progress-") as folder:
        # Workers on this machine (the local runners) write their counts
        # for the driver to add up; elsewhere each worker logs its own.
        folder = folder if runner is not None and every > 0 else None
        pipeline = beam.Pipeline(runner=runner, options=options)
        _build(pipeline, config, stored, patterns, paths,  # checks settings
               progress_folder=folder)
        shown = ", ".join(fs.one_line(fs.printable(i)) for i in config.inputs)
        print(f"imgclass: run {paths.run_id}: classifying {shown} {what}",
              file=log)
        collection.resume()  # start-up is over (pipeline.collection)
        clock = time.monotonic()
        with (Monitor(paths, folder, every=every, log=log) if folder
              else contextlib.nullcontext()):
            result = _wait(pipeline, paths)
    return result, time.monotonic() - clock, clock - started


def _wait(pipeline, paths):
    """Runs ``pipeline`` to its end; its result. Ctrl-C stops what the run
    started (:func:`_stop`) and raises KeyboardInterrupt."""
    result = None
    try:
        result = pipeline.run()
        result.wait_until_finish()
        return result
    except KeyboardInterrupt:
        _stop(result)
        raise
    except Exception as error:
        if _interrupted(error):
            _stop(result)
            raise KeyboardInterrupt from None
        raise RunFailed(f"run {paths.run_id}: the pipeline failed, nothing "
                        f"was published: {type(error).__name__}: "
                        f"{fs.error_line(error)}") from error


def _stop(result) -> None:
    """After Ctrl-C: cancels the job (runners that run it elsewhere: Prism,
    portable, Dataflow) and stops Beam's state samplers still running in
    this process (a bundle cut short leaves its sampler's thread, which
    is not a daemon, running: the process would never exit)."""
    from apache_beam.runners.worker import statesampler

    if result is not None:
        with contextlib.suppress(Exception):
            result.cancel()
    for thread in threading.enumerate():
        sampler = getattr(getattr(thread, "_target", None), "__self__", None)
        if isinstance(sampler, statesampler.StateSampler):
            with contextlib.suppress(Exception):  # e.g. stopped meanwhile
                sampler.stop()


def _interrupted(error: BaseException) -> bool:
    """Whether ``error`` is Beam's wrapping of a Ctrl-C (or SIGTERM) that
    arrived while a DoFn ran in this process."""
    seen = 0
    while error is not None and seen < 20:
        if isinstance(error, KeyboardInterrupt):
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


def _counts(paths: outputs.RunOutputs, staged: dict, *,
            retries: bool) -> dict:
    """The run's counts: ``matched`` from the match step's own count (not
    from what was written), the others from the staged files (``retried``
    too, with ``retries``); raises RunFailed when they cannot be
    established or do not add up."""
    predicted = outputs.count_rows(staged[outputs.PREDICTIONS_DIR])
    skipped = outputs.count_rows(staged[outputs.SKIPPED_DIR])
    errors = outputs.read_table(staged[outputs.ERRORS_DIR], ["stage"])
    by_stage = dict(collections.Counter(errors.column("stage").to_pylist()))
    failed = errors.num_rows
    matched = paths.matched_count()
    problem = None
    if matched is None:
        problem = ("the runner did not deliver the count of matched files, "
                   "so the counts cannot be established")
    elif matched != predicted + failed + skipped:
        problem = (f"{matched} files matched but {predicted} predicted + "
                   f"{failed} failed + {skipped} skipped = "
                   f"{predicted + failed + skipped}")
    if problem:
        raise RunFailed(f"run {paths.run_id}: {problem}; nothing was "
                        f"published")
    counts = {"matched": matched, "predicted": predicted, "failed": failed,
              "skipped": skipped, "failed_by_stage": by_stage,
              "skipped_by_reason": {"done": skipped} if skipped else {}}
    if retries:
        retried = count_retried(staged[outputs.LEDGER_DIR])
        counts.update(retried=sum(retried.values()), retried_by_stage=retried)
    return counts


# The run summary warns when more than this share of the predictions is
# below --min-confidence (or, without it, below LOW_CONFIDENCE). Images a
# model was made for are far above it (36 sample digits: all above 0.97);
# photos given to the digits model mostly below (24 noise, flat and
# gradient images: 19 below 0.9, only 5 below 0.5).
LOW_CONFIDENCE, LOW_CONFIDENCE_SHARE = 0.9, 0.5


def _low_confidence(staged: dict, min_confidence: float) -> dict:
    """How many prediction rows are below ``min_confidence`` (or, when it is
    0, below LOW_CONFIDENCE), from the staged confidence column alone."""
    import pyarrow.compute as pc

    threshold = min_confidence or LOW_CONFIDENCE
    table = outputs.read_table(staged[outputs.PREDICTIONS_DIR],
                               ["confidence"])
    below = 0
    if table is not None and table.num_rows:
        below = pc.sum(pc.less(table.column("confidence"),
                               threshold)).as_py() or 0
    return {"threshold": threshold, "rows": below}


def _publish(paths: outputs.RunOutputs, staged: dict, manifest: dict, *,
             overwrite: bool) -> None:
    """Publishes the run (Ctrl-C and SIGTERM are held back meanwhile:
    ``run_classify``); a kill or a write error part way is completed (or
    discarded, if the record was not written) by the next run on the
    output."""
    later = (f"the next run on {paths.output} completes it (or discards it, "
             f"if it had not started)")
    try:
        paths.publish(staged, manifest, overwrite=overwrite)
    except Exception as error:
        raise RunFailed(f"run {paths.run_id}: publishing failed "
                        f"({type(error).__name__}: {fs.error_line(error)}); "
                        f"{later}") from error


def _summary(manifest: dict, config: ClassifyConfig, log) -> None:
    counts, seconds = manifest["counts"], manifest["seconds"]
    matched, skipped = counts["matched"], counts["skipped"]
    by_stage = counts["failed_by_stage"]
    rate = (matched - skipped) / seconds if seconds > 0 else 0.0
    wall = manifest["wall_seconds"]
    print(f"imgclass: run {manifest['run_id']} done in {wall:.1f}s "
          f"(start-up {manifest['startup_seconds']:.1f}s, pipeline "
          f"{seconds:.1f}s): {matched} matched, {counts['predicted']} predicted, "
          f"{counts['failed']} failed"
          + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(by_stage.items()))})"
             if by_stage else "")
          + (f", {skipped} skipped (done before), {counts['retried']} "
             f"retried" if config.skip_done else "")
          + f"; {rate:.{0 if rate >= 10 else 1}f} images/s; output "
            f"{config.output}", file=log)
    low, predicted = manifest["low_confidence"], counts["predicted"]
    if predicted and low["rows"] > LOW_CONFIDENCE_SHARE * predicted:
        print(f"imgclass: warning: {low['rows']} of {predicted} predictions "
              f"({100 * low['rows'] / predicted:.0f}%) have a confidence "
              f"below {low['threshold']:g}: are these the images model "
              f"{manifest['model']['name']}@{manifest['model']['version']} "
              f"was made for? (e.g. photos given to a digits model)",
              file=log)


def summary(manifest: dict) -> dict:
    """The run in one small JSON object (``--summary-json``)."""
    return {key: manifest[key] for key in (
        "run_id", "output", "model", "counts", "seconds", "startup_seconds",
        "wall_seconds", "low_confidence", "started_at", "finished_at")}


def _build(pipeline, config: ClassifyConfig, stored, patterns, paths, *,
           progress_folder: Optional[str] = None) -> None:
    """The pipeline: match, [skip done], classify, write four tables; with
    a ``progress_folder``, also the count of files to classify, for
    :class:`pipeline.progress.Monitor`."""
    from model_store.store import looks_like_path

    listed, counted = _match(pipeline, config, patterns, paths)
    matched = listed.files
    if config.skip_done:
        matched = _skip_done(matched, config, stored, paths)
    batches = matched | "BatchFiles" >> BatchFiles(config.batch_size)
    if progress_folder:
        batches = _after_counts(batches, matched, counted, paths)
    _ = (batches
         | "LedgerRows" >> beam.Map(
             ledger_table, model_name=stored.name,
             model_version=str(stored.version), run_id=paths.run_id)
         | "WriteLedger" >> WriteTables(
             paths.staging_prefix(outputs.LEDGER_DIR), schema.LEDGER))
    results = batches | "Classify" >> ClassifyBatches(
        stored.location if looks_like_path(config.model_ref) else stored.ref,
        store=config.store, top_k=config.top_k, batch_size=config.batch_size,
        max_pixels=config.max_pixels, max_file_bytes=config.max_file_bytes,
        run_id=paths.run_id, loaded=stored,
        min_confidence=config.min_confidence,
        embeddings=config.emit_embeddings, progress_folder=progress_folder)
    _ = results["predictions"] | "WritePredictions" >> WriteTables(
        paths.staging_prefix(outputs.PREDICTIONS_DIR),
        schema.predictions_schema(config.emit_embeddings),
        compliant_lists=config.table_format != tables.DEFAULT_FORMAT)
    _ = ((listed[ERRORS_TAG], results["errors"])
         | "AllErrors" >> beam.Flatten()
         | "WriteErrors" >> WriteRows(
             paths.staging_prefix(outputs.ERRORS_DIR), schema.ERRORS))


def _match(pipeline, config: ClassifyConfig, patterns, paths):
    """Lists the files; ``(MatchFiles' outputs, the count of matched files
    written to staging)``."""
    listed = (pipeline
              | "Patterns" >> beam.Create(patterns)
              | "MatchFiles" >> MatchFiles(
                  exclude=inputs.excluded(config.output),
                  settle_seconds=config.settle, listed_at=config.listed_at,
                  settled=config.settled_files, run_id=paths.run_id))
    # Counted where they are matched (listing errors included), not from
    # what is written, so a runner that loses rows cannot hide it.
    counted = ((listed.files, listed[ERRORS_TAG])
               | "Listed" >> beam.Flatten()
               | "CountMatched" >> beam.combiners.Count.Globally()
               | "WriteMatchedCount" >> beam.Map(outputs.write_count,
                                                 paths.matched_count_path))
    return listed, counted


def _skip_done_by(config: ClassifyConfig) -> str:
    return config.skip_done_by or DEFAULT_SKIP_BY


def _skip_done(matched, config: ClassifyConfig, stored, paths):
    """The files no earlier run did; the others are written as skipped."""
    parts = matched | "SkipDone" >> SkipDone(
        outputs.ledger_files(config.output), model_name=stored.name,
        model_version=str(stored.version), run_id=paths.run_id,
        by=_skip_done_by(config), max_file_bytes=config.max_file_bytes,
        error_files=outputs.error_files(config.output),
        retry_errors=config.retry_errors)
    _ = parts[SKIPPED_TAG] | "WriteSkipped" >> WriteRows(
        paths.staging_prefix(outputs.SKIPPED_DIR), schema.SKIPPED)
    return parts[NEW]


def _after_counts(batches, matched, counted, paths):
    """``batches``, released once the count of files to classify and the
    count of matched files are written (progress lines have their total)."""
    todo = (matched
            | "CountToClassify" >> beam.combiners.Count.Globally()
            | "WriteToClassifyCount" >> beam.Map(
                outputs.write_count, paths.todo_count_path,
                key="to_classify"))
    # Side inputs: matching must end before the batches' reshuffle anyway.
    return batches | "AfterCounts" >> beam.Map(
        _after, beam.pvalue.AsList(counted), beam.pvalue.AsList(todo))


def _after(batch, *_written):
    """A batch, once the side inputs ``_written`` exist."""
    return batch


def _metrics(result) -> dict:
    """Counters and distributions of the ``imgclass`` namespace."""
    try:
        query = result.metrics().query(
            MetricsFilter().with_namespace(METRICS_NAMESPACE))
    except Exception:  # noqa: BLE001 - a runner without metrics support
        return {}
    found = {}
    for counter in query.get("counters", []):
        value = counter.committed if counter.committed is not None \
            else counter.attempted
        name = counter.key.metric.name
        found[name] = found.get(name, 0) + int(value or 0)
    for dist in query.get("distributions", []):
        value = dist.committed or dist.attempted
        if value is not None and value.count:
            found[dist.key.metric.name] = {
                "count": value.count, "min": value.min, "max": value.max,
                "mean": round(value.sum / value.count, 3)}
    return found
