//! Runs the test server: `pai-test-s3 [--port N] [--latency-ms N] [--bucket B]... [--control]
//! [--proxy-delay-ms N [--proxy-window-kib N]]`
//! Prints `endpoint=http://127.0.0.1:PORT` on the first line of stdout once it is listening,
//! and runs until Ctrl-C. With `--proxy-delay-ms`, the endpoint is a delaying TCP proxy in
//! front of the server (N ms each way, see `proxy.rs`), and a second line gives the server's
//! own address: `direct=http://127.0.0.1:PORT`.
//!
//! With `--control` it reads commands from stdin, one per line, and answers each with one
//! line on stdout (`ok ...` or `error ...`), so tests in other languages can inject faults and
//! look at the bucket; it then also exits at the end of its input.
//! - `fail N`: the next N requests answer `503 SlowDown`;
//! - `cut N BYTES`: the next N GET bodies are cut after BYTES;
//! - `reset-puts N`: the next N PUTs lose their connection before an answer;
//! - `stall N`: the next N requests are never answered (the connection stays open);
//!   `stall-all on|off`: every request, until turned off;
//! - `stall-gets N BYTES`: the next N GET bodies stop after BYTES, the connection open;
//! - `corrupt-gets N`: the next N GET bodies have a bit flipped (length and headers kept);
//! - `checksums none|s3|oss`: which full-object checksum headers are sent (default s3: the
//!   CRC-64/NVME to GETs that ask with `x-amz-checksum-mode`);
//! - `throttle-above K`: requests beyond K in progress at once answer `503 SlowDown` (0: off);
//! - `put BUCKET KEY FILE`: stores the file's bytes (answers `ok ETAG`);
//! - `fill BUCKET PREFIX COUNT SIZE`: stores COUNT objects `PREFIX000000.bin`... of SIZE bytes
//!   each, distinct (the first 8 bytes are the index, little-endian);
//! - `delete BUCKET KEY`; `keys BUCKET [PREFIX]` (answers `ok N`);
//! - `counts` (answers `ok get=N head=N put=N list=N throttled=N`).

use std::io::BufRead;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use pai_test_s3::proxy::{DelayProxy, ProxyConfig};
use pai_test_s3::{Memory, ServerConfig, TestServer};

fn command(backend: &Memory, line: &str) -> anyhow::Result<String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let num = |i: usize| -> anyhow::Result<u64> {
        Ok(words
            .get(i)
            .ok_or_else(|| anyhow::anyhow!("missing argument {i}"))?
            .parse()?)
    };
    let word = |i: usize| -> anyhow::Result<&str> {
        words
            .get(i)
            .copied()
            .ok_or_else(|| anyhow::anyhow!("missing argument {i}"))
    };
    Ok(match words.first().copied().unwrap_or("") {
        "fail" => {
            backend.faults.fail_next(num(1)? as u32);
            "ok".into()
        }
        "cut" => {
            backend.faults.cut_next_gets(num(1)? as u32, num(2)?);
            "ok".into()
        }
        "stall" => {
            backend.faults.stall_next(num(1)? as u32);
            "ok".into()
        }
        "stall-all" => {
            backend.faults.stall_everything(word(1)? == "on");
            "ok".into()
        }
        "stall-gets" => {
            backend.faults.stall_next_gets(num(1)? as u32, num(2)?);
            "ok".into()
        }
        "corrupt-gets" => {
            backend.faults.corrupt_next_gets(num(1)? as u32);
            "ok".into()
        }
        "checksums" => {
            *backend.checksum_style.lock().unwrap() = match word(1)? {
                "none" => pai_test_s3::ChecksumStyle::None,
                "s3" => pai_test_s3::ChecksumStyle::S3,
                "oss" => pai_test_s3::ChecksumStyle::Oss,
                other => anyhow::bail!("unknown checksum style {other:?}: none, s3 or oss"),
            };
            "ok".into()
        }
        "throttle-above" => {
            backend.faults.throttle_above(num(1)? as u32);
            "ok".into()
        }
        "reset-puts" => {
            backend.faults.reset_next_puts(num(1)? as u32);
            "ok".into()
        }
        "put" => {
            let data = std::fs::read(word(3)?)?;
            format!("ok {}", backend.put(word(1)?, word(2)?, data))
        }
        "fill" => {
            let (bucket, prefix) = (word(1)?, word(2)?);
            let (count, size) = (num(3)?, num(4)? as usize);
            for i in 0..count {
                let mut data: Vec<u8> = (0..size).map(|j| (j as u64 * 7 + i) as u8).collect();
                let head = i.to_le_bytes();
                let n = head.len().min(size);
                data[..n].copy_from_slice(&head[..n]);
                backend.put(bucket, &format!("{prefix}{i:06}.bin"), data);
            }
            "ok".into()
        }
        "delete" => {
            backend.delete(word(1)?, word(2)?);
            "ok".into()
        }
        "keys" => {
            let prefix = words.get(2).copied().unwrap_or("");
            let n = backend
                .keys(word(1)?)
                .iter()
                .filter(|k| k.starts_with(prefix))
                .count();
            format!("ok {n}")
        }
        "counts" => {
            let c = &backend.counters;
            format!(
                "ok get={} head={} put={} list={} throttled={}",
                c.get.load(Relaxed),
                c.head.load(Relaxed),
                c.put.load(Relaxed),
                c.list.load(Relaxed),
                backend.faults.throttled.load(Relaxed)
            )
        }
        other => anyhow::bail!("unknown command {other:?}"),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut config = ServerConfig::default();
    let mut buckets = Vec::new();
    let mut control = false;
    let mut proxy: Option<ProxyConfig> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{arg} needs a value"))
        };
        match arg.as_str() {
            "--port" => config.bind.set_port(value()?.parse()?),
            "--latency-ms" => config.latency = Duration::from_millis(value()?.parse()?),
            "--bucket" => buckets.push(value()?),
            "--access-key" => config.access_key = value()?,
            "--secret-key" => config.secret_key = value()?,
            "--control" => control = true,
            "--proxy-delay-ms" => {
                proxy.get_or_insert_with(ProxyConfig::default).one_way =
                    Duration::from_millis(value()?.parse()?)
            }
            "--proxy-window-kib" => {
                proxy.get_or_insert_with(ProxyConfig::default).window =
                    value()?.parse::<usize>()? << 10
            }
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    let server = TestServer::start(config).await?;
    for b in &buckets {
        server.backend().create_bucket(b);
    }
    let _proxy = match proxy {
        Some(config) => {
            let p = DelayProxy::start(server.addr(), config).await?;
            println!("endpoint={}", p.endpoint());
            println!("direct={}", server.endpoint());
            Some(p)
        }
        None => {
            println!("endpoint={}", server.endpoint());
            None
        }
    };
    if !control {
        tokio::signal::ctrl_c().await?;
        return Ok(());
    }
    let backend = server.backend().clone();
    let stdin_done = tokio::task::spawn_blocking(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            match command(&backend, &line) {
                Ok(answer) => println!("{answer}"),
                Err(e) => println!("error {e}"),
            }
        }
    });
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = stdin_done => {}
    }
    Ok(())
}
