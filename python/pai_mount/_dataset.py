"""Map-style datasets: the samples under a prefix, from its manifest."""

import ctypes
import os
from typing import Any, Dict, Iterable, Iterator, List, Optional

from . import _native

#: The keywords every call accepts, named after the CLI's store flags.
STORE_KEYS = (
    "region",
    "endpoint",
    "path_style",
    "internal",
    "anonymous",
    "access_key_id",
    "secret_access_key",
    "session_token",
    "connect_timeout",
    "first_byte_timeout",
    "idle_timeout",
    "max_concurrency",
)


def store_options(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Splits the store keywords off ``kwargs`` (in place); anything else left is an error."""
    store = {k: kwargs.pop(k) for k in STORE_KEYS if k in kwargs}
    return store


def reject_unknown(what: str, kwargs: Dict[str, Any]) -> None:
    if kwargs:
        names = ", ".join(sorted(kwargs))
        raise TypeError(f"{what}() got unexpected keyword arguments: {names}")


def _view(owner: Any, address: int, size: int) -> memoryview:
    """A read-only view of ``size`` bytes at ``address`` that keeps ``owner`` alive."""
    if size == 0:
        return memoryview(b"")
    arr = (ctypes.c_char * size).from_address(address)
    arr._pai_owner = owner  # the view keeps the array, the array keeps the bytes
    return memoryview(arr).cast("B").toreadonly()


class Sample:
    """One sample: ``index``, ``key``, ``data`` (a read-only memoryview of the bytes, no copy)
    and, for tar shards, ``members`` (extension -> memoryview, slices of ``data``).

    Sent to another process (a DataLoader worker's batch), it is pickled as plain bytes."""

    __slots__ = ("index", "key", "data", "_spans", "_members")

    def __init__(self, native: Any = None) -> None:
        if native is not None:
            self.index: int = native.index
            self.key: str = native.key
            self.data: memoryview = _view(native, native.address, native.size)
            self._spans = native.members
        self._members: Optional[Dict[str, memoryview]] = None

    @classmethod
    def _from_plain(cls, index: int, key: str, data: bytes, spans: list) -> "Sample":
        s = cls()
        s.index, s.key, s.data, s._spans = index, key, memoryview(data).toreadonly(), spans
        return s

    @property
    def members(self) -> Dict[str, memoryview]:
        if self._members is None:
            self._members = {ext: self.data[a:b] for ext, a, b in self._spans}
        return self._members

    def __len__(self) -> int:
        return len(self.data)

    def __bytes__(self) -> bytes:
        return bytes(self.data)

    def __repr__(self) -> str:
        return f"Sample(index={self.index}, key={self.key!r}, size={len(self.data)})"

    def __reduce__(self):
        return (Sample._from_plain, (self.index, self.key, bytes(self.data), list(self._spans)))


class Dataset:
    """The samples under ``url`` (``oss://bucket/prefix``, ``s3://...``, ``file:///dir``).

    ``len(ds)``, ``ds[i]`` (one GET pinned to the manifest's ETag), ``ds.key(i)``. ``glob``
    keeps keys matching a pattern (``*`` within a path segment, ``**`` across), ``suffixes``
    keys with one of these endings; ``tar=True`` reads WebDataset shards through their tar
    index, one ranged GET per sample.

    Pickles as its configuration only: another process opens the manifest itself, and a
    forked child builds its own connections.
    """

    def __init__(
        self,
        url: str,
        *,
        glob: Optional[str] = None,
        suffixes: Optional[Iterable[str]] = None,
        tar: bool = False,
        **store: Any,
    ) -> None:
        store = dict(store)
        opts = store_options(store)
        reject_unknown("Dataset", store)
        self._config = {
            "url": url,
            "glob": glob,
            "suffixes": list(suffixes or []),
            "tar": bool(tar),
            "store": opts,
        }
        self._native: Any = None
        self._pid = -1
        self._ds()

    def _ds(self) -> Any:
        pid = os.getpid()
        if self._native is None:
            c = self._config
            self._native = _native.Dataset(
                c["url"], c["store"], c["glob"], c["suffixes"], c["tar"]
            )
        elif self._pid != pid:
            # Forked: share the parent's sample table, never its connections.
            self._native = self._native.for_this_process()
        self._pid = pid
        return self._native

    def __getstate__(self) -> Dict[str, Any]:
        return {"config": self._config}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self._config = state["config"]
        self._native = None
        self._pid = -1

    @property
    def url(self) -> str:
        return self._config["url"]

    def __len__(self) -> int:
        return len(self._ds())

    def __getitem__(self, index: int) -> Sample:
        n = len(self)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"sample {index} is out of range (the dataset has {n} samples)")
        return Sample(self._ds().get(i))

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self[i]

    def key(self, index: int) -> str:
        k = self._ds().key(int(index))
        if k is None:
            raise IndexError(f"sample {index} is out of range")
        return k

    def keys(self) -> List[str]:
        ds = self._ds()
        return [ds.key(i) for i in range(len(ds))]

    def metrics(self) -> Dict[str, int]:
        """This process's request counters."""
        return dict(self._ds().metrics())

    def __repr__(self) -> str:
        return f"Dataset({self.url!r}, samples={len(self)})"
