//! I/O engines: how block bytes move between memory and the cache's files.
//!
//! The cache decides *where* bytes live (which file, which offset); an [`IoEngine`] only moves
//! them. [`UringEngine`] submits reads and writes to an io_uring owned by one thread;
//! [`PreadEngine`] runs `pread`/`pwrite` on tokio's blocking pool. Both pass the same test
//! suite (`engine_tests`). [`open_engine`] picks io_uring and falls back to pread, logging once,
//! when the kernel or a sandbox refuses io_uring.
//!
//! Reads land in [`AlignedBuf`]s ([`ALIGN`]-aligned, read in whole multiples of [`ALIGN`]), and
//! the cache writes aligned buffers, so both work on files opened with `O_DIRECT` (the cache
//! writes its block files that way).

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::mpsc;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::buf::{align_up, AlignedBuf, ALIGN};

/// Moves bytes between memory and files.
#[async_trait::async_trait]
pub trait IoEngine: std::fmt::Debug + Send + Sync {
    fn name(&self) -> &'static str;
    /// Reads up to `len` bytes at `offset` (a multiple of [`ALIGN`]) into `buf` (empty, with
    /// room for `len`); fewer only at end of file. Each read asks for a whole number of
    /// [`ALIGN`] blocks, so `O_DIRECT` files work.
    async fn read_at(
        &self,
        file: Arc<File>,
        offset: u64,
        len: usize,
        buf: AlignedBuf,
    ) -> io::Result<Bytes>;
    /// Writes all of `data` at `offset`.
    async fn write_at(&self, file: Arc<File>, offset: u64, data: Bytes) -> io::Result<()>;
}

/// Which engine to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineKind {
    /// io_uring when available, else pread.
    #[default]
    Auto,
    Uring,
    Pread,
}

/// Opens the engine of `kind`. `Auto` falls back to pread if io_uring cannot be set up.
pub fn open_engine(kind: EngineKind) -> io::Result<Arc<dyn IoEngine>> {
    match kind {
        EngineKind::Pread => Ok(Arc::new(PreadEngine)),
        EngineKind::Uring => Ok(Arc::new(UringEngine::new()?)),
        EngineKind::Auto => match UringEngine::new() {
            Ok(e) => Ok(Arc::new(e)),
            Err(e) => {
                tracing::warn!("io_uring is unavailable ({e}); the disk cache uses pread/pwrite");
                Ok(Arc::new(PreadEngine))
            }
        },
    }
}

/// `pread`/`pwrite` on the blocking pool.
#[derive(Debug, Clone, Copy)]
pub struct PreadEngine;

fn join_error(e: tokio::task::JoinError) -> io::Error {
    io::Error::other(e)
}

#[async_trait::async_trait]
impl IoEngine for PreadEngine {
    fn name(&self) -> &'static str {
        "pread"
    }

    async fn read_at(
        &self,
        file: Arc<File>,
        offset: u64,
        len: usize,
        mut buf: AlignedBuf,
    ) -> io::Result<Bytes> {
        assert!(
            buf.is_empty() && buf.capacity() >= len,
            "read buffer too small"
        );
        tokio::task::spawn_blocking(move || {
            while buf.len() < len {
                let want = align_up(len - buf.len());
                // SAFETY: at most `cap - len` bytes are written after `len`, inside the
                // allocation; the descriptor is owned by `file`.
                let n = unsafe {
                    libc::pread(
                        file.as_raw_fd(),
                        buf.spare_ptr().cast(),
                        want.min(buf.capacity() - buf.len()),
                        (offset + buf.len() as u64) as libc::off_t,
                    )
                };
                match n {
                    0 => break,
                    // SAFETY: pread wrote `n` bytes after `len`.
                    n if n > 0 => unsafe { buf.advance(n as usize) },
                    _ => {
                        let e = io::Error::last_os_error();
                        match e.raw_os_error() {
                            Some(libc::EINTR) => {}
                            // An `O_DIRECT` file after a short read (its end): the next offset
                            // is not aligned, which is the end of the file too.
                            Some(libc::EINVAL) if !buf.len().is_multiple_of(ALIGN) => break,
                            _ => return Err(e),
                        }
                    }
                }
            }
            let got = buf.len().min(len);
            Ok(buf.freeze().slice(..got))
        })
        .await
        .map_err(join_error)?
    }

    async fn write_at(&self, file: Arc<File>, offset: u64, data: Bytes) -> io::Result<()> {
        tokio::task::spawn_blocking(move || file.write_all_at(&data, offset))
            .await
            .map_err(join_error)?
    }
}

/// Entries in the ring. Cache I/O is a few requests per FUSE read; 128 is ample.
const RING_ENTRIES: u32 = 128;

enum Request {
    Read {
        file: Arc<File>,
        offset: u64,
        /// Bytes wanted; the buffer has room for them rounded up to ALIGN.
        len: usize,
        buf: AlignedBuf,
        reply: oneshot::Sender<io::Result<Bytes>>,
    },
    Write {
        file: Arc<File>,
        offset: u64,
        data: Bytes,
        reply: oneshot::Sender<io::Result<()>>,
    },
}

/// An io_uring owned by one thread; requests arrive over a channel.
///
/// While requests are in flight the thread sleeps in the ring, which also holds a read of an
/// eventfd that every new request writes: a request arriving then is submitted at once instead
/// of waiting for the next completion (with 1 ms disk reads, that wait halved the queue depth).
///
/// Invariant: a request's file and buffer stay owned by the thread's in-flight table from
/// submission until its completion is reaped, so the kernel never sees freed memory.
#[derive(Debug)]
pub struct UringEngine {
    tx: std::sync::Mutex<mpsc::Sender<Request>>,
    wake: Arc<std::os::fd::OwnedFd>,
}

/// `user_data` of the eventfd read; request slots count up from 0.
const WAKE: u64 = u64::MAX;

impl UringEngine {
    pub fn new() -> io::Result<Self> {
        use std::os::fd::FromRawFd;
        let ring = io_uring::IoUring::new(RING_ENTRIES)?;
        // SAFETY: eventfd has no memory arguments; the descriptor is checked, then owned.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        let wake = Arc::new(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
        let (tx, rx) = mpsc::channel();
        let thread_wake = wake.clone();
        std::thread::Builder::new()
            .name("pai-mount-uring".into())
            .spawn(move || uring_loop(ring, rx, thread_wake))?;
        Ok(Self {
            tx: std::sync::Mutex::new(tx),
            wake,
        })
    }

    fn send(&self, r: Request) -> io::Result<()> {
        self.tx
            .lock()
            .unwrap()
            .send(r)
            .map_err(|_| io::Error::other("io_uring thread has stopped"))?;
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live local to a descriptor we own. A failure (counter
        // overflow, impossible in practice) only delays the request to the next completion.
        unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        Ok(())
    }
}

fn uring_loop(
    mut ring: io_uring::IoUring,
    rx: mpsc::Receiver<Request>,
    wake: Arc<std::os::fd::OwnedFd>,
) {
    use io_uring::{opcode, types};
    let mut inflight: Vec<Option<Request>> = Vec::new();
    let mut free: VecDeque<usize> = VecDeque::new();
    let mut active = 0usize;
    let mut closed = false;
    // The eventfd read's target. Leaked (8 bytes per engine): the ring may still hold the read
    // when this thread returns, so the memory must outlive the ring's teardown.
    let wake_buf: &'static mut u64 = Box::leak(Box::new(0u64));
    let wake_ptr: *mut u8 = (wake_buf as *mut u64).cast();
    let mut armed = false;
    loop {
        // Take new requests: block only when nothing is in flight.
        loop {
            let next = if active == 0 && !closed {
                rx.recv().map_err(|_| mpsc::TryRecvError::Disconnected)
            } else if !closed && active < RING_ENTRIES as usize {
                rx.try_recv()
            } else {
                break;
            };
            let mut req = match next {
                Ok(r) => r,
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            };
            let slot = free.pop_front().unwrap_or_else(|| {
                inflight.push(None);
                inflight.len() - 1
            });
            let entry = match &mut req {
                Request::Read {
                    file,
                    offset,
                    buf,
                    len,
                    ..
                } => opcode::Read::new(
                    types::Fd(file.as_raw_fd()),
                    buf.spare_ptr(),
                    align_up(*len).min(buf.capacity()) as u32,
                )
                .offset(*offset)
                .build(),
                Request::Write {
                    file, offset, data, ..
                } => opcode::Write::new(
                    types::Fd(file.as_raw_fd()),
                    data.as_ptr(),
                    data.len() as u32,
                )
                .offset(*offset)
                .build(),
            }
            .user_data(slot as u64);
            inflight[slot] = Some(req);
            // SAFETY: the entry points into `inflight[slot]`'s file and buffer, which stay in the
            // table (not moved: `AlignedBuf`/`Bytes` heap storage is stable) until the completion
            // for `slot` is reaped below. A read's buffer is empty, so its whole capacity is free.
            let pushed = unsafe { ring.submission().push(&entry) };
            if pushed.is_err() {
                fail(
                    inflight[slot].take(),
                    io::Error::other("io_uring submission queue full"),
                );
                free.push_back(slot);
                continue;
            }
            active += 1;
        }
        if active == 0 {
            if closed {
                return;
            }
            continue;
        }
        if !armed && !closed {
            let entry = opcode::Read::new(types::Fd(wake.as_raw_fd()), wake_ptr, 8)
                .build()
                .user_data(WAKE);
            // SAFETY: the target is the leaked 8-byte buffer, valid for the process's life.
            armed = unsafe { ring.submission().push(&entry) }.is_ok();
        }
        if let Err(e) = ring.submit_and_wait(1) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!("io_uring submit failed: {e}");
        }
        let done: Vec<(u64, i32)> = ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (slot, res) in done {
            if slot == WAKE {
                armed = false; // new requests are waiting in the channel
                continue;
            }
            let slot = slot as usize;
            active -= 1;
            free.push_back(slot);
            match inflight[slot].take() {
                Some(Request::Read {
                    mut buf,
                    len,
                    reply,
                    ..
                }) => {
                    let r = if res < 0 {
                        Err(io::Error::from_raw_os_error(-res))
                    } else {
                        // SAFETY: the kernel wrote `res` bytes into the buffer's spare capacity.
                        unsafe { buf.advance(res as usize) };
                        let got = buf.len().min(len);
                        Ok(buf.freeze().slice(..got))
                    };
                    let _ = reply.send(r);
                }
                Some(Request::Write { data, reply, .. }) => {
                    let r = match res {
                        r if r < 0 => Err(io::Error::from_raw_os_error(-r)),
                        r if r as usize != data.len() => Err(io::Error::new(
                            io::ErrorKind::WriteZero,
                            format!("short write: {r} of {} bytes", data.len()),
                        )),
                        _ => Ok(()),
                    };
                    let _ = reply.send(r);
                }
                None => {}
            }
        }
    }
}

fn fail(req: Option<Request>, e: io::Error) {
    match req {
        Some(Request::Read { reply, .. }) => {
            let _ = reply.send(Err(e));
        }
        Some(Request::Write { reply, .. }) => {
            let _ = reply.send(Err(e));
        }
        None => {}
    }
}

#[async_trait::async_trait]
impl IoEngine for UringEngine {
    fn name(&self) -> &'static str {
        "io_uring"
    }

    async fn read_at(
        &self,
        file: Arc<File>,
        offset: u64,
        len: usize,
        buf: AlignedBuf,
    ) -> io::Result<Bytes> {
        assert!(
            buf.is_empty() && buf.capacity() >= len,
            "read buffer too small"
        );
        let (reply, rx) = oneshot::channel();
        self.send(Request::Read {
            file,
            offset,
            len,
            buf,
            reply,
        })?;
        // One read: a read of a regular file is short only at end of file (callers check
        // lengths anyway).
        rx.await
            .map_err(|_| io::Error::other("io_uring thread dropped a request"))?
    }

    async fn write_at(&self, file: Arc<File>, offset: u64, data: Bytes) -> io::Result<()> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Write {
            file,
            offset,
            data,
            reply,
        })?;
        rx.await
            .map_err(|_| io::Error::other("io_uring thread dropped a request"))?
    }
}

#[cfg(test)]
mod engine_tests {
    use super::*;

    async fn body(engine: Arc<dyn IoEngine>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = Arc::new(
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(&path)
                .unwrap(),
        );
        let data: Bytes = (0..300_000u32)
            .map(|i| (i % 253) as u8)
            .collect::<Vec<_>>()
            .into();
        engine
            .write_at(file.clone(), 0, data.clone())
            .await
            .unwrap();
        engine
            .write_at(file.clone(), 300_000, Bytes::from_static(b"tail"))
            .await
            .unwrap();
        let got = engine
            .read_at(file.clone(), 1000, 5000, AlignedBuf::with_capacity(5000))
            .await
            .unwrap();
        assert_eq!(&got[..], &data[1000..6000]);
        let got = engine
            .read_at(file.clone(), 299_998, 100, AlignedBuf::with_capacity(100))
            .await
            .unwrap();
        assert_eq!(
            &got[..],
            &[data[299_998], data[299_999], b't', b'a', b'i', b'l'],
            "short at EOF"
        );
        assert!(engine
            .read_at(file.clone(), 400_000, 10, AlignedBuf::with_capacity(10))
            .await
            .unwrap()
            .is_empty());
        // Many at once.
        let mut tasks = Vec::new();
        for i in 0..64u64 {
            let (e, f) = (engine.clone(), file.clone());
            tasks.push(tokio::spawn(async move {
                e.read_at(f, i * 1000, 1000, AlignedBuf::with_capacity(1000))
                    .await
                    .unwrap()
            }));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            assert_eq!(&t.await.unwrap()[..], &data[i * 1000..(i + 1) * 1000]);
        }
        // O_DIRECT: aligned buffers and whole aligned reads, short only at the end.
        use std::os::unix::fs::OpenOptionsExt;
        match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
        {
            Ok(direct) => {
                let direct = Arc::new(direct);
                let got = engine
                    .read_at(
                        direct.clone(),
                        0,
                        300_004,
                        AlignedBuf::with_capacity(300_004),
                    )
                    .await
                    .unwrap();
                assert_eq!(&got[..300_000], &data[..]);
                assert_eq!(&got[300_000..], b"tail");
                let got = engine
                    .read_at(direct.clone(), 8192, 5000, AlignedBuf::with_capacity(5000))
                    .await
                    .unwrap();
                assert_eq!(&got[..], &data[8192..13_192]);
                let got = engine
                    .read_at(direct, 299_008, 8192, AlignedBuf::with_capacity(8192))
                    .await
                    .unwrap();
                assert_eq!(got.len(), 996, "short at EOF");
            }
            Err(e) => eprintln!("O_DIRECT unsupported here ({e}); buffered reads covered above"),
        }
        // Reading a file opened write-only is an error, not a hang.
        let wo = Arc::new(std::fs::OpenOptions::new().write(true).open(&path).unwrap());
        assert!(engine
            .read_at(wo, 0, 10, AlignedBuf::with_capacity(10))
            .await
            .is_err());
    }

    #[tokio::test]
    async fn pread_engine_passes_the_engine_suite() {
        body(open_engine(EngineKind::Pread).unwrap()).await;
    }

    #[tokio::test]
    async fn uring_engine_passes_the_engine_suite() {
        match UringEngine::new() {
            Ok(e) => body(Arc::new(e)).await,
            // The fallback is what production would use; say so instead of passing silently.
            Err(e) => eprintln!("io_uring unavailable here ({e}); covered by the pread run"),
        }
    }
}
