//! A fleet on one machine: several `cutover run` processes, each with its own spool and
//! shard of one CSV, over one real source and one real destination Dovecot. Every mailbox
//! must be migrated by exactly one of them, and growing the fleet while mail is being
//! copied must copy nothing twice: the new owner of a moved mailbox finds by fingerprint
//! what its old owner already sent.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use cutover::demo::{write_config, DemoTls};
use cutover::fleet::rendezvous::owner;
use cutover::testbed::Testbed;

const MAILBOXES: usize = 40;
const FIRST: usize = 8;
const MORE: usize = 24;

/// One appliance of the fleet: `cutover run` with its own directory (config, spool).
struct Appliance {
    dir: PathBuf,
    child: Option<Child>,
    runs: usize,
}

impl Appliance {
    fn config(&self) -> PathBuf {
        self.dir.join("cutover.toml")
    }

    fn start(&mut self) {
        self.runs += 1;
        let log = self.dir.join(format!("run-{}.log", self.runs));
        let child = Command::new(env!("CARGO_BIN_EXE_cutover"))
            .arg("--config")
            .arg(self.config())
            .arg("run")
            .env("CUTOVER_LOG", "info")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
            .spawn()
            .expect("cutover run starts");
        self.child = Some(child);
    }

    /// SIGTERM by PID, and the exit within 30 s.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let st = Command::new("kill")
            .args(["-s", "TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            if let Some(st) = child.try_wait().unwrap() {
                assert!(st.success(), "{} exited with {st}", self.dir.display());
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("{} did not stop within 30 s of SIGTERM", self.dir.display());
    }

    /// Every log this appliance wrote.
    fn log(&self) -> String {
        let mut s = String::new();
        for run in 1..=self.runs {
            for ext in ["log", "err"] {
                let p = self.dir.join(format!("run-{run}.{ext}"));
                if let Ok(mut f) = std::fs::File::open(&p) {
                    let _ = f.read_to_string(&mut s);
                }
            }
        }
        s
    }

    fn set_shard(&self, shard: &str) {
        let text = std::fs::read_to_string(self.config()).unwrap();
        let start = text.find("shard = \"").unwrap();
        let end = start + text[start..].find('\n').unwrap();
        let text = format!("{}shard = \"{shard}\"{}", &text[..start], &text[end..]);
        std::fs::write(self.config(), text).unwrap();
    }

    /// mailbox -> status, from `cutover status --json` (the running daemon's).
    fn statuses(&self) -> BTreeMap<String, String> {
        let out = cutover(&self.config(), &["status", "--json"]);
        assert!(out.status.success(), "status: {}", stderr(&out));
        let snap: cutover::daemon::report::Snapshot =
            serde_json::from_slice(&out.stdout).expect("status --json");
        snap.mailboxes
            .into_iter()
            .map(|r| (r.mailbox.clone(), r.status.clone()))
            .collect()
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- {} ---\n{}", self.dir.display(), self.log());
        }
    }
}

fn users() -> Vec<(String, String, String)> {
    (0..MAILBOXES)
        .map(|i| {
            (
                format!("user{i:02}"),
                format!("pw-{i:02}"),
                format!("user{i:02}@example.test"),
            )
        })
        .collect()
}

/// Messages `from..to` of a mailbox, half in INBOX and half in INBOX.Work.
fn deliver(tb: &Testbed, login: &str, from: usize, to: usize) {
    for i in from..to {
        let folder = if i % 2 == 0 { "INBOX" } else { "INBOX.Work" };
        let flags: &[&str] = if i % 3 == 0 { &["\\Seen"] } else { &[] };
        tb.source
            .deliver(
                login,
                folder,
                &cutover::demo::sample_message(login, i, folder),
                flags,
                Some(1_650_000_000 + i as i64 * 60),
            )
            .unwrap();
    }
}

/// Messages at the destination, over every mailbox (doveadm).
fn dest_total(tb: &Testbed, users: &[(String, String, String)]) -> usize {
    users
        .iter()
        .map(|(_, _, email)| {
            tb.dest
                .doveadm(&[
                    "-f", "flow", "mailbox", "status", "-u", email, "-t", "messages", "*",
                ])
                .ok()
                .and_then(|o| {
                    o.trim()
                        .trim_start_matches("messages=")
                        .parse::<usize>()
                        .ok()
                })
                .unwrap_or(0)
        })
        .sum()
}

fn wait_for(limit: Duration, what: &str, fleet: &[Appliance], mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    for a in fleet {
        eprintln!("--- {} ---\n{}", a.dir.display(), a.log());
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

/// Every mailbox exactly as at the source, message by message (body, flags, date).
fn verify(rt: &tokio::runtime::Runtime, tb: &Testbed, users: &[(String, String, String)]) {
    for (login, _, email) in users {
        let s = rt.block_on(snapshot(tb, &tb.source, login));
        let d = rt.block_on(snapshot(tb, &tb.dest, email));
        assert_same(&s, &d);
    }
}

/// Each appliance lists exactly the mailboxes of its shard of `n`, all Synced.
fn owners_hold(fleet: &[Appliance], users: &[(String, String, String)], n: u32) -> bool {
    fleet.iter().enumerate().all(|(i, a)| {
        let want: BTreeSet<String> = users
            .iter()
            .map(|u| u.2.clone())
            .filter(|m| owner(m, n) == i as u32)
            .collect();
        let got = a.statuses();
        got.keys().cloned().collect::<BTreeSet<_>>() == want && got.values().all(|s| s == "Synced")
    })
}

#[test]
fn four_shards_then_five_while_running_copy_each_mailbox_once() {
    let users = users();
    let refs: Vec<(&str, &str, &str)> = users
        .iter()
        .map(|(l, p, e)| (l.as_str(), p.as_str(), e.as_str()))
        .collect();
    let Some(tb) = testbed(&refs) else { return };
    let rt = rt();
    for (login, _, _) in &users {
        tb.source.add_folder(login, "INBOX.Work").unwrap();
        deliver(&tb, login, 0, FIRST);
    }
    // The per-mailbox rate keeps each mailbox in flight for seconds, so the fleet can be
    // grown while its mail is being copied.
    let extra = |shard: &str| {
        format!(
            "[sync]\ninterval = \"2s\"\nappend_batch = 2\n\n[web]\nenabled = false\n\n\
             [fleet]\nshard = \"{shard}\"\n"
        )
    };
    let tls = DemoTls {
        source_implicit: true,
        dest_implicit: true,
    };
    let root = work_dir(&tb);
    let mut fleet: Vec<Appliance> = (0..5)
        .map(|i| {
            let dir = root.join(format!("appliance-{i}"));
            write_config(&tb, &dir, &refs, tls, &extra(&format!("{}/4", i.min(3)))).unwrap();
            // The destination's per-mailbox throttle: 2 messages a second.
            let cfg = dir.join("cutover.toml");
            let text = std::fs::read_to_string(&cfg).unwrap();
            let text = text.replacen(
                "[upstream]\n",
                "[upstream]\nmessages_per_second = 2\nburst = 1.0\n",
                1,
            );
            std::fs::write(&cfg, text).unwrap();
            Appliance {
                dir,
                child: None,
                runs: 0,
            }
        })
        .collect();

    // `fleet plan` says in advance what the fleet will do.
    let plan = cutover(
        &fleet[0].config(),
        &["fleet", "plan", "--shards", "4", "--list"],
    );
    assert!(plan.status.success(), "fleet plan: {}", stderr(&plan));
    let plan_text = stdout(&plan);
    for (_, _, email) in &users {
        let line = format!("{}/4 {email}", owner(email, 4));
        assert!(
            plan_text.lines().any(|l| l == line),
            "{line} not in\n{plan_text}"
        );
    }
    // `cutover check` says which shard this is and what it owns.
    let check = cutover(&fleet[1].config(), &["check"]);
    let owned1 = users.iter().filter(|u| owner(&u.2, 4) == 1).count();
    assert!(
        stdout(&check).contains(&format!(
            "fleet: shard 1/4: {owned1} of {MAILBOXES} mailboxes"
        )),
        "{}",
        stdout(&check)
    );

    // Four shards: every mailbox migrated, each by its owner only.
    for a in &mut fleet[..4] {
        a.start();
    }
    let total_first = MAILBOXES * FIRST;
    wait_for(
        Duration::from_secs(240),
        "the first pass of 4 shards",
        &fleet[..4],
        || dest_total(&tb, &users) >= total_first && owners_hold(&fleet[..4], &users, 4),
    );
    verify(&rt, &tb, &users);
    for (i, a) in fleet[..4].iter().enumerate() {
        let mine = users.iter().filter(|u| owner(&u.2, 4) == i as u32).count();
        assert!(mine > 0, "shard {i}/4 owns nothing");
        assert_eq!(a.statuses().len(), mine);
    }

    // New mail everywhere; while it is being copied, the fleet grows to 5.
    for (login, _, _) in &users {
        deliver(&tb, login, FIRST, FIRST + MORE);
    }
    let total = MAILBOXES * (FIRST + MORE);
    wait_for(
        Duration::from_secs(120),
        "the new mail to start arriving",
        &fleet[..4],
        || dest_total(&tb, &users) >= total_first + MORE * 4,
    );
    for a in &mut fleet[..4] {
        a.stop();
    }
    let at_stop = dest_total(&tb, &users);
    assert!(
        at_stop < total,
        "everything was copied before the fleet grew ({at_stop}); the test proves nothing"
    );
    for (i, a) in fleet.iter_mut().enumerate() {
        a.set_shard(&format!("{i}/5"));
        a.start();
    }
    wait_for(
        Duration::from_secs(300),
        "5 shards to finish",
        &fleet,
        || dest_total(&tb, &users) >= total && owners_hold(&fleet, &users, 5),
    );
    // One more interval for anything still on its way: nothing may arrive twice.
    std::thread::sleep(Duration::from_secs(3));
    verify(&rt, &tb, &users);
    assert_eq!(dest_total(&tb, &users), total);

    // The mailboxes that moved are under the new shard, which found their mail already
    // there by fingerprint rather than copying it again.
    let moved: Vec<&String> = users
        .iter()
        .map(|u| &u.2)
        .filter(|m| owner(m, 4) != owner(m, 5))
        .collect();
    assert!(!moved.is_empty());
    for m in &moved {
        assert_eq!(owner(m, 5), 4, "{m} moved between old shards");
    }
    let new_owner = fleet[4].statuses();
    assert_eq!(new_owner.len(), moved.len());
    let log4 = fleet[4].log();
    assert!(
        log4.contains("mailbox new to this shard"),
        "shard 4/5 did not adopt its mailboxes"
    );
    assert!(
        log4.contains("interrupted APPEND found at the destination"),
        "shard 4/5 found nothing at the destination by fingerprint"
    );
    for a in &mut fleet {
        a.stop();
    }
}
