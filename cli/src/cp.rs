//! `pai-mount cp <source> <local-dir>`: copy a prefix to local disk, fast and resumable.
//! The copy itself is `pai_loader::copy` (shared with `pai_mount.copy`); this adds the
//! progress bar, the summary line and the exit code.

use std::sync::Arc;

use pai_loader::copy::{copy_prefix, CopyOptions, CopyProgress};
use pai_mount_fs::metrics::Metrics;

use crate::args::CpArgs;
use crate::progress::{report_failures, Progress};

/// The CLI's progress bar, made once the object count is known.
#[derive(Default)]
struct Bar(std::sync::OnceLock<Progress>);

impl CopyProgress for Bar {
    fn start(&self, objects: u64, bytes: u64) {
        let _ = self.0.set(Progress::new(objects, bytes));
    }
    fn finish_one(&self, bytes: u64, ok: bool) {
        if let Some(p) = self.0.get() {
            p.finish_one(bytes, ok);
        }
    }
}

pub fn run(a: CpArgs) -> anyhow::Result<()> {
    crate::init_logging("warn");
    let rt = crate::runtime()?;
    let metrics = Arc::new(Metrics::default());
    pai_exporter::start_for_command(&rt, a.metrics_addr, &metrics, &a.store.source, "cp")?;
    rt.block_on(async {
        let source = crate::store::connect(&a.store, metrics.clone()).await?;
        let options = CopyOptions {
            jobs: a.jobs,
            part_size: a.part_size,
            verify: !a.no_verify,
            fsync: a.fsync,
        };
        let bar = Bar::default();
        let report = copy_prefix(&source, &a.store.source, &a.dest, &options, &bar).await?;
        if let Some(p) = bar.0.get() {
            p.finish();
        }
        if report.unnamable_keys > 0 {
            eprintln!(
                "note: {} keys cannot be file names and are not copied (docs/SEMANTICS.md)",
                report.unnamable_keys
            );
        }
        println!(
            "copied {} objects, skipped {} already complete, failed {} ({} not started after the disk filled), of {} in {:.1} s: {} bytes fetched, {:.1} MB/s",
            report.copied,
            report.skipped,
            report.failed,
            report.not_started,
            report.objects,
            report.seconds,
            report.bytes_fetched,
            report.bytes_fetched as f64 / report.seconds.max(1e-3) / 1e6
        );
        report_failures(
            &report.errors,
            report.failed,
            "objects were not copied (rerun to finish them)",
        )
    })
}
