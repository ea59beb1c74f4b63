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
