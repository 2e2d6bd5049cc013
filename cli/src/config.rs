//! The config file: `[defaults]`, named mounts (`[mount.NAME]`) and profiles.
//!
//! Files: `--config FILE` (only that one), else `/etc/pai-mount/config.toml` and then
//! `$XDG_CONFIG_HOME/pai-mount/config.toml` (`~/.config/...`), both if present, the second
//! overriding the first key by key. Every key is a mount option under its long flag's name
//! with `_` (see [`crate::options`]), plus `source`, `mountpoint` (named mounts) and `profile`.
//!
//! [`apply`] turns `pai-mount mount NAME` into `pai-mount mount SOURCE MOUNTPOINT`, and puts
//! the settings of `[defaults]`, the profile and the named mount in front of the command line's
//! own arguments, lowest precedence first; the command is parsed with every argument
//! overriding an earlier one of the same name, so the precedence is: flags, then the
//! environment (credentials in the environment win over credentials in a file), then the named
//! mount, then the profile, then `[defaults]`, then the built-in defaults. `pai-mount unmount
//! NAME` finds the named mount's mount point.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;
use toml::Spanned;

use crate::options;

/// A built-in profile.
pub struct Profile {
    pub name: &'static str,
    /// The workload it is for.
    pub purpose: &'static str,
    /// Mount options, as in a config file.
    pub settings: &'static [(&'static str, &'static str)],
}

/// Built-in profiles. Documented in docs/CONFIGURATION.md (a test checks that the docs list
/// these).
pub const PROFILES: &[Profile] = &[
    Profile {
        name: "training",
        purpose: "large sequential and parallel reads of a dataset that does not change during a job",
        settings: &[("prefetch_budget", "2G"),
            ("max_window", "128M"),
            ("max_requests", "64"),
            ("metadata_ttl", "1d"),],
    },
    Profile {
        name: "checkpoint",
        purpose: "large files written once and read back whole: big upload parts in parallel, uploads that start while the file is written",
        settings: &[("upload_part_size", "64M"),
            ("upload_parts", "32"),
            ("upload_files", "16"),
            ("early_upload", "true"),
            ("max_window", "256M"),],
    },
    Profile {
        name: "notebook",
        purpose: "interactive work on code and small files, shared with other machines: short metadata caching, periodic refresh, a small prefetch budget",
        settings: &[("metadata_ttl", "10s"),
            ("refresh", "5m"),
            ("prefetch_budget", "256M"),
            ("max_window", "32M"),],
    },
];

/// Keys that hold credentials: a file with any of them must be mode 0600 (or stricter).
const SECRET_KEYS: &[&str] = &["access_key_id", "secret_access_key", "session_token"];

/// Environment variables that carry credentials; when one is set, credentials in files are not
/// used (the environment comes first).
const CREDENTIAL_ENV: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "OSS_ACCESS_KEY_ID",
    "ALIBABA_CLOUD_ACCESS_KEY_ID",
];

/// One `key = value` of a file, with where it was written.
#[derive(Debug, Clone)]
pub struct Setting {
    pub key: String,
    /// The value as a flag value; several for an array.
    pub values: Vec<String>,
    pub file: PathBuf,
    pub line: usize,
}

impl Setting {
    fn place(&self) -> String {
        format!("{}:{}", self.file.display(), self.line)
    }
}

/// A `[mount.NAME]` section.
#[derive(Debug, Clone, Default)]
pub struct MountSection {
    pub source: Option<Setting>,
    pub mountpoint: Option<Setting>,
    pub profile: Option<Setting>,
    pub settings: Vec<Setting>,
}

/// The merged config files.
#[derive(Debug, Default)]
pub struct Config {
    pub files: Vec<PathBuf>,
    pub profile: Option<Setting>,
    pub defaults: Vec<Setting>,
    pub mounts: BTreeMap<String, MountSection>,
}

type Table = BTreeMap<Spanned<String>, Spanned<toml::Value>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShape {
    #[serde(default)]
    defaults: Table,
    #[serde(default)]
    mount: BTreeMap<String, Table>,
}

/// The 1-based line of byte `offset` of `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

impl Config {
    /// The files `--config` names, or the default ones that exist.
    pub fn load(explicit: Option<&Path>) -> anyhow::Result<Self> {
        let mut config = Config::default();
        match explicit {
            Some(f) => config.read(f)?,
            None => {
                let user = std::env::var_os("XDG_CONFIG_HOME")
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
                    .or_else(|| {
                        pai_mount_fs::object::credentials::home_dir().map(|h| h.join(".config"))
                    })
                    .map(|d| d.join("pai-mount/config.toml"));
                for f in std::iter::once(PathBuf::from("/etc/pai-mount/config.toml")).chain(user) {
                    if f.exists() {
                        config.read(&f)?;
                    }
                }
            }
        }
        Ok(config)
    }

    /// Reads one file over what is already loaded.
    pub fn read(&mut self, file: &Path) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading config file {}", file.display()))?;
        let shape: FileShape =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        let setting = |k: &Spanned<String>, v: &Spanned<toml::Value>| -> anyhow::Result<Setting> {
            let line = line_of(&text, k.span().start);
            let values = match v.get_ref() {
                toml::Value::Array(items) => items.iter().map(scalar).collect(),
                other => scalar(other).map(|s| vec![s]),
            }
            .map_err(|why| anyhow::anyhow!("{}:{line}: {}: {why}", file.display(), k.get_ref()))?;
            Ok(Setting {
                key: k.get_ref().clone(),
                values,
                file: file.to_path_buf(),
                line,
            })
        };
        let mut secrets = Vec::new();
        let mut check = |s: &Setting, section: bool| -> anyhow::Result<()> {
            if SECRET_KEYS.contains(&s.key.as_str()) {
                secrets.push(s.clone());
            }
            let special =
                s.key == "profile" || section && (s.key == "source" || s.key == "mountpoint");
            if s.key == "profile" {
                profile(&s.values[0]).map_err(|e| anyhow::anyhow!("{}: {e}", s.place()))?;
            }
            if !special {
                for v in &s.values {
                    options::option_args(&s.key, Some(v))
                        .map_err(|e| anyhow::anyhow!("{}: {e}", s.place()))?;
                }
            }
            Ok(())
        };
        let mut defaults = Vec::new();
        for (k, v) in &shape.defaults {
            let s = setting(k, v)?;
            check(&s, false)?;
            defaults.push(s);
        }
        let mut mounts = BTreeMap::new();
        for (name, table) in &shape.mount {
            let mut section = MountSection::default();
            for (k, v) in table {
                let s = setting(k, v)?;
                check(&s, true)?;
                match s.key.as_str() {
                    "source" => section.source = Some(s),
                    "mountpoint" => section.mountpoint = Some(s),
                    "profile" => section.profile = Some(s),
                    _ => section.settings.push(s),
                }
            }
            mounts.insert(name.clone(), section);
        }
        if let Some(s) = secrets.first() {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(file)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                bail!(
                    "{}: {} holds credentials, but the file is readable by others (mode {mode:04o}); run chmod 600 {}",
                    s.place(),
                    s.key,
                    file.display()
                );
            }
        }
        // A later file overrides an earlier one key by key.
        for s in defaults {
            if s.key == "profile" {
                self.profile = Some(s);
            } else {
                self.defaults.retain(|d| d.key != s.key);
                self.defaults.push(s);
            }
        }
        for (name, section) in mounts {
            let merged = self.mounts.entry(name).or_default();
            merged.source = section.source.or(merged.source.take());
            merged.mountpoint = section.mountpoint.or(merged.mountpoint.take());
            merged.profile = section.profile.or(merged.profile.take());
            for s in section.settings {
                merged.settings.retain(|d| d.key != s.key);
                merged.settings.push(s);
            }
        }
        self.files.push(file.to_path_buf());
        Ok(())
    }

    fn files_list(&self) -> String {
        if self.files.is_empty() {
            "no config file (looked for /etc/pai-mount/config.toml and ~/.config/pai-mount/config.toml)".into()
        } else {
            self.files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        }
    }

    fn named(&self, name: &str) -> anyhow::Result<&MountSection> {
        self.mounts.get(name).with_context(|| {
            let known: Vec<&str> = self.mounts.keys().map(String::as_str).collect();
            format!(
                "no mount named {name:?} in {} (named mounts: {})",
                self.files_list(),
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )
        })
    }
}

/// A TOML scalar as a flag value.
fn scalar(v: &toml::Value) -> Result<String, String> {
    match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        other => Err(format!(
            "expected a string, number or boolean, not {}",
            other.type_str()
        )),
    }
}

/// The settings of built-in profile `name`.
pub fn profile(name: &str) -> anyhow::Result<&'static [(&'static str, &'static str)]> {
    PROFILES
        .iter()
        .find(|p| p.name == name)
        .map(|p| p.settings)
        .with_context(|| {
            let names: Vec<&str> = PROFILES.iter().map(|p| p.name).collect();
            format!("unknown profile {name:?} (built in: {})", names.join(", "))
        })
}

/// The value of `--NAME VALUE` or `--NAME=VALUE` in `args`, if given.
fn flag_value(args: &[OsString], name: &str) -> Option<String> {
    let long = format!("--{name}");
    let mut iter = args.iter().map(|a| a.to_string_lossy());
    while let Some(a) = iter.next() {
        if a == long {
            return iter.next().map(|v| v.into_owned());
        }
        if let Some(v) = a.strip_prefix(&format!("{long}=")) {
            return Some(v.to_string());
        }
    }
    None
}

/// Indices in `args` of the positional arguments of `pai-mount mount` (or `unmount`): not a
/// flag, and not the value of a flag that takes one.
fn positionals(args: &[OsString], takes_value: &dyn Fn(&str) -> bool) -> Vec<usize> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].to_string_lossy();
        if a == "--" {
            out.extend(i + 1..args.len());
            break;
        }
        if let Some(long) = a.strip_prefix("--") {
            if !long.contains('=') && takes_value(long) {
                i += 1;
            }
        } else if a.starts_with('-') && a.len() > 1 {
            // Short flags: -o takes a value (unless attached), -f does not.
            if a == "-o" {
                i += 1;
            }
        } else {
            out.push(i);
        }
        i += 1;
    }
    out
}

/// Applies the config files to `argv` (after [`options::expand`]); see the module docs.
pub fn apply(argv: Vec<OsString>) -> anyhow::Result<Vec<OsString>> {
    let sub = argv.get(1).map(|a| a.to_string_lossy().into_owned());
    if !matches!(sub.as_deref(), Some("mount" | "unmount")) {
        return Ok(argv);
    }
    let explicit = flag_value(&argv[2..], "config").map(PathBuf::from);
    let mut rest: Vec<OsString> = argv[2..].to_vec();
    let takes_value =
        |long: &str| long == "config" || options::mount_flag(long).is_some_and(|f| f.takes_value);
    let pos = positionals(&rest, &takes_value);
    let first_name = pos
        .first()
        .map(|&i| rest[i].to_string_lossy().into_owned())
        .filter(|p| !p.contains("://") && !p.contains('/'));
    if sub.as_deref() == Some("unmount") {
        // Only a name needs the files: a damaged config never stands in the way of unmounting
        // a path.
        if let (Some(name), 1) = (first_name, pos.len()) {
            let config = Config::load(explicit.as_deref())?;
            if let Some(mp) = config.mounts.get(&name).and_then(|m| m.mountpoint.as_ref()) {
                rest[pos[0]] = mp.values[0].clone().into();
            }
        }
        let mut out = argv[..2].to_vec();
        out.extend(rest);
        return Ok(out);
    }
    let config = Config::load(explicit.as_deref())?;
    // `mount NAME`: one positional that is not a URL.
    let section = match (first_name, pos.len()) {
        (Some(name), 1) => {
            let section = config.named(&name)?;
            let need = |s: &Option<Setting>, what: &str| -> anyhow::Result<String> {
                s.as_ref().map(|s| s.values[0].clone()).with_context(|| {
                    format!("mount {name:?} in {} has no {what}", config.files_list())
                })
            };
            let source = need(&section.source, "source")?;
            let mountpoint = need(&section.mountpoint, "mountpoint")?;
            rest.splice(pos[0]..=pos[0], [source.into(), mountpoint.into()]);
            Some(section)
        }
        _ => None,
    };
    let profile_name = flag_value(&rest, "profile")
        .or_else(|| {
            section
                .and_then(|s| s.profile.as_ref())
                .map(|s| s.values[0].clone())
        })
        .or_else(|| config.profile.as_ref().map(|s| s.values[0].clone()));
    let env_has_credentials = CREDENTIAL_ENV
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()));
    let mut layered: Vec<OsString> = Vec::new();
    let mut add = |key: &str, values: &[String]| -> anyhow::Result<()> {
        if env_has_credentials && SECRET_KEYS.contains(&key) {
            return Ok(());
        }
        for v in values {
            layered.extend(options::option_args(key, Some(v))?);
        }
        Ok(())
    };
    for s in &config.defaults {
        add(&s.key, &s.values)?;
    }
    if let Some(p) = &profile_name {
        for (k, v) in profile(p)? {
            add(k, &[v.to_string()])?;
        }
    }
    if let Some(section) = section {
        for s in &section.settings {
            add(&s.key, &s.values)?;
        }
    }
    let mut out = argv[..2].to_vec();
    out.extend(layered);
    out.extend(rest);
    Ok(out)
}

#[cfg(test)]
mod tests;

/// Where an effective value comes from.
fn origin(s: &Setting, layer: &str) -> String {
    format!("{layer} {}", s.place())
}

/// `pai-mount config show [NAME]`: every mount option's effective value and its origin.
pub fn show(
    explicit: Option<&Path>,
    name: Option<&str>,
    profile_flag: Option<&str>,
) -> anyhow::Result<()> {
    let config = Config::load(explicit)?;
    print!("{}", render(&config, name, profile_flag)?);
    Ok(())
}

/// The text of [`show`].
pub fn render(
    config: &Config,
    name: Option<&str>,
    profile_flag: Option<&str>,
) -> anyhow::Result<String> {
    use clap::CommandFactory;
    // key -> (value, origin), lowest precedence first.
    let mut effective: BTreeMap<String, (String, String)> = BTreeMap::new();
    let cmd = crate::args::Cli::command();
    let mount = cmd
        .find_subcommand("mount")
        .expect("the mount subcommand exists");
    for arg in mount.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if options::NOT_OPTIONS.contains(&long) {
            continue;
        }
        let default = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(",");
        let value = if default.is_empty() && !arg.get_action().takes_values() {
            "false".to_string()
        } else if default.is_empty() {
            "(unset)".to_string()
        } else {
            default
        };
        effective.insert(long.replace('-', "_"), (value, "built-in default".into()));
    }
    for key in options::FUSE_OPTIONS {
        effective.insert(
            key.to_string(),
            ("(unset)".into(), "built-in default".into()),
        );
    }
    fn set(effective: &mut BTreeMap<String, (String, String)>, s: &Setting, layer: &str) {
        let value = if SECRET_KEYS.contains(&s.key.as_str()) {
            "********".to_string()
        } else {
            s.values.join(",")
        };
        effective.insert(s.key.clone(), (value, origin(s, layer)));
    }
    for s in &config.defaults {
        set(&mut effective, s, "[defaults]");
    }
    let section = name.map(|n| config.named(n)).transpose()?;
    let profile_name = profile_flag
        .map(str::to_string)
        .or_else(|| {
            section
                .and_then(|s| s.profile.as_ref())
                .map(|s| s.values[0].clone())
        })
        .or_else(|| config.profile.as_ref().map(|s| s.values[0].clone()));
    let mut out = String::new();
    out.push_str(&format!("config files: {}\n", config.files_list()));
    if let Some(p) = &profile_name {
        for (k, v) in profile(p)? {
            effective.insert(k.to_string(), (v.to_string(), format!("profile {p}")));
        }
    }
    if let (Some(n), Some(section)) = (name, section) {
        for s in &section.settings {
            set(&mut effective, s, &format!("[mount.{n}]"));
        }
        out.push_str(&format!("mount {n}\n"));
        for (what, s) in [
            ("source", &section.source),
            ("mountpoint", &section.mountpoint),
        ] {
            match s {
                Some(s) => out.push_str(&format!(
                    "  {what:<22} {:<34} {}\n",
                    s.values[0],
                    origin(s, &format!("[mount.{n}]"))
                )),
                None => out.push_str(&format!("  {what:<22} (missing)\n")),
            }
        }
    } else {
        let names: Vec<&str> = config.mounts.keys().map(String::as_str).collect();
        out.push_str(&format!(
            "named mounts: {}\nsettings of a mount given by URL:\n",
            if names.is_empty() {
                "none".into()
            } else {
                names.join(", ")
            }
        ));
    }
    if CREDENTIAL_ENV
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()))
    {
        for key in SECRET_KEYS {
            if effective.contains_key(*key) {
                effective.insert(
                    key.to_string(),
                    ("********".into(), "environment (wins over files)".into()),
                );
            }
        }
    }
    for (key, (value, from)) in effective {
        out.push_str(&format!("  {key:<22} {value:<34} {from}\n"));
    }
    Ok(out)
}
