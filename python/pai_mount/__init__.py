"""pai_mount: train straight from object storage (Alibaba Cloud OSS, S3).

- ``Dataset(url, ...)``: map-style, ``len(ds)``, ``ds[i]`` (zero-copy ``Sample.data``).
- ``IterableDataset(url, shuffle=..., seed=..., ...)`` and ``DataLoader``: sharded over ranks
  and workers, exactly resumable (need torch; imported on first use).
- ``open(url, "rb" | "wb")``: one object as a file (``torch.save``/``torch.load``).
- ``build_manifest(url)``: list a prefix once and store its manifest.
- ``copy(url, dest, jobs=32)``: copy a prefix to local disk (``pai-mount cp``), exact counts.

Every call takes the store keywords ``region``, ``endpoint``, ``path_style``, ``internal``,
``anonymous``, ``access_key_id``, ``secret_access_key``, ``session_token`` and otherwise uses
the CLI's credential chain (environment, ossfs password files, ECS RAM role).
"""

from typing import Any

from ._native import __version__, serve_metrics
from ._errors import (
    CorruptError,
    CredentialsError,
    Error,
    IncompleteCopyError,
    InvalidArgumentError,
    NotFoundError,
    ObjectChangedError,
    OutOfRangeError,
    UnavailableError,
)
from ._dataset import Dataset, Sample
from ._io import ObjectReader, ObjectWriter, build_manifest, build_tar_index, copy, open

_TORCH_NAMES = ("IterableDataset", "DataLoader")


def __getattr__(name: str) -> Any:
    if name in _TORCH_NAMES:
        try:
            from . import _torch
        except ImportError as e:
            raise AttributeError(
                f"pai_mount.{name} needs PyTorch, which could not be imported ({e}); pip install torch"
            ) from e
        return getattr(_torch, name)
    raise AttributeError(f"module 'pai_mount' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_TORCH_NAMES))


__all__ = [
    "__version__",
    "Dataset",
    "Sample",
    "IterableDataset",
    "DataLoader",
    "open",
    "build_manifest",
    "build_tar_index",
    "copy",
    "serve_metrics",
    "ObjectReader",
    "ObjectWriter",
    "Error",
    "InvalidArgumentError",
    "CredentialsError",
    "NotFoundError",
    "ObjectChangedError",
    "CorruptError",
    "OutOfRangeError",
    "UnavailableError",
    "IncompleteCopyError",
]
