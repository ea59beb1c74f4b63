//! `sd_notify`: tells systemd (Type=notify) that the daemon is ready, what it is doing,
//! and that it is alive.
//!
//! The protocol is one datagram of `KEY=value` lines to the unix socket named by
//! `$NOTIFY_SOCKET` (a path, or an abstract name when it starts with `@`). That is all of
//! it, so it is written here instead of pulling in a crate. Without `$NOTIFY_SOCKET` (not
//! under systemd) every call does nothing.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// A handle to systemd's notification socket, or nothing when not under systemd.
pub struct Notifier {
    socket: Option<(UnixDatagram, String)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET` and `$WATCHDOG_USEC` (honoured only if `$WATCHDOG_PID` is
    /// unset or ours, as sd_watchdog_enabled does).
    pub fn from_env() -> Notifier {
        let socket = std::env::var("NOTIFY_SOCKET")
            .ok()
            .filter(|s| !s.is_empty())
            .and_then(|path| match UnixDatagram::unbound() {
                Ok(s) => Some((s, path)),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot create a socket for sd_notify");
                    None
                }
            });
        let pid_ok = std::env::var("WATCHDOG_PID")
            .map(|p| p.trim() == std::process::id().to_string())
            .unwrap_or(true);
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|u| *u > 0 && pid_ok)
            .map(Duration::from_micros);
        Notifier { socket, watchdog }
    }

    /// How often to send `WATCHDOG=1`: half the watchdog timeout, as systemd advises.
    pub fn watchdog_every(&self) -> Option<Duration> {
        self.watchdog.map(|w| w / 2)
    }

    /// Sends `state` (e.g. `"READY=1\nSTATUS=..."`). Failures are logged once per call and
    /// otherwise ignored: a lost notification must not stop the migration.
    pub fn send(&self, state: &str) {
        let Some((sock, path)) = &self.socket else {
            return;
        };
        let r = if let Some(name) = path.strip_prefix('@') {
            abstract_send(sock, name.as_bytes(), state.as_bytes())
        } else {
            sock.send_to(state.as_bytes(), path).map(|_| ())
        };
        if let Err(e) = r {
            tracing::warn!(socket = %path, error = %e, "sd_notify failed");
        }
    }

    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={status}"));
    }

    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping");
    }
}

#[cfg(target_os = "linux")]
fn abstract_send(sock: &UnixDatagram, name: &[u8], msg: &[u8]) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    sock.send_to_addr(msg, &addr).map(|_| ())
}

#[cfg(not(target_os = "linux"))]
fn abstract_send(_: &UnixDatagram, _: &[u8], _: &[u8]) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "abstract sockets exist only on Linux",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier {
            socket: Some((UnixDatagram::unbound().unwrap(), path.display().to_string())),
            watchdog: Some(Duration::from_secs(10)),
        };
        n.ready("3 mailboxes");
        let mut buf = [0u8; 256];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=3 mailboxes");
        assert_eq!(n.watchdog_every(), Some(Duration::from_secs(5)));
        // Not under systemd: nothing happens.
        Notifier {
            socket: None,
            watchdog: None,
        }
        .ready("x");
    }
}
