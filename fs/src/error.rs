//! Filesystem errors and their one errno mapping.
//!
//! Every failure a FUSE operation can report is a [`FsError`]; [`FsError::errno`] is an
//! exhaustive match, so a new variant cannot silently become `EIO`.

use crate::object::{ReadError, SourceError, WriteError};
use crate::write::WriteBackError;

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
    StaleInode(crate::ids::InodeNo),
    #[error("unknown file handle {0}")]
    BadHandle(crate::ids::Fh),
    #[error("name too long")]
    NameTooLong,
    #[error("operation not supported")]
    Unsupported,
    #[error("no ioctls on this file system")]
    NoIoctl,
    #[error("file exists")]
    Exists,
    #[error("directory not empty")]
    NotEmpty,
    #[error("directory has more than {limit} entries to rename; copy it instead")]
    CrossDevice { limit: usize },
    #[error("{0}")]
    NotPermitted(&'static str),
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    #[error("local I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    WriteBack(#[from] WriteBackError),
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
            // What a regular file answers to terminal ioctls (isatty), so probes stay quiet.
            FsError::NoIoctl => libc::ENOTTY,
            FsError::Exists => libc::EEXIST,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::CrossDevice { .. } => libc::EXDEV,
            FsError::NotPermitted(_) => libc::EPERM,
            FsError::Invalid(_) => libc::EINVAL,
            FsError::Io(e) => io_errno(e),
            FsError::Read(e) => read_errno(e),
            FsError::Write(_) | FsError::Source(_) => libc::EIO,
            FsError::WriteBack(e) => match e {
                WriteBackError::Io(e) => io_errno(e),
                WriteBackError::Read(e) => read_errno(e),
                WriteBackError::Store(_)
                | WriteBackError::UploadFailed { .. }
                | WriteBackError::Locked { .. } => libc::EIO,
            },
        }
    }

    /// Whether this is an expected outcome (a miss) rather than a failure worth a log line.
    pub fn is_quiet(&self) -> bool {
        matches!(
            self,
            FsError::NotFound | FsError::Exists | FsError::NotEmpty | FsError::CrossDevice { .. }
        )
    }
}

/// A local I/O error's own errno (`ENOSPC` for a full staging disk), else `EIO`.
fn io_errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn read_errno(e: &ReadError) -> i32 {
    match e {
        ReadError::Changed { .. } | ReadError::Gone { .. } => libc::ESTALE,
        ReadError::Short { .. }
        | ReadError::Store { .. }
        | ReadError::TimedOut { .. }
        | ReadError::Corrupt { .. } => libc::EIO,
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
        let full = std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert_eq!(FsError::Io(full).errno(), libc::ENOSPC);
        let full = std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert_eq!(
            FsError::WriteBack(WriteBackError::Io(full)).errno(),
            libc::ENOSPC
        );
        assert_eq!(FsError::CrossDevice { limit: 1 }.errno(), libc::EXDEV);
    }
}
