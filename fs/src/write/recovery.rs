//! Recovery at mount: what a previous mount of this staging directory left in its journal.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use super::journal::{Journal, Record};
use super::{FileNode, Staged, WriteBackError};
use crate::ids::InodeNo;

/// What a mount's staging directory held at start.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Files re-queued for upload (their nodes are in the overlay).
    pub nodes: Vec<Arc<FileNode>>,
    /// Records that belong to another source and stay untouched.
    pub foreign: Vec<Record>,
    /// Records that failed their checks.
    pub damaged: usize,
    /// Staging files without a record (never closed): removed.
    pub orphans: usize,
    /// The previous mount of this source changed the bucket and did not save its manifest.
    pub unsaved_namespace: bool,
}

fn id_of(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    u64::from_str_radix(name.get(..16)?, 16).ok()
}

pub(super) fn lock_dir(dir: &Path) -> Result<File, WriteBackError> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(dir.join("lock"))?;
    if !crate::dirlock::lock_exclusive(&f) {
        return Err(WriteBackError::Locked {
            dir: dir.to_path_buf(),
        });
    }
    Ok(f)
}

/// Reads the journal of the staging directory `dir`: a node for each record of source `me`
/// whose staging file exists (its upload is pending again), the other records set aside or
/// left to their source, and staging files without a record removed. Returns the largest
/// staging id seen.
pub(super) fn recover(
    dir: &Path,
    journal: &Journal,
    data_dir: &Path,
    me: &str,
    new_ino: &mut impl FnMut() -> InodeNo,
) -> Result<(Recovery, u64), WriteBackError> {
    let scan = journal.scan()?;
    let dirty = std::fs::read_to_string(dir.join("dirty")).unwrap_or_default();
    let mut recovery = Recovery {
        damaged: scan.damaged.len(),
        unsaved_namespace: dirty.lines().any(|l| l == me),
        ..Default::default()
    };
    let mut keep: Vec<u64> = scan.damaged.iter().filter_map(|(p, _)| id_of(p)).collect();
    let mut max_id = 0;
    for r in scan.records {
        max_id = max_id.max(r.id);
        keep.push(r.id);
        if r.source != me {
            recovery.foreign.push(r);
            continue;
        }
        let path = data_dir.join(format!("{:016x}", r.id));
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(key = %r.key, path = %path.display(), "the staging file of a pending upload is missing ({e}); its record is set aside");
                let _ = std::fs::rename(
                    journal.dir().join(format!("{:016x}.rec", r.id)),
                    journal.dir().join(format!("{:016x}.rec.damaged", r.id)),
                );
                recovery.damaged += 1;
                continue;
            }
        };
        let size = file.metadata()?.len();
        let staged = Arc::new(Staged::recovered(r.id, file, path));
        recovery
            .nodes
            .push(FileNode::recovered(new_ino(), &r, staged, size));
    }
    for entry in std::fs::read_dir(data_dir)? {
        let path = entry?.path();
        match id_of(&path) {
            Some(id) if keep.contains(&id) => {}
            Some(id) => {
                max_id = max_id.max(id);
                let _ = std::fs::remove_file(&path);
                recovery.orphans += 1;
            }
            None => {}
        }
    }
    Ok((recovery, max_id))
}
