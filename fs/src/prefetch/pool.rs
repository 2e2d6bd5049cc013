//! Recycled block buffers.
//!
//! Every fetched block is one [`BLOCK_SIZE`] buffer. Allocating each afresh costs more than
//! the copy into it: large allocations are fresh mappings, so each one page-faults and zeroes
//! 256 pages and is unmapped again when freed. The pool keeps up to `cap` freed buffers for the
//! next fetch instead.
//!
//! Invariant: a buffer goes back to the pool only when the last [`Bytes`] that refers to it is
//! dropped (the pool is the owner behind [`Bytes::from_owner`]), so a recycled buffer is never
//! visible through an old `Bytes`. Buffers in the pool were all live at once before, so the pool
//! never raises peak memory; it holds at most `cap` × [`BLOCK_SIZE`] while idle.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::cache::BLOCK_SIZE;

/// A bounded free list of block buffers.
#[derive(Debug)]
pub struct BlockPool {
    free: Mutex<Vec<Vec<u8>>>,
    cap: usize,
}

impl BlockPool {
    /// A pool that keeps at most `cap` idle buffers.
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            free: Mutex::new(Vec::new()),
            cap,
        })
    }

    /// An empty buffer with room for one block: recycled when one is idle.
    pub fn take(&self) -> Vec<u8> {
        let recycled = self.free.lock().unwrap().pop();
        match recycled {
            Some(mut v) => {
                v.clear();
                v
            }
            None => Vec::with_capacity(BLOCK_SIZE as usize),
        }
    }

    /// Wraps a filled buffer from [`Self::take`]; it returns to the pool when the last `Bytes`
    /// that refers to it is dropped.
    pub fn freeze(self: &Arc<Self>, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Pooled {
            buf,
            pool: self.clone(),
        })
    }

    /// Idle buffers held now.
    pub fn idle(&self) -> usize {
        self.free.lock().unwrap().len()
    }
}

struct Pooled {
    buf: Vec<u8>,
    pool: Arc<BlockPool>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if self.buf.capacity() != BLOCK_SIZE as usize {
            return;
        }
        let mut free = self.pool.free.lock().unwrap();
        if free.len() < self.pool.cap {
            free.push(std::mem::take(&mut self.buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_returns_only_after_its_last_reference_and_the_pool_is_bounded() {
        let pool = BlockPool::new(2);
        let mut a = pool.take();
        a.extend_from_slice(b"hello");
        let a = pool.freeze(a);
        let slice = a.slice(1..3);
        drop(a);
        assert_eq!(pool.idle(), 0, "a slice still refers to the buffer");
        assert_eq!(&slice[..], b"el");
        drop(slice);
        assert_eq!(pool.idle(), 1);
        let b = pool.take();
        assert!(b.is_empty(), "recycled buffers come back empty");
        assert_eq!(b.capacity(), BLOCK_SIZE as usize);
        let bufs: Vec<Bytes> = (0..4).map(|_| pool.freeze(pool.take())).collect();
        drop(bufs);
        assert_eq!(pool.idle(), 2, "at most `cap` idle buffers");
    }
}
