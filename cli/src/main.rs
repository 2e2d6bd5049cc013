//! `pai-mount`: mount buckets, manage manifests, run the demo.

mod args;
mod config;
mod cp;
mod demo;
mod logfile;
mod manifest_cmd;
mod mount;
mod options;
mod progress;
mod status;
mod store;
mod systemd;
mod warm;

fn main() -> std::process::ExitCode {
    let argv = match options::expand(std::env::args_os().collect()) {
        Ok(argv) => argv,
        Err(e) => {
            eprintln!("pai-mount: error: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    // A daemon re-reads the config files itself: their settings (credentials among them) never
    // go on its command line.
    let _ = ARGV.set(argv.clone());
    let argv = match config::apply(argv) {
        Ok(argv) => argv,
        Err(e) => {
            eprintln!("pai-mount: error: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let cli = args::parse(argv);
    let result = match cli.command {
        args::Command::Mount(m) => mount::run(*m),
        args::Command::Unmount(u) => mount::unmount(u),
        args::Command::Status(s) => status::run(s),
        args::Command::Manifest(m) => manifest_cmd::run(m),
        args::Command::Demo(d) => demo::run(d),
        args::Command::Warm(w) => warm::run(w),
        args::Command::Cp(c) => cp::run(c),
        args::Command::Completions { shell } => {
            let mut cmd = <args::Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "pai-mount", &mut script);
            // A closed pipe (`| head`) is not an error worth a panic.
            let _ = std::io::Write::write_all(&mut std::io::stdout(), &script);
            Ok(())
        }
        args::Command::Man { dir } => man_pages(&dir),
        args::Command::Config(args::ConfigCommand::Show { name, profile }) => {
            config::show(cli.config.as_deref(), name.as_deref(), profile.as_deref())
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pai-mount: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Writes `pai-mount.1` and `pai-mount-<sub>.1` for every subcommand (nested ones too) into
/// `dir`.
fn man_pages(dir: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    fn write(cmd: &clap::Command, name: &str, dir: &std::path::Path) -> anyhow::Result<()> {
        let cmd = cmd.clone().name(name.to_string());
        let path = dir.join(format!("{name}.1"));
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd.clone()).render(&mut out)?;
        std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            write(sub, &format!("{name}-{}", sub.get_name()), dir)?;
        }
        Ok(())
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cmd = <args::Cli as clap::CommandFactory>::command();
    cmd.build();
    write(&cmd, "pai-mount", dir)
}

/// The command line after [`options::expand`]: what a daemon is re-run with.
pub(crate) static ARGV: std::sync::OnceLock<Vec<std::ffi::OsString>> = std::sync::OnceLock::new();

/// Logs to stderr; `PAI_MOUNT_LOG` sets the filter (default `info`).
pub(crate) fn init_logging(default: &str) {
    init_logging_to(default, false, None);
}

/// Logs as text or JSON lines (`json`), to stderr or to a rotating log file.
pub(crate) fn init_logging_to(
    default: &str,
    json: bool,
    file: Option<std::sync::Arc<logfile::RotatingLog>>,
) {
    // fuser warns that its own unmount at session drop failed after ours succeeded (EINVAL:
    // no longer mounted); only its errors are worth a line.
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("PAI_MOUNT_LOG").unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(format!("{default},fuser::session=error"))
        });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let _ = match (json, file) {
        (false, None) => builder.with_writer(std::io::stderr).try_init(),
        (true, None) => builder.json().with_writer(std::io::stderr).try_init(),
        (false, Some(f)) => builder
            .with_ansi(false)
            .with_writer(move || logfile::Writer(f.clone()))
            .try_init(),
        (true, Some(f)) => builder
            .json()
            .with_writer(move || logfile::Writer(f.clone()))
            .try_init(),
    };
}

/// A multi-threaded runtime for one command.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("pai-mount-io")
        .build()?)
}
