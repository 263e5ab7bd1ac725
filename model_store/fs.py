"""Paths and files on local disks or any Beam filesystem (gs://, s3://...).

The one place for the small operations the store, the pipeline and the
watcher share: telling a URI from a local path, joining and splitting paths,
listing a pattern, opening only regular files, locking a local file,
writing a file whole or not at all, and the JSON the project writes. It
lives in ``model_store`` (the lower layer) so that the store can use it
without importing the pipeline; Beam's ``FileSystems`` is imported only
when a function needs it (no Beam pipeline code here).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import importlib
import io
import json
import os
import re
import stat
import threading
import urllib.parse
import uuid

from model_store.errors import ConfigError, ImgclassError

_SCHEME = re.compile(r"^[A-Za-z][-A-Za-z0-9+.]*://")
_TO_ESCAPE = re.compile("[\udc80-\udcff]|%(?=[0-9A-Fa-f]{2})")


def _filesystems():
    from apache_beam.io.filesystems import FileSystems
    return FileSystems


def is_uri(path: str) -> bool:
    """Whether ``path`` names a Beam filesystem other than the local one."""
    return bool(_SCHEME.match(path))


def escape_path(path: str) -> str:
    """A local path as the pipeline carries and writes it (see
    ``transforms.files``: bytes that are not UTF-8 as ``%XX``)."""
    return _TO_ESCAPE.sub(
        lambda m: "%25" if m.group() == "%" else f"%{ord(m.group()) - 0xDC00:02X}",
        path)


def printable(path: str) -> str:
    """``path`` as imgclass writes it (messages, JSON): a local path
    escaped (:func:`escape_path`), a URI as Beam lists it."""
    return path if is_uri(path) else escape_path(path)


_CONTROL = re.compile("[\x00-\x1f\x7f]")


def one_line(shown: str) -> str:
    """A :func:`printable` path as a message line shows it: control
    characters (a newline in a file name) as ``%XX`` too, so that one path
    never splits a line."""
    return _CONTROL.sub(lambda m: f"%{ord(m.group()):02X}", shown)


def shown(path: str) -> str:
    """A local path or URI as a message line shows it: :func:`printable`,
    then :func:`one_line`."""
    return one_line(printable(path))


def os_path(path: str) -> str:
    """The inverse of :func:`escape_path`: the name ``os`` functions take."""
    if "%" not in path:
        return path
    return os.fsdecode(urllib.parse.unquote_to_bytes(path))


def join(base: str, *parts: str) -> str:
    """``base/part/...``; local paths as ``os.path.join`` joins them."""
    if is_uri(base):
        return _filesystems().join(base, *parts)
    return os.path.join(base, *parts)


def split(path: str) -> tuple[str, str]:
    """``(folder, name)`` of ``path`` (a trailing ``/`` is ignored)."""
    path = path.rstrip("/") or path
    if is_uri(path):
        return _filesystems().split(path)
    return os.path.split(path)


def lies_in(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or lies in it: local paths with every
    symbolic link resolved, URIs as written; a local path never lies in a
    URI's folder, nor the other way round."""
    if is_uri(path) != is_uri(folder):
        return False
    if is_uri(path):
        path, folder = path.rstrip("/"), folder.rstrip("/")
    else:
        path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def basename(path: str) -> str:
    """The last part of ``path`` (see :func:`split`)."""
    return split(path)[1]


def match(pattern: str) -> list[str]:
    """The paths of the files ``pattern`` matches, sorted (Beam's syntax:
    ``*`` within a folder, ``**`` across folders)."""
    found = _filesystems().match([pattern])[0].metadata_list
    return sorted(m.path for m in found)


# Beam filesystems that need an extra package: (module, extra to install).
_FILESYSTEM_CLIENTS = {"gs": ("apache_beam.io.gcp.gcsfilesystem", "gcp"),
                       "s3": ("boto3", "aws"), "hdfs": ("hdfs", "hadoop"),
                       "azfs": ("azure.storage.blob", "azure")}


def check_filesystem(path: str, option: str) -> None:
    """Refuses, in one line, a path whose Beam filesystem is not installed
    (``foo://x``, or ``gs://`` without Beam's GCP extra)."""
    if not is_uri(path):
        return
    scheme = path.split("://", 1)[0].lower()
    module, extra = _FILESYSTEM_CLIENTS.get(scheme, (None, None))
    try:
        _filesystems().get_filesystem(path)
        if module:
            importlib.import_module(module)
    except Exception:  # noqa: BLE001 - Beam raises ValueError or ImportError
        if extra:
            package = (f"imgclass[{extra}]" if extra in ("gcp", "aws")
                       else f"apache-beam[{extra}]")
            raise ConfigError(f"{option} {path!r}: {scheme}:// needs Beam's "
                              f"{extra} extra; install it with pip install "
                              f"'{package}'") from None
        raise ConfigError(f"{option} {path!r}: no filesystem for {scheme}:// "
                          f"(give a local path, or gs://, s3://, hdfs://, "
                          f"azfs://)") from None


# The base classes of the errors object-store clients raise, by module and
# name (see is_store_error).
STORE_CLIENT_ERRORS = frozenset({
    # GoogleAPICallError (ServiceUnavailable, TooManyRequests, Forbidden,
    # NotFound...) and RetryError (the client's retries ran out).
    "google.api_core.exceptions.GoogleAPIError",
    "google.auth.exceptions.GoogleAuthError",  # RefreshError, TransportError
    # A resumable upload's failed request (GCS writes an object on close).
    "google.cloud.storage.exceptions.InvalidResponse",
    "google.cloud.storage.exceptions.DataCorruption",
    "google.resumable_media.common.InvalidResponse",
    "google.resumable_media.common.DataCorruption",
    # A lost connection in a raw download (requests' own are OSErrors).
    "urllib3.exceptions.HTTPError",
    "botocore.exceptions.BotoCoreError",
    "botocore.exceptions.ClientError",
    "apache_beam.io.aws.clients.s3.messages.S3ClientError",
    "azure.core.exceptions.AzureError",
    "apache_beam.io.azure.blobstorageio.BlobStorageError",
})


def is_store_error(error: BaseException) -> bool:
    """Whether ``error`` is a store's failure (an object store's 503 or
    403, a lost connection, a full disk), to be reported in one line,
    rather than a bug (a traceback) or a refusal of imgclass's own (an
    ImgclassError, even one that is an OSError: it says its own fix).

    A store error is an OSError (Beam's BeamIOError is one), or an error of
    an object-store client: Beam's filesystems wrap some calls' errors in
    BeamIOError but let the client's own through others (GCS: open, create,
    exists, last_updated, delete, rename; S3: open, create; Azure: open,
    create, delete, rename) and through the files they return (read,
    write, close). Those clients are optional extras, so their classes are
    matched by module and name along the error's MRO
    (:data:`STORE_CLIENT_ERRORS`): nothing needs them installed, nothing is
    imported to tell an error (Beam's own S3 and Azure wrappers are named
    too), and a base class takes all its subclasses.
    """
    if isinstance(error, ImgclassError):
        return False
    return isinstance(error, OSError) or _named(error, STORE_CLIENT_ERRORS)


def _named(error: BaseException, names) -> bool:
    """Whether a class along ``error``'s MRO is one of ``names``
    (``module.name``)."""
    return any(f"{cls.__module__}.{cls.__qualname__}" in names
               for cls in type(error).__mro__)


# Beam's S3 and Azure client errors: their message and HTTP status are
# attributes, and their str is the tuple of both.
_MESSAGE_AND_CODE = ("apache_beam.io.aws.clients.s3.messages.S3ClientError",
                     "apache_beam.io.azure.blobstorageio.BlobStorageError")


def error_text(error: BaseException) -> str:
    """``str(error)``; for Beam's S3 and Azure client errors, ``HTTP 503:
    <message>`` (their str is ``('<message>', 503)``)."""
    if _named(error, _MESSAGE_AND_CODE) and isinstance(
            getattr(error, "message", None), str):
        code = getattr(error, "code", None)
        return f"HTTP {code}: {error.message}" if code else error.message
    return str(error)


def error_line(error: BaseException) -> str:
    """The one line of ``error`` that says what failed: the first (pyiceberg,
    deltalake and SQLAlchemy add lines of background), or the last of a
    message holding a traceback (Beam wraps a worker's error in one)."""
    lines = [line.strip() for line in _described(error).splitlines()
             if line.strip()]
    if any(line.startswith("Traceback (most recent call last)")
           for line in lines):
        lines = lines[-1:]
    return lines[0][:500] if lines else ""


def _described(error: BaseException) -> str:
    """``error`` as text (:func:`error_text`). A Beam filesystem's batch
    error (a move, delete or listing that failed) holds a dict of every
    file and its error, whose paths (two per move) pushed the reason out
    of the line: it is told as the operation and the first file's own
    error (which names the file: the local path, the object store's
    request; GCS's batch moves and deletes give only an HTTP status)."""
    from apache_beam.io.filesystem import BeamIOError

    details = getattr(error, "exception_details", None)
    if not isinstance(error, BeamIOError) or not isinstance(details, dict) \
            or not details:
        return error_text(error)
    cause, more = next(iter(details.values())), len(details) - 1
    operation = str(error).split(" with exceptions ", 1)[0]
    told = (f"{type(cause).__name__}: {error_line(cause)}"
            if isinstance(cause, BaseException) else f"HTTP {cause}")
    return (f"{operation}: {told}"
            f"{f' (and {more} more files)' if more else ''}")


def broken_link(path: str) -> str | None:
    """Why the symbolic link ``path`` cannot be followed, or None."""
    if not os.path.islink(path):
        return None
    try:
        os.stat(path)
        return None
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "loops (it leads back to itself)"
        if error.errno not in (errno.ENOENT, errno.ENOTDIR):
            return f"cannot be followed: {error.strerror}"
        return (f"points at {one_line(printable(os.readlink(path)))}"
                f", which does not exist (an unmounted disk?)")


def file_kind(mode: int) -> str:
    """What a file whose ``st_mode`` is ``mode`` is, e.g. ``a FIFO``."""
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"),
                       (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a regular file"


class NotRegularError(OSError):
    """A FIFO, socket, device or folder where a regular file was expected;
    ``mode`` is its ``st_mode``."""

    def __init__(self, path: str, mode: int):
        super().__init__(f"{shown(path)} is {file_kind(mode)}, not a "
                         f"regular file")
        self.mode = mode


def open_regular(path: str, flags: int = os.O_RDONLY,
                 ) -> tuple[int, os.stat_result]:
    """``(file descriptor, its stat)`` of the local file ``path`` opened
    with ``flags`` (add ``os.O_CREAT`` to make it, mode 0o666 less the
    umask); NotRegularError, nothing left open, unless it is a regular
    file. Opening never waits: a FIFO is opened non-blocking (it would wait
    for a writer) and refused."""
    fd = os.open(path, flags | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise NotRegularError(path, info.st_mode)
    return fd, info


def open_text(path: str, encoding: str = "utf-8"):
    """The local file ``path`` open for reading as text (``\\r\\n`` and
    ``\\r`` read as ``\\n``), through :func:`open_regular`:
    NotRegularError for a FIFO, socket, device or folder, without
    waiting."""
    fd, _ = open_regular(path)
    return open(fd, encoding=encoding)


class TooLargeError(ValueError):
    """A file is larger than its reader's limit (:func:`read_text`)."""


def read_text(path: str, max_bytes: int, encoding: str = "utf-8") -> str:
    """The local file ``path`` as :func:`open_text` reads it (``\\r\\n``
    and ``\\r`` read as ``\\n``; NotRegularError without waiting), if it
    holds at most ``max_bytes``; else TooLargeError, ``is larger than N
    MiB``, without reading more than the limit."""
    data = _read_local(path, max_bytes)
    if len(data) > max_bytes:
        raise TooLargeError(f"is larger than {max_bytes / 2**20:g} MiB")
    return io.TextIOWrapper(io.BytesIO(data), encoding=encoding).read()


def read_bytes(path: str, max_bytes: int | None = None) -> bytes:
    """The whole file ``path``: local files through :func:`open_regular`
    (NotRegularError for a FIFO, socket, device or folder, without
    waiting), others through Beam's ``FileSystems``. With ``max_bytes``, at
    most that many bytes and one more: a longer file is told by its length,
    without being read whole."""
    if is_uri(path):
        with _filesystems().open(path) as handle:
            return _read_up_to(handle, max_bytes)
    return _read_local(path, max_bytes)


def _read_local(path: str, max_bytes: int | None) -> bytes:
    """:func:`read_bytes` of a local file."""
    fd, _ = open_regular(path)
    with os.fdopen(fd, "rb") as handle:
        if max_bytes is None:
            return handle.read()
        # read(n) allocates n bytes, even for a shorter file: n is the
        # size, and what a file that grew (or /proc's, of size 0) has more.
        size = os.fstat(fd).st_size
        data = handle.read(min(size, max_bytes) + 1)
        if size < len(data) <= max_bytes:
            data += _read_up_to(handle, max_bytes - len(data))
        return data


def _read_up_to(handle, max_bytes: int | None) -> bytes:
    """All of ``handle``, or its first ``max_bytes + 1`` bytes, read by the
    MiB (``read(n)`` would allocate ``n`` bytes even for a short file)."""
    if max_bytes is None:
        return handle.read()
    chunks, size = [], 0
    while size <= max_bytes:
        chunk = handle.read(min(2**20, max_bytes + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


@contextlib.contextmanager
def open_ranges(path: str, *, io_errors: list | None = None):
    """``path`` open for reading by ranges (seek, then read), as pyarrow
    wants a Parquet file: it reads the footer, then only the column chunks
    asked for, never the whole file (on GCS or S3 a few ranged requests,
    not a download). Yields a ``pyarrow.PythonFile``. Local files go
    through :func:`open_regular` (NotRegularError for a FIFO, without
    waiting); others through Beam's ``FileSystems``, uncompressed whatever
    the name. ``io_errors``: a list that receives each error the file's
    reads and seeks raise (an object store's 503 on a ranged read), so
    that a caller can tell them from pyarrow's refusal of the bytes."""
    import pyarrow as pa

    if is_uri(path):
        from apache_beam.io.filesystem import CompressionTypes
        handle = _filesystems().open(
            path, compression_type=CompressionTypes.UNCOMPRESSED)
    else:
        fd, _ = open_regular(path)
        handle = os.fdopen(fd, "rb")
    reader = handle if io_errors is None else _Recording(handle, io_errors)
    with handle, pa.PythonFile(reader, mode="r") as source:
        yield source


class _Recording:
    """A readable file whose read and seek errors are also put in a list
    (see :func:`open_ranges`)."""

    def __init__(self, handle, errors: list):
        self._handle, self._errors = handle, errors
        self.closed = False

    def _recorded(self, method, *args):
        try:
            return method(*args)
        except Exception as error:
            self._errors.append(error)
            raise

    def read(self, *args):
        return self._recorded(self._handle.read, *args)

    def seek(self, *args):
        return self._recorded(self._handle.seek, *args)

    def tell(self):
        return self._recorded(self._handle.tell)

    def readable(self):
        return True

    def seekable(self):
        return True

    def close(self):
        self.closed = True  # the handle is the caller's to close


_held = threading.local()  # the lock files this thread holds


@contextlib.contextmanager
def locked(path: str):
    """Holds an exclusive lock (``flock``) on the local file ``path`` (made
    if missing, with its folder) for the block: other processes and
    threads that lock it wait their turn. Locking it again in the same
    thread, inside the block, does not wait on itself. Object stores
    (``gs://``, ``s3://``) have no locks: a no-op there."""
    key = os.path.abspath(path) if not is_uri(path) else None
    held = _held.__dict__.setdefault("paths", set())
    if key is None or key in held:
        yield
        return
    os.makedirs(os.path.dirname(key), exist_ok=True)
    fd, _ = open_regular(key, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released when fd is closed
        held.add(key)
        try:
            yield
        finally:
            held.discard(key)
    finally:
        os.close(fd)


def create(path: str, data: bytes) -> None:
    """Writes ``data`` to ``path`` in one go (no temporary name)."""
    with _filesystems().create(path) as handle:
        handle.write(data)


def write_atomic(path: str, data: bytes) -> None:
    """Writes ``path`` whole or not at all: on local disks a temporary name
    (fsynced) renamed into place; on object stores (where an object appears
    only once written) the object created, then read back and compared."""
    if is_uri(path):
        create(path, data)
        with _filesystems().open(path) as handle:
            if handle.read() != data:
                raise OSError(f"{path} does not hold what was written")
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    aside = f"{path}.{uuid.uuid4().hex}.tmp"
    try:
        with open(aside, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(aside, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(aside)


def json_bytes(value, *, sort_keys: bool = False,
               allow_nan: bool = True) -> bytes:
    """``value`` as the project writes JSON files: indented, one final
    newline; with ``allow_nan=False``, ValueError for NaN or infinity."""
    return (json.dumps(value, indent=2, sort_keys=sort_keys,
                       allow_nan=allow_nan) + "\n").encode()
