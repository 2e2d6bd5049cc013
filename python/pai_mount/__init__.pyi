from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Union

import io

__version__: str

class Error(Exception):
    url: Optional[str]
    key: Optional[str]

class InvalidArgumentError(Error, ValueError): ...
class CredentialsError(Error, PermissionError): ...
class NotFoundError(Error, FileNotFoundError): ...
class ObjectChangedError(Error): ...
class CorruptError(Error): ...
class OutOfRangeError(Error, IndexError): ...
class UnavailableError(Error, OSError): ...
class IncompleteCopyError(Error):
    report: Dict[str, Any]

class Sample:
    index: int
    key: str
    data: memoryview
    @property
    def members(self) -> Dict[str, memoryview]: ...
    def __len__(self) -> int: ...
    def __bytes__(self) -> bytes: ...

class Dataset:
    def __init__(
        self,
        url: str,
        *,
        glob: Optional[str] = ...,
        suffixes: Optional[Iterable[str]] = ...,
        tar: bool = ...,
        region: Optional[str] = ...,
        endpoint: Optional[str] = ...,
        path_style: bool = ...,
        internal: bool = ...,
        anonymous: bool = ...,
        access_key_id: Optional[str] = ...,
        secret_access_key: Optional[str] = ...,
        session_token: Optional[str] = ...,
        connect_timeout: Optional[float] = ...,
        first_byte_timeout: Optional[float] = ...,
        idle_timeout: Optional[float] = ...,
        max_concurrency: Optional[int] = ...,
    ) -> None: ...
    @property
    def url(self) -> str: ...
    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> Sample: ...
    def __iter__(self) -> Iterator[Sample]: ...
    def key(self, index: int) -> str: ...
    def keys(self) -> List[str]: ...
    def metrics(self) -> Dict[str, int]: ...

class IterableDataset:  # a torch.utils.data.IterableDataset
    dataset: Dataset
    epoch: int
    seed: int
    batch_size: Optional[int]
    def __init__(
        self,
        url: str,
        *,
        shuffle: str = ...,
        seed: int = ...,
        block_size: Optional[int] = ...,
        drop_last: bool = ...,
        batch_size: Optional[int] = ...,
        transform: Optional[Callable[[Sample], Any]] = ...,
        in_flight: int = ...,
        max_bytes: Union[int, str] = ...,
        rank: Optional[int] = ...,
        world_size: Optional[int] = ...,
        glob: Optional[str] = ...,
        suffixes: Optional[Iterable[str]] = ...,
        tar: bool = ...,
        region: Optional[str] = ...,
        endpoint: Optional[str] = ...,
        path_style: bool = ...,
        internal: bool = ...,
        anonymous: bool = ...,
        access_key_id: Optional[str] = ...,
        secret_access_key: Optional[str] = ...,
        session_token: Optional[str] = ...,
        connect_timeout: Optional[float] = ...,
        first_byte_timeout: Optional[float] = ...,
        idle_timeout: Optional[float] = ...,
        max_concurrency: Optional[int] = ...,
    ) -> None: ...
    def set_epoch(self, epoch: int) -> None: ...
    def rank_world(self) -> Tuple[int, int]: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[Any]: ...
    def state_dict(self) -> Dict[str, int]: ...
    def load_state_dict(self, state: Dict[str, int]) -> None: ...

class DataLoader:  # a torch.utils.data.DataLoader
    dataset: Any
    batch_size: Optional[int]
    def __init__(self, dataset: Any, batch_size: Optional[int] = ..., **kwargs: Any) -> None: ...
    def __iter__(self) -> Iterator[Any]: ...
    def __len__(self) -> int: ...
    def state_dict(self) -> Dict[str, int]: ...
    def load_state_dict(self, state: Dict[str, int]) -> None: ...

class ObjectReader(io.RawIOBase):
    name: str
    size: int
    etag: Optional[str]
    def read(self, size: Optional[int] = ...) -> bytes: ...

class ObjectWriter(io.RawIOBase):
    name: str
    etag: Optional[str]
    def abort(self) -> None: ...

def open(
    url: str,
    mode: str = ...,
    *,
    chunk: Optional[int] = ...,
    ahead: Optional[int] = ...,
    part_size: Optional[int] = ...,
    parts_in_flight: Optional[int] = ...,
    **store: Any,
) -> Union[ObjectReader, ObjectWriter]: ...
def build_manifest(url: str, **store: Any) -> Tuple[int, int, int]: ...
def build_tar_index(
    url: str, *, suffixes: Optional[List[str]] = ..., concurrency: int = ..., **store: Any
) -> Tuple[int, int]: ...
def copy(
    url: str,
    dest: str,
    *,
    jobs: int = ...,
    part_size: Union[int, str] = ...,
    verify: bool = ...,
    fsync: bool = ...,
    check: bool = ...,
    **store: Any,
) -> Dict[str, Any]: ...
