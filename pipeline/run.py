"""Assembling and running the classification pipeline."""

from __future__ import annotations

import dataclasses
import datetime
import re
import os
import sys
import time
import uuid
from typing import Optional, Sequence

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import (DirectOptions,
                                                  PipelineOptions,
                                                  StandardOptions)

from model_store.errors import ConfigError, ImgclassError
from model_store.images import DEFAULT_MAX_PIXELS
from pipeline import outputs
from transforms import schema
from transforms.classify import (DEFAULT_BATCH_SIZE, DEFAULT_MODEL,
                                 DEFAULT_TOP_K, ClassifyBatches)
from transforms.decode import METRICS_NAMESPACE
from transforms.read import BatchFiles, MatchFiles
from transforms.skip import NEW, SKIPPED, SkipDone, ledger_table
from transforms.write import WriteRows, WriteTables

PARTITIONS = ("none", "run_date")
# Names under which users ask for Beam's local runner. Beam 2.77's DirectRunner
# first tries to download and start the Prism runner; this project runs the
# in-process FnApiRunner instead, which never touches the network.
_LOCAL_RUNNERS = {None, "DirectRunner", "direct", "directrunner",
                  "SwitchingDirectRunner", "FnApiRunner"}


class RunFailed(ImgclassError, RuntimeError):
    """The pipeline ran but its result is not trustworthy (exit code 1)."""


@dataclasses.dataclass
class ClassifyConfig:
    """What ``imgclass classify`` was asked to do."""
    inputs: Sequence[str]
    output: str
    model: str = DEFAULT_MODEL
    store: Optional[str] = None
    top_k: int = DEFAULT_TOP_K
    batch_size: int = DEFAULT_BATCH_SIZE
    max_pixels: int = DEFAULT_MAX_PIXELS
    min_confidence: float = 0.0
    partition_by: str = "none"
    run_date: Optional[str] = None
    overwrite: bool = False
    skip_done: bool = False
    skip_done_by: str = "mtime"
    beam_args: Sequence[str] = ()
    # Used by ``imgclass watch`` (pipeline/watch.py); unset for ``classify``.
    # An explicit Hive partition path, e.g. "date=2026-11-26/hour=13"
    # (overrides partition_by); leave out files modified less than
    # ``settle`` seconds ago or named as in progress (transforms.read.
    # is_settled); the time window recorded in the manifest.
    partition: Optional[str] = None
    settle: Optional[float] = None
    window: Optional[dict] = None


def new_run_id(now: datetime.datetime) -> str:
    return f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def pipeline_options(beam_args: Sequence[str]) -> PipelineOptions:
    """Beam options from the command line; unknown ones are a mistake."""
    beam_args = list(beam_args)
    if not any(a.startswith("--default_sdk_harness_log_level")
               for a in beam_args):
        # Worker processes log every gRPC channel at INFO; keep the terminal
        # for warnings, progress and the summary.
        beam_args.append("--default_sdk_harness_log_level=WARNING")
    options = PipelineOptions(beam_args)
    known = options.get_all_options(retain_unknown_options=False)
    every = options.get_all_options(retain_unknown_options=True)
    unknown = sorted(set(every) - set(known))
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join('--' + u for u in unknown)}"
                          f"; see 'imgclass classify --help' and Beam's "
                          f"pipeline options")
    direct = options.view_as(DirectOptions)
    if direct.direct_num_workers is not None and direct.direct_num_workers < 0:
        raise ConfigError(f"--direct_num_workers must be >= 0, got "
                          f"{direct.direct_num_workers}")
    return options


def offline_options(*beam_args: str) -> PipelineOptions:
    """Pipeline options for pipelines of your own that never download
    anything: unless another runner is asked for, Beam's in-process
    ``FnApiRunner`` (which honours ``--direct_running_mode`` and
    ``--direct_num_workers``) instead of the ``DirectRunner``, which first
    tries to download Prism. Unknown options are refused, as on the command
    line."""
    options = pipeline_options(beam_args)
    standard = options.view_as(StandardOptions)
    if standard.runner in _LOCAL_RUNNERS:
        standard.runner = "FnApiRunner"
    return options


def make_runner(options: PipelineOptions):
    """The runner to use: the in-process FnApiRunner for local runs (it
    honours --direct_running_mode and --direct_num_workers), else Beam's
    runner of that name."""
    name = options.view_as(StandardOptions).runner
    if name not in _LOCAL_RUNNERS:
        return None
    if options.view_as(StandardOptions).streaming:
        raise ConfigError("--streaming is not supported by the local runner; "
                          "use 'imgclass watch' for continuous runs")
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import \
        JobServiceHandle

    direct = options.view_as(DirectOptions)
    if direct.direct_running_mode == "multi_processing":
        # Worker processes inherit this: N workers with one OpenMP thread
        # per core each would oversubscribe the cores (bench/README.md).
        workers = direct.direct_num_workers or os.cpu_count() or 1
        os.environ.setdefault("OMP_NUM_THREADS",
                              str(max(1, (os.cpu_count() or 1) // workers)))
        # Theano keys one compiled module by a str hash; with a fixed seed the
        # workers find it in the cache instead of compiling it, each in turn,
        # under Theano's machine-wide lock (bench/README.md).
        os.environ.setdefault("PYTHONHASHSEED", "0")
    # As Beam's DirectRunner does when it picks the FnApiRunner: give the
    # workers the pipeline options.
    encoded = JobServiceHandle.encode_pipeline_options(
        options.get_all_options())
    provision = fn_runner.ExtendedProvisionInfo(
        beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
    return fn_runner.FnApiRunner(provision_info=provision)


def validate(config: ClassifyConfig) -> tuple[list[str], Optional[str]]:
    """Every check that can fail before work starts: ``(patterns,
    partition)``."""
    if not config.inputs:
        raise ConfigError("give at least one --input")
    if config.partition_by not in PARTITIONS:
        raise ConfigError(f"--partition-by must be one of "
                          f"{', '.join(PARTITIONS)}, got "
                          f"{config.partition_by!r}")
    if config.run_date is not None:
        try:
            datetime.date.fromisoformat(config.run_date)
        except ValueError:
            raise ConfigError(f"--run-date must be YYYY-MM-DD, got "
                              f"{config.run_date!r}") from None
        if len(config.run_date) != 10:
            raise ConfigError(f"--run-date must be YYYY-MM-DD, got "
                              f"{config.run_date!r}")
    patterns = [outputs.input_pattern(p) for p in config.inputs]
    if config.skip_done_by != "mtime" and not config.skip_done:
        raise ConfigError("--skip-done-by only applies with --skip-done")
    if config.overwrite and config.skip_done:
        raise ConfigError("--overwrite and --skip-done contradict each other: "
                          "--skip-done adds to the earlier runs that "
                          "--overwrite would remove")
    outputs.check_output(config.output, overwrite=config.overwrite,
                         incremental=config.skip_done)
    if config.settle is not None and not config.settle >= 0:
        raise ConfigError(f"settle must be >= 0 seconds, got "
                          f"{config.settle!r}")
    if config.partition is not None:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*=[^/=]+"
                            r"(/[A-Za-z][A-Za-z0-9_]*=[^/=]+)*",
                            config.partition):
            raise ConfigError(f"partition must be key=value[/key=value...], "
                              f"got {config.partition!r}")
        return patterns, config.partition
    partition = None
    if config.partition_by == "run_date":
        run_date = config.run_date or datetime.datetime.now(
            datetime.timezone.utc).date().isoformat()
        partition = f"run_date={run_date}"
    return patterns, partition


def run_classify(config: ClassifyConfig, *, log=None) -> dict:
    """Runs the whole job; returns the manifest.

    Args:
        log: where progress lines go; default: ``sys.stderr`` as it is at
            the call (not at import, so that a replaced stream is followed).

    Raises:
        ConfigError (and other ImgclassError): a mistake found before work.
        RunFailed: the pipeline failed, or the counts do not add up.
    """
    from model_store.store import load_model

    log = sys.stderr if log is None else log

    options = pipeline_options(config.beam_args)
    runner = make_runner(options)
    patterns, partition = validate(config)
    model = load_model(config.model, root=config.store)
    recovered = outputs.recover(config.output)
    if recovered:
        print(f"imgclass: finished publishing interrupted run(s) "
              f"{', '.join(recovered)}", file=log)
    started = datetime.datetime.now(datetime.timezone.utc)
    run_id = new_run_id(started)
    paths = outputs.RunOutputs(config.output, run_id, partition)
    pipeline = beam.Pipeline(runner=runner, options=options)
    _build(pipeline, config, model, patterns, paths)
    runner_name = type(runner).__name__ if runner else options.view_as(
        StandardOptions).runner
    print(f"imgclass: run {run_id}: classifying {', '.join(config.inputs)} "
          f"with {model.ref} on {runner_name}", file=log)
    clock = time.monotonic()
    try:
        result = pipeline.run()
        result.wait_until_finish()
    except Exception as error:
        paths.discard_staging()
        raise RunFailed(f"run {run_id}: the pipeline failed, nothing was "
                        f"published: {type(error).__name__}: "
                        f"{_first_line(error)}") from error
    except BaseException:  # Ctrl-C: leave nothing half-visible either
        paths.discard_staging()
        raise
    seconds = time.monotonic() - clock

    staged = paths.staged_files()
    predicted = outputs.count_rows(staged[outputs.PREDICTIONS_DIR])
    skipped = outputs.count_rows(staged[outputs.SKIPPED_DIR])
    errors = outputs.read_table(staged[outputs.ERRORS_DIR], ["stage"])
    by_stage = {}
    for stage in errors.column("stage").to_pylist():
        by_stage[stage] = by_stage.get(stage, 0) + 1
    failed = errors.num_rows
    metrics = _metrics(result)
    matched = metrics.get("files_matched", predicted + failed + skipped)
    manifest = {
        "run_id": run_id,
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.datetime.now(
            datetime.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(seconds, 3),
        "model": {"name": model.name, "version": str(model.version),
                  "weights_sha256": model.weights_sha256,
                  "location": model.location},
        "inputs": list(config.inputs),
        "patterns": patterns,
        "output": config.output,
        "partition": partition,
        "counts": {"matched": matched, "predicted": predicted,
                   "failed": failed, "skipped": skipped,
                   "failed_by_stage": by_stage,
                   "skipped_by_reason": {"done": skipped} if skipped else {}},
        "skip_done": config.skip_done,
        "skip_done_by": config.skip_done_by if config.skip_done else None,
        **({"window": config.window} if config.window is not None else {}),
        "metrics": metrics,
        "runner": runner_name,
        "options": options.get_all_options(drop_default=True),
        "settings": {"top_k": config.top_k, "batch_size": config.batch_size,
                     "max_pixels": config.max_pixels,
                     "min_confidence": config.min_confidence},
        "files": paths.destinations(staged),
    }
    if matched != predicted + failed + skipped:
        paths.discard_staging()
        raise RunFailed(
            f"run {run_id}: {matched} files matched but {predicted} "
            f"predicted + {failed} failed + {skipped} skipped = "
            f"{predicted + failed + skipped}; nothing was published")
    paths.publish(staged, manifest, overwrite=config.overwrite)
    rate = (matched - skipped) / seconds if seconds > 0 else 0.0
    print(f"imgclass: run {run_id} done in {seconds:.1f}s: {matched} matched, "
          f"{predicted} predicted, {failed} failed"
          + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(by_stage.items()))})"
             if by_stage else "")
          + (f", {skipped} skipped (done before)" if config.skip_done else "")
          + f"; {rate:.0f} images/s; output {config.output}", file=log)
    return manifest


def summary(manifest: dict) -> dict:
    """The run in one small JSON object (``--summary-json``)."""
    return {key: manifest[key] for key in (
        "run_id", "output", "model", "counts", "seconds", "started_at",
        "finished_at")}


def _build(pipeline, config: ClassifyConfig, model, patterns, paths) -> None:
    """The pipeline: match, [skip done], classify, write four tables."""
    matched = (pipeline
               | "Patterns" >> beam.Create(patterns)
               | "MatchFiles" >> MatchFiles(settle_seconds=config.settle))
    if config.skip_done:
        parts = matched | "SkipDone" >> SkipDone(
            outputs.ledger_files(config.output), model_name=model.name,
            model_version=str(model.version), run_id=paths.run_id,
            by=config.skip_done_by)
        matched = parts[NEW]
        _ = parts[SKIPPED] | "WriteSkipped" >> WriteRows(
            paths.staging_prefix(outputs.SKIPPED_DIR), schema.SKIPPED)
    batches = matched | "BatchFiles" >> BatchFiles(config.batch_size)
    _ = (batches
         | "LedgerRows" >> beam.Map(
             ledger_table, model_name=model.name,
             model_version=str(model.version), run_id=paths.run_id)
         | "WriteLedger" >> WriteTables(
             paths.staging_prefix(outputs.LEDGER_DIR), schema.LEDGER))
    results = batches | "Classify" >> ClassifyBatches(
        model.location if "/" in config.model else model.ref,
        store=config.store, top_k=config.top_k, batch_size=config.batch_size,
        max_pixels=config.max_pixels, run_id=paths.run_id, loaded=model,
        min_confidence=config.min_confidence)
    _ = results["predictions"] | "WritePredictions" >> WriteTables(
        paths.staging_prefix(outputs.PREDICTIONS_DIR), schema.PREDICTIONS)
    _ = results["errors"] | "WriteErrors" >> WriteRows(
        paths.staging_prefix(outputs.ERRORS_DIR), schema.ERRORS)


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    # Beam wraps worker errors in long tracebacks; the last line is the cause.
    return lines[-1].strip()[:500] if lines else ""


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
