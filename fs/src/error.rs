//! Filesystem errors and their one errno mapping.
//!
//! Every failure a FUSE operation can report is a [`FsError`]; [`FsError::errno`] is an
//! exhaustive match, so a new variant cannot silently become `EIO`.

use crate::object::ReadError;

/// What a filesystem operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such entry")]
    NotFound,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("read-only file system")]
    ReadOnly,
    #[error("inode {0} belongs to a namespace snapshot that was retired")]
    StaleInode(u64),
    #[error("unknown file handle {0}")]
    BadHandle(u64),
    #[error("name too long")]
    NameTooLong,
    #[error("operation not supported")]
    Unsupported,
    #[error(transparent)]
    Read(#[from] ReadError),
}

impl FsError {
    /// The errno reported to the kernel.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::ReadOnly => libc::EROFS,
            FsError::StaleInode(_) => libc::ESTALE,
            FsError::BadHandle(_) => libc::EBADF,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::Unsupported => libc::ENOTSUP,
            FsError::Read(e) => match e {
                ReadError::Changed { .. } => libc::ESTALE,
                ReadError::Gone { .. } => libc::ESTALE,
                ReadError::Short { .. } => libc::EIO,
                ReadError::Store { .. } => libc::EIO,
            },
        }
    }

    /// Whether this is an expected outcome (a miss) rather than a failure worth a log line.
    pub fn is_quiet(&self) -> bool {
        matches!(self, FsError::NotFound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_object_maps_to_estale() {
        let e = FsError::Read(ReadError::Changed {
            key: "k".into(),
            pinned: "\"a\"".into(),
        });
        assert_eq!(e.errno(), libc::ESTALE);
        assert_eq!(FsError::ReadOnly.errno(), libc::EROFS);
        assert_eq!(FsError::NotFound.errno(), libc::ENOENT);
    }
}
