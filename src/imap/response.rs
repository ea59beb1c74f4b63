//! Server responses turned into small owned values.
//!
//! imap-codec parses every byte; this module keeps only what cutover acts on, so the rest of
//! the client never holds a borrow of the read buffer and never matches on imap-codec's
//! (large, still evolving) types. Anything not listed here is kept as `Other` and ignored.

use std::borrow::Cow;

use imap_codec::imap_types::core::{IString, NString};
use imap_codec::imap_types::fetch::MessageDataItem;
use imap_codec::imap_types::flag::FlagFetch;
use imap_codec::imap_types::mailbox::Mailbox;
use imap_codec::imap_types::response::{
    Code, CommandContinuationRequest, Data, Response, Status, StatusBody, StatusKind,
};
use imap_codec::imap_types::status::StatusDataItem;

/// Outcome of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ok,
    No,
    Bad,
}

/// A response code that cutover uses; the rest are kept as text for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RespCode {
    UidValidity(u32),
    UidNext(u32),
    HighestModSeq(u64),
    NoModSeq,
    AppendUid {
        uidvalidity: u32,
        uid: u32,
    },
    /// APPENDUID of a MULTIAPPEND: the UIDs of the messages, in the order they were sent
    /// (RFC 4315's `uid-set`, which imap-codec leaves unparsed).
    AppendUids {
        uidvalidity: u32,
        uids: Vec<u32>,
    },
    Capability(Vec<String>),
    TooBig,
    Other(String),
}

/// One FETCH response, with the items cutover asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchData {
    pub seq: u32,
    pub uid: Option<u32>,
    pub flags: Option<Vec<String>>,
    /// INTERNALDATE in IMAP syntax, e.g. `03-Feb-2001 04:05:06 +0000`.
    pub internal_date: Option<String>,
    pub internal_ts: Option<i64>,
    pub size: Option<u32>,
    pub modseq: Option<u64>,
    /// BODY[] (or BODY.PEEK[]) bytes.
    pub body: Option<Vec<u8>>,
    /// The bytes of a BODY[<section>] with a section, e.g. `HEADER.FIELDS (SUBJECT)`.
    pub section: Option<Vec<u8>>,
    /// The length announced for a BODY[] that was over the limit and discarded unread
    /// (`body` is then None).
    pub oversized: Option<u64>,
}

impl FetchData {
    /// Takes in what a later FETCH response for the same message says: a server may split
    /// a message's items over several responses, and an unsolicited one (a flag change)
    /// may come in between. What `later` has replaces what was known; MODSEQ only grows.
    pub fn absorb(&mut self, later: FetchData) {
        let FetchData {
            seq,
            uid,
            flags,
            internal_date,
            internal_ts,
            size,
            modseq,
            body,
            section,
            oversized,
        } = later;
        self.seq = seq;
        self.uid = uid.or(self.uid);
        self.flags = flags.or(self.flags.take());
        if internal_date.is_some() {
            self.internal_date = internal_date;
            self.internal_ts = internal_ts;
        }
        self.size = size.or(self.size);
        self.modseq = self.modseq.max(modseq);
        if body.is_some() {
            self.body = body;
            self.oversized = None;
        }
        if oversized.is_some() {
            self.oversized = oversized;
            self.body = None;
        }
        self.section = section.or(self.section.take());
    }
}

/// A LIST response; the name is still on-the-wire (modified UTF-7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawList {
    pub name: String,
    pub delimiter: Option<char>,
    pub attributes: Vec<String>,
}

/// An untagged response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Untagged {
    Capability(Vec<String>),
    List(RawList),
    Exists(u32),
    Fetch(FetchData),
    Status {
        mailbox: String,
        uidnext: Option<u32>,
        uidvalidity: Option<u32>,
        messages: Option<u32>,
        highestmodseq: Option<u64>,
    },
    /// NAMESPACE: personal, other users' and shared, each as (prefix, delimiter).
    Namespace(Namespaces),
    /// `* SEARCH n n n`: UIDs after a UID SEARCH, sequence numbers after a SEARCH.
    Search(Vec<u32>),
    /// `* n EXPUNGE`: sequence numbers above n move down by one.
    Expunge(u32),
    /// A FETCH response that could not be used (the decoder refused it, or a literal in it
    /// was discarded): the message number and UID as far as the raw bytes show them, and
    /// why.
    Unreadable {
        seq: Option<u32>,
        uid: Option<u32>,
        detail: String,
    },
    /// A `* LIST` (or `* LSUB`) response imap-codec cannot decode, typically a folder
    /// name in raw 8-bit bytes instead of modified UTF-7: the line, for the admin.
    UnreadableList(String),
    /// `* OK [code] text` and friends (`* NO`, `* BAD`).
    State {
        kind: Kind,
        code: Option<RespCode>,
        text: String,
    },
    Other,
}

/// Any response from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    Tagged {
        tag: String,
        kind: Kind,
        code: Option<RespCode>,
        text: String,
    },
    Untagged(Untagged),
    Continue,
    Bye(String),
}

/// Most UIDs an APPENDUID set is expanded to: far more than any batch holds, and a bound
/// on what a server's answer can make the client allocate.
const MAX_APPEND_UIDS: usize = 100_000;

/// `APPENDUID <uidvalidity> <uid-set>` (RFC 4315, the MULTIAPPEND form): the UIDVALIDITY
/// and every UID, ranges expanded in order. None if it is anything else or too large.
fn append_uids(code: &[u8]) -> Option<(u32, Vec<u32>)> {
    let text = std::str::from_utf8(code).ok()?;
    let mut words = text.split(' ');
    if !words.next()?.eq_ignore_ascii_case("APPENDUID") {
        return None;
    }
    let nz = |s: &str| s.parse::<u32>().ok().filter(|n| *n != 0);
    let uidvalidity = nz(words.next()?)?;
    let set = words.next()?;
    if words.next().is_some() {
        return None;
    }
    let mut uids = Vec::new();
    for part in set.split(',') {
        let (a, b) = match part.split_once(':') {
            Some((a, b)) => (nz(a)?, nz(b)?),
            None => (nz(part)?, nz(part)?),
        };
        let (lo, hi) = (a.min(b), a.max(b));
        if (hi - lo) as usize >= MAX_APPEND_UIDS - uids.len() {
            return None;
        }
        // `a:b` with a > b names the same UIDs; the order assigned is ascending.
        uids.extend(lo..=hi);
    }
    Some((uidvalidity, uids))
}

fn kind(k: StatusKind) -> Kind {
    match k {
        StatusKind::Ok => Kind::Ok,
        StatusKind::No => Kind::No,
        StatusKind::Bad => Kind::Bad,
    }
}

fn code(c: Option<Code<'_>>) -> Option<RespCode> {
    Some(match c? {
        Code::UidValidity(v) => RespCode::UidValidity(v.get()),
        Code::UidNext(v) => RespCode::UidNext(v.get()),
        Code::HighestModSeq(v) => RespCode::HighestModSeq(v.get()),
        Code::NoModSeq => RespCode::NoModSeq,
        Code::AppendUid { uid_validity, uid } => RespCode::AppendUid {
            uidvalidity: uid_validity.get(),
            uid: uid.get(),
        },
        Code::Capability(caps) => {
            RespCode::Capability(caps.as_ref().iter().map(|c| c.to_string()).collect())
        }
        Code::TooBig => RespCode::TooBig,
        Code::Other(o) => match append_uids(o.inner()) {
            Some((uidvalidity, uids)) => RespCode::AppendUids { uidvalidity, uids },
            None => RespCode::Other(String::from_utf8_lossy(o.inner()).into_owned()),
        },
        other => RespCode::Other(code_name(&other)),
    })
}

/// The atom a known response code is written as (`OVERQUOTA`, `ALREADYEXISTS`): the name
/// of its variant, upper-cased, without its arguments. The callers compare it with the
/// names of RFC 5530 and friends.
fn code_name(c: &Code<'_>) -> String {
    let debug = format!("{c:?}");
    debug
        .chars()
        .take_while(|ch| ch.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_uppercase()
}

/// A mailbox name as the server spelled it (modified UTF-7, not yet decoded).
pub(crate) fn mailbox_wire(m: &Mailbox<'_>) -> String {
    match m {
        Mailbox::Inbox => "INBOX".to_string(),
        Mailbox::Other(o) => String::from_utf8_lossy(o.as_ref()).into_owned(),
    }
}

fn istring(s: &IString<'_>) -> String {
    String::from_utf8_lossy(s.as_ref()).into_owned()
}

fn nstring_bytes(n: NString<'_>) -> Vec<u8> {
    match n.0 {
        Some(s) => match s {
            IString::Literal(l) => l.into_inner().into_owned(),
            IString::Quoted(q) => q.inner().as_bytes().to_vec(),
        },
        None => Vec::new(),
    }
}

fn status_body(b: StatusBody<'_>) -> (Kind, Option<RespCode>, String) {
    (kind(b.kind), code(b.code), b.text.to_string())
}

/// Formats a date-time the way APPEND and INTERNALDATE spell it.
pub fn format_internal_date(dt: &chrono::DateTime<chrono::FixedOffset>) -> String {
    // By hand rather than with `format("%d-%b-%Y %H:%M:%S %z")`, which interprets the
    // pattern anew for every message: 1.5 % of a copy's CPU.
    use chrono::{Datelike, Timelike};
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let offset = dt.offset().local_minus_utc();
    let (sign, offset) = if offset < 0 {
        ('-', -offset)
    } else {
        ('+', offset)
    };
    format!(
        "{:02}-{}-{:04} {:02}:{:02}:{:02} {sign}{:02}{:02}",
        dt.day(),
        MONTHS[dt.month0() as usize % 12],
        dt.year(),
        dt.hour(),
        dt.minute(),
        dt.second(),
        offset / 3600,
        offset / 60 % 60,
    )
}

/// Parses an INTERNALDATE string back (the spool keeps the server's spelling).
pub fn parse_internal_date(s: &str) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    chrono::DateTime::parse_from_str(s.trim(), "%d-%b-%Y %H:%M:%S %z").ok()
}

/// Bodies the framer took out of a response (see [`super::framer`]), in wire order, to be
/// put back into its `BODY[]` items; with those it skipped as too large.
struct Taken {
    bodies: std::iter::Enumerate<std::vec::IntoIter<Vec<u8>>>,
    skipped: Vec<(usize, u64)>,
}

enum TakenBody {
    Kept(Vec<u8>),
    Skipped(u64),
}

impl Taken {
    fn next(&mut self) -> Option<TakenBody> {
        let (i, body) = self.bodies.next()?;
        Some(match self.skipped.iter().find(|(at, _)| *at == i) {
            Some((_, len)) => TakenBody::Skipped(*len),
            None => TakenBody::Kept(body),
        })
    }
}

/// A FETCH response's items; each `BODY[]` item with a literal value gets the next of
/// `bodies` (the decoder saw `{0}` in its place). None if a body is missing or the literal
/// is not that empty placeholder: the framer and the decoder disagree, and the response
/// cannot be trusted.
fn fetch(seq: u32, items: Vec<MessageDataItem<'_>>, bodies: &mut Taken) -> Option<FetchData> {
    let mut f = FetchData {
        seq,
        ..Default::default()
    };
    for item in items {
        match item {
            MessageDataItem::Uid(u) => f.uid = Some(u.get()),
            MessageDataItem::Flags(flags) => {
                f.flags = Some(
                    flags
                        .iter()
                        .filter_map(|fl| match fl {
                            FlagFetch::Flag(fl) => Some(fl.to_string()),
                            FlagFetch::Recent => None,
                        })
                        .collect(),
                )
            }
            MessageDataItem::InternalDate(d) => {
                let dt: &chrono::DateTime<chrono::FixedOffset> = d.as_ref();
                f.internal_date = Some(format_internal_date(dt));
                f.internal_ts = Some(dt.timestamp());
            }
            MessageDataItem::Rfc822Size(s) => f.size = Some(s),
            MessageDataItem::ModSeq(m) => f.modseq = Some(m.get()),
            MessageDataItem::BodyExt {
                section: None,
                origin: None,
                data: NString(Some(IString::Literal(placeholder))),
            } => {
                if !placeholder.data().is_empty() {
                    return None;
                }
                match bodies.next()? {
                    TakenBody::Kept(b) => f.body = Some(b),
                    TakenBody::Skipped(len) => f.oversized = Some(len),
                }
            }
            MessageDataItem::BodyExt {
                section: None,
                data,
                ..
            } => f.body = Some(nstring_bytes(data)),
            MessageDataItem::BodyExt {
                section: Some(_),
                data,
                ..
            } => f.section = Some(nstring_bytes(data)),
            MessageDataItem::Rfc822(data) => f.body = Some(nstring_bytes(data)),
            _ => {}
        }
    }
    Some(f)
}

impl Resp {
    /// The tag of a tagged completion.
    pub fn tag(&self) -> Option<&str> {
        match self {
            Resp::Tagged { tag, .. } => Some(tag),
            _ => None,
        }
    }

    /// Converts a decoded imap-codec response, consuming it. `bodies` are the `BODY[]`
    /// literals the framer took out of it ([`super::framer::Frame::bodies`]); each goes
    /// back into the `BODY[]` item that the decoder saw as `{0}`. None if they do not pair
    /// up one to one (no response the decoder accepts should cause that).
    pub fn from_codec(r: Response<'_>, bodies: Vec<Vec<u8>>) -> Option<Resp> {
        Resp::from_codec_skipping(r, bodies, &[])
    }

    /// [`Resp::from_codec`] for a frame with `BODY[]` literals the framer skipped as too
    /// large ([`super::framer::Skipped`]): their items get `oversized` instead of a body.
    pub fn from_codec_skipping(
        r: Response<'_>,
        bodies: Vec<Vec<u8>>,
        skipped: &[super::framer::Skipped],
    ) -> Option<Resp> {
        let mut bodies = Taken {
            bodies: bodies.into_iter().enumerate(),
            skipped: skipped
                .iter()
                .filter_map(|s| s.body.map(|i| (i, s.len)))
                .collect(),
        };
        let resp = Resp::convert(r, &mut bodies)?;
        // A body left over belongs to no item.
        bodies.next().is_none().then_some(resp)
    }

    fn convert(r: Response<'_>, bodies: &mut Taken) -> Option<Resp> {
        Some(match r {
            Response::CommandContinuationRequest(CommandContinuationRequest::Basic(_))
            | Response::CommandContinuationRequest(_) => Resp::Continue,
            Response::Status(Status::Tagged(t)) => {
                let (kind, code, text) = status_body(t.body);
                Resp::Tagged {
                    tag: t.tag.inner().to_string(),
                    kind,
                    code,
                    text,
                }
            }
            Response::Status(Status::Untagged(b)) => {
                let (kind, code, text) = status_body(b);
                Resp::Untagged(Untagged::State { kind, code, text })
            }
            Response::Status(Status::Bye(b)) => Resp::Bye(b.text.to_string()),
            Response::Data(d) => Resp::Untagged(match d {
                Data::Capability(caps) => {
                    Untagged::Capability(caps.as_ref().iter().map(|c| c.to_string()).collect())
                }
                Data::List {
                    items,
                    delimiter,
                    mailbox,
                } => Untagged::List(RawList {
                    name: mailbox_wire(&mailbox),
                    delimiter: delimiter.map(|d| d.inner()),
                    attributes: items
                        .iter()
                        .map(|a| a.to_string().to_ascii_lowercase())
                        .collect(),
                }),
                Data::Exists(n) => Untagged::Exists(n),
                Data::Expunge(n) => Untagged::Expunge(n.get()),
                Data::Fetch { seq, items } => {
                    Untagged::Fetch(fetch(seq.get(), items.into_inner(), bodies)?)
                }
                Data::Status { mailbox, items } => {
                    let mut st = (None, None, None, None);
                    for item in items.iter() {
                        match item {
                            StatusDataItem::UidNext(v) => st.0 = Some(v.get()),
                            StatusDataItem::UidValidity(v) => st.1 = Some(v.get()),
                            StatusDataItem::Messages(v) => st.2 = Some(*v),
                            StatusDataItem::HighestModSeq(v) => st.3 = Some(*v),
                            _ => {}
                        }
                    }
                    Untagged::Status {
                        mailbox: mailbox_wire(&mailbox),
                        uidnext: st.0,
                        uidvalidity: st.1,
                        messages: st.2,
                        highestmodseq: st.3,
                    }
                }
                Data::Namespace {
                    personal,
                    other,
                    shared,
                } => {
                    let list = |l: &[imap_codec::imap_types::extensions::namespace::Namespace<'_>]| -> Vec<(String, Option<char>)> {
                        l.iter()
                            .map(|ns| {
                                (
                                    istring(&ns.prefix),
                                    ns.delimiter.as_ref().map(|d| d.inner()),
                                )
                            })
                            .collect()
                    };
                    Untagged::Namespace(Namespaces {
                        personal: list(personal.as_ref()),
                        other: list(other.as_ref()),
                        shared: list(shared.as_ref()),
                    })
                }
                Data::Search(nums, ..) => Untagged::Search(nums.iter().map(|n| n.get()).collect()),
                _ => Untagged::Other,
            }),
        })
    }
}

/// The three namespaces of RFC 2342, each as (prefix, delimiter).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Namespaces {
    pub personal: Vec<(String, Option<char>)>,
    /// Other users' mailboxes (Cyrus: `user.`, or `Other Users/` with `altnamespace`).
    pub other: Vec<(String, Option<char>)>,
    /// Shared folders (Cyrus with `altnamespace`: `Shared Folders/`).
    pub shared: Vec<(String, Option<char>)>,
}

#[allow(dead_code)]
fn _cow(_: Cow<'_, str>) {}

/// The value of header `name` (case-insensitive) in a header block, unfolded, with RFC 2047
/// encoded words (`=?utf-8?B?...?=`, `=?iso-8859-1?Q?...?=`) decoded for UTF-8, US-ASCII and
/// Latin-1; other charsets are left encoded. For messages shown to the admin.
pub fn header_value(headers: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(headers);
    let mut value: Option<String> = None;
    for line in text.split('\n') {
        let line = line.trim_end_matches('\r');
        if let Some(v) = value.as_mut() {
            if line.starts_with([' ', '\t']) {
                v.push(' ');
                v.push_str(line.trim());
                continue;
            }
            break;
        }
        if let Some((n, v)) = line.split_once(':') {
            if n.trim().eq_ignore_ascii_case(name) {
                value = Some(v.trim().to_string());
            }
        }
    }
    value.map(|v| decode_encoded_words(&v))
}

fn decode_encoded_words(s: &str) -> String {
    use base64::Engine as _;
    let mut out = String::new();
    let mut rest = s;
    let mut last_was_word = false;
    while let Some(start) = rest.find("=?") {
        let before = &rest[..start];
        let candidate = &rest[start + 2..];
        let parsed = (|| {
            let (charset, r) = candidate.split_once('?')?;
            let (enc, r) = r.split_once('?')?;
            let end = r.find("?=")?;
            let data = &r[..end];
            let bytes = match enc.to_ascii_uppercase().as_str() {
                "B" => base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .ok()?,
                "Q" => {
                    let mut v = Vec::new();
                    let b = data.as_bytes();
                    let mut i = 0;
                    while i < b.len() {
                        match b[i] {
                            b'_' => v.push(b' '),
                            b'=' if i + 2 < b.len() => {
                                let h = std::str::from_utf8(&b[i + 1..i + 3]).ok()?;
                                v.push(u8::from_str_radix(h, 16).ok()?);
                                i += 2;
                            }
                            c => v.push(c),
                        }
                        i += 1;
                    }
                    v
                }
                _ => return None,
            };
            let cs = charset.split('*').next()?.to_ascii_lowercase();
            let text = match cs.as_str() {
                "utf-8" | "utf8" | "us-ascii" => String::from_utf8_lossy(&bytes).into_owned(),
                "iso-8859-1" | "latin1" | "windows-1252" => {
                    bytes.iter().map(|&c| c as char).collect()
                }
                _ => return None,
            };
            Some((
                text,
                start + 2 + charset.len() + 1 + enc.len() + 1 + end + 2,
            ))
        })();
        match parsed {
            Some((text, consumed)) => {
                // Whitespace between two encoded words is not part of the text.
                if !(last_was_word && before.trim().is_empty()) {
                    out.push_str(before);
                }
                out.push_str(&text);
                rest = &rest[consumed..];
                last_was_word = true;
            }
            None => {
                out.push_str(&rest[..start + 2]);
                rest = &rest[start + 2..];
                last_was_word = false;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod header_tests {
    use super::*;

    #[test]
    fn subjects() {
        let h = b"Subject: Hello\r\n world\r\n\r\n";
        assert_eq!(header_value(h, "subject").as_deref(), Some("Hello world"));
        let h = b"subject: =?UTF-8?B?R3LDvMOfZQ==?= =?iso-8859-1?Q?f=FCr_dich?=\r\n";
        assert_eq!(header_value(h, "Subject").as_deref(), Some("Grüßefür dich"));
        assert_eq!(header_value(b"From: x\r\n", "subject"), None);
        assert_eq!(
            decode_encoded_words("=?koi8-r?B?8NLJ18XU?= x"),
            "=?koi8-r?B?8NLJ18XU?= x"
        );
    }
}

/// Responses from the wire through the framer, imap-codec and [`Resp::from_codec`], as the
/// client reads them: the `BODY[]` literals the framer takes out must come back intact.
#[cfg(test)]
mod framed_tests {
    use imap_codec::decode::Decoder;
    use imap_codec::ResponseCodec;

    use super::super::framer::tests::frames;
    use super::*;

    /// Every response in `chunks`, each chunk arriving as one or more reads.
    fn read(chunks: &[&[u8]]) -> Vec<Resp> {
        frames(chunks)
            .into_iter()
            .map(|(bytes, bodies)| {
                let (left, r) = ResponseCodec::default()
                    .decode(&bytes)
                    .unwrap_or_else(|e| panic!("{e:?} in {bytes:?}"));
                assert!(left.is_empty());
                Resp::from_codec(r, bodies).expect("bodies pair up")
            })
            .collect()
    }

    fn fetch_of(r: &Resp) -> &FetchData {
        match r {
            Resp::Untagged(Untagged::Fetch(f)) => f,
            other => panic!("not a FETCH: {other:?}"),
        }
    }

    /// A FETCH response with `body` as its BODY[] literal, between UID and FLAGS.
    fn fetch_wire(seq: u32, uid: u32, body: &[u8]) -> Vec<u8> {
        let mut wire =
            format!("* {seq} FETCH (UID {uid} BODY[] {{{}}}\r\n", body.len()).into_bytes();
        wire.extend_from_slice(body);
        wire.extend_from_slice(b" FLAGS (\\Seen $Work))\r\n");
        wire
    }

    /// Looks like protocol, and holds the one byte imap-codec refuses in a literal.
    const TRICKY: &[u8] =
        b"From: a\r\n\r\n* OK [ALERT] x\r\nA1 OK done\r\n) {5}\r\n\0\0NUL\r\n* 3 FETCH (\r\n";

    fn code_of(wire: &[u8]) -> Option<RespCode> {
        match read(&[wire]).pop() {
            Some(Resp::Tagged { code, .. }) => code,
            other => panic!("not a completion: {other:?}"),
        }
    }

    /// A MULTIAPPEND's APPENDUID carries a UID set, which imap-codec leaves as an unknown
    /// code: the UIDs come out in order, ranges expanded; anything odd stays `Other`.
    #[test]
    fn appenduid_sets_of_multiappend() {
        assert_eq!(
            code_of(b"A1 OK [APPENDUID 38505 3955] APPEND completed\r\n"),
            Some(RespCode::AppendUid {
                uidvalidity: 38505,
                uid: 3955
            })
        );
        assert_eq!(
            code_of(b"A2 OK [APPENDUID 7 100:103,110,120:119] done\r\n"),
            Some(RespCode::AppendUids {
                uidvalidity: 7,
                uids: vec![100, 101, 102, 103, 110, 119, 120]
            })
        );
        for odd in [
            &b"A3 OK [APPENDUID 7 0:3] x\r\n"[..],
            b"A3 OK [APPENDUID 7 1:4294967295] x\r\n",
            b"A3 OK [APPENDUID 7 1:2,x] x\r\n",
            b"A3 OK [APPENDUID 1:2] x\r\n",
            b"A3 OK [APPENDUID 7 1:2 3] x\r\n",
        ] {
            assert!(
                matches!(code_of(odd), Some(RespCode::Other(_))),
                "{}",
                String::from_utf8_lossy(odd)
            );
        }
    }

    /// Refusals are classified by their code's atom, whether imap-codec knows the code
    /// or not.
    #[test]
    fn response_codes_keep_their_wire_names() {
        assert_eq!(
            code_of(b"A1 NO [OVERQUOTA] full\r\n"),
            Some(RespCode::Other("OVERQUOTA".into()))
        );
        assert_eq!(
            code_of(b"A1 NO [CANNOT] no\r\n"),
            Some(RespCode::Other("CANNOT".into()))
        );
        assert_eq!(
            code_of(b"A1 NO [LIMIT] later\r\n"),
            Some(RespCode::Other("LIMIT".into()))
        );
        assert_eq!(
            code_of(b"A1 NO [X-ODD some words] x\r\n"),
            Some(RespCode::Other("X-ODD some words".into()))
        );
    }

    #[test]
    fn body_comes_back_byte_for_byte() {
        let wire = fetch_wire(2, 41, TRICKY);
        let got = read(&[&wire, b"c1 OK fetched\r\n"]);
        assert_eq!(got.len(), 2);
        let f = fetch_of(&got[0]);
        assert_eq!(f.seq, 2);
        assert_eq!(f.uid, Some(41));
        assert_eq!(f.body.as_deref(), Some(TRICKY));
        assert_eq!(
            f.flags,
            Some(vec!["\\Seen".to_string(), "$Work".to_string()])
        );
        assert!(matches!(&got[1], Resp::Tagged { tag, kind: Kind::Ok, .. } if tag == "c1"));
    }

    #[test]
    fn two_fetches_in_one_read() {
        let mut wire = fetch_wire(1, 10, b"first\r\n");
        wire.extend(fetch_wire(2, 11, TRICKY));
        wire.extend_from_slice(b"c2 OK done\r\n");
        let got = read(&[&wire]);
        assert_eq!(got.len(), 3);
        assert_eq!(fetch_of(&got[0]).body.as_deref(), Some(&b"first\r\n"[..]));
        assert_eq!(fetch_of(&got[1]).uid, Some(11));
        assert_eq!(fetch_of(&got[1]).body.as_deref(), Some(TRICKY));
    }

    #[test]
    fn every_split_point_gives_the_same_responses() {
        let mut wire = fetch_wire(7, 70, b"a)\r\n\0* OK\r\nA1 OK\r\n");
        wire.extend_from_slice(b"* 8 FETCH (BODY[] {0}\r\n UID 71)\r\n");
        let whole = read(&[&wire]);
        assert_eq!(whole.len(), 2);
        for i in 0..=wire.len() {
            assert_eq!(read(&[&wire[..i], &wire[i..]]), whole, "split at {i}");
        }
    }

    #[test]
    fn an_empty_body_stays_empty() {
        let got = read(&[b"* 1 FETCH (UID 5 BODY[] {0}\r\n)\r\n"]);
        assert_eq!(fetch_of(&got[0]).body.as_deref(), Some(&b""[..]));
        // Not the same as no body at all.
        let got = read(&[b"* 1 FETCH (UID 5 FLAGS ())\r\n"]);
        assert_eq!(fetch_of(&got[0]).body, None);
    }

    #[test]
    fn other_literals_stay_with_the_decoder() {
        let got = read(&[
            b"* 3 FETCH (UID 9 BODY[HEADER.FIELDS (SUBJECT)] {12}\r\nSubject: x\r\n",
            b" BODY[] {6}\r\nab\0\r\nc)\r\n",
            // An envelope in literals, one of which ends in what looks like `BODY[] `.
            b"* 4 FETCH (ENVELOPE ({7}\r\nBODY[]  {4}\r\nsubj NIL NIL NIL NIL NIL NIL ",
            b"NIL {5}\r\n<m@x>) BODY[] {3}\r\nxyz)\r\n",
        ]);
        let f = fetch_of(&got[0]);
        assert_eq!(f.section.as_deref(), Some(&b"Subject: x\r\n"[..]));
        assert_eq!(f.body.as_deref(), Some(&b"ab\0\r\nc"[..]));
        let f = fetch_of(&got[1]);
        assert_eq!(f.body.as_deref(), Some(&b"xyz"[..]));
    }

    #[test]
    fn forms_that_are_not_taken_decode_as_before() {
        // A partial body, a quoted one and a NIL one are not literals the framer takes.
        let got = read(&[
            b"* 1 FETCH (BODY[]<0> {3}\r\nabc)\r\n",
            b"* 2 FETCH (BODY[] \"q\")\r\n* 3 FETCH (BODY[] NIL)\r\n",
        ]);
        assert_eq!(fetch_of(&got[0]).body.as_deref(), Some(&b"abc"[..]));
        assert_eq!(fetch_of(&got[1]).body.as_deref(), Some(&b"q"[..]));
        assert_eq!(fetch_of(&got[2]).body.as_deref(), Some(&b""[..]));
    }

    #[test]
    fn bodies_that_do_not_pair_up_are_refused() {
        let decode = |wire: &'static [u8], bodies: Vec<Vec<u8>>| {
            let (_, r) = ResponseCodec::default().decode(wire).unwrap();
            Resp::from_codec(r, bodies)
        };
        assert!(decode(b"* 1 FETCH (UID 1)\r\n", vec![b"x".to_vec()]).is_none());
        assert!(decode(b"c1 OK done\r\n", vec![Vec::new()]).is_none());
        assert!(decode(b"* 1 FETCH (BODY[] {0}\r\n)\r\n", vec![]).is_none());
        // A literal the framer did not take out is not a placeholder.
        assert!(decode(b"* 1 FETCH (BODY[] {1}\r\nz)\r\n", vec![b"x".to_vec()]).is_none());
        let r = decode(b"* 1 FETCH (BODY[] {0}\r\n)\r\n", vec![b"x".to_vec()]);
        assert_eq!(fetch_of(&r.unwrap()).body.as_deref(), Some(&b"x"[..]));
    }

    #[test]
    fn internal_date_is_formatted_as_chrono_would() {
        use chrono::{FixedOffset, TimeZone};
        let dates = [
            (0, 2024, 1, 5, 0, 0, 0),
            (-7 * 3600, 1996, 7, 17, 2, 44, 25),
            (5 * 3600 + 30 * 60, 2031, 12, 31, 23, 59, 59),
            (-(9 * 3600 + 30 * 60), 1970, 2, 28, 12, 3, 4),
            (14 * 3600, 999, 10, 9, 1, 2, 3),
        ];
        for (off, y, mo, d, h, mi, s) in dates {
            let dt = FixedOffset::east_opt(off)
                .unwrap()
                .with_ymd_and_hms(y, mo, d, h, mi, s)
                .unwrap();
            let want = dt.format("%d-%b-%Y %H:%M:%S %z").to_string();
            assert_eq!(format_internal_date(&dt), want);
            assert_eq!(parse_internal_date(&want), Some(dt));
        }
    }
}
