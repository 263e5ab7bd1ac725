"""An object store in memory for tests: a Beam ``FileSystem`` for
``memstore://`` paths, kept in :class:`Bucket` (no folders, listing by
prefix and lazily, as GCS and S3 page through; an object written appears
whole when closed), that counts what callers list and read. Importing
this module registers the filesystem."""

from __future__ import annotations

import io
import threading
import time

from apache_beam.io.filesystem import FileMetadata, FileSystem

SCHEME = "memstore"


class Bucket:
    """The objects ``{path: bytes}`` and what was done with them."""
    objects: dict = {}
    # When objects written through the filesystem were last written (GCS
    # and S3 keep it; objects put in ``objects`` directly have none: 0).
    written: dict = {}
    listed = 0  # listing entries returned
    bytes_read = 0  # bytes returned by reads of opened objects
    most_open = 0  # the most objects open for reading at the same time
    # When set, an opened object waits (up to a few seconds) until another
    # one is open too, so that a test can tell reads made together from
    # reads made one after the other without timing anything.
    open_together = False

    _open = 0
    _lock = threading.Lock()
    _company = threading.Condition(_lock)

    @classmethod
    def reset(cls, objects: dict) -> None:
        cls.objects = dict(objects)
        cls.written = {}
        cls.listed = cls.bytes_read = cls.most_open = cls._open = 0
        cls.open_together = False

    @classmethod
    def _opened(cls) -> None:
        with cls._company:
            cls._open += 1
            cls.most_open = max(cls.most_open, cls._open)
            cls._company.notify_all()
            if cls.open_together:
                cls._company.wait_for(lambda: cls.most_open > 1, timeout=5)

    @classmethod
    def _closed(cls) -> None:
        with cls._lock:
            cls._open -= 1

    @classmethod
    def _read(cls, n: int) -> None:
        with cls._lock:
            cls.bytes_read += n


class _Reader(io.RawIOBase):
    """An object opened for reading: seekable, counting the bytes read."""

    def __init__(self, data: bytes):
        self._data, self._at = data, 0
        Bucket._opened()

    def readable(self):
        return True

    def seekable(self):
        return True

    def seek(self, offset, whence=io.SEEK_SET):
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._at,
                io.SEEK_END: len(self._data)}[whence]
        self._at = max(0, base + offset)
        return self._at

    def tell(self):
        return self._at

    def readinto(self, buffer):
        chunk = self._data[self._at:self._at + len(buffer)]
        buffer[:len(chunk)] = chunk
        self._at += len(chunk)
        Bucket._read(len(chunk))
        return len(chunk)

    def close(self):
        if not self.closed:
            Bucket._closed()
        super().close()


class MemStore(FileSystem):
    @classmethod
    def scheme(cls):
        return SCHEME

    def join(self, base, *paths):
        return "/".join([base.rstrip("/"), *paths])

    def split(self, path):
        return tuple(path.rsplit("/", 1))

    def has_dirs(self):
        return False

    def _list(self, prefix):
        for path in sorted(Bucket.objects):
            if path.startswith(prefix):
                Bucket.listed += 1
                yield FileMetadata(path, len(Bucket.objects[path]), 0.0)

    def exists(self, path):
        return path in Bucket.objects

    def size(self, path):
        return len(Bucket.objects[path])

    def metadata(self, path):
        return FileMetadata(path, self.size(path), 0.0)

    def last_updated(self, path):
        if path not in Bucket.objects:
            raise FileNotFoundError(path)
        return Bucket.written.get(path, 0.0)

    def mkdirs(self, path):
        pass

    def open(self, path, mime_type="application/octet-stream",
             compression_type=None):
        if path not in Bucket.objects:  # as Beam's S3 and Azure, and local
            raise FileNotFoundError(f"Not found: {path}")
        return io.BufferedReader(_Reader(Bucket.objects[path]))

    def create(self, path, mime_type="application/octet-stream",
               compression_type=None):
        """An object appears whole when its writer closes, as on GCS."""
        return _Writer(path)

    def rename(self, sources, destinations):
        for source, destination in zip(sources, destinations):
            Bucket.objects[destination] = Bucket.objects.pop(source)
            Bucket.written[destination] = time.time()  # a copy: new

    def delete(self, paths):
        """As Beam's GCS filesystem: a path ending in ``/`` deletes every
        object below it; any other, the object of that name if there is
        one (a "folder" without the slash is no object)."""
        for path in paths:
            below = [p for p in Bucket.objects if p.startswith(path)] \
                if path.endswith("/") else [path]
            for name in below:
                Bucket.objects.pop(name, None)

    def copy(self, *args, **kwargs):
        raise NotImplementedError

    checksum = copy


class _Writer(io.BytesIO):
    def __init__(self, path: str):
        super().__init__()
        self._path = path

    def close(self):
        if not self.closed:
            Bucket.objects[self._path] = self.getvalue()
            Bucket.written[self._path] = time.time()
        super().close()
