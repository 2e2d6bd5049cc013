//! The loader's errors: one enum whose variants are the classes a caller acts on (a Python
//! binding maps each to an exception class). Every message names the URL, and the key when
//! there is one.

use pai_store::object::{ReadError, SourceError};

/// What can go wrong, by what the caller can do about it.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A bad URL, option or layout: fix the call.
    #[error("{why}")]
    Invalid { why: String },
    /// Credentials are missing, or the store refused them.
    #[error("{url}: {why}")]
    Credentials { url: String, why: String },
    /// The bucket, an object, or a required index does not exist.
    #[error("{url}: {why}")]
    NotFound {
        url: String,
        key: Option<String>,
        why: String,
    },
    /// An object changed since the manifest was built: retrying cannot help. (A deleted one is
    /// [`LoadError::NotFound`].)
    #[error("{url}: {why}")]
    Changed {
        url: String,
        key: String,
        why: String,
    },
    /// A stored index (manifest, tar index) is damaged, stale or of an unknown version, or an
    /// object's bytes kept failing its full-object checksum.
    #[error("{url}: {why}")]
    Corrupt {
        url: String,
        key: String,
        why: String,
    },
    #[error("index {index} is out of range (the dataset has {len} samples)")]
    OutOfRange { index: u64, len: u64 },
    /// The store could not be reached or kept failing, after retries.
    #[error("{url}: {why}")]
    Unavailable {
        url: String,
        key: Option<String>,
        why: String,
    },
}

/// The class of a [`LoadError`], for callers that dispatch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Invalid,
    Credentials,
    NotFound,
    Changed,
    Corrupt,
    OutOfRange,
    Unavailable,
}

impl LoadError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Invalid { .. } => ErrorKind::Invalid,
            Self::Credentials { .. } => ErrorKind::Credentials,
            Self::NotFound { .. } => ErrorKind::NotFound,
            Self::Changed { .. } => ErrorKind::Changed,
            Self::Corrupt { .. } => ErrorKind::Corrupt,
            Self::OutOfRange { .. } => ErrorKind::OutOfRange,
            Self::Unavailable { .. } => ErrorKind::Unavailable,
        }
    }

    /// A source that cannot be used at all.
    pub fn from_source(url: &str, e: SourceError) -> Self {
        let url = url.to_string();
        match e {
            SourceError::BadUrl { .. } | SourceError::BadOption(_) => {
                Self::Invalid { why: e.to_string() }
            }
            SourceError::Credentials(_) | SourceError::Denied { .. } => Self::Credentials {
                url,
                why: e.to_string(),
            },
            SourceError::NoBucket { .. } => Self::NotFound {
                url,
                key: None,
                why: e.to_string(),
            },
            SourceError::Unreachable { .. } | SourceError::Other { .. } => Self::Unavailable {
                url,
                key: None,
                why: e.to_string(),
            },
        }
    }

    /// A read of `key` that failed for good; `what` says which read (a sample, a range).
    pub fn from_read(url: &str, key: &str, what: &str, e: ReadError) -> Self {
        let (url, key) = (url.to_string(), key.to_string());
        let why = format!("{what}: {e}");
        match e {
            ReadError::Changed { .. } => Self::Changed { url, key, why },
            ReadError::Corrupt { .. } => Self::Corrupt { url, key, why },
            ReadError::Gone { .. } => Self::NotFound {
                url,
                key: Some(key),
                why,
            },
            ReadError::Short { .. } | ReadError::Store { .. } | ReadError::TimedOut { .. } => {
                Self::Unavailable {
                    url,
                    key: Some(key),
                    why,
                }
            }
        }
    }

    /// The key the error is about, if any.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::NotFound { key, .. } | Self::Unavailable { key, .. } => key.as_deref(),
            Self::Changed { key, .. } | Self::Corrupt { key, .. } => Some(key),
            Self::Invalid { .. } | Self::Credentials { .. } | Self::OutOfRange { .. } => None,
        }
    }
}
