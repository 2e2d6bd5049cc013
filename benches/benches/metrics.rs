//! What metrics cost: timing one FUSE operation into its histogram, against reading the clock
//! twice (the least any timing costs); rendering a scrape of a mount's endpoint; and a scrape
//! that sums 64 datasets' metrics (a loader process).
//!
//! ```sh
//! cargo bench -p pai-mount-benches --bench metrics
//! ```

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pai_exporter::{registry, render, Source};
use pai_mount_fs::metrics::{FuseOp, Metrics};

/// A metrics set with every histogram and counter holding values.
fn filled() -> Arc<Metrics> {
    let m = Arc::new(Metrics::default());
    for i in 0..10_000u64 {
        let d = Duration::from_micros(i * 37 % 200_000);
        m.get_first_byte_seconds.observe(d);
        m.get_seconds.observe(d * 3);
        m.upload_seconds.observe(d * 10);
        for op in FuseOp::ALL {
            m.fuse_ops.of(op).observe(d / 10);
        }
        Metrics::add(&m.get_requests, 1);
    }
    m
}

fn per_iteration(n: u32, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed().as_secs_f64() * 1e9 / f64::from(n)
}

fn main() {
    println!("pai-mount metrics benchmark; 2 cores");
    let m = Arc::new(Metrics::default());
    let n = 10_000_000;
    // Alternate the two loops three times; report the medians.
    let (mut timer, mut clock) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        timer.push(per_iteration(n, || {
            drop(black_box(m.time(FuseOp::Getattr)))
        }));
        clock.push(per_iteration(n, || {
            black_box(black_box(Instant::now()).elapsed());
        }));
    }
    timer.sort_by(f64::total_cmp);
    clock.sort_by(f64::total_cmp);
    println!(
        "timing one FUSE operation: {:.1} ns (runs {timer:.1?}); reading the clock twice: {:.1} ns (runs {clock:.1?}); the histogram adds {:.1} ns",
        timer[1],
        clock[1],
        timer[1] - clock[1]
    );

    let mount = registry(
        Source::One(filled()),
        Box::new(|| Some(vec![3, 1 << 20, 5 << 30, 1_000_000, 12])),
        &[("source", "oss://bucket/data"), ("mountpoint", "/mnt/data")],
    );
    let bytes = render(&mount).len();
    let scrapes = 2_000;
    let us = per_iteration(scrapes, || drop(black_box(render(&mount)))) / 1e3;
    println!("a mount's scrape: {bytes} bytes, rendered in {us:.0} us");

    let datasets: Vec<Arc<Metrics>> = (0..64).map(|_| filled()).collect();
    let loader = registry(
        Source::Many(Box::new(move || datasets.clone())),
        Box::new(|| None),
        &[("command", "loader"), ("pid", "1")],
    );
    let us = per_iteration(200, || drop(black_box(render(&loader)))) / 1e3;
    println!("a loader's scrape summing 64 datasets: rendered in {us:.0} us");
}
