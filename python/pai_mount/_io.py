"""Single objects as files: ``pai_mount.open`` and ``pai_mount.build_manifest``."""

import io
import os
from typing import Any, Optional, Tuple

from . import _native
from ._dataset import reject_unknown, store_options


class ObjectReader(io.RawIOBase):
    """A seekable, read-only file over one object, pinned to the ETag it had at open: a change
    of the object while it is read is an ``ObjectChangedError``, never mixed bytes. Sequential
    reads keep ``ahead`` ranged GETs of ``chunk`` bytes in flight."""

    def __init__(self, url: str, store: dict, chunk: Optional[int], ahead: Optional[int]) -> None:
        super().__init__()
        self.name = url
        self._r = _native.ObjectReader(url, store, chunk, ahead)
        self.size: int = self._r.size
        self.etag: Optional[str] = self._r.etag

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._checkClosed()
        return self._r.tell()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._checkClosed()
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._r.tell() + offset
        elif whence == io.SEEK_END:
            pos = self.size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        return self._r.seek(pos)

    def read(self, size: Optional[int] = -1) -> bytes:
        self._checkClosed()
        return self._r.read(-1 if size is None else size)

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, b: Any) -> int:
        data = self.read(len(memoryview(b).cast("B")))
        n = len(data)
        memoryview(b).cast("B")[:n] = data
        return n

    def close(self) -> None:
        if not self.closed:
            self._r.close()
        super().close()


class ObjectWriter(io.RawIOBase):
    """A write-only file that streams one object as a multipart upload. ``close()`` returns
    once the object is in the bucket; an exception inside a ``with`` block aborts the upload,
    and nothing becomes visible. A writer garbage-collected without ``close()`` is aborted
    too (unlike a local file, which would keep what was written)."""

    def __init__(self, url: str, store: dict, part_size: Optional[int], parts_in_flight: Optional[int]) -> None:
        super().__init__()
        self.name = url
        self._w = _native.ObjectWriter(url, store, part_size, parts_in_flight)
        self.etag: Optional[str] = None

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self._checkClosed()
        if not isinstance(b, bytes):
            b = bytes(memoryview(b).cast("B"))
        return self._w.write(b)

    def tell(self) -> int:
        return self._w.written

    def abort(self) -> None:
        """Abandons the upload: nothing becomes visible."""
        if not self.closed:
            self._w.abort()
            super().close()

    def close(self) -> None:
        if not self.closed:
            try:
                self.etag = self._w.finish()
            finally:
                super().close()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()

    def __del__(self) -> None:
        # A writer dropped without close() was abandoned (an exception outside a `with`
        # block, say): its object must not appear half written.
        if not self.closed:
            import warnings

            warnings.warn(
                f"{self.name} was never closed: its upload is aborted", ResourceWarning, stacklevel=2
            )
            try:
                self.abort()
            except Exception:
                pass


def open(
    url: str,
    mode: str = "rb",
    *,
    chunk: Optional[int] = None,
    ahead: Optional[int] = None,
    part_size: Optional[int] = None,
    parts_in_flight: Optional[int] = None,
    **store: Any,
):
    """Opens one object as a binary file: ``"rb"`` (seekable, read-ahead, pinned to one ETag)
    or ``"wb"`` (a streamed multipart upload, visible at ``close()``)."""
    store = dict(store)
    opts = store_options(store)
    reject_unknown("open", store)
    if mode == "rb":
        return ObjectReader(url, opts, chunk, ahead)
    if mode == "wb":
        return ObjectWriter(url, opts, part_size, parts_in_flight)
    raise ValueError(f"mode {mode!r} is not supported: use \"rb\" or \"wb\"")


def build_manifest(url: str, **store: Any) -> Tuple[int, int, int]:
    """Lists ``url`` and stores its manifest in the bucket (what ``pai-mount manifest build``
    does). Returns (objects, bytes of objects, bytes of the manifest)."""
    store = dict(store)
    opts = store_options(store)
    reject_unknown("build_manifest", store)
    return _native.build_manifest(url, opts)


def build_tar_index(url: str, *, suffixes: Optional[list] = None, concurrency: int = 16, **store: Any) -> Tuple[int, int]:
    """Reads every tar shard under ``url`` once and stores their sample index next to the
    manifest (what ``pai-mount manifest tar-index`` does); ``Dataset(url, tar=True)`` needs
    it. Build the manifest first. Returns (shards, samples)."""
    store = dict(store)
    opts = store_options(store)
    reject_unknown("build_tar_index", store)
    return _native.build_tar_index(url, opts, list(suffixes or []), concurrency)


def copy(
    url: str,
    dest: str,
    *,
    jobs: int = 32,
    part_size: Any = "8M",
    verify: bool = True,
    fsync: bool = False,
    check: bool = True,
    **store: Any,
) -> dict:
    """Copies every object under ``url`` into the local directory ``dest``, as
    ``pai-mount cp`` does: parallel, pinned to each object's ETag, a file appears under its
    name only complete, and a rerun finishes what is missing. Returns the exact counts
    (``objects``, ``copied``, ``skipped``, ``failed``, ``not_started``, ``unnamable_keys``,
    ``bytes_fetched``, ``seconds``, ``errors``). With ``check`` (the default) a copy with
    failures raises ``IncompleteCopyError``, whose ``report`` holds the same counts."""
    from ._errors import IncompleteCopyError
    from ._torch_free import parse_bytes

    store = dict(store)
    opts = store_options(store)
    reject_unknown("copy", store)
    report = _native.copy(url, os.fspath(dest), opts, int(jobs), parse_bytes(part_size), bool(verify), bool(fsync))
    if check and report["failed"]:
        first = "; ".join(report["errors"][:3])
        e = IncompleteCopyError(
            f"{url}: {report['failed']} of {report['objects']} objects were not copied to {dest} "
            f"(rerun to finish them): {first}"
        )
        e.url, e.report = url, report
        raise e
    return report
