//! systemd's service notifications (sd_notify(3)), for units of `Type=notify`: the daemon sends
//! `READY=1` once the mount is live, `STATUS=` lines with its uploads, and `STOPPING=1` when it
//! unmounts. Each is one datagram to the socket named by `$NOTIFY_SOCKET` (a path, or an
//! abstract name after `@`). Without the variable nothing is sent.

use std::os::unix::net::UnixDatagram;

/// The notification socket of the service manager that started us.
pub struct Notifier {
    socket: UnixDatagram,
    addr: std::os::unix::net::SocketAddr,
}

impl Notifier {
    /// The manager's socket, if `$NOTIFY_SOCKET` names one we can reach.
    pub fn from_env() -> Option<Self> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()).to_vec();
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name).ok()?
            }
            None => std::os::unix::net::SocketAddr::from_pathname(&path).ok()?,
        };
        let socket = UnixDatagram::unbound().ok()?;
        Some(Self { socket, addr })
    }

    /// Sends `state` (newline-separated `KEY=VALUE` lines); a failure is logged, never fatal.
    pub fn send(&self, state: &str) {
        if let Err(e) = self.socket.send_to_addr(state.as_bytes(), &self.addr) {
            tracing::warn!("notifying the service manager failed: {e}");
        }
    }
}

/// A `STATUS=` line: no newlines inside.
pub fn status(text: &str) -> String {
    format!("STATUS={}", text.replace('\n', " "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_reach_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        let addr = std::os::unix::net::SocketAddr::from_pathname(&path).unwrap();
        let n = Notifier {
            socket: UnixDatagram::unbound().unwrap(),
            addr,
        };
        n.send(&format!("READY=1\n{}", status("mounted\nnow")));
        let mut buf = [0u8; 256];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=mounted now");
    }
}
