//! Block buffers: [`AlignedBuf`], a fixed-capacity byte buffer aligned to [`ALIGN`], and
//! [`BufPool`], a bounded free list of them.
//!
//! Fetched blocks (prefetch) and block files read from the disk cache live in these buffers.
//! Allocating each afresh costs more than filling it: a 1 MiB allocation is fresh memory that
//! page-faults and is zeroed, and is given back when freed. A pool keeps a bounded number of
//! freed buffers for the next fetch or read instead. The alignment lets the same buffers serve
//! files opened with `O_DIRECT` (the disk cache writes its block files that way).
//!
//! Invariant: a pooled buffer returns to its pool only when the last [`Bytes`] that refers to it
//! is dropped (the buffer is the owner behind [`Bytes::from_owner`]), so a recycled buffer is
//! never visible through old bytes. Buffers in a pool were all live at once before, so a pool
//! never raises peak memory; it holds at most `keep` buffers while idle.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// Alignment of buffers (and of the cache's reads and writes): what `O_DIRECT` asks on every
/// common filesystem (4 KiB logical blocks at most).
pub const ALIGN: usize = 4096;

/// Buffers this large are mappings of their own (page-aligned, returned to the system when
/// freed); aligned heap allocations of 1 MiB fragmented the allocator's arenas (about 50 MiB
/// more peak RSS with 16 readers).
const MAP_FROM: usize = 256 << 10;

/// Rounds `n` up to a multiple of [`ALIGN`].
pub fn align_up(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// A heap buffer aligned to [`ALIGN`] with a fixed capacity (a multiple of [`ALIGN`]).
///
/// Invariant: bytes `..len` are initialized; the rest of the capacity may not be. A buffer
/// taken from a [`BufPool`] goes back to it when dropped (when the last `Bytes` made by
/// [`AlignedBuf::freeze`] is dropped), so a recycled buffer is never visible through old bytes.
pub struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
    /// 0 once the allocation has moved back to a pool.
    cap: usize,
    home: Option<Arc<BufPool>>,
}

// SAFETY: the buffer owns its allocation exclusively, like a `Vec<u8>`.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only reads initialized bytes, like `&Vec<u8>`.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// An empty buffer with room for at least `cap` bytes.
    pub fn with_capacity(cap: usize) -> Self {
        let cap = align_up(cap.max(1));
        let raw = if cap >= MAP_FROM {
            // SAFETY: an anonymous private mapping of `cap` bytes; no existing memory is touched.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    cap,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                std::alloc::handle_alloc_error(Self::layout(cap));
            }
            p.cast::<u8>()
        } else {
            // SAFETY: the layout has a non-zero size.
            unsafe { std::alloc::alloc(Self::layout(cap)) }
        };
        let ptr = std::ptr::NonNull::new(raw)
            .unwrap_or_else(|| std::alloc::handle_alloc_error(Self::layout(cap)));
        Self {
            ptr,
            len: 0,
            cap,
            home: None,
        }
    }

    fn layout(cap: usize) -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(cap, ALIGN).expect("valid layout")
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `data`; panics if it does not fit.
    pub fn extend_from_slice(&mut self, data: &[u8]) {
        assert!(data.len() <= self.cap - self.len, "AlignedBuf overflow");
        // SAFETY: the destination lies inside the allocation (checked above) and cannot overlap
        // a borrowed `data`, which `&mut self` excludes.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.ptr.as_ptr().add(self.len),
                data.len(),
            )
        };
        self.len += data.len();
    }

    /// Appends `n` zero bytes; panics if they do not fit.
    pub fn zero_fill(&mut self, n: usize) {
        assert!(n <= self.cap - self.len, "AlignedBuf overflow");
        // SAFETY: inside the allocation, as checked.
        unsafe { std::ptr::write_bytes(self.ptr.as_ptr().add(self.len), 0, n) };
        self.len += n;
    }

    /// The spare capacity after `len`, for a read to fill.
    pub(crate) fn spare_ptr(&mut self) -> *mut u8 {
        // SAFETY: `len <= cap`, so the pointer stays inside (or one past) the allocation.
        unsafe { self.ptr.as_ptr().add(self.len) }
    }

    /// Marks `n` more bytes as initialized.
    ///
    /// # Safety
    /// The `n` bytes after `len` must have been written (by a completed read).
    pub(crate) unsafe fn advance(&mut self, n: usize) {
        assert!(n <= self.cap - self.len, "read past the buffer");
        self.len += n;
    }

    pub fn freeze(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `..len` is initialized (the type's invariant) and owned by `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_ref()
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if let Some(pool) = self.home.take() {
            let mut free = pool.free.lock().unwrap();
            if free.len() < pool.keep && self.cap == pool.size {
                free.push(AlignedBuf {
                    ptr: self.ptr,
                    len: 0,
                    cap: std::mem::replace(&mut self.cap, 0),
                    home: None,
                });
                return;
            }
        }
        if self.cap == 0 {
            return;
        }
        if self.cap >= MAP_FROM {
            // SAFETY: mapped in `with_capacity` with exactly this length; nothing refers to it
            // any more (the last `Bytes` is gone).
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.cap) };
        } else {
            // SAFETY: allocated in `with_capacity` with this very layout.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.cap)) };
        }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .field("cap", &self.cap)
            .finish()
    }
}

/// Recycled buffers of one size, so that fetches and reads neither page-fault fresh memory nor
/// fragment the heap. Keeps at most `keep` idle buffers.
#[derive(Debug)]
pub struct BufPool {
    size: usize,
    keep: usize,
    free: Mutex<Vec<AlignedBuf>>,
}

impl BufPool {
    /// A pool of buffers of `size` bytes (rounded up to [`ALIGN`]).
    pub fn new(size: usize, keep: usize) -> Arc<Self> {
        Arc::new(Self {
            size: align_up(size),
            keep,
            free: Mutex::new(Vec::new()),
        })
    }

    /// An empty buffer with room for `len` bytes: a pooled one when `len` is close to the
    /// pool's size (a small file does not pin a large buffer), else a fresh one.
    pub fn take(self: &Arc<Self>, len: usize) -> AlignedBuf {
        if len > self.size || len <= self.size / 2 {
            return AlignedBuf::with_capacity(len);
        }
        let recycled = self.free.lock().unwrap().pop();
        let mut buf = recycled.unwrap_or_else(|| AlignedBuf::with_capacity(self.size));
        buf.home = Some(self.clone());
        buf
    }

    /// Idle buffers held now.
    pub fn idle(&self) -> usize {
        self.free.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_small_and_mapped_alike() {
        for cap in [1, 5000, MAP_FROM - 1, MAP_FROM, (1 << 20) + 4096] {
            let mut b = AlignedBuf::with_capacity(cap);
            assert_eq!(b.capacity(), align_up(cap));
            assert_eq!(b.as_ref().as_ptr() as usize % ALIGN, 0, "{cap}");
            let data: Vec<u8> = (0..cap).map(|i| i as u8).collect();
            b.extend_from_slice(&data);
            b.zero_fill(b.capacity() - b.len());
            let bytes = b.freeze();
            assert_eq!(&bytes[..cap], &data[..]);
            assert!(bytes[cap..].iter().all(|&x| x == 0));
        }
    }

    #[test]
    fn pooled_buffers_return_after_their_last_bytes_and_the_pool_is_bounded() {
        let pool = BufPool::new(10_000, 2);
        assert_eq!(
            pool.take(100).capacity(),
            ALIGN,
            "small reads get a small buffer"
        );
        let mut a = pool.take(9_000);
        assert_eq!(a.capacity(), align_up(10_000));
        a.extend_from_slice(b"hello");
        let bytes = a.freeze();
        let slice = bytes.slice(1..3);
        drop(bytes);
        assert_eq!(pool.idle(), 0, "a slice still refers to the buffer");
        assert_eq!(&slice[..], b"el");
        drop(slice);
        assert_eq!(pool.idle(), 1);
        let b = pool.take(9_000);
        assert!(b.is_empty(), "recycled buffers come back empty");
        assert_eq!(pool.idle(), 0);
        drop(b);
        let many: Vec<Bytes> = (0..4).map(|_| pool.take(9_000).freeze()).collect();
        drop(many);
        assert_eq!(pool.idle(), 2, "at most `keep` idle buffers");
    }
}
