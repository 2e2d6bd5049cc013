//! `pai-mount mount` and `pai-mount unmount`.
//!
//! Without `--foreground`, the command re-runs itself as a detached daemon and waits until the
//! daemon reports on a pipe that the mount is live, or why it failed: every check (source,
//! credentials, bucket, manifest, mount point) happens before the command returns, and a
//! failure is an error message and a non-zero exit code.

use std::io::{BufRead, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use pai_mount_fs::fs::{Fs, FsConfig};
use pai_mount_fs::fuse::{self, MountOptions};
use pai_mount_fs::manifest::{self, BuildOptions, Origin};
use pai_mount_fs::metrics::Metrics;
use pai_mount_fs::mountpoint;
use pai_mount_fs::namespace::Namespace;
use pai_mount_fs::object::credentials::home_dir;
use pai_mount_fs::write::{WriteBack, WriteConfig};

use crate::args::{MountArgs, UnmountArgs};
use crate::status::{self, DaemonStatus};

/// Applies `-o` options.
fn parse_options(
    opts: &[String],
    fs: &mut FsConfig,
    mount: &mut MountOptions,
) -> anyhow::Result<()> {
    for o in opts.iter().map(|o| o.trim()).filter(|o| !o.is_empty()) {
        let (k, v) = o.split_once('=').map_or((o, None), |(k, v)| (k, Some(v)));
        let num = |v: Option<&str>, radix| -> anyhow::Result<u32> {
            let v = v.with_context(|| format!("-o {k} needs a value"))?;
            u32::from_str_radix(v, radix).with_context(|| format!("-o {k}={v}: not a number"))
        };
        match k {
            "allow_other" => mount.allow_other = true,
            "uid" => fs.uid = num(v, 10)?,
            "gid" => fs.gid = num(v, 10)?,
            "file_mode" => fs.file_mode = (num(v, 8)? & 0o7777) as u16,
            "dir_mode" => fs.dir_mode = (num(v, 8)? & 0o7777) as u16,
            "ro" => mount.read_only = true,
            other => bail!(
                "unknown mount option {other:?} (known: {})",
                crate::options::FUSE_OPTIONS.join(", ")
            ),
        }
    }
    Ok(())
}

/// Where the daemon logs by default: ~/.local/state/pai-mount/<mountpoint>.log, dir mode 0700.
fn default_log_file(mountpoint: &Path) -> anyhow::Result<PathBuf> {
    Ok(status::state_dir()?.join(format!("{}.log", status::mount_name(mountpoint))))
}

/// Where written files wait for upload: `--staging-dir`, else `<cache-dir>/staging`, else
/// `$XDG_CACHE_HOME/pai-mount/staging/<source>` (one per source, so a remount finds the
/// uploads a dead daemon left).
fn staging_dir(a: &MountArgs, source: &str) -> PathBuf {
    if let Some(d) = &a.write.staging_dir {
        return d.clone();
    }
    if let Some(d) = &a.cache.cache_dir {
        return d.join("staging");
    }
    // Never a temporary directory: staged files must survive a reboot.
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| home_dir().map(|h| h.join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    let name: String = source
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    base.join("pai-mount/staging").join(name)
}

pub fn run(a: MountArgs) -> anyhow::Result<()> {
    if a.foreground {
        let json = a.log_format == "json";
        match &a.log_file {
            // The daemon (or a foreground run asked for a file): a rotating file. A daemon's
            // stdout and stderr already point at it; they follow it when it rotates.
            Some(path) => {
                let log =
                    crate::logfile::RotatingLog::open(path, a.log_max_size, a.ready_fd.is_some())
                        .with_context(|| format!("opening log file {}", path.display()))?;
                crate::init_logging_to("info", json, Some(log));
            }
            None => crate::init_logging_to("info", json, None),
        }
        let ready = a.ready_fd.map(|fd| {
            // SAFETY: the parent passed us the write end of a pipe it created for this purpose,
            // and nothing else in this process owns that descriptor.
            std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) })
        });
        if ready.is_some() {
            // SAFETY: setsid has no memory effects; it detaches us from the terminal's session.
            unsafe { libc::setsid() };
        }
        // Prefetch parts are multi-MiB buffers allocated and freed all the time. By default
        // glibc raises its mmap threshold after the first such free and then serves them from
        // per-thread arenas that keep freed memory resident. Two arenas and a fixed 2 MiB
        // threshold keep part buffers mmapped (returned to the system when freed), which holds
        // the daemon's RSS near the prefetch budget (docs/benchmarks.md has the trade-off).
        // SAFETY: mallopt only changes allocator tuning; it is called before any threads start.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
        // SAFETY: as above.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 2 << 20) };
        return serve(a, ready);
    }
    daemonize(&a)
}

/// Runs the mount in a detached child and waits for it to report.
fn daemonize(a: &MountArgs) -> anyhow::Result<()> {
    // Cheap checks first, so obvious mistakes fail without starting anything.
    pai_mount_fs::object::Source::parse(&a.store.source)?;
    let mp = mountpoint::check(&a.mountpoint)?;
    let log = match &a.log_file {
        Some(l) => l.clone(),
        None => default_log_file(&mp)?,
    };
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log)
        .with_context(|| format!("opening log file {}", log.display()))?;
    let mut fds = [0i32; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe(2) to fill.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error()).context("creating the readiness pipe");
    }
    // SAFETY: pipe(2) just returned these two descriptors and nothing else owns them.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let exe = std::env::current_exe().context("finding our own executable")?;
    // The expanded command line (`pai-mount mount SOURCE MOUNTPOINT --flag ...`), also when we
    // were started as the mount(8) helper.
    let mut args: Vec<std::ffi::OsString> = match crate::ARGV.get() {
        Some(argv) => argv.iter().skip(1).cloned().collect(),
        None => std::env::args_os().skip(1).collect(),
    };
    args.push("--foreground".into());
    args.push("--ready-fd".into());
    args.push(fds[1].to_string().into());
    if a.log_file.is_none() {
        args.push("--log-file".into());
        args.push(log.clone().into());
    }
    let child = std::process::Command::new(exe)
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .context("starting the daemon")?;
    drop(write_end);
    // The daemon writes `wait: ...` lines while it waits for the store, then `ok` or
    // `error: ...`.
    let mut report = None;
    for line in std::io::BufReader::new(std::fs::File::from(read_end)).lines() {
        let line = line.context("waiting for the daemon")?;
        match line.strip_prefix("wait: ") {
            Some(notice) => eprintln!("{notice}"),
            None => {
                report = Some(line);
                break;
            }
        }
    }
    match report.as_deref() {
        Some("ok") => {
            eprintln!(
                "mounted {} at {} (daemon pid {}, log {})",
                a.store.source,
                mp.display(),
                child.id(),
                log.display()
            );
            Ok(())
        }
        Some(msg) => bail!("{}", msg.strip_prefix("error: ").unwrap_or(msg)),
        None => bail!(
            "the daemon exited before the mount was ready; see {}",
            log.display()
        ),
    }
}

/// Mounts and serves until unmounted. Reports readiness or the failure on `ready`.
fn serve(a: MountArgs, mut ready: Option<std::fs::File>) -> anyhow::Result<()> {
    let result = start(&a, ready.as_ref());
    let (session, fs, rt, refresh) = match result {
        Ok(v) => v,
        Err(e) => {
            if let Some(r) = ready.as_mut() {
                let _ = writeln!(r, "error: {e:#}");
            }
            return Err(e);
        }
    };
    let mp = std::fs::canonicalize(&a.mountpoint).unwrap_or_else(|_| a.mountpoint.clone());
    let status_file = status::status_path(&mp)?;
    if let Some(dir) = status_file.parent() {
        status::clean_up(dir, status::KEEP_ENDED);
    }
    let lazy = Arc::new(AtomicBool::new(false));
    let mut session = session;
    let mut unmounter = fuse::unmounter(&mut session);
    let lazy_flag = lazy.clone();
    let busy_mp = mp.clone();
    rt.spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut usr1)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::user_defined1()),
        ) else {
            return;
        };
        // SIGUSR1 (sent by `unmount --lazy`): leave pending uploads to the next mount.
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = usr1.recv() => {
                    tracing::info!("asked to leave pending uploads to the next mount");
                    lazy_flag.store(true, Ordering::Release);
                }
            }
        }
        tracing::info!("signal received, unmounting");
        if let Err(e) = unmounter.unmount() {
            // Busy (a shell in it, an open file): detach it, so the service can stop. The
            // mount leaves the namespace now and ends when its last open file is closed.
            tracing::warn!("unmount failed ({e}); detaching the mount point instead");
            if let Err(e) = mountpoint::unmount(&busy_mp, true) {
                tracing::error!("detaching failed too: {e}");
            }
        }
    });
    if let Some(task) = refresh {
        rt.spawn(task);
    }
    let saver = (fs.write_back().is_some() && !a.write.manifest_interval.is_zero()).then(|| {
        let (fs, every) = (fs.clone(), a.write.manifest_interval);
        rt.spawn(async move {
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
        })
    });
    let report = {
        let (fs, a_source, mp, cache_dir) = (
            fs.clone(),
            a.store.source.clone(),
            mp.clone(),
            a.cache.cache_dir.clone(),
        );
        let own_start = status::proc_stat(std::process::id()).map_or(0, |(_, t)| t);
        move |state: &str, outcome: Option<String>| DaemonStatus {
            pid: std::process::id(),
            started: own_start,
            mountpoint: mp.clone(),
            source: a_source.clone(),
            state: state.to_string(),
            updated_at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
            staging_dir: fs.write_back().map(|w| w.config().dir.clone()),
            cache_bytes: cache_dir.as_deref().map_or(0, dir_bytes),
            cache_dir: cache_dir.clone(),
            write: fs.write_back().map(|w| w.status()),
            outcome,
        }
    };
    let report = Arc::new(report);
    status::write(&status_file, &report("mounted", None));
    let notifier = crate::systemd::Notifier::from_env().map(Arc::new);
    if let Some(mut r) = ready.take() {
        let _ = writeln!(r, "ok");
    }
    if let Some(n) = &notifier {
        n.send(&format!(
            "READY=1\n{}",
            crate::systemd::status(&format!("mounted {} at {}", a.store.source, mp.display()))
        ));
    }
    let ticker = {
        let (report, path, notifier) = (report.clone(), status_file.clone(), notifier.clone());
        rt.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut said = String::new();
            loop {
                tick.tick().await;
                let now = report("mounted", None);
                status::write(&path, &now);
                if let Some(n) = &notifier {
                    let line = uploads_line(now.write.as_ref());
                    if line != said {
                        n.send(&crate::systemd::status(&line));
                        said = line;
                    }
                }
            }
        })
    };
    tracing::info!(mountpoint = %a.mountpoint.display(), "mount is live");
    let run = fuse::run(session);
    if let Some(n) = &notifier {
        n.send(&format!(
            "STOPPING=1\n{}",
            crate::systemd::status("unmounted; finishing uploads")
        ));
    }
    ticker.abort();
    if let Some(s) = saver {
        s.abort();
    }
    // Blocks fetched by the last reads are still being written to the disk cache; stopping the
    // runtime would drop them, and the next mount would fetch them again.
    rt.block_on(fs.settle(Duration::from_secs(10)));
    let outcome = fs.write_back().map(|wb| {
        let drain = Drain {
            lazy: lazy.load(Ordering::Acquire),
            timeout: a.drain_timeout,
        };
        finish_uploads(&rt, &fs, wb, drain, &|s| {
            status::write(&status_file, &report("draining", Some(s.to_string())));
            if let Some(n) = &notifier {
                n.send(&crate::systemd::status(s));
            }
        })
    });
    fs.metrics().log();
    status::write(&status_file, &report("exited", outcome));
    tracing::info!("unmounted");
    rt.shutdown_timeout(Duration::from_secs(2));
    run.context("FUSE session")
}

/// The status line of a mount's uploads (systemd's `STATUS=`).
fn uploads_line(w: Option<&pai_mount_fs::write::WriteStatus>) -> String {
    match w {
        None => "mounted read-only".into(),
        Some(w) if w.failed.is_empty() => format!(
            "mounted; {} uploads pending ({})",
            w.pending_files,
            status::mib(w.pending_bytes)
        ),
        Some(w) => format!(
            "mounted; {} uploads pending ({}), {} failed (pai-mount status lists them)",
            w.pending_files,
            status::mib(w.pending_bytes),
            w.failed.len()
        ),
    }
}

/// How the uploads pending at unmount are treated.
struct Drain {
    /// Leave them all to the next mount (`unmount --lazy`).
    lazy: bool,
    /// Wait at most this long for them (`--drain-timeout`).
    timeout: Option<Duration>,
}

/// After the kernel unmount: waits for pending uploads (unless lazy; within the drain timeout),
/// then saves the namespace as the prefix's manifest. Returns a one-line outcome.
fn finish_uploads(
    rt: &tokio::runtime::Runtime,
    fs: &Arc<Fs>,
    wb: &Arc<WriteBack>,
    drain: Drain,
    progress: &dyn Fn(&str),
) -> String {
    let s = if drain.lazy {
        wb.stop();
        wb.status()
    } else {
        let mut last_log = std::time::Instant::now();
        let waiting = wb.drain(|s| {
            let line = format!(
                "uploading: {} files ({}) left",
                s.pending_files,
                status::mib(s.pending_bytes)
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
            status::mib(s.pending_bytes)
        )
    } else {
        format!(
            "all uploads finished ({} files, {})",
            s.uploaded_files,
            status::mib(s.uploaded_bytes)
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
    outcome
}

/// Bytes in files under `dir` (the disk cache's size, for status).
fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

type Started = (
    fuse::Session,
    Arc<Fs>,
    tokio::runtime::Runtime,
    Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
);

/// The parts of a live mount the metrics endpoint samples.
type Live = (Arc<Fs>, Option<Arc<pai_mount_fs::cache::DiskCache>>);

fn start(a: &MountArgs, notices: Option<&std::fs::File>) -> anyhow::Result<Started> {
    let mp = mountpoint::check(&a.mountpoint)?;
    let mut fs_config = FsConfig {
        ttl: a.metadata_ttl,
        read_timeout: a
            .read_timeout
            .unwrap_or(pai_mount_fs::fs::DEFAULT_READ_TIMEOUT),
        ..FsConfig::default()
    };
    let mut mount_options = MountOptions {
        threads: a.threads,
        fs_name: a.store.source.clone(),
        read_only: false,
        passthrough: !a.write.no_passthrough,
        ..MountOptions::default()
    };
    parse_options(&a.options, &mut fs_config, &mut mount_options)?;
    if let Some(r) = a.refresh {
        fs_config.ttl = fs_config.ttl.min(r);
    }
    let rt = crate::runtime()?;
    let metrics = Arc::new(Metrics::default());
    // What the metrics endpoint samples from the live mount, once it exists.
    let live: Arc<std::sync::OnceLock<Live>> = Arc::default();
    if let Some(addr) = a.metrics_addr {
        let sampled = {
            let live = live.clone();
            move || {
                let (fs, cache) = live.get()?;
                let queue = fs.write_back().map(|w| w.status());
                Some(vec![
                    queue.as_ref().map_or(0, |q| q.pending_files),
                    queue.as_ref().map_or(0, |q| q.pending_bytes),
                    cache.as_ref().map_or(0, |c| c.used_bytes()),
                    fs.namespace_len() as u64,
                    fs.open_handles() as u64,
                ])
            }
        };
        let registry = crate::exporter::registry(
            metrics.clone(),
            Box::new(sampled),
            &[
                ("source", &a.store.source),
                ("mountpoint", &mp.to_string_lossy()),
            ],
        );
        let bound = crate::exporter::start(&rt, addr, registry)?;
        tracing::info!("metrics at http://{bound}/metrics");
    }
    let source = rt.block_on(crate::store::connect_with(
        &a.store,
        metrics.clone(),
        &|line| {
            tracing::warn!("{line}");
            if let Some(r) = notices {
                // The mounting process prints these lines while it waits.
                let _ = writeln!(&*r, "wait: {line}");
            }
        },
    ))?;
    let build = BuildOptions {
        concurrency: a.list_concurrency,
    };
    let writable = !(a.write.read_only || mount_options.read_only);
    mount_options.read_only = !writable;
    let write_back = if writable {
        let dir = staging_dir(a, &source.source().display_root());
        let config = WriteConfig {
            part_size: a.write.upload_part_size,
            upload_files: a.write.upload_files,
            upload_parts: a.write.upload_parts,
            rename_dir_limit: a.write.rename_dir_limit,
            max_attempts: a.write.upload_attempts.max(1),
            retry_delay: a.write.upload_retry_delay,
            early_upload: a.write.early_upload,
            ..WriteConfig::new(dir.clone())
        };
        let _guard = rt.enter();
        let mut next = pai_mount_fs::fs::OVERLAY_INO;
        let (wb, recovery) = WriteBack::open(config, source.clone(), metrics.clone(), || {
            next += 1;
            next
        })
        .with_context(|| format!("opening the staging directory {}", dir.display()))?;
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
            tracing::error!(records = recovery.damaged, "damaged journal records were set aside (see pai-mount status and docs/SEMANTICS.md)");
        }
        if recovery.orphans > 0 {
            tracing::info!(
                files = recovery.orphans,
                "removed staging files of writes that were never closed"
            );
        }
        Some((wb, recovery))
    } else {
        None
    };
    let unsaved = write_back
        .as_ref()
        .is_some_and(|(_, r)| r.unsaved_namespace);
    let (ns, origin) = if unsaved {
        let why =
            "the previous mount of this source changed it and ended without saving its manifest"
                .to_string();
        tracing::warn!("{why}; listing the prefix instead of loading the stored manifest");
        let (header, entries) =
            rt.block_on(manifest::build(&source, &build, &Default::default()))?;
        let ns = Namespace::from_entries(&entries, header.built_at_ms);
        (ns, Origin::Listed { header, why })
    } else {
        rt.block_on(manifest::load_or_list(&source, &build))?
    };
    log_namespace(&ns, &origin);
    // The manifest bytes and listing pages are gone; hand their pages back to the system so
    // the daemon's resident size reflects what it holds.
    // SAFETY: malloc_trim only releases free heap memory; it has no other effect.
    unsafe { libc::malloc_trim(0) };
    let readers = crate::store::prefetcher(&source, &a.cache, metrics.clone())?;
    let disk_cache = readers.cache().cloned();
    let mut fs = Fs::new(ns, Arc::new(readers), fs_config, metrics);
    if let Some((wb, recovery)) = write_back {
        fs = fs.with_write_back(wb, recovery.nodes);
    }
    let fs = Arc::new(fs);
    let _ = live.set((fs.clone(), disk_cache));
    let session = fuse::mount(fs.clone(), rt.handle().clone(), &mp, &mount_options)
        .with_context(|| format!("mounting at {}", mp.display()))?;
    let refresh = a.refresh.map(|every| {
        let fs = fs.clone();
        let task: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> =
            Box::pin(async move {
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
                        Err(e) => {
                            tracing::warn!("refresh failed, keeping the current namespace: {e}")
                        }
                    }
                }
            });
        task
    });
    Ok((session, fs, rt, refresh))
}

pub(crate) fn log_namespace(ns: &Namespace, origin: &Origin) {
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

pub fn unmount(a: UnmountArgs) -> anyhow::Result<()> {
    let path = if mountpoint::is_dead_mount(&a.mountpoint) {
        a.mountpoint.clone()
    } else {
        std::fs::canonicalize(&a.mountpoint)
            .with_context(|| format!("{}", a.mountpoint.display()))?
    };
    if !mountpoint::is_mount_point(&path) {
        bail!("{} is not a mount point", path.display());
    }
    let status_file = status::status_path(&path)?;
    let daemon = status::read(&status_file).filter(|s| s.state == "mounted" && status::alive(s));
    if let (true, Some(d)) = (a.lazy, &daemon) {
        // SAFETY: kill sends a signal to the daemon we started; no memory is involved.
        unsafe { libc::kill(d.pid as i32, libc::SIGUSR1) };
        std::thread::sleep(Duration::from_millis(100));
    }
    mountpoint::unmount(&path, a.detach).map_err(|e| {
        if e.raw_os_error() == Some(libc::EBUSY) {
            anyhow::anyhow!(
                "{} is busy (a process has files open or its cwd there); close them, or use --detach",
                path.display()
            )
        } else {
            anyhow::anyhow!("unmounting {}: {e}", path.display())
        }
    })?;
    eprintln!("unmounted {}", path.display());
    let Some(daemon) = daemon else {
        return Ok(());
    };
    // The daemon finishes (or, with --lazy, leaves) pending uploads, then exits.
    let mut last = String::new();
    // Done when the daemon is gone, a zombie (a supervisor reaps it later), or has said
    // it exited.
    while status::alive(&daemon) {
        if let Some(s) = status::read(&status_file) {
            if s.state == "exited" {
                break;
            }
            if let (Some(line), "draining") = (&s.outcome, s.state.as_str()) {
                if *line != last {
                    eprintln!("{line}");
                    last = line.clone();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    match status::read(&status_file).and_then(|s| s.outcome) {
        Some(outcome) => {
            eprintln!("{outcome}");
            let failed = status::read(&status_file)
                .and_then(|s| s.write)
                .is_some_and(|w| !w.failed.is_empty());
            if failed {
                bail!("some uploads failed; they are kept and retried at the next mount");
            }
        }
        None => eprintln!("the daemon exited"),
    }
    Ok(())
}
