//! A progress bar with bytes/s, objects/s and an ETA, and exact counts at the end.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::bail;
use indicatif::{ProgressBar, ProgressStyle};

/// Counts and a progress bar with bytes/s, objects/s and an ETA.
pub struct Progress {
    bar: ProgressBar,
    objects: u64,
    done: AtomicU64,
    failed: AtomicU64,
    started: Instant,
}

impl Progress {
    pub fn new(objects: u64, bytes: u64) -> Self {
        let bar = ProgressBar::new(bytes);
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:30} {bytes}/{total_bytes} {bytes_per_sec} {msg} ETA {eta}",
            )
            .expect("static template"),
        );
        Self {
            bar,
            objects,
            done: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    pub fn finish_one(&self, bytes: u64, ok: bool) {
        if !ok {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        self.bar.inc(bytes);
        let rate = done as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
        self.bar
            .set_message(format!("{done}/{} objects {rate:.0}/s", self.objects));
    }

    pub fn finish(&self) -> (u64, u64, f64) {
        self.bar.finish_and_clear();
        (
            self.done.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.started.elapsed().as_secs_f64(),
        )
    }
}

/// Prints the first failures and turns any failure into an error (a non-zero exit).
pub fn report_failures(errors: &[String], failed: u64, what: &str) -> anyhow::Result<()> {
    for e in errors.iter().take(10) {
        eprintln!("  failed: {e}");
    }
    if failed > 0 {
        bail!("{failed} {what}");
    }
    Ok(())
}
