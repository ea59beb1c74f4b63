//! An IMAP client session: tagged commands, untagged data, literals both ways.
//!
//! Framing is [`super::framer`] (it counts `{n}` literals, so a message body is never
//! mistaken for protocol), decoding is imap-codec's `ResponseCodec`, and commands are
//! built as imap-codec values and encoded by `CommandCodec`. This file adds only what a
//! migration needs on top: timeouts, STARTTLS, SASL, pipelining of APPEND with LITERAL+,
//! and FETCH results handed to the caller one message at a time so memory stays bounded.

use std::collections::{HashMap, HashSet, VecDeque};
use std::num::{NonZeroU32, NonZeroU64};
use std::time::Duration;

use base64::Engine as _;
use imap_codec::decode::Decoder;
use imap_codec::encode::{Encoder, Fragment};
use imap_codec::imap_types::auth::AuthMechanism;
use imap_codec::imap_types::command::{Command, CommandBody, FetchModifier};
use imap_codec::imap_types::core::{Literal, LiteralMode};
use imap_codec::imap_types::datetime::DateTime;
use imap_codec::imap_types::fetch::{MacroOrMessageDataItemNames, MessageDataItemName};
use imap_codec::imap_types::flag::{Flag, StoreResponse, StoreType};
use imap_codec::imap_types::mailbox::Mailbox;
use imap_codec::imap_types::response::GreetingKind;
use imap_codec::imap_types::sequence::SequenceSet;
use imap_codec::imap_types::status::StatusDataItemName;
use imap_codec::{CommandCodec, GreetingCodec, ResponseCodec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::framer::{Frame, FrameError, Framer, Skipped};
use super::response::{parse_internal_date, FetchData, Kind, RawList, Resp, RespCode, Untagged};
use super::transport::{ByteStream, Stream, TlsSettings};
use super::{Credentials, ListedFolder};
use crate::budget::{Budget, Permit};
use crate::mapping::{decode_mutf7, encode_mutf7};
use crate::secret::Scrubber;

/// How the connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// TLS from the first byte (port 993).
    Implicit,
    /// Plain connect, then STARTTLS before any credential is sent; refused if not offered.
    StartTls,
    /// No TLS at all (a trusted LAN only).
    None,
}

/// Where and how to connect.
#[derive(Clone)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub security: Security,
    /// Needed unless `security` is `None`.
    pub tls: Option<TlsSettings>,
    /// Limit on any single wait for the server.
    pub timeout: Duration,
    /// Largest response (a whole FETCH with its body) the client will buffer.
    pub max_response_bytes: u32,
}

/// Errors of a session. None of them ever carries a password or a token.
#[derive(Debug, thiserror::Error)]
pub enum ImapError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("connection to {host} failed: {source}")]
    Io {
        host: String,
        source: std::io::Error,
    },
    #[error("{host} did not answer within {secs} s")]
    Timeout { host: String, secs: u64 },
    /// The TLS handshake got no answer: often a middlebox that accepts connections and then
    /// stays silent, so the message says where it stalled.
    #[error("TLS handshake with {host} did not complete within {secs} s")]
    HandshakeTimeout { host: String, secs: u64 },
    #[error("{host} closed the connection{}", .bye.as_ref().map(|b| format!(": {b}")).unwrap_or_default())]
    Closed { host: String, bye: Option<String> },
    #[error("{host} refused the login for {user}: {text}")]
    Auth {
        host: String,
        user: String,
        text: String,
    },
    #[error("{command} refused by {host}: {kind:?} {text}")]
    Refused {
        host: String,
        command: String,
        kind: Kind,
        code: Option<RespCode>,
        text: String,
    },
    #[error("protocol error with {host}: {detail}")]
    Protocol { host: String, detail: String },
    #[error("TLS with {host} failed: {detail}")]
    Tls { host: String, detail: String },
    #[error("{0}")]
    Unsupported(String),
}

/// A failed handshake: a certificate that does not verify is a definite answer (retrying
/// cannot fix it), a connection lost during the handshake is not.
fn tls_error(host: &str, source: std::io::Error) -> ImapError {
    if matches!(
        source.kind(),
        std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput
    ) {
        ImapError::Tls {
            host: host.to_string(),
            detail: source.to_string(),
        }
    } else {
        ImapError::Io {
            host: host.to_string(),
            source,
        }
    }
}

/// The TLS handshake (implicit TLS, or after STARTTLS), bounded by the endpoint's timeout:
/// a middlebox that takes the connection and then says nothing would otherwise hold the
/// session, and the connection slot it occupies, for ever.
async fn handshake(
    stream: Stream,
    tls: &TlsSettings,
    host: &str,
    timeout: Duration,
) -> Result<Stream> {
    match tokio::time::timeout(timeout, stream.upgrade(tls, host)).await {
        Ok(r) => r.map_err(|source| tls_error(host, source)),
        Err(_) => Err(ImapError::HandshakeTimeout {
            host: host.to_string(),
            secs: timeout.as_secs(),
        }),
    }
}

impl ImapError {
    /// True if the server ended or refused the session because its OAuth token expired
    /// (Exchange: `* BYE Session invalidated - AccessTokenExpired`): transient, but the next
    /// session needs a new token. See `throttle::needs_fresh_token`.
    pub fn is_token_expired(&self) -> bool {
        crate::throttle::needs_fresh_token(self)
    }

    /// Worth retrying on a fresh connection (the network or the server hiccupped), as opposed
    /// to a definite answer such as a refused login.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ImapError::Io { .. }
                | ImapError::Timeout { .. }
                | ImapError::HandshakeTimeout { .. }
                | ImapError::Closed { .. }
                | ImapError::Connect { .. }
        )
    }
}

type Result<T, E = ImapError> = std::result::Result<T, E>;

/// What the server can do, as announced in CAPABILITY.
#[derive(Debug, Clone, Default)]
pub struct Capabilities {
    set: HashSet<String>,
}

impl Capabilities {
    fn from_list(list: &[String]) -> Capabilities {
        Capabilities {
            set: list.iter().map(|c| c.to_ascii_uppercase()).collect(),
        }
    }
    /// True if the capability (case-insensitive, e.g. `"UIDPLUS"`, `"AUTH=PLAIN"`) is offered.
    pub fn has(&self, cap: &str) -> bool {
        self.set.contains(&cap.to_ascii_uppercase())
    }
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
    pub fn list(&self) -> Vec<String> {
        let mut v: Vec<_> = self.set.iter().cloned().collect();
        v.sort();
        v
    }
}

/// What SELECT/EXAMINE reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SelectInfo {
    pub exists: u32,
    pub uidvalidity: u32,
    pub uidnext: u32,
    /// 0 when the server does not track mod-sequences for this folder.
    pub highestmodseq: u64,
}

/// STATUS of a folder.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusInfo {
    pub messages: u32,
    pub uidvalidity: u32,
    pub uidnext: u32,
}

/// The result of one command: its untagged data and its tagged completion.
#[derive(Debug, Default)]
pub struct Outcome {
    pub untagged: Vec<Untagged>,
    pub code: Option<RespCode>,
    pub text: String,
}

/// The flags and date of an APPEND.
type AppendArgs<'a> = (Vec<Flag<'a>>, Option<DateTime>);

impl AppendsSent {
    fn with_capacity(n: usize) -> AppendsSent {
        AppendsSent {
            commands: Vec::with_capacity(n),
            early: Vec::with_capacity(n),
        }
    }

    /// An item whose APPEND went out with `tag`.
    fn sent(&mut self, tag: String) {
        self.commands.push((tag, 1));
        self.early.push(None);
    }

    /// An item that went out in the MULTIAPPEND command `tag`; the command is recorded
    /// with its first item.
    fn sent_in(&mut self, tag: &str) {
        match self.commands.last_mut() {
            Some((t, n)) if t == tag => *n += 1,
            _ => self.commands.push((tag.to_string(), 1)),
        }
        self.early.push(None);
    }

    /// An item refused before it was sent.
    fn refused(&mut self, outcome: AppendOutcome) {
        self.early.push(Some(outcome));
    }

    /// The flags and date of `item`'s APPEND, or the refusal of a message that cannot be
    /// appended at all.
    fn args<'a>(
        item: &AppendItem<'a>,
        binary: bool,
    ) -> Result<std::result::Result<AppendArgs<'a>, AppendOutcome>> {
        let flags: Vec<Flag<'_>> = item
            .flags
            .iter()
            .filter(|f| !f.eq_ignore_ascii_case("\\recent"))
            .filter_map(|f| Flag::try_from(f.as_str()).ok())
            .collect();
        let date = match item.internal_date.and_then(parse_internal_date) {
            Some(d) => Some(DateTime::try_from(d).map_err(|_| {
                ImapError::Unsupported(format!(
                    "internal date {:?} out of range",
                    item.internal_date
                ))
            })?),
            None => None,
        };
        // The one thing a literal cannot carry is NUL (a literal8 can); `contains` finds
        // it with memchr, far faster than the per-byte validation of `Literal::try_from`.
        // The destination was not asked: the text says so, so that nobody reads it as
        // the destination's refusal (callers replace NUL beforehand, see upstream/nul.rs).
        if !binary && item.body.contains(&0) {
            return Ok(Err(AppendOutcome::Refused {
                kind: Kind::No,
                code: None,
                text: "not sent: the message contains NUL bytes, which an IMAP literal \
                       cannot carry, and this session cannot send a literal8 (BINARY)"
                    .into(),
            }));
        }
        Ok(Ok((flags, date)))
    }
}

/// One message to APPEND.
pub struct AppendItem<'a> {
    pub flags: &'a [String],
    pub internal_date: Option<&'a str>,
    pub body: &'a [u8],
}

/// APPENDs sent by [`Client::append_send`] whose answers are still to be read.
#[derive(Debug)]
#[must_use = "the answers must be read with Client::append_collect"]
pub struct AppendsSent {
    /// Each APPEND command sent, in order: its tag and how many items it carries (more
    /// than one for a MULTIAPPEND).
    commands: Vec<(String, usize)>,
    /// Per item, in order: the outcome of one refused before it was sent; `None` for one
    /// that went out, in the next command of `commands` with room.
    early: Vec<Option<AppendOutcome>>,
}

/// Per-message outcome of an APPEND: where it went (from APPENDUID), or the server's refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    Appended {
        uidvalidity: u32,
        uid: u32,
    },
    /// Appended, but the server gave no APPENDUID.
    AppendedNoUid,
    Refused {
        kind: Kind,
        /// The response code of the refusal (`[OVERQUOTA]`, `[TOOBIG]`...), if any.
        code: Option<RespCode>,
        text: String,
    },
    /// Refused with the other messages of its MULTIAPPEND command, as a whole: none of
    /// them was appended (RFC 3502), and which one the server objects to is not known.
    RefusedTogether {
        kind: Kind,
        text: String,
        /// How many messages the command carried.
        messages: usize,
    },
}

/// What [`Client::uid_fetch_meta_report`] found.
#[derive(Debug, Default)]
pub struct MetaFetch {
    /// One entry per UID.
    pub items: Vec<FetchData>,
    /// FETCH responses that could not be read: the UID where the raw response shows one,
    /// and why (the decoder's complaint and the start of the response).
    pub unreadable: Vec<(Option<u32>, String)>,
}

/// What a FETCH of bodies could not hand on ([`Client::uid_fetch_bodies`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FetchReport {
    /// FETCH responses that could not be read, as in [`MetaFetch::unreadable`]; not those
    /// of messages handed on anyway (from another response).
    pub unreadable: Vec<(Option<u32>, String)>,
    /// Messages whose BODY[] was too large (over their RFC822.SIZE, or over the response
    /// limit): UID and the body's length. They were not handed on.
    pub too_large: Vec<(u32, u64)>,
}

/// The FETCH responses of one command, merged per UID.
#[derive(Default)]
struct Merger {
    /// In the order the UIDs first came.
    items: Vec<FetchData>,
    at: HashMap<u32, usize>,
    /// UIDs by message number, from the responses that had both: an unsolicited FETCH
    /// (a flag change) may carry only the number.
    uid_of: HashMap<u32, u32>,
    unreadable: Vec<(Option<u32>, String)>,
}

impl Merger {
    /// The UID and data of a FETCH response for a UID `asked` wants; an unreadable one is
    /// noted. Keeps the numbering up to date on EXPUNGE.
    fn take(&mut self, u: Untagged, asked: impl Fn(u32) -> bool) -> Option<(u32, FetchData)> {
        match u {
            Untagged::Fetch(mut f) => {
                let uid = match f.uid {
                    Some(uid) => {
                        self.uid_of.insert(f.seq, uid);
                        uid
                    }
                    None => *self.uid_of.get(&f.seq)?,
                };
                f.uid = Some(uid);
                asked(uid).then_some((uid, f))
            }
            Untagged::Unreadable { seq, uid, detail } => {
                let uid = uid.or_else(|| seq.and_then(|s| self.uid_of.get(&s).copied()));
                if uid.is_none_or(&asked) {
                    self.unreadable.push((uid, detail));
                }
                None
            }
            Untagged::Expunge(n) => {
                self.uid_of = self
                    .uid_of
                    .drain()
                    .filter(|(seq, _)| *seq != n)
                    .map(|(seq, uid)| (if seq > n { seq - 1 } else { seq }, uid))
                    .collect();
                None
            }
            _ => None,
        }
    }

    fn absorb(&mut self, uid: u32, f: FetchData) {
        match self.at.get(&uid) {
            Some(&i) => self.items[i].absorb(f),
            None => {
                self.at.insert(uid, self.items.len());
                self.items.push(f);
            }
        }
    }

    /// Takes `uid`'s entry out (to be handed on), leaving a gap in the order.
    fn remove(&mut self, uid: u32) -> Option<FetchData> {
        let i = self.at.remove(&uid)?;
        Some(std::mem::take(&mut self.items[i]))
    }

    fn finish(self) -> (Vec<FetchData>, Vec<(Option<u32>, String)>) {
        let items = self.items.into_iter().filter(|f| f.uid.is_some()).collect();
        (items, self.unreadable)
    }
}

/// A UID set as sent (`1:*`, `4,7:9`), to tell responses for it from unsolicited ones.
struct UidRanges(Option<Vec<(u32, u32)>>);

impl UidRanges {
    /// `*` stands for the largest UID, which any UID at or above the range's start may be.
    /// A set that cannot be read contains everything.
    fn parse(set: &str) -> UidRanges {
        let n = |s: &str| match s {
            "*" => Some(u32::MAX),
            s => s.parse::<u32>().ok(),
        };
        let ranges = set
            .split(',')
            .map(|part| {
                let (a, b) = part.split_once(':').unwrap_or((part, part));
                let (a, b) = (n(a)?, n(b)?);
                Some((a.min(b), a.max(b)))
            })
            .collect();
        UidRanges(ranges)
    }

    fn contains(&self, uid: u32) -> bool {
        match &self.0 {
            Some(ranges) => ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&uid)),
            None => true,
        }
    }
}

const READ_CHUNK: usize = 64 * 1024;

/// The literal an APPEND is encoded around before its message's length is put in.
const PLACEHOLDER: &[u8] = b"{1+}\r\n";

/// The outcomes of an APPEND command of `n` messages that succeeded, from its APPENDUID:
/// one UID, or (MULTIAPPEND) a UID per message in the order they were sent. Anything
/// else, or none, says only that they were appended.
fn appended(code: Option<RespCode>, n: usize) -> Vec<AppendOutcome> {
    match code {
        Some(RespCode::AppendUid { uidvalidity, uid }) if n == 1 => {
            vec![AppendOutcome::Appended { uidvalidity, uid }]
        }
        Some(RespCode::AppendUids { uidvalidity, uids }) if uids.len() == n => uids
            .into_iter()
            .map(|uid| AppendOutcome::Appended { uidvalidity, uid })
            .collect(),
        _ => vec![AppendOutcome::AppendedNoUid; n],
    }
}

/// The outcomes of an APPEND command of `n` messages from its completion.
fn append_answer(kind: Kind, code: Option<RespCode>, text: String, n: usize) -> Vec<AppendOutcome> {
    match kind {
        Kind::Ok => appended(code, n),
        _ if n == 1 => vec![AppendOutcome::Refused { kind, code, text }],
        _ => (0..n)
            .map(|_| AppendOutcome::RefusedTogether {
                kind,
                text: text.clone(),
                messages: n,
            })
            .collect(),
    }
}

/// The start of a response for a message: printable, at most 200 characters.
fn excerpt(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
        .chars()
        .filter(|c| !c.is_control())
        .collect()
}

/// True for a raw `* LIST` or `* LSUB` response.
fn is_raw_list(bytes: &[u8]) -> bool {
    bytes
        .get(..7)
        .is_some_and(|p| p.eq_ignore_ascii_case(b"* LIST ") || p.eq_ignore_ascii_case(b"* LSUB "))
}

/// A `* LIST (attrs) "d" name` line imap-codec refused, read by hand: a name some
/// servers send in raw UTF-8 (quoted or as an atom) instead of modified UTF-7. None
/// unless the whole line is that shape and the name is UTF-8.
fn parse_raw_list(bytes: &[u8]) -> Option<RawList> {
    let line = bytes.strip_suffix(b"\r\n").unwrap_or(bytes);
    let rest = line.get(7..)?.strip_prefix(b"(")?;
    let close = rest.iter().position(|&b| b == b')')?;
    let attributes = std::str::from_utf8(&rest[..close])
        .ok()?
        .split_ascii_whitespace()
        .map(str::to_ascii_lowercase)
        .collect();
    let rest = rest[close + 1..].strip_prefix(b" ")?;
    let (delimiter, rest) = if let Some(r) = rest.strip_prefix(b"NIL ") {
        (None, r)
    } else {
        let r = rest.strip_prefix(b"\"")?;
        let (d, r) = match r {
            [b'\\', d, b'"', b' ', r @ ..] => (*d, r),
            [d, b'"', b' ', r @ ..] if *d != b'\\' => (*d, r),
            _ => return None,
        };
        (Some(char::from(d)), r)
    };
    let name = match rest.strip_prefix(b"\"") {
        Some(q) => {
            let mut out = Vec::with_capacity(q.len());
            let mut it = q.iter();
            loop {
                match it.next()? {
                    b'"' => break,
                    b'\\' => out.push(*it.next()?),
                    b => out.push(*b),
                }
            }
            if it.next().is_some() {
                return None;
            }
            out
        }
        None if !rest.is_empty() && !rest.iter().any(|b| b" (){\"\\".contains(b)) => rest.to_vec(),
        None => return None,
    };
    Some(RawList {
        name: String::from_utf8(name).ok()?,
        delimiter,
        attributes,
    })
}

/// The message number and (where the bytes show it) the UID of a raw `* n FETCH (...)`
/// response that could not be decoded; None if it is not a FETCH response.
fn raw_fetch(bytes: &[u8]) -> Option<(u32, Option<u32>)> {
    let rest = bytes.strip_prefix(b"* ")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let seq: u32 = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    let rest = &rest[digits..];
    let items = rest
        .get(..7)
        .filter(|w| w.eq_ignore_ascii_case(b" FETCH "))?;
    let rest = &rest[items.len()..];
    // `UID n` as an item: after `(` or a space.
    let uid = (0..rest.len().saturating_sub(4)).find_map(|i| {
        let lead = i.checked_sub(1).map(|j| rest[j]);
        if !matches!(lead, Some(b'(' | b' ')) || !rest[i..i + 4].eq_ignore_ascii_case(b"UID ") {
            return None;
        }
        let digits = &rest[i + 4..];
        let n = digits.iter().take_while(|b| b.is_ascii_digit()).count();
        std::str::from_utf8(&digits[..n])
            .ok()?
            .parse::<u32>()
            .ok()
            .filter(|u| *u != 0)
    });
    Some((seq, uid))
}

/// A UID set in IMAP syntax with runs collapsed (`1:3,7,9:10`); `uids` in any order.
pub fn uid_set(uids: &[u32]) -> String {
    let mut v: Vec<u32> = uids.iter().copied().filter(|u| *u != 0).collect();
    v.sort_unstable();
    v.dedup();
    let mut out = String::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        if j == i {
            out.push_str(&v[i].to_string());
        } else {
            out.push_str(&format!("{}:{}", v[i], v[j]));
        }
        i = j + 1;
    }
    out
}

/// A logged-in (or about to log in) IMAP session.
pub struct Client {
    stream: Stream,
    frames: Framer,
    wbuf: Vec<u8>,
    /// Responses read while waiting for something else (e.g. a continuation).
    stash: VecDeque<Resp>,
    caps: Capabilities,
    tag: u64,
    host: String,
    timeout: Duration,
    max_response: u32,
    literal_plus: bool,
    /// MULTIAPPEND (RFC 3502) offered, with LITERAL+, and not turned off by the caller.
    multiappend: bool,
    /// The caller's say: MULTIAPPEND may be used where offered.
    multiappend_wanted: bool,
    /// Outcomes known when `append_batch` failed mid-way (see `take_partial_outcomes`).
    partial_outcomes: Vec<AppendOutcome>,
    /// The same, per item of that batch, with the answers that came ahead of the failure
    /// (see `take_partial_answers`).
    partial_answers: Vec<Option<AppendOutcome>>,
    /// Tags of the commands sent whose completion has not been taken yet.
    outstanding: HashSet<String>,
    /// Completions that arrived while another command's was awaited: a server may
    /// complete pipelined commands in any order (RFC 3501 §5.5).
    done: HashMap<String, Resp>,
    /// The server refused `ENABLE CONDSTORE`: mod-sequences are not used on this session.
    condstore_off: bool,
    /// The credentials of the login, in every form they were sent in, taken out of the
    /// server's texts.
    scrub: Scrubber,
    /// The byte budget a `BODY[]` literal is taken from before it is allocated (see
    /// [`Client::set_budget`]), and what the last response's bodies hold of it.
    budget: Option<Budget>,
    held: Vec<Permit>,
    /// See [`Client::unreadable_folders`].
    unreadable_folders: Vec<String>,
    /// Names LIST gave that are not modified UTF-7: sent back as they came
    /// ([`Client::raw_names`]).
    raw_names: std::collections::HashSet<String>,
}

impl Client {
    /// Connects, secures the connection as configured and reads the greeting and capabilities.
    pub async fn connect(ep: &Endpoint) -> Result<Client> {
        let addr = format!("{}:{}", ep.host, ep.port);
        let tcp = tokio::time::timeout(ep.timeout, TcpStream::connect(&addr))
            .await
            .map_err(|_| ImapError::Timeout {
                host: ep.host.clone(),
                secs: ep.timeout.as_secs(),
            })?
            .map_err(|source| ImapError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let mut stream = Stream::Plain(tcp);
        let tls = || {
            ep.tls.as_ref().ok_or_else(|| {
                ImapError::Unsupported(format!("{}: TLS requested but not set up", ep.host))
            })
        };
        if ep.security == Security::Implicit {
            stream = handshake(stream, tls()?, &ep.host, ep.timeout).await?;
        }
        let mut c = Client::new(stream, &ep.host, ep.timeout, ep.max_response_bytes);
        c.read_greeting().await?;
        if ep.security == Security::StartTls {
            if c.caps.is_empty() {
                c.capability().await?;
            }
            if !c.caps.has("STARTTLS") {
                return Err(ImapError::Unsupported(format!(
                    "{} does not offer STARTTLS; refusing to send credentials in clear text",
                    ep.host
                )));
            }
            c.run(CommandBody::StartTLS, "STARTTLS").await?;
            // Anything the server sent after its OK arrived before TLS and cannot be trusted
            // (RFC 3501 §11.1 injection); the framer is rebuilt empty.
            c.frames = Framer::new(c.max_response as usize);
            c.stash.clear();
            let plain = std::mem::replace(&mut c.stream, Stream::Detached);
            c.stream = handshake(plain, tls()?, &ep.host, ep.timeout).await?;
            c.caps = Capabilities::default();
        }
        if c.caps.is_empty() {
            c.capability().await?;
        }
        Ok(c)
    }

    /// A session over a stream the caller connected (no TLS is set up here): reads the
    /// greeting and the capabilities. Everything above the socket is the same as after
    /// [`Client::connect`], so the protocol handling can be driven with exact server bytes
    /// (e.g. over `tokio::io::duplex`).
    pub async fn from_stream(
        stream: impl ByteStream + 'static,
        host: &str,
        timeout: Duration,
        max_response_bytes: u32,
    ) -> Result<Client> {
        let stream = Stream::Other(Box::new(stream));
        let mut c = Client::new(stream, host, timeout, max_response_bytes);
        c.read_greeting().await?;
        if c.caps.is_empty() {
            c.capability().await?;
        }
        Ok(c)
    }

    fn new(stream: Stream, host: &str, timeout: Duration, max_response_bytes: u32) -> Client {
        Client {
            stream,
            frames: Framer::new(max_response_bytes as usize),
            wbuf: Vec::with_capacity(READ_CHUNK),
            stash: VecDeque::new(),
            unreadable_folders: Vec::new(),
            raw_names: Default::default(),
            caps: Capabilities::default(),
            tag: 0,
            host: host.to_string(),
            timeout,
            max_response: max_response_bytes,
            literal_plus: false,
            multiappend: false,
            multiappend_wanted: true,
            partial_outcomes: Vec::new(),
            partial_answers: Vec::new(),
            outstanding: HashSet::new(),
            done: HashMap::new(),
            condstore_off: false,
            scrub: Scrubber::new(),
            budget: None,
            held: Vec::new(),
        }
    }

    /// Takes the bytes of every message body this session receives from `budget` before
    /// it is allocated, and holds them until the next response is read: by then the
    /// body's receiver (the callback of [`Client::uid_fetch_bodies`]) has spooled it.
    pub fn set_budget(&mut self, budget: Option<Budget>) {
        self.frames.set_gated(budget.is_some());
        self.budget = budget;
    }

    pub fn caps(&self) -> &Capabilities {
        &self.caps
    }

    /// True if mod-sequences (CONDSTORE) are used on this session: offered, and not
    /// refused by `ENABLE` at login.
    pub fn uses_condstore(&self) -> bool {
        self.caps.has("CONDSTORE") && !self.condstore_off
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    fn err_io(&self, source: std::io::Error) -> ImapError {
        ImapError::Io {
            host: self.host.clone(),
            source,
        }
    }

    fn protocol(&self, detail: impl Into<String>) -> ImapError {
        ImapError::Protocol {
            host: self.host.clone(),
            detail: detail.into(),
        }
    }

    /// Reads once from the socket into the framer's read room (the main buffer, or the
    /// message body being received).
    async fn fill(&mut self) -> Result<()> {
        let mut room = self.frames.read_room();
        let r = tokio::time::timeout(self.timeout, self.stream.read_buf(&mut room)).await;
        let n = match r {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(self.err_io(e)),
            Err(_) => {
                return Err(ImapError::Timeout {
                    host: self.host.clone(),
                    secs: self.timeout.as_secs(),
                })
            }
        };
        // The room is never empty, so 0 means end of stream.
        if n == 0 {
            return Err(ImapError::Closed {
                host: self.host.clone(),
                bye: None,
            });
        }
        Ok(())
    }

    /// Reads until one whole server response is buffered, then decodes it with `codec`
    /// and converts it with `convert` while its bytes are still borrowed. `convert` also
    /// gets the frame's bytes as the decoder saw them, the `BODY[]` literals the framer
    /// took out of the response (see [`super::framer`]), to put back into the decoded
    /// value, and the literals it skipped as too large.
    async fn next_decoded<C: Decoder, T>(
        &mut self,
        codec: &C,
        convert: impl FnOnce(Option<C::Message<'_>>, &[u8], Vec<Vec<u8>>, Vec<Skipped>) -> T,
    ) -> Result<T> {
        // The bodies of the response before were handed on: their share goes back.
        self.held.clear();
        loop {
            match self.frames.next_frame() {
                Ok(Some(Frame {
                    bytes,
                    bodies,
                    skipped,
                })) => {
                    // Lifetimes: the frame lives in `self.frames`; decode and convert here.
                    let decoded = match codec.decode(bytes) {
                        Ok(([], msg)) => Some(msg),
                        _ => None,
                    };
                    return Ok(convert(decoded, bytes, bodies, skipped));
                }
                Ok(None) => {
                    if let Some(n) = self.frames.wants_grant() {
                        if let Some(budget) = &self.budget {
                            self.held.push(budget.take(n as u64).await);
                        }
                        self.frames.grant();
                        continue;
                    }
                }
                Err(FrameError::TooLong { limit }) => {
                    return Err(self.protocol(format!("a response exceeded the {limit} byte limit")))
                }
            }
            self.fill().await?;
        }
    }

    async fn read_greeting(&mut self) -> Result<()> {
        let greeting = self
            .next_decoded(&GreetingCodec::default(), |g, _, _, _| {
                g.map(|g| {
                    let caps = match &g.code {
                        Some(imap_codec::imap_types::response::Code::Capability(c)) => {
                            Some(c.as_ref().iter().map(|c| c.to_string()).collect::<Vec<_>>())
                        }
                        _ => None,
                    };
                    (g.kind == GreetingKind::Bye, g.text.to_string(), caps)
                })
            })
            .await?;
        let Some((bye, text, caps)) = greeting else {
            return Err(self.protocol("the server's greeting is not IMAP"));
        };
        if bye {
            return Err(ImapError::Closed {
                host: self.host.clone(),
                bye: Some(text),
            });
        }
        if let Some(c) = caps {
            self.set_caps(&c);
        }
        Ok(())
    }

    fn set_caps(&mut self, list: &[String]) {
        self.caps = Capabilities::from_list(list);
        self.literal_plus = self.caps.has("LITERAL+");
        self.multiappend =
            self.multiappend_wanted && self.literal_plus && self.caps.has("MULTIAPPEND");
    }

    /// Whether a batch of APPENDs may go out as one MULTIAPPEND command where the server
    /// offers it (with LITERAL+; without, each message would wait for a go-ahead anyway).
    /// On by default.
    pub fn set_multiappend(&mut self, wanted: bool) {
        self.multiappend_wanted = wanted;
        self.multiappend = wanted && self.literal_plus && self.caps.has("MULTIAPPEND");
    }

    /// True if [`Client::append_send`] sends a batch as one MULTIAPPEND command.
    pub fn uses_multiappend(&self) -> bool {
        self.multiappend
    }

    /// Reads the next response, from the stash first. A response that cannot be used is
    /// skipped (its frame is intact, so the session goes on); for a FETCH response the
    /// caller gets [`Untagged::Unreadable`], so that it can name the message.
    async fn read_resp(&mut self) -> Result<Resp> {
        if let Some(r) = self.stash.pop_front() {
            return Ok(r);
        }
        let (mut resp, refused) = self
            .next_decoded(&ResponseCodec::default(), |r, bytes, bodies, skipped| {
                let why = match r {
                    Some(_) if skipped.iter().any(|s| s.body.is_none()) => {
                        let len = skipped.iter().map(|s| s.len).max().unwrap_or(0);
                        format!(
                            "a literal of {len} bytes in it was over the limit and was discarded"
                        )
                    }
                    Some(r) => match Resp::from_codec_skipping(r, bodies, &skipped) {
                        Some(resp) => return (resp, None),
                        None => "its BODY[] literals do not match its items".to_string(),
                    },
                    None => "imap-codec cannot decode it".to_string(),
                };
                let detail = format!("{why}: {}", excerpt(bytes));
                let resp = match raw_fetch(bytes) {
                    Some((seq, uid)) => Untagged::Unreadable {
                        seq: Some(seq),
                        uid,
                        detail: detail.clone(),
                    },
                    None if is_raw_list(bytes) => match parse_raw_list(bytes) {
                        // A name in raw UTF-8: kept by its bytes (see `Client::list`).
                        Some(l) => return (Resp::Untagged(Untagged::List(l)), None),
                        None => Untagged::UnreadableList(
                            bytes[..bytes.len().min(300)].escape_ascii().to_string(),
                        ),
                    },
                    None => Untagged::Other,
                };
                (Resp::Untagged(resp), Some(detail))
            })
            .await?;
        self.scrub_resp(&mut resp);
        if let Some(mut detail) = refused {
            self.scrub.scrub_in_place(&mut detail);
            tracing::warn!(host = %self.host, "response skipped: {detail}");
        }
        if let Resp::Untagged(Untagged::Capability(c)) = &resp {
            let c = c.clone();
            self.set_caps(&c);
        }
        Ok(resp)
    }

    /// Takes the session's secrets out of the texts of `resp` (see [`Scrubber`]).
    fn scrub_resp(&self, resp: &mut Resp) {
        if self.scrub.is_empty() {
            return;
        }
        let s = &self.scrub;
        let code = |c: &mut Option<RespCode>| {
            if let Some(RespCode::Other(text)) = c {
                s.scrub_in_place(text);
            }
        };
        match resp {
            Resp::Tagged { code: c, text, .. }
            | Resp::Untagged(Untagged::State { code: c, text, .. }) => {
                s.scrub_in_place(text);
                code(c);
            }
            Resp::Untagged(Untagged::Unreadable { detail, .. }) => s.scrub_in_place(detail),
            Resp::Bye(text) => s.scrub_in_place(text),
            _ => {}
        }
    }

    /// A new tag, counted as outstanding until its completion is taken.
    fn next_tag(&mut self) -> String {
        self.tag += 1;
        let tag = format!("c{}", self.tag);
        self.outstanding.insert(tag.clone());
        tag
    }

    /// Keeps the completion of another outstanding command for when it is awaited; a
    /// completion for a tag never sent (or already completed) is a protocol error.
    fn keep_completion(&mut self, resp: Resp, during: &str) -> Result<()> {
        let Some(tag) = resp.tag().map(str::to_string) else {
            return Ok(());
        };
        if !self.outstanding.remove(&tag) {
            return Err(self.protocol(format!(
                "unexpected completion for tag {tag} during {during}"
            )));
        }
        self.done.insert(tag, resp);
        Ok(())
    }

    /// The completion of `tag` if it already arrived.
    fn take_completion(&mut self, tag: &str) -> Option<Resp> {
        let r = self.done.remove(tag)?;
        Some(r)
    }

    async fn flush(&mut self) -> Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let r = tokio::time::timeout(self.timeout, self.stream.write_all(&self.wbuf)).await;
        self.wbuf.clear();
        match r {
            Err(_) => Err(ImapError::Timeout {
                host: self.host.clone(),
                secs: self.timeout.as_secs(),
            }),
            Ok(Err(e)) => Err(self.err_io(e)),
            Ok(Ok(())) => tokio::time::timeout(self.timeout, self.stream.flush())
                .await
                .map_err(|_| ImapError::Timeout {
                    host: self.host.clone(),
                    secs: self.timeout.as_secs(),
                })?
                .map_err(|e| self.err_io(e)),
        }
    }

    /// Writes `parts` as one stream of bytes, straight from where they are: a batch of
    /// APPENDs goes out without copying each message into the write buffer first.
    async fn write_parts(&mut self, parts: &[&[u8]]) -> Result<()> {
        let mut slices: Vec<std::io::IoSlice<'_>> =
            parts.iter().map(|p| std::io::IoSlice::new(p)).collect();
        let mut rest = &mut slices[..];
        std::io::IoSlice::advance_slices(&mut rest, 0);
        let timeout = |host: &str, secs: u64| ImapError::Timeout {
            host: host.to_string(),
            secs,
        };
        while !rest.is_empty() {
            let n = tokio::time::timeout(self.timeout, self.stream.write_vectored(rest))
                .await
                .map_err(|_| timeout(&self.host, self.timeout.as_secs()))?
                .map_err(|e| self.err_io(e))?;
            if n == 0 {
                return Err(self.err_io(std::io::ErrorKind::WriteZero.into()));
            }
            std::io::IoSlice::advance_slices(&mut rest, n);
        }
        tokio::time::timeout(self.timeout, self.stream.flush())
            .await
            .map_err(|_| timeout(&self.host, self.timeout.as_secs()))?
            .map_err(|e| self.err_io(e))
    }

    /// Queues a command; synchronizing literals wait for the server's go-ahead.
    /// Returns the tag, or the server's refusal of a synchronizing literal.
    async fn send(&mut self, body: CommandBody<'_>) -> Result<Result<String, Resp>> {
        let tag = self.next_tag();
        let cmd = Command::new(tag.as_str(), body).map_err(|_| self.protocol("bad tag"))?;
        let encoded = CommandCodec::default().encode(&cmd);
        for fragment in encoded {
            match fragment {
                Fragment::Line { data } => self.wbuf.extend_from_slice(&data),
                Fragment::Literal { data, mode } => {
                    if mode == LiteralMode::Sync {
                        self.flush().await?;
                        loop {
                            match self.read_resp_direct().await? {
                                Resp::Continue => break,
                                // This command refused before its literal.
                                r @ Resp::Tagged { .. } if r.tag() == Some(tag.as_str()) => {
                                    self.outstanding.remove(&tag);
                                    return Ok(Err(r));
                                }
                                // Pipelined: the completion of a command sent before
                                // (an APPEND of the same batch) arrives first.
                                r @ Resp::Tagged { .. } => self.stash.push_back(r),
                                Resp::Bye(b) => {
                                    return Err(ImapError::Closed {
                                        host: self.host.clone(),
                                        bye: Some(b),
                                    })
                                }
                                other => self.stash.push_back(other),
                            }
                        }
                    }
                    self.wbuf.extend_from_slice(&data);
                }
            }
        }
        Ok(Ok(tag))
    }

    /// Reads from the wire, bypassing the stash (used while the stash is being filled).
    async fn read_resp_direct(&mut self) -> Result<Resp> {
        let saved = std::mem::take(&mut self.stash);
        let r = self.read_resp().await;
        self.stash = saved;
        r
    }

    /// Waits for the tagged completion of `tag`, handing untagged responses to `on_untagged`.
    async fn complete(
        &mut self,
        tag: &str,
        command: &str,
        mut on_untagged: impl FnMut(Untagged) -> Result<()>,
    ) -> Result<Outcome> {
        self.flush().await?;
        loop {
            let resp = match self.take_completion(tag) {
                Some(r) => r,
                None => self.read_resp().await?,
            };
            match resp {
                Resp::Tagged {
                    tag: t,
                    kind,
                    code,
                    text,
                } if t == tag => {
                    self.outstanding.remove(tag);
                    return self.completion(command, kind, code, text);
                }
                r @ Resp::Tagged { .. } => self.keep_completion(r, command)?,
                Resp::Untagged(u) => on_untagged(u)?,
                Resp::Continue => {
                    return Err(self.protocol(format!("unexpected continuation during {command}")))
                }
                Resp::Bye(b) => {
                    return Err(ImapError::Closed {
                        host: self.host.clone(),
                        bye: Some(b),
                    })
                }
            }
        }
    }

    /// Waits for the completion of `tag` and returns it with every untagged response
    /// that came before it.
    async fn collect(&mut self, tag: &str, command: &str) -> Result<Outcome> {
        let mut untagged = Vec::new();
        let mut out = self
            .complete(tag, command, |u| {
                untagged.push(u);
                Ok(())
            })
            .await?;
        out.untagged = untagged;
        Ok(out)
    }

    /// The tagged completion of a command: its outcome, or the server's refusal.
    fn completion(
        &self,
        command: &str,
        kind: Kind,
        code: Option<RespCode>,
        text: String,
    ) -> Result<Outcome> {
        if kind == Kind::Ok {
            Ok(Outcome {
                untagged: Vec::new(),
                code,
                text,
            })
        } else {
            Err(ImapError::Refused {
                host: self.host.clone(),
                command: command.to_string(),
                kind,
                code,
                text,
            })
        }
    }

    /// Sends one command and collects its untagged data.
    pub async fn run(&mut self, body: CommandBody<'_>, command: &str) -> Result<Outcome> {
        let tag = match self.send(body).await? {
            Ok(tag) => tag,
            Err(resp) => return Err(self.refusal(command, resp)),
        };
        self.collect(&tag, command).await
    }

    fn refusal(&self, command: &str, resp: Resp) -> ImapError {
        match resp {
            Resp::Tagged {
                kind, code, text, ..
            } => ImapError::Refused {
                host: self.host.clone(),
                command: command.to_string(),
                kind,
                code,
                text,
            },
            other => self.protocol(format!("unexpected {other:?} during {command}")),
        }
    }

    /// CAPABILITY.
    pub async fn capability(&mut self) -> Result<()> {
        let out = self.run(CommandBody::Capability, "CAPABILITY").await?;
        for u in out.untagged {
            if let Untagged::Capability(c) = u {
                self.set_caps(&c);
            }
        }
        Ok(())
    }

    /// Logs in with LOGIN, AUTHENTICATE PLAIN or AUTHENTICATE XOAUTH2, then refreshes the
    /// capabilities (servers announce more after login) and enables CONDSTORE when offered.
    pub async fn login(&mut self, creds: &Credentials) -> Result<()> {
        let user = creds.identity().to_string();
        // Before anything is sent: the server may quote it back in any answer from now on.
        self.scrub = Scrubber::new();
        match creds {
            Credentials::Login { password, .. } | Credentials::Plain { password, .. } => {
                self.scrub.add(password.expose())
            }
            Credentials::XOAuth2 { token, .. } => self.scrub.add(token.expose()),
        }
        let result = match creds {
            Credentials::Login { user, password } => {
                if self.caps.has("LOGINDISABLED") {
                    return Err(ImapError::Unsupported(format!(
                        "{} refuses LOGIN on this connection (LOGINDISABLED); use TLS",
                        self.host
                    )));
                }
                let body = CommandBody::login(user.as_str(), password.expose()).map_err(|_| {
                    ImapError::Unsupported(format!("login name {user:?} cannot be sent with LOGIN"))
                })?;
                self.run(body, "LOGIN").await
            }
            Credentials::Plain {
                authzid,
                authcid,
                password,
            } => {
                let mut ir = Vec::new();
                ir.extend_from_slice(authzid.as_deref().unwrap_or("").as_bytes());
                ir.push(0);
                ir.extend_from_slice(authcid.as_bytes());
                ir.push(0);
                ir.extend_from_slice(password.expose().as_bytes());
                self.authenticate(AuthMechanism::Plain, ir, "AUTHENTICATE PLAIN")
                    .await
            }
            Credentials::XOAuth2 { user, token } => {
                let ir = format!("user={user}\x01auth=Bearer {}\x01\x01", token.expose());
                self.authenticate(
                    AuthMechanism::XOAuth2,
                    ir.into_bytes(),
                    "AUTHENTICATE XOAUTH2",
                )
                .await
            }
        };
        let out = match result {
            Ok(out) => out,
            Err(ImapError::Refused { text, .. }) => {
                return Err(ImapError::Auth {
                    host: self.host.clone(),
                    user,
                    text,
                })
            }
            Err(e) => return Err(e),
        };
        match out.code {
            Some(RespCode::Capability(c)) => self.set_caps(&c),
            _ => self.capability().await?,
        }
        if self.caps.has("ID") {
            // Identifies the migration in the server's logs (Exchange and Dovecot log it),
            // which helps an admin tell cutover's sessions from users'.
            let line = format!(
                "ID (\"name\" \"cutover\" \"version\" \"{}\")",
                env!("CARGO_PKG_VERSION")
            );
            // Only a courtesy: a server that advertises ID but refuses it still serves mail.
            match self.run_raw(&line, "ID").await {
                Err(ImapError::Refused { kind, text, .. }) => {
                    tracing::debug!(host = %self.host, ?kind, %text, "ID refused; carrying on without it");
                }
                other => {
                    other?;
                }
            }
        }
        self.condstore_off = false;
        if self.caps.has("ENABLE") && self.caps.has("CONDSTORE") {
            // Refused, mod-sequences are not asked for at all: a FETCH with MODSEQ or
            // CHANGEDSINCE would be refused in turn, or answered by a server that just said
            // it will not track them. Folders are then read in full, which is correct.
            match self.run_raw("ENABLE CONDSTORE", "ENABLE").await {
                Err(ImapError::Refused { kind, text, .. }) => {
                    tracing::info!(host = %self.host, ?kind, %text, "ENABLE CONDSTORE refused; reading folders without mod-sequences");
                    self.condstore_off = true;
                }
                other => {
                    other?;
                }
            }
        }
        Ok(())
    }

    /// SASL exchange with an initial response (SASL-IR when offered, else after `+`).
    /// On failure a server may send a challenge with error details (XOAUTH2 does); an empty
    /// response ends the exchange so the tagged NO arrives.
    async fn authenticate(
        &mut self,
        mech: AuthMechanism<'static>,
        ir: Vec<u8>,
        command: &str,
    ) -> Result<Outcome> {
        let b64 = base64::engine::general_purpose::STANDARD.encode(&ir);
        self.scrub.add_sent(&b64);
        let with_ir = self.caps.has("SASL-IR");
        let body = if with_ir {
            CommandBody::authenticate_with_ir(mech, ir)
        } else {
            CommandBody::authenticate(mech)
        };
        let tag = match self.send(body).await? {
            Ok(t) => t,
            Err(r) => return Err(self.refusal(command, r)),
        };
        self.flush().await?;
        let mut sent_ir = with_ir;
        loop {
            match self.read_resp().await? {
                Resp::Continue => {
                    if sent_ir {
                        self.wbuf.extend_from_slice(b"\r\n");
                    } else {
                        self.wbuf.extend_from_slice(b64.as_bytes());
                        self.wbuf.extend_from_slice(b"\r\n");
                        sent_ir = true;
                    }
                    self.flush().await?;
                }
                Resp::Tagged {
                    tag: t,
                    kind,
                    code,
                    text,
                } if t == tag => {
                    self.outstanding.remove(&tag);
                    return self.completion(command, kind, code, text);
                }
                Resp::Bye(b) => {
                    return Err(ImapError::Closed {
                        host: self.host.clone(),
                        bye: Some(b),
                    })
                }
                r @ Resp::Tagged { .. } => self.keep_completion(r, command)?,
                _ => {}
            }
        }
    }

    /// Sends a command written by hand (for the few that imap-codec builds differently than
    /// needed here). `line` must not contain CRLF or a literal.
    async fn run_raw(&mut self, line: &str, command: &str) -> Result<Outcome> {
        let tag = self.next_tag();
        self.wbuf.extend_from_slice(tag.as_bytes());
        self.wbuf.push(b' ');
        self.wbuf.extend_from_slice(line.as_bytes());
        self.wbuf.extend_from_slice(b"\r\n");
        self.collect(&tag, command).await
    }

    /// The personal namespace (prefix, delimiter), if the server has NAMESPACE.
    pub async fn namespace(&mut self) -> Result<Option<(String, Option<char>)>> {
        Ok(self
            .namespaces()
            .await?
            .and_then(|ns| ns.personal.into_iter().next()))
    }

    /// All three namespaces (RFC 2342), or None when the server has no NAMESPACE.
    pub async fn namespaces(&mut self) -> Result<Option<crate::imap::response::Namespaces>> {
        if !self.caps.has("NAMESPACE") {
            return Ok(None);
        }
        let out = self.run_raw("NAMESPACE", "NAMESPACE").await?;
        for u in out.untagged {
            if let Untagged::Namespace(ns) = u {
                return Ok(Some(ns));
            }
        }
        Ok(None)
    }

    /// The `* LIST` lines of the last [`Client::list`] that could not be read (a folder
    /// name in raw 8-bit bytes, not modified UTF-7), escaped: those folders are not in
    /// its result, and the caller must say so.
    pub fn unreadable_folders(&self) -> &[String] {
        &self.unreadable_folders
    }

    /// The folder names [`Client::list`] found not to be modified UTF-7 on the wire (raw
    /// UTF-8, or ASCII that does not decode): this session names them to the server by
    /// those exact bytes, never by an encoding of them, which would be another folder.
    pub fn raw_names(&self) -> &std::collections::HashSet<String> {
        &self.raw_names
    }

    /// Every folder, with special-use attributes when the server has them.
    pub async fn list(&mut self) -> Result<Vec<ListedFolder>> {
        let line = if self.caps.has("SPECIAL-USE") && self.caps.has("LIST-EXTENDED") {
            "LIST \"\" \"*\" RETURN (SPECIAL-USE)"
        } else {
            "LIST \"\" \"*\""
        };
        let out = self.run_raw(line, "LIST").await?;
        let mut folders = Vec::new();
        self.unreadable_folders.clear();
        for u in out.untagged {
            if let Untagged::UnreadableList(line) = &u {
                self.unreadable_folders.push(line.clone());
            }
            if let Untagged::List(l) = u {
                let name = if l.name.eq_ignore_ascii_case("INBOX") {
                    "INBOX".to_string()
                } else {
                    match decode_mutf7(&l.name) {
                        Ok(n) => n,
                        // Not modified UTF-7 (raw UTF-8, a stray `&`): the name is the
                        // server's bytes, and commands must send those, not an encoding.
                        Err(_) => {
                            self.raw_names.insert(l.name.clone());
                            l.name
                        }
                    }
                };
                folders.push(ListedFolder {
                    name,
                    delimiter: l.delimiter,
                    attributes: l.attributes,
                });
            }
        }
        Ok(folders)
    }

    fn mailbox(&self, name: &str) -> Result<Mailbox<'static>> {
        if name.eq_ignore_ascii_case("INBOX") {
            return Ok(Mailbox::Inbox);
        }
        // imap-codec sends non-ASCII bytes as a literal, which carries any byte.
        let wire = if self.raw_names.contains(name) {
            name.to_string()
        } else {
            encode_mutf7(name)
        };
        Mailbox::try_from(wire)
            .map_err(|_| ImapError::Unsupported(format!("folder name {name:?} cannot be sent")))
    }

    /// CREATE; an existing folder is not an error.
    pub async fn create(&mut self, name: &str) -> Result<()> {
        let body = CommandBody::create(self.mailbox(name)?)
            .map_err(|_| ImapError::Unsupported(format!("folder name {name:?}")))?;
        match self.run(body, &format!("CREATE {name}")).await {
            Ok(_) => Ok(()),
            Err(ImapError::Refused { code, text, .. })
                if text.to_ascii_lowercase().contains("exist")
                    || matches!(&code, Some(RespCode::Other(c)) if c.to_ascii_lowercase().contains("alreadyexists")) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// SELECT (or EXAMINE when `read_only`).
    pub async fn select(&mut self, name: &str, read_only: bool) -> Result<SelectInfo> {
        let mailbox = self.mailbox(name)?;
        let mut body = if read_only {
            CommandBody::examine(mailbox)
        } else {
            CommandBody::select(mailbox)
        }
        .map_err(|_| ImapError::Unsupported(format!("folder name {name:?}")))?;
        if self.uses_condstore() && !self.caps.has("ENABLE") {
            if let CommandBody::Select { parameters, .. }
            | CommandBody::Examine { parameters, .. } = &mut body
            {
                parameters.push(imap_codec::imap_types::command::SelectParameter::CondStore);
            }
        }
        let verb = if read_only { "EXAMINE" } else { "SELECT" };
        let out = self.run(body, &format!("{verb} {name}")).await?;
        let mut info = SelectInfo::default();
        for u in out.untagged {
            match u {
                Untagged::Exists(n) => info.exists = n,
                Untagged::State {
                    code: Some(code), ..
                } => match code {
                    RespCode::UidValidity(v) => info.uidvalidity = v,
                    RespCode::UidNext(v) => info.uidnext = v,
                    RespCode::HighestModSeq(v) => info.highestmodseq = v,
                    _ => {}
                },
                _ => {}
            }
        }
        if info.uidvalidity == 0 {
            return Err(self.protocol(format!("{verb} {name} gave no UIDVALIDITY")));
        }
        Ok(info)
    }

    /// STATUS (MESSAGES UIDNEXT UIDVALIDITY).
    ///
    /// Dovecot answers `UIDVALIDITY 0` (not valid IMAP, so not decodable) for a folder
    /// that exists only in its configuration so far (an auto-created special-use folder
    /// nobody opened yet); opening it with EXAMINE creates it, and STATUS is asked again.
    pub async fn status(&mut self, name: &str) -> Result<StatusInfo> {
        match self.status_once(name).await {
            Ok(st) if st.uidvalidity != 0 => Ok(st),
            Ok(_) | Err(ImapError::Protocol { .. }) => {
                tracing::debug!(host = %self.host, folder = name, "STATUS without UIDVALIDITY; opening the folder first");
                let info = self.select(name, true).await?;
                let st = self.status_once(name).await?;
                Ok(StatusInfo {
                    uidvalidity: if st.uidvalidity != 0 {
                        st.uidvalidity
                    } else {
                        info.uidvalidity
                    },
                    uidnext: if st.uidnext != 0 {
                        st.uidnext
                    } else {
                        info.uidnext
                    },
                    messages: st.messages,
                })
            }
            Err(e) => Err(e),
        }
    }

    async fn status_once(&mut self, name: &str) -> Result<StatusInfo> {
        let body = CommandBody::status(
            self.mailbox(name)?,
            vec![
                StatusDataItemName::Messages,
                StatusDataItemName::UidNext,
                StatusDataItemName::UidValidity,
            ],
        )
        .map_err(|_| ImapError::Unsupported(format!("folder name {name:?}")))?;
        let out = self.run(body, &format!("STATUS {name}")).await?;
        for u in out.untagged {
            if let Untagged::Status {
                uidnext,
                uidvalidity,
                messages,
                ..
            } = u
            {
                return Ok(StatusInfo {
                    messages: messages.unwrap_or(0),
                    uidvalidity: uidvalidity.unwrap_or(0),
                    uidnext: uidnext.unwrap_or(0),
                });
            }
        }
        Err(self.protocol(format!("STATUS {name} returned no data")))
    }

    /// UID FETCH of UID, FLAGS, INTERNALDATE, RFC822.SIZE (and MODSEQ with CONDSTORE) for
    /// `set` (e.g. `"1:*"`), only messages changed since `changed_since` when given. One
    /// entry per UID (see [`Client::uid_fetch_meta_report`]); responses that could not be
    /// read are logged.
    pub async fn uid_fetch_meta(
        &mut self,
        set: &str,
        changed_since: Option<u64>,
    ) -> Result<Vec<FetchData>> {
        let report = self.uid_fetch_meta_report(set, changed_since).await?;
        for (uid, why) in &report.unreadable {
            tracing::warn!(host = %self.host, ?uid, "FETCH response unreadable: {why}");
        }
        Ok(report.items)
    }

    /// [`Client::uid_fetch_meta`], with the responses that could not be read. A server may
    /// split one message's items over several FETCH responses, or send a flag change in
    /// between: they are merged into one entry per UID, in the order the UIDs first came.
    /// Responses for UIDs outside `set` are ignored.
    pub async fn uid_fetch_meta_report(
        &mut self,
        set: &str,
        changed_since: Option<u64>,
    ) -> Result<MetaFetch> {
        let mut items = vec![
            MessageDataItemName::Uid,
            MessageDataItemName::Flags,
            MessageDataItemName::InternalDate,
            MessageDataItemName::Rfc822Size,
        ];
        let condstore = self.uses_condstore();
        if condstore {
            items.push(MessageDataItemName::ModSeq);
        }
        let seq = SequenceSet::try_from(set)
            .map_err(|_| self.protocol(format!("bad sequence set {set}")))?;
        let mut body = CommandBody::fetch(
            seq,
            MacroOrMessageDataItemNames::MessageDataItemNames(items),
            true,
        )
        .map_err(|_| self.protocol("bad FETCH"))?;
        if let (Some(m), true, CommandBody::Fetch { modifiers, .. }) = (
            changed_since.and_then(NonZeroU64::new),
            condstore,
            &mut body,
        ) {
            modifiers.push(FetchModifier::ChangedSince(m));
        }
        let asked = UidRanges::parse(set);
        let mut merged = Merger::default();
        let tag = match self.send(body).await? {
            Ok(t) => t,
            Err(r) => return Err(self.refusal("UID FETCH", r)),
        };
        self.complete(&tag, "UID FETCH", |u| {
            if let Some((uid, f)) = merged.take(u, |uid| asked.contains(uid)) {
                merged.absorb(uid, f);
            }
            Ok(())
        })
        .await?;
        let (items, unreadable) = merged.finish();
        Ok(MetaFetch { items, unreadable })
    }

    /// UID FETCH of whole messages (BODY.PEEK[], so nothing is marked \Seen), handing each
    /// to `on_message` as it arrives; at most one message is held in memory at a time
    /// (unless the server sends a message's FLAGS or INTERNALDATE apart from its body).
    ///
    /// Each message the callback gets has its BODY[] with the INTERNALDATE and FLAGS the
    /// server sent for it, in the same response or another one (before or after), and
    /// comes once. Responses for UIDs not asked for are ignored. What could not be had is
    /// in the report: responses that could not be read, bodies over the response limit.
    pub async fn uid_fetch_bodies(
        &mut self,
        uids: &[u32],
        on_message: impl FnMut(FetchData) -> Result<()>,
    ) -> Result<FetchReport> {
        let wanted: Vec<(u32, Option<u64>)> = uids.iter().map(|u| (*u, None)).collect();
        self.fetch_bodies(&wanted, on_message).await
    }

    /// [`Client::uid_fetch_bodies`] of messages whose sizes are known (UID, RFC822.SIZE):
    /// a body larger than its message's size is not handed on but reported as too large,
    /// and one larger than every size asked for is not even held in memory (it is read
    /// off the wire and dropped, and the session goes on).
    pub async fn uid_fetch_bodies_sized(
        &mut self,
        wanted: &[(u32, u32)],
        on_message: impl FnMut(FetchData) -> Result<()>,
    ) -> Result<FetchReport> {
        let wanted: Vec<(u32, Option<u64>)> =
            wanted.iter().map(|(u, n)| (*u, Some(*n as u64))).collect();
        self.fetch_bodies(&wanted, on_message).await
    }

    async fn fetch_bodies(
        &mut self,
        wanted: &[(u32, Option<u64>)],
        mut on_message: impl FnMut(FetchData) -> Result<()>,
    ) -> Result<FetchReport> {
        let mut report = FetchReport::default();
        let limits: HashMap<u32, Option<u64>> = wanted.iter().copied().collect();
        let nz: Vec<NonZeroU32> = limits.keys().filter_map(|u| NonZeroU32::new(*u)).collect();
        if nz.is_empty() {
            return Ok(report);
        }
        let seq = SequenceSet::try_from(nz).map_err(|_| self.protocol("empty UID set"))?;
        let items = vec![
            MessageDataItemName::Uid,
            MessageDataItemName::Flags,
            MessageDataItemName::InternalDate,
            MessageDataItemName::BodyExt {
                section: None,
                partial: None,
                peek: true,
            },
        ];
        // No body is held that is larger than every message asked for.
        let largest = limits.values().try_fold(0u64, |m, l| l.map(|l| m.max(l)));
        let body = CommandBody::fetch(
            seq,
            MacroOrMessageDataItemNames::MessageDataItemNames(items),
            true,
        )
        .map_err(|_| self.protocol("bad FETCH"))?;
        let tag = match self.send(body).await? {
            Ok(t) => t,
            Err(r) => return Err(self.refusal("UID FETCH", r)),
        };
        self.frames
            .set_body_limit(largest.map(|l| usize::try_from(l).unwrap_or(usize::MAX)));
        let mut merged = Merger::default();
        let mut done: HashSet<u32> = HashSet::new();
        let mut too_large: Vec<(u32, u64)> = Vec::new();
        // Hands on `f` if it is whole (or `last`), or reports it as too large; true if so.
        let mut deliver = |uid: u32, f: &mut Option<FetchData>, last: bool| -> Result<bool> {
            let Some(m) = f.as_ref() else {
                return Ok(false);
            };
            let limit = limits.get(&uid).copied().flatten();
            let len = m
                .oversized
                .or_else(|| m.body.as_ref().map(|b| b.len() as u64));
            if let (Some(len), true) = (len, m.oversized.is_some()) {
                too_large.push((uid, len));
                return Ok(true);
            }
            if let (Some(len), Some(limit)) = (len, limit) {
                if len > limit {
                    too_large.push((uid, len));
                    return Ok(true);
                }
            }
            let whole = m.body.is_some() && m.flags.is_some() && m.internal_date.is_some();
            if whole || (last && m.body.is_some()) {
                if let Some(m) = f.take() {
                    on_message(m)?;
                }
                return Ok(true);
            }
            Ok(false)
        };
        let result = self
            .complete(&tag, "UID FETCH", |u| {
                let Some((uid, f)) = merged.take(u, |uid| limits.contains_key(&uid)) else {
                    return Ok(());
                };
                if done.contains(&uid) {
                    return Ok(());
                }
                let mut entry = merged.remove(uid);
                match &mut entry {
                    Some(e) => e.absorb(f),
                    None => entry = Some(f),
                }
                if deliver(uid, &mut entry, false)? {
                    done.insert(uid);
                } else if let Some(e) = entry {
                    merged.absorb(uid, e);
                }
                Ok(())
            })
            .await;
        self.frames.set_body_limit(None);
        let result = match result {
            // A refusal (some messages gone) still lets through what did arrive.
            r @ (Ok(_) | Err(ImapError::Refused { .. })) => r,
            Err(e) => return Err(e),
        };
        let (rest, unreadable) = merged.finish();
        for m in rest {
            let Some(uid) = m.uid else { continue };
            if done.contains(&uid) {
                continue;
            }
            let mut entry = Some(m);
            if deliver(uid, &mut entry, true)? {
                done.insert(uid);
            }
        }
        report.too_large = too_large;
        report.unreadable = unreadable
            .into_iter()
            .filter(|(uid, _)| uid.is_none_or(|u| !done.contains(&u)))
            .collect();
        result?;
        Ok(report)
    }

    /// UID FETCH of `items` for `seq`, handing each untagged response to `on` as it
    /// arrives instead of collecting them: how whole messages stay one at a time in memory.
    async fn uid_fetch_each(
        &mut self,
        seq: SequenceSet,
        items: Vec<MessageDataItemName<'static>>,
        on: impl FnMut(Untagged) -> Result<()>,
    ) -> Result<()> {
        let body = CommandBody::fetch(
            seq,
            MacroOrMessageDataItemNames::MessageDataItemNames(items),
            true,
        )
        .map_err(|_| self.protocol("bad FETCH"))?;
        let tag = match self.send(body).await? {
            Ok(t) => t,
            Err(r) => return Err(self.refusal("UID FETCH", r)),
        };
        self.complete(&tag, "UID FETCH", on).await?;
        Ok(())
    }

    /// APPENDs messages to `folder`. With LITERAL+ all of them are written back to back and
    /// the completions read afterwards (one round trip for the batch), as one MULTIAPPEND
    /// command where the server offers it (see [`Client::set_multiappend`]); without
    /// LITERAL+ each waits for the server's go-ahead. Returns one outcome per item, in order. A transport error
    /// is returned as `Err`: the caller then does not know which APPENDs took effect.
    pub async fn append_batch(
        &mut self,
        folder: &str,
        items: &[AppendItem<'_>],
    ) -> Result<Vec<AppendOutcome>> {
        let sent = self.append_send(folder, items).await?;
        self.append_collect(sent).await
    }

    /// True if APPENDs can be sent without waiting for the server between them (LITERAL+),
    /// so that a batch can go out while the answers to the one before are still coming:
    /// see [`Client::append_send`].
    pub fn can_pipeline_appends(&self) -> bool {
        self.literal_plus
    }

    /// True if APPEND can carry a message with NUL bytes unchanged: the server offers
    /// BINARY (RFC 3516, literal8) and LITERAL+ (the only APPEND path that writes its own
    /// literal announcements).
    pub fn can_append_binary(&self) -> bool {
        self.literal_plus && self.caps().has("BINARY")
    }

    /// The first half of [`Client::append_batch`]: sends the APPENDs and returns what
    /// [`Client::append_collect`] needs to read their answers. Answers come in the order
    /// the commands were sent, so with [`Client::can_pipeline_appends`] a caller may send
    /// the next batch before it collects this one.
    pub async fn append_send(
        &mut self,
        folder: &str,
        items: &[AppendItem<'_>],
    ) -> Result<AppendsSent> {
        if self.literal_plus {
            return self.append_send_plus(folder, items).await;
        }
        let mut sent = AppendsSent::with_capacity(items.len());
        for item in items {
            let (flags, date) = match AppendsSent::args(item, false)? {
                Ok(args) => args,
                Err(refusal) => {
                    sent.refused(refusal);
                    continue;
                }
            };
            let mut literal = Literal::unvalidated(item.body);
            literal.set_mode(LiteralMode::Sync);
            let body = CommandBody::append(self.mailbox(folder)?, flags, date, literal)
                .map_err(|_| ImapError::Unsupported(format!("folder name {folder:?}")))?;
            match self.send(body).await? {
                Ok(tag) => sent.sent(tag),
                Err(Resp::Tagged {
                    kind, code, text, ..
                }) => sent.refused(AppendOutcome::Refused { kind, code, text }),
                Err(other) => {
                    return Err(self.protocol(format!("unexpected {other:?} during APPEND")))
                }
            }
            // Keep the write buffer bounded: a batch of big messages is streamed out.
            if self.wbuf.len() > 4 * READ_CHUNK {
                self.flush().await?;
            }
        }
        self.flush().await?;
        Ok(sent)
    }

    /// [`Client::append_send`] with LITERAL+, where nothing waits for the server: each
    /// APPEND is encoded around a one-byte placeholder literal whose announced length is
    /// then set to the message's, and the whole batch is written in one vectored write,
    /// the messages straight from the caller's memory. The encoder would copy every
    /// message, and the write buffer again: 3 % of a copy's CPU.
    ///
    /// With MULTIAPPEND the batch is one command: the first message's APPEND, then for
    /// each further message only its flags, date and literal. A server saves such a
    /// command in one transaction (Dovecot spends about a fifth of the CPU it spends on
    /// single APPENDs into the same folder), and it is atomic: all or none.
    async fn append_send_plus(
        &mut self,
        folder: &str,
        items: &[AppendItem<'_>],
    ) -> Result<AppendsSent> {
        /// A piece of the batch on the wire: encoded command text, or a message of `items`.
        enum Piece {
            Text(Vec<u8>),
            Message(usize),
        }
        fn push_text(pieces: &mut Vec<Piece>, data: &[u8]) {
            match pieces.last_mut() {
                Some(Piece::Text(text)) => text.extend_from_slice(data),
                _ => pieces.push(Piece::Text(data.to_vec())),
            }
        }
        self.flush().await?;
        let mut sent = AppendsSent::with_capacity(items.len());
        let mut args = Vec::with_capacity(items.len());
        let binary = self.can_append_binary();
        for item in items {
            args.push(AppendsSent::args(item, binary)?);
        }
        let together = self.multiappend && args.iter().filter(|a| a.is_ok()).count() > 1;
        let tag = together.then(|| self.next_tag());
        // `TAG APPEND mailbox`, which a MULTIAPPEND's later messages leave out.
        let prefix = match &tag {
            Some(tag) => {
                let (head, _) = self.encode_append(tag, folder, Vec::new(), None)?;
                head[..head.len() - b" {1+}\r\n".len()].to_vec()
            }
            None => Vec::new(),
        };
        let mut pieces: Vec<Piece> = Vec::with_capacity(items.len() * 2 + 1);
        let mut tail = Vec::new();
        let mut first = true;
        for (i, args) in args.into_iter().enumerate() {
            let (flags, date) = match args {
                Ok(args) => args,
                Err(refusal) => {
                    sent.refused(refusal);
                    continue;
                }
            };
            let item = &items[i];
            let own_tag = match &tag {
                Some(t) => t.clone(),
                None => self.next_tag(),
            };
            let (mut head, after) = self.encode_append(&own_tag, folder, flags, date)?;
            if together && !first {
                if !head.starts_with(&prefix) {
                    return Err(self.protocol("MULTIAPPEND encoded with another command head"));
                }
                head.drain(..prefix.len());
            }
            first = false;
            head.truncate(head.len() - PLACEHOLDER.len());
            // A body with NUL goes as a literal8 (RFC 3516; `args` let it through only
            // where the server offers BINARY).
            let eight = if item.body.contains(&0) { "~" } else { "" };
            head.extend_from_slice(format!("{eight}{{{}+}}\r\n", item.body.len()).as_bytes());
            push_text(&mut pieces, &head);
            pieces.push(Piece::Message(i));
            if together {
                tail = after;
                sent.sent_in(&own_tag);
            } else {
                push_text(&mut pieces, &after);
                sent.sent(own_tag);
            }
        }
        push_text(&mut pieces, &tail);
        let parts: Vec<&[u8]> = pieces
            .iter()
            .map(|p| match p {
                Piece::Text(text) => text.as_slice(),
                Piece::Message(i) => items[*i].body,
            })
            .collect();
        self.write_parts(&parts).await?;
        Ok(sent)
    }

    /// One APPEND of a one-byte placeholder literal (`{1+}`), encoded by imap-codec: the
    /// text up to and including the literal's announcement, and the text after the literal.
    fn encode_append(
        &self,
        tag: &str,
        folder: &str,
        flags: Vec<Flag<'_>>,
        date: Option<DateTime>,
    ) -> Result<(Vec<u8>, Vec<u8>)> {
        let mut literal = Literal::unvalidated(&b"x"[..]);
        literal.set_mode(LiteralMode::NonSync);
        let body = CommandBody::append(self.mailbox(folder)?, flags, date, literal)
            .map_err(|_| ImapError::Unsupported(format!("folder name {folder:?}")))?;
        let cmd = Command::new(tag, body).map_err(|_| self.protocol("bad tag"))?;
        let (mut head, mut after, mut seen) = (Vec::new(), Vec::new(), false);
        for fragment in CommandCodec::default().encode(&cmd) {
            match fragment {
                Fragment::Line { data } if seen => after.extend_from_slice(&data),
                Fragment::Line { data } => head.extend_from_slice(&data),
                Fragment::Literal { data, mode } => {
                    if seen || data != b"x" || mode != LiteralMode::NonSync {
                        return Err(self.protocol("APPEND encoded with another literal"));
                    }
                    seen = true;
                }
            }
        }
        if !seen || !head.ends_with(PLACEHOLDER) {
            return Err(self.protocol("APPEND encoded without its literal"));
        }
        Ok((head, after))
    }

    /// The second half of [`Client::append_batch`]: reads the answers to the APPENDs of
    /// `sent`, one outcome per item, in order. The server may complete the commands in
    /// any order (RFC 3501 §5.5): each completion is matched to its command by its tag.
    pub async fn append_collect(&mut self, sent: AppendsSent) -> Result<Vec<AppendOutcome>> {
        let AppendsSent { commands, early } = sent;
        self.partial_outcomes.clear();
        self.partial_answers.clear();
        // Per command: its messages' outcomes, None where unknown (after a failure).
        let mut answers: Vec<Option<Vec<AppendOutcome>>> = Vec::with_capacity(commands.len());
        let mut failure = None;
        for (tag, n) in &commands {
            let n = *n;
            if failure.is_some() {
                // A completion that arrived before the failure is still a fact.
                answers.push(match self.take_completion(tag) {
                    Some(Resp::Tagged {
                        kind, code, text, ..
                    }) => Some(append_answer(kind, code, text, n)),
                    _ => None,
                });
                continue;
            }
            match self.complete(tag, "APPEND", |_| Ok(())).await {
                Ok(out) => answers.push(Some(appended(out.code, n))),
                Err(ImapError::Refused {
                    kind, code, text, ..
                }) => answers.push(Some(append_answer(kind, code, text, n))),
                Err(e) => {
                    failure = Some(e);
                    answers.push(None);
                }
            }
        }
        // Hand the commands' outcomes out to the items that went out, in order.
        let mut per_item: Vec<Option<AppendOutcome>> = Vec::with_capacity(early.len());
        let mut commands = commands.iter().zip(answers);
        let mut current: Option<(usize, Option<std::vec::IntoIter<AppendOutcome>>)> = None;
        for early in early {
            if let Some(o) = early {
                per_item.push(Some(o));
                continue;
            }
            if current.as_ref().is_none_or(|(left, _)| *left == 0) {
                let Some(((_, n), a)) = commands.next() else {
                    return Err(self.protocol("APPEND answers and messages do not pair up"));
                };
                current = Some((*n, a.map(Vec::into_iter)));
            }
            let Some((left, outcomes)) = current.as_mut() else {
                return Err(self.protocol("APPEND answers and messages do not pair up"));
            };
            *left -= 1;
            match outcomes {
                Some(o) => match o.next() {
                    Some(o) => per_item.push(Some(o)),
                    None => return Err(self.protocol("an APPEND command without messages")),
                },
                None => per_item.push(None),
            }
        }
        if let Some(e) = failure {
            // Keep what is known (e.g. Exchange's `BAD ... throttled` just before its
            // `* BYE`) for the caller; the rest is uncertain.
            self.partial_outcomes = per_item.iter().map_while(Clone::clone).collect();
            self.partial_answers = per_item;
            return Err(e);
        }
        per_item
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| self.protocol("an APPEND without an answer"))
    }

    /// After [`Client::append_batch`] returned an error: the outcomes of the first items of
    /// that batch, which the server answered before the error (the others are unknown).
    pub fn take_partial_outcomes(&mut self) -> Vec<AppendOutcome> {
        std::mem::take(&mut self.partial_outcomes)
    }

    /// After [`Client::append_batch`] or [`Client::append_collect`] returned an error: one
    /// entry per item of that batch, the outcome where the server answered it before the
    /// error, None where it is unknown. Unlike [`Client::take_partial_outcomes`] this also
    /// has the answers that came ahead of the failed one (completions out of order).
    pub fn take_partial_answers(&mut self) -> Vec<Option<AppendOutcome>> {
        std::mem::take(&mut self.partial_answers)
    }

    /// Replaces the flags of one message (UID STORE ... FLAGS.SILENT).
    pub async fn uid_store_flags(&mut self, uid: u32, flags: &[String]) -> Result<()> {
        let flags: Vec<Flag<'_>> = flags
            .iter()
            .filter(|f| !f.eq_ignore_ascii_case("\\recent"))
            .filter_map(|f| Flag::try_from(f.as_str()).ok())
            .collect();
        let body = CommandBody::store(uid, StoreType::Replace, StoreResponse::Silent, flags, true)
            .map_err(|_| self.protocol("bad UID"))?;
        self.run(body, "UID STORE").await?;
        Ok(())
    }

    /// Adds `flags` to the messages `uids` of the selected folder (UID STORE set
    /// +FLAGS.SILENT (flags)); other flags are left alone.
    pub async fn uid_add_flags(&mut self, uids: &[u32], flags: &[&str]) -> Result<()> {
        if uids.is_empty() {
            return Ok(());
        }
        let flags: Vec<Flag<'_>> = flags
            .iter()
            .map(|f| Flag::try_from(*f).map_err(|_| self.protocol(format!("bad flag {f}"))))
            .collect::<Result<_>>()?;
        let set = uid_set(uids);
        let seq = SequenceSet::try_from(set.as_str())
            .map_err(|_| self.protocol(format!("bad UID set {set}")))?;
        let body = CommandBody::store(seq, StoreType::Add, StoreResponse::Silent, flags, true)
            .map_err(|_| self.protocol("bad UID set"))?;
        self.run(body, "UID STORE").await?;
        Ok(())
    }

    /// Every UID of the selected folder (UID SEARCH ALL), ascending. Unlike a FETCH with
    /// CHANGEDSINCE, this shows which messages are gone.
    pub async fn uid_search_all(&mut self) -> Result<Vec<u32>> {
        let out = self.run_raw("UID SEARCH ALL", "UID SEARCH").await?;
        let mut uids: Vec<u32> = out
            .untagged
            .into_iter()
            .filter_map(|u| match u {
                Untagged::Search(v) => Some(v),
                _ => None,
            })
            .flatten()
            .collect();
        uids.sort_unstable();
        uids.dedup();
        Ok(uids)
    }

    /// The UIDs of the selected folder's messages whose header `field` contains `value`
    /// (UID SEARCH HEADER), ascending: how a message appended without APPENDUID is found
    /// again, by a Message-ID made unique for it.
    pub async fn uid_search_header(&mut self, field: &str, value: &str) -> Result<Vec<u32>> {
        let plain = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
        };
        if !plain(field) || field.contains(' ') || !plain(value) {
            return Err(self.protocol(format!("cannot search for header {field:?} {value:?}")));
        }
        let line = format!("UID SEARCH HEADER {field} \"{value}\"");
        let out = self.run_raw(&line, "UID SEARCH").await?;
        let mut uids: Vec<u32> = out
            .untagged
            .into_iter()
            .filter_map(|u| match u {
                Untagged::Search(v) => Some(v),
                _ => None,
            })
            .flatten()
            .collect();
        uids.sort_unstable();
        uids.dedup();
        Ok(uids)
    }

    /// Expunges exactly the messages `uids` of the selected folder, if they carry
    /// `\Deleted` (UID EXPUNGE, RFC 4315). Without UIDPLUS this is refused: a plain
    /// EXPUNGE would also remove every other message marked `\Deleted` in the folder (by
    /// the user, or copied so from the source).
    pub async fn uid_expunge(&mut self, uids: &[u32]) -> Result<()> {
        if uids.is_empty() {
            return Ok(());
        }
        self.require_uidplus()?;
        let set = uid_set(uids);
        let seq = SequenceSet::try_from(set.as_str())
            .map_err(|_| self.protocol(format!("bad UID set {set}")))?;
        self.run(CommandBody::ExpungeUid { sequence_set: seq }, "UID EXPUNGE")
            .await?;
        Ok(())
    }

    /// Deletes exactly the messages `uids` of the selected folder (opened read-write):
    /// `\Deleted` is added to them, then they alone are expunged with UID EXPUNGE.
    /// Refused up front, before anything is marked, when the server lacks UIDPLUS. UIDs
    /// that no longer exist are ignored by the server, so a repeat is harmless.
    pub async fn uid_delete(&mut self, uids: &[u32]) -> Result<()> {
        if uids.is_empty() {
            return Ok(());
        }
        self.require_uidplus()?;
        self.uid_add_flags(uids, &["\\Deleted"]).await?;
        self.uid_expunge(uids).await
    }

    fn require_uidplus(&self) -> Result<()> {
        if self.caps.has("UIDPLUS") {
            return Ok(());
        }
        Err(ImapError::Unsupported(format!(
            "{} does not offer UIDPLUS (UID EXPUNGE): cannot delete single messages without \
             risking others marked \\Deleted, so nothing is deleted",
            self.host
        )))
    }

    /// Fetches (UID, BODY.PEEK[]) of `set` and returns (uid, `hash(body)`) pairs: how the
    /// upstream recognises its own earlier APPENDs without adding anything to the message.
    pub async fn uid_hashes(
        &mut self,
        set: &str,
        hash: impl Fn(&[u8]) -> [u8; 32],
    ) -> Result<Vec<(u32, [u8; 32])>> {
        let seq = SequenceSet::try_from(set)
            .map_err(|_| self.protocol(format!("bad sequence set {set}")))?;
        let items = vec![
            MessageDataItemName::Uid,
            MessageDataItemName::BodyExt {
                section: None,
                partial: None,
                peek: true,
            },
        ];
        let mut out = Vec::new();
        self.uid_fetch_each(seq, items, |u| {
            if let Untagged::Fetch(FetchData {
                uid: Some(uid),
                body: Some(b),
                ..
            }) = u
            {
                out.push((uid, hash(&b)));
            }
            Ok(())
        })
        .await?;
        Ok(out)
    }

    /// UID, FLAGS, INTERNALDATE and the header fields `fields` (BODY.PEEK[HEADER.FIELDS
    /// (...)], in `section`) of every message of `set`: what survives a server that stores
    /// mail in its own format and renders it again on FETCH, so that the upstream can
    /// recognise its own earlier APPENDs there. Nothing is marked \Seen. `fields` must be
    /// plain header names (atoms).
    pub async fn uid_fetch_header_fields(
        &mut self,
        set: &str,
        fields: &[&str],
    ) -> Result<Vec<FetchData>> {
        let line = format!(
            "UID FETCH {set} (UID FLAGS INTERNALDATE BODY.PEEK[HEADER.FIELDS ({})])",
            fields.join(" ")
        );
        let tag = self.next_tag();
        self.wbuf.extend_from_slice(tag.as_bytes());
        self.wbuf.push(b' ');
        self.wbuf.extend_from_slice(line.as_bytes());
        self.wbuf.extend_from_slice(b"\r\n");
        let mut out: Vec<FetchData> = Vec::new();
        self.complete(&tag, "UID FETCH", |u| {
            if let Untagged::Fetch(f) = u {
                if f.uid.is_some() {
                    out.push(f);
                }
            }
            Ok(())
        })
        .await?;
        Ok(out)
    }

    /// The Subject header of each of `uids` (UID FETCH BODY.PEEK[HEADER.FIELDS (SUBJECT)]),
    /// unfolded and with RFC 2047 encoded words decoded where the charset is known; for
    /// reporting messages that are not copied. Nothing is marked \Seen.
    pub async fn uid_fetch_subjects(&mut self, uids: &[u32]) -> Result<Vec<(u32, String)>> {
        if uids.is_empty() {
            return Ok(Vec::new());
        }
        // Runs collapsed: the oversized UIDs of a folder are often consecutive, and one
        // UID per item would make the line as long as the list.
        let line = format!(
            "UID FETCH {} (UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])",
            uid_set(uids)
        );
        let out = self.run_raw(&line, "UID FETCH").await?;
        Ok(out
            .untagged
            .into_iter()
            .filter_map(|u| match u {
                Untagged::Fetch(FetchData {
                    uid: Some(uid),
                    section: Some(h),
                    ..
                }) => Some((
                    uid,
                    super::response::header_value(&h, "subject").unwrap_or_default(),
                )),
                _ => None,
            })
            .collect())
    }

    /// NOOP, to keep a session alive or to see new mail.
    pub async fn noop(&mut self) -> Result<()> {
        self.run(CommandBody::Noop, "NOOP").await.map(|_| ())
    }

    /// LOGOUT; errors are ignored since the session is over either way.
    pub async fn logout(mut self) {
        let _ = self.run(CommandBody::Logout, "LOGOUT").await;
        let _ = self.stream.shutdown().await;
    }

    pub fn is_tls(&self) -> bool {
        self.stream.is_tls()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_lines_with_raw_utf8_names_are_read_by_hand() {
        let l = parse_raw_list("* LIST (\\HasNoChildren) \".\" \"INBOX.Entwürfe\"\r\n".as_bytes())
            .unwrap();
        assert_eq!(l.name, "INBOX.Entwürfe");
        assert_eq!(l.delimiter, Some('.'));
        assert_eq!(l.attributes, ["\\hasnochildren"]);
        let l = parse_raw_list("* LIST () NIL Entwürfe\r\n".as_bytes()).unwrap();
        assert_eq!((l.name.as_str(), l.delimiter), ("Entwürfe", None));
        let l = parse_raw_list(b"* LIST () \"\\\\\" \"a\\\"b\xc3\xbc\"\r\n").unwrap();
        assert_eq!((l.name.as_str(), l.delimiter), ("a\"bü", Some('\\')));
        // Not UTF-8, or not the whole line: left to the caller to report.
        assert!(parse_raw_list(b"* LIST () \".\" \"INBOX.Entw\xfcrfe\"\r\n").is_none());
        assert!(parse_raw_list("* LIST () \".\" \"Entwürfe\" junk\r\n".as_bytes()).is_none());
        assert!(parse_raw_list("* LIST () \".\" {9}\r\n".as_bytes()).is_none());
    }
    use crate::secret::Secret;
    use tokio::io::{AsyncBufReadExt, BufReader, DuplexStream, ReadHalf, WriteHalf};

    /// How long any step of a scripted session may take: the tests never wait on a clock
    /// otherwise, so this only bounds a test that went wrong.
    const STEP: Duration = Duration::from_secs(5);

    /// The server's end of a session under test: reads the client's commands and writes
    /// exactly the bytes a test gives.
    pub(super) struct Peer {
        r: BufReader<ReadHalf<DuplexStream>>,
        w: WriteHalf<DuplexStream>,
    }

    impl Peer {
        pub(super) async fn send(&mut self, bytes: &[u8]) {
            tokio::time::timeout(STEP, self.w.write_all(bytes))
                .await
                .expect("client reads in time")
                .expect("client connected");
        }

        /// One command of the client with its literals (a synchronizing literal gets its
        /// go-ahead), as text.
        pub(super) async fn command(&mut self) -> String {
            let mut out = Vec::new();
            loop {
                let mut line = Vec::new();
                let n = tokio::time::timeout(STEP, self.r.read_until(b'\n', &mut line))
                    .await
                    .expect("client command in time")
                    .expect("client connected");
                assert!(n > 0, "the client closed the connection");
                out.extend_from_slice(&line);
                let Some(len) = super::super::framer::literal_len(&line[..line.len() - 1]) else {
                    break;
                };
                if !line.ends_with(b"+}\r\n") {
                    self.send(b"+ go ahead\r\n").await;
                }
                let mut lit = vec![0; len];
                tokio::time::timeout(STEP, self.r.read_exact(&mut lit))
                    .await
                    .expect("literal in time")
                    .expect("client connected");
                out.extend_from_slice(&lit);
            }
            String::from_utf8_lossy(&out).into_owned()
        }

        /// The next command, which must start with `start`.
        pub(super) async fn expect(&mut self, start: &str) -> String {
            let c = self.command().await;
            assert!(c.starts_with(start), "expected {start:?}, got {c:?}");
            c
        }
    }

    /// A client over an in-memory stream whose server side says `greeting`.
    pub(super) async fn session(greeting: &[u8]) -> (Client, Peer) {
        session_limited(greeting, 1 << 20).await
    }

    pub(super) async fn session_limited(greeting: &[u8], max: u32) -> (Client, Peer) {
        let (client, server) = tokio::io::duplex(1 << 20);
        let (r, w) = tokio::io::split(server);
        let mut peer = Peer {
            r: BufReader::new(r),
            w,
        };
        peer.send(greeting).await;
        let c = Client::from_stream(client, "imap.test", STEP, max)
            .await
            .expect("greeting read");
        (c, peer)
    }

    const PLUS: &[u8] = b"* OK [CAPABILITY IMAP4rev1 LITERAL+ UIDPLUS] ready\r\n";

    fn item(body: &[u8]) -> AppendItem<'_> {
        AppendItem {
            flags: &[],
            internal_date: None,
            body,
        }
    }

    /// Pipelined APPENDs completed in another order than they were sent: each outcome
    /// still belongs to its own message.
    #[tokio::test]
    async fn appends_completed_out_of_order() {
        let (mut c, mut peer) = session(PLUS).await;
        let items = [item(b"one\r\n"), item(b"two\r\n"), item(b"three\r\n")];
        let server = async {
            for tag in ["c1", "c2", "c3"] {
                peer.expect(&format!("{tag} APPEND INBOX")).await;
            }
            peer.send(
                b"c3 OK [APPENDUID 7 103] done\r\nc1 NO [OVERQUOTA] full\r\n\
                  c2 OK [APPENDUID 7 102] done\r\n",
            )
            .await;
        };
        let (got, ()) = tokio::join!(c.append_batch("INBOX", &items), server);
        assert_eq!(
            got.expect("batch answered"),
            vec![
                AppendOutcome::Refused {
                    kind: Kind::No,
                    code: Some(RespCode::Other("OVERQUOTA".into())),
                    text: "full".into()
                },
                AppendOutcome::Appended {
                    uidvalidity: 7,
                    uid: 102
                },
                AppendOutcome::Appended {
                    uidvalidity: 7,
                    uid: 103
                },
            ]
        );
        // The session is still in step.
        let server = async {
            peer.expect("c4 NOOP").await;
            peer.send(b"c4 OK done\r\n").await;
        };
        let (r, ()) = tokio::join!(c.noop(), server);
        r.expect("NOOP");
    }

    /// Two batches in flight: the second one's answers arrive first, and are kept for
    /// when it is collected.
    #[tokio::test]
    async fn a_later_batch_answered_first() {
        let (mut c, mut peer) = session(PLUS).await;
        let first = [item(b"a\r\n"), item(b"b\r\n")];
        let second = [item(b"c\r\n")];
        let a = c.append_send("INBOX", &first).await.expect("sent");
        let b = c.append_send("INBOX", &second).await.expect("sent");
        for tag in ["c1", "c2", "c3"] {
            peer.expect(&format!("{tag} APPEND")).await;
        }
        peer.send(
            b"c3 OK [APPENDUID 9 3] x\r\nc2 OK [APPENDUID 9 2] x\r\nc1 OK [APPENDUID 9 1] x\r\n",
        )
        .await;
        let uid = |uid| AppendOutcome::Appended {
            uidvalidity: 9,
            uid,
        };
        assert_eq!(c.append_collect(a).await.unwrap(), vec![uid(1), uid(2)]);
        assert_eq!(c.append_collect(b).await.unwrap(), vec![uid(3)]);
    }

    /// A BYE after some completions that came out of order: what was answered is known,
    /// per message, the rest is not.
    #[tokio::test]
    async fn answers_ahead_of_a_failure_are_kept() {
        let (mut c, mut peer) = session(PLUS).await;
        let items = [item(b"a\r\n"), item(b"b\r\n"), item(b"c\r\n")];
        let server = async {
            for _ in 0..3 {
                peer.command().await;
            }
            peer.send(b"c2 OK [APPENDUID 9 2] x\r\n* BYE going away\r\n")
                .await;
        };
        let (got, ()) = tokio::join!(c.append_batch("INBOX", &items), server);
        assert!(matches!(got, Err(ImapError::Closed { .. })), "{got:?}");
        assert_eq!(
            c.take_partial_answers(),
            vec![
                None,
                Some(AppendOutcome::Appended {
                    uidvalidity: 9,
                    uid: 2
                }),
                None
            ]
        );
        assert_eq!(c.take_partial_outcomes(), vec![]);
    }

    /// Exchange's BYE for an expired token, then the connection closes: the error carries
    /// the BYE text and says a new token is needed.
    #[tokio::test]
    async fn bye_for_an_expired_token() {
        let (mut c, mut peer) = session(PLUS).await;
        let server = async {
            peer.expect("c1 NOOP").await;
            peer.send(b"* BYE Session invalidated - AccessTokenExpired\r\n")
                .await;
            drop(peer);
        };
        let (r, ()) = tokio::join!(c.noop(), server);
        let e = r.unwrap_err();
        assert!(
            matches!(&e, ImapError::Closed { bye: Some(b), .. } if b.contains("AccessTokenExpired")),
            "{e:?}"
        );
        assert!(e.is_token_expired() && e.is_transient());
    }

    const DATE: &str = "\"01-Jan-2024 10:00:00 +0000\"";

    fn meta_line(body: &str) -> Vec<u8> {
        body.replace("@D", DATE).into_bytes()
    }

    /// A message's items split over several FETCH responses, and a flag change (without
    /// UID) in between: one entry per UID, with everything the server said about it.
    #[tokio::test]
    async fn meta_responses_for_one_uid_are_merged() {
        let (mut c, mut peer) = session(PLUS).await;
        let server = async {
            peer.expect("c1 UID FETCH 1:* (UID FLAGS INTERNALDATE RFC822.SIZE)")
                .await;
            peer.send(&meta_line(
                "* 1 FETCH (UID 5 FLAGS (\\Seen))\r\n\
                 * 2 FETCH (UID 6 FLAGS () INTERNALDATE @D RFC822.SIZE 20)\r\n\
                 * 1 FETCH (UID 5 INTERNALDATE @D RFC822.SIZE 10)\r\n\
                 * 1 FETCH (FLAGS (\\Seen \\Flagged))\r\n\
                 c1 OK done\r\n",
            ))
            .await;
        };
        let (r, ()) = tokio::join!(c.uid_fetch_meta("1:*", None), server);
        let items = r.expect("fetched");
        assert_eq!(items.len(), 2, "{items:?}");
        assert_eq!(items[0].uid, Some(5));
        assert_eq!(
            items[0].flags,
            Some(vec!["\\Seen".to_string(), "\\Flagged".to_string()])
        );
        assert_eq!(items[0].size, Some(10));
        assert!(items[0].internal_date.is_some());
        assert_eq!((items[1].uid, items[1].size), (Some(6), Some(20)));
        // Unsolicited data for a UID outside the set asked for is not an entry.
        let server = async {
            peer.expect("c2 UID FETCH 1:4 ").await;
            peer.send(&meta_line(
                "* 3 FETCH (UID 9 FLAGS (\\Seen))\r\n\
                 * 1 FETCH (UID 4 FLAGS () INTERNALDATE @D RFC822.SIZE 3)\r\nc2 OK done\r\n",
            ))
            .await;
        };
        let (r, ()) = tokio::join!(c.uid_fetch_meta("1:4", None), server);
        let uids: Vec<_> = r.unwrap().iter().map(|m| m.uid).collect();
        assert_eq!(uids, vec![Some(4)]);
    }

    /// Bodies whose FLAGS and INTERNALDATE come in another response, before or after:
    /// the callback gets each message once, whole; UIDs not asked for are ignored.
    #[tokio::test]
    async fn body_items_from_several_responses_come_together() {
        let (mut c, mut peer) = session(PLUS).await;
        let server = async {
            peer.expect("c1 UID FETCH 9:10 (UID FLAGS INTERNALDATE BODY.PEEK[])")
                .await;
            peer.send(&meta_line(
                "* 5 FETCH (UID 9 FLAGS (\\Seen))\r\n\
                 * 5 FETCH (UID 9 BODY[] {5}\r\nhello INTERNALDATE @D)\r\n\
                 * 6 FETCH (UID 10 BODY[] {3}\r\nabc)\r\n\
                 * 7 FETCH (UID 11 FLAGS (\\Seen) BODY[] {1}\r\nx INTERNALDATE @D)\r\n\
                 * 6 FETCH (UID 10 FLAGS (\\Answered) INTERNALDATE @D)\r\n\
                 * 5 FETCH (FLAGS (\\Seen \\Deleted))\r\n\
                 c1 OK done\r\n",
            ))
            .await;
        };
        let mut got = Vec::new();
        let fetch = c.uid_fetch_bodies(&[9, 10], |f| {
            got.push(f);
            Ok(())
        });
        let (r, ()) = tokio::join!(fetch, server);
        assert_eq!(r.expect("fetched"), FetchReport::default());
        assert_eq!(got.len(), 2, "{got:?}");
        let summary: Vec<_> = got
            .iter()
            .map(|f| {
                (
                    f.uid,
                    f.body.clone(),
                    f.flags.clone(),
                    f.internal_date.is_some(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (
                    Some(9),
                    Some(b"hello".to_vec()),
                    Some(vec!["\\Seen".to_string()]),
                    true
                ),
                (
                    Some(10),
                    Some(b"abc".to_vec()),
                    Some(vec!["\\Answered".to_string()]),
                    true
                ),
            ]
        );
    }

    /// A FETCH response the decoder refuses names its message (UID from the raw bytes)
    /// in the result, and the session goes on.
    #[tokio::test]
    async fn unreadable_fetch_responses_are_reported() {
        let (mut c, mut peer) = session(PLUS).await;
        let server = async {
            peer.expect("c1 UID FETCH").await;
            peer.send(&meta_line(
                "* 1 FETCH (UID 5 FLAGS (\\Seen) INTERNALDATE \"31-Foo-2024 10:00:00 +0000\" \
                 RFC822.SIZE 10)\r\n\
                 * 2 FETCH (UID 6 FLAGS () INTERNALDATE @D RFC822.SIZE 20)\r\nc1 OK done\r\n",
            ))
            .await;
            peer.expect("c2 UID FETCH 6:7 ").await;
            peer.send(&meta_line(
                "* 2 FETCH (UID 6 BODY[] {3}\r\nabc FLAGS () INTERNALDATE \"bad\")\r\n\
                 * 3 FETCH (UID 7 BODY[] {3}\r\nxyz FLAGS () INTERNALDATE @D)\r\nc2 OK done\r\n",
            ))
            .await;
            peer.expect("c3 NOOP").await;
            peer.send(b"c3 OK done\r\n").await;
        };
        let client = async {
            let meta = c.uid_fetch_meta_report("1:*", None).await.expect("meta");
            let mut bodies = Vec::new();
            let report = c
                .uid_fetch_bodies(&[6, 7], |f| {
                    bodies.push(f.uid);
                    Ok(())
                })
                .await
                .expect("bodies");
            c.noop().await.expect("still in step");
            (meta, report, bodies)
        };
        let ((meta, report, bodies), ()) = tokio::join!(client, server);
        assert_eq!(meta.items.len(), 1);
        assert_eq!(meta.unreadable.len(), 1, "{:?}", meta.unreadable);
        assert_eq!(meta.unreadable[0].0, Some(5));
        assert!(
            meta.unreadable[0].1.contains("31-Foo-2024"),
            "{:?}",
            meta.unreadable
        );
        assert_eq!(bodies, vec![Some(7)]);
        assert_eq!(report.unreadable.len(), 1);
        assert_eq!(report.unreadable[0].0, Some(6));
        assert!(report.too_large.is_empty());
    }

    /// Bodies larger than their RFC822.SIZE, or than the response limit, are reported as
    /// too large and not handed on; the session stays in step for the next message and
    /// command.
    #[tokio::test]
    async fn oversized_bodies_are_skipped_and_reported() {
        let (mut c, mut peer) = session_limited(PLUS, 64 * 1024).await;
        let huge = vec![b'x'; 200_000];
        let server = async {
            peer.expect("c1 UID FETCH 7:9 ").await;
            let mut wire = format!("* 1 FETCH (UID 7 BODY[] {{{}}}\r\n", huge.len()).into_bytes();
            wire.extend_from_slice(&huge);
            wire.extend_from_slice(&meta_line(
                " FLAGS () INTERNALDATE @D)\r\n\
                 * 2 FETCH (UID 8 BODY[] {6}\r\nabcdef FLAGS () INTERNALDATE @D)\r\n\
                 * 3 FETCH (UID 9 BODY[] {10}\r\n0123456789 FLAGS () INTERNALDATE @D)\r\n\
                 c1 OK done\r\n",
            ));
            peer.send(&wire).await;
            // Without sizes: only the response limit applies.
            peer.expect("c2 UID FETCH 7:8 ").await;
            let mut wire = format!("* 1 FETCH (UID 7 BODY[] {{{}}}\r\n", huge.len()).into_bytes();
            wire.extend_from_slice(&huge);
            wire.extend_from_slice(&meta_line(
                " FLAGS () INTERNALDATE @D)\r\n\
                 * 2 FETCH (UID 8 BODY[] {6}\r\nabcdef FLAGS () INTERNALDATE @D)\r\n\
                 c2 OK done\r\n",
            ));
            peer.send(&wire).await;
            peer.expect("c3 NOOP").await;
            peer.send(b"c3 OK done\r\n").await;
        };
        let client = async {
            let mut got = Vec::new();
            let sized = c
                .uid_fetch_bodies_sized(&[(7, 3), (8, 3), (9, 10)], |f| {
                    got.push((f.uid, f.body.map(|b| b.len())));
                    Ok(())
                })
                .await
                .expect("sized");
            let mut got2 = Vec::new();
            let plain = c
                .uid_fetch_bodies(&[7, 8], |f| {
                    got2.push((f.uid, f.body.map(|b| b.len())));
                    Ok(())
                })
                .await
                .expect("unsized");
            c.noop().await.expect("still in step");
            (sized, got, plain, got2)
        };
        let ((sized, got, plain, got2), ()) = tokio::join!(client, server);
        assert_eq!(sized.too_large, vec![(7, 200_000), (8, 6)]);
        assert_eq!(got, vec![(Some(9), Some(10))]);
        assert_eq!(plain.too_large, vec![(7, 200_000)]);
        assert_eq!(got2, vec![(Some(8), Some(6))]);
    }

    /// The session's password, and the base64 it was sent in, never come back in a
    /// refusal or BYE text the client returns.
    #[tokio::test]
    async fn server_texts_are_scrubbed_of_the_credentials() {
        let (mut c, mut peer) =
            session(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR LITERAL+] ready\r\n").await;
        let creds = Credentials::Plain {
            authzid: Some("alice".into()),
            authcid: "admin".into(),
            password: Secret::new("s3cret-pw"),
        };
        let server = async {
            let cmd = peer.expect("c1 AUTHENTICATE PLAIN ").await;
            let b64 = cmd.trim_end().rsplit(' ').next().unwrap().to_string();
            peer.send(
                format!("c1 NO [AUTHENTICATIONFAILED] no s3cret-pw; response was {b64}\r\n")
                    .as_bytes(),
            )
            .await;
        };
        let (r, ()) = tokio::join!(c.login(&creds), server);
        let e = r.unwrap_err();
        let text = format!("{e} {e:?}");
        assert!(matches!(e, ImapError::Auth { .. }), "{text}");
        assert!(text.contains("***"), "{text}");
        assert!(
            !text.contains("s3cret") && !text.contains("czNjcmV0"),
            "{text}"
        );
        assert!(!text.contains("AGFkbWlu"), "the whole response: {text}");

        // Logged in with LOGIN: an APPEND refusal and a BYE that quote the password.
        let (mut c, mut peer) = session(PLUS).await;
        let creds = Credentials::Login {
            user: "alice".into(),
            password: Secret::new("s3cret-pw"),
        };
        let server = async {
            peer.expect("c1 LOGIN").await;
            peer.send(b"c1 OK [CAPABILITY IMAP4rev1 LITERAL+] in\r\n")
                .await;
            peer.expect("c2 APPEND").await;
            peer.send(b"c2 NO [CANNOT] refused for \"s3cret-pw\"\r\n")
                .await;
            peer.expect("c3 NOOP").await;
            peer.send(b"* BYE s3cret-pw is wrong\r\n").await;
        };
        let client = async {
            c.login(&creds).await.expect("logged in");
            let out = c.append_batch("INBOX", &[item(b"x\r\n")]).await;
            let bye = c.noop().await.unwrap_err();
            (out, bye)
        };
        let ((out, bye), ()) = tokio::join!(client, server);
        let text = format!("{out:?} {bye} {bye:?}");
        assert!(!text.contains("s3cret"), "{text}");
        let refusal = match out {
            Ok(o) => o,
            Err(e) => panic!("{e:?}"),
        };
        assert_eq!(
            refusal,
            vec![AppendOutcome::Refused {
                kind: Kind::No,
                code: Some(RespCode::Other("CANNOT".into())),
                text: "refused for \"***\"".into()
            }]
        );
        assert!(text.contains("*** is wrong"), "{text}");
    }

    /// XOAUTH2 without SASL-IR: a piece of the base64 response quoted back is scrubbed.
    #[tokio::test]
    async fn a_quoted_piece_of_the_sasl_response_is_scrubbed() {
        let (mut c, mut peer) =
            session(b"* OK [CAPABILITY IMAP4rev1 AUTH=XOAUTH2] ready\r\n").await;
        let creds = Credentials::XOAuth2 {
            user: "alice@example.test".into(),
            token: Secret::new("eyJ0eXAiOiJKV1QiLCJhbGciOi.token-body"),
        };
        let server = async {
            peer.expect("c1 AUTHENTICATE XOAUTH2").await;
            peer.send(b"+ \r\n").await;
            let b64 = peer.command().await.trim_end().to_string();
            peer.send(format!("c1 BAD cannot use ...{}\r\n", &b64[5..]).as_bytes())
                .await;
        };
        let (r, ()) = tokio::join!(c.login(&creds), server);
        let text = format!("{:?}", r.unwrap_err());
        assert!(text.contains("***"), "{text}");
        let token = base64::engine::general_purpose::STANDARD.encode("eyJ0eXAiOiJKV1QiLCJhbGciOi");
        assert!(!text.contains(&token[4..12]), "{text}");
    }

    /// A completion for a tag that was never sent is still a protocol error.
    #[tokio::test]
    async fn completion_of_an_unknown_tag() {
        let (mut c, mut peer) = session(PLUS).await;
        let server = async {
            peer.expect("c1 NOOP").await;
            peer.send(b"c9 OK what\r\n").await;
        };
        let (r, ()) = tokio::join!(c.noop(), server);
        assert!(matches!(r, Err(ImapError::Protocol { .. })), "{r:?}");
    }

    /// A server that advertises ID and CONDSTORE but refuses `ID` and `ENABLE`: the login
    /// stands, and mod-sequences are not asked for afterwards.
    #[tokio::test]
    async fn refused_id_and_enable_do_not_fail_the_login() {
        let (mut c, mut peer) =
            session(b"* OK [CAPABILITY IMAP4rev1 ID ENABLE CONDSTORE LITERAL+] ready\r\n").await;
        let creds = Credentials::Login {
            user: "u".into(),
            password: Secret::new("pw"),
        };
        let server = async {
            peer.expect("c1 LOGIN").await;
            peer.send(b"c1 OK [CAPABILITY IMAP4rev1 ID ENABLE CONDSTORE LITERAL+] in\r\n")
                .await;
            peer.expect("c2 ID (").await;
            peer.send(b"c2 BAD Unknown command\r\n").await;
            peer.expect("c3 ENABLE CONDSTORE").await;
            peer.send(b"c3 NO Not now\r\n").await;
        };
        let (r, ()) = tokio::join!(c.login(&creds), server);
        r.expect("logged in");
        assert!(!c.uses_condstore());
        let server = async {
            let cmd = peer.command().await;
            assert_eq!(
                cmd,
                "c4 UID FETCH 1:* (UID FLAGS INTERNALDATE RFC822.SIZE)\r\n"
            );
            peer.send(
                b"* 1 FETCH (UID 4 FLAGS () INTERNALDATE \"01-Jan-2024 10:00:00 +0000\" \
                  RFC822.SIZE 10)\r\nc4 OK done\r\n",
            )
            .await;
        };
        let (r, ()) = tokio::join!(c.uid_fetch_meta("1:*", Some(5)), server);
        assert_eq!(r.expect("fetched").len(), 1);
    }

    /// Refusals of ID and ENABLE are carried on from; a lost connection is not.
    #[tokio::test]
    async fn id_is_only_a_courtesy_but_the_connection_counts() {
        let (mut c, mut peer) =
            session(b"* OK [CAPABILITY IMAP4rev1 ID ENABLE CONDSTORE] ready\r\n").await;
        let creds = Credentials::Login {
            user: "u".into(),
            password: Secret::new("pw"),
        };
        let server = async {
            peer.expect("c1 LOGIN").await;
            peer.send(b"c1 OK [CAPABILITY IMAP4rev1 ID ENABLE CONDSTORE] in\r\n")
                .await;
            peer.expect("c2 ID").await;
            peer.send(b"c2 OK done\r\n").await;
            peer.expect("c3 ENABLE CONDSTORE").await;
            peer.send(b"* ENABLED CONDSTORE\r\nc3 OK done\r\n").await;
        };
        let (r, ()) = tokio::join!(c.login(&creds), server);
        r.expect("logged in");
        assert!(c.uses_condstore());
    }

    #[test]
    fn uid_sets_collapse_runs() {
        assert_eq!(uid_set(&[]), "");
        assert_eq!(uid_set(&[7]), "7");
        assert_eq!(uid_set(&[3, 1, 2, 7, 9, 10, 10, 0]), "1:3,7,9:10");
        assert_eq!(uid_set(&[u32::MAX, u32::MAX - 1]), "4294967294:4294967295");
        // Every set it writes is one the command encoder accepts.
        for set in ["1:3,7,9:10", "4294967294:4294967295"] {
            assert!(SequenceSet::try_from(set).is_ok(), "{set}");
        }
    }
}
