//! The status page with a password: `cutover web-password`, HTTPS, the login form and its
//! session cookie, HTTP Basic, and everything refused without them. Against a daemon
//! migrating between real Dovecot servers; the password must appear in no response.

mod common;
mod web_support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use web_support::*;

const WEB_PW: &str = "page-S3cret-passw0rd";

fn web_password(config: &std::path::Path, input: &str) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .arg("--config")
        .arg(config)
        .arg("web-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn login_session_basic_auth_and_https() {
    let users = [("alice", "alice-pw-2", "alice@example.test")];
    let Some(tb) = testbed(&users) else { return };
    fill(&tb, "alice", "INBOX", 5, |_| vec![]);
    let port = cutover::testbed::free_port();
    let pw_file = work_dir(&tb).join("web-password");
    let config = demo_config(
        &tb,
        &users,
        &format!(
            "[sync]\ninterval = \"1h\"\n\n[web]\nlisten = \"127.0.0.1:{port}\"\n\
             password_file = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            pw_file.display(),
            tb.ca.server_cert_path().display(),
            tb.ca.server_key_path().display()
        ),
    );

    // `cutover web-password` writes an argon2 hash, private, and never the password.
    let short = web_password(&config, "short\n");
    assert!(!short.status.success());
    let out = web_password(&config, &format!("{WEB_PW}\n"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stored = std::fs::read_to_string(&pw_file).unwrap();
    assert!(stored.starts_with("$argon2id$"), "{stored}");
    assert!(!stored.contains(WEB_PW));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&pw_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "{mode:o}");

    let mut d = Daemon::start(&config);
    let mut c = Client::new(port);
    c.tls = Some(tls_trusting(tb.ca.ca_pem_path()));
    wait_until(&d, Duration::from_secs(20), "the page answers", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    wait_until(
        &d,
        Duration::from_secs(30),
        "the certificate's fingerprint in the log",
        || d.log().contains("status page certificate"),
    );
    assert!(d.log().contains("https://127.0.0.1"), "{}", d.log());

    // Plain HTTP gets nowhere (the TLS handshake fails, nothing is served).
    let plain = Client::new(port);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // The server may close at once, before the request is even written.
    let _ = write!(
        s,
        "GET /api/status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    );
    let mut buf = Vec::new();
    let _ = std::io::Read::read_to_end(&mut s, &mut buf);
    assert!(
        !String::from_utf8_lossy(&buf).contains("phase"),
        "served over plain HTTP"
    );
    drop(plain);

    // Without a session: the page sends to the login form; the API, the metrics, the
    // event stream, the downloads and the controls answer 401.
    assert_eq!(c.get("/healthz").status, 200);
    let root = c.get("/");
    assert_eq!(root.status, 303);
    assert_eq!(root.header("location"), Some("/login"));
    let login_page = c.get("/login");
    assert_eq!(login_page.status, 200);
    assert!(login_page.text().contains("type=\"password\""));
    for path in [
        "/api/status",
        "/api/mailboxes",
        "/api/events",
        "/api/report.csv",
        "/metrics",
        "/app.js",
    ] {
        assert_eq!(c.get(path).status, 401, "{path}");
    }
    assert!(c
        .get("/metrics")
        .header("www-authenticate")
        .unwrap()
        .contains("Basic"));
    let control = c.raw(
        &format!(
            "POST /api/controls/pause HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
             Origin: https://127.0.0.1:{port}\r\nContent-Type: application/json"
        ),
        b"{}",
    );
    assert_eq!(control.status, 401, "{}", control.text());

    // A wrong password: back to the form, and the next try must wait.
    let form = |c: &Client, pw: &str| {
        c.raw(
            &format!(
                "POST /login HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: https://127.0.0.1:{port}\r\n\
                 Content-Type: application/x-www-form-urlencoded"
            ),
            format!("password={pw}").as_bytes(),
        )
    };
    let wrong = form(&c, "guess");
    assert_eq!(wrong.status, 303);
    assert_eq!(wrong.header("location"), Some("/login?wrong"));
    assert!(wrong.header("set-cookie").is_none());
    let hurried = form(&c, WEB_PW);
    assert_eq!(
        hurried.header("location"),
        Some("/login?wait"),
        "too soon after a wrong one"
    );
    assert!(c.get("/login?wrong").text().contains("Wrong password"));
    std::thread::sleep(Duration::from_millis(1100));

    // The right one: a session cookie, HttpOnly, SameSite=Strict, Secure.
    let ok = form(&c, WEB_PW);
    assert_eq!(ok.status, 303, "{}", ok.text());
    assert_eq!(ok.header("location"), Some("/"));
    let cookie = ok.header("set-cookie").unwrap().to_string();
    for attr in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    let session = cookie.split(';').next().unwrap().to_string();
    let with = |path: &str| {
        c.raw(
            &format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nCookie: {session}"),
            b"",
        )
    };
    let st = with("/api/status");
    assert_eq!(st.status, 200, "{}", st.text());
    assert_eq!(st.json()["login"], true);
    assert_eq!(with("/").status, 200);
    wait_until(&d, Duration::from_secs(30), "alice Synced", || {
        with("/api/mailboxes")
            .text()
            .contains("\"status\":\"Synced\"")
    });
    // A forged cookie is nothing.
    let forged = c.raw(
        &format!(
            "GET /api/status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nCookie: cutover_session=AAAA"
        ),
        b"",
    );
    assert_eq!(forged.status, 401);

    // Controls need the session and the page's own origin.
    let post = |origin: &str, cookie: &str| {
        c.raw(
            &format!(
                "POST /api/controls/sync-now HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: {origin}\r\n\
                 Content-Type: application/json\r\nCookie: {cookie}"
            ),
            b"{}",
        )
    };
    assert_eq!(
        post(&format!("https://127.0.0.1:{port}"), &session).status,
        202
    );
    assert_eq!(post("https://evil.example", &session).status, 403);
    assert_eq!(
        post(&format!("http://127.0.0.1:{port}"), &session).status,
        403
    );
    assert_eq!(
        post(&format!("https://127.0.0.1:{port}"), "cutover_session=AAAA").status,
        401
    );

    // HTTP Basic, for Prometheus and scripts.
    use base64::Engine;
    let basic = |pw: &str| {
        let b = base64::engine::general_purpose::STANDARD.encode(format!("prometheus:{pw}"));
        c.raw(
            &format!("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Basic {b}"),
            b"",
        )
    };
    let m = basic(WEB_PW);
    assert_eq!(m.status, 200);
    assert!(
        m.text().contains("cutover_messages_appended_total 5"),
        "{}",
        m.text()
    );
    assert_eq!(basic("nope").status, 401);

    // Logging out ends the session.
    let out = c.raw(
        &format!(
            "POST /logout HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: https://127.0.0.1:{port}\r\n\
             Content-Type: application/json\r\nCookie: {session}"
        ),
        b"{}",
    );
    assert_eq!(out.status, 200);
    assert!(out.header("set-cookie").unwrap().contains("Max-Age=0"));
    assert_eq!(with("/api/status").status, 401);

    d.stop();
    let seen = String::from_utf8_lossy(&c.seen.lock().unwrap()).into_owned();
    assert!(seen.len() > 2_000);
    for secret in [WEB_PW, "alice-pw-2", cutover::testbed::MASTER_PASSWORD] {
        assert!(!seen.contains(secret), "a secret reached a response");
    }
    assert!(!d.log().contains(WEB_PW), "the password is not logged");
}

/// Beyond loopback without a password: refused at start, naming the key.
#[test]
fn listening_beyond_loopback_needs_a_password() {
    let users = [("zed", "zed-pw", "zed@example.test")];
    let Some(tb) = testbed(&users) else { return };
    let config = demo_config(&tb, &users, "[web]\nlisten = \"0.0.0.0:18080\"\n");
    let out = cutover(&config, &["run"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("web.listen") && err.contains("password_file"),
        "{err}"
    );
}
