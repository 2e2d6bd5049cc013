//! Per-handle readers.
//!
//! Every open file gets one [`ObjectReader`] from the filesystem's [`ReaderFactory`]. The
//! reader owns whatever per-handle state a read strategy needs (sequential detection, a
//! prefetch window, a cache tier); the filesystem only asks it for byte ranges. Today's
//! [`RangeReader`] issues one ranged GET per read; prefetching readers plug in here.

use bytes::Bytes;

pub use crate::object::PinnedObject;
use crate::object::{ObjectSource, ReadError};

/// Reads byte ranges of one pinned object.
#[async_trait::async_trait]
pub trait ObjectReader: Send + Sync {
    /// Returns exactly `min(len, size - offset)` bytes at `offset`; empty at or past EOF.
    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, ReadError>;
}

/// Makes a reader for each open handle.
pub trait ReaderFactory: Send + Sync {
    fn open(&self, object: PinnedObject) -> Box<dyn ObjectReader>;

    /// Whether work started on behalf of readers (a fetch, a disk-cache write) is still
    /// running. The daemon waits for it at exit, so the blocks of the last reads reach the
    /// disk cache.
    fn busy(&self) -> bool {
        false
    }
}

/// One ranged GET per read, clamped to the object's size.
pub struct RangeReader {
    source: ObjectSource,
    object: PinnedObject,
}

#[async_trait::async_trait]
impl ObjectReader for RangeReader {
    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, ReadError> {
        let size = self.object.size;
        if offset >= size || len == 0 {
            return Ok(Bytes::new());
        }
        let end = size.min(offset + u64::from(len));
        self.source
            .get_range(
                &self.object.key,
                offset..end,
                self.object.etag.as_deref(),
                size,
            )
            .await
    }
}

/// Makes [`RangeReader`]s.
pub struct RangeReaderFactory {
    source: ObjectSource,
}

impl RangeReaderFactory {
    pub fn new(source: ObjectSource) -> Self {
        Self { source }
    }
}

impl ReaderFactory for RangeReaderFactory {
    fn open(&self, object: PinnedObject) -> Box<dyn ObjectReader> {
        Box::new(RangeReader {
            source: self.source.clone(),
            object,
        })
    }
}
