//! Shared helpers for the benchmarks in `benches/`.

/// Peak resident set size of this process, in bytes (VmHWM).
pub fn peak_rss() -> u64 {
    status_field("VmHWM:")
}

/// Current resident set size, in bytes (VmRSS).
pub fn rss() -> u64 {
    status_field("VmRSS:")
}

fn status_field(name: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// ImageNet-like relative keys: 1000 class directories of `per_class` files.
pub fn imagenet_keys(n: usize) -> Vec<String> {
    let classes = 1000.min(n.max(1));
    (0..n)
        .map(|i| {
            let class = 1_440_764 + (i % classes) * 7;
            format!(
                "train/n{class:08}/n{class:08}_{:05}.JPEG",
                i / classes + 10_000
            )
        })
        .collect()
}
