//! `cutover demo`: the daemon and its page on a local migration, through the throttling
//! proxy, a message delivered during the demo carried as a delta, and Ctrl-C (SIGINT)
//! stopping everything the demo started.

mod common;
mod web_support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use web_support::Client;

/// The PIDs of every process below `pid`.
fn descendants(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so read after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|s| s.parse().ok()) {
            parents.push((p, ppid));
        }
    }
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for (c, pp) in &parents {
            if *pp == p && !out.contains(c) {
                out.push(*c);
                todo.push(*c);
            }
        }
    }
    out
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            // A zombie has exited; its parent has not reaped it yet.
            !s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// The demo process; on a failed assertion it gets SIGINT (and SIGKILL if that is not
/// enough) so that its servers do not outlive the test.
struct Demo(std::process::Child);

impl Drop for Demo {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-s", "INT", &self.0.id().to_string()])
                .status();
            let end = Instant::now() + Duration::from_secs(30);
            while Instant::now() < end && matches!(self.0.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn demo_serves_the_page_carries_a_delta_and_ctrl_c_stops_everything() {
    if !cutover::testbed::require_dovecot() {
        return;
    }
    let port = cutover::testbed::free_port();
    let mut demo = Demo(
        Command::new(env!("CARGO_BIN_EXE_cutover"))
            .args([
                "demo",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--rate",
                "25",
            ])
            .env("CUTOVER_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("cutover demo starts"),
    );
    let child = &mut demo.0;
    let pid = child.id();
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            eprintln!("demo: {line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen: Vec<String> = Vec::new();
    let mut wait_line = |what: &str, limit: Duration| -> String {
        let end = Instant::now() + limit;
        loop {
            if let Some(l) = seen.iter().find(|l| l.contains(what)) {
                return l.clone();
            }
            let left = end.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) => seen.push(l),
                Err(_) => {
                    let _ = Command::new("kill")
                        .args(["-s", "KILL", &pid.to_string()])
                        .status();
                    panic!(
                        "no line with {what:?} within {limit:?}; got:\n{}",
                        seen.join("\n")
                    );
                }
            }
        }
    };
    let servers = wait_line("source Dovecot pid", Duration::from_secs(120));
    let dovecots: Vec<u32> = servers
        .split("pid ")
        .skip(1)
        .filter_map(|s| s.split_whitespace().next()?.parse().ok())
        .collect();
    assert_eq!(dovecots.len(), 2, "{servers}");
    let page = wait_line("status page: ", Duration::from_secs(60));
    assert!(
        page.contains(&format!("http://127.0.0.1:{port}/")),
        "{page}"
    );
    let api = Client::new(port);
    let status = api.get("/api/status");
    assert_eq!(status.status, 200);
    assert_eq!(status.json()["mailboxes"], 3);
    wait_line("every mailbox is Synced", Duration::from_secs(240));
    // The proxy throttled now and then, and the daemon recovered from it.
    let throttled = api.get("/api/status").json()["throttling"]["throttled_total"]
        .as_u64()
        .unwrap();
    assert!(throttled >= 1, "no throttle during the demo");
    let before = api.get("/api/mailboxes?q=alice").json()["rows"][0]["items_synced"]
        .as_u64()
        .unwrap();
    wait_line("carried as a delta", Duration::from_secs(120));
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let after = api.get("/api/mailboxes?q=alice").json()["rows"][0]["items_synced"]
            .as_u64()
            .unwrap();
        if after == before + 1 {
            break;
        }
        assert!(Instant::now() < end, "alice's count {before} -> {after}");
        std::thread::sleep(Duration::from_millis(500));
    }

    // Everything the demo started is below it: the two Dovecot masters and their
    // children. Ctrl-C stops them all and the demo exits cleanly.
    let started = descendants(pid);
    for d in &dovecots {
        assert!(started.contains(d), "dovecot {d} not among {started:?}");
    }
    let _ = Command::new("kill")
        .args(["-s", "INT", &pid.to_string()])
        .status();
    let end = Instant::now() + Duration::from_secs(60);
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("the demo did not stop within 60 s of SIGINT");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    reader.join().unwrap();
    seen.extend(rx.try_iter());
    assert!(code.success(), "exit {code:?}:\n{}", seen.join("\n"));
    assert!(
        seen.iter().any(|l| l == "demo stopped"),
        "{}",
        seen.join("\n")
    );
    let end = Instant::now() + Duration::from_secs(10);
    while started.iter().any(|p| alive(*p)) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
    }
    let left: Vec<u32> = started.into_iter().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "still running after the demo: {left:?}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the page still answers"
    );
}
