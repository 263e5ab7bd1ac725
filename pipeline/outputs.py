"""The output folder of a run: checks before the run, the lock while it
runs, publishing after it.

Layout of ``DIR`` (the output contract, documented in the README)::

    DIR/predictions/[run_date=YYYY-MM-DD/]part-<run_id>-SSSSS-of-NNNNN.parquet
    DIR/errors/[run_date=YYYY-MM-DD/]part-<run_id>-SSSSS-of-NNNNN.parquet
    DIR/_manifest.json
    DIR/_layout.json               partition layout and table format
    DIR/_SUCCESS                   written last, only when the run finished

    DIR/_runs/<run_id>.json        every published run's manifest
    DIR/_ledger/                   files each run claimed (for --skip-done)
    DIR/_skipped/                  files --skip-done runs did not redo
    DIR/_lock                      while a run or a watcher uses the output
    DIR/_windows/                  a watcher's windows (pipeline/watch.py)

While the pipeline runs, everything is written below ``DIR/_staging/<run_id>``
(Hive, Spark, Trino, DuckDB globs and Polars skip names starting with ``_``).
Only after the pipeline succeeded is the run published (:class:`RunOutputs`):
a run is published whole or not at all, and while ``_SUCCESS`` exists the
Parquet files below ``predictions/`` and ``errors/`` are exactly those the
manifests in ``_runs/`` list.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime
import hashlib
import io
import json
import os
import socket
import threading
import time
import uuid
from typing import Callable, Iterable, Optional

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from model_store import fs
from model_store.errors import ConfigError, LostFileError
from model_store.fs import check_filesystem, error_line, is_uri, join
from transforms import schema
from transforms.files import GLOB_CHARS

PREDICTIONS_DIR, ERRORS_DIR = "predictions", "errors"
LEDGER_DIR, SKIPPED_DIR, RUNS_DIR = "_ledger", "_skipped", "_runs"
MANIFEST, SUCCESS, STAGING = "_manifest.json", "_SUCCESS", "_staging"
PUBLISH, LOCK, MATCHED = "_publish.json", "_lock", "_matched.json"
TO_CLASSIFY = "_to_classify.json"
WINDOWS_DIR = "_windows"  # imgclass watch's record of each window
# A run refreshes its lock every LOCK_REFRESH_SECONDS; a lock is taken over
# once its owner's process is gone (same host) or it was not refreshed for
# LOCK_STALE_SECONDS (a killed run on another host or in another container);
# one that cannot be read (its owner died creating it) once a minute old.
LOCK_REFRESH_SECONDS, LOCK_STALE_SECONDS, TORN_LOCK_SECONDS = 60, 600, 60
SCHEMAS = {PREDICTIONS_DIR: schema.PREDICTIONS, ERRORS_DIR: schema.ERRORS,
           LEDGER_DIR: schema.LEDGER, SKIPPED_DIR: schema.SKIPPED}
# The tables readers query are partitioned; the bookkeeping is not.
PARTITIONED = (PREDICTIONS_DIR, ERRORS_DIR)


def holds_earlier_run(output: str) -> bool:
    """Whether ``output`` has a manifest, a success marker or results."""
    for name in (MANIFEST, SUCCESS):
        if FileSystems.exists(join(output, name)):
            return True
    for name in (PREDICTIONS_DIR, ERRORS_DIR):
        match = FileSystems.match([join(output, name, "**")])[0]
        if match.metadata_list:
            return True
    return False


def holds_published_run(output: str) -> bool:
    """Whether a run was published in ``output`` (its manifest is there):
    unlike :func:`holds_earlier_run`, not for files alone (a publish
    abandoned by moving its staging folder away leaves the files it had
    moved)."""
    return FileSystems.exists(join(output, MANIFEST)) or bool(
        fs.match(join(output, RUNS_DIR, "*.json")))


def check_output(output: str) -> None:
    """Fails before any work if ``output`` cannot be written."""
    check_filesystem(output, "--output")
    _check_output_name(output)
    if not is_uri(output):
        if os.path.exists(output) and not os.path.isdir(output):
            raise ConfigError(f"output {output!r} is a file; give a folder")
        try:
            os.makedirs(output, exist_ok=True)
        except OSError as error:
            _check_links(output)
            raise ConfigError(f"output {output!r} cannot be created: "
                              f"{error.strerror}") from None
    probe = join(output, f"_write_test_{uuid.uuid4().hex}")
    try:
        with FileSystems.create(probe) as handle:
            handle.write(b"ok")
        _remove_probe(probe)
    except Exception as error:  # any filesystem's refusal means unwritable
        with contextlib.suppress(Exception):  # created, then not written
            _remove_probe(probe)
        message = getattr(error, "strerror", None) or error_line(error)
        raise ConfigError(f"output {output!r} cannot be written: "
                          f"{message}") from None


def _check_links(output: str) -> None:
    """ConfigError (one line) when ``output``, or a folder above it, is a
    symbolic link that cannot be followed (its target does not exist: an
    unmounted disk; or it loops)."""
    path = os.path.abspath(output)
    while os.path.dirname(path) != path:
        reason = fs.broken_link(path)
        if reason:
            raise ConfigError(f"output {output!r} cannot be created: "
                              f"{fs.one_line(fs.printable(path))} is a "
                              f"symbolic link that {reason}")
        path = os.path.dirname(path)


def check_outside_models(output: str, *, store: str | None,
                         model_ref: str) -> None:
    """Refuses an ``output`` in the model store (``store``, as
    :func:`model_store.store.store_root` resolves it) or, for a model given
    by its version folder, in the folder of that model's versions: the
    store would read the run's folders as models or versions (``models
    verify`` fails, a worker refuses the model). Before the output is
    locked or made, so that nothing is written there."""
    from model_store.store import looks_like_path, store_root

    folders = [store_root(store)]
    # A mistyped model folder: loading the model names it, and its parent
    # holds no models.
    if looks_like_path(model_ref) and not _local_path_missing(model_ref):
        folders.append(fs.split(model_ref.rstrip("/") if is_uri(model_ref)
                                else os.path.abspath(model_ref))[0])
    for folder in folders:
        if fs.lies_in(output, folder):
            raise ConfigError(
                f"output {fs.one_line(fs.printable(output))!r} lies in "
                f"{fs.shown(folder)}, which holds models: the store would "
                f"read its folders as models or versions; give an --output "
                f"outside it")


def _local_path_missing(model_ref: str) -> bool:
    """A model path that names no local file or folder (a typo)."""
    return not is_uri(model_ref) and not os.path.exists(model_ref)


def _check_output_name(output: str) -> None:
    """Refuses a path Beam's Parquet writers cannot take: one holding ``*``,
    ``?`` or ``[`` (they match the files they wrote as a pattern, and find
    none) or that is not UTF-8 (they carry it as UTF-8 text)."""
    shown = fs.one_line(fs.printable(output))
    glob = sorted(set(output) & set(GLOB_CHARS))
    if glob:
        raise ConfigError(f"output {shown!r} holds {' and '.join(glob)}, "
                          f"which Beam's file writers read as a pattern; "
                          f"give a folder whose path holds no *, ? or [")
    try:
        output.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"output {shown!r} is not a UTF-8 name (its bad "
                          f"bytes shown as %XX), which Beam's file writers "
                          f"cannot carry; give a folder with a UTF-8 "
                          f"name") from None


def _remove_probe(probe: str) -> None:
    """Removes exactly ``probe`` (Beam's delete matches a local path as a
    pattern)."""
    if is_uri(probe):
        FileSystems.delete([probe])
    else:
        os.remove(probe)


@contextlib.contextmanager
def removed_unless_used(output: str):
    """The block may create the local folder ``output`` (and its missing
    parents, e.g. :func:`check_output`); when the block raises (a refused
    configuration, a failed or interrupted run), those it created are
    removed again if they are empty, so that a refused run leaves no folder
    behind. Object stores have no folders to remove."""
    missing = []
    if not is_uri(output):
        folder = os.path.abspath(output)
        while not os.path.lexists(folder):
            missing.append(folder)  # deepest first
            folder = os.path.dirname(folder)
    try:
        yield
    except BaseException:
        for folder in missing:
            try:
                os.rmdir(folder)  # only if empty
            except OSError:
                break
        raise


def check_earlier_run(output: str, *, overwrite: bool, incremental: bool,
                      overwritable: bool = True) -> None:
    """Fails if ``output`` holds a run and neither ``overwrite`` nor
    ``incremental`` is set; call it after :func:`recover`, under the lock.
    ``overwritable``: whether to suggest --overwrite (not for a table)."""
    if not (overwrite or incremental) and holds_earlier_run(output):
        ways = ["choose another folder", "pass --skip-done to add to it"]
        if overwritable:
            ways.append("--overwrite to replace it")
        raise ConfigError(f"output {output!r} holds an earlier run; "
                          f"{', '.join(ways[:-1])}"
                          f"{', or ' if len(ways) > 2 else ' or '}{ways[-1]}")


@contextlib.contextmanager
def locked(output: str, owner_id: str, *,
           clock: Callable[[], float] = time.time,
           refresh_seconds: float = LOCK_REFRESH_SECONDS, log=None):
    """Holds ``DIR/_lock`` (owner id, host, pid, creation and refresh
    times; the block gets this dict) while the block runs: a second run or
    watcher on ``output`` stops with one line.

    The lock is created exclusively (``O_EXCL`` on local disks; on object
    stores written, then read back, which narrows but does not close the
    race: keep the schedules' ``flock``) and refreshed by a thread every
    ``refresh_seconds``. It is stale, and taken over, when its owner's
    process is gone (same host), when it was not refreshed for
    ``LOCK_STALE_SECONDS``, or when it cannot be read and is older than
    ``TORN_LOCK_SECONDS``. It is removed on every way out of the block; a
    SIGKILL leaves it, and a later run takes it over. A lock that cannot
    be removed (an object store's 503) is said in one warning line on
    ``log``: the block's outcome stands.
    """
    path = join(output, LOCK)
    now = _iso(clock())
    owner = {"owner": owner_id, "host": socket.gethostname(),
             "pid": os.getpid(), "created_at": now, "refreshed_at": now}
    _acquire(path, fs.json_bytes(owner), output, clock)
    stop = threading.Event()
    keeper = threading.Thread(target=_keep_fresh, daemon=True,
                              args=(path, owner, clock, stop,
                                    refresh_seconds))
    keeper.start()
    try:
        yield owner
    finally:
        stop.set()
        keeper.join()
        _release(path, owner, log)


def _release(path: str, owner: dict, log) -> None:
    try:
        if _same_owner(_read_lock(path)[0], owner):
            FileSystems.delete([path])
    except Exception as error:  # noqa: BLE001 - the run's outcome stands
        if log is not None:
            print(f"imgclass: warning: could not remove the lock {path} "
                  f"({type(error).__name__}: {error_line(error)}); a run "
                  f"on this host takes it over, one on another host waits "
                  f"{LOCK_STALE_SECONDS // 60} minutes for it to go stale, "
                  f"unless you delete it", file=log)


def _keep_fresh(path, owner, clock, stop, seconds) -> None:
    while not stop.wait(seconds):
        with contextlib.suppress(Exception):
            refresh_lock(path, owner, clock)


def refresh_lock(path: str, owner: dict, clock) -> bool:
    """Rewrites ``owner``'s lock at ``path`` with the time now; False (and
    nothing written) when the lock is no longer ``owner``'s."""
    if not _same_owner(_read_lock(path)[0], owner):
        return False
    _write_file(path, fs.json_bytes(
        dict(owner, refreshed_at=_iso(clock()))))
    return True


def _same_owner(held: Optional[dict], owner: dict) -> bool:
    return held is not None and all(held.get(k) == owner[k]
                                    for k in ("owner", "host", "pid"))


def _acquire(path: str, data: bytes, output: str, clock) -> None:
    for _ in range(5):
        if _create_exclusive(path, data):
            return
        held, raw, modified = _read_lock(path)
        if raw is None:
            continue  # released meanwhile
        if not _lock_is_stale(held, modified, clock()):
            who = (f"run {held['owner']} (pid {held['pid']} on "
                   f"{held['host']}, since {held['created_at']})" if held
                   else "a run whose lock cannot be read")
            raise ConfigError(f"output {output!r} is in use by {who}; wait "
                              f"for it to finish, or delete {path} if that "
                              f"run is gone")
        _take_over(path, raw)
    raise ConfigError(f"output {output!r}: could not take its lock {path}; "
                      f"another run is starting on it")


def _create_exclusive(path: str, data: bytes) -> bool:
    if is_uri(path):
        if FileSystems.exists(path):
            return False
        fs.create(path, data)
        with FileSystems.open(path) as handle:
            return handle.read() == data
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return True


def _read_lock(path: str):
    """``(owner dict or None if unreadable, raw bytes or None if absent,
    modification time)``."""
    try:
        raw = _lock_bytes(path)
        modified = (FileSystems.last_updated(path) if is_uri(path)
                    else os.stat(path).st_mtime)
    except Exception:  # noqa: BLE001 - gone meanwhile
        return None, None, None
    try:
        held = json.loads(raw)
        if not (isinstance(held, dict) and isinstance(held.get("pid"), int)
                and {"owner", "host", "created_at"} <= set(held)):
            held = None
    except ValueError:
        held = None
    return held, raw, modified


def _lock_bytes(path: str) -> bytes:
    """What the lock ``path`` holds; a FIFO, socket or folder there holds
    nothing readable (b"": a lock that cannot be read), and is never
    waited on."""
    try:
        return fs.read_bytes(path)
    except fs.NotRegularError:
        return b""


def _lock_is_stale(held: Optional[dict], modified: float, now: float) -> bool:
    if held is None:
        return now - modified > TORN_LOCK_SECONDS
    if held["host"] == socket.gethostname() and not _pid_alive(held["pid"]):
        return True
    try:
        refreshed = datetime.datetime.fromisoformat(
            held.get("refreshed_at") or held["created_at"]).timestamp()
    except (TypeError, ValueError):
        refreshed = modified
    return now - refreshed > LOCK_STALE_SECONDS


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    except (OSError, OverflowError, ValueError):
        return False
    return True


def _take_over(path: str, stale: bytes) -> None:
    """Removes the stale lock ``path``, unless another run replaced it
    meanwhile (then it is put back; on object stores, left: read again
    just before its delete, which narrows the race to those two calls)."""
    if is_uri(path):
        if _read_lock(path)[1] == stale:
            FileSystems.delete([path])
        return
    aside = f"{path}.stale-{uuid.uuid4().hex}"
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    if _lock_bytes(aside) != stale:
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)
    os.unlink(aside)


class RunOutputs:
    """Paths of one run, and publishing from staging to the output.

    Publishing is a roll-forward protocol. First the publish record (the
    moves, the earlier run's files to delete with ``--overwrite``, and the
    run's manifest, with its sha256) is written to
    ``_staging/<run_id>/_publish.json`` atomically; until it is, nothing
    visible has changed. Then :func:`_complete` removes ``_SUCCESS``,
    deletes (and removes the local folders that leaves empty), writes
    ``_layout.json`` (the run's layout and table format,
    ``pipeline/layout.py``), moves, writes ``_runs/<run_id>.json``, ``_manifest.json`` and
    ``_SUCCESS``, deletes the record (an error there is not ignored: a record
    left behind would be completed again after newer runs) and removes the
    staging folder. Each step can be done
    again, so if the process dies part way, the next run on the same output
    (:func:`recover`) completes it: a run is published whole or not at all,
    and an ``--overwrite`` never loses both runs.
    """

    def __init__(self, output: str, run_id: str, partition: str | None):
        self.output = output
        self.run_id = run_id
        self.partition = partition  # e.g. "run_date=2026-11-26", or None
        self.staging = join(output, STAGING, run_id)

    @property
    def matched_count_path(self) -> str:
        """Where the pipeline writes how many files it matched."""
        return join(self.staging, MATCHED)

    def matched_count(self) -> Optional[int]:
        """The count the pipeline wrote, or None if the runner lost it."""
        return _read_count(self.matched_count_path, "matched")

    @property
    def todo_count_path(self) -> str:
        """Where the pipeline writes how many files it is to classify (the
        matched ones, less listing errors and files done before)."""
        return join(self.staging, TO_CLASSIFY)

    def todo_count(self) -> Optional[int]:
        return _read_count(self.todo_count_path, "to_classify")

    def staging_prefix(self, kind: str) -> str:
        return join(self.staging, kind, f"part-{self.run_id}")

    def final_dir(self, kind: str) -> str:
        parts = [kind] + ([self.partition] if kind in PARTITIONED
                          and self.partition else [])
        return join(self.output, *parts)

    def staged_files(self) -> dict:
        """``{kind: [staged Parquet files]}``; the tables readers query get
        an empty file with the schema when they have no rows."""
        staged = {}
        for kind, table_schema in SCHEMAS.items():
            files = fs.match(join(self.staging, kind, "*.parquet"))
            if not files and kind in PARTITIONED:
                empty = join(self.staging, kind,
                             f"part-{self.run_id}-00000-of-00001.parquet")
                _write_empty(empty, table_schema)
                files = [empty]
            staged[kind] = files
        return staged

    def destinations(self, staged: dict) -> dict:
        return {kind: [join(self.final_dir(kind), fs.basename(p))
                       for p in files] for kind, files in staged.items()}

    def publish(self, staged: dict, manifest: dict, *,
                overwrite: bool) -> None:
        """Writes the publish record, then completes it; see the class
        docstring for what a crash leaves."""
        moves = [(src, dst) for kind in staged
                 for src, dst in zip(staged[kind],
                                     self.destinations(staged)[kind])]
        deletes = _published_files(self.output) if overwrite else []
        record = {"moves": moves, "deletes": deletes, "manifest": manifest}
        _write_file(join(self.staging, PUBLISH), _record_bytes(record))
        _complete(self.output, self.staging, record)

    def discard_staging(self) -> None:
        _remove_staging(self.output, self.staging)


def _published_files(output: str) -> list[str]:
    """Every file of the runs published in ``output`` (for --overwrite),
    a watcher's window markers included."""
    return [path for name in (*SCHEMAS, RUNS_DIR, WINDOWS_DIR)
            for path in fs.match(join(output, name, "**"))]


def _remove_emptied_folders(output: str, deleted: list[str]) -> None:
    """Removes the local folders below ``output`` that the ``deleted``
    files left empty (a watcher's ``date=/hour=`` partitions and
    ``_windows/``, after an --overwrite), deepest first: the output is
    then as a first run leaves it. A folder holding anything else stays;
    object stores have no folders."""
    if is_uri(output):
        return
    root, folders = os.path.abspath(output), set()
    for path in deleted:
        folder = os.path.dirname(os.path.abspath(path))
        while folder.startswith(root + os.sep):
            folders.add(folder)
            folder = os.path.dirname(folder)
    for folder in sorted(folders, key=len, reverse=True):
        with contextlib.suppress(OSError):  # not empty, or gone
            os.rmdir(folder)


def recover(output: str) -> list[str]:
    """Completes the publishing of runs that died while publishing, and
    removes the staging folders of runs that died before (or while writing
    their publish record); returns the recovered run ids.

    Call it before a new run on ``output``, holding its lock.
    """
    recovered = []
    for record_path in fs.match(join(output, STAGING, "*", PUBLISH)):
        record = _read_record(record_path)
        if record is None:
            continue  # never started publishing: its staging goes below
        staging = record_path[: -len(PUBLISH) - 1]
        _complete(output, staging, record)
        recovered.append(record["manifest"]["run_id"])
    _delete_quietly(join(output, STAGING))
    return recovered


def pending_publishes(output: str) -> list[str]:
    """The staging folders of runs whose publishing is to be completed."""
    return [path[: -len(PUBLISH) - 1]
            for path in fs.match(join(output, STAGING, "*", PUBLISH))]


def _complete(output: str, staging: str, record: dict) -> None:
    """Publishes a run whose record is durable. Every step can be redone:
    whatever is already deleted or moved is skipped."""
    from pipeline import layout  # it reads outputs' names

    manifest = record["manifest"]
    moves = _moves_left(record)  # before any step: a lost file stops it
    done = join(output, SUCCESS)
    for path in [done, *record["deletes"]]:
        if FileSystems.exists(path):
            _delete_file(path)
    _remove_emptied_folders(output, record["deletes"])
    # Before any of the run's files is visible, so that no published file
    # is ever in an output whose layout and format are not recorded.
    _write_file(join(output, layout.LAYOUT_FILE), layout.record_bytes(manifest))
    for src, dst in moves:
        folder = fs.split(dst)[0]
        if not is_uri(folder):
            os.makedirs(folder, exist_ok=True)
        _move([src], [dst])
    _commit_tables(manifest)
    body = fs.json_bytes(manifest)
    _write_file(join(output, RUNS_DIR, f"{manifest['run_id']}.json"), body)
    _write_file(join(output, MANIFEST), body)
    _write_file(done, b"")
    # Not quietly: a record left behind would be completed again by every
    # later recovery, after newer runs (their _manifest.json, _layout.json
    # rewritten to this run's; after an --overwrite, its files lost).
    _delete_file(join(staging, PUBLISH))
    _remove_staging(output, staging)


def _moves_left(record: dict) -> list:
    """The moves of ``record`` still to make: those whose source is still
    staged. A source that is gone was moved by the run that wrote the
    record or by an earlier recovery, so its destination must exist; when
    neither exists the file is lost (e.g. a record of an earlier release
    whose paths are relative to the folder that run started in), and
    LostFileError stops publishing before any step: the run is not
    recorded as published without the file, and its staging stays."""
    left = []
    for src, dst in record["moves"]:
        if FileSystems.exists(src):
            left.append((src, dst))
        elif not FileSystems.exists(dst):
            raise LostFileError(_lost(record["manifest"]["run_id"], src, dst))
    return left


def _lost(run_id: str, src: str, dst: str) -> str:
    where = "" if is_uri(src) or os.path.isabs(src) else (
        " (its record names it relative to the folder that run started "
        "in: run again from there)")
    return (f"run {run_id}: its file {fs.one_line(fs.printable(src))} is "
            f"neither staged nor published as "
            f"{fs.one_line(fs.printable(dst))}{where}")


def _record_bytes(record: dict) -> bytes:
    return fs.json_bytes({"sha256": _digest(record), "record": record})


def _read_record(path: str) -> Optional[dict]:
    """The publish record at ``path``; None if it is torn or altered (or
    gone). A store error reading it (an object store's 503) is raised:
    taken for "never started", the run's staging would be discarded with
    the run part published."""
    try:  # a FIFO is not waited on: NotRegularError, a torn record
        data = fs.read_bytes(path)
    except (FileNotFoundError, fs.NotRegularError):
        return None
    try:
        stored = json.loads(data)
        record = stored["record"]
        if stored["sha256"] != _digest(record) or not isinstance(
                record["manifest"]["run_id"], str):
            return None
        return record
    except Exception:  # noqa: BLE001 - any damage means "never started"
        return None


def _digest(record: dict) -> str:
    canonical = json.dumps(record, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _commit_tables(manifest: dict) -> None:
    """With ``--table-format delta|iceberg``, commits the moved files to
    the tables; idempotent by run id (``pipeline/tables.py``)."""
    if manifest.get("table"):
        from pipeline import tables
        tables.commit_run(tables.TableSpec.from_dict(manifest["table"]),
                          {kind: manifest["files"][kind]
                           for kind in PARTITIONED}, manifest)


def _remove_staging(output: str, staging: str) -> None:
    _delete_quietly(staging)
    if not is_uri(output):
        try:  # only when no other run stages here
            os.rmdir(join(output, STAGING))
        except OSError:
            pass


def write_count(count: int, path: str, key: str = "matched") -> None:
    """Run by the pipeline: records how many files it matched (or, with
    another ``key``, is to classify)."""
    _write_file(path, fs.json_bytes({key: int(count)}))


def _read_count(path: str, key: str) -> Optional[int]:
    """A count :func:`write_count` wrote, or None (missing or damaged); an
    error reading it (an object store's 503) is raised, not taken for a
    runner that lost it."""
    if not FileSystems.exists(path):
        return None
    try:
        count = json.loads(fs.read_bytes(path))[key]
    except (ValueError, LookupError, TypeError, FileNotFoundError,
            fs.NotRegularError):  # damaged, or gone meanwhile: unknown
        return None
    return count if isinstance(count, int) and count >= 0 else None


def ledger_files(output: str) -> list[str]:
    """Ledger files of the runs published in ``output``."""
    return fs.match(join(output, LEDGER_DIR, "*.parquet"))


def error_files(output: str) -> list[str]:
    """Error tables of the runs published in ``output``: the Parquet files
    below ``errors/`` but not below a folder or name starting with ``_`` or
    ``.``, which readers skip (a Delta table's ``_delta_log/`` holds its
    checkpoints, Parquet files of another schema, written every 100
    commits)."""
    root = join(output, ERRORS_DIR)
    return [path for path in fs.match(join(root, "**.parquet"))
            if not any(part.startswith(("_", "."))
                       for part in path[len(root):].split("/"))]


def check_done_files(output: str, *, reader: str = "--skip-done",
                     remedy: str = "replace the earlier runs with "
                                   "--overwrite instead of --skip-done"
                     ) -> None:
    """Refuses, before any work, an output whose ledger or error files
    (what ``reader``, ``--skip-done`` or ``watch``, reads to tell the files
    done before) are not readable Parquet (their footers are read: e.g. a
    truncated file, or a FIFO); the message ends with "restore it from a
    backup, or " and ``remedy``."""
    for kind, paths in ((LEDGER_DIR, ledger_files(output)),
                        (ERRORS_DIR, error_files(output))):
        for path, error in zip(paths, map_files(_footer_error, paths)):
            if error is not None:
                raise ConfigError(
                    f"output {output!r}: {kind} file "
                    f"{fs.one_line(fs.printable(path))} is damaged "
                    f"({error_line(error)}), so {reader} cannot tell the "
                    f"files done before; restore it from a backup, or "
                    f"{remedy}") from None


def count_rows(paths: Iterable[str]) -> int:
    """Rows in Parquet files, from their footers only."""
    return sum(m.num_rows for m in map_files(footer, paths))


def read_table(paths: Iterable[str], columns=None) -> pa.Table:
    """Reads Parquet files into one table, only the ``columns`` asked for
    (for what fits in memory: errors, one column, the ledger's keys)."""
    tables = read_tables(paths, columns)
    return pa.concat_tables(tables) if tables else None


def read_tables(paths: Iterable[str], columns=None) -> list[pa.Table]:
    """Reads Parquet files, one table each (see :func:`read_table`)."""
    return map_files(lambda p: _read_columns(p, columns), paths)


#: Files read at once from an object store, where each read of a footer or
#: a column is a few round trips (at 10-100 ms each, a nightly output's
#: thousands of ledger files took minutes one after the other).
PARALLEL_READS = 16


def map_files(function: Callable, paths: Iterable[str]) -> list:
    """``[function(path) for path in paths]``, several at once when the
    files are on an object store (Beam filesystems are thread-safe)."""
    paths = list(paths)
    if len(paths) < 2 or not is_uri(paths[0]):
        return [function(path) for path in paths]
    with concurrent.futures.ThreadPoolExecutor(
            min(PARALLEL_READS, len(paths)),
            thread_name_prefix="imgclass-read") as pool:
        return list(pool.map(function, paths))


def footer(path: str) -> pq.FileMetaData:
    """The Parquet footer of ``path`` (read by ranges)."""
    with fs.open_ranges(path) as source:
        return pq.read_metadata(source)


def _footer_error(path: str) -> Optional[Exception]:
    """What makes ``path`` unreadable Parquet (a FIFO, bytes pyarrow
    refuses), or None. An error opening or reading it (an object store's
    503, a lost connection) says nothing of the file, and is raised: the
    run fails, rather than have the file restored or the earlier runs
    replaced."""
    store_errors: list = []
    try:
        with fs.open_ranges(path, io_errors=store_errors) as source:
            try:
                pq.read_metadata(source)
            except Exception as error:  # noqa: BLE001 - pyarrow's refusal
                if store_errors:  # the store failed, not the file
                    raise store_errors[0] from None
                return error
    except fs.NotRegularError as error:
        return error
    return None


def _read_columns(path: str, columns) -> pa.Table:
    with fs.open_ranges(path) as source:
        return pq.read_table(source, columns=columns)


# The filesystem operations publishing is made of (tests inject faults here).
def _move(sources: list[str], destinations: list[str]) -> None:
    FileSystems.rename(sources, destinations)


def _delete_file(path: str) -> None:
    FileSystems.delete([path])


def _write_file(path: str, data: bytes) -> None:
    fs.write_atomic(path, data)


def _iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat(
        timespec="seconds")


def _delete_quietly(path: str) -> None:
    try:
        if is_uri(path):
            # No folders on object stores: Beam's GCS and S3 delete a
            # "folder" path without a trailing slash as the one object of
            # that name (none), leaving a _publish.json pending for ever.
            found = fs.match(join(path, "**"))
            if found:
                FileSystems.delete(found)
        elif os.path.exists(path):
            FileSystems.delete([path])
    except Exception:  # noqa: BLE001 - leftovers below "_" are harmless
        pass


def _write_empty(path: str, table_schema: pa.Schema) -> None:
    buffer = io.BytesIO()
    pq.write_table(table_schema.empty_table(), buffer)
    fs.create(path, buffer.getvalue())
