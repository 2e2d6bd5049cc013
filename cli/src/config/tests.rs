use std::os::unix::fs::PermissionsExt;

use super::*;

fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

fn strs(v: Vec<OsString>) -> Vec<String> {
    v.into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

fn run(args: &[&str]) -> anyhow::Result<Vec<String>> {
    apply(args.iter().map(OsString::from).collect()).map(strs)
}

const FILE: &str = r#"
[defaults]
region = "cn-hangzhou"
cache_dir = "/ssd/cache"
max_requests = 48

[mount.imagenet]
source = "oss://bkt/imagenet"
mountpoint = "/mnt/imagenet"
profile = "training"
read_only = true
allow_other = true
max_requests = 96
resolve = ["a.example:127.0.0.1:9000", "b.example:127.0.0.1:9001"]
"#;

#[test]
fn a_named_mount_expands_to_its_source_mountpoint_and_layered_settings() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "c.toml", FILE, 0o644);
    let f = f.to_str().unwrap();
    let got = run(&[
        "pai-mount",
        "mount",
        "--config",
        f,
        "imagenet",
        "--max-requests",
        "8",
    ])
    .unwrap();
    // Lowest precedence first: [defaults], the profile, the named mount, then the command line.
    let expected: Vec<String> = [
        "pai-mount",
        "mount",
        "--cache-dir",
        "/ssd/cache",
        "--max-requests",
        "48",
        "--region",
        "cn-hangzhou",
        "--prefetch-budget",
        "2G",
        "--max-window",
        "128M",
        "--max-requests",
        "64",
        "--metadata-ttl",
        "1d",
        "-o",
        "allow_other",
        "--max-requests",
        "96",
        "--read-only",
        "--resolve",
        "a.example:127.0.0.1:9000",
        "--resolve",
        "b.example:127.0.0.1:9001",
        "--config",
        f,
        "oss://bkt/imagenet",
        "/mnt/imagenet",
        "--max-requests",
        "8",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(got, expected);
    // ... and clap takes the last value of each: the command line's.
    let cli = crate::args::parse(got.into_iter().map(OsString::from).collect());
    let crate::args::Command::Mount(m) = cli.command else {
        panic!("a mount command")
    };
    assert_eq!(m.cache.max_requests, 8);
    assert_eq!(m.cache.prefetch_budget, 2 << 30);
    assert_eq!(m.store.region.as_deref(), Some("cn-hangzhou"));
    assert!(m.write.read_only);
    assert_eq!(m.store.resolve.len(), 2);

    // A profile on the command line replaces the section's.
    let got = run(&[
        "pai-mount",
        "mount",
        "--config",
        f,
        "imagenet",
        "--profile",
        "notebook",
    ])
    .unwrap();
    assert!(got.windows(2).any(|w| w == ["--refresh", "5m"]), "{got:?}");
    assert!(
        !got.iter().any(|a| a == "--prefetch-budget")
            || got.windows(2).any(|w| w == ["--prefetch-budget", "256M"])
    );

    // `unmount NAME` finds the mount point; other commands are left alone.
    let got = run(&["pai-mount", "unmount", "--config", f, "imagenet"]).unwrap();
    assert_eq!(got.last().unwrap(), "/mnt/imagenet");
    assert_eq!(
        run(&["pai-mount", "status"]).unwrap(),
        ["pai-mount", "status"]
    );
}

#[test]
fn defaults_apply_to_a_mount_given_by_url() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "c.toml", FILE, 0o644);
    let f = f.to_str().unwrap();
    let got = run(&["pai-mount", "mount", "--config", f, "s3://b/p", "/m"]).unwrap();
    assert_eq!(
        got[2..8],
        [
            "--cache-dir",
            "/ssd/cache",
            "--max-requests",
            "48",
            "--region",
            "cn-hangzhou"
        ]
    );
    assert_eq!(got[got.len() - 2..], ["s3://b/p", "/m"]);
}

#[test]
fn mistakes_name_the_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "bad.toml",
        "[defaults]\nregion = \"x\"\ncache_dri = \"/ssd\"\n",
        0o600,
    );
    let e = Config::load(Some(&f)).unwrap_err().to_string();
    assert!(
        e.contains(&format!("{}:3", f.display())) && e.contains("cache_dri"),
        "{e}"
    );

    let f = write(
        dir.path(),
        "sect.toml",
        "[mounts.x]\nsource = \"s3://b\"\n",
        0o600,
    );
    let e = Config::load(Some(&f)).unwrap_err().to_string();
    assert!(e.contains("mounts"), "{e}");

    let f = write(
        dir.path(),
        "prof.toml",
        "[mount.x]\nprofile = \"gaming\"\n",
        0o600,
    );
    let e = Config::load(Some(&f)).unwrap_err().to_string();
    assert!(
        e.contains(":2") && e.contains("unknown profile \"gaming\""),
        "{e}"
    );

    let f = write(dir.path(), "ok.toml", FILE, 0o600);
    let e = run(&[
        "pai-mount",
        "mount",
        "--config",
        f.to_str().unwrap(),
        "nope",
    ])
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("no mount named \"nope\"") && e.contains("imagenet"),
        "{e}"
    );

    let e = Config::load(Some(&dir.path().join("missing.toml"))).unwrap_err();
    assert!(format!("{e:#}").contains("missing.toml"), "{e:#}");
}

#[test]
fn credentials_need_a_private_file_and_yield_to_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[mount.x]\nsource = \"s3://b\"\nmountpoint = \"/m\"\nsecret_access_key = \"s\"\naccess_key_id = \"k\"\n";
    let f = write(dir.path(), "c.toml", text, 0o640);
    let e = Config::load(Some(&f)).unwrap_err().to_string();
    assert!(
        e.contains("readable by others") && e.contains("chmod 600"),
        "{e}"
    );
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = Config::load(Some(&f)).unwrap();
    assert_eq!(config.mounts["x"].settings.len(), 2);
}

#[test]
fn a_later_file_overrides_an_earlier_one_key_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a.toml", "[defaults]\nregion = \"a\"\nmax_requests = 1\n[mount.m]\nsource = \"s3://a\"\nmountpoint = \"/a\"\n", 0o644);
    let b = write(
        dir.path(),
        "b.toml",
        "[defaults]\nregion = \"b\"\n[mount.m]\nmountpoint = \"/b\"\n",
        0o644,
    );
    let mut c = Config::default();
    c.read(&a).unwrap();
    c.read(&b).unwrap();
    let region = c.defaults.iter().find(|s| s.key == "region").unwrap();
    assert_eq!(region.values, ["b"]);
    assert!(c.defaults.iter().any(|s| s.key == "max_requests"));
    let m = &c.mounts["m"];
    assert_eq!(m.source.as_ref().unwrap().values, ["s3://a"]);
    assert_eq!(m.mountpoint.as_ref().unwrap().values, ["/b"]);
}

#[test]
fn every_profile_setting_is_a_mount_option_and_documented() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/CONFIGURATION.md"
    ))
    .unwrap();
    for Profile {
        name,
        purpose,
        settings,
    } in PROFILES
    {
        assert!(
            doc.contains(purpose),
            "docs/CONFIGURATION.md lacks what {name} is for"
        );
        for (k, v) in *settings {
            options::option_args(k, Some(v)).unwrap();
            assert!(
                doc.contains(&format!("`{k}={v}`")),
                "docs/CONFIGURATION.md lacks {name}'s {k}={v}"
            );
        }
    }
}

#[test]
fn show_prints_each_effective_value_with_its_origin_and_hides_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("{FILE}secret_access_key = \"hunter2\"\naccess_key_id = \"AKID\"\n");
    let f = write(dir.path(), "c.toml", &text, 0o600);
    let config = Config::load(Some(&f)).unwrap();
    let out = render(&config, Some("imagenet"), None).unwrap();
    let line = |key: &str| {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(key))
            .unwrap_or_else(|| panic!("no {key} in\n{out}"))
            .to_string()
    };
    assert!(line("source").contains("oss://bkt/imagenet"));
    assert!(
        line("max_requests").contains("96") && line("max_requests").contains("[mount.imagenet]")
    );
    assert!(
        line("prefetch_budget").contains("2G")
            && line("prefetch_budget").contains("profile training")
    );
    assert!(
        line("region").contains("[defaults]") && line("region").contains(":3"),
        "{}",
        line("region")
    );
    assert!(line("part_size").contains("8M") && line("part_size").contains("built-in default"));
    assert!(!out.contains("hunter2") && !out.contains("AKID"), "{out}");
    assert!(line("secret_access_key").contains("********"));
    let out = render(&config, None, Some("checkpoint")).unwrap();
    assert!(out.contains("named mounts: imagenet"));
    assert!(out.contains("profile checkpoint"));
    assert!(render(&config, Some("nope"), None).is_err());
}

#[test]
fn the_sample_config_is_valid() {
    let path = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../dist/config.toml.example"
    ));
    let c = Config::load(Some(path)).unwrap();
    assert_eq!(c.mounts.len(), 2);
    render(&c, Some("imagenet"), None).unwrap();
}

#[test]
fn a_damaged_config_does_not_stop_unmounting_a_path() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "bad.toml", "[defaults\n", 0o644);
    let f = f.to_str().unwrap();
    let got = run(&["pai-mount", "unmount", "--config", f, "/mnt/data"]).unwrap();
    assert_eq!(got.last().unwrap(), "/mnt/data");
    assert!(run(&["pai-mount", "unmount", "--config", f, "data"]).is_err());
    assert!(run(&["pai-mount", "mount", "--config", f, "s3://b", "/m"]).is_err());
}
