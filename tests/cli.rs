//! The CLI's documented entry points.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_pai-mount");

#[test]
fn demo_runs_end_to_end_on_the_embedded_server() {
    let out = Command::new(BIN)
        .args(["demo", "--objects", "60", "--latency-ms", "5"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("sha256 of every file matches"), "{text}");
    assert!(text.contains("0 LIST and 0 HEAD requests"), "{text}");
    assert!(text.contains("Demo OK"), "{text}");
}

#[test]
fn help_lists_the_subcommands() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for sub in [
        "mount", "unmount", "status", "manifest", "demo", "warm", "cp",
    ] {
        assert!(text.contains(sub), "{text}");
    }
}
