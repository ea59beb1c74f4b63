//! Cyrus IMAP and Courier IMAP as sources (destination: Dovecot shaped like Exchange
//! Online): the shared corpus, rerun and delta, each login mode the server has, and what
//! these servers do differently from Dovecot. The servers come unpacked from Debian's
//! packages (`.ci/legacy-servers.sh`); see `cutover::legacy_servers`.

mod common;
mod legacy_support;

use common::{assert_same, copied, corpus, cutover, rt, stdout};
use cutover::legacy_servers::{Kind, Layout};
use legacy_support::{Bed, Login};

/// Puts the corpus into `user`'s source (a third in INBOX, the rest in Corpus), with
/// flags, keywords and dates in the past. Returns the names the server refused at APPEND,
/// with its words (the comparison then covers what the server holds).
fn seed_corpus(bed: &Bed, user: &str, messages: &[(String, Vec<u8>)]) -> Vec<String> {
    let corpus_folder = bed.source.folder_name(&["Corpus"]);
    let corpus_folder = corpus_folder.as_str();
    bed.source.add_folder(user, corpus_folder).unwrap();
    let mut s = bed.source.user_session(user).unwrap();
    let mut refused = Vec::new();
    for (i, (name, body)) in messages.iter().enumerate() {
        let folder = if i % 3 == 0 { "INBOX" } else { corpus_folder };
        let flags: &[&str] = match i % 4 {
            0 => &["\\Seen"],
            1 => &["\\Seen", "\\Flagged"],
            2 => &["$Label1"],
            _ => &[],
        };
        let date = 1_300_000_000 + i as i64 * 3600;
        let r = match bed.source.kind() {
            // Cyrus refuses bare LF at APPEND; its own delivery (lmtpd) writes CRLF.
            Kind::Cyrus => s.append(folder, &crlf(body), flags, Some(date)),
            // Courier takes a second per APPEND: most messages are delivered into the
            // Maildir as Courier's own delivery would, a few by APPEND (keywords).
            Kind::Courier if i % 4 == 2 && i > 12 => {
                bed.source.write_raw(user, folder, body, "", date)
            }
            Kind::Courier if i % 4 != 2 => {
                let letters = if flags.contains(&"\\Flagged") {
                    "FS"
                } else if flags.is_empty() {
                    ""
                } else {
                    "S"
                };
                bed.source.write_raw(user, folder, body, letters, date)
            }
            Kind::Courier => s.append(folder, body, flags, Some(date)),
        };
        if let Err(e) = r {
            refused.push(format!("{name}: {e}"));
        }
    }
    s.logout();
    if bed.source.kind() == Kind::Courier {
        for folder in ["INBOX", corpus_folder] {
            bed.source.record_uids(user, folder).unwrap();
        }
    }
    if !refused.is_empty() {
        eprintln!(
            "\n*** {} refused {} corpus message(s) at APPEND (not copied, not compared):\n  {}\n",
            bed.source.kind().name(),
            refused.len(),
            refused.join("\n  ")
        );
    }
    refused
}

/// `body` with every bare LF made CRLF.
fn crlf(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 20);
    for (i, b) in body.iter().enumerate() {
        if *b == b'\n' && (i == 0 || body[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(*b);
    }
    out
}

fn corpus_rerun_delta(kind: Kind, layout: Layout) {
    let users = [("alice", "alice-pw", "alice@example.test")];
    let Some(messages) = corpus() else { return };
    let Some(bed) = Bed::start_with(kind, &users, layout) else {
        return;
    };
    let t = std::time::Instant::now();
    let refused = seed_corpus(&bed, "alice", &messages);
    eprintln!("seeded in {:?}", t.elapsed());
    assert!(
        refused.len() < messages.len() / 10,
        "{} refused most of the corpus: {refused:?}",
        kind.name()
    );
    let config = bed.config(Login::User, "");
    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let rt = rt();
    let t = std::time::Instant::now();
    let src = rt.block_on(bed.source_snapshot("alice"));
    eprintln!("source snapshot in {:?}", t.elapsed());
    let held: usize = src.values().map(Vec::len).sum();
    assert_eq!(held, messages.len() - refused.len());
    assert_same(&src, &rt.block_on(bed.dest_snapshot("alice@example.test")));

    // A rerun appends nothing.
    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(copied(&out, "alice@example.test"), 0, "{}", stdout(&out));

    // Delta: 5 new messages and 3 flag changes.
    let mut s = bed.source.user_session("alice").unwrap();
    for i in 0..5 {
        let body = cutover::demo::sample_message("alice", 1000 + i, "delta");
        s.append("INBOX", &body, &[], Some(1_700_000_000 + i as i64))
            .unwrap();
    }
    s.command(&format!("SELECT {}", bed.source.folder_name(&["Corpus"])))
        .unwrap();
    s.command("STORE 1:3 +FLAGS (\\Answered $Done)").unwrap();
    s.logout();
    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(copied(&out, "alice@example.test"), 5, "{}", stdout(&out));
    assert_same(
        &rt.block_on(bed.source_snapshot("alice")),
        &rt.block_on(bed.dest_snapshot("alice@example.test")),
    );
}

#[test]
fn cyrus_corpus_rerun_and_delta() {
    corpus_rerun_delta(Kind::Cyrus, Layout::Standard);
}

/// Cyrus as upstream sets it up by default (`altnamespace`, `unixhierarchysep`): personal
/// folders at the top beside INBOX, `/` as separator.
#[test]
fn cyrus_altnamespace_corpus_rerun_and_delta() {
    corpus_rerun_delta(Kind::Cyrus, Layout::CyrusAlt);
}

#[test]
fn courier_corpus_rerun_and_delta() {
    corpus_rerun_delta(Kind::Courier, Layout::Standard);
}

/// A message with NUL bytes, as Courier serves it from its Maildir.
fn nul_message() -> Vec<u8> {
    b"From: a@example.test\r\nTo: b@example.test\r\nSubject: nul bytes\r\n\
Message-ID: <nul@example.test>\r\nDate: Mon, 1 Jan 2018 10:00:00 +0000\r\n\r\n\
before\0between\0\0after\r\n"
        .to_vec()
}

fn sha(body: &[u8]) -> String {
    use sha2::Digest;
    common::hex(&sha2::Sha256::digest(body))
}

/// Courier serves stored NUL bytes as they are. With BINARY at the destination the message
/// goes unchanged in a literal8; the mailbox completes.
#[test]
fn courier_nul_bytes_carried_by_binary() {
    let users = [("nina", "nina-pw", "nina@example.test")];
    let Some(bed) = Bed::start(Kind::Courier, &users) else {
        return;
    };
    bed.source
        .write_raw("nina", "INBOX", &nul_message(), "S", 1_500_000_000)
        .unwrap();
    bed.source.record_uids("nina", "INBOX").unwrap();
    bed.source
        .append("nina", "INBOX", &common::message("plain"), &[], None)
        .unwrap();
    let rt = rt();
    let mut c = rt.block_on(bed.source_session("nina"));
    let raw = rt.block_on(common::snapshot_session(&mut c, None));
    assert!(
        raw["INBOX"].iter().any(|m| m.sha256 == sha(&nul_message())),
        "Courier serves the NUL bytes as stored: {raw:#?}"
    );
    let src = rt.block_on(bed.source_snapshot("nina"));
    let config = bed.config(Login::User, "");
    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(copied(&out, "nina@example.test"), 2);
    assert!(
        !stdout(&out).contains("altered"),
        "sent as a literal8, not altered by cutover: {}",
        stdout(&out)
    );
    assert_same(&src, &rt.block_on(bed.dest_snapshot("nina@example.test")));
    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "the mailbox completed: {}",
        stdout(&out)
    );
}

/// Dovecot's capabilities without BINARY.
const CAPS_WITHOUT_BINARY: &str = "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT \
     SORT=DISPLAY THREAD=REFERENCES THREAD=REFS THREAD=ORDEREDSUBJECT MULTIAPPEND \
     URL-PARTIAL CATENATE UNSELECT CHILDREN NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 \
     CONDSTORE QRESYNC ESEARCH ESORT SEARCHRES WITHIN CONTEXT=SEARCH LIST-STATUS MOVE \
     SPECIAL-USE LITERAL+";

/// Without BINARY at the destination each NUL is replaced by 0x80, the message is copied
/// and reported as altered with the count; the mailbox completes, and nothing calls it
/// the destination's refusal.
#[test]
fn courier_nul_bytes_replaced_and_reported_without_binary() {
    let users = [("nora", "nora-pw", "nora@example.test")];
    let Some(bed) = Bed::start(Kind::Courier, &users) else {
        return;
    };
    let conf = bed.dest.config_path().to_path_buf();
    let original = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(
        &conf,
        format!("{original}\nimap_capability = {CAPS_WITHOUT_BINARY}\n"),
    )
    .unwrap();
    bed.dest.doveadm(&["reload"]).unwrap();
    let rt = rt();
    let mut offered = true;
    for _ in 0..50 {
        offered = rt.block_on(async {
            let ep = cutover::imap::client::Endpoint {
                host: "127.0.0.1".into(),
                port: bed.dest.tls_port(),
                security: cutover::imap::client::Security::Implicit,
                tls: Some(
                    cutover::imap::transport::TlsSettings::new(Some(bed.ca.ca_pem_path())).unwrap(),
                ),
                timeout: std::time::Duration::from_secs(10),
                max_response_bytes: 1 << 20,
            };
            match cutover::imap::client::Client::connect(&ep).await {
                Ok(c) => c.caps().has("BINARY"),
                Err(_) => true,
            }
        });
        if !offered {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(!offered, "the destination no longer offers BINARY");
    bed.source
        .write_raw("nora", "INBOX", &nul_message(), "", 1_500_000_000)
        .unwrap();
    bed.source.record_uids("nora", "INBOX").unwrap();
    let config = bed.config(Login::User, "");
    let out = cutover(&config, &["sync", "--once"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(copied(&out, "nora@example.test"), 1);
    assert!(
        text.contains("altered: 3 NUL byte(s) replaced by 0x80"),
        "reported as altered with the count: {text}"
    );
    assert!(!text.contains("destination refused"), "{text}");
    let replaced: Vec<u8> = nul_message()
        .into_iter()
        .map(|b| if b == 0 { 0x80 } else { b })
        .collect();
    let dst = rt.block_on(bed.dest_snapshot("nora@example.test"));
    assert_eq!(dst["INBOX"].len(), 1);
    assert_eq!(dst["INBOX"][0].sha256, sha(&replaced));
    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "the mailbox completed: {}",
        stdout(&out)
    );
    assert_eq!(copied(&out, "nora@example.test"), 0);
}

/// A few messages in INBOX and a subfolder of `user`, by APPEND.
fn small_fill(bed: &Bed, user: &str) {
    bed.source.add_folder(user, "INBOX.Work").unwrap();
    let mut s = bed.source.user_session(user).unwrap();
    for i in 0..3 {
        let body = cutover::demo::sample_message(user, i, "login");
        let folder = if i == 0 { "INBOX" } else { "INBOX.Work" };
        s.append(folder, &body, &["\\Seen"], Some(1_600_000_000 + i as i64))
            .unwrap();
    }
    s.logout();
}

/// The admin's way in of each server: Cyrus with an authzid (SASL proxy authorisation),
/// Courier through a userdb alias `user*admin`.
fn admin_login_copies(kind: Kind) {
    let users = [
        ("olga", "olga-pw", "olga@example.test"),
        ("pete", "pete-pw", "pete@example.test"),
    ];
    let Some(bed) = Bed::start(kind, &users) else {
        return;
    };
    small_fill(&bed, "olga");
    small_fill(&bed, "pete");
    let config = bed.config(Login::Admin, "");
    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let rt = rt();
    for (user, _, address) in users {
        assert_eq!(copied(&out, address), 3, "{}", stdout(&out));
        assert_same(
            &rt.block_on(bed.source_snapshot(user)),
            &rt.block_on(bed.dest_snapshot(address)),
        );
    }
}

#[test]
fn cyrus_admin_login_with_authzid() {
    admin_login_copies(Kind::Cyrus);
}

#[test]
fn courier_admin_login_through_userdb_alias() {
    admin_login_copies(Kind::Courier);
}

/// Courier has no SASL proxy authorisation: an authzid login is refused, and reported for
/// each mailbox, not taken for success.
#[test]
fn courier_refuses_authzid_per_mailbox() {
    let users = [("quinn", "quinn-pw", "quinn@example.test")];
    let Some(bed) = Bed::start(Kind::Courier, &users) else {
        return;
    };
    small_fill(&bed, "quinn");
    let config = bed.config(Login::Authzid, "");
    let out = cutover(&config, &["sync", "--once"]);
    assert_ne!(out.status.code(), Some(0), "{}", stdout(&out));
    let text = stdout(&out);
    let row = text
        .lines()
        .find(|l| l.starts_with("quinn@example.test"))
        .unwrap_or_else(|| panic!("no row for the mailbox: {text}"));
    assert!(!row.contains(" ok"), "{row}");
    let dst = rt().block_on(bed.dest_snapshot("quinn@example.test"));
    assert_eq!(dst.values().map(Vec::len).sum::<usize>(), 0);
}

/// One folder the destination will not create (a name component longer than its file
/// system takes; Cyrus keeps folders by id, so it has it) is reported with the server's
/// words, and the other folders, INBOX included, are copied.
#[test]
fn cyrus_folder_the_destination_refuses_does_not_stop_the_others() {
    let users = [("rita", "rita-pw", "rita@example.test")];
    let Some(bed) = Bed::start(Kind::Cyrus, &users) else {
        return;
    };
    let long = format!("INBOX.{}", "x".repeat(300));
    bed.source.add_folder("rita", &long).unwrap();
    bed.source.add_folder("rita", "INBOX.Zeta").unwrap();
    let mut s = bed.source.user_session("rita").unwrap();
    for (i, folder) in ["INBOX", long.as_str(), "INBOX.Zeta"].iter().enumerate() {
        let body = cutover::demo::sample_message("rita", i, "create");
        s.append(folder, &body, &[], Some(1_600_000_000 + i as i64))
            .unwrap();
    }
    s.logout();
    let config = bed.config(Login::User, "");
    let out = cutover(&config, &["sync", "--once"]);
    let text = stdout(&out);
    assert_ne!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("refused to create"), "{text}");
    let dst = rt().block_on(bed.dest_snapshot("rita@example.test"));
    assert_eq!(dst.get("INBOX").map(Vec::len), Some(1), "{dst:#?}");
    assert_eq!(dst.get("Zeta").map(Vec::len), Some(1), "{dst:#?}");
}

/// Cyrus lists other users' folders a user may read (`user.bob.Team`) beside the user's
/// own: only the personal namespace is copied.
#[test]
fn cyrus_other_users_folders_are_not_copied() {
    let users = [
        ("sara", "sara-pw", "sara@example.test"),
        ("tom", "tom-pw", "tom@example.test"),
    ];
    let Some(bed) = Bed::start(Kind::Cyrus, &users) else {
        return;
    };
    bed.source.add_folder("tom", "INBOX.Team").unwrap();
    let mut s = bed.source.user_session("tom").unwrap();
    s.append("INBOX.Team", &common::message("team"), &[], None)
        .unwrap();
    s.command("SETACL INBOX.Team sara lrs").unwrap();
    s.logout();
    bed.source
        .append("sara", "INBOX", &common::message("own"), &[], None)
        .unwrap();
    let mut s = bed.source.user_session("sara").unwrap();
    let listed = s.command("LIST \"\" \"*\"").unwrap();
    s.logout();
    assert!(
        listed.iter().any(|l| l.contains("user.tom.Team")),
        "sara sees tom's folder: {listed:?}"
    );
    let config = bed.config(Login::User, "[sync]\nexclude_folders = []\n");
    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let dst = rt().block_on(bed.dest_snapshot("sara@example.test"));
    let names: Vec<&String> = dst
        .iter()
        .filter(|(_, m)| !m.is_empty())
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["INBOX"], "{dst:#?}");
}

/// Names of the destination folders of `address` that hold messages.
fn filled(bed: &Bed, address: &str) -> Vec<String> {
    rt().block_on(bed.dest_snapshot(address))
        .into_iter()
        .filter(|(_, m)| !m.is_empty())
        .map(|(n, _)| n)
        .collect()
}

/// Cyrus with `altnamespace`: the personal namespace has no prefix, so only NAMESPACE's
/// other prefixes (`Other Users/`, `Shared Folders/`) tell another user's folder and a
/// shared one from the user's own. Neither is copied by default; `[sync]
/// other_namespaces = true` copies both, under their source names.
#[test]
fn cyrus_altnamespace_other_users_and_shared_folders_only_when_asked() {
    let users = [
        ("sara", "sara-pw", "sara@example.test"),
        ("tom", "tom-pw", "tom@example.test"),
    ];
    let Some(bed) = Bed::start_with(Kind::Cyrus, &users, Layout::CyrusAlt) else {
        return;
    };
    bed.source.add_folder("tom", "Team").unwrap();
    let mut s = bed.source.user_session("tom").unwrap();
    s.append("Team", &common::message("team"), &[], None)
        .unwrap();
    s.command("SETACL Team sara lrs").unwrap();
    s.logout();
    // A shared folder, made by the admin and readable by everyone.
    let mut admin = bed
        .source
        .session(
            cutover::legacy_servers::ADMIN_USER,
            cutover::legacy_servers::ADMIN_PASSWORD,
        )
        .unwrap();
    admin.command("CREATE Announcements").unwrap();
    admin
        .command(&format!(
            "SETACL Announcements {} lrswipkxtecda",
            cutover::legacy_servers::ADMIN_USER
        ))
        .unwrap();
    admin.command("SETACL Announcements anyone lrs").unwrap();
    admin
        .append("Announcements", &common::message("news"), &[], None)
        .unwrap();
    admin.logout();
    bed.source.add_folder("sara", "Work").unwrap();
    bed.source.add_folder("sara", "Work/Deep").unwrap();
    let mut s = bed.source.user_session("sara").unwrap();
    s.append("INBOX", &common::message("own"), &[], None)
        .unwrap();
    s.append("Work", &common::message("work"), &[], None)
        .unwrap();
    s.append("Work/Deep", &common::message("deep"), &[], None)
        .unwrap();
    let ns = s.command("NAMESPACE").unwrap();
    let listed = s.command("LIST \"\" \"*\"").unwrap();
    s.logout();
    assert!(
        ns.iter().any(|l| l.contains("Other Users/")),
        "altnamespace is on: {ns:?}"
    );
    for want in ["Other Users/tom/Team", "Shared Folders/Announcements"] {
        assert!(
            listed.iter().any(|l| l.contains(want)),
            "sara sees {want}: {listed:?}"
        );
    }

    let config = bed.config(Login::User, "[sync]\nexclude_folders = []\n");
    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(copied(&out, "sara@example.test"), 3, "{}", stdout(&out));
    assert_eq!(
        filled(&bed, "sara@example.test"),
        ["INBOX", "Work", "Work/Deep"]
    );

    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace(
            "exclude_folders = []\n",
            "exclude_folders = []\nother_namespaces = true\n",
        ),
    )
    .unwrap();
    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(copied(&out, "sara@example.test"), 2, "{}", stdout(&out));
    assert_eq!(
        filled(&bed, "sara@example.test"),
        [
            "INBOX",
            "Other Users/tom/Team",
            "Shared Folders/Announcements",
            "Work",
            "Work/Deep"
        ]
    );
    // Tom's own copy of his folder is his: the personal one.
    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(filled(&bed, "tom@example.test").contains(&"Team".to_string()));
}

/// Courier's log (`syslog`, relative to its working directory) is written in the
/// instance's own directory, never in the checkout the tests run in.
#[test]
fn courier_writes_its_log_into_its_own_directory() {
    let users = [("uma", "uma-pw", "uma@example.test")];
    let checkout_log = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("syslog");
    let before = std::fs::metadata(&checkout_log).ok().map(|m| m.len());
    let Some(bed) = Bed::start(Kind::Courier, &users) else {
        return;
    };
    // A refused and an accepted login: both are logged.
    assert!(bed.source.session("uma", "wrong").is_err());
    small_fill(&bed, "uma");
    let config = bed.config(Login::User, "");
    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let after = std::fs::metadata(&checkout_log).ok().map(|m| m.len());
    assert_eq!(before, after, "{} was written", checkout_log.display());
    let logged = std::fs::read_to_string(bed.source.dir().join("syslog")).unwrap_or_default();
    assert!(
        logged.contains("LOGIN FAILED"),
        "the log is kept in the instance: {logged:?}\n{}",
        bed.source.log()
    );
}
