//! Smoke test of `cutover::testbed`: two real Dovecot servers, reachable in the ways the
//! daemon will use them (plain, STARTTLS, implicit TLS, master user logins), seeded through
//! `deliver()`, and stopped by PID.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use cutover::testbed::{self, Dovecot, DovecotOptions, Flavor, TestCa, Testbed};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, pki_types::ServerName, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Just enough IMAP to look at a server.
struct Imap<S> {
    io: BufReader<S>,
    tag: u32,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Imap<S> {
    fn new(s: S) -> Self {
        Imap {
            io: BufReader::new(s),
            tag: 0,
        }
    }

    async fn line(&mut self) -> String {
        let mut buf = String::new();
        let n = tokio::time::timeout(IO_TIMEOUT, self.io.read_line(&mut buf))
            .await
            .expect("server answered in time")
            .expect("read from server");
        assert!(n > 0, "server closed the connection");
        buf.trim_end().to_string()
    }

    async fn greeting(&mut self) -> String {
        let g = self.line().await;
        assert!(g.starts_with("* OK"), "greeting: {g}");
        g
    }

    /// Sends a command; returns (untagged lines, tagged status line without the tag).
    async fn cmd(&mut self, command: &str) -> (Vec<String>, String) {
        self.tag += 1;
        let tag = format!("t{}", self.tag);
        let wire = format!("{tag} {command}\r\n");
        tokio::time::timeout(IO_TIMEOUT, async {
            self.io.get_mut().write_all(wire.as_bytes()).await?;
            self.io.get_mut().flush().await
        })
        .await
        .expect("write in time")
        .expect("write to server");
        let mut untagged = Vec::new();
        loop {
            let l = self.line().await;
            if let Some(rest) = l.strip_prefix(&format!("{tag} ")) {
                return (untagged, rest.to_string());
            }
            untagged.push(l);
        }
    }

    async fn ok(&mut self, command: &str) -> Vec<String> {
        let (u, status) = self.cmd(command).await;
        assert!(status.starts_with("OK"), "{command} -> {status}\n{u:#?}");
        u
    }

    fn into_inner(self) -> S {
        self.io.into_inner()
    }
}

async fn plain(port: u16) -> Imap<TcpStream> {
    let s = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(("127.0.0.1", port)))
        .await
        .expect("connect in time")
        .expect("connect");
    Imap::new(s)
}

fn tls_connector(ca: Option<&TestCa>) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    if let Some(ca) = ca {
        let pem = std::fs::read(ca.ca_pem_path()).expect("read CA");
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            roots.add(cert.expect("CA PEM")).expect("add CA");
        }
        assert_eq!(roots.len(), 1);
    }
    let cfg =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    TlsConnector::from(Arc::new(cfg))
}

async fn tls_connect(
    port: u16,
    host: &str,
    ca: Option<&TestCa>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let name = ServerName::try_from(host.to_string()).expect("server name");
    tokio::time::timeout(IO_TIMEOUT, tls_connector(ca).connect(name, tcp))
        .await
        .expect("TLS handshake finished in time")
}

/// `* LIST (attrs) "sep" name` -> (attrs, sep, name)
fn parse_list(line: &str) -> (String, String, String) {
    let rest = line.strip_prefix("* LIST (").expect("LIST line");
    let (attrs, rest) = rest.split_once(") ").expect("attrs");
    let rest = rest.strip_prefix('"').expect("quoted separator");
    let (sep, name) = rest.split_once("\" ").expect("separator");
    let name = name.trim_matches('"').to_string();
    (attrs.to_string(), sep.to_string(), name)
}

async fn list(server: &Dovecot, login: &str, password: &str) -> Vec<(String, String, String)> {
    let mut c = plain(server.plain_port()).await;
    c.greeting().await;
    c.ok(&format!("LOGIN \"{login}\" \"{password}\"")).await;
    let lines = c.ok("LIST \"\" \"*\"").await;
    c.ok("LOGOUT").await;
    lines
        .iter()
        .filter(|l| l.starts_with("* LIST"))
        .map(|l| parse_list(l))
        .collect()
}

fn find<'a>(
    folders: &'a [(String, String, String)],
    name: &str,
) -> Option<&'a (String, String, String)> {
    folders.iter().find(|(_, _, n)| n == name)
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn testbed_smoke() {
    if !testbed::require_dovecot() {
        return;
    }
    let mut tb = tokio::task::spawn_blocking(|| {
        Testbed::start(&[
            ("alice", "pw", "alice@example.test"),
            ("bob", "bobpw", "bob@example.test"),
        ])
    })
    .await
    .unwrap()
    .expect("testbed starts");
    let servers: [(&Dovecot, &str); 2] = [(&tb.source, "alice"), (&tb.dest, "alice@example.test")];

    // All four ports are distinct.
    let mut ports = vec![
        tb.source.plain_port(),
        tb.source.tls_port(),
        tb.dest.plain_port(),
        tb.dest.tls_port(),
    ];
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 4);

    for (server, user) in servers {
        let ctx = format!("{:?}", server.flavor());
        // Plain port: greeting offers STARTTLS, LOGIN works without TLS.
        let mut c = plain(server.plain_port()).await;
        let g = c.greeting().await;
        assert!(g.contains("STARTTLS"), "{ctx}: {g}");
        c.ok(&format!("LOGIN \"{user}\" pw")).await;
        let caps = c.ok("CAPABILITY").await.join(" ");
        for cap in ["CONDSTORE", "QRESYNC", "SPECIAL-USE", "UIDPLUS", "MOVE"] {
            assert!(caps.contains(cap), "{ctx}: no {cap} in {caps}");
        }
        let ns = c.ok("NAMESPACE").await.join(" ");
        let want_ns = match server.flavor() {
            Flavor::Source => "* NAMESPACE ((\"INBOX.\" \".\")) NIL NIL",
            Flavor::Destination => "* NAMESPACE ((\"\" \"/\")) NIL NIL",
        };
        assert_eq!(ns, want_ns, "{ctx}");
        c.ok("LOGOUT").await;

        // Wrong password is refused.
        let mut c = plain(server.plain_port()).await;
        c.greeting().await;
        let (_, st) = c.cmd(&format!("LOGIN \"{user}\" wrong")).await;
        assert!(st.starts_with("NO"), "{ctx}: wrong password -> {st}");

        // Master user, both ways.
        let mut c = plain(server.plain_port()).await;
        c.greeting().await;
        c.ok(&format!("LOGIN \"{user}*master\" masterpw")).await;
        c.ok("SELECT INBOX").await;
        c.ok("LOGOUT").await;
        let mut c = plain(server.plain_port()).await;
        c.greeting().await;
        let sasl = base64::engine::general_purpose::STANDARD.encode(format!(
            "{user}\0{}\0{}",
            testbed::MASTER_USER,
            testbed::MASTER_PASSWORD
        ));
        c.ok(&format!("AUTHENTICATE PLAIN {sasl}")).await;
        c.ok("SELECT INBOX").await;
        c.ok("LOGOUT").await;

        // STARTTLS on the plain port.
        let mut c = plain(server.plain_port()).await;
        c.greeting().await;
        c.ok("STARTTLS").await;
        let tcp = c.into_inner();
        let tls = tls_connector(Some(&tb.ca))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("STARTTLS handshake");
        let mut c = Imap::new(tls);
        c.ok(&format!("LOGIN \"{user}\" pw")).await;
        c.ok("LOGOUT").await;

        // Implicit TLS: works with the test CA, for the IP and for localhost ...
        for host in ["127.0.0.1", "localhost"] {
            let tls = tls_connect(server.tls_port(), host, Some(&tb.ca))
                .await
                .unwrap_or_else(|e| panic!("{ctx}: TLS to {host} with the CA: {e}"));
            let mut c = Imap::new(tls);
            c.greeting().await;
            c.ok(&format!("LOGIN \"{user}\" pw")).await;
            c.ok("LOGOUT").await;
        }
        // ... and is rejected without it.
        let err = tls_connect(server.tls_port(), "127.0.0.1", None)
            .await
            .err()
            .unwrap_or_else(|| panic!("{ctx}: TLS handshake succeeded without the CA"));
        assert!(
            err.to_string().to_lowercase().contains("certificate"),
            "{ctx}: unexpected TLS error {err}"
        );
    }

    // Folder layouts differ the way Courier and Exchange do.
    let src = list(&tb.source, "alice", "pw").await;
    for (_, sep, _) in &src {
        assert_eq!(sep, ".", "{src:?}");
    }
    assert!(find(&src, "INBOX").is_some(), "{src:?}");
    for (name, attr) in [
        ("INBOX.Sent", "\\Sent"),
        ("INBOX.Trash", "\\Trash"),
        ("INBOX.Junk", "\\Junk"),
        ("INBOX.Drafts", "\\Drafts"),
    ] {
        let f = find(&src, name).unwrap_or_else(|| panic!("source has no {name}: {src:?}"));
        assert!(f.0.contains(attr), "source {name}: {f:?}");
    }
    let dst = list(&tb.dest, "alice@example.test", "pw").await;
    for (_, sep, _) in &dst {
        assert_eq!(sep, "/", "{dst:?}");
    }
    assert!(find(&dst, "INBOX").is_some(), "{dst:?}");
    for (name, attr) in [
        ("Sent Items", "\\Sent"),
        ("Deleted Items", "\\Trash"),
        ("Junk Email", "\\Junk"),
        ("Drafts", "\\Drafts"),
        ("Archive", "\\Archive"),
    ] {
        let f = find(&dst, name).unwrap_or_else(|| panic!("destination has no {name}: {dst:?}"));
        assert!(f.0.contains(attr), "destination {name}: {f:?}");
    }
    assert!(find(&dst, "Sent").is_none() && find(&src, "Sent Items").is_none());
    // bob exists on both sides under his own name.
    assert!(find(&list(&tb.source, "bob", "bobpw").await, "INBOX.Sent").is_some());
    assert!(find(
        &list(&tb.dest, "bob@example.test", "bobpw").await,
        "Sent Items"
    )
    .is_some());

    // Seeding through deliver().
    let date_2001 = 981_201_600; // 2001-02-03 12:00:00 UTC
    let msg = |n: u32| {
        format!(
            "From: Carol <carol@example.test>\r\nTo: alice@example.test\r\n\
             Subject: message {n}\r\nMessage-ID: <m{n}@example.test>\r\n\r\nbody {n}\r\n"
        )
    };
    tb.source
        .deliver("alice", "INBOX", msg(1).as_bytes(), &[], None)
        .unwrap();
    tb.source
        .deliver(
            "alice",
            "INBOX",
            msg(2).as_bytes(),
            &["\\Seen", "$Label1"],
            Some(date_2001),
        )
        .unwrap();
    tb.source
        .deliver("alice", "INBOX", msg(3).as_bytes(), &["\\Flagged"], None)
        .unwrap();
    let out = tb
        .source
        .doveadm(&[
            "fetch",
            "-u",
            "alice",
            "uid flags date.received",
            "mailbox",
            "INBOX",
            "all",
        ])
        .unwrap();
    let uids: Vec<&str> = out.lines().filter(|l| l.starts_with("uid: ")).collect();
    assert_eq!(uids, ["uid: 1", "uid: 2", "uid: 3"], "{out}");
    let records: Vec<&str> = out.split("uid: ").skip(1).collect();
    assert!(
        records[1].contains("\\Seen") && records[1].contains("$Label1"),
        "{out}"
    );
    assert!(records[1].contains("date.received: 2001-02-03"), "{out}");
    assert!(
        records[2].contains("\\Flagged") && !records[2].contains("$Label1"),
        "{out}"
    );
    assert!(!records[0].contains("\\Seen"), "{out}");

    // The same over IMAP, as the daemon sees it.
    let mut c = plain(tb.source.plain_port()).await;
    c.greeting().await;
    c.ok("LOGIN \"alice*master\" masterpw").await;
    let sel = c.ok("SELECT INBOX").await.join("\n");
    assert!(sel.contains("* 3 EXISTS"), "{sel}");
    let f = c.ok("UID FETCH 2 (FLAGS INTERNALDATE)").await.join("\n");
    assert!(f.contains("$Label1") && f.contains("\\Seen"), "{f}");
    assert!(f.contains("-Feb-2001"), "{f}");
    c.ok("LOGOUT").await;

    // Folders with UTF-8 names and the destination's '/' hierarchy.
    tb.dest
        .add_folder("alice@example.test", "Projekte/Überblick")
        .unwrap();
    tb.dest
        .deliver(
            "alice@example.test",
            "Projekte/Überblick",
            msg(4).as_bytes(),
            &["\\Answered", "Kunde"],
            Some(date_2001),
        )
        .unwrap();
    tb.dest
        .deliver(
            "alice@example.test",
            "Sent Items",
            msg(5).as_bytes(),
            &["\\Seen"],
            None,
        )
        .unwrap();
    let dst = list(&tb.dest, "alice@example.test", "pw").await;
    assert!(
        find(&dst, "Projekte/&ANw-berblick").is_some(),
        "mUTF-7 name over IMAP: {dst:?}"
    );
    let out = tb
        .dest
        .doveadm(&[
            "fetch",
            "-u",
            "alice@example.test",
            "flags",
            "mailbox",
            "Projekte/Überblick",
            "all",
        ])
        .unwrap();
    assert!(out.contains("\\Answered") && out.contains("Kunde"), "{out}");
    let out = tb
        .dest
        .doveadm(&[
            "mailbox",
            "status",
            "-u",
            "alice@example.test",
            "messages",
            "Sent Items",
        ])
        .unwrap();
    assert!(out.trim().ends_with("messages=1"), "{out}");

    // stop() ends the masters, by PID.
    let pids = [tb.source.pid(), tb.dest.pid()];
    assert!(pids.iter().all(|p| pid_alive(*p)));
    tokio::task::spawn_blocking(move || {
        tb.stop();
        tb
    })
    .await
    .unwrap();
    for pid in pids {
        assert!(!pid_alive(pid), "dovecot {pid} still runs after stop()");
    }
}

/// A single instance through the lower-level API, with many keywords (more than the 26
/// letters a Maildir filename can carry).
#[test]
fn dovecot_many_keywords() {
    if !testbed::require_dovecot() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path()).unwrap();
    let mut d = Dovecot::start(
        DovecotOptions {
            flavor: Flavor::Source,
            users: vec![("carol".into(), "secret".into())],
            master_user: "admin".into(),
            master_password: "adminpw".into(),
        },
        &ca,
    )
    .unwrap();
    let keywords: Vec<String> = (0..30).map(|i| format!("kw{i:02}")).collect();
    let mut flags: Vec<&str> = keywords.iter().map(String::as_str).collect();
    flags.push("\\Seen");
    d.add_folder("carol", "INBOX.Archiv.2019").unwrap();
    for i in 0..3 {
        d.deliver(
            "carol",
            "INBOX.Archiv.2019",
            format!("Subject: {i}\r\n\r\nx\r\n").as_bytes(),
            &flags,
            Some(1_000_000_000 + i),
        )
        .unwrap();
    }
    let out = d
        .doveadm(&[
            "fetch",
            "-u",
            "carol",
            "flags date.received",
            "mailbox",
            "INBOX.Archiv.2019",
            "all",
        ])
        .unwrap();
    let flag_lines: Vec<&str> = out.lines().filter(|l| l.starts_with("flags:")).collect();
    assert_eq!(flag_lines.len(), 3, "{out}");
    for l in flag_lines {
        for kw in &keywords {
            assert!(l.split(' ').any(|w| w == kw), "{kw} missing in {l}");
        }
        assert!(l.contains("\\Seen"), "{l}");
    }
    assert!(out.contains("2001-09-09"), "{out}");
    let pid = d.pid();
    d.stop();
    assert!(!pid_alive(pid));
    assert!(d.log().contains("starting up"), "{}", d.log());
}

/// Messages delivered while a client has the folder selected show up on NOOP, with
/// keywords that were new to the folder in the same second.
#[tokio::test]
async fn deliver_while_selected() {
    if !testbed::require_dovecot() {
        return;
    }
    let tb = tokio::task::spawn_blocking(|| Testbed::start(&[("dora", "pw", "dora@example.test")]))
        .await
        .unwrap()
        .expect("testbed starts");
    for (server, user) in [(&tb.source, "dora"), (&tb.dest, "dora@example.test")] {
        server
            .deliver(user, "INBOX", b"Subject: a\r\n\r\na\r\n", &["first"], None)
            .unwrap();
        let mut c = plain(server.plain_port()).await;
        c.greeting().await;
        c.ok(&format!("LOGIN \"{user}\" pw")).await;
        let sel = c.ok("SELECT INBOX").await.join("\n");
        assert!(sel.contains("* 1 EXISTS"), "{sel}");
        for (i, kw) in ["second", "third", "fourth"].iter().enumerate() {
            server
                .deliver(
                    user,
                    "INBOX",
                    format!("Subject: {kw}\r\n\r\n{kw}\r\n").as_bytes(),
                    &[kw, "\\Seen"],
                    None,
                )
                .unwrap();
            let noop = c.ok("NOOP").await.join("\n");
            assert!(noop.contains(&format!("* {} EXISTS", i + 2)), "{noop}");
            let f = c.ok(&format!("FETCH {} FLAGS", i + 2)).await.join("\n");
            assert!(f.contains(kw) && f.contains("\\Seen"), "{kw}: {f}");
        }
        let f = c.ok("FETCH 1:* FLAGS").await.join("\n");
        assert!(f.contains("first") && f.contains("fourth"), "{f}");
        c.ok("LOGOUT").await;
    }
}
