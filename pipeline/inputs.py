"""A run's ``--input`` values as the match patterns the pipeline lists.

This is the one module that reads ``--input``:

* an existing path is taken literally, even if its name holds glob
  characters (``[``, ``*``, ``?``): a folder becomes ``folder/**`` (every
  file below it, recursively), a file (or a dangling symlink, a FIFO...:
  the run reports it as an error row) stays itself;
* anything else is a glob in Beam's syntax (``*`` within a folder, ``**``
  across folders) whose folder part must exist;
* local paths are absolute and escaped as ``transforms.files.escape_path``
  does (names that are not UTF-8 stay usable), literal glob characters as
  ``[*]``;
* the same pattern given twice is listed once (and a file several patterns
  match is classified once: ``transforms.read.MatchFiles``);
* an input that is the output folder, or inside it, is refused; an output
  inside an input is never listed (:func:`excluded`);
* :func:`unmatched` finds the inputs that match no file at all (a glob
  typo), which ``classify`` refuses unless ``--allow-empty``.
"""

from __future__ import annotations

import os
from typing import Sequence

from apache_beam.io.filesystems import FileSystems

from model_store.errors import ConfigError
from model_store.fs import is_uri, lies_in
from transforms.files import GLOB_CHARS, escape_glob, escape_path, list_pattern


def validated_pattern(path: str) -> str:
    """A user's ``--input`` as a match pattern; checks that it exists.

    On object stores (``gs://``, ``s3://``), a path that is not an object is
    read as a folder prefix.
    """
    if is_uri(path):
        if FileSystems.exists(path) and not path.endswith("/"):
            return escape_glob(path)
        if not _is_glob(path):
            return FileSystems.join(escape_glob(path.rstrip("/")), "**")
        return path
    if os.path.lexists(path):
        literal = escape_glob(escape_path(os.path.abspath(path)))
        return f"{literal.rstrip('/')}/**" if os.path.isdir(path) else literal
    if _is_glob(path):
        folder = os.path.dirname(_static_prefix(path)) or "."
        if not os.path.isdir(folder):
            raise ConfigError(f"input {escape_path(path)!r}: folder "
                              f"{escape_path(folder)!r} does not exist")
        return escape_path(os.path.abspath(path))
    raise ConfigError(f"input {escape_path(path)!r} does not exist (give a "
                      f"file, a folder or a glob such as 'images/**/*.png')")


def input_patterns(inputs: Sequence[str], output: str) -> list[str]:
    """Every ``--input`` as a pattern, once each, in order; refuses an input
    that is the output folder or lies inside it."""
    patterns = []
    for path in inputs:
        _check_not_in_output(path, output)
        pattern = validated_pattern(path)
        if pattern not in patterns:
            patterns.append(pattern)
    return patterns


def unmatched(inputs: Sequence[str], output: str) -> list[str]:
    """The ``inputs`` whose pattern matches nothing at all, output excluded.

    Cheap, and stops at the first hit: local patterns are listed as the run
    lists them until the first file (or what the run would report as an
    error row: an unreadable folder, a dangling symlink...); other
    filesystems are asked for one match (``FileSystems.match`` with a limit
    of 1). A pattern that matches nothing is listed whole once more (local)
    before the run is refused. With ``--skip-done`` "nothing" means the
    listing found no file, not that no file was new.
    """
    exclude = excluded(output)
    return [path for path in inputs
            if not _matches_any(validated_pattern(path), exclude)]


def _matches_any(pattern: str, exclude: Sequence[str]) -> bool:
    if is_uri(pattern):
        try:
            [first] = FileSystems.match([pattern], limits=[1])
        except Exception:  # noqa: BLE001 - the run reports it as an error row
            return True
        if not first.metadata_list:
            return False
        prefixes = tuple(f.rstrip("/") + "/" for f in exclude)
        if not first.metadata_list[0].path.startswith(prefixes):
            return True
        # The one hit is in the output: look further (rare).
    return next(iter(list_pattern(pattern, exclude=exclude)), None) is not None


def excluded(output: str) -> list[str]:
    """Folders the match never lists: the output (and so its staging)."""
    if is_uri(output):
        return [output.rstrip("/")]
    return [escape_path(os.path.abspath(output))]


def _is_glob(path: str) -> bool:
    return any(c in path for c in GLOB_CHARS)


def _static_prefix(pattern: str) -> str:
    """A glob up to its first glob character."""
    return pattern[:min(pattern.index(c) for c in GLOB_CHARS
                        if c in pattern)]


def _check_not_in_output(path: str, output: str) -> None:
    if is_uri(path):
        root = path.rstrip("/")
        if _is_glob(root):
            root = _static_prefix(root).rsplit("/", 1)[0]
    else:
        root = path if os.path.lexists(path) or not _is_glob(path) else (
            os.path.dirname(_static_prefix(path)) or ".")
    if lies_in(root, output):
        raise ConfigError(
            f"input {escape_path(path)!r} is the output folder or inside "
            f"it; give an --output outside the inputs (an output inside an "
            f"input folder is fine: it is never read)")
