"""What imgclass prints on stderr besides its own lines: one set-up for the
command (``pipeline/cli.py``) and its local worker processes
(``pipeline/worker.py``).

The user sees imgclass's lines. The libraries' log lines (Beam, Theano)
show only at ERROR, unless ``IMGCLASS_BEAM_LOG_LEVEL`` says otherwise
(``-v`` sets it to INFO, and worker processes inherit it); the libraries'
Python warnings (e.g. Pillow's ``DecompressionBombWarning`` for a file that
becomes an error row anyway) show only then too. Once a run is stopped
(Ctrl-C, SIGTERM, or the command gone, for a worker), the libraries' lines
and thread tracebacks are dropped: the command says "interrupted" once.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import threading
import warnings

BEAM_LOG_LEVEL_ENV = "IMGCLASS_BEAM_LOG_LEVEL"
# Set by -q for the worker processes: imgclass's own warnings hidden too.
QUIET_ENV = "IMGCLASS_QUIET"
DEFAULT_LIBRARY_LEVEL = "ERROR"
_LIBRARIES = ("apache_beam", "theano", "absl")
_stopped = threading.Event()


def configure(*, quiet: bool = False, verbose: bool = False) -> None:
    """Sets up logging and warnings for this process (see the module);
    ``quiet`` (-q) leaves errors only."""
    _stopped.clear()
    if isinstance(sys.stderr, _OwnLinesOnly):
        sys.stderr = sys.stderr.stream
    if quiet:  # worker processes inherit these
        os.environ[QUIET_ENV] = "1"
    if verbose:
        os.environ[BEAM_LOG_LEVEL_ENV] = "INFO"
    level = library_level()
    handler = logging.StreamHandler()
    handler.setFormatter(_Lines(
        "imgclass: %(levelname)s: %(message)s",
        details=logging.getLevelName(level) < logging.ERROR))
    handler.addFilter(_shown)
    # The handler's level, not the root logger's: other handlers (a test's
    # log capture) keep seeing warnings.
    handler.setLevel(logging.ERROR if os.environ.get(QUIET_ENV)
                     else logging.WARNING)
    logging.basicConfig(level=logging.WARNING, handlers=[handler],
                        force=True)
    for name in _LIBRARIES:
        logging.getLogger(name).setLevel(level)
    if logging.getLevelName(level) == logging.ERROR and not sys.warnoptions:
        warnings.simplefilter("ignore")
    threading.excepthook = _thread_failed


def library_level() -> str:
    """``$IMGCLASS_BEAM_LOG_LEVEL`` (any case), else ERROR; a value that
    is no log level is a ConfigError."""
    level = (os.environ.get(BEAM_LOG_LEVEL_ENV)
             or DEFAULT_LIBRARY_LEVEL).upper()
    if not isinstance(logging.getLevelName(level), int):
        from model_store.errors import ConfigError
        raise ConfigError(
            f"{BEAM_LOG_LEVEL_ENV}={level!r} is not a log level: set it to "
            f"DEBUG, INFO, WARNING, ERROR or CRITICAL, or unset it")
    return level


class _Lines(logging.Formatter):
    """A record as imgclass's lines: its first line only (a library's
    traceback, e.g. Beam's for a failed pipeline, is said again in one line
    by the command), or with ``details`` (-v) every line, each starting
    with ``imgclass:`` too."""

    def __init__(self, fmt: str, *, details: bool):
        super().__init__(fmt)
        self.details = details

    def formatException(self, exc_info) -> str:
        return super().formatException(exc_info) if self.details else ""

    def format(self, record: logging.LogRecord) -> str:
        first, *rest = super().format(record).splitlines() or [""]
        if not self.details:
            return first
        return "\n".join([first, *(f"imgclass:   {line}" for line in rest)])


def stopped() -> None:
    """The run is being stopped: from now on, only imgclass's lines (Beam's
    worker threads also print tracebacks to stderr themselves)."""
    _stopped.set()
    if not isinstance(sys.stderr, _OwnLinesOnly):
        sys.stderr = _OwnLinesOnly(sys.stderr)


class _OwnLinesOnly(io.TextIOBase):
    """A text stream that passes on only the lines imgclass writes."""

    def __init__(self, stream):
        super().__init__()
        self.stream, self._line = stream, ""

    def write(self, text: str) -> int:
        *lines, self._line = (self._line + text).split("\n")
        for line in lines:
            if line.startswith("imgclass"):
                self.stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def is_stop(error: BaseException | None) -> bool:
    """Whether ``error`` is what a stop looks like: Ctrl-C, or (in a
    worker) the command's connection closing."""
    if isinstance(error, KeyboardInterrupt):
        return True
    code = getattr(error, "code", None)
    if callable(code) and type(error).__module__.startswith("grpc"):
        try:
            return code().name in ("UNAVAILABLE", "CANCELLED")
        except Exception:  # noqa: BLE001 - not a gRPC status after all
            return False
    return False


def _shown(record: logging.LogRecord) -> bool:
    if _stopped.is_set() and not record.name.startswith(("pipeline",
                                                         "transforms",
                                                         "model_store")):
        return False
    # Beam warns at import that optional Google Cloud clients are missing;
    # they are not needed unless a gs:// path is used, where Beam says so.
    if "apitools not found" in record.getMessage():
        return False
    return not (record.exc_info and is_stop(record.exc_info[1]))


_default_excepthook = threading.excepthook


def _thread_failed(args) -> None:
    """A thread's uncaught error, unless the run is being stopped."""
    if _stopped.is_set() or is_stop(args.exc_value):
        return
    _default_excepthook(args)
