//! The numbers the kernel and the core exchange: inode numbers and file handles. Newtypes, so
//! one is never passed for the other (or for a size or an offset).

use std::fmt;

/// An inode number as the kernel knows it (see [`crate::fs`] for how they are assigned).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InodeNo(pub u64);

impl InodeNo {
    /// The mount's root directory.
    pub const ROOT: InodeNo = InodeNo(1);
}

impl fmt::Display for InodeNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An open file handle, as returned by `open` and `create`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fh(pub u64);

impl fmt::Display for Fh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
