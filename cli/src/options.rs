//! Mount options as `-o key=value`, and the mount(8) helper's command line.
//!
//! mount(8) hands an fstab line of type `fuse.pai-mount` to the FUSE mount helper
//! (`mount.fuse3`), which runs `pai-mount SOURCE MOUNTPOINT -o OPTIONS`. [`expand`] rewrites
//! such a command line, and any `pai-mount mount ... -o ...`, into the flags clap knows, before
//! parsing:
//! - `pai-mount SOURCE MOUNTPOINT ...` (no subcommand, a source URL first) is `pai-mount mount
//!   SOURCE MOUNTPOINT ...`; so is any command line of a program named `mount.fuse.pai-mount`
//!   or `mount.pai-mount` (a symlink to the binary, for systems whose mount(8) looks for one);
//! - `-o key=value` with a long flag's name (`_` or `-`) becomes `--key value`; `-o key` of a
//!   flag without a value becomes `--key` (`key=false` leaves it out);
//! - the options the FUSE layer itself takes ([`FUSE_OPTIONS`]) stay `-o` options;
//! - generic options of mount(8) and systemd ([`IGNORED`], `x-*`, `comment=*`) are accepted
//!   and ignored; `rw` is the default;
//! - anything else is an error that names the option.
//!
//! Values cannot contain `,` (it separates options).

use std::ffi::OsString;

use anyhow::bail;
use clap::CommandFactory;

use crate::args::Cli;

/// `-o` options handled by the mount itself (see `mount::parse_options`).
pub const FUSE_OPTIONS: &[&str] = &["allow_other", "uid", "gid", "file_mode", "dir_mode", "ro"];

/// Generic mount(8), fstab and systemd options that mean nothing here: accepted and ignored.
/// Every option starting with `x-` (`x-systemd.automount`, ...) or `comment=` is ignored too.
pub const IGNORED: &[&str] = &[
    "rw",
    "defaults",
    "auto",
    "noauto",
    "nofail",
    "_netdev",
    "user",
    "users",
    "nouser",
    "owner",
    "group",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "exec",
    "noexec",
    "async",
    "sync",
    "dirsync",
    "atime",
    "noatime",
    "relatime",
    "norelatime",
    "strictatime",
    "nodiratime",
    "diratime",
    "lazytime",
    "nolazytime",
    "silent",
    "loud",
];

/// Long flags that are not mount options (in `-o` or a config file).
pub const NOT_OPTIONS: &[&str] = &["foreground", "profile", "config", "help", "ready-fd"];

/// Program names under which the binary is the mount(8) helper.
const HELPER_NAMES: &[&str] = &["mount.fuse.pai-mount", "mount.pai-mount"];

/// Rewrites a command line as described in the module docs.
pub fn expand(argv: Vec<OsString>) -> anyhow::Result<Vec<OsString>> {
    let mut argv = global_options_last(argv);
    let program = argv
        .first()
        .and_then(|p| std::path::Path::new(p).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let first = argv.get(1).map(|a| a.to_string_lossy().into_owned());
    let helper = HELPER_NAMES.contains(&program.as_str())
        || first.as_deref().is_some_and(|a| a.contains("://"));
    if helper && first.as_deref() != Some("mount") {
        argv.insert(1, "mount".into());
    }
    if argv.get(1).is_none_or(|a| a != "mount") {
        return Ok(argv);
    }
    let mut out: Vec<OsString> = argv[..2].to_vec();
    let mut rest = argv.into_iter().skip(2);
    while let Some(arg) = rest.next() {
        let text = arg.to_string_lossy();
        let list = if text == "-o" {
            match rest.next() {
                Some(v) => v.to_string_lossy().into_owned(),
                None => bail!("-o needs a list of options"),
            }
        } else if let Some(v) = text.strip_prefix("-o").filter(|_| !text.starts_with("--")) {
            v.to_string()
        } else {
            out.push(arg);
            continue;
        };
        for opt in list.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            let (key, value) = match opt.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (opt, None),
            };
            out.extend(option_args(key, value)?);
        }
    }
    Ok(out)
}

/// Moves the global `--config FILE` given before the subcommand behind it (clap takes global
/// options anywhere), so that the subcommand is always the first argument.
fn global_options_last(argv: Vec<OsString>) -> Vec<OsString> {
    let mut globals = Vec::new();
    let mut rest = Vec::new();
    let mut iter = argv.into_iter();
    rest.extend(iter.next());
    while let Some(a) = iter.next() {
        let text = a.to_string_lossy();
        if text == "--config" {
            globals.push(a);
            globals.extend(iter.next());
        } else if text.starts_with("--config=") {
            globals.push(a);
        } else {
            rest.push(a);
            break;
        }
    }
    rest.extend(iter);
    if !globals.is_empty() && rest.len() > 1 {
        let tail = rest.split_off(2);
        rest.extend(globals);
        rest.extend(tail);
    } else {
        rest.extend(globals);
    }
    rest
}

/// How one long flag of `pai-mount mount` is given.
pub struct Flag {
    pub long: String,
    pub takes_value: bool,
}

/// The long flags of `pai-mount mount` (read from the clap definition once).
fn mount_flags() -> &'static [Flag] {
    static FLAGS: std::sync::OnceLock<Vec<Flag>> = std::sync::OnceLock::new();
    FLAGS.get_or_init(|| {
        let cmd = Cli::command();
        let mount = cmd
            .find_subcommand("mount")
            .expect("the mount subcommand exists");
        mount
            .get_arguments()
            .filter_map(|a| {
                Some(Flag {
                    long: a.get_long()?.to_string(),
                    takes_value: a.get_action().takes_values(),
                })
            })
            .collect()
    })
}

/// The long flag `--long` of `pai-mount mount`, if there is one.
pub fn mount_flag(long: &str) -> Option<&'static Flag> {
    mount_flags().iter().find(|f| f.long == long)
}

/// The arguments that option `key` (`value`) of `-o` or a config file stands for.
pub fn option_args(key: &str, value: Option<&str>) -> anyhow::Result<Vec<OsString>> {
    let key = key.trim();
    if IGNORED.contains(&key) || key.starts_with("x-") || key == "comment" {
        return Ok(Vec::new());
    }
    if FUSE_OPTIONS.contains(&key) {
        let opt = match (key, value) {
            // Switches: by name, or =true / =false.
            ("allow_other" | "ro", None | Some("true" | "yes" | "1")) => key.to_string(),
            ("allow_other" | "ro", Some("false" | "no" | "0")) => return Ok(Vec::new()),
            ("allow_other" | "ro", Some(other)) => bail!(
                "mount option {key} is on or off: {key}, {key}=true or {key}=false, not {other:?}"
            ),
            (_, Some(v)) => format!("{key}={v}"),
            (_, None) => bail!("mount option {key} needs a value: {key}=..."),
        };
        return Ok(vec!["-o".into(), opt.into()]);
    }
    let long = key.replace('_', "-");
    let Some(flag) = mount_flag(&long).filter(|f| !NOT_OPTIONS.contains(&f.long.as_str())) else {
        bail!(
            "unknown mount option {key:?}: use a long flag's name of `pai-mount mount --help` (for example cache_dir=/ssd/cache), or one of {}",
            FUSE_OPTIONS.join(", ")
        );
    };
    match (flag.takes_value, value) {
        (true, Some(v)) => Ok(vec![format!("--{long}").into(), v.into()]),
        (true, None) => bail!("mount option {key} needs a value: {key}=..."),
        (false, None) => Ok(vec![format!("--{long}").into()]),
        (false, Some(v)) => match v {
            "true" | "yes" | "1" => Ok(vec![format!("--{long}").into()]),
            "false" | "no" | "0" => Ok(Vec::new()),
            other => bail!(
                "mount option {key} is on or off: {key}, {key}=true or {key}=false, not {other:?}"
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> anyhow::Result<Vec<String>> {
        Ok(expand(args.iter().map(OsString::from).collect())?
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect())
    }

    #[test]
    fn the_mount_helpers_command_line_becomes_a_mount_command() {
        let got = run(&[
            "pai-mount",
            "oss://bkt/data",
            "/mnt/data",
            "-o",
            "rw,_netdev,nofail,allow_other,region=cn-hangzhou,cache_dir=/ssd/cache,x-systemd.automount,path_style,dev,suid",
        ])
        .unwrap();
        assert_eq!(
            got,
            [
                "pai-mount",
                "mount",
                "oss://bkt/data",
                "/mnt/data",
                "-o",
                "allow_other",
                "--region",
                "cn-hangzhou",
                "--cache-dir",
                "/ssd/cache",
                "--path-style"
            ]
        );
        let got = run(&["/sbin/mount.fuse.pai-mount", "s3://b", "/m", "-oro,uid=5"]).unwrap();
        assert_eq!(
            got,
            [
                "/sbin/mount.fuse.pai-mount",
                "mount",
                "s3://b",
                "/m",
                "-o",
                "ro",
                "-o",
                "uid=5"
            ]
        );
    }

    #[test]
    fn flags_take_dashes_or_underscores_and_booleans_take_words() {
        let got = run(&[
            "pai-mount",
            "mount",
            "s3://b",
            "/m",
            "-o",
            "upload-part-size=32M,read_only=true,early_upload=false,no_verify_reads",
        ])
        .unwrap();
        assert_eq!(
            got[4..],
            [
                "--upload-part-size",
                "32M",
                "--read-only",
                "--no-verify-reads"
            ]
        );
        // Other subcommands are left alone.
        assert_eq!(run(&["pai-mount", "status", "-o"]).unwrap().len(), 3);
        // A global --config before the subcommand moves behind it.
        assert_eq!(
            run(&["pai-mount", "--config", "/c.toml", "unmount", "x"]).unwrap(),
            ["pai-mount", "unmount", "--config", "/c.toml", "x"]
        );
    }

    #[test]
    fn unknown_or_malformed_options_are_errors_that_name_them() {
        let e = run(&["pai-mount", "s3://b", "/m", "-o", "cache_dri=/x"]).unwrap_err();
        assert!(e.to_string().contains("\"cache_dri\""), "{e}");
        let e = run(&["pai-mount", "s3://b", "/m", "-o", "cache_dir"]).unwrap_err();
        assert!(e.to_string().contains("needs a value"), "{e}");
        let e = run(&["pai-mount", "s3://b", "/m", "-o", "path_style=maybe"]).unwrap_err();
        assert!(e.to_string().contains("on or off"), "{e}");
        let e = run(&["pai-mount", "s3://b", "/m", "-o"]).unwrap_err();
        assert!(e.to_string().contains("-o needs"), "{e}");
    }
}
