//! A mount's life, one type for the daemon (by hand or under systemd), the demo and the
//! benches.
//!
//! [`Mount::start`] does everything up to a live mount, so that every mistake is reported
//! before anything is served: it opens the staging directory and its journal (resuming uploads a
//! previous mount left), loads the namespace (the stored manifest; a listing when there is none,
//! or when the last mount changed the bucket and ended without saving one), builds the
//! filesystem and mounts it. [`Mount::run`] serves until the mount goes away (an external
//! `umount`, or the `shutdown` future it is given), re-listing at the refresh interval and saving
//! the manifest periodically meanwhile; then it lets cache writes settle, drains the uploads (or
//! leaves them to the journal, see [`Drain`]) and saves the manifest.
//!
//! Shutdown order: the FUSE session ends first (no new operations), then the periodic tasks
//! stop, then cache writes settle, then uploads drain, then the manifest is saved. The runtime is
//! the caller's; it outlives the mount.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::fs::{Fs, FsConfig, OVERLAY_INO};
use crate::fuse::{self, MountOptions};
use crate::manifest::{self, BuildOptions, Origin};
use crate::metrics::Metrics;
use crate::namespace::Namespace;
use crate::object::{ObjectSource, SourceError};
use crate::reader::ReaderFactory;
use crate::write::{WriteBack, WriteBackError, WriteConfig, WriteStatus};

/// What [`Mount::start`] needs besides the source and the readers.
#[derive(Debug, Clone)]
pub struct MountConfig {
    pub mountpoint: PathBuf,
    pub fs: FsConfig,
    pub fuse: MountOptions,
    /// Write-back; `None` mounts read-only.
    pub write: Option<WriteConfig>,
    pub build: BuildOptions,
    /// Re-list the prefix at this interval and swap the new tree in.
    pub refresh: Option<Duration>,
    /// Also save the manifest at this interval while the namespace changes; zero turns it off.
    pub manifest_interval: Duration,
}

/// Why a mount could not start.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("opening the staging directory {dir}: {source}")]
    Staging {
        dir: PathBuf,
        source: WriteBackError,
    },
    #[error(transparent)]
    Namespace(#[from] SourceError),
    #[error("mounting at {mountpoint}: {source}")]
    Fuse {
        mountpoint: PathBuf,
        source: std::io::Error,
    },
}

/// How the uploads pending at unmount are treated.
#[derive(Debug, Clone, Default)]
pub struct Drain {
    /// Leave them all to the next mount (set by `unmount --lazy` while the mount runs).
    pub lazy: Arc<AtomicBool>,
    /// Wait at most this long for them; the rest stay in the journal.
    pub timeout: Option<Duration>,
}

/// How a mount ended.
#[derive(Debug, Clone)]
pub struct Ended {
    /// One line: what happened to the uploads and the manifest (`None` for a read-only mount).
    pub outcome: Option<String>,
    /// The uploads' state at the end.
    pub write: Option<WriteStatus>,
}

impl MountConfig {
    /// A read-only mount at `mountpoint` with every other setting at its default: no refresh,
    /// no periodic manifest save.
    pub fn new(mountpoint: PathBuf) -> Self {
        Self {
            mountpoint,
            fs: FsConfig::default(),
            fuse: MountOptions::default(),
            write: None,
            build: BuildOptions {
                attrs: manifest::AttrScan::Auto,
                ..BuildOptions::default()
            },
            refresh: None,
            manifest_interval: Duration::ZERO,
        }
    }
}

/// A live mount.
pub struct Mount {
    fs: Arc<Fs>,
    session: fuse::Session,
    source: ObjectSource,
    config: MountConfig,
}

impl Mount {
    /// Opens the staging journal, loads the namespace and mounts. `readers` serves reads of the
    /// bucket's objects (the prefetcher, usually).
    pub fn start(
        rt: &tokio::runtime::Runtime,
        source: ObjectSource,
        readers: Arc<dyn ReaderFactory>,
        metrics: Arc<Metrics>,
        config: MountConfig,
    ) -> Result<Self, MountError> {
        let write_back = match &config.write {
            Some(wc) => {
                let _guard = rt.enter();
                let mut next = OVERLAY_INO;
                let (wb, recovery) =
                    WriteBack::open(wc.clone(), source.clone(), metrics.clone(), || {
                        next += 1;
                        crate::ids::InodeNo(next)
                    })
                    .map_err(|e| MountError::Staging {
                        dir: wc.dir.clone(),
                        source: e,
                    })?;
                log_recovery(&recovery);
                Some((wb, recovery))
            }
            None => None,
        };
        let unsaved = write_back
            .as_ref()
            .is_some_and(|(_, r)| r.unsaved_namespace);
        let (ns, origin) = if unsaved {
            let why = "the previous mount of this source changed it and ended without saving its manifest"
                .to_string();
            tracing::warn!("{why}; listing the prefix instead of loading the stored manifest");
            let (header, entries) =
                rt.block_on(manifest::build(&source, &config.build, &Default::default()))?;
            let ns = Namespace::from_entries(&entries, header.built_at_ms);
            (ns, Origin::Listed { header, why })
        } else {
            rt.block_on(manifest::load_or_list(&source, &config.build))?
        };
        log_namespace(&ns, &origin);
        // The manifest bytes and listing pages are gone; hand their pages back to the system
        // so the daemon's resident size reflects what it holds.
        // SAFETY: malloc_trim only releases free heap memory; it has no other effect.
        unsafe { libc::malloc_trim(0) };
        let mut fs = Fs::new(ns, readers, config.fs.clone(), metrics);
        if let Some((wb, recovery)) = write_back {
            fs = fs.with_write_back(wb, recovery.nodes);
        }
        let fs = Arc::new(fs);
        let mut fuse_options = config.fuse.clone();
        fuse_options.read_only = config.write.is_none();
        let session = fuse::mount(
            fs.clone(),
            rt.handle().clone(),
            &config.mountpoint,
            &fuse_options,
        )
        .map_err(|e| MountError::Fuse {
            mountpoint: config.mountpoint.clone(),
            source: e,
        })?;
        Ok(Self {
            fs,
            session,
            source,
            config,
        })
    }

    pub fn fs(&self) -> &Arc<Fs> {
        &self.fs
    }

    /// Serves until the mount goes away: unmounted from outside, or `shutdown` resolved (then
    /// it unmounts itself, detaching a busy mount point so that the daemon can end). Then
    /// settles, drains (`progress` gets a line now and then) and saves the manifest.
    pub fn run(
        mut self,
        rt: &tokio::runtime::Runtime,
        shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
        drain: Drain,
        progress: &dyn Fn(&str),
    ) -> std::io::Result<Ended> {
        let mut unmounter = fuse::unmounter(&mut self.session);
        let mountpoint = self.config.mountpoint.clone();
        let trigger = rt.spawn(async move {
            shutdown.await;
            tracing::info!("unmounting");
            if let Err(e) = unmounter.unmount() {
                // Busy (a shell in it, an open file): detach it. The mount leaves the namespace
                // now and ends when its last open file is closed.
                tracing::warn!("unmount failed ({e}); detaching the mount point instead");
                if let Err(e) = crate::mountpoint::unmount(&mountpoint, true) {
                    tracing::error!("detaching failed too: {e}");
                }
            }
        });
        let mut tasks = Vec::new();
        if let Some(every) = self.config.refresh {
            tasks.push(rt.spawn(refresh(
                self.fs.clone(),
                self.source.clone(),
                self.config.build.clone(),
                every,
            )));
        }
        if self.fs.write_back().is_some() && !self.config.manifest_interval.is_zero() {
            tasks.push(rt.spawn(save_periodically(
                self.fs.clone(),
                self.config.manifest_interval,
            )));
        }
        tracing::info!(mountpoint = %self.config.mountpoint.display(), "mount is live");
        let served = fuse::run(self.session);
        trigger.abort();
        for t in tasks {
            t.abort();
        }
        // Blocks fetched by the last reads are still being written to the disk cache; stopping
        // the runtime would drop them, and the next mount would fetch them again.
        rt.block_on(self.fs.settle(Duration::from_secs(10)));
        let ended = match self.fs.write_back() {
            Some(wb) => {
                let (outcome, status) = finish_uploads(rt, &self.fs, wb, &drain, progress);
                Ended {
                    outcome: Some(outcome),
                    write: Some(status),
                }
            }
            None => Ended {
                outcome: None,
                write: None,
            },
        };
        self.fs.metrics().log();
        served.map(|()| ended)
    }
}

impl Mount {
    /// Serves the mount on another thread while `f` runs on this one; then unmounts and
    /// finishes as [`Mount::run`] does (the demo, benches and tests use it).
    pub fn serve_while<T>(
        self,
        rt: &tokio::runtime::Runtime,
        drain: Drain,
        f: impl FnOnce() -> T,
    ) -> (T, std::io::Result<Ended>) {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::scope(|scope| {
            let serving = scope.spawn(|| {
                let shutdown = Box::pin(async move {
                    let _ = stopped.await;
                });
                self.run(rt, shutdown, drain, &|_| {})
            });
            let out = f();
            let _ = stop.send(());
            let ended = serving
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("the mount's thread panicked")));
            (out, ended)
        })
    }
}

/// Re-lists the prefix every `every` and swaps the new tree in.
async fn refresh(fs: Arc<Fs>, source: ObjectSource, build: BuildOptions, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        match manifest::build(&source, &build, &Default::default()).await {
            Ok((header, entries)) => {
                let ns = Namespace::from_entries(&entries, header.built_at_ms);
                let generation = fs.swap(ns);
                tracing::info!(
                    generation,
                    objects = header.object_count,
                    "refreshed the namespace"
                );
            }
            Err(e) => tracing::warn!("refresh failed, keeping the current namespace: {e}"),
        }
    }
}

/// Saves the manifest every `every` while the namespace changes.
async fn save_periodically(fs: Arc<Fs>, every: Duration) {
    let mut saved = 0;
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let changes = fs.metrics().namespace_changes.load(Ordering::Relaxed);
        if changes == saved {
            continue;
        }
        match fs.save_manifest().await {
            Ok(len) => {
                saved = changes;
                tracing::info!(bytes = len, "saved the manifest");
            }
            Err(e) => tracing::warn!("saving the manifest failed, retrying later: {e}"),
        }
    }
}

/// `bytes` in MiB, for status lines.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// After the kernel unmount: waits for pending uploads (unless lazy; within the drain timeout),
/// then saves the namespace as the prefix's manifest. Returns a one-line outcome.
fn finish_uploads(
    rt: &tokio::runtime::Runtime,
    fs: &Arc<Fs>,
    wb: &Arc<WriteBack>,
    drain: &Drain,
    progress: &dyn Fn(&str),
) -> (String, WriteStatus) {
    let s = if drain.lazy.load(Ordering::Acquire) {
        wb.stop();
        wb.status()
    } else {
        let mut last_log = std::time::Instant::now();
        let waiting = wb.drain(|s| {
            let line = format!(
                "uploading: {} files ({}) left",
                s.pending_files,
                mib(s.pending_bytes)
            );
            progress(&line);
            if last_log.elapsed() > Duration::from_secs(5) {
                tracing::info!("{line}");
                last_log = std::time::Instant::now();
            }
        });
        let drained = rt.block_on(async {
            match drain.timeout {
                Some(t) => tokio::time::timeout(t, waiting).await.ok(),
                None => Some(waiting.await),
            }
        });
        drained.unwrap_or_else(|| {
            tracing::warn!(
                "uploads still pending after the drain timeout; they stay in the journal for the next mount"
            );
            wb.stop();
            wb.status()
        })
    };
    let mut outcome = if s.pending_files > 0 {
        format!(
            "left {} uploads ({}) in the journal for the next mount",
            s.pending_files,
            mib(s.pending_bytes)
        )
    } else {
        format!(
            "all uploads finished ({} files, {})",
            s.uploaded_files,
            mib(s.uploaded_bytes)
        )
    };
    if !s.failed.is_empty() {
        outcome += &format!(
            "; {} uploads failed and stay in the journal (pai-mount status shows them)",
            s.failed.len()
        );
    }
    if wb.is_dirty() {
        match rt.block_on(fs.save_manifest()) {
            Ok(len) => {
                tracing::info!(bytes = len, "saved the manifest");
                if s.pending_files == 0 && s.failed.is_empty() {
                    if let Err(e) = wb.clear_dirty() {
                        tracing::warn!("clearing the dirty marker: {e}");
                    }
                }
            }
            Err(e) => {
                tracing::error!("saving the manifest failed; the next mount lists the prefix: {e}");
                outcome += "; the manifest was not saved (the next mount lists the prefix)";
            }
        }
    }
    tracing::info!("{outcome}");
    (outcome, s)
}

fn log_recovery(recovery: &crate::write::Recovery) {
    if !recovery.nodes.is_empty() {
        tracing::warn!(
            files = recovery.nodes.len(),
            "resuming uploads a previous mount left in the journal"
        );
    }
    for r in &recovery.foreign {
        tracing::warn!(source = %r.source, key = %r.key, "a pending upload of another source stays in the journal; mount that source with this staging directory to finish it");
    }
    if recovery.damaged > 0 {
        tracing::error!(
            records = recovery.damaged,
            "damaged journal records were set aside (see pai-mount status and docs/SEMANTICS.md)"
        );
    }
    if recovery.orphans > 0 {
        tracing::info!(
            files = recovery.orphans,
            "removed staging files of writes that were never closed"
        );
    }
}

/// Logs where the namespace came from, its size, and the keys it had to skip.
pub fn log_namespace(ns: &Namespace, origin: &Origin) {
    let how = match origin {
        Origin::Stored(_) => "stored manifest".to_string(),
        Origin::Listed { why, .. } => format!("listing ({why})"),
    };
    tracing::info!(
        files = ns.file_count(),
        dirs = ns.dir_count(),
        bytes = ns.total_bytes(),
        memory_bytes = ns.heap_bytes(),
        from = %how,
        "namespace ready"
    );
    let s = ns.skipped();
    if s.total() > 0 {
        tracing::warn!(
            dot_segment = s.dot_segment,
            empty_segment = s.empty_segment,
            name_too_long = s.name_too_long,
            invalid_utf8 = s.invalid_utf8,
            control_char = s.control_char,
            shadowed = s.shadowed,
            "skipped {} keys that cannot be file names (see docs/SEMANTICS.md)",
            s.total()
        );
        for (key, why) in &ns.skipped_examples {
            tracing::warn!(key = %key, reason = why, "skipped key");
        }
    }
}
