//! The fleet view: an appliance's `/api/status` says which shard it is and, with
//! `[fleet] peers`, what the other appliances' `/api/status` says.

mod common;

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use cutover::demo::{write_config, DemoTls};

struct Run(Child);

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET `path` over plain HTTP on loopback; the JSON body, or None while nothing answers.
fn get_json(port: u16, path: &str) -> Option<serde_json::Value> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    // A chunked body: the JSON object is between the first '{' and the last '}'.
    let body = &body[body.find('{')?..=body.rfind('}')?];
    serde_json::from_str(body).ok()
}

#[test]
fn the_page_shows_its_shard_and_its_peers() {
    let users = [
        ("ann", "ann-pw", "ann@example.test"),
        ("ben", "ben-pw", "ben@example.test"),
        ("cat", "cat-pw", "cat@example.test"),
        ("dan", "dan-pw", "dan@example.test"),
    ];
    let Some(tb) = testbed(&users) else { return };
    let tls = DemoTls {
        source_implicit: true,
        dest_implicit: true,
    };
    let ports = [free_port(), free_port()];
    let mut runs = Vec::new();
    for i in 0..2 {
        let peer = ports[1 - i];
        let extra = format!(
            "[sync]\ninterval = \"60s\"\n\n[web]\nlisten = \"127.0.0.1:{}\"\n\n[fleet]\n\
             shard = \"{i}/2\"\npeers = [\"http://127.0.0.1:{peer}\"]\n",
            ports[i]
        );
        let dir = work_dir(&tb).join(format!("appliance-{i}"));
        let cfg = write_config(&tb, &dir, &users, tls, &extra).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_cutover"))
            .arg("--config")
            .arg(&cfg)
            .arg("run")
            .env("CUTOVER_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        runs.push(Run(child));
    }
    let owned = |i: u32| {
        users
            .iter()
            .filter(|u| cutover::fleet::rendezvous::owner(u.2, 2) == i)
            .count() as u64
    };
    // Peers are read every 15 s, the first time at start-up, possibly before the other
    // page listens: up to two rounds.
    let end = Instant::now() + Duration::from_secs(60);
    let mut last = None;
    while Instant::now() < end {
        if let Some(s) = get_json(ports[0], "/api/status") {
            let f = &s["fleet"];
            let peer = &f["peers"][0];
            if f["shard"] == "0/2"
                && f["owned"].as_u64() == Some(owned(0))
                && f["total"].as_u64() == Some(4)
                && peer["shard"] == "1/2"
                && peer["mailboxes"].as_u64() == Some(owned(1))
                && peer["error"].is_null()
            {
                return;
            }
            last = Some(s["fleet"].clone());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("the fleet view never showed both shards; last: {last:#?}");
}

/// A shard that owns none of the mailboxes stays up with its page and says so, instead
/// of exiting (a pod that exits is restarted by Kubernetes, over and over); SIGTERM
/// stops it.
#[test]
fn a_shard_that_owns_nothing_stays_up_idle() {
    let users = [("ann", "ann-pw", "ann@example.test")];
    let Some(tb) = testbed(&users) else { return };
    let tls = DemoTls {
        source_implicit: true,
        dest_implicit: true,
    };
    // Of 4 shards, one that does not own ann.
    let owner = cutover::fleet::rendezvous::owner(users[0].2, 4);
    let idle = (owner + 1) % 4;
    let port = free_port();
    let extra = format!(
        "[sync]\ninterval = \"60s\"\n\n[web]\nlisten = \"127.0.0.1:{port}\"\n\n[fleet]\n\
         shard = \"{idle}/4\"\n"
    );
    let dir = work_dir(&tb).join("idle");
    let cfg = write_config(&tb, &dir, &users, tls, &extra).unwrap();
    let mut run = Run(Command::new(env!("CARGO_BIN_EXE_cutover"))
        .arg("--config")
        .arg(&cfg)
        .arg("run")
        .env("CUTOVER_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap());
    let end = Instant::now() + Duration::from_secs(30);
    let mut status = None;
    while Instant::now() < end && status.is_none() {
        assert!(
            matches!(run.0.try_wait(), Ok(None)),
            "the idle shard exited: {:?}",
            run.0.try_wait()
        );
        status = get_json(port, "/api/status");
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = status.expect("the idle shard's page never answered");
    assert_eq!(status["fleet"]["shard"], format!("{idle}/4"));
    assert_eq!(status["fleet"]["owned"].as_u64(), Some(0), "{status:#}");
    assert_eq!(status["fleet"]["total"].as_u64(), Some(1), "{status:#}");
    // Still up a moment later: nothing to do is not the end of the migration.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        matches!(run.0.try_wait(), Ok(None)),
        "the idle shard exited"
    );
    let pid = run.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-s", "TERM", &pid])
        .status()
        .unwrap()
        .success());
    let stopped = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        matches!(run.0.try_wait(), Ok(Some(_)))
    });
    assert!(stopped, "the idle shard did not stop on SIGTERM");
}
