"""The exceptions of pai_mount. Every message names the URL, and the key when there is one;
the same are in the ``url`` and ``key`` attributes."""

from typing import Optional


class Error(Exception):
    """Base of every pai_mount error."""

    url: Optional[str] = None
    key: Optional[str] = None


class InvalidArgumentError(Error, ValueError):
    """A bad URL, option or layout."""


class CredentialsError(Error, PermissionError):
    """Credentials are missing, or the store refused them."""


class NotFoundError(Error, FileNotFoundError):
    """The bucket, an object (also one deleted since the manifest was built), or a required
    index does not exist."""


class ObjectChangedError(Error):
    """An object changed since the manifest was built (or since a reader opened it): its bytes
    would mix two versions, so none are returned. Rebuild the manifest."""


class CorruptError(Error):
    """A stored index (manifest, tar index) is damaged, stale, or of an unknown version; or a
    sample's bytes kept failing the store's full-object checksum."""


class OutOfRangeError(Error, IndexError):
    """A sample index past the end of the dataset."""


class UnavailableError(Error, OSError):
    """The store could not be reached, or kept failing after retries."""


class IncompleteCopyError(Error):
    """``copy()`` could not copy every object; ``report`` has the exact counts and the first
    errors. A rerun copies only what is missing."""

    report: dict = {}


__all__ = [
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
