//! `pai-mount mount` and `pai-mount unmount`.
//!
//! Without `--foreground`, the command re-runs itself as a detached daemon and waits until the
//! daemon reports on a pipe that the mount is live, or why it failed: every check (source,
//! credentials, bucket, manifest, mount point) happens before the command returns, and a
//! failure is an error message and a non-zero exit code.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use pai_mount_fs::fs::{Fs, FsConfig};
use pai_mount_fs::fuse::{self, MountOptions};
use pai_mount_fs::manifest::{self, BuildOptions, Origin};
use pai_mount_fs::metrics::Metrics;
use pai_mount_fs::mountpoint;
use pai_mount_fs::namespace::Namespace;

use crate::args::{MountArgs, UnmountArgs};

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
            "ro" => {}
            other => bail!("unknown mount option {other:?} (known: allow_other, uid=, gid=, file_mode=, dir_mode=, ro)"),
        }
    }
    Ok(())
}

/// Where the daemon logs by default: ~/.local/state/pai-mount/<mountpoint>.log, dir mode 0700.
fn default_log_file(mountpoint: &std::path::Path) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    let dir = base.join("pai-mount");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating log directory {}", dir.display()))?;
    let name: String = mountpoint
        .to_string_lossy()
        .trim_matches('/')
        .replace('/', "-");
    Ok(dir.join(format!(
        "{}.log",
        if name.is_empty() { "root" } else { &name }
    )))
}

pub fn run(a: MountArgs) -> anyhow::Result<()> {
    if a.foreground {
        crate::init_logging("info");
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
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
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
    let mut report = String::new();
    std::fs::File::from(read_end)
        .read_to_string(&mut report)
        .context("waiting for the daemon")?;
    match report.lines().next() {
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
    let result = start(&a);
    let (session, fs, rt, refresh) = match result {
        Ok(v) => v,
        Err(e) => {
            if let Some(r) = ready.as_mut() {
                let _ = writeln!(r, "error: {e:#}");
            }
            return Err(e);
        }
    };
    let mut session = session;
    let mut unmounter = fuse::unmounter(&mut session);
    rt.spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("signal received, unmounting");
        if let Err(e) = unmounter.unmount() {
            tracing::error!("unmount failed: {e}");
        }
    });
    if let Some(task) = refresh {
        rt.spawn(task);
    }
    if let Some(mut r) = ready.take() {
        let _ = writeln!(r, "ok");
    }
    tracing::info!(mountpoint = %a.mountpoint.display(), "mount is live");
    let run = fuse::run(session);
    fs.metrics().log();
    tracing::info!("unmounted");
    rt.shutdown_timeout(Duration::from_secs(2));
    run.context("FUSE session")
}

type Started = (
    fuse::Session,
    Arc<Fs>,
    tokio::runtime::Runtime,
    Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
);

fn start(a: &MountArgs) -> anyhow::Result<Started> {
    let mp = mountpoint::check(&a.mountpoint)?;
    let mut fs_config = FsConfig {
        ttl: a.metadata_ttl,
        ..FsConfig::default()
    };
    let mut mount_options = MountOptions {
        threads: a.threads,
        fs_name: a.store.source.clone(),
        ..MountOptions::default()
    };
    parse_options(&a.options, &mut fs_config, &mut mount_options)?;
    if let Some(r) = a.refresh {
        fs_config.ttl = fs_config.ttl.min(r);
    }
    let rt = crate::runtime()?;
    let metrics = Arc::new(Metrics::default());
    let source = rt.block_on(crate::store::connect(&a.store, metrics.clone()))?;
    let build = BuildOptions {
        concurrency: a.list_concurrency,
    };
    let (ns, origin) = rt.block_on(manifest::load_or_list(&source, &build))?;
    log_namespace(&ns, &origin);
    // The manifest bytes and listing pages are gone; hand their pages back to the system so
    // the daemon's resident size reflects what it holds.
    // SAFETY: malloc_trim only releases free heap memory; it has no other effect.
    unsafe { libc::malloc_trim(0) };
    let readers = crate::store::prefetcher(&source, &a.cache, metrics.clone())?;
    let fs = Arc::new(Fs::new(ns, Arc::new(readers), fs_config, metrics));
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
    mountpoint::unmount(&path, a.lazy).map_err(|e| {
        if e.raw_os_error() == Some(libc::EBUSY) {
            anyhow::anyhow!(
                "{} is busy (a process has files open or its cwd there); close them, or use --lazy",
                path.display()
            )
        } else {
            anyhow::anyhow!("unmounting {}: {e}", path.display())
        }
    })?;
    eprintln!("unmounted {}", path.display());
    Ok(())
}
