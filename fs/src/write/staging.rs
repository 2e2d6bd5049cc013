//! Staging files: the local content of files being written, and how an object gets into one.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use super::{FileNode, Remote, WriteBack, WriteBackError, WRITEBACK_CHUNK};
use crate::metrics::Metrics;

/// Creates `dir` (and parents) with mode 0700, or checks an existing one is a directory.
pub(crate) fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// A staging file: the local content of a file being written.
#[derive(Debug)]
pub struct Staged {
    pub id: u64,
    file: File,
    path: PathBuf,
}

impl std::os::fd::AsFd for Staged {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl Staged {
    /// A staging file found at mount, with a journal record.
    pub(super) fn recovered(id: u64, file: File, path: PathBuf) -> Self {
        Self { id, file, path }
    }

    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    /// Writes `data` at `offset`. When the write completes a `WRITEBACK_CHUNK` region, the
    /// kernel is asked to start writing that region to disk, so the fsync at `close()` finds
    /// little left to do (writeback overlaps the writer instead of following it).
    pub fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(data, offset)?;
        let end = offset + data.len() as u64;
        if end / WRITEBACK_CHUNK > offset / WRITEBACK_CHUNK {
            let start = (end / WRITEBACK_CHUNK - 1) * WRITEBACK_CHUNK;
            use std::os::fd::AsRawFd;
            // SAFETY: sync_file_range only starts writeback of this file's pages; it touches
            // no memory of ours. Failure is harmless: the fsync at close covers everything.
            unsafe {
                libc::sync_file_range(
                    self.file.as_raw_fd(),
                    start as libc::off64_t,
                    WRITEBACK_CHUNK as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                )
            };
        }
        Ok(())
    }

    pub fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    /// Reserves `offset..offset + len` in the staging file (`fallocate` mode 0, or
    /// `FALLOC_FL_KEEP_SIZE` with `keep_size`). A filesystem without `fallocate` gets the size
    /// change alone (mode 0), which is what a reader can tell.
    pub fn allocate(&self, offset: u64, len: u64, keep_size: bool) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let mode = if keep_size {
            libc::FALLOC_FL_KEEP_SIZE
        } else {
            0
        };
        // SAFETY: fallocate on a descriptor this struct owns; it touches no memory of ours.
        let r = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                mode,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EOPNOTSUPP) if keep_size => Ok(()),
            Some(libc::EOPNOTSUPP) => {
                let end = offset + len;
                if self.len()? < end {
                    self.file.set_len(end)?;
                }
                Ok(())
            }
            _ => Err(e),
        }
    }

    pub fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    pub fn metadata(&self) -> io::Result<std::fs::Metadata> {
        self.file.metadata()
    }

    pub fn set_modified(&self, t: std::time::SystemTime) -> io::Result<()> {
        self.file.set_modified(t)
    }

    pub fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    pub(super) fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Removes the file's name; open handles keep reading it until they drop it.
    pub(super) fn remove(&self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), "removing a staging file: {e}");
            }
        }
    }
}

impl WriteBack {
    fn new_staged(&self) -> io::Result<Arc<Staged>> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let path = self.data_dir.join(format!("{id:016x}"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        Ok(Arc::new(Staged { id, file, path }))
    }

    /// Makes sure `node` has a staging file, downloading its current object unless `empty`.
    pub async fn stage(&self, node: &FileNode, empty: bool) -> Result<Arc<Staged>, WriteBackError> {
        let _g = node.commit.lock().await;
        let (key, remote) = {
            let st = node.state();
            if let Some(s) = &st.staged {
                return Ok(s.clone());
            }
            (st.key.clone(), st.remote.clone())
        };
        let staged = self.new_staged()?;
        let mut size = 0;
        if let (Some(remote), false) = (remote, empty) {
            if let Err(e) = self.download(&key, &remote, &staged).await {
                staged.remove();
                return Err(e);
            }
            size = remote.size;
        }
        let mut st = node.state();
        st.staged = Some(staged.clone());
        if empty {
            st.version += 1;
            st.seq_end = Some(0);
            st.changed_all();
        } else {
            st.dirty.clear();
        }
        st.size = size;
        Ok(staged)
    }

    /// Copies an object into a staging file with parallel ranged GETs pinned to its ETag.
    async fn download(
        &self,
        key: &str,
        remote: &Remote,
        staged: &Arc<Staged>,
    ) -> Result<(), WriteBackError> {
        use futures::StreamExt;
        let part = self.config.part_size.max(1 << 20);
        let ranges: Vec<_> = (0..remote.size.div_ceil(part))
            .map(|i| i * part..remote.size.min((i + 1) * part))
            .collect();
        let mut results = futures::stream::iter(ranges)
            .map(|r| {
                let source = self.source.clone();
                let staged = staged.clone();
                let (key, etag, size) = (key.to_string(), remote.etag.clone(), remote.size);
                let parts = self.parts.clone();
                async move {
                    let _permit = parts.acquire_owned().await.expect("never closed");
                    let bytes = source
                        .get_range(&key, r.clone(), etag.as_deref(), size)
                        .await?;
                    tokio::task::spawn_blocking(move || staged.write_at(&bytes, r.start))
                        .await
                        .expect("staging write panicked")?;
                    Ok::<_, WriteBackError>(r.end - r.start)
                }
            })
            .buffer_unordered(self.config.upload_parts.max(1));
        while let Some(r) = results.next().await {
            Metrics::add(&self.metrics.staged_fetch_bytes, r?);
        }
        Ok(())
    }
}

pub(super) async fn read_part(
    staged: &Arc<Staged>,
    range: std::ops::Range<u64>,
) -> io::Result<Bytes> {
    let staged = staged.clone();
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; (range.end - range.start) as usize];
        let n = staged.read_at(&mut buf, range.start)?;
        if n != buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "staging file {} is shorter than expected",
                    staged.path.display()
                ),
            ));
        }
        Ok(Bytes::from(buf))
    })
    .await
    .expect("staging read panicked")
}
