//! The IMAP client against real Dovecot servers (`cutover::testbed`) behind middleboxes
//! that misbehave the way networks do.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cutover::imap::client::{Client, Endpoint, Security};
use cutover::imap::transport::TlsSettings;
use cutover::imap::ImapError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// When a [`SilentBox`] stops relaying.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Silence {
    /// From the first byte: it takes the connection and never says anything.
    Always,
    /// Once the server has answered the client's STARTTLS: the TLS handshake goes
    /// nowhere.
    AfterStartTls,
}

/// A TCP relay on 127.0.0.1 to a real server that goes silent (keeps both connections
/// open, relays nothing more), as a broken middlebox does.
struct SilentBox {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SilentBox {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SilentBox {
    async fn start(target: u16, silence: Silence) -> SilentBox {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            // Bounded: a test makes one or two connections.
            for _ in 0..4 {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
                    return;
                };
                tokio::spawn(relay(client, server, silence));
            }
        });
        SilentBox { port, task }
    }
}

/// Relays until `silence` says stop, then holds both connections without a word until
/// the other side gives up.
async fn relay(client: TcpStream, server: TcpStream, silence: Silence) {
    let (mut c_in, mut c_out) = client.into_split();
    let (mut s_in, mut s_out) = server.into_split();
    let asked = Arc::new(AtomicBool::new(false));
    let silent = Arc::new(AtomicBool::new(silence == Silence::Always));
    let up = {
        let (asked, silent) = (asked.clone(), silent.clone());
        async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match c_in.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if silent.load(Ordering::SeqCst) {
                    continue;
                }
                if buf[..n]
                    .windows(8)
                    .any(|w| w.eq_ignore_ascii_case(b"STARTTLS"))
                {
                    asked.store(true, Ordering::SeqCst);
                }
                if s_out.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    };
    let down = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match s_in.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if silent.load(Ordering::SeqCst) {
                continue;
            }
            // The server's answer to STARTTLS is the last thing relayed.
            let answered = asked.load(Ordering::SeqCst)
                && buf[..n].windows(4).any(|w| w.eq_ignore_ascii_case(b" OK "));
            if c_out.write_all(&buf[..n]).await.is_err() {
                return;
            }
            if answered {
                silent.store(true, Ordering::SeqCst);
            }
        }
    };
    tokio::join!(up, down);
}

fn endpoint(port: u16, security: Security, tls: TlsSettings) -> Endpoint {
    Endpoint {
        host: "127.0.0.1".into(),
        port,
        security,
        tls: Some(tls),
        timeout: Duration::from_millis(700),
        max_response_bytes: 1 << 20,
    }
}

/// A middlebox that goes silent before or during the TLS handshake does not hold the
/// session: the handshake is bounded by the endpoint's timeout, and the error names the
/// host and what stalled. Without the box the same endpoints connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_middlebox_during_the_tls_handshake() {
    let Some(tb) = common::testbed(&[("alice", "alice-pw", "alice@example.test")]) else {
        return;
    };
    let tls = TlsSettings::new(Some(tb.ca.ca_pem_path())).expect("CA loads");
    let cases = [
        (tb.source.tls_port(), Security::Implicit, Silence::Always),
        (
            tb.source.plain_port(),
            Security::StartTls,
            Silence::AfterStartTls,
        ),
    ];
    for (port, security, silence) in cases {
        // Through the real server directly: fine.
        let c = Client::connect(&endpoint(port, security, tls.clone()))
            .await
            .expect("connects without the middlebox");
        assert!(c.is_tls());
        c.logout().await;

        let mbox = SilentBox::start(port, silence).await;
        let started = Instant::now();
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            Client::connect(&endpoint(mbox.port, security, tls.clone())),
        )
        .await
        .expect("the client gives up by itself");
        let took = started.elapsed();
        let e = match r {
            Ok(_) => panic!("{security:?}: connected through a silent middlebox"),
            Err(e) => e,
        };
        assert!(
            matches!(&e, ImapError::HandshakeTimeout { host, .. } if host == "127.0.0.1"),
            "{security:?}: {e:?}"
        );
        let text = e.to_string();
        assert!(
            text.contains("TLS handshake") && text.contains("127.0.0.1"),
            "{text}"
        );
        assert!(e.is_transient(), "{security:?}: worth a retry later");
        assert!(took < Duration::from_secs(5), "{security:?}: took {took:?}");
    }
}
