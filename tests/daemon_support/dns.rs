//! A tiny authoritative DNS server for the daemon tests: real DNS messages over a real UDP
//! socket on 127.0.0.1, answering MX queries from a table the test changes at will (to
//! "move" a domain's MX to Office 365). Messages are parsed and built with hickory's proto
//! crate, the same code a production DNS server of that family uses.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use cutover::cutover::normalise;
use hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
use hickory_resolver::proto::rr::rdata::MX;
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};

/// domain -> (MX records (preference, exchange), TTL)
type Zone = HashMap<String, (Vec<(u16, String)>, u32)>;

pub struct DnsServer {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    queries: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DnsServer {
    /// Binds a free UDP port on 127.0.0.1 and serves until dropped.
    pub fn start() -> DnsServer {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let zone = Arc::new(Mutex::new(Zone::new()));
        let queries = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (zone, queries, stop) = (zone.clone(), queries.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while !stop.load(Ordering::SeqCst) {
                    let Ok((len, peer)) = sock.recv_from(&mut buf) else {
                        continue;
                    };
                    if let Some(reply) = answer(&buf[..len], &zone.lock().unwrap()) {
                        queries.fetch_add(1, Ordering::SeqCst);
                        let _ = sock.send_to(&reply, peer);
                    }
                }
            })
        };
        DnsServer {
            addr,
            zone,
            queries,
            stop,
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the MX records of `domain`.
    pub fn set_mx(&self, domain: &str, exchanges: &[(u16, &str)], ttl: u32) {
        self.zone.lock().unwrap().insert(
            normalise(domain),
            (
                exchanges.iter().map(|(p, e)| (*p, e.to_string())).collect(),
                ttl,
            ),
        );
    }

    /// Queries answered so far.
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The reply to one query: the MX records of a known domain, NOERROR without records for
/// other types, NXDOMAIN for unknown names.
fn answer(query: &[u8], zone: &Zone) -> Option<Vec<u8>> {
    let q = Message::from_vec(query).ok()?;
    if q.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut r = Message::response(q.metadata.id, q.metadata.op_code);
    r.metadata.authoritative = true;
    r.metadata.recursion_desired = q.metadata.recursion_desired;
    r.edns = q.edns.clone();
    for question in &q.queries {
        r.add_query(question.clone());
        let name = normalise(&question.name().to_ascii());
        match zone.get(&name) {
            None => r.metadata.response_code = ResponseCode::NXDomain,
            Some((mxs, ttl)) if question.query_type() == RecordType::MX => {
                for (pref, exchange) in mxs {
                    let exchange = Name::from_ascii(format!("{}.", normalise(exchange))).ok()?;
                    r.add_answer(Record::from_rdata(
                        question.name().clone(),
                        *ttl,
                        RData::MX(MX::new(*pref, exchange)),
                    ));
                }
            }
            Some(_) => {}
        }
    }
    r.to_vec().ok()
}
