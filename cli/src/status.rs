//! The status file a daemon keeps, and `pai-mount status`.
//!
//! Every daemon writes `<state dir>/<mountpoint>.status.json` (the state dir is
//! `$XDG_STATE_HOME/pai-mount` or `~/.local/state/pai-mount`, mode 0700) about once a second
//! and when it exits. `status` and `unmount` read it; a file whose daemon is gone says so.
//!
//! `status` without a mount point lists what needs attention: live mounts, and mounts whose
//! daemon is gone with uploads left (pending or failed). The status and log files of a mount that
//! ended cleanly are deleted once [`KEEP_ENDED`] has passed (by `status` and at every mount).

use std::path::{Path, PathBuf};

use anyhow::Context;
use pai_mount_fs::object::credentials::home_dir;
use pai_mount_fs::write::WriteStatus;
use serde::{Deserialize, Serialize};

use crate::args::StatusArgs;

/// What a daemon reports about itself.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub pid: u32,
    /// The daemon's start time (clock ticks after boot, `/proc/PID/stat` field 22), so a pid
    /// reused by another process is not taken for the daemon.
    #[serde(default)]
    pub started: u64,
    pub mountpoint: PathBuf,
    pub source: String,
    /// `mounted`, `draining` (unmounted, finishing uploads), or `exited`.
    pub state: String,
    pub updated_at_ms: i64,
    pub staging_dir: Option<PathBuf>,
    pub cache_dir: Option<PathBuf>,
    pub cache_bytes: u64,
    pub write: Option<WriteStatus>,
    /// How the last unmount ended, once it has.
    pub outcome: Option<String>,
}

/// How long the status and log files of a mount that ended cleanly are kept.
pub const KEEP_ENDED: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// Whether `s` needs listing: its daemon runs, or uploads are left.
pub fn needs_attention(s: &DaemonStatus) -> bool {
    alive(s)
        || s.write
            .as_ref()
            .is_some_and(|w| w.pending_files > 0 || !w.failed.is_empty())
}

/// Deletes the status and log files of mounts that ended cleanly more than `keep` ago.
/// Returns how many mounts' files went.
pub fn clean_up(dir: &Path, keep: std::time::Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut removed = 0;
    for path in entries.flatten().map(|e| e.path()) {
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".status.json"))
        else {
            continue;
        };
        let Some(s) = read(&path) else { continue };
        let age_ms = now.saturating_sub(s.updated_at_ms).max(0) as u128;
        if needs_attention(&s) || age_ms < keep.as_millis() {
            continue;
        }
        let _ = std::fs::remove_file(&path);
        for log in [format!("{name}.log"), format!("{name}.log.1")] {
            let _ = std::fs::remove_file(dir.join(log));
        }
        removed += 1;
    }
    removed
}

/// The state directory (created with mode 0700).
pub fn state_dir() -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| home_dir().map(|h| h.join(".local/state")))
        .context("no home directory to keep mount state in: set HOME or XDG_STATE_HOME")?;
    let dir = base.join("pai-mount");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating state directory {}", dir.display()))?;
    Ok(dir)
}

/// A file name for a mount point: its path with `/` as `-`.
pub fn mount_name(mountpoint: &Path) -> String {
    let name: String = mountpoint
        .to_string_lossy()
        .trim_matches('/')
        .replace('/', "-");
    if name.is_empty() {
        "root".into()
    } else {
        name
    }
}

pub fn status_path(mountpoint: &Path) -> anyhow::Result<PathBuf> {
    Ok(state_dir()?.join(format!("{}.status.json", mount_name(mountpoint))))
}

/// Writes the status atomically.
pub fn write(path: &Path, s: &DaemonStatus) {
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(s).expect("status serializes");
    if std::fs::write(&tmp, body)
        .and_then(|()| std::fs::rename(&tmp, path))
        .is_err()
    {
        tracing::debug!(path = %path.display(), "could not write the status file");
    }
}

pub fn read(path: &Path) -> Option<DaemonStatus> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Whether the daemon that wrote `s` still runs: its pid exists, is not a zombie (exited,
/// not yet reaped by a supervisor), and started when the daemon did (not a reused pid).
pub fn alive(s: &DaemonStatus) -> bool {
    match proc_stat(s.pid) {
        Some((state, started)) => {
            state != 'Z' && state != 'X' && (s.started == 0 || started == s.started)
        }
        None => false,
    }
}

/// The state letter and start time of `pid`, from `/proc/PID/stat`.
pub fn proc_stat(pid: u32) -> Option<(char, u64)> {
    if pid == 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Field 22 overall is the 20th after the state (field 3).
    let started = fields.nth(18)?.parse().ok()?;
    Some((state, started))
}

pub use pai_mount_fs::mount::mib;

fn describe(s: &DaemonStatus) -> String {
    let mut out = format!("{} on {}\n", s.source, s.mountpoint.display());
    let state = if alive(s) || s.state == "exited" {
        s.state.clone()
    } else {
        "daemon not running (it was killed; pending uploads resume at the next mount)".into()
    };
    out += &format!("  state:    {state} (pid {})\n", s.pid);
    if let Some(w) = &s.write {
        out += &format!(
            "  uploads:  {} pending ({}), {} in progress, {} done ({})\n",
            w.pending_files,
            mib(w.pending_bytes),
            w.uploading,
            w.uploaded_files,
            mib(w.uploaded_bytes)
        );
        if !w.failed.is_empty() {
            out += &format!(
                "  failed:   {} (kept in the journal, retried at the next mount)\n",
                w.failed.len()
            );
            for f in &w.failed {
                out += &format!("    {} ({}): {}\n", f.key, mib(f.size), f.error);
            }
        }
    } else {
        out += "  uploads:  read-only mount\n";
    }
    if let Some(d) = &s.staging_dir {
        out += &format!("  staging:  {}\n", d.display());
    }
    if let Some(d) = &s.cache_dir {
        out += &format!("  cache:    {} ({})\n", d.display(), mib(s.cache_bytes));
    }
    if let Some(o) = &s.outcome {
        out += &format!("  last unmount: {o}\n");
    }
    out
}

pub fn run(a: StatusArgs) -> anyhow::Result<()> {
    let files: Vec<PathBuf> = match &a.mountpoint {
        Some(mp) => {
            let abs = std::fs::canonicalize(mp).unwrap_or_else(|_| mp.clone());
            vec![status_path(&abs)?]
        }
        None => {
            let dir = state_dir()?;
            clean_up(&dir, KEEP_ENDED);
            let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.to_string_lossy().ends_with(".status.json"))
                .collect();
            v.sort();
            v
        }
    };
    let listing = a.mountpoint.is_none() && !a.all;
    let found: Vec<DaemonStatus> = files
        .iter()
        .filter_map(|p| read(p))
        .filter(|s| !listing || needs_attention(s))
        .collect();
    if found.is_empty() {
        match &a.mountpoint {
            Some(mp) => anyhow::bail!("no pai-mount status for {}", mp.display()),
            None => {
                eprintln!(
                    "no live pai-mount mounts, and none with uploads left{}",
                    if a.all {
                        ""
                    } else {
                        " (--all lists ended ones too)"
                    }
                );
                return Ok(());
            }
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&found)?);
    } else {
        for s in &found {
            print!("{}", describe(s));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(dir: &Path, name: &str, age: std::time::Duration, pending: u64) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let s = DaemonStatus {
            pid: 0,
            state: "exited".into(),
            updated_at_ms: now - age.as_millis() as i64,
            write: Some(WriteStatus {
                pending_files: pending,
                ..Default::default()
            }),
            ..Default::default()
        };
        write(&dir.join(format!("{name}.status.json")), &s);
        std::fs::write(dir.join(format!("{name}.log")), "log").unwrap();
    }

    #[test]
    fn only_clean_ended_mounts_past_the_keep_time_are_cleaned_up() {
        let dir = tempfile::tempdir().unwrap();
        let week = KEEP_ENDED;
        ended(dir.path(), "old-clean", week * 2, 0);
        ended(dir.path(), "old-pending", week * 2, 3);
        ended(dir.path(), "new-clean", week / 2, 0);
        assert_eq!(clean_up(dir.path(), week), 1);
        let left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!left.iter().any(|n| n.starts_with("old-clean")), "{left:?}");
        assert!(left.contains(&"old-pending.status.json".to_string()));
        assert!(left.contains(&"old-pending.log".to_string()));
        assert!(left.contains(&"new-clean.status.json".to_string()));
        let s = read(&dir.path().join("old-pending.status.json")).unwrap();
        assert!(
            needs_attention(&s),
            "a dead mount with uploads left is listed"
        );
        let s = read(&dir.path().join("new-clean.status.json")).unwrap();
        assert!(!needs_attention(&s));
    }
}
