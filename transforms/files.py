"""Listing and reading input files safely: no Beam transforms here, only the
functions the matching and decoding steps call.

Paths. A local file name need not be valid UTF-8 (Python reads such names
with ``surrogateescape``, as ``os.fsdecode`` does). Whatever the pipeline
carries and writes (Parquet, JSON) must encode, so local paths travel
*escaped* (:func:`escape_path`): each byte that is not UTF-8 is written
``%XX`` (two upper-case hex digits), and a ``%`` that is followed by two hex
digits is written ``%25``; every other character is kept. The mapping is
reversible: ``urllib.parse.unquote_to_bytes(path)`` gives the exact bytes of
the name (:func:`os_path` gives the name Python's ``os`` functions take).
URIs (``gs://``, ``s3://``...) are kept as Beam lists them.

Reading (:func:`read_bytes`, :func:`iter_chunks`): only regular files
(a FIFO, socket or device, or a symlink to one, is refused without waiting
on it), never decompressed by extension, and never more than ``max_bytes``:
a file listed larger is refused before it is opened, and at most
``max_bytes + 1`` bytes are read, so that a file that grows, or a device
that claims 0 bytes, cannot exhaust memory.

Listing (:func:`list_pattern`): local patterns are walked here with
``os.scandir`` rather than Beam's local matcher, so that symlinked folders
are followed (a loop is reported, not followed), unreadable folders,
dangling symlinks and special files are reported as :class:`ListingError`
rather than dropped, and the output folder is never listed.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from typing import Callable, Iterable, Iterator, NamedTuple, Optional

from model_store.errors import ImgclassError
from model_store.fs import (  # noqa: F401 (escape_path, os_path re-exported)
    NotRegularError,
    escape_path,
    file_kind,
    is_uri,
    open_regular,
    os_path,
)

DEFAULT_MAX_FILE_BYTES = 256 * 1024 * 1024
_CHUNK = 1 << 20
GLOB_CHARS = "*?["
# glob.escape's form: one glob character alone in a character class.
_ESCAPED_CHAR = re.compile(r"\[([*?\[])\]")


class FileReadError(ImgclassError, OSError):
    """A matched file cannot be read as it is (an error row, stage read)."""


class NotRegularFileError(FileReadError):
    """A FIFO, socket, device or folder where a file was expected."""


class FileTooLargeError(FileReadError):
    """A file over the ``--max-file-bytes`` limit."""


class SymlinkLoopError(FileReadError):
    """A symlinked folder that leads back to one of its own parents."""


class ListingError(NamedTuple):
    """Something a pattern matched that cannot be read: an error row."""
    path: str  # escaped, as every path the pipeline carries
    error_type: str
    message: str


def escape_glob(path: str) -> str:
    """A literal path as a pattern that matches only itself (glob.escape's
    form, which Beam's matchers and :func:`list_pattern` read alike)."""
    return re.sub(r"([*?\[])", r"[\1]", path)


def literal_of(pattern: str) -> Optional[str]:
    """The path a pattern names when it has no unescaped glob character."""
    plain = _ESCAPED_CHAR.sub("", pattern)
    if any(c in plain for c in GLOB_CHARS):
        return None
    return _ESCAPED_CHAR.sub(r"\1", pattern)


def _not_regular(mode: int) -> NotRegularFileError:
    return NotRegularFileError(f"{file_kind(mode)}, not a regular file: only "
                               f"regular files are read")


def _too_large(size: str, max_bytes: int) -> FileTooLargeError:
    # Training and evaluation read with the default limit; only classify
    # and watch have the option.
    return FileTooLargeError(f"{size} bytes, over the limit of "
                             f"{max_bytes:,} bytes per file (classify's and "
                             f"watch's --max-file-bytes)")


def iter_chunks(path: str, *, size: Optional[int],
                max_bytes: int) -> Iterator[bytes]:
    """The bytes of a file, as they are, in chunks.

    Args:
        path: an escaped local path or a URI.
        size: the size the listing gave, if any: over ``max_bytes`` refuses
            the file before it is opened.
        max_bytes: the most a file may hold.

    Raises:
        FileTooLargeError, NotRegularFileError, OSError.
    """
    if size is not None and size > max_bytes:
        raise _too_large(f"listed as {size:,}", max_bytes)
    if is_uri(path):
        from apache_beam.io.filesystem import CompressionTypes
        from apache_beam.io.filesystems import FileSystems
        with FileSystems.open(
                path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            yield from _capped(handle.read, max_bytes)
        return
    try:  # a FIFO is refused, not waited on
        fd, info = open_regular(os_path(path))
    except NotRegularError as error:
        raise _not_regular(error.mode) from None
    try:
        if info.st_size > max_bytes:
            raise _too_large(f"{info.st_size:,}", max_bytes)
        # One read of the listed size (+1 to see growth): a single buffer,
        # so that reading a file takes its size in memory once, not twice.
        yield from _capped(lambda n: os.read(fd, n), max_bytes,
                           first=info.st_size + 1)
    finally:
        os.close(fd)


def _capped(read: Callable[[int], bytes], max_bytes: int, *,
            first: int = _CHUNK) -> Iterator[bytes]:
    total, want = 0, first
    while True:
        chunk = read(min(want, max_bytes + 1 - total))
        want = _CHUNK
        if not chunk:
            return
        total += len(chunk)
        if total > max_bytes:
            raise _too_large(f"more than {max_bytes:,}", max_bytes)
        yield chunk


def read_bytes(path: str, *, size: Optional[int], max_bytes: int) -> bytes:
    """The whole file (see :func:`iter_chunks`)."""
    return b"".join(iter_chunks(path, size=size, max_bytes=max_bytes))


# Listing ---------------------------------------------------------------------

def list_pattern(pattern: str, *, exclude: Iterable[str] = ()):
    """Everything ``pattern`` matches: ``FileMetadata`` of files (escaped
    paths) and :class:`ListingError` of what cannot be listed or read (see
    :func:`list_identified`)."""
    for _, item in list_identified(pattern, exclude=exclude):
        yield item


def list_identified(pattern: str, *, exclude: Iterable[str] = ()):
    """``(identity, item)`` for everything ``pattern`` matches: ``item`` a
    ``FileMetadata`` of a file (escaped path) or a :class:`ListingError` of
    what cannot be listed or read; ``identity`` the file it is, whatever
    symlinks led to it: the escaped path with every symlink resolved
    (local) or the URI. Two paths with one identity are one file.

    Args:
        pattern: as :func:`pipeline.inputs.input_patterns` makes them: Beam's
            pattern syntax (``*`` within a folder, ``**`` across folders),
            glob characters of literal names escaped as ``[*]``, local paths
            escaped as :func:`escape_path` does.
        exclude: folders (escaped paths or URIs) never listed: the output.
    """
    from apache_beam.io.filesystem import FileMetadata

    if is_uri(pattern):
        for item in _list_uri(pattern, exclude):
            yield item.path, item
        return
    excluded = set()
    for folder in exclude:
        if not is_uri(folder):
            try:
                info = os.stat(os_path(folder))
                excluded.add((info.st_dev, info.st_ino))
            except OSError:
                pass
    if not pattern.startswith("/"):
        pattern = f"{escape_glob(escape_path(os.getcwd()))}/{pattern}"
    literal = literal_of(pattern)
    if literal is not None:
        root, regex, depth = literal, None, None
    else:
        root, regex, depth = _glob_root(pattern)
    for path, info, always, real in _walk(os_path(root), excluded, depth):
        escaped = escape_path(path)
        if not always and regex is not None and not regex.match(escaped):
            continue
        if isinstance(info, ListingError):
            item = info
        elif not stat.S_ISREG(info.st_mode):
            error = _not_regular(info.st_mode)
            item = ListingError(escaped, type(error).__name__, str(error))
        else:
            item = FileMetadata(escaped, info.st_size, info.st_mtime)
        yield escape_path(real), item


def _list_uri(pattern: str, exclude: Iterable[str]):
    from apache_beam.io.filesystems import FileSystems

    prefixes = tuple(f.rstrip("/") + "/" for f in exclude if is_uri(f))
    try:
        found = FileSystems.match([pattern])[0].metadata_list
    except Exception as error:  # noqa: BLE001 - an error row, never silence
        message = " ".join(str(error).split())[:1000]
        yield ListingError(pattern, type(error).__name__,
                           f"cannot list: {message}")
        return
    for metadata in found:
        if not (prefixes and metadata.path.startswith(prefixes)):
            yield metadata


def _glob_root(pattern: str):
    """``(folder to walk, regex of matching escaped paths, depth or None)``."""
    parts = pattern.split("/")
    static = 0
    while static < len(parts) - 1 and literal_of(parts[static]) is not None:
        static += 1
    root = "/".join(literal_of(p) for p in parts[:static]) or "/"
    rest = parts[static:]
    regex = re.compile(_local_regex(pattern))
    deep = any("**" in p or "?" in p for p in rest)
    return root, regex, None if deep else len(rest)


# "**", "*", "?", or a character class ("[!]x]" included); an unclosed "["
# is a literal.
_GLOB_TOKEN = re.compile(r"\*\*|\*|\?|\[!?\]?[^\]]*\]")


def _local_regex(pattern: str) -> str:
    """Beam's pattern syntax (``FileSystem.translate_pattern``) for local
    paths: the same, except that ``*`` stops only at ``/``. Beam's stops at
    a backslash too (a Windows separator), which made ``*`` skip the POSIX
    file names that contain one."""
    regex, end = ["(?ms)"], 0
    for token in _GLOB_TOKEN.finditer(pattern):
        regex.append(re.escape(pattern[end:token.start()]))
        text, end = token.group(), token.end()
        if text in ("**", "*", "?"):
            regex.append({"**": ".*", "*": "[^/]*", "?": "."}[text])
        else:
            inside = text[1:-1].replace("\\", "\\\\").replace("[", "\\[")
            if inside.startswith("!"):
                inside = "^" + inside[1:]
            elif inside.startswith("^"):
                inside = "\\" + inside
            regex.append(f"[{inside}]")
    regex.append(re.escape(pattern[end:]) + r"\Z")
    return "".join(regex)


def _walk(root: str, excluded: set, depth: Optional[int]):
    """``(path, stat_result | ListingError, always, real path)`` of every
    non-folder below ``root`` (itself, if it is not a folder), following
    symlinks; folders deeper than ``depth`` are not entered. ``always``: a
    folder that cannot be listed, reported whatever the pattern. The real
    path resolves every symlink (``os.path.realpath`` only where a symlink
    was met)."""
    real_root = os.path.realpath(root)
    try:
        info = os.stat(root)
    except OSError as error:
        yield root, _listing_error(root, error), True, real_root
        return
    if not stat.S_ISDIR(info.st_mode):
        yield root, info, False, real_root
        return
    ancestors: set = set()
    stack = [(root, real_root, (info.st_dev, info.st_ino), 0)]
    while stack:
        folder, real, key, level = stack.pop()
        if folder is None:  # leaving a folder
            ancestors.discard(key)
            continue
        if key in excluded:
            continue
        ancestors.add(key)
        stack.append((None, None, key, level))
        try:
            with os.scandir(folder) as entries:
                names = sorted((e.name, e.path, e.is_symlink())
                               for e in entries)
        except OSError as error:
            yield folder, _listing_error(folder, error, listing=True), \
                True, real
            continue
        for name, path, linked in reversed(names):
            child_real = os.path.realpath(path) if linked else \
                os.path.join(real, name)
            try:
                child = os.stat(path)
            except OSError as error:
                yield path, _listing_error(path, error), False, child_real
                continue
            if not stat.S_ISDIR(child.st_mode):
                yield path, child, False, child_real
                continue
            child_key = (child.st_dev, child.st_ino)
            if child_key in ancestors:
                error = SymlinkLoopError(
                    "symlink loop: this folder leads back to one of its "
                    "parents; not followed")
                yield path, ListingError(escape_path(path), type(
                    error).__name__, str(error)), True, child_real
            elif depth is None or level + 1 < depth:
                stack.append((path, child_real, child_key, level + 1))


def _listing_error(path: str, error: OSError, *,
                   listing: bool = False) -> ListingError:
    if error.errno == errno.ENOENT and os.path.islink(path):
        message = (f"dangling symlink: its target "
                   f"{escape_path(os.readlink(path))} does not exist")
    elif error.errno == errno.ELOOP:
        message = "symlink loop: too many levels of symbolic links"
    else:
        what = "cannot list folder" if listing else "cannot read"
        message = f"{what}: {error.strerror or error}"
    return ListingError(escape_path(path), type(error).__name__, message)
