"""Labelled image folders: one sub-folder per class, like Keras'
``image_dataset_from_directory`` and torchvision's ``ImageFolder``.

::

    PATH/cat/0001.jpg
    PATH/cat/2023/holiday/0002.png      nested folders belong to their class
    PATH/dog/0003.jpg

The class names are the sub-folder names, sorted (class id = position).
``PATH`` may be local or on any Beam filesystem; local folders are listed
as ``classify`` lists its inputs (:func:`transforms.files.list_pattern`):
symlinked folders are followed, a symlink loop is not. Files whose name
starts with ``.`` are ignored (``.DS_Store``, editors' temporary files). Images are
decoded and preprocessed by the pipeline's own code
(:func:`model_store.images.decode_image` and the model's
:class:`~model_store.preprocessing.Preprocessing`), so that training,
evaluation and ``classify`` see the same pixels. A file that cannot be read or
decoded is listed in ``broken`` and left out; it never stops the work.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import numpy as np
from PIL import Image

from model_store.errors import ConfigError
from model_store.fs import escape_path, is_uri, join, one_line, os_path, printable, shown
from model_store.images import DEFAULT_MAX_PIXELS, decode_image
from model_store.preprocessing import Preprocessing

VAL_FRACTION = 0.2
SPLIT_SEED = 20240611
MIN_PER_CLASS = 2
MIN_CLASSES = 2
NAMES_SHOWN = 5  # class names a message lists before "... (N classes)"


@dataclasses.dataclass(frozen=True)
class ImageFile:
    """A listed file: where it is and what identifies this version of it."""
    path: str
    size: int
    mtime: float
    label: int
    unreadable: str = ""  # why listing it failed (a dangling symlink...)


@dataclasses.dataclass(frozen=True)
class FolderDataset:
    """The files of an image folder and their classes (not yet decoded)."""
    root: str
    files: list
    class_names: list

    @property
    def labels(self) -> np.ndarray:
        return np.array([f.label for f in self.files], dtype=np.int32)

    def subset(self, indices) -> "FolderDataset":
        return dataclasses.replace(self, files=[self.files[i]
                                                for i in indices])

    def name_of(self, item: ImageFile) -> str:
        """``item``'s path below the root (``class/.../file``): what its
        augmentation is seeded with, so that the same folder trains the
        same model wherever it lies."""
        return "/".join(_relative_parts(self.root, item.path))


def _filesystems():
    from apache_beam.io.filesystems import FileSystems
    return FileSystems


def _relative_parts(root: str, path: str) -> list[str]:
    """``path``'s names below ``root``, split at the separators of where
    it lies: a URI's ``/``, the system's for a local path (``AC\\DC`` is
    one folder on Linux; it was taken for a class ``AC``)."""
    sep = "/" if is_uri(root) else os.sep
    if not is_uri(root) and os.altsep:  # Windows: "/" is "\\" too
        root, path = (p.replace(os.altsep, sep) for p in (root, path))
    prefix = root.rstrip(sep) + sep
    return path[len(prefix):].split(sep)


def scan_folder(root: str) -> FolderDataset:
    """Lists ``root``'s class folders and their files. A local sub-folder
    without image files is a class with no file (so that the class ids stay
    those of the folder names); object stores have no empty folders.

    Raises:
        ConfigError: ``root`` holds no file, a file lies directly in
            ``root`` (not one folder per class), a class folder's name is
            not valid UTF-8, a class folder is another one (or lies in
            it) through a symlink, or one file is in two class folders.
    """
    root = folder_root(root)
    by_class: dict[str, list] = {name: [] for name in _local_folders(root)}
    for listed in sorted(_list_files(root), key=lambda f: f.path):
        parts = _relative_parts(root, listed.path)
        if any(part.startswith(".") for part in parts):
            continue
        if len(parts) < 2:
            if listed.unreadable:
                raise ConfigError(f"{shown(listed.path)}: "
                                  f"{listed.unreadable}")
            raise ConfigError(
                f"{shown(listed.path)} lies directly in {shown(root)}: a "
                f"folder dataset has one sub-folder per class (e.g. "
                f"{shown(root)}/cat/1.jpg, {shown(root)}/dog/2.jpg); move "
                f"it into its class folder")
        by_class.setdefault(parts[0], []).append(listed)
    if not by_class:
        raise ConfigError(f"{shown(root)} holds no files: a folder dataset "
                          f"has one sub-folder of images per class")
    names = sorted(by_class)
    _check_names(root, names)
    _check_distinct(root, names)
    _check_files_distinct(root, names, by_class)
    files = [dataclasses.replace(f, label=label)
             for label, name in enumerate(names) for f in by_class[name]]
    return FolderDataset(root, files, names)


def folder_root(root: str) -> str:
    """A dataset folder as recorded and listed: local paths absolute, no
    trailing separator (``.`` or ``photos/`` would mean nothing later)."""
    if not is_uri(root):  # abspath drops a trailing separator ("\\" is a
        # character of a name on Linux, not one to strip)
        return os.path.abspath(root)
    return root.rstrip("/") or "/"


def _list_files(root: str) -> list:
    """Every file below ``root`` as an :class:`ImageFile` of label -1; what
    cannot be listed (a dangling symlink, an unreadable folder, a symlink
    loop) with the reason in ``unreadable``."""
    if not is_uri(root):
        return _list_local(root)
    fs = _filesystems()
    try:
        found = fs.match([fs.join(root, "**")])[0].metadata_list
    except Exception as error:  # Beam raises its own types per filesystem
        raise ConfigError(f"cannot list {shown(root)}: "
                          f"{str(error).splitlines()[0]}") from None
    return [ImageFile(m.path, int(m.size_in_bytes),
                      float(m.last_updated_in_seconds or 0.0), -1)
            for m in found]


def _list_local(root: str) -> list:
    from transforms.files import ListingError, escape_glob, list_pattern

    if not os.path.isdir(root):
        what = "does not exist" if not os.path.lexists(root) else \
            "is not a folder"
        raise ConfigError(f"{shown(root)} {what}: give a folder with one "
                          f"sub-folder of images per class")
    files = []
    for listed in list_pattern(escape_glob(escape_path(root)) + "/**"):
        path = os_path(listed.path)
        if not isinstance(listed, ListingError):
            files.append(ImageFile(path, int(listed.size_in_bytes),
                                   float(listed.last_updated_in_seconds), -1))
        elif path == root:
            raise ConfigError(f"cannot list {shown(root)}: "
                              f"{listed.message}")
        else:
            files.append(ImageFile(path, 0, 0.0, -1,
                                   unreadable=listed.message))
    return files


def _local_folders(root: str) -> list[str]:
    """The sub-folders of a local ``root`` (hidden ones left out)."""
    if is_uri(root) or not os.path.isdir(root):
        return []
    with os.scandir(root) as entries:
        return [entry.name for entry in entries
                if entry.is_dir() and not entry.name.startswith(".")]


def _check_names(root: str, names: list) -> None:
    """ConfigError for a class folder whose name is not valid UTF-8 (a class
    name is text in the model's metadata), or two whose names are one
    written two ways (:func:`alike`)."""
    for name in names:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigError(
                f"class folder {escape_path(name)!r} in {shown(root)} "
                f"has a name that is not valid UTF-8 (bad bytes shown as "
                f"%XX): rename it, class names are stored as text") from None
    pair = alike(names)
    if pair:
        first, second = (names[i] for i in pair)
        raise ConfigError(
            f"class folders {first!a} and {second!a} in {shown(root)} "
            f"are one name written two ways (Unicode NFC and NFD, as "
            f"Linux and macOS write it): they would be two classes that "
            f"print the same; move the images into one of them")


def alike(names) -> tuple[int, int] | None:
    """The positions of the first two of ``names`` that are the same text
    in Unicode's normal form NFC (``café`` with ``é`` as one code point, or
    as ``e`` and a combining accent; or the same name twice), else None."""
    seen: dict[str, int] = {}
    for index, name in enumerate(names):
        first = seen.setdefault(same_text(name), index)
        if first != index:
            return first, index
    return None


def same_text(name: str) -> str:
    """``name`` in Unicode's normal form NFC: what two names written two
    ways (NFC and NFD, as Linux and macOS write ``café``) have alike."""
    import unicodedata

    return unicodedata.normalize("NFC", name)


def _check_distinct(root: str, names: list) -> None:
    """ConfigError if a local class folder is another class folder, or lies
    inside one, through a symlink (``pink -> red``): its images would be
    learnt under two classes."""
    if is_uri(root):
        return
    real = {name: os.path.realpath(os.path.join(root, name))
            for name in names}
    # Each folder's own path and those above it, looked up among the
    # others' (a loop over every pair took 16 s for 10,000 classes).
    owners: dict[str, list] = {}
    for name in names:
        owners.setdefault(real[name], []).append(name)
    for name in names:
        path, where = real[name], "is"
        while True:
            other = next((o for o in owners.get(path, ()) if o != name),
                         None)
            if other is not None:
                raise ConfigError(
                    f"class folder {escape_path(name)!r} in {shown(root)} "
                    f"{where} class folder {escape_path(other)!r} (through "
                    f"a symlink): its images would be learnt as two "
                    f"classes; remove the link, or give each class its own "
                    f"images")
            parent, where = os.path.dirname(path), "lies inside"
            if parent == path:
                break
            path = parent


def _check_files_distinct(root: str, names: list, by_class: dict) -> None:
    """ConfigError if one local file is in two class folders: the same
    file through symlinks (``blue/a.jpg -> ../red/a.jpg``, the rule of
    :func:`_check_distinct` for single files) or a hard link, both the same
    ``(st_dev, st_ino)``; its image would be learnt under two classes.
    Two files with the same bytes, each its own, are not refused."""
    if is_uri(root):
        return
    seen: dict[tuple, tuple[str, str]] = {}
    for name in names:
        for item in by_class[name]:
            first_path, first_class = seen.setdefault(
                _identity(item.path), (item.path, name))
            if first_class != name:
                raise ConfigError(
                    f"{shown(first_path)} (class "
                    f"{escape_path(first_class)!r}) and "
                    f"{shown(item.path)} (class "
                    f"{escape_path(name)!r}) are one file (a symlink or a "
                    f"hard link): its image would be learnt as two "
                    f"classes; remove it from the class it does not belong "
                    f"to")


def check_disjoint(data: FolderDataset, val: FolderDataset) -> None:
    """ConfigError if a local file of ``val`` (``--val-data``) is one of
    ``data``: the same path, a symlink or a hard link (the same
    ``(st_dev, st_ino)``, as :func:`_check_files_distinct` tells); the
    validation accuracy would be measured on images the model learns."""
    if is_uri(data.root) or is_uri(val.root):
        return
    learnt = {_identity(item.path): item.path for item in data.files}
    for item in val.files:
        first = learnt.get(_identity(item.path))
        if first is not None:
            raise ConfigError(
                f"--val-data {shown(val.root)} holds {shown(item.path)}, "
                f"which is {shown(first)} of --data (the same file, a "
                f"symlink or a hard link): validation would measure "
                f"images the model learns; give --val-data images that "
                f"are not in --data, or leave it out to hold out "
                f"--val-fraction of --data")


def _identity(path: str) -> tuple[int, int] | tuple[str]:
    """``(st_dev, st_ino)`` of the file ``path`` leads to; ``(path,)`` if
    it cannot be read (a dangling symlink: listed as broken later)."""
    try:
        info = os.stat(path)
    except OSError:
        return (path,)
    return info.st_dev, info.st_ino


def read_image(item: ImageFile, prep: Preprocessing, *,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """One listed file read and decoded as the pipeline reads and decodes
    it (before resizing): :func:`read_bytes`, then :func:`decode_bytes`."""
    return decode_bytes(read_bytes(item), prep, max_pixels=max_pixels)


def read_bytes(item: ImageFile) -> bytes:
    """One listed file's bytes, read as the pipeline reads them: what could
    not be listed raises FileReadError with the listing's reason, a FIFO,
    device or socket is refused unopened (NotRegularFileError), and so is a
    file over the pipeline's default size limit."""
    from transforms.files import DEFAULT_MAX_FILE_BYTES, FileReadError, iter_chunks

    if item.unreadable:
        raise FileReadError(item.unreadable)
    return b"".join(iter_chunks(printable(item.path), size=None,
                                max_bytes=DEFAULT_MAX_FILE_BYTES))


def decode_bytes(data: bytes, prep: Preprocessing, *,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """A file's bytes decoded as the pipeline decodes them, for ``prep``
    (before resizing)."""
    return decode_image(data, mode=prep.color_mode,
                        target_size=prep.decode_size, max_pixels=max_pixels,
                        background=prep.background).image


def load_pixels(dataset: FolderDataset, prep: Preprocessing, *,
                transform: Callable | None = None,
                max_pixels: int = DEFAULT_MAX_PIXELS):
    """Decodes and preprocesses every file.

    Args:
        transform: optional ``(image, file) -> image`` applied between
            decoding and preprocessing (augmentation).

    Returns:
        ``(pixels uint8 (N, C, H, W), kept dataset, broken)`` where
        ``broken`` is a list of ``(path, one-line reason)``.
    """
    pixels, kept, broken = [], [], []
    for index, item in enumerate(dataset.files):
        try:
            image = read_image(item, prep, max_pixels=max_pixels)
            if transform is not None:
                image = transform(image, item)
            pixels.append(prep.to_pixels(image))
            kept.append(index)
        except Exception as error:  # one bad file must not stop the work
            broken.append((item.path, describe_error(error)))
    shape = (0, *prep.input_shape)
    stacked = np.stack(pixels) if pixels else np.zeros(shape, np.uint8)
    return stacked, dataset.subset(kept), broken


def check_classes(dataset: FolderDataset, what: str = "the data", *,
                  least: int = MIN_PER_CLASS) -> None:
    """ConfigError unless there are at least ``MIN_CLASSES`` classes and
    every class has at least ``least`` images (files, before decoding:
    checked before any work)."""
    names = dataset.class_names
    if len(names) < MIN_CLASSES:
        raise ConfigError(
            f"{what} ({shown(dataset.root)}) has {len(names)} class "
            f"folder(s) ({listed(names)}); training needs at least "
            f"{MIN_CLASSES} "
            f"class folders: add one sub-folder of images per class")
    counts = np.bincount(dataset.labels, minlength=len(names))
    empty = [join(dataset.root, name)
             for name, count in zip(names, counts) if count == 0]
    if empty:
        raise ConfigError(
            f"{what}: class folder(s) {listed(map(shown, empty))} hold "
            f"no image "
            f"file; add images or remove the folder(s)")
    small = [f"{name} ({count})"
             for name, count in zip(names, counts) if count < least]
    if small:
        raise ConfigError(
            f"{what} ({shown(dataset.root)}): class(es) {listed(small)} "
            f"have "
            f"fewer than {least} images; add images or remove the folder")


def check_same_classes(val: FolderDataset, class_names: list, *,
                       what: str = "--val-data") -> None:
    """ConfigError unless ``val`` has exactly the classes ``class_names``."""
    given = {same_text(name) for name in val.class_names}
    wanted = {same_text(name) for name in class_names}
    missing = sorted(n for n in class_names if same_text(n) not in given)
    extra = sorted(n for n in val.class_names if same_text(n) not in wanted)
    if missing or extra:
        found = [f"{label} {listed(names)}" for label, names
                 in (("missing", missing), ("extra", extra)) if names]
        raise ConfigError(
            f"{what} {shown(val.root)} must have the class folders of "
            f"--data ({listed(class_names)}): {'; '.join(found)}")


def check_usable(labels, class_names: list, n_broken: int, what: str, *,
                 every_class: bool = True) -> None:
    """After decoding: ConfigError if a class (``every_class``) or every
    class has no usable image left, naming them and the number of broken
    files (``labels`` are those of the decoded images)."""
    left = set(np.asarray(labels).tolist())
    lost = [name for i, name in enumerate(class_names) if i not in left]
    if lost and (every_class or len(lost) == len(class_names)):
        raise ConfigError(
            f"{what}: class(es) {listed(lost)} have no usable image "
            f"({n_broken} broken file(s), listed above as 'skipped'); "
            f"replace the broken files or add readable images")


def check_sides(shape, expected, what: str, fix: str) -> None:
    """ConfigError unless examples of ``shape`` (``(N, ...)``, possibly
    flattened) have the size of ``expected``, what the network takes."""
    got, want = tuple(shape[1:]), tuple(expected)
    if int(np.prod(got)) != int(np.prod(want)):
        def sides(dims):
            return "x".join(map(str, dims))
        raise ConfigError(f"{what} are {sides(got)} values per image but "
                          f"the network takes {sides(want)}; {fix}")


def stratified_split(labels: np.ndarray, fraction: float = VAL_FRACTION, *,
                     seed: int = SPLIT_SEED,
                     groups=None) -> tuple[np.ndarray, np.ndarray]:
    """``(train indices, validation indices)``: about ``fraction`` of each
    class (at least one) goes to validation, at least one stays for
    training; always the same for the same labels and seed. Examples of
    one group (``groups``, one key per example: links of one file, see
    :func:`file_groups`) go to one side, so that none is learnt and
    validated (a class that is one file is learnt only)."""
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"--val-fraction must be between 0 and 1, got "
                          f"{fraction!r}")
    groups = list(range(len(labels))) if groups is None else list(groups)
    rng = np.random.RandomState(seed)
    train, val = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_val = min(len(members) - 1, max(1, round(len(members) * fraction)))
        taken = _whole_groups(members, groups, n_val)
        val.extend(i for i in members if groups[i] in taken)
        train.extend(i for i in members if groups[i] not in taken)
    return np.sort(np.array(train, int)), np.sort(np.array(val, int))


def _whole_groups(members, groups: list, n_val: int) -> set:
    """The groups of ``members`` (in their order) taken for validation:
    whole, until they hold ``n_val`` examples, never every group."""
    sizes: dict = {}
    for i in members:
        sizes[groups[i]] = sizes.get(groups[i], 0) + 1
    taken, count = set(), 0
    for group in dict.fromkeys(groups[i] for i in members):
        if count >= n_val or len(taken) == len(sizes) - 1:
            break
        taken.add(group)
        count += sizes[group]
    return taken


def file_groups(dataset: FolderDataset) -> list:
    """One key per file of a local ``dataset``: the same for links of one
    file (a symlink or a hard link, the same ``(st_dev, st_ino)``)."""
    if is_uri(dataset.root):
        return [item.path for item in dataset.files]
    return [_identity(item.path) for item in dataset.files]


def align_classes(val: FolderDataset, class_names: list, *,
                  what: str = "--val-data") -> FolderDataset:
    """Relabels a folder (validation or test data) with the ids of
    ``class_names`` (the training data's or the model's); ConfigError if it
    has a class folder they lack. A folder name is a class's in any
    Unicode form (:func:`same_text`: macOS writes ``café`` in NFD)."""
    ids: dict[str, int] = {}
    for i, name in enumerate(class_names):
        ids.setdefault(same_text(name), i)
    unknown = sorted(n for n in val.class_names if same_text(n) not in ids)
    if unknown:
        raise ConfigError(f"{what} {shown(val.root)} has class folder(s) "
                          f"{listed(unknown)} that are not classes of "
                          f"the model; classes: {listed(class_names)}")
    files = [dataclasses.replace(
        f, label=ids[same_text(val.class_names[f.label])]) for f in val.files]
    return FolderDataset(val.root, files, list(class_names))


def listed(names, *, most: int = NAMES_SHOWN) -> str:
    """Class names (text, see :func:`_check_names`) as a message lists
    them: on one line, a control character as ``%XX``, the first ``most``
    and how many there are (10,000 classes made a line of 120 kB)."""
    names = list(names)
    more = f", ... ({len(names)} classes)" if len(names) > most else ""
    return ", ".join(one_line(name) for name in names[:most]) + more


def describe_error(error: BaseException) -> str:
    """One line: the error's type and the first line of its message."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")
