"""The versioned model store.

Layout, under a root folder (by default ``model_store/models`` in this
package; ``$IMGCLASS_MODEL_STORE`` or ``--store`` choose another, which may be
any Beam filesystem such as ``gs://bucket/models``)::

    <root>/<name>/<version>/spec.json       the architecture (see spec.py)
    <root>/<name>/<version>/weights.npz     one array per parameter
    <root>/<name>/<version>/metadata.json   classes, preprocessing, training,
                                            metrics, sha256 of weights.npz
    <root>/<name>/aliases.json              NAME@ALIAS -> version (below)
    <root>/<name>/versions.json             the highest version number
                                            given: never given again
    <root>/<name>/.lock                     held while either file above is
                                            changed (local stores)

Versions are positive integers up to :data:`MAX_VERSION` written in ASCII
digits without leading zeros (``1``, ``12``; not ``01`` or full-width
digits); ``latest`` (or no version) is the highest. A folder of a model
that is not such a version is refused when that model is loaded, rather
than skipped.
A model is named ``NAME``, ``NAME@VERSION``, ``NAME@latest`` or by the path of
a version folder. Loading always verifies the weights' checksum and shapes.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import errno
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from typing import Any, Mapping, Optional

import numpy as np

from model_store import fs
from model_store.errors import (
    ChecksumMismatchError,
    ConfigError,
    DanglingAliasError,
    ImgclassError,
    ModelFileMissingError,
    ModelFileUnreadableError,
    ModelIntegrityError,
    SpecError,
    StoreReadError,
    StoreWriteError,
    UnknownModelError,
    check_text,
)
from model_store.preprocessing import Preprocessing, finite
from model_store.pretrained import SOURCE_KEY, weights_bytes

DEFAULT_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                            "models")
SPEC_FILE, WEIGHTS_FILE, METADATA_FILE = ("spec.json", "weights.npz",
                                          "metadata.json")
FORMAT = "imgclass-model/1"
STORE_VARIABLE = "IMGCLASS_MODEL_STORE"  # the store when --store is not given
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_NAME_LENGTH = 100  # well below the 255 bytes a file name may have
# ASCII only: str.isdigit() and int() also accept full-width digits ("１").
_VERSION = re.compile(r"[1-9][0-9]*")
# The highest version number: a short folder name, and digits int() reads
# (a number of 4301 digits is a ValueError there).
MAX_VERSION = 10 ** 9 - 1
_SHA256 = re.compile(r"[0-9a-f]{64}")
# The largest spec.json, metadata.json or aliases file read (the shipped ones
# are at most 21 kB; a million class names fit): a larger one is damaged,
# and is refused before it is read whole.
MAX_JSON_BYTES = 16 * 2**20
_SAVE_ATTEMPTS = 20  # versions tried when other saves take the next ones
# An .npz file is a zip archive (an empty one has only the end record).
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


def store_root(root: str | None = None) -> str:
    """The store in use: ``root``, else ``$IMGCLASS_MODEL_STORE``, else the
    folder shipped in this package; ConfigError (one line) for a URI whose
    filesystem is not installed (``gs://`` without the GCP extra)."""
    if root is not None:
        check_text("root", root, what="a string (None: the default store)")
    root = root or os.environ.get(STORE_VARIABLE) or DEFAULT_ROOT
    fs.check_filesystem(root, "--store" if root != os.environ.get(
        STORE_VARIABLE) else f"${STORE_VARIABLE}")
    return root


def _store_named(root: str) -> str:
    """The store in use, named in messages as the user chose it."""
    if root == os.environ.get(STORE_VARIABLE):
        return f"the store {fs.shown(root)} (from ${STORE_VARIABLE})"
    return f"--store {fs.shown(root)}"


def check_model_name(name: str) -> str:
    """``name`` if a new version may be saved under it (letters, digits,
    '.', '_', '-', not starting with '.', '_' or '-', at most
    :data:`MAX_NAME_LENGTH` characters), else ConfigError."""
    if isinstance(name, str) and len(name) > MAX_NAME_LENGTH:
        raise ConfigError(f"invalid model name {name[:20]!r}... of "
                          f"{len(name)} characters: use at most "
                          f"{MAX_NAME_LENGTH}")
    if not (isinstance(name, str) and _NAME.fullmatch(name)):
        raise ConfigError(f"invalid model name {name!r}: use letters, "
                          f"digits, '.', '_' or '-', starting with a letter "
                          f"or digit (no '@' or '/'), e.g. my-digits")
    return name


def check_new_version(name: str, root: str | None = None) -> str:
    """The store in use, once sure that :func:`save_model` can write a
    version of ``name`` there: ConfigError (one line) for an invalid name, a
    store that is a file or one that cannot be written; ModelIntegrityError
    for a damaged aliases or versions file, or a ``NAME`` that does not
    resolve (``latest`` pinned at a missing version, a folder that is not a
    version). Commands that create a version call it before any work
    (training, converting), so that they never save and then fail."""
    check_model_name(name)
    root = store_root(root)
    _check_writable(root, name)
    # Reads the aliases and versions files.
    _check_version_left(name, _next_version(name, root),
                        f"model {name} not saved")
    try:
        resolve(name, root=root)
    except UnknownModelError:
        pass  # no version yet: this is the first
    except DanglingAliasError:
        # latest names a deleted version: refused while versions are left
        # (promote one); with none left, the new version replaces it.
        if any(info.name == name for info in list_models(root)):
            raise
    return root


def _check_not_a_file(root: str) -> None:
    """ConfigError when the (local) store root is a file."""
    if not fs.is_uri(root) and os.path.exists(root) \
            and not os.path.isdir(root):
        raise ConfigError(f"{_store_named(root)} is a file, not a folder: "
                          f"give the store's folder (it is made if missing)")


def check_store_to_read(root: str | None = None) -> str:
    """The store in use, once sure it can be read from: ConfigError (one
    line) for a local store that is a file or does not exist (a mistyped
    ``--store`` would otherwise list and verify "no models", exit 0)."""
    root = store_root(root)
    _check_not_a_file(root)
    if not fs.is_uri(root) and not os.path.isdir(root):
        _check_links(root, root)
        raise ConfigError(f"{_store_named(root)} does not exist: give the "
                          f"folder of a model store")
    return root


def _check_links(root: str, path: str) -> None:
    """ConfigError (one line) when ``path``, or a folder above it, is a
    symbolic link whose target does not exist (an unmounted disk) or that
    loops: a store there could be neither read nor written."""
    path = os.path.abspath(path)
    while True:
        reason = fs.broken_link(path)
        if reason:
            raise ConfigError(f"{_store_named(root)} cannot be used: "
                              f"{fs.one_line(fs.printable(path))} is a "
                              f"symbolic link that {reason}")
        if os.path.dirname(path) == path:
            return
        path = os.path.dirname(path)


def _check_writable(root: str, name: str) -> None:
    """ConfigError unless a folder can be made in ``<root>/<name>`` (or, if
    that does not exist yet, in the nearest existing folder above it).
    Object stores are not probed."""
    if fs.is_uri(root):
        return
    _check_not_a_file(root)
    folder = os.path.abspath(os.path.join(root, name))
    _check_links(root, folder)
    while not os.path.exists(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    try:
        if not os.path.isdir(folder):
            raise NotADirectoryError(errno.ENOTDIR, "a file, not a folder")
        os.rmdir(tempfile.mkdtemp(prefix=".writable.", dir=folder))
    except OSError as error:
        raise ConfigError(f"{_store_named(root)} is not writable: "
                          f"{fs.shown(folder)}: {error.strerror or error}") \
            from None


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """A stored version, as listed (files not read beyond the metadata)."""
    name: str
    version: int
    location: str

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


@dataclasses.dataclass
class StoredModel:
    """A loaded, verified model version.

    Attributes:
        name: model name.
        version: version number.
        location: the version folder.
        metadata: the parsed ``metadata.json``.
        spec: the parsed ``spec.json``.
        weights: arrays keyed ``<layer>.<param>``.
    """
    name: str
    version: int
    location: str
    metadata: dict
    spec: dict
    weights: dict

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def class_names(self) -> list[str]:
        return list(self.metadata["class_names"])

    @property
    def weights_sha256(self) -> str:
        return self.metadata["weights_sha256"]

    @property
    def embedding_layer(self) -> Optional[str]:
        """The layer named ``"embedding_layer"`` in the metadata, or None:
        the input of the last dense layer (``layers.embedding_layer``)."""
        return self.metadata.get("embedding_layer")

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing.from_metadata(self.metadata)

    def build(self):
        """The network with these weights; its output layer."""
        from model_store.spec import build_network, set_weights
        network = build_network(self.spec, initialize=False)
        set_weights(network, self.weights,
                    source=fs.join(self.location, WEIGHTS_FILE))
        return network


# Reading and writing on local disks or any Beam filesystem --------------------

def _filesystems():
    from apache_beam.io.filesystems import FileSystems
    return FileSystems


def _read(path: str, max_bytes: int | None = None) -> bytes:
    try:  # a FIFO would block open() forever
        return fs.read_bytes(path, max_bytes)
    except fs.NotRegularError as error:
        raise ModelIntegrityError(f"{error}: replace it with the file, or "
                                  f"remove it") from None
    except FileNotFoundError:
        raise ModelFileMissingError(f"model file {fs.shown(path)} is "
                                    f"missing") from None
    except Exception as error:  # GCS's client raises NotFound when missing
        if not fs.is_store_error(error):
            raise
        if fs.is_uri(path) and _missing(path):
            raise ModelFileMissingError(
                f"model file {fs.shown(path)} is missing") from None
        raise ModelFileUnreadableError(
            f"model file {fs.shown(path)} cannot be read: "
            f"{_reason(error)}") from None


def _missing(path: str) -> bool:
    """Whether the object ``path`` is known not to exist (not when the
    store fails that look too)."""
    try:
        return not _filesystems().exists(path)
    except Exception as error:
        if not fs.is_store_error(error):
            raise
        return False


def _read_json(path: str) -> dict:
    """A JSON object; NaN and Infinity are refused (not JSON)."""
    def refuse(constant):
        raise ValueError(f"{constant} is not a JSON number")
    data = _read(path, MAX_JSON_BYTES)
    if len(data) > MAX_JSON_BYTES:
        raise ModelIntegrityError(
            f"{fs.shown(path)} is larger than {MAX_JSON_BYTES // 2**20} MiB,"
            f" the limit for a model's JSON file: it is damaged, restore it")
    try:
        value = json.loads(data, parse_constant=refuse)
    except (ValueError, UnicodeDecodeError) as error:
        raise ModelIntegrityError(f"{fs.shown(path)} is not valid JSON: "
                                  f"{_one_line(error)}") from None
    except RecursionError:
        raise ModelIntegrityError(f"{fs.shown(path)} nests JSON too deeply "
                                  f"to be a "
                                  f"model file") from None
    if not isinstance(value, dict):
        raise ModelIntegrityError(f"{fs.shown(path)} must hold a JSON "
                                  f"object, not a "
                                  f"{type(value).__name__}")
    return value


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _reason(error: BaseException) -> str:
    """A store error in one line: an OSError as it says itself (a failed
    listing as its first file's error), an object store client's error
    after its type (``ServiceUnavailable: 503 ...``)."""
    text = " ".join(fs.error_line(error).split())
    return text if isinstance(error, OSError) else \
        f"{type(error).__name__}: {text}"


@contextlib.contextmanager
def _listing(where: str):
    """Listing ``where`` (a folder, or a pattern on an object store): a
    store that fails it (a 503, no permission) raises StoreReadError."""
    try:
        yield
    except Exception as error:
        if not fs.is_store_error(error):
            raise
        raise StoreReadError(f"the model store cannot be listed "
                             f"({fs.shown(where)}): {_reason(error)}: "
                             f"run again once that is fixed") from None


def _match(pattern: str) -> list[str]:
    """:func:`fs.match`, failing as :func:`_listing` says."""
    with _listing(pattern):
        return fs.match(pattern)


def _listdir(folder: str) -> list[str]:
    """``os.listdir``, failing as :func:`_listing` says."""
    with _listing(folder):
        return os.listdir(folder)


def _list_folders(root: str) -> list[tuple[str, str, str]]:
    """(name, version folder name, folder) of every folder two levels below
    ``root`` whose name does not start with ``.`` (save_model's staging)."""
    found = []
    _check_not_a_file(root)
    if fs.is_uri(root):
        pattern = fs.join(root, "*", "*", METADATA_FILE)
        for path in _match(pattern):
            folder = fs.split(path)[0]
            name, version = folder.rstrip("/").split("/")[-2:]
            found.append((name, version, folder))
    elif os.path.isdir(root):
        for name in _listdir(root):
            model_dir = os.path.join(root, name)
            if not os.path.isdir(model_dir):
                continue
            for version in _listdir(model_dir):
                folder = os.path.join(model_dir, version)
                if os.path.isdir(folder):
                    found.append((name, version, folder))
    return [f for f in found if not f[1].startswith(".")
            and _NAME.fullmatch(f[0])]


def _list_versions(root: str) -> list[tuple[str, int, str]]:
    """(name, version, folder) of every version folder under ``root``."""
    return sorted((name, int(version), folder)
                  for name, version, folder in _list_folders(root)
                  if _is_version_name(version))


def _is_version_name(text: str) -> bool:
    """Whether ``text`` writes a version number (see :data:`MAX_VERSION`);
    its length is checked before ``int()`` reads it."""
    return bool(_VERSION.fullmatch(text)) and (
        len(text) <= len(str(MAX_VERSION)) and int(text) <= MAX_VERSION)


# Public API --------------------------------------------------------------------

def list_models(root: str | None = None) -> list[ModelInfo]:
    """Every stored version, sorted by name then version."""
    return [ModelInfo(n, v, f) for n, v, f in _list_versions(store_root(root))]


def parse_ref(ref: str) -> tuple[str, int | None]:
    """``NAME[@VERSION|@latest]`` -> ``(name, version or None)``."""
    name, at, version = ref.partition("@")
    if not _NAME.fullmatch(name):
        raise UnknownModelError(f"invalid model name {name!r}: use letters, "
                                f"digits, '.', '_' or '-', e.g. digits-cnn@1")
    if (not at) or version == "latest":
        return name, None
    if _VERSION.fullmatch(version) and not _is_version_name(version):
        shown = version if len(version) <= 20 else (
            f"{version[:20]}... ({len(version)} digits)")
        raise UnknownModelError(f"invalid model version {shown} of model "
                                f"{name!r}: versions go up to {MAX_VERSION}")
    if not _VERSION.fullmatch(version):
        raise UnknownModelError(f"invalid model version {version!r} in "
                                f"{ref!r}: use a positive integer written "
                                f"in ASCII digits without leading zeros "
                                f"(e.g. 1) or 'latest'")
    return name, int(version)


def looks_like_path(ref: str) -> bool:
    """Whether a model reference names a version folder rather than
    ``NAME[@VERSION]``."""
    return fs.is_uri(ref) or "/" in ref or os.sep in ref or ref.startswith(".")


def resolve(ref: str, *, root: str | None = None) -> ModelInfo:
    """Finds the version folder a reference names, without loading it."""
    check_text("ref", ref, what="a string: NAME, NAME@VERSION or a version folder")
    if looks_like_path(ref):
        fs.check_filesystem(ref, "model")
        folder = ref.rstrip("/") if fs.is_uri(ref) else os.path.abspath(ref)
        where = fs.join(folder, METADATA_FILE)
        metadata = _read_json(where)
        name = metadata.get("name", os.path.basename(os.path.dirname(folder)))
        version = metadata.get("version")
        if not (isinstance(name, str) and _NAME.fullmatch(name)):
            raise ModelIntegrityError(f"{where}: name must be a model name "
                                      f"(letters, digits, '.', '_', '-'), "
                                      f"got {name!r}")
        if not _is_version(version):
            raise ModelIntegrityError(f"{where}: version must be a positive "
                                      f"integer up to {MAX_VERSION}, got "
                                      f"{version!r:.40}")
        return ModelInfo(name, version, folder)
    root = store_root(root)
    name, version, alias = _parse_alias(ref, root)
    odd = sorted(v for n, v, _ in _list_folders(root)
                 if n == name and not _is_version_name(v))
    if odd:
        raise ModelIntegrityError(
            f"model {name!r} in {fs.shown(root)} has folder(s) "
            f"{', '.join(map(fs.shown, odd))} that "
            f"are not versions (positive integers up to {MAX_VERSION} in "
            f"ASCII digits without leading zeros, e.g. 1); rename or remove "
            f"them")
    versions = [info for info in list_models(root) if info.name == name]
    if version is None:
        version = read_aliases(name, root=root).get(LATEST)
        alias = LATEST if version is not None else None
    for info in versions:
        if info.version == version:
            return info
    if alias:
        raise _dangling(name, alias, version, versions, root)
    if not versions:
        known = sorted({info.name for info in list_models(root)})
        raise UnknownModelError(
            f"no model named {name!r} in the store {fs.shown(root)}; stored "
            f"models: "
            f"{', '.join(known) or 'none'} (see 'imgclass models list')")
    if version is None:
        return versions[-1]
    raise UnknownModelError(
        f"model {name!r} has no version {version} in {fs.shown(root)}; "
        f"versions: "
        f"{', '.join(str(i.version) for i in versions)}")


def _dangling(name: str, alias: str, version: int, versions: list,
              root: str) -> DanglingAliasError:
    """The error for an alias that points at a version not in the store (it
    never resolves to another model: version numbers are not reused)."""
    return DanglingAliasError(
        f"alias {name}@{alias} points at version {version}, but model "
        f"{name!r} has no version {version} in {fs.shown(root)} (versions: "
        f"{', '.join(str(i.version) for i in versions) or 'none'}): point "
        f"it at a stored version with 'imgclass models promote "
        f"{name}@VERSION --alias {alias}', or remove it from "
        f"{fs.join(root, name, ALIASES_FILE)}")


# Aliases -------------------------------------------------------------------------
#
# ``<root>/<name>/aliases.json`` maps alias names to versions, e.g.
# ``{"latest": 3, "prod": 2}``. ``NAME@ALIAS`` resolves through it. ``latest``
# is special: without an entry it is the highest version (so a store without
# aliases behaves as before); ``imgclass train`` pins it so that a new version
# is not picked up by ``--model NAME`` until it is promoted.

ALIASES_FILE = "aliases.json"
# ``<root>/<name>/versions.json``: ``{"highest": N}``, the highest version
# number ever given, so that a deleted version's number is not given again.
VERSIONS_FILE = "versions.json"
# ``<root>/<name>/.lock``: held (flock) while aliases.json or versions.json
# is read, changed and written back, so that two commands at once never
# lose each other's change. Local stores only: object stores have no locks.
LOCK_FILE = ".lock"
LATEST = "latest"
# fullmatch: '$' alone would take a trailing newline; as long as a name.
_ALIAS = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,%d}" % (MAX_NAME_LENGTH - 1))


def _parse_alias(ref: str,
                 root: str) -> tuple[str, int | None, str | None]:
    """``parse_ref``, plus ``NAME@ALIAS`` looked up in the aliases file:
    ``(name, version or None, the alias or None)``."""
    name, _, alias = ref.partition("@")
    if alias == LATEST or not _ALIAS.fullmatch(alias):
        return (*parse_ref(ref), None)
    parse_ref(name)  # validates the name
    aliases = read_aliases(name, root=root)
    if alias not in aliases:
        raise UnknownModelError(
            f"model {name!r} has no alias {alias!r} in {fs.shown(root)}; "
            f"aliases: "
            f"{', '.join(sorted(aliases)) or 'none'} (set one with "
            f"'imgclass models promote {name}@VERSION --alias {alias}')")
    return name, aliases[alias], alias


def read_aliases(name: str, *, root: str | None = None) -> dict[str, int]:
    """The aliases of model ``name`` (``{}`` when none are set).

    Raises:
        ModelIntegrityError: the aliases file is not a JSON object mapping
            alias names to version numbers (one line, naming the file).
    """
    path = fs.join(store_root(root), name, ALIASES_FILE)
    aliases = _read_optional_json(path) or {}
    for alias, version in aliases.items():
        if not (_ALIAS.fullmatch(alias) and _is_version(version)):
            raise ModelIntegrityError(
                f"{path} must map alias names to version numbers, e.g. "
                f"{{\"prod\": 2}} (a name: a letter, then letters, digits, "
                f"'_' or '-'; a number: 1 to {MAX_VERSION}); got "
                f"{alias!r:.40}: {version!r:.40}")
    return aliases


def _read_optional_json(path: str) -> dict | None:
    """:func:`_read_json`, or None when there is no such file. One that is
    there but cannot be read (a folder, no permission, an object store's
    503) is raised: taken for none, its aliases would be lost by the next
    change, or a version number given again."""
    try:
        return _read_json(path)
    except ModelFileUnreadableError:
        raise
    except ModelFileMissingError:
        if fs.is_uri(path) or not os.path.lexists(path):
            return None
        raise  # there, but cannot be followed (a dangling symlink)


def set_alias(name: str, alias: str, version: int, *,
              root: str | None = None) -> None:
    """Points ``NAME@alias`` at an existing version (see
    :func:`_update_aliases`). ConfigError, before anything is written, when
    the store cannot be written."""
    if not _ALIAS.fullmatch(alias):
        raise UnknownModelError(f"invalid alias {alias[:40]!r}: start with a "
                                f"letter, then letters, digits, '_' or '-', "
                                f"at most {MAX_NAME_LENGTH} in all")
    root = store_root(root)
    resolve(f"{name}@{version}", root=root)  # the version must exist
    _check_writable(root, name)
    _update_aliases(name, root, f"alias {name}@{alias} not set",
                    lambda aliases: aliases.update({alias: int(version)}))


def promote(ref: str, alias: str = "latest", *,
            root: str | None = None) -> StoredModel:
    """Points ``NAME@alias`` at the version ``ref`` names, once it loads
    (checksum, shapes, metadata that agrees with its folder): an alias
    never moves to a version that would not load. Returns that version."""
    info = version_in_store(ref, root=root)
    try:
        model = load_model(info.ref, root=root)
    except (ModelIntegrityError, ModelFileMissingError) as error:
        raise type(error)(f"alias {info.name}@{alias} not moved: "
                          f"{error}") from None
    set_alias(model.name, alias, model.version, root=root)
    return model


def _update_aliases(name: str, root: str, where: str, change) -> None:
    """Reads the aliases of ``name``, lets ``change`` edit the dict and
    writes it back, holding the model's lock (:data:`LOCK_FILE`) so that
    commands changing aliases at once each see the other's change (object
    stores have no lock: there the last write wins). The file is written
    aside and renamed, so readers see the old or the new file whole."""
    path = fs.join(root, name, ALIASES_FILE)
    with _model_locked(name, root, where):
        aliases = dict(read_aliases(name, root=root))
        before = dict(aliases)
        change(aliases)
        if aliases != before:
            with _writing(path, where):
                fs.write_atomic(path, _json_bytes(aliases))


@contextlib.contextmanager
def _model_locked(name: str, root: str, where: str):
    """Holds the lock of model ``name`` (see :data:`LOCK_FILE`); a lock
    file that cannot be made is a StoreWriteError starting with ``where``."""
    path = fs.join(root, name, LOCK_FILE)
    with contextlib.ExitStack() as stack:
        with _writing(path, where):
            stack.enter_context(fs.locked(path))
        yield


def version_in_store(ref: str, *, root: str | None = None) -> ModelInfo:
    """:func:`resolve`, refusing (ConfigError) a version folder given by
    path that is not this store's own ``<root>/<name>/<version>``: its
    ``NAME@VERSION`` here would be another model (or none)."""
    info = resolve(ref, root=root)
    if not looks_like_path(ref):
        return info
    root = store_root(root)
    own = fs.join(root, info.name, str(info.version))
    same = (own.rstrip("/") == info.location.rstrip("/")) if fs.is_uri(own) \
        else os.path.realpath(own) == os.path.realpath(info.location)
    if not same:
        raise ConfigError(
            f"{ref} is not a version folder of {_store_named(root)} (it "
            f"holds {info.ref}, whose folder there is {own}): give the "
            f"NAME@VERSION of a version in this store, or the --store that "
            f"holds the folder")
    return info


def save_version(network, *, name: str, metadata: Mapping[str, Any],
                 promote: bool, root: str | None = None):
    """Saves a network (trained, imported) as the next version of ``name``;
    it becomes what ``NAME`` and ``NAME@latest`` resolve to only if
    ``promote`` is true or it is the model's first version.

    ``latest`` is pinned to the current version *before* the new one is
    written, so that no reader ever sees an unpromoted version as latest.

    A ``latest`` left pointing at a deleted version when no version is
    stored any more is replaced by the new version (it is the first).

    Returns:
        ``(the saved model, whether it is now latest)``.
    """
    root = check_new_version(name, root)
    versions = [i.version for i in list_models(root) if i.name == name]
    with _reworded(f"model {name} not saved: {{}}"):
        if versions:
            _pin_latest(name, max(versions), root)
    model = save_model(network, name=name, metadata=metadata, root=root)
    with _reworded(f"saved {model.ref}, but {{}}"):
        if promote:
            set_alias(name, LATEST, model.version, root=root)
            return model, True
        # Listed again: another save of the same name may have run
        # meanwhile (two first trainings at once); only the lowest version
        # is "first".
        earlier = [i.version for i in list_models(root)
                   if i.name == name and i.version < model.version]
        _pin_latest(name, max(earlier, default=model.version), root)
    return model, not earlier


def _pin_latest(name: str, version: int, root: str) -> None:
    """Points ``latest`` at ``version`` unless it names a stored version
    (checked and written holding the model's lock: a promote at the same
    moment is neither lost nor undone)."""
    def pin(aliases):
        stored = {i.version for i in list_models(root) if i.name == name}
        if aliases.get(LATEST) not in stored:
            aliases[LATEST] = version
    _update_aliases(name, root, f"alias {name}@{LATEST} not set", pin)


@contextlib.contextmanager
def _reworded(template: str):
    """A StoreWriteError in the block, its message put in ``template``."""
    try:
        yield
    except StoreWriteError as error:
        raise StoreWriteError(template.format(error)) from None


def load_model(ref: str, *, root: str | None = None) -> StoredModel:
    """Loads and verifies a model version.

    Args:
        ref: ``NAME``, ``NAME@VERSION``, ``NAME@latest`` or a folder path.
        root: the store; see :func:`store_root`.

    Raises:
        UnknownModelError: no such model or version.
        ModelFileMissingError: a file of the version is missing.
        ChecksumMismatchError: ``weights.npz`` differs from its sha256.
        WeightShapeError: a weight array does not fit the spec.
    """
    from model_store.spec import build_network

    info = resolve(ref, root=root)
    where = fs.join(info.location, METADATA_FILE)
    metadata = _read_json(where)
    _check_metadata_types(metadata, where)
    for key, value in (("name", info.name), ("version", info.version)):
        if key in metadata and (type(metadata[key]) is not type(value)
                                or metadata[key] != value):
            raise ModelIntegrityError(
                f"{where}: {key} {metadata[key]!r:.100} differs from the "
                f"folder's {value!r} (a version folder copied or renamed?)")
    spec = _read_json(fs.join(info.location, SPEC_FILE))
    # Checks the spec, its sizes included, before the weights are read.
    network = build_network(spec, initialize=False)
    weights_path = fs.join(info.location, WEIGHTS_FILE)
    data = _weights_data(weights_path, metadata, spec, network)
    return _checked_model(info, metadata, spec, network, data, where=where,
                          weights_path=weights_path)


def _checked_model(info: ModelInfo, metadata: dict, spec: dict, network,
                   data: bytes, *, where: str,
                   weights_path: str) -> StoredModel:
    """The model whose files are ``metadata`` (already through
    :func:`_check_metadata_types`), ``spec`` (``network`` built from it) and
    ``data`` (the bytes of ``weights.npz``), once the checksum, the archive,
    the weights' shapes and the metadata agree; else ModelIntegrityError
    naming ``where`` (metadata) or ``weights_path``. Used on loading and,
    before anything is written, on saving."""
    from model_store.layers import get_param_shapes
    from model_store.spec import check_probabilities, set_weights, weights_from_bytes

    try:
        check_probabilities(spec)
    except SpecError as error:
        raise ModelIntegrityError(f"model {info.ref}: {error}") from None
    digest = hashlib.sha256(data).hexdigest()
    expected = metadata.get("weights_sha256")
    if digest != expected:
        raise ChecksumMismatchError(
            f"model {info.ref}: {weights_path} has sha256 {digest[:12]}... "
            f"but metadata.json records {str(expected)[:12]}...; the file "
            f"was changed or damaged, restore it or save a new version")
    if not data.startswith(_ZIP_MAGIC):
        raise ModelIntegrityError(
            f"model {info.ref}: {weights_path} is not an .npz archive (a "
            f"single .npy array, or another format?); save the model with "
            f"imgclass so that it holds one array per parameter")
    model = StoredModel(info.name, info.version, info.location, metadata,
                        spec, weights_from_bytes(
                            data, source=weights_path,
                            shapes=get_param_shapes(network)))
    _check_metadata(model, where)
    set_weights(network, model.weights, source=weights_path)  # checks shapes
    if network.output_shape[-1] != len(model.class_names):
        raise ModelIntegrityError(
            f"{where}: the network has {network.output_shape[-1]} outputs "
            f"but class_names has {len(model.class_names)} names")
    _check_named_embedding_layer(model, network, where)
    return model


def _check_named_embedding_layer(model: StoredModel, network,
                                 where: str) -> None:
    """An ``embedding_layer`` the metadata names must be in the network
    (otherwise ``--embeddings`` is refused only when a run asks for it)."""
    from model_store.layers import embedding_layer

    if model.embedding_layer is None:
        return
    try:
        embedding_layer(network, model.embedding_layer)
    except SpecError as error:
        raise ModelIntegrityError(f"{where}: {error}") from None


def _weights_data(path: str, metadata: dict, spec: dict, network) -> bytes:
    """The bytes of ``weights.npz``; for a version whose metadata names a
    ``weights_source`` and that has no such file, converted from the
    installed package (see :mod:`model_store.pretrained`). A file larger
    than the parameters of ``network`` can take is refused without being
    read whole."""
    from model_store.layers import get_param_shapes
    from model_store.spec import MAX_NPY_HEADER_BYTES

    # At most 8 bytes a value, a header and zip records an array, and a
    # margin for deflate's worst case.
    limit = 2**20 + sum(math.prod(shape) * 8 * 1.01 + MAX_NPY_HEADER_BYTES
                        + 2**16 for shape in get_param_shapes(network).values())
    try:
        data = _read(path, int(limit))
        if len(data) > limit:
            raise ModelIntegrityError(
                f"{fs.shown(path)} is larger than the {int(limit):,} bytes "
                f"the spec's parameters can take: it is damaged, restore it "
                f"or save a new version")
        return data
    except ModelFileUnreadableError:
        raise  # there: not converted again
    except ModelFileMissingError:
        if SOURCE_KEY not in metadata:
            raise
    return weights_bytes(metadata, spec, where=path)


def verify(ref: str | None = None, *,
           root: str | None = None) -> list[tuple[str, ImgclassError | None]]:
    """Verifies one model (or every stored version): ``[(ref, error)]``.
    Checking the whole store also reports, as ``(NAME, error)``, a model
    that its name does not resolve (a damaged aliases file, a folder that is
    not a version) or whose versions file is damaged, and as
    ``(NAME@ALIAS, error)`` each alias that names a version not stored
    (also of a model whose versions were all deleted), and as ``(FOLDER,
    error)`` each of :func:`ignored_folders`. A ``ref`` that names
    no stored model or version raises UnknownModelError; one that does not
    name a version (``NAME``, ``NAME@ALIAS``, a path) is reported as
    ``REF -> NAME@V``, the version checked."""
    results: list[tuple[str, ImgclassError | None]] = []
    if ref is not None:
        refs = [ref]
    else:
        infos = list_models(root)
        for name in model_names(root):
            results.extend(_name_failures(name, store_root(root)))
        results.extend((fs.shown(folder), ModelIntegrityError(why))
                       for folder, why in ignored_folders(root))
        refs = [info.ref for info in infos]
    for item in refs:
        try:
            model = load_model(item, root=root)
            results.append((item if item == model.ref
                            else f"{item} -> {model.ref}", None))
        except UnknownModelError as error:
            if ref is not None:
                raise  # a name or version typed wrong: a mistake, not a check
            results.append((item, error))
        except ImgclassError as error:
            results.append((item, error))
    return results


def model_names(root: str | None = None) -> list[str]:
    """Every model name with a version or an aliases file in the store (a
    model whose versions were all deleted keeps its aliases file)."""
    root = store_root(root)
    names = {info.name for info in list_models(root)}
    if fs.is_uri(root):
        names.update(fs.split(fs.split(path)[0])[1] for path in
                     _match(fs.join(root, "*", ALIASES_FILE)))
    elif os.path.isdir(root):
        names.update(name for name in _listdir(root) if os.path.lexists(
            os.path.join(root, name, ALIASES_FILE)))
    return sorted(name for name in names if _NAME.fullmatch(name))


def ignored_folders(root: str | None = None) -> list[tuple[str, str]]:
    """``(folder, why)`` for each folder of the store that holds nothing
    the store sees, e.g. a model folder copied in by hand under another
    name: a folder whose name is not a model name; in a folder that is no
    model (no version, aliases or versions file), each folder whose name is
    not a version, and the folder itself when it holds a version's files
    (``metadata.json``). ``why`` says how to fix it. Names starting with
    ``.`` (hidden, or a save's staging) are skipped, as are folders that
    hold nothing of a model. A model with versions and a folder that is not
    one is not listed here: loading it fails (see :func:`resolve`)."""
    root = store_root(root)
    _check_not_a_file(root)
    models = set(model_names(root))
    ignored = []
    for name, (subfolders, files) in sorted(_store_tree(root).items()):
        folder = fs.join(root, name)
        if not _NAME.fullmatch(name):
            ignored.append((folder, "not a model name (letters, digits, "
                            "'.', '_' or '-', starting with a letter or "
                            "digit), so the store ignores it: rename it"))
        elif name not in models and VERSIONS_FILE not in files:
            ignored.extend(
                (fs.join(folder, version),
                 f"not a version (a positive integer up to {MAX_VERSION} in "
                 f"ASCII digits without leading zeros, e.g. 1), so the "
                 f"store ignores it: rename it")
                for version in sorted(subfolders))
            if METADATA_FILE in files:
                ignored.append((folder, f"holds a version's files "
                                f"({METADATA_FILE}) but no version folder, "
                                f"so the store ignores it: move them into "
                                f"{fs.shown(fs.join(folder, '1'))}"))
    return ignored


def _store_tree(root: str) -> dict[str, tuple[set[str], set[str]]]:
    """``{name: (its folders, which of metadata.json and versions.json it
    holds)}`` for every folder of the store root; names starting with
    ``.`` are left out at both levels. On an object store only folders
    holding one of those files, or a version folder with a metadata.json,
    are seen."""
    tree: dict[str, tuple[set[str], set[str]]] = {}
    if fs.is_uri(root):
        for path in _match(fs.join(root, "*", "*", METADATA_FILE)):
            name, version = fs.split(path)[0].rstrip("/").split("/")[-2:]
            tree.setdefault(name, (set(), set()))[0].add(version)
        for file in (METADATA_FILE, VERSIONS_FILE):
            for path in _match(fs.join(root, "*", file)):
                name = fs.split(fs.split(path)[0])[1]
                tree.setdefault(name, (set(), set()))[1].add(file)
    elif os.path.isdir(root):
        for name in _listdir(root):
            folder = os.path.join(root, name)
            if os.path.isdir(folder):
                entries = _listdir(folder)
                tree[name] = (
                    {entry for entry in entries
                     if os.path.isdir(os.path.join(folder, entry))},
                    {METADATA_FILE, VERSIONS_FILE} & set(entries))
    return {name: ({v for v in folders if not v.startswith(".")}, files)
            for name, (folders, files) in tree.items()
            if not name.startswith(".")}


def _name_failures(name: str, root: str) -> list[tuple[str, ImgclassError]]:
    """What :func:`verify` reports about model ``name`` as a whole: its
    store files, what ``NAME`` resolves to (``latest``) and every other
    alias."""
    failures: list[tuple[str, ImgclassError]] = []
    try:
        aliases = read_aliases(name, root=root)
        _highest_given(name, root)
        resolve(name, root=root)
    except UnknownModelError:
        pass  # no version and no latest: only other aliases to check
    except DanglingAliasError as error:
        failures.append((name, error))
    except ImgclassError as error:
        return [(name, error)]  # damaged files, folders that are not versions
    for alias in sorted(set(aliases) - {LATEST}):
        try:
            resolve(f"{name}@{alias}", root=root)
        except ImgclassError as error:
            failures.append((f"{name}@{alias}", error))
    return failures


def save_model(network, *, name: str, metadata: Mapping[str, Any],
               root: str | None = None) -> StoredModel:
    """Saves a network as the next version of ``name``.

    Every check :func:`load_model` makes is made on the files in memory
    first, and weights holding NaN or infinity are refused: a bad version is
    never written. Two saves of the same model at once get two versions.

    Args:
        network: output layer of the trained network.
        name: model name (see :func:`check_model_name`).
        metadata: everything but name, version, creation time, file names and
            checksum, which are filled in here; must hold ``class_names``
            and the preprocessing keys (see :class:`Preprocessing`).
        root: the store; see :func:`store_root`.

    Returns:
        The saved version, loaded back and verified.

    Raises:
        ConfigError: an invalid name, a store that is a file or cannot be
            written, or files that would not load (bad metadata, weights
            that are not finite); nothing is written then.
    """
    from model_store.spec import spec_of, weights_to_bytes

    root = check_new_version(name, root)
    weights = weights_to_bytes(network)
    spec = spec_of(network)
    full = dict(metadata)
    full.update(
        format=FORMAT, name=name, version=_next_version(name, root),
        created_at=datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"),
        spec_file=SPEC_FILE, weights_file=WEIGHTS_FILE,
        weights_sha256=hashlib.sha256(weights).hexdigest())
    where = f"model {name} not saved"
    _check_new_files(full, spec, weights, where=where)
    files = {SPEC_FILE: _within_limit(
        _json_bytes(spec), SPEC_FILE, where, lambda: f"{len(spec['layers']):,} "
        f"layers: give them shorter names"), WEIGHTS_FILE: weights}
    for _ in range(_SAVE_ATTEMPTS):
        files[METADATA_FILE] = _metadata_bytes(full, where)
        _record_version(name, full["version"], root, where)
        info = ModelInfo(name, full["version"],
                         fs.join(root, name, str(full["version"])))
        if _write_version(info, files, where):
            return load_model(info.ref, root=root)
        # Another save took this version first: take the next one.
        full["version"] = max(full["version"] + 1, _next_version(name, root))
    raise ImgclassError(f"{where}: {_SAVE_ATTEMPTS} other saves took the "
                        f"next version first; try again")


def _next_version(name: str, root: str) -> int:
    """One above every number ``name`` has used: its versions, those its
    aliases name and the highest ever given (:data:`VERSIONS_FILE`), so
    that the number of a deleted version is never given again (an alias
    or a record naming it would silently mean another model)."""
    used = [i.version for i in list_models(root) if i.name == name]
    used += read_aliases(name, root=root).values()
    return max(used + [_highest_given(name, root)]) + 1


def _highest_given(name: str, root: str) -> int:
    """The highest version number ``name`` was given (0: none recorded)."""
    path = fs.join(root, name, VERSIONS_FILE)
    record = _read_optional_json(path)
    if record is None:
        return 0
    if not (record.keys() == {"highest"}
            and _is_version(record["highest"])):
        raise ModelIntegrityError(
            f"{path} must hold {{\"highest\": N}}, the highest version "
            f"number ever given (at most {MAX_VERSION}): fix it, or remove "
            f"it (numbers then continue after the highest version stored)")
    return record["highest"]


def _record_version(name: str, version: int, root: str, where: str) -> None:
    """Records ``version`` as given before its folder is written: a save
    that then fails leaves the number unused, never reused. The record
    only grows, also when saves record at once (the model's lock is held
    from reading to writing it)."""
    _check_version_left(name, version, where)
    with _model_locked(name, root, where):
        if version > _highest_given(name, root):
            path = fs.join(root, name, VERSIONS_FILE)
            with _writing(path, where):
                fs.write_atomic(path, _json_bytes({"highest": version}))


def _check_version_left(name: str, version: int, where: str) -> None:
    """ConfigError when ``version`` is above :data:`MAX_VERSION`."""
    if version > MAX_VERSION:
        raise ConfigError(f"{where}: model {name} has used every version "
                          f"number up to {MAX_VERSION}; save it under "
                          f"another name")


def _check_new_files(metadata: dict, spec: dict, weights: bytes, *,
                     where: str) -> None:
    """The checks of :func:`load_model` on a version's files before they
    are written, plus finite weights; ConfigError (one line, starting with
    ``where``) for the first that fails."""
    from model_store.spec import build_network

    try:
        _check_metadata_types(metadata, where)
        network = build_network(spec, initialize=False)
        model = _checked_model(
            ModelInfo(metadata["name"], metadata["version"], where),
            metadata, spec, network, weights, where=where, weights_path=where)
    except (ModelIntegrityError, SpecError) as error:
        raise ConfigError(str(error)) from None
    bad = sorted(key for key, array in model.weights.items()
                 if not np.isfinite(array).all())
    if bad:
        raise ConfigError(f"{where}: parameter(s) {', '.join(bad)} hold NaN "
                          f"or infinity (did training diverge? try a smaller "
                          f"--lr)")


def _metadata_bytes(metadata: dict, where: str) -> bytes:
    """``metadata.json``; ConfigError when a value is NaN or infinite (not
    JSON) or when it is larger than :data:`MAX_JSON_BYTES`: the version
    would not load."""
    try:
        data = _json_bytes(metadata)
    except ValueError:
        raise ConfigError(f"{where}: metadata {_non_finite(metadata)} is "
                          f"NaN or infinite, which JSON cannot hold") from None
    return _within_limit(data, METADATA_FILE, where, lambda: (
        f"most of it is its {_largest_key(metadata)}: make that smaller"))


def _largest_key(metadata: dict) -> str:
    return max(metadata, key=lambda key: len(_json_bytes(metadata[key])))


def _within_limit(data: bytes, file: str, where: str, cause) -> bytes:
    """``data``, the version's JSON ``file``, unless it is larger than
    :data:`MAX_JSON_BYTES` (the version would not load): ConfigError
    naming ``cause()`` (worked out only then)."""
    if len(data) > MAX_JSON_BYTES:
        raise ConfigError(
            f"{where}: its {file} would be {len(data):,} bytes, more than "
            f"the {MAX_JSON_BYTES:,} a model's JSON file may hold "
            f"({cause()})")
    return data


def _non_finite(value, path: str = "") -> str | None:
    """Where in ``value`` (a JSON-like tree) the first NaN or infinity is,
    e.g. ``training.history[2].loss``."""
    if isinstance(value, float) and not math.isfinite(value):
        return path or "value"
    if isinstance(value, dict):
        steps = ((f"{path}.{k}" if path else str(k), v)
                 for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        steps = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    else:
        steps = ()
    for where, item in steps:
        found = _non_finite(item, where)
        if found:
            return found
    return None


# The lists of saves_recorded() blocks running now.
_recorders: list[list[ModelInfo]] = []


@contextlib.contextmanager
def saves_recorded():
    """Yields a list that gets the :class:`ModelInfo` of each version this
    process saves while the block runs, as soon as its folder is in place
    (before it is loaded back and ``latest`` pinned or moved), also when a
    stop (KeyboardInterrupt) comes right after: what a command stopped
    after saving names."""
    saved: list[ModelInfo] = []
    _recorders.append(saved)
    try:
        yield saved
    finally:
        _recorders.remove(saved)


def _note_saved(info: ModelInfo) -> None:
    for saved in _recorders:
        if info not in saved:
            saved.append(info)


def _write_version(info: ModelInfo, files: dict[str, bytes],
                   where: str) -> bool:
    """Writes the version folder ``info.location`` whole; False (nothing
    written) when another save made that folder first. On local disks the
    files are written in a hidden folder that is renamed, so a version
    appears whole or not. An OSError (a full disk) is a StoreWriteError
    starting with ``where`` and naming the file; nothing is left behind.
    The version is noted (:func:`saves_recorded`) once in place."""
    folder = info.location
    if fs.is_uri(folder):
        return _write_objects(info, files, where)
    model_dir, version = os.path.split(folder)
    target, staging = model_dir, None
    try:
        os.makedirs(model_dir, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=f".{version}.", dir=model_dir)
        os.chmod(staging, 0o755)  # mkdtemp makes it private to the owner
        for file_name, data in files.items():
            target = os.path.join(folder, file_name)
            _create(os.path.join(staging, file_name), data)
        target = folder
        os.rename(staging, folder)
        _note_saved(info)
        return True
    except BaseException as error:
        if staging and not os.path.lexists(staging):
            _note_saved(info)  # renamed into place, then a stop came
            raise
        if staging:
            shutil.rmtree(staging, ignore_errors=True)
        if not isinstance(error, OSError):
            raise
        if target == folder and error.errno in (errno.ENOTEMPTY,
                                                errno.EEXIST):
            return False
        raise _write_error(target, error, where) from None


def _write_objects(info: ModelInfo, files: dict[str, bytes],
                   where: str) -> bool:
    """:func:`_write_version` on an object store: ``metadata.json`` last,
    as it marks a version done; the objects written are deleted again when
    one fails."""
    written = []
    for file_name, data in files.items():
        target = fs.join(info.location, file_name)
        try:
            _create(target, data)
        except Exception as error:
            if not fs.is_store_error(error):
                raise
            with contextlib.suppress(Exception):
                _filesystems().delete(written)
            raise _write_error(target, error, where) from None
        written.append(target)
    _note_saved(info)
    return True


def _create(path: str, data: bytes) -> None:
    """Writes the file ``path`` (local, or any Beam filesystem)."""
    if fs.is_uri(path):
        fs.create(path, data)
        return
    with open(path, "wb") as handle:
        handle.write(data)


def _write_error(path: str, error: Exception, where: str) -> StoreWriteError:
    reason = getattr(error, "strerror", None) or _reason(error)
    return StoreWriteError(f"{where}: cannot write {fs.printable(path)}: "
                           f"{reason}")


@contextlib.contextmanager
def _writing(path: str, where: str):
    """A store error (``fs.is_store_error``) in the block becomes a
    StoreWriteError (one line: what was not done, the file, the reason)."""
    try:
        yield
    except Exception as error:
        if not fs.is_store_error(error):
            raise
        raise _write_error(path, error, where) from None


def update_metadata(model: StoredModel, **updates) -> StoredModel:
    """Adds keys (e.g. evaluation metrics) to a stored version's metadata."""
    metadata = dict(model.metadata, **updates)
    path = fs.join(model.location, METADATA_FILE)
    with _writing(path, f"metadata of {model.ref} not updated"):
        fs.write_atomic(path, _json_bytes(metadata))
    model.metadata = metadata
    return model


def _json_bytes(value) -> bytes:
    """JSON as the store writes it; ValueError for NaN or infinity."""
    return fs.json_bytes(value, sort_keys=True, allow_nan=False)


def _is_positive_int(value) -> bool:
    return type(value) is int and value >= 1


def _is_version(value) -> bool:
    """Whether a JSON value is a version number (see :data:`MAX_VERSION`)."""
    return _is_positive_int(value) and value <= MAX_VERSION


def _is_number(value) -> bool:
    """A finite JSON number (:func:`finite`)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and finite(value))


def _check_metadata_types(metadata: dict, where: str) -> None:
    """Refuses metadata whose values have the wrong JSON type, before any of
    them is used (one line, ModelIntegrityError)."""
    def fail(what: str, value):
        raise ModelIntegrityError(f"{where}: {what}, got {value!r:.200}")

    classes = metadata.get("class_names")
    if not (isinstance(classes, list) and classes):
        fail("class_names must be a non-empty list of strings", classes)
    for name in classes:
        if not isinstance(name, str) or not name:
            fail("every class name must be a non-empty string", name)
    duplicates = sorted(c for c, n in collections.Counter(classes).items()
                        if n > 1)
    if duplicates:
        fail("class names must differ", duplicates)
    shape = metadata.get("input_shape")
    if not (isinstance(shape, list) and len(shape) == 3
            and all(_is_positive_int(n) for n in shape)):
        fail("input_shape must be three positive integers", shape)
    for key in ("color_mode", "resize", "weights_sha256"):
        if not isinstance(metadata.get(key), str):
            fail(f"{key} must be a string", metadata.get(key))
    if not _SHA256.fullmatch(metadata["weights_sha256"]):
        fail("weights_sha256 must be 64 lower-case hex digits",
             metadata["weights_sha256"])
    norm = metadata.get("normalization")
    if not isinstance(norm, dict):
        fail("normalization must be an object with mean and std", norm)
    for key in ("mean", "std"):
        values = norm.get(key)
        if not (isinstance(values, list) and values
                and all(_is_number(v) for v in values)):
            fail(f"normalization {key} must be a list of finite numbers",
                 values)
    crop = metadata.get("crop")
    if crop is not None and not (isinstance(crop, list)
                                 and all(_is_positive_int(n) for n in crop)):
        fail("crop must be a list of positive integers (height, width)", crop)
    source = metadata.get(SOURCE_KEY, {})
    if not (isinstance(source, dict)
            and all(isinstance(v, str) for v in source.values())):
        fail(f"{SOURCE_KEY} must be an object of strings (package, version, "
             f"file, format, sha256)", source)
    for key in ("metrics", "training"):
        if not isinstance(metadata.get(key, {}), dict):
            fail(f"{key} must be an object", metadata[key])
    accuracy = metadata.get("metrics", {}).get("accuracy")
    if accuracy is not None and not _is_number(accuracy):
        fail("metrics accuracy must be a finite number", accuracy)
    background = metadata.get("background", 0)
    if not (type(background) is int and 0 <= background <= 255):
        fail("background must be a gray level, an integer from 0 to 255",
             background)


def _check_metadata(model: StoredModel, where: str) -> None:
    for key in ("class_names", "input_shape", "color_mode", "resize",
                "normalization", "weights_sha256"):
        if key not in model.metadata:
            raise ModelIntegrityError(f"{where}: key {key!r} is missing")
    if list(model.metadata["input_shape"]) != list(model.spec["input_shape"]):
        raise ModelIntegrityError(
            f"{where}: input_shape {model.metadata['input_shape']} differs "
            f"from the spec's {model.spec['input_shape']}")
    try:
        Preprocessing.from_metadata(model.metadata)
    except ValueError as error:
        raise ModelIntegrityError(f"{where}: {error}") from None
    classes = model.metadata["class_names"]
    if not isinstance(classes, list) or not all(isinstance(c, str)
                                                for c in classes):
        raise ModelIntegrityError(f"{where}: class_names must be a list of "
                                  f"strings")
