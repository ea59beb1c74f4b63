//! `cutover demo`: a whole migration on this machine, with nothing but Dovecot installed.
//!
//! Starts a legacy-style source and an Exchange-style destination ([`crate::testbed`]),
//! fills the source with sample mailboxes (and the shared test corpus when it is present)
//! and writes a config and a mailbox CSV. Then:
//!
//! - `demo` ([`live`]): the daemon with its status page, the destination behind a proxy
//!   that throttles now and then, a paced rate so that the numbers visibly move, and a
//!   message delivered once everything is Synced, carried by the next delta pass; until
//!   Ctrl-C;
//! - `demo --once` ([`run`]): `sync --once` twice: the first pass copies everything,
//!   the second shows that nothing is copied again.

pub mod live;
/// The fault-injecting IMAP proxy of the test suite, which the live demo puts in front
/// of the destination to show a throttle and its recovery.
#[path = "../../tests/common/proxy.rs"]
pub mod proxy;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;

use crate::engine::{summary_table, Engine};
use crate::testbed::{Testbed, MASTER_PASSWORD, MASTER_USER};

/// How the generated config reaches the two servers.
#[derive(Debug, Clone, Copy)]
pub struct DemoTls {
    /// Source over implicit TLS (else STARTTLS).
    pub source_implicit: bool,
    /// Destination over implicit TLS (else STARTTLS).
    pub dest_implicit: bool,
}

/// Writes `cutover.toml` and `mailboxes.csv` into `dir` for a testbed: the source logs in
/// with each user's own password from the CSV, the destination as the master user with a
/// SASL PLAIN authorisation identity (how an admin account reaches every mailbox).
/// `extra` is appended to the TOML (e.g. a `[sync]` section). Without a `[web]` section
/// in `extra`, the status page listens on a port the kernel chooses (its address is in
/// `<spool>/web.address`): daemons of tests running side by side would otherwise all
/// want 127.0.0.1:8080.
pub fn write_config(
    tb: &Testbed,
    dir: &Path,
    users: &[(&str, &str, &str)],
    tls: DemoTls,
    extra: &str,
) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let mut csv = String::from("EmailAddress,UserName,Password\n");
    for (login, pw, email) in users {
        csv.push_str(&format!("{email},{login},{pw}\n"));
    }
    std::fs::write(dir.join("mailboxes.csv"), csv)?;
    let web = if extra.contains("[web]") {
        ""
    } else {
        "\n[web]\nlisten = \"127.0.0.1:0\"\n"
    };
    let side = |port_tls: u16, port_plain: u16, implicit: bool| {
        if implicit {
            format!("port = {port_tls}\ntls = \"implicit\"")
        } else {
            format!("port = {port_plain}\ntls = \"starttls\"")
        }
    };
    let toml = format!(
        r#"mailboxes = "mailboxes.csv"

[spool]
path = "spool"

[source]
host = "127.0.0.1"
{src}
tls_ca_file = "{ca}"
auth = "login"
max_connections = 4

[upstream]
host = "127.0.0.1"
{dst}
tls_ca_file = "{ca}"
auth = "plain"
admin_user = "{mu}"
admin_password = "{mp}"
admin_login = "authzid"
max_connections = 4

{extra}
{web}"#,
        src = side(
            tb.source.tls_port(),
            tb.source.plain_port(),
            tls.source_implicit
        ),
        dst = side(tb.dest.tls_port(), tb.dest.plain_port(), tls.dest_implicit),
        ca = tb.ca.ca_pem_path().display(),
        mu = MASTER_USER,
        mp = MASTER_PASSWORD,
    );
    let path = dir.join("cutover.toml");
    std::fs::write(&path, toml)?;
    Ok(path)
}

/// The shared corpus of real-world messages, if this machine has it.
pub fn corpus_dir() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("CUTOVER_CORPUS") {
        let p = PathBuf::from(p);
        return p.is_dir().then_some(p);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    [
        manifest.join("../shared/corpus"),
        PathBuf::from("../shared/corpus"),
    ]
    .into_iter()
    .find(|p| p.is_dir())
}

/// The corpus messages (name, bytes), in name order.
pub fn corpus_messages(dir: &Path) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".eml") {
            out.push((name, std::fs::read(e.path())?));
        }
    }
    out.sort();
    Ok(out)
}

/// A plausible small message.
pub fn sample_message(user: &str, n: usize, subject: &str) -> Vec<u8> {
    format!(
        "From: Colleague {n} <colleague{n}@legacy.example>\r\nTo: {user}@example.test\r\n\
         Subject: {subject} #{n}\r\nDate: Mon, 3 Feb 2025 10:{m:02}:00 +0100\r\n\
         Message-ID: <demo-{user}-{n}@legacy.example>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\nHello {user},\r\n\r\nthis is message {n}.\r\n",
        m = n % 60
    )
    .into_bytes()
}

pub const DEMO_USERS: [(&str, &str, &str); 3] = [
    ("alice", "alice-pw", "alice@example.test"),
    ("bob", "bob-pw", "bob@example.test"),
    ("carol", "carol-pw", "carol@example.test"),
];

/// Fills the demo users' source mailboxes: a few folders each (with flags and an
/// umlaut in a name), `extra_inbox` more INBOX messages each, and the shared corpus in
/// alice's INBOX when this machine has it.
pub fn fill_source(tb: &Testbed, extra_inbox: usize) -> anyhow::Result<()> {
    let src = &tb.source;
    let flavor = src.flavor();
    for (i, (login, _, _)) in DEMO_USERS.iter().enumerate() {
        for (components, count) in [
            (vec!["Work"], 5),
            (vec!["Work", "Projects"], 4),
            (vec!["Entwürfe alt"], 2),
            (vec!["Sent"], 3),
        ] {
            let name = flavor.folder_name(&components);
            if components != ["Sent"] {
                src.add_folder(login, &name)?;
            }
            for n in 0..count {
                let flags: &[&str] = if n % 2 == 0 {
                    &["\\Seen"]
                } else {
                    &["\\Flagged", "$Label1"]
                };
                src.deliver(
                    login,
                    &name,
                    &sample_message(login, n, &components.join("/")),
                    flags,
                    Some(1_700_000_000 + (i * 1000 + n) as i64),
                )?;
            }
        }
        for n in 0..10 + extra_inbox {
            src.deliver(
                login,
                "INBOX",
                &sample_message(login, 100 + n, "Inbox"),
                &[],
                Some(1_710_000_000 + n as i64),
            )?;
        }
    }
    if let Some(dir) = corpus_dir() {
        let msgs = corpus_messages(&dir)?;
        println!(
            "adding {} real-world messages from {} to alice's INBOX",
            msgs.len(),
            dir.display()
        );
        for (_, body) in msgs {
            src.deliver("alice", "INBOX", &body, &[], None)?;
        }
    }
    Ok(())
}

/// `demo --once`; true if the migration finished cleanly.
pub async fn run(keep: bool) -> anyhow::Result<bool> {
    println!("starting a source and a destination Dovecot on 127.0.0.1 ...");
    let tb = tokio::task::spawn_blocking(|| Testbed::start(&DEMO_USERS)).await??;
    fill_source(&tb, 0)?;
    let work = tb.dir.path().join("demo");
    let config = write_config(
        &tb,
        &work,
        &DEMO_USERS,
        DemoTls {
            source_implicit: true,
            dest_implicit: false,
        },
        "",
    )?;
    println!("config: {}\n", config.display());
    let cfg = crate::config::Config::load(&config)?;
    let accounts = crate::accounts::load(&cfg.mailboxes)?;
    let engine = Arc::new(Engine::new(cfg)?);
    println!("first pass (copies everything):");
    let rows = engine.sync_once(&accounts.accounts).await;
    print!("{}", summary_table(&rows));
    println!("\nsecond pass (nothing changed, nothing copied):");
    let rows2 = engine.sync_once(&accounts.accounts).await;
    print!("{}", summary_table(&rows2));
    println!("\ndestination folders of alice@example.test:");
    print!(
        "{}",
        tb.dest
            .doveadm(&[
                "mailbox",
                "status",
                "-u",
                "alice@example.test",
                "messages",
                "*"
            ])
            .unwrap_or_default()
    );
    let ok = rows.iter().chain(&rows2).all(|r| r.ok());
    if keep {
        println!("\nservers keep running (source imaps 127.0.0.1:{}, destination 127.0.0.1:{}); Ctrl-C to stop", tb.source.tls_port(), tb.dest.plain_port());
        let _ = tokio::signal::ctrl_c().await;
    }
    drop(engine);
    tokio::task::spawn_blocking(move || drop(tb)).await?;
    Ok(ok)
}
