//! A TCP proxy that delays every byte by a fixed time in each direction: a real network round
//! trip in user space (these kernels have no `tc netem`).
//!
//! A first-byte delay inside the server is paid once per request. A round trip is paid by
//! every exchange, including the request itself, and by every connection's first request; it
//! also bounds how much one connection can carry (`window` bytes in flight per direction per
//! round trip's half, like a TCP window over a long link). Benchmarks run their clients and
//! their baselines through the same proxy.
//!
//! Each connection has two pumps. A pump reads what arrives, stamps it with the time it may
//! leave (`arrival + delay`), and hands it to a writer through a bounded queue; the writer
//! sleeps until the stamp and writes. At most `window` bytes wait in a direction; a pump that
//! finds it full stops reading, so the sender's TCP window fills as it would on a long link.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

/// How a [`DelayProxy`] delays.
#[derive(Debug, Clone, Copy)]
pub struct ProxyConfig {
    /// Added to every byte, each way (a round trip is twice this).
    pub one_way: Duration,
    /// Bytes in flight per direction of one connection.
    pub window: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            // 15 ms each way: the ~30 ms round trip of a cross-zone object store.
            one_way: Duration::from_millis(15),
            // 8 MiB per 15 ms is about 560 MB/s per connection: above what one OSS stream
            // gives, so the window rarely binds on one stream but does cap a bulk transfer.
            window: 8 << 20,
        }
    }
}

/// A running proxy; dropping it stops accepting connections (open ones finish).
pub struct DelayProxy {
    addr: SocketAddr,
    accept: tokio::task::JoinHandle<()>,
}

impl DelayProxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr, config: ProxyConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    // The connection to the server is made at once; the client's first bytes
                    // still wait `one_way` before they reach it.
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let up = tokio::spawn(pump(cr, sw, config));
                    let down = tokio::spawn(pump(sr, cw, config));
                    let _ = tokio::join!(up, down);
                });
            }
        });
        Ok(Self { addr, accept })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn pump<R, W>(mut from: R, mut to: W, config: ProxyConfig)
where
    R: AsyncReadExt + Unpin + Send + 'static,
    W: AsyncWriteExt + Unpin + Send + 'static,
{
    let window = Arc::new(Semaphore::new(config.window));
    // Chunks in order, each with the time it may leave. The channel is unbounded in count but
    // bounded in bytes: every chunk holds its bytes' permits of the window.
    type Chunk = (Instant, Vec<u8>, tokio::sync::OwnedSemaphorePermit);
    let (tx, mut rx) = mpsc::unbounded_channel::<Chunk>();
    let writer = tokio::spawn(async move {
        while let Some((at, chunk, permit)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
            drop(permit);
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let Ok(permit) = window.clone().acquire_many_owned(n as u32).await else {
            break;
        };
        // The bytes enter the link once the window lets them.
        let at = Instant::now() + config.one_way;
        if tx.send((at, buf[..n].to_vec(), permit)).is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}
