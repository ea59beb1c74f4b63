//! Source servers that answer FETCH in ways Dovecot does not, and destination refusals
//! that pass, each through the fault proxy in front of a real Dovecot: no message may be
//! lost, copied twice, or left unnamed.

mod common;
#[path = "common/proxy.rs"]
mod proxy;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use cutover::spool::{MessageState, Spool};
use proxy::{Action, Options, Proxy};

/// One item of a FETCH response: its name (`UID`, `BODY[]`...) and its value as sent
/// (for a literal: `{n}\r\n` and the bytes).
type Item = (Vec<u8>, Vec<u8>);

/// The message number and items of a whole `* n FETCH (...)` response; None for any
/// other response.
fn fetch_items(resp: &[u8]) -> Option<(u32, Vec<Item>)> {
    let rest = resp.strip_prefix(b"* ")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let seq: u32 = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    let mut at = rest[digits..].strip_prefix(b" FETCH (")?;
    let mut items = Vec::new();
    loop {
        if let Some(end) = at.strip_prefix(b")") {
            return (end == b"\r\n").then_some((seq, items));
        }
        at = at.strip_prefix(b" ").unwrap_or(at);
        let (name, after) = atom(at)?;
        let after = after.strip_prefix(b" ")?;
        let (value, after) = value(after)?;
        items.push((name.to_vec(), value.to_vec()));
        at = after;
    }
}

/// An item name: up to a space, with `[...]` kept whole.
fn atom(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut i = 0;
    let mut depth = 0;
    while i < b.len() {
        match b[i] {
            b'[' => depth += 1,
            b']' => depth -= 1,
            b' ' | b')' if depth == 0 => break,
            _ => {}
        }
        i += 1;
    }
    (i > 0).then(|| b.split_at(i))
}

/// One value: a quoted string, a parenthesised list, a literal, or an atom.
fn value(b: &[u8]) -> Option<(&[u8], &[u8])> {
    match *b.first()? {
        b'"' => {
            let mut i = 1;
            while i < b.len() {
                match b[i] {
                    b'\\' => i += 2,
                    b'"' => return Some(b.split_at(i + 1)),
                    _ => i += 1,
                }
            }
            None
        }
        b'(' => {
            let mut depth = 0;
            for (i, c) in b.iter().enumerate() {
                match c {
                    b'(' => depth += 1,
                    b')' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(b.split_at(i + 1));
                        }
                    }
                    _ => {}
                }
            }
            None
        }
        b'{' => {
            let close = b.iter().position(|c| *c == b'}')?;
            let n: usize = std::str::from_utf8(&b[1..close]).ok()?.parse().ok()?;
            let end = close + 3 + n;
            (b.get(close + 1..close + 3)? == b"\r\n" && b.len() >= end).then(|| b.split_at(end))
        }
        _ => atom(b),
    }
}

fn fetch_response(seq: u32, items: &[&Item]) -> Vec<u8> {
    let mut out = format!("* {seq} FETCH (").into_bytes();
    for (i, (name, value)) in items.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        out.extend_from_slice(name);
        out.push(b' ');
        out.extend_from_slice(value);
    }
    out.extend_from_slice(b")\r\n");
    out
}

fn item<'a>(items: &'a [Item], name: &[u8]) -> Option<&'a Item> {
    items.iter().find(|(n, _)| n.eq_ignore_ascii_case(name))
}

fn uid_of(items: &[Item]) -> Option<u32> {
    std::str::from_utf8(&item(items, b"UID")?.1)
        .ok()?
        .parse()
        .ok()
}

/// The parser above reads what Dovecot sends and writes it back unchanged.
#[test]
fn fetch_items_round_trip() {
    let wire = b"* 3 FETCH (UID 7 FLAGS (\\Seen $x) INTERNALDATE \"01-Jan-2020 00:00:00 +0000\" \
BODY[] {5}\r\nab)\"c RFC822.SIZE 5)\r\n";
    let (seq, items) = fetch_items(wire).unwrap();
    assert_eq!(seq, 3);
    let names: Vec<&[u8]> = items.iter().map(|(n, _)| n.as_slice()).collect();
    assert_eq!(
        names,
        [
            &b"UID"[..],
            b"FLAGS",
            b"INTERNALDATE",
            b"BODY[]",
            b"RFC822.SIZE"
        ]
    );
    assert_eq!(item(&items, b"BODY[]").unwrap().1, b"{5}\r\nab)\"c");
    let all: Vec<&Item> = items.iter().collect();
    assert_eq!(fetch_response(seq, &all), wire.to_vec());
    assert!(fetch_items(b"* 3 EXISTS\r\n").is_none());
}

/// A server that splits one message's items over several FETCH responses (the body in
/// one, its date and flags in the next) and repeats its flags: every message is copied
/// once with its date and flags, and a second pass copies nothing again.
#[test]
fn split_and_repeated_fetch_responses_copy_each_message_once() {
    let users = [("ivo", "ivo-pw", "ivo@example.test")];
    let Some(tb) = testbed(&users) else { return };
    fill(&tb, "ivo", "INBOX", 12, |i| {
        if i % 3 == 0 {
            vec!["\\Seen"]
        } else {
            vec![]
        }
    });
    fill(&tb, "ivo", "INBOX.Work", 7, |_| vec!["\\Flagged"]);
    let rt = rt();
    let split: proxy::Respond = Arc::new(|resp: Vec<u8>| {
        let Some((seq, items)) = fetch_items(&resp) else {
            return vec![resp];
        };
        let Some(uid) = item(&items, b"UID") else {
            return vec![resp];
        };
        let lead = item(&items, b"BODY[]").or_else(|| item(&items, b"FLAGS"));
        let Some(lead) = lead else {
            return vec![resp];
        };
        let rest: Vec<&Item> = std::iter::once(uid)
            .chain(items.iter().filter(|i| i.0 != b"UID" && *i != lead))
            .collect();
        let mut out = vec![
            fetch_response(seq, &[uid, lead]),
            fetch_response(seq, &rest),
        ];
        if let Some(flags) = item(&items, b"FLAGS") {
            out.push(fetch_response(seq, &[uid, flags]));
        }
        out
    });
    let proxy = rt.block_on(Proxy::start_with(
        tb.source.plain_port(),
        Options::forward_all().respond(split),
    ));
    let config = demo_config(&tb, &users, "");
    source_via(&config, proxy.port());
    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(copied(&out, "ivo@example.test"), 19);
    let again = cutover(&config, &["sync", "--once"]);
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert_eq!(copied(&again, "ivo@example.test"), 0, "{}", stdout(&again));
    let s = rt.block_on(snapshot(&tb, &tb.source, "ivo"));
    let d = rt.block_on(snapshot(&tb, &tb.dest, "ivo@example.test"));
    assert_same(&s, &d);
}

/// A FETCH response the decoder refuses (an INTERNALDATE no calendar has) is named by
/// folder and UID, the mailbox does not pass as finished, and the message is copied
/// once the server answers properly.
#[test]
fn an_unreadable_fetch_response_is_named_and_copied_later() {
    let users = [("jan", "jan-pw", "jan@example.test")];
    let Some(tb) = testbed(&users) else { return };
    fill(&tb, "jan", "INBOX", 6, |_| vec![]);
    let rt = rt();
    let broken = Arc::new(AtomicBool::new(true));
    let on = broken.clone();
    let odd: proxy::Respond = Arc::new(move |resp: Vec<u8>| {
        let Some((seq, items)) = fetch_items(&resp) else {
            return vec![resp];
        };
        if !on.load(Ordering::SeqCst) || uid_of(&items) != Some(4) {
            return vec![resp];
        }
        let bad: Item = (
            b"INTERNALDATE".to_vec(),
            b"\"31-Foo-2020 25:61:00 +0000\"".to_vec(),
        );
        let items: Vec<&Item> = items
            .iter()
            .map(|i| if i.0 == b"INTERNALDATE" { &bad } else { i })
            .collect();
        vec![fetch_response(seq, &items)]
    });
    let proxy = rt.block_on(Proxy::start_with(
        tb.source.plain_port(),
        Options::forward_all().respond(odd),
    ));
    let config = demo_config(&tb, &users, "");
    source_via(&config, proxy.port());
    let out = cutover(&config, &["sync", "--once"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "not finished:\n{err}");
    assert!(
        err.contains("\"INBOX\" UID 4") && err.contains("could not be read"),
        "the message is named:\n{err}"
    );
    assert_eq!(copied(&out, "jan@example.test"), 5);
    broken.store(false, Ordering::SeqCst);
    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(copied(&out, "jan@example.test"), 1);
    let s = rt.block_on(snapshot(&tb, &tb.source, "jan"));
    let d = rt.block_on(snapshot(&tb, &tb.dest, "jan@example.test"));
    assert_same(&s, &d);
}

/// RFC822.SIZE is only an estimate on some servers (Exchange's own IMAP among them): a
/// body three times its announced size, in every folder, is copied whole, and one folder's
/// surprise does not disturb the next.
#[test]
fn bodies_larger_than_their_rfc822_size_are_copied_whole() {
    let users = [("kim", "kim-pw", "kim@example.test")];
    let Some(tb) = testbed(&users) else { return };
    fill(&tb, "kim", "INBOX", 9, |_| vec![]);
    fill(&tb, "kim", "INBOX.Archive", 5, |_| vec!["\\Seen"]);
    if let Some(corpus) = corpus() {
        tb.source.add_folder("kim", "INBOX.Corpus").unwrap();
        for (_, body) in corpus.iter().take(40) {
            tb.source
                .deliver("kim", "INBOX.Corpus", body, &[], Some(1_500_000_000))
                .unwrap();
        }
    }
    let rt = rt();
    let proxy = rt.block_on(Proxy::start_with(
        tb.source.plain_port(),
        Options::forward_all().respond(shrinking_sizes()),
    ));
    let config = demo_config(&tb, &users, "");
    source_via(&config, proxy.port());
    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let s = rt.block_on(snapshot(&tb, &tb.source, "kim"));
    let d = rt.block_on(snapshot(&tb, &tb.dest, "kim@example.test"));
    assert_same(&s, &d);
}

/// A proxy that announces every message at a third of its size.
fn shrinking_sizes() -> proxy::Respond {
    Arc::new(|resp: Vec<u8>| {
        let Some((seq, items)) = fetch_items(&resp) else {
            return vec![resp];
        };
        let Some((_, size)) = item(&items, b"RFC822.SIZE") else {
            return vec![resp];
        };
        let n: u64 = String::from_utf8_lossy(size).parse().unwrap_or(0);
        let small: Item = (b"RFC822.SIZE".to_vec(), (n / 3).to_string().into_bytes());
        let items: Vec<&Item> = items
            .iter()
            .map(|i| if i.0 == b"RFC822.SIZE" { &small } else { i })
            .collect();
        vec![fetch_response(seq, &items)]
    })
}

/// A message over max_message_bytes that the server announced as smaller is skipped and
/// named with its real size when its body comes, whether the client still took it in
/// (under the response limit) or had to drop it off the wire (over it); the session goes
/// on, and the folders after it are copied whole.
#[test]
fn a_body_over_the_limit_though_announced_smaller_is_skipped_and_named() {
    let users = [("ole", "ole-pw", "ole@example.test")];
    let Some(tb) = testbed(&users) else { return };
    tb.source.add_folder("ole", "INBOX.Big").unwrap();
    for (i, kb) in [1_500usize, 2_600].iter().enumerate() {
        let mut body =
            format!("From: a@example.test\r\nSubject: big {i}\r\nMessage-ID: <big{i}@x>\r\n\r\n")
                .into_bytes();
        while body.len() < kb * 1024 {
            body.extend_from_slice(
                b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\r\n",
            );
        }
        tb.source
            .deliver("ole", "INBOX.Big", &body, &[], Some(1_600_000_000))
            .unwrap();
    }
    fill(&tb, "ole", "INBOX.Big", 3, |_| vec![]);
    fill(&tb, "ole", "INBOX.Later", 4, |_| vec!["\\Seen"]);
    let rt = rt();
    let proxy = rt.block_on(Proxy::start_with(
        tb.source.plain_port(),
        Options::forward_all().respond(shrinking_sizes()),
    ));
    let config = demo_config(&tb, &users, "[sync]\nmax_message_bytes = 1000000\n");
    source_via(&config, proxy.port());
    let out = cutover(&config, &["sync", "--once"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    for subject in ["big 0", "big 1"] {
        assert!(
            err.lines().any(|l| l.contains("over max_message_bytes")
                && l.contains("announced")
                && (subject == "big 1" || l.contains(subject))),
            "{subject} named:\n{err}"
        );
    }
    let s = rt.block_on(snapshot(&tb, &tb.source, "ole"));
    let d = rt.block_on(snapshot(&tb, &tb.dest, "ole@example.test"));
    assert_eq!(d["Big"].len(), 3, "the two big ones skipped");
    assert!(d["Big"].iter().all(|m| s["INBOX.Big"].contains(m)));
    assert_eq!(d["Later"], s["INBOX.Later"]);
    assert_eq!(d["INBOX"], s["INBOX"]);
    let again = cutover(&config, &["sync", "--once"]);
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert_eq!(copied(&again, "ole@example.test"), 0);
}

/// A refusal that may pass (`[OVERQUOTA]`) fails only its message, keeps the server's
/// code, waits out its backoff, and goes at once when the admin asks for it; a permanent
/// one (`[CANNOT]`) is skipped and reported, never retried.
#[test]
fn a_quota_refusal_is_retried_and_a_permanent_one_skipped() {
    let users = [("lea", "lea-pw", "lea@example.test")];
    let Some(tb) = testbed(&users) else { return };
    fill(&tb, "lea", "INBOX", 8, |_| vec![]);
    let rt = rt();
    let schedule: proxy::Schedule = Arc::new(|_: &str, n: u64| match n {
        2 => Action::RefuseNo("[OVERQUOTA] Mailbox is full"),
        5 => Action::RefuseNo("[CANNOT] This message cannot be stored"),
        _ => Action::Forward,
    });
    let proxy = rt.block_on(Proxy::start(tb.dest.plain_port(), schedule));
    let config = demo_config(&tb, &users, "");
    upstream_via(&config, proxy.port());
    let failed = || {
        let spool = Spool::open(&work_dir(&tb).join("spool")).unwrap();
        let uv = spool.generations("lea@example.test", "INBOX").unwrap()[0];
        spool
            .messages("lea@example.test", "INBOX", uv)
            .unwrap()
            .into_iter()
            .map(|r| r.state)
            .filter(|s| {
                matches!(
                    s,
                    MessageState::Failed { .. } | MessageState::Skipped { .. }
                )
            })
            .collect::<Vec<_>>()
    };

    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(copied(&out, "lea@example.test"), 6);
    let states = failed();
    assert_eq!(states.len(), 2, "{states:?}");
    assert!(
        states.iter().any(|s| matches!(s,
            MessageState::Failed { code: Some(c), attempts: 1, retry_after, .. }
                if c == "OVERQUOTA" && *retry_after > 0)),
        "{states:?}"
    );
    assert!(
        states
            .iter()
            .any(|s| matches!(s, MessageState::Skipped { reason } if reason.contains("CANNOT"))),
        "{states:?}"
    );
    let report = stdout(&cutover(&config, &["report", "--csv"]));
    assert!(
        report.contains("OVERQUOTA") && report.contains("next try"),
        "{report}"
    );

    // Within its backoff, a pass leaves it waiting.
    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(copied(&out, "lea@example.test"), 0);

    let retry = cutover(&config, &["retry-errors", "--mailbox", "lea@example.test"]);
    assert_eq!(retry.status.code(), Some(0), "{}", stderr(&retry));
    assert!(
        stdout(&retry).contains("1 failed message"),
        "{}",
        stdout(&retry)
    );
    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(copied(&out, "lea@example.test"), 1);

    // Everything but the message the destination cannot store, once each.
    let s = rt.block_on(snapshot(&tb, &tb.source, "lea"));
    let d = rt.block_on(snapshot(&tb, &tb.dest, "lea@example.test"));
    let src = &s["INBOX"];
    let dst = &d["INBOX"];
    assert_eq!(dst.len(), 7);
    assert!(dst.iter().all(|m| src.contains(m)));
    let mut unique = dst.clone();
    unique.dedup();
    assert_eq!(unique.len(), dst.len(), "no message twice");
}

/// `retry-errors` against a testbed that never failed anything says so.
#[test]
fn retry_errors_with_nothing_failed() {
    let users = [("max", "max-pw", "max@example.test")];
    let Some(tb) = testbed(&users) else { return };
    fill(&tb, "max", "INBOX", 2, |_| vec![]);
    let config = demo_config(&tb, &users, "");
    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let retry = cutover(&config, &["retry-errors"]);
    assert_eq!(retry.status.code(), Some(0), "{}", stderr(&retry));
    assert!(
        stdout(&retry).contains("0 failed messages"),
        "{}",
        stdout(&retry)
    );
    let bad = cutover(
        &config,
        &["retry-errors", "--mailbox", "nobody@example.test"],
    );
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
}

/// Rewrites `from` (a folder name as Dovecot sends it: an atom, or inside quotes) into
/// `to` in every LIST response: a source that sends that name otherwise.
fn list_name(from: &'static [u8], to: &'static [u8]) -> proxy::Respond {
    Arc::new(move |resp: Vec<u8>| {
        if resp.starts_with(b"* LIST ") {
            if let Some(i) = resp.windows(from.len()).position(|w| w == from) {
                let mut out = resp[..i].to_vec();
                out.extend_from_slice(to);
                out.extend_from_slice(&resp[i + from.len()..]);
                return vec![out];
            }
        }
        vec![resp]
    })
}

/// A source that sends a folder name in raw UTF-8, not modified UTF-7 (as some servers
/// do; imap-codec refuses such a LIST line): the folder is read by the bytes the server
/// sent, copied under that name, and the admin gets a notice. The proxy stands for such a
/// server: it renames the folder in LIST, and takes only the raw name back (Dovecot itself
/// refuses it), so the folder is read only if cutover names it by the bytes it was given,
/// not by an encoding of them.
#[test]
fn a_folder_listed_in_raw_utf8_is_read_by_its_bytes_and_copied_with_a_notice() {
    let users = [("lea", "lea-pw", "lea@example.test")];
    let Some(tb) = testbed(&users) else { return };
    fill(&tb, "lea", "INBOX", 2, |_| vec![]);
    fill(&tb, "lea", "INBOX.Entwürfe", 1, |_| vec![]);
    fill(&tb, "lea", "INBOX.Work", 1, |_| vec![]);
    let rt = rt();
    let proxy = rt.block_on(Proxy::start_with(
        tb.source.plain_port(),
        Options::forward_all()
            .respond(list_name(
                b"INBOX.Entw&APw-rfe",
                "\"INBOX.Entwürfe\"".as_bytes(),
            ))
            .rename("INBOX.Entwürfe".as_bytes(), b"INBOX.Entw&APw-rfe"),
    ));
    let config = demo_config(&tb, &users, "");
    source_via(&config, proxy.port());
    let out = cutover(&config, &["sync", "--once"]);
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert_eq!(copied(&out, "lea@example.test"), 4, "{all}");
    let s = rt.block_on(snapshot(&tb, &tb.source, "lea"));
    let d = rt.block_on(snapshot(&tb, &tb.dest, "lea@example.test"));
    assert_same(&s, &d);
    let report = stdout(&cutover(&config, &["report", "--csv"]));
    assert!(
        report.contains("not named in modified UTF-7"),
        "a notice: {report}"
    );
    let out = cutover(&config, &["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(copied(&out, "lea@example.test"), 0);
}

/// A LIST line whose name is neither modified UTF-7 nor UTF-8 (Latin-1 bytes) cannot be
/// named by cutover at all: the folder must not drop out of the migration unnoticed. The
/// pass names it by its bytes and does not pass as finished; the other folders are copied.
#[test]
fn a_folder_listed_in_raw_latin1_is_named_and_the_pass_is_not_finished() {
    let users = [("mia", "mia-pw", "mia@example.test")];
    let Some(tb) = testbed(&users) else { return };
    fill(&tb, "mia", "INBOX", 2, |_| vec![]);
    fill(&tb, "mia", "INBOX.Entwürfe", 1, |_| vec![]);
    fill(&tb, "mia", "INBOX.Work", 1, |_| vec![]);
    let rt = rt();
    let proxy = rt.block_on(Proxy::start_with(
        tb.source.plain_port(),
        Options::forward_all().respond(list_name(b"INBOX.Entw&APw-rfe", b"\"INBOX.Entw\xfcrfe\"")),
    ));
    let config = demo_config(&tb, &users, "");
    source_via(&config, proxy.port());
    let out = cutover(&config, &["sync", "--once"]);
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(1), "not finished:\n{all}");
    assert!(
        all.contains("cannot be read") && all.contains("Entw\\xfcrfe"),
        "the folder is named by its bytes:\n{all}"
    );
    assert_eq!(copied(&out, "mia@example.test"), 3, "{all}");
    let d = rt.block_on(snapshot(&tb, &tb.dest, "mia@example.test"));
    assert_eq!(d.get("INBOX").map(Vec::len), Some(2), "{d:#?}");
    assert_eq!(d.get("Work").map(Vec::len), Some(1), "{d:#?}");
    let snap: serde_json::Value =
        serde_json::from_slice(&cutover(&config, &["status", "--json"]).stdout).unwrap();
    let row = &snap["mailboxes"][0];
    assert_eq!(row["status"], "Failed", "{row}");
}
