//! How messages are written to the destination, against real Dovecot servers with the real
//! binary: one MULTIAPPEND command per batch where the server offers it, one APPEND per
//! message where it does not (or `multiappend = false`), a MULTIAPPEND refused as a whole
//! sent again message by message, and synchronizing literals without LITERAL+.

mod common;

use std::path::Path;

use common::*;
use cutover::testbed::Testbed;
use sha2::Digest;

/// Appends `extra` to the destination's Dovecot config, reloads it, and waits until new
/// sessions offer `capability` (which `extra` must add), so the new settings are in force.
fn reconfigure_dest(tb: &Testbed, user: &str, extra: &str, capability: &str) {
    let conf = tb.dest.config_path().to_path_buf();
    let original = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(&conf, format!("{original}\n{extra}\n")).unwrap();
    tb.dest.doveadm(&["reload"]).unwrap();
    assert!(
        capability_becomes(tb, &rt(), user, capability, true),
        "the destination offers {capability} after the reload"
    );
}

/// Dovecot's quota plugin, whose IMAP part adds the QUOTA capability (what
/// [`reconfigure_dest`] waits for); `max_mail` refuses bigger messages.
fn quota_conf(max_mail: &str) -> String {
    format!(
        "mail_plugins = $mail_plugins quota\n\
         protocol imap {{\n  mail_plugins = $mail_plugins imap_quota\n}}\n\
         plugin {{\n  quota = count:User quota\n  quota_vsizes = yes\n  \
         quota_max_mail_size = {max_mail}\n}}"
    )
}

/// The APPEND commands the destination received from `user` (Dovecot's rawlog of every
/// session) and the messages they carried (their literals).
fn appends_received(rawlog: &Path, user: &str) -> (usize, usize) {
    let (mut commands, mut messages) = (0, 0);
    for entry in std::fs::read_dir(rawlog.join(user)).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "in") {
            let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
            for line in text.split("\r\n") {
                // Dovecot puts a timestamp before what each read brought.
                let mut words = line.split(' ').peekable();
                if words
                    .peek()
                    .is_some_and(|w| w.contains('.') && w.parse::<f64>().is_ok())
                {
                    words.next();
                }
                if words
                    .nth(1)
                    .is_some_and(|w| w.eq_ignore_ascii_case("APPEND"))
                {
                    commands += 1;
                }
                if line.ends_with("+}")
                    && line.rsplit_once('{').is_some_and(|(_, n)| {
                        n.trim_end_matches("+}").chars().all(|c| c.is_ascii_digit())
                    })
                {
                    messages += 1;
                }
            }
        }
    }
    (commands, messages)
}

/// Where the destination offers MULTIAPPEND, a batch goes out as one command and arrives
/// whole; `multiappend = false` sends one APPEND per message. Both copy every message as
/// it is, with its flags and date.
#[test]
fn batches_go_out_as_one_multiappend_command() {
    let users = [
        ("olga", "olga-pw", "olga@example.test"),
        ("pia", "pia-pw", "pia@example.test"),
    ];
    let Some(tb) = testbed(&users) else { return };
    for (user, _, _) in &users {
        fill(&tb, user, "INBOX", 12, |i| {
            if i % 2 == 0 {
                vec!["\\Seen"]
            } else {
                vec!["\\Flagged", "$Label1"]
            }
        });
        fill(&tb, user, "INBOX.Work", 5, |_| vec![]);
    }
    let rawlog = tb.dir.path().join("rawlog");
    for (_, _, email) in &users {
        let dir = rawlog.join(email);
        std::fs::create_dir_all(&dir).unwrap();
        // Written by the session's own process, which runs as the mail user.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    reconfigure_dest(
        &tb,
        "olga@example.test",
        &format!("rawlog_dir = {}/%u\n{}", rawlog.display(), quota_conf("0")),
        "QUOTA",
    );
    let rt = rt();
    // Copies `user` with `config` and checks that everything arrived as it is.
    let copy = |config: &Path, (login, _, email): (&str, &str, &str)| {
        let out = cutover(config, &["sync", "--once"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert_eq!(copied(&out, email), 17);
        let src = rt.block_on(snapshot(&tb, &tb.source, login));
        let dst = rt.block_on(snapshot(&tb, &tb.dest, email));
        assert_same(&src, &dst);
    };

    copy(&demo_config(&tb, &users[..1], ""), users[0]);
    let (commands, messages) = appends_received(&rawlog, "olga@example.test");
    assert_eq!(messages, 17, "every message went out once");
    assert!(commands > 0, "APPEND commands are recognised in the rawlog");
    assert!(
        commands < messages,
        "{messages} messages in {commands} APPEND commands: some carried several"
    );

    let config = demo_config(&tb, &users[1..], "");
    let toml = std::fs::read_to_string(&config).unwrap();
    assert!(toml.contains("[upstream]\n"));
    std::fs::write(
        &config,
        toml.replace("[upstream]\n", "[upstream]\nmultiappend = false\n"),
    )
    .unwrap();
    copy(&config, users[1]);
    assert_eq!(
        appends_received(&rawlog, "pia@example.test"),
        (17, 17),
        "one APPEND per message"
    );
}

/// A MULTIAPPEND is all or nothing: when the destination refuses one because of a single
/// message (here one over its size limit), the others are sent again one APPEND each and
/// arrive, exactly once; only the one at fault is reported, with its UID and the server's
/// words, and a rerun still adds nothing twice.
#[test]
fn a_multiappend_refused_as_a_whole_is_sent_one_by_one() {
    let users = [("quinn", "quinn-pw", "quinn@example.test")];
    let Some(tb) = testbed(&users) else { return };
    let big = {
        let mut m = b"From: a@example.test\r\nSubject: too big\r\n\r\n".to_vec();
        for i in 0..600 {
            m.extend_from_slice(format!("line {i:04} of a message over the limit\r\n").as_bytes());
        }
        m
    };
    for i in 0..7 {
        let body = if i == 3 {
            big.clone()
        } else {
            cutover::demo::sample_message("quinn", i, "INBOX")
        };
        assert!(i == 3 || body.len() < 16 * 1024);
        tb.source
            .deliver(
                "quinn",
                "INBOX",
                &body,
                &["\\Seen"],
                Some(1_600_000_000 + i as i64 * 60),
            )
            .unwrap();
    }
    assert!(big.len() > 20 * 1024);
    reconfigure_dest(&tb, "quinn@example.test", &quota_conf("20k"), "QUOTA");
    let rt = rt();
    let config = demo_config(&tb, &users, "");

    let out = cutover(&config, &["sync", "--once"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "one message failed: {err}");
    assert!(
        err.contains("refused a MULTIAPPEND of 7 messages as a whole"),
        "{err}"
    );
    assert!(
        err.contains("UID 4") && err.contains("larger than the maximum size allowed"),
        "the message at fault is named, with the server's words: {err}"
    );
    assert_eq!(copied(&out, "quinn@example.test"), 6);
    let mut src = rt.block_on(snapshot(&tb, &tb.source, "quinn"));
    let big_sha = hex(&sha2::Sha256::digest(&big));
    let inbox = src.get_mut("INBOX").unwrap();
    assert_eq!(inbox.len(), 7);
    inbox.retain(|m| m.sha256 != big_sha);
    assert_eq!(inbox.len(), 6);
    let dst = rt.block_on(snapshot(&tb, &tb.dest, "quinn@example.test"));
    assert_same(&src, &dst);

    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(copied(&out, "quinn@example.test"), 0);
    let again = rt.block_on(snapshot(&tb, &tb.dest, "quinn@example.test"));
    assert_eq!(again, dst, "nothing arrives twice");
}
/// A destination without LITERAL+ (Dovecot then offers LITERAL-, which cutover does not
/// use) gets every APPEND's message after its go-ahead (a synchronizing literal), and
/// every message arrives as it is, exactly once.
#[test]
fn destination_without_literal_plus_gets_every_message() {
    let users = [("nora", "nora-pw", "nora@example.test")];
    let Some(tb) = testbed(&users) else { return };
    fill(&tb, "nora", "INBOX", 12, |i| {
        if i % 2 == 0 {
            vec!["\\Seen"]
        } else {
            vec!["\\Flagged", "$Label1"]
        }
    });
    fill(&tb, "nora", "INBOX.Work", 5, |_| vec![]);
    let conf = tb.dest.config_path().to_path_buf();
    let original = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(&conf, format!("{original}\nimap_literal_minus = yes\n")).unwrap();
    tb.dest.doveadm(&["reload"]).unwrap();
    let rt = rt();
    assert!(
        capability_becomes(&tb, &rt, "nora@example.test", "LITERAL+", false),
        "the destination no longer offers LITERAL+"
    );
    let config = demo_config(&tb, &users, "");
    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(copied(&out, "nora@example.test"), 17);
    let src = rt.block_on(snapshot(&tb, &tb.source, "nora"));
    let dst = rt.block_on(snapshot(&tb, &tb.dest, "nora@example.test"));
    assert_same(&src, &dst);
    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(
        copied(&out, "nora@example.test"),
        0,
        "a second run copies nothing"
    );
}
