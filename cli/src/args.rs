//! Command-line arguments.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use pai_mount_fs::object::Deadlines;

#[derive(Debug, Parser)]
#[command(
    name = "pai-mount",
    version,
    about = "Mount object storage as a local directory, served from a manifest"
)]
pub struct Cli {
    /// Read this config file instead of /etc/pai-mount/config.toml and
    /// ~/.config/pai-mount/config.toml
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// Parses `argv` (after `options::expand` and `config::apply`): a later occurrence of an option
/// overrides an earlier one, so the config's settings, placed first, yield to the command
/// line's.
pub fn parse(argv: Vec<std::ffi::OsString>) -> Cli {
    use clap::{CommandFactory, FromArgMatches};
    let mut cmd = Cli::command().args_override_self(true);
    for name in ["mount", "unmount"] {
        cmd = cmd.mut_subcommand(name, |c| c.args_override_self(true));
    }
    let matches = cmd.get_matches_from(argv);
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount a bucket prefix (daemonizes once the mount is live)
    Mount(Box<MountArgs>),
    /// Show live mounts and those with uploads left (pending or failed), or one mount in detail
    Status(StatusArgs),
    /// Unmount a mount point (also cleans up after a daemon that died)
    Unmount(UnmountArgs),
    /// Build or inspect the manifest of a prefix
    #[command(subcommand)]
    Manifest(ManifestCommand),
    /// Make a sample dataset on an embedded S3 server, mount it, list and read it, unmount
    Demo(DemoArgs),
    /// Fill the disk cache ahead of training: a source URL (with --cache-dir), or a path in a mount
    Warm(WarmArgs),
    /// Copy a prefix to a local directory in parallel, from the manifest; reruns finish the rest
    Cp(CpArgs),
    /// Show the config files' settings
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages of the command and every subcommand into a directory
    Man {
        /// Where to write pai-mount.1, pai-mount-mount.1, ...
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective mount options of a named mount (or of a mount by URL, without NAME)
    /// and where each value comes from; secrets are redacted
    Show {
        /// A [mount.NAME] of the config files
        name: Option<String>,
        /// A built-in profile to apply (else the mount's or [defaults]' profile)
        #[arg(long, value_name = "NAME")]
        profile: Option<String>,
    },
}

/// Where the data is and how to reach it.
#[derive(Debug, Args, Clone)]
pub struct StoreArgs {
    /// oss://bucket[/prefix], s3://bucket[/prefix] or file:///dir
    pub source: String,
    /// Region id, for example cn-hangzhou (OSS) or us-east-1 (S3)
    #[arg(long)]
    pub region: Option<String>,
    /// Service endpoint URL, without the bucket (for example http://127.0.0.1:9000)
    #[arg(long)]
    pub endpoint: Option<String>,
    /// OSS: use the VPC-internal endpoint
    #[arg(long)]
    pub internal: bool,
    /// S3: path-style addressing (http://host/bucket/key) instead of virtual-hosted style
    #[arg(long)]
    pub path_style: bool,
    /// Send unsigned requests (public buckets)
    #[arg(long)]
    pub no_sign_request: bool,
    /// Access key id (prefer the environment or the ossfs password file)
    #[arg(long)]
    pub access_key_id: Option<String>,
    /// Access key secret
    #[arg(long)]
    pub secret_access_key: Option<String>,
    /// STS session token
    #[arg(long)]
    pub session_token: Option<String>,
    /// Resolve HOST to ADDR:PORT instead of using DNS, like curl's --resolve (repeatable)
    #[arg(long, value_name = "HOST:ADDR:PORT", value_parser = parse_resolve)]
    pub resolve: Vec<(String, SocketAddr)>,
    #[arg(long, value_parser = parse_positive_duration,
          help = default_help("Bound of a TCP and TLS handshake", Deadlines::default().connect))]
    pub connect_timeout: Option<Duration>,
    #[arg(long, value_parser = parse_positive_duration,
          help = default_help("Bound from sending a request to its answer's first byte (plus 1s per MiB sent)",
                              Deadlines::default().first_byte))]
    pub first_byte_timeout: Option<Duration>,
    #[arg(long, value_parser = parse_positive_duration,
          help = default_help("Longest silence inside a response body before the transfer is resumed on a new connection",
                              Deadlines::default().idle))]
    pub idle_timeout: Option<Duration>,
    /// Ceiling of the adaptive limit of requests in flight to the endpoint, shared by the
    /// whole process (it shrinks when the store throttles and grows back)
    #[arg(long, value_parser = parse_positive_usize)]
    pub max_concurrency: Option<usize>,
}

impl StoreArgs {
    /// The request bounds, with the library's defaults for what was not given.
    pub fn deadlines(&self) -> Deadlines {
        let d = Deadlines::default();
        Deadlines {
            connect: self.connect_timeout.unwrap_or(d.connect),
            first_byte: self.first_byte_timeout.unwrap_or(d.first_byte),
            idle: self.idle_timeout.unwrap_or(d.idle),
        }
    }
}

/// A help line that shows a default declared elsewhere.
fn default_help(what: &str, default: Duration) -> String {
    format!("{what} [default: {}s]", default.as_secs_f64())
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err("must be more than 0".into());
    }
    Ok(d)
}

fn parse_positive_usize(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{s:?}: {e}")),
    }
}

fn parse_resolve(s: &str) -> Result<(String, SocketAddr), String> {
    let (host, addr) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: expected HOST:ADDR:PORT"))?;
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| format!("{s:?}: bad address {addr:?}: {e}"))?;
    Ok((host.to_string(), addr))
}

#[derive(Debug, Args)]
pub struct MountArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Where to mount
    pub mountpoint: PathBuf,
    /// Stay in the foreground and log to stderr
    #[arg(long, short = 'f')]
    pub foreground: bool,
    /// Built-in settings for a workload: training, checkpoint or notebook (see
    /// docs/CONFIGURATION.md); flags and the config file's named mount override them
    #[arg(long, value_name = "NAME",
          value_parser = clap::builder::PossibleValuesParser::new(crate::config::PROFILES.iter().map(|p| clap::builder::PossibleValue::new(p.name).help(p.purpose))))]
    pub profile: Option<String>,
    /// Re-list the prefix at this interval and swap in the new tree (for example 10m)
    #[arg(long, value_parser = parse_duration)]
    pub refresh: Option<Duration>,
    /// Entry and attribute TTL given to the kernel
    #[arg(long, value_parser = parse_duration, default_value = "1d")]
    pub metadata_ttl: Duration,
    /// Mount options, comma-separated: allow_other, ro, uid=N, gid=N, file_mode=OCTAL,
    /// dir_mode=OCTAL, and any long flag by name (cache_dir=/ssd/cache, path_style); generic
    /// fstab options (_netdev, nofail, x-systemd.*, ...) are ignored
    #[arg(short = 'o', value_delimiter = ',')]
    pub options: Vec<String>,
    /// FUSE worker threads
    #[arg(long, default_value_t = 16, value_parser = parse_positive_usize)]
    pub threads: usize,
    #[arg(long, value_parser = parse_positive_duration,
          help = default_help("Longest a read waits for the store before it fails with EIO (and logs the key)",
                              pai_mount_fs::fs::DEFAULT_READ_TIMEOUT))]
    pub read_timeout: Option<Duration>,
    /// Listings in flight when the prefix must be listed
    #[arg(long, default_value_t = 16, value_parser = parse_positive_usize)]
    pub list_concurrency: usize,
    /// When the prefix must be listed, which objects to HEAD for modes, owners and symlinks
    /// (auto: those the stored manifest does not cover, when there are few)
    #[arg(long, value_enum, default_value_t = AttrScanArg::Auto)]
    pub attrs: AttrScanArg,
    #[command(flatten)]
    pub cache: CacheArgs,
    #[command(flatten)]
    pub write: WriteArgs,
    /// At unmount, wait at most this long for pending uploads, then leave the rest in the
    /// journal for the next mount (default: wait until they finish or fail)
    #[arg(long, value_parser = parse_positive_duration)]
    pub drain_timeout: Option<Duration>,
    /// Serve Prometheus metrics at http://ADDR/metrics (for example 127.0.0.1:9464; off by
    /// default; anyone who can reach the address can read them)
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Log file of the daemon (default: ~/.local/state/pai-mount/<mountpoint>.log)
    #[arg(long)]
    pub log_file: Option<PathBuf>,
    /// Log lines as text or as JSON objects (one per line)
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// Largest size of the log file; then it is rotated (3 old files are kept)
    #[arg(long, value_parser = parse_positive_size, default_value = "64M")]
    pub log_max_size: u64,
    /// Internal: the daemon reports readiness on this file descriptor
    #[arg(long, hide = true)]
    pub ready_fd: Option<i32>,
}

/// Write-back: staging and uploads.
#[derive(Debug, Args, Clone)]
pub struct WriteArgs {
    /// Refuse every change with EROFS (same as -o ro)
    #[arg(long)]
    pub read_only: bool,
    /// Where written files wait for upload, with their journal (mode 0700). Default:
    /// <cache-dir>/staging, else ~/.cache/pai-mount/staging/<source>
    #[arg(long)]
    pub staging_dir: Option<PathBuf>,
    /// Part size of multipart uploads; smaller files go in one PUT
    #[arg(long, value_parser = parse_upload_part_size, default_value = "16M")]
    pub upload_part_size: u64,
    /// Files uploading at once
    #[arg(long, default_value_t = 8, value_parser = parse_positive_usize)]
    pub upload_files: usize,
    /// Upload parts in flight for the whole mount (each holds one part in memory)
    #[arg(long, default_value_t = 16, value_parser = parse_positive_usize)]
    pub upload_parts: usize,
    /// Renaming a directory with more entries than this fails with EXDEV (mv then copies)
    #[arg(long, default_value_t = 10_000)]
    pub rename_dir_limit: usize,
    /// Also store the manifest at this interval while the namespace changes (it is always
    /// stored at unmount); 0 turns the periodic save off
    #[arg(long, value_parser = parse_duration, default_value = "10m")]
    pub manifest_interval: Duration,
    /// Upload the completed parts of a sequentially written file while it is still being
    /// written (costs CPU during the write; see docs/benchmarks.md)
    #[arg(long)]
    pub early_upload: bool,
    /// Keep written files' staging copies after their upload, up to this many bytes, so that
    /// reopening one to append or patch needs no download (0: drop them at once)
    #[arg(long, value_parser = parse_size, default_value = "2G")]
    pub keep_staged: u64,
    /// Send reads and writes of files written in this mount through the daemon instead of
    /// letting the kernel use their staging files directly (FUSE passthrough)
    #[arg(long)]
    pub no_passthrough: bool,
    /// Attempts of one upload (each after the HTTP layer's own retries) before it is marked
    /// failed and kept for the next mount
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub upload_attempts: u32,
    /// Delay before the second attempt; doubled for each further one, at most 30s
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub upload_retry_delay: Duration,
}

/// `--attrs`: see [`pai_mount_fs::manifest::AttrScan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AttrScanArg {
    Off,
    Auto,
    All,
}

impl From<AttrScanArg> for pai_mount_fs::manifest::AttrScan {
    fn from(a: AttrScanArg) -> Self {
        match a {
            AttrScanArg::Off => Self::Off,
            AttrScanArg::Auto => Self::Auto,
            AttrScanArg::All => Self::All,
        }
    }
}

/// Read path tuning: prefetching and the disk cache.
#[derive(Debug, Args, Clone)]
pub struct CacheArgs {
    /// Keep a persistent block cache in this directory (created with mode 0700)
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Largest size of the disk cache
    #[arg(long, value_parser = parse_positive_size, default_value = "10G")]
    pub cache_size: u64,
    /// Stop filling the cache when its filesystem has less free space than this
    #[arg(long, value_parser = parse_size, default_value = "5G")]
    pub cache_min_free: u64,
    /// Memory all open files together may hold in prefetched data
    #[arg(long, value_parser = parse_positive_size, default_value = "1G")]
    pub prefetch_budget: u64,
    /// Size of each ranged GET a sequential reader prefetches
    #[arg(long, value_parser = parse_positive_size, default_value = "8M")]
    pub part_size: u64,
    /// Largest prefetch window of one open file
    #[arg(long, value_parser = parse_positive_size, default_value = "64M")]
    pub max_window: u64,
    /// GET requests in flight for the whole mount (bounds connection and buffer memory)
    #[arg(long, default_value_t = 32, value_parser = parse_positive_usize)]
    pub max_requests: usize,
    /// Disk cache I/O engine: auto (io_uring, else pread), uring or pread
    #[arg(long, default_value = "auto", value_parser = ["auto", "uring", "pread"])]
    pub io_engine: String,
    /// Do not check files read front to back in ranges against the store's checksum (saves
    /// one HEAD per file of more than 1 MiB; whole-object reads are still checked)
    #[arg(long)]
    pub no_verify_reads: bool,
}

#[derive(Debug, Args)]
pub struct WarmArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub cache: CacheArgs,
    /// Objects (or files) read in parallel
    #[arg(long, short = 'j', default_value_t = 16, value_parser = parse_positive_usize)]
    pub jobs: usize,
    /// Serve Prometheus metrics at http://ADDR/metrics while warming
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

#[derive(Debug, Args)]
pub struct CpArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Local directory; keys relative to the source prefix become paths under it
    pub dest: PathBuf,
    /// Requests in flight (objects, and parts of large objects)
    #[arg(long, short = 'j', default_value_t = 32, value_parser = parse_positive_usize)]
    pub jobs: usize,
    /// Serve Prometheus metrics at http://ADDR/metrics while copying
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Objects larger than this are fetched as parallel ranges of this size
    #[arg(long, value_parser = parse_positive_size, default_value = "8M")]
    pub part_size: u64,
    /// Skip the MD5 check of single-part objects and the CRC check of objects copied in ranges
    /// (ETag and size pinning, and the store checksum of whole-object GETs, still apply)
    #[arg(long)]
    pub no_verify: bool,
    /// Flush everything to disk (one syncfs) before reporting success
    #[arg(long)]
    pub fsync: bool,
}

#[derive(Debug, Args)]
pub struct UnmountArgs {
    pub mountpoint: PathBuf,
    /// Do not wait for pending uploads: they stay in the journal and resume at the next mount
    /// with the same staging directory
    #[arg(long)]
    pub lazy: bool,
    /// Detach even if busy; the mount goes away when the last user leaves
    #[arg(long)]
    pub detach: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// A mount point (default: the live mounts of this user, and those with uploads left)
    pub mountpoint: Option<PathBuf>,
    /// Also list mounts that ended cleanly (kept for a week)
    #[arg(long)]
    pub all: bool,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ManifestCommand {
    /// List the prefix once and write the manifest into the bucket (or to --output)
    Build {
        #[command(flatten)]
        store: StoreArgs,
        /// Write to this local file instead of the bucket
        #[arg(long)]
        output: Option<PathBuf>,
        /// Listings in flight
        #[arg(long, default_value_t = 16, value_parser = parse_positive_usize)]
        list_concurrency: usize,
        /// Which objects to HEAD for modes, owners and symlinks (all: every object the stored
        /// manifest does not cover, e.g. a bucket written by s3fs or ossfs)
        #[arg(long, value_enum, default_value_t = AttrScanArg::Auto)]
        attrs: AttrScanArg,
    },
    /// Index the WebDataset tar shards (*.tar) under a prefix for the loader: reads every
    /// shard once and stores the index next to the manifest (build the manifest first)
    TarIndex {
        #[command(flatten)]
        store: StoreArgs,
        /// Shards read at once (each is held in memory while it is indexed)
        #[arg(long, default_value_t = 4, value_parser = parse_positive_usize)]
        concurrency: usize,
    },
    /// Show a manifest: from the bucket, or a local file with --file
    Show {
        #[command(flatten)]
        store: StoreArgs,
        /// Read this local manifest file instead of the bucket (SOURCE is then only a label)
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Objects in the sample dataset
    #[arg(long, default_value_t = 300, value_parser = parse_positive_usize)]
    pub objects: usize,
    /// First-byte latency of the embedded server, in milliseconds
    #[arg(long, default_value_t = 20)]
    pub latency_ms: u64,
    /// Mount point (default: a fresh temporary directory)
    #[arg(long)]
    pub mountpoint: Option<PathBuf>,
}

/// `4096`, `512K`, `8M`, `10G`, `1T` (binary units; a trailing `iB` or `B` is accepted).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, unit) = t
        .find(|c: char| !c.is_ascii_digit())
        .map_or((t, ""), |i| t.split_at(i));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a size like 512M, 10G or 1T"))?;
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("{s:?}: unknown unit {unit:?}; use K, M, G or T")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// A size that must be more than 0.
pub fn parse_positive_size(s: &str) -> Result<u64, String> {
    match parse_size(s)? {
        0 => Err("must be more than 0".into()),
        n => Ok(n),
    }
}

/// A multipart part size: S3 and OSS refuse parts below 5 MiB (but the last) and above 5 GiB,
/// so anything outside would fail every large upload at its completion.
pub fn parse_upload_part_size(s: &str) -> Result<u64, String> {
    let n = parse_size(s)?;
    if !(5 << 20..=5 << 30).contains(&n) {
        return Err(format!(
            "{s:?}: a multipart part must be 5M to 5G (the store refuses smaller and larger parts)"
        ));
    }
    Ok(n)
}

/// `90s`, `10m`, `2h`, `1d`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |i| s.split_at(i));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a duration like 90s, 10m, 2h or 1d"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => return Ok(Duration::from_millis(n)),
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?}; use ms, s, m, h or d"
            ))
        }
    };
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("1d").unwrap(), Duration::from_secs(86400));
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("8M").unwrap(), 8 << 20);
        assert_eq!(parse_size("10GiB").unwrap(), 10 << 30);
        assert!(parse_size("ten").is_err());
        assert!(parse_size("5X").is_err());
    }

    #[test]
    fn resolve_parses_host_and_socket_address() {
        let (h, a) = parse_resolve("bkt.s3.test:127.0.0.1:9000").unwrap();
        assert_eq!(h, "bkt.s3.test");
        assert_eq!(a.port(), 9000);
        assert!(parse_resolve("nohost").is_err());
    }
}
