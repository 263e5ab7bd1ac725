"""The project's error types.

Each is a subclass of the built-in exception a caller would expect
(``ValueError``, ``LookupError``, ``FileNotFoundError``) so that generic code
keeps working, and of :class:`ImgclassError` so that the command line can tell
a user mistake (exit code 2) from a bug.
"""


class ImgclassError(Exception):
    """Base class of the errors imgclass raises on purpose."""


class EnvironmentProblem(ImgclassError, RuntimeError):
    """The machine lacks something imgclass needs (Python 3.11, a compiler)."""


class ConfigError(ImgclassError, ValueError):
    """An invalid option or argument, found before any work starts."""


class SpecError(ImgclassError, ValueError):
    """A network spec (the JSON architecture) is invalid."""


class UnknownModelError(ImgclassError, LookupError):
    """No model or version of that name is in the store."""


class ModelFileMissingError(ImgclassError, FileNotFoundError):
    """A file a stored model needs is missing."""


class StoreReadError(ImgclassError, OSError):
    """Reading or listing the model store failed (an object store's 503, a
    lost connection, no permission): the message names the file or folder
    and the store's reason. Not a mistake in the command: the command line
    exits 1, as for a run that failed, so that a scheduler tries again."""


class ModelFileUnreadableError(ModelFileMissingError, StoreReadError):
    """A file a stored model needs is there, or may be, but cannot be read
    (no permission, an object store's 503): callers that take a missing
    file for a broken model take this one too; those to which a missing
    file means "none yet" (aliases.json) must not."""


class ModelIntegrityError(ImgclassError, ValueError):
    """A stored model's files disagree with its metadata or spec."""


class ChecksumMismatchError(ModelIntegrityError):
    """The weights file's sha256 differs from the one in the metadata."""


class DanglingAliasError(ModelIntegrityError):
    """An alias (``latest`` included) names a version that is not stored."""


class WeightShapeError(ModelIntegrityError):
    """A stored weight array's shape differs from what the spec builds."""


class StoreWriteError(ImgclassError, OSError):
    """Writing to the model store failed part way (a full disk, a lost
    connection): the message names the file and the system's reason, and
    no half-written version is left. Not a mistake in the command: the
    command line exits 1, as for a run that failed."""


class LostFileError(ImgclassError, FileNotFoundError):
    """A file a run's publish record moves is neither in its staging folder
    nor where it was to go: publishing stops before it changes anything,
    rather than record the run as published without it. Not a mistake in
    the command: the command line exits 1, as for publishing that failed."""


class UnsupportedModelError(ImgclassError, ValueError):
    """An imported model file uses an op, attribute or shape that imgclass
    cannot express; the message names the op and the node."""


def check_positive(name: str, value) -> int:
    """``value`` if it is a positive integer (not a bool), else ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_text(name: str, value, *, what: str = "a string") -> str:
    """``value`` if it is a string, else ConfigError saying it must be
    ``what``."""
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be {what}, got {value!r}")
    return value


def check_fraction(name: str, value) -> float:
    """``value`` if it is a number (not a bool) between 0 and 1, else
    ConfigError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name} must be a number between 0 and 1, got "
                          f"{value!r}")
    return value


def check_bool(name: str, value) -> bool:
    """``value`` if it is True or False, else ConfigError (a string such as
    'false' would be taken as true)."""
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {value!r}")
    return value
