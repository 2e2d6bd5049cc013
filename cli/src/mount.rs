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
use pai_mount_fs::fuse::MountOptions;
use pai_mount_fs::manifest::BuildOptions;
use pai_mount_fs::metrics::Metrics;
use pai_mount_fs::mount::{Mount, MountConfig};
use pai_mount_fs::mountpoint;
use pai_mount_fs::object::credentials::home_dir;
use pai_mount_fs::write::WriteConfig;

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
    let rt = crate::runtime()?;
    let metrics = Arc::new(Metrics::default());
    let started = start(&a, &rt, metrics, ready.as_ref());
    let mount = match started {
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
    let fs = mount.fs().clone();
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
    // SIGTERM and SIGINT unmount; SIGUSR1 (sent by `unmount --lazy`) leaves pending uploads to
    // the next mount.
    let drain = pai_mount_fs::mount::Drain {
        lazy: Arc::new(AtomicBool::new(false)),
        timeout: a.drain_timeout,
    };
    let shutdown = {
        let lazy = drain.lazy.clone();
        let _guard = rt.enter();
        use tokio::signal::unix::{signal, SignalKind};
        let signals = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::user_defined1()),
        );
        Box::pin(async move {
            let (Ok(mut term), Ok(mut int), Ok(mut usr1)) = signals else {
                return std::future::pending().await;
            };
            loop {
                tokio::select! {
                    _ = term.recv() => break,
                    _ = int.recv() => break,
                    _ = usr1.recv() => {
                        tracing::info!("asked to leave pending uploads to the next mount");
                        lazy.store(true, Ordering::Release);
                    }
                }
            }
            tracing::info!("signal received");
        })
    };
    let stopping = AtomicBool::new(false);
    let say_stopping = |detail: &str| {
        if let Some(n) = &notifier {
            if !stopping.swap(true, Ordering::AcqRel) {
                n.send(&format!(
                    "STOPPING=1\n{}",
                    crate::systemd::status("unmounted; finishing uploads")
                ));
            }
            if !detail.is_empty() {
                n.send(&crate::systemd::status(detail));
            }
        }
    };
    let ended = mount.run(&rt, shutdown, drain, &|line| {
        say_stopping(line);
        status::write(&status_file, &report("draining", Some(line.to_string())));
    });
    say_stopping("");
    ticker.abort();
    let outcome = ended.as_ref().ok().and_then(|e| e.outcome.clone());
    status::write(&status_file, &report("exited", outcome));
    tracing::info!("unmounted");
    rt.shutdown_timeout(Duration::from_secs(2));
    ended.map(|_| ()).context("FUSE session")
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

/// The parts of a live mount the metrics endpoint samples.
type Live = (Arc<Fs>, Option<Arc<pai_mount_fs::cache::DiskCache>>);

/// Turns the arguments into a [`MountConfig`], starts the metrics endpoint, connects to the
/// store and starts the mount.
fn start(
    a: &MountArgs,
    rt: &tokio::runtime::Runtime,
    metrics: Arc<Metrics>,
    notices: Option<&std::fs::File>,
) -> anyhow::Result<Mount> {
    let mp = mountpoint::check(&a.mountpoint)?;
    let mut fs_config = FsConfig {
        ttl: a.metadata_ttl,
        read_timeout: a
            .read_timeout
            .unwrap_or(pai_mount_fs::fs::DEFAULT_READ_TIMEOUT),
        ..FsConfig::default()
    };
    let mut fuse_options = MountOptions {
        threads: a.threads,
        fs_name: a.store.source.clone(),
        read_only: false,
        passthrough: !a.write.no_passthrough,
        ..MountOptions::default()
    };
    parse_options(&a.options, &mut fs_config, &mut fuse_options)?;
    if let Some(r) = a.refresh {
        fs_config.ttl = fs_config.ttl.min(r);
    }
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
        let registry = pai_exporter::registry(
            pai_exporter::Source::One(metrics.clone()),
            Box::new(sampled),
            &[
                ("source", &a.store.source),
                ("mountpoint", &mp.to_string_lossy()),
            ],
        );
        let bound = pai_exporter::start(rt, addr, registry)?;
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
    let readers = crate::store::prefetcher(&source, &a.cache, metrics.clone())?;
    let disk_cache = readers.cache().cloned();
    let writable = !(a.write.read_only || fuse_options.read_only);
    let write = writable.then(|| {
        let dir = staging_dir(a, &source.source().display_root());
        WriteConfig {
            part_size: a.write.upload_part_size,
            upload_files: a.write.upload_files,
            upload_parts: a.write.upload_parts,
            rename_dir_limit: a.write.rename_dir_limit,
            max_attempts: a.write.upload_attempts.max(1),
            retry_delay: a.write.upload_retry_delay,
            early_upload: a.write.early_upload,
            keep_staged: a.write.keep_staged,
            cache: disk_cache.clone(),
            ..WriteConfig::new(dir)
        }
    });
    let config = MountConfig {
        mountpoint: mp,
        fs: fs_config,
        fuse: fuse_options,
        write,
        build: BuildOptions {
            concurrency: a.list_concurrency,
            attrs: a.attrs.into(),
            ..BuildOptions::default()
        },
        refresh: a.refresh,
        manifest_interval: a.write.manifest_interval,
    };
    let mount = Mount::start(rt, source, Arc::new(readers), metrics, config)?;
    let _ = live.set((mount.fs().clone(), disk_cache));
    Ok(mount)
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
