//! Runs the test server until interrupted: `pai-test-s3 [--port N] [--latency-ms N] [--bucket B]...`
//! Prints `endpoint=http://127.0.0.1:PORT` on the first line of stdout once it is listening.

use std::time::Duration;

use pai_test_s3::{ServerConfig, TestServer};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut config = ServerConfig::default();
    let mut buckets = Vec::new();
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
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    let server = TestServer::start(config).await?;
    for b in &buckets {
        server.backend().create_bucket(b);
    }
    println!("endpoint={}", server.endpoint());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
