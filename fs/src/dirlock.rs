//! One daemon per directory: an exclusive `flock` on a file inside it.
//!
//! A daemon that was just unmounted may still be finishing (disk-cache writes, uploads) and
//! hold its locks for a moment, and so can a process forked by another thread between fork and
//! exec. Taking a lock therefore retries briefly before calling the directory taken.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::time::Duration;

/// Tries, 50 ms apart.
const ATTEMPTS: u32 = 20;

/// Takes an exclusive lock on `f`, retrying for about a second. False if another process
/// still holds it.
pub(crate) fn lock_exclusive(f: &File) -> bool {
    for attempt in 0..ATTEMPTS {
        // SAFETY: flock on a descriptor we own; no memory is involved.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return true;
        }
        if attempt + 1 < ATTEMPTS {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    false
}
