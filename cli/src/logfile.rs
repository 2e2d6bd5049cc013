//! The daemon's log file: capped in size and rotated.
//!
//! When the file passes its cap, it is renamed to `FILE.1` (an older `FILE.1` to `FILE.2`, and
//! so on, [`KEEP`] files at most) and a new one is started, mode 0600. The process's stdout and
//! stderr are pointed at the new file too (`dup2`), so a panic message or a stray print lands
//! where the log is.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Rotated files kept besides the current one.
pub const KEEP: usize = 3;

struct State {
    file: File,
    written: u64,
}

/// A log file that rotates itself.
pub struct RotatingLog {
    path: PathBuf,
    max_bytes: u64,
    /// Whether the process's stdout and stderr follow the current file.
    redirect_stdio: bool,
    state: Mutex<State>,
}

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

impl RotatingLog {
    pub fn open(path: &Path, max_bytes: u64, redirect_stdio: bool) -> io::Result<Arc<Self>> {
        let file = open(path)?;
        let written = file.metadata()?.len();
        let log = Arc::new(Self {
            path: path.to_path_buf(),
            max_bytes: max_bytes.max(4096),
            redirect_stdio,
            state: Mutex::new(State { file, written }),
        });
        Ok(log)
    }

    fn rotated(&self, n: usize) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        p.into()
    }

    fn rotate(&self, st: &mut State) -> io::Result<()> {
        for n in (1..KEEP).rev() {
            let _ = std::fs::rename(self.rotated(n), self.rotated(n + 1));
        }
        std::fs::rename(&self.path, self.rotated(1))?;
        st.file = open(&self.path)?;
        st.written = 0;
        if self.redirect_stdio {
            for fd in [1, 2] {
                // SAFETY: dup2 onto the standard descriptors with a descriptor we own; it only
                // changes which file they refer to.
                unsafe { libc::dup2(st.file.as_raw_fd(), fd) };
            }
        }
        Ok(())
    }

    fn write_line(&self, buf: &[u8]) -> io::Result<usize> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.written + buf.len() as u64 > self.max_bytes && st.written > 0 {
            // A failed rotation keeps writing to the old file rather than losing lines.
            let _ = self.rotate(&mut st);
        }
        st.file.write_all(buf)?;
        st.written += buf.len() as u64;
        Ok(buf.len())
    }
}

/// A handle for `tracing_subscriber`'s writer.
pub struct Writer(pub Arc<RotatingLog>);

impl Write for Writer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_line(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_file_rotates_and_only_a_few_old_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.log");
        let log = RotatingLog::open(&path, 4096, false).unwrap();
        let line = vec![b'x'; 1000];
        for _ in 0..30 {
            Writer(log.clone()).write_all(&line).unwrap();
        }
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["d.log", "d.log.1", "d.log.2", "d.log.3"]);
        for n in &names {
            let len = std::fs::metadata(dir.path().join(n)).unwrap().len();
            assert!(len <= 4096, "{n}: {len}");
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
