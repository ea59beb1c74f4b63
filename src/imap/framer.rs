//! Splits the server's byte stream into whole responses.
//!
//! A response is a line, or a line ending in a literal announcement `{n}` (also `{n+}`,
//! `~{n}`) followed by exactly n bytes and more of the line. Literal bytes are counted,
//! never scanned, so a message body can hold anything, including text that looks like a
//! response. The framed bytes are then decoded by imap-codec.
//!
//! This does what imap-codec's `Fragmentizer` does, in one contiguous buffer: the
//! fragmentizer moves every byte from a `VecDeque` into its message buffer one at a time,
//! which was the largest single cost of copying a mailbox.
//!
//! # Message bodies bypass the decoder
//!
//! The value of a `BODY[]` item (a whole message, the bulk of every byte a migration reads)
//! is taken out of the response: it goes into a `Vec` of its own and the decoder sees the
//! same response with that literal announced as `{0}` and its bytes absent. imap-codec
//! would otherwise scan every byte of it (for NUL) and the conversion to owned values
//! would copy it once more. A body larger than what is already buffered is read from the
//! socket straight into its `Vec` ([`Framer::read_room`]), so most of its bytes are never
//! copied at all. [`super::response`] puts the bodies back into the decoded `BODY[]` items,
//! in wire order.
//!
//! Which literals are taken is decided from the bytes just before the announcement, in the
//! same stretch of line (not inside an earlier literal): `(` or a space, then `BODY[] `
//! (any case). In a response imap-codec accepts, that is only ever a `BODY[]` item, and
//! every `BODY[]` item with a literal value looks like that, so the two pair up one to one.
//! Every such literal is taken, whatever its size (an empty one too): a size threshold
//! would make a placeholder `{0}` indistinguishable from a genuinely empty body. Only the
//! digits of the announcement change, so anything imap-codec refused before (`{n-}`, a bare
//! LF) it still refuses. `BODY[]<origin>` (never requested) and literal8 `~{n}` are not
//! taken and are decoded as before.
//!
//! # The byte budget
//!
//! With [`Framer::set_gated`], a response's first `BODY[]` literal is not allocated until
//! the caller has granted its size ([`Framer::wants_grant`], [`Framer::grant`]): the
//! client takes that much of the shared [`crate::budget::Budget`] first, so that bodies
//! across connections stay within it. Further `BODY[]` literals of the same response (a
//! server sends one per message) are bounded by the response limit alone: waiting for
//! more while holding some could wait for ever.

use bytes::buf::Limit;
use bytes::BufMut;

/// How much one read into the main buffer may bring: a response head and the start of a
/// body. The rest of a large body is read into the body's own `Vec`.
const READ_ROOM: usize = 64 * 1024;

/// What the 7 bytes before a taken literal's `{` are (compared ignoring ASCII case).
const BODY_ITEM: &[u8] = b"BODY[] ";

/// Why no frame could be produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The response is larger than the configured maximum.
    TooLong { limit: usize },
}

/// One complete response.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The response for the decoder: as received, except that each taken `BODY[]` literal
    /// is announced with length 0 and its bytes are left out.
    pub bytes: &'a [u8],
    /// The values of the taken `BODY[]` literals, in wire order.
    pub bodies: Vec<Vec<u8>>,
    /// Literals that were over the limit and discarded unread (see [`Skipped`]).
    pub skipped: Vec<Skipped>,
}

/// A literal too large to keep, counted off the wire without being stored: the framing
/// stays in step and the session usable, and the caller learns what was lost. It is
/// announced as `{0}` to the decoder, like a taken body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Skipped {
    /// For the value of a `BODY[]` item: its place in [`Frame::bodies`], which holds an
    /// empty placeholder there. None for any other literal (the response then lacks data
    /// the decoder will not know is missing, and cannot be used).
    pub body: Option<usize>,
    /// The announced length.
    pub len: u64,
}

/// Where a taken literal was in `Framer::buf` (indices into it, all past `start`).
#[derive(Debug, Clone, Copy)]
struct Cut {
    /// The announced length's digits, `digits..digits_end`, replaced by `0`.
    digits: usize,
    digits_end: usize,
    /// The literal's first byte: what of it was buffered (`data..resume`) was copied into
    /// its body, and the response goes on at `resume`.
    data: usize,
    resume: usize,
}

/// An accumulating buffer with the framing state of the response being read.
pub struct Framer {
    buf: Vec<u8>,
    /// Start of the response being framed (bytes before it are consumed).
    start: usize,
    /// Start of the line being scanned (after the last literal, if any).
    line: usize,
    /// Where to continue scanning for the end of that line.
    scan: usize,
    max: usize,
    /// `BODY[]` literals taken out of the response being framed, in wire order.
    bodies: Vec<Vec<u8>>,
    /// The announced length of the last of `bodies`: until it holds that many bytes, reads
    /// go into it rather than into `buf`.
    last_body_len: usize,
    /// Where those literals were in `buf`.
    cuts: Vec<Cut>,
    /// Bytes of the response being framed that are in `bodies` but never were in `buf`;
    /// with `buf`'s share, the response's size as the limit `max` counts it.
    outside: usize,
    /// The last frame that had literals taken out, as handed to the decoder.
    skeleton: Vec<u8>,
    /// Largest `BODY[]` literal kept (at most `max`); larger ones are skipped.
    body_limit: usize,
    /// Bytes of a skipped literal still to come off the wire.
    discard_left: usize,
    /// Where those are read to, and dropped from.
    scratch: Vec<u8>,
    /// Literals skipped in the response being framed.
    skipped: Vec<Skipped>,
    /// Bytes of skipped literals that are in `buf` (they do not count against `max`).
    skipped_in_buf: usize,
    /// A `BODY[]` literal waits for a grant before it is allocated (see the module doc).
    gated: bool,
    /// The size of the literal waiting for its grant.
    wants: Option<usize>,
    /// Granted for the next literal (consumed when it is taken).
    granted: Option<usize>,
}

impl Framer {
    pub fn new(max_response_bytes: usize) -> Framer {
        Framer {
            buf: Vec::with_capacity(READ_ROOM),
            start: 0,
            line: 0,
            scan: 0,
            max: max_response_bytes,
            bodies: Vec::new(),
            last_body_len: 0,
            cuts: Vec::new(),
            outside: 0,
            skeleton: Vec::new(),
            body_limit: max_response_bytes,
            discard_left: 0,
            scratch: Vec::new(),
            skipped: Vec::new(),
            skipped_in_buf: 0,
            gated: false,
            wants: None,
            granted: None,
        }
    }

    /// Makes each response's first `BODY[]` literal wait for [`Framer::grant`].
    pub fn set_gated(&mut self, gated: bool) {
        self.gated = gated;
    }

    /// The size of the `BODY[]` literal that waits for a grant, if one does: until it is
    /// granted, [`Framer::next_frame`] gives nothing and no more is read into the buffer
    /// (see [`Framer::read_room`]).
    pub fn wants_grant(&self) -> Option<usize> {
        self.wants
    }

    /// Lets the literal [`Framer::wants_grant`] named be allocated.
    pub fn grant(&mut self) {
        self.granted = self.wants.take();
    }

    /// Keeps `BODY[]` literals of at most `limit` bytes (None: up to the response limit);
    /// larger ones are skipped (see [`Skipped`]). For the FETCH of messages whose sizes
    /// are known, so that a literal larger than announced is never held in memory.
    pub fn set_body_limit(&mut self, limit: Option<usize>) {
        self.body_limit = limit.map_or(self.max, |l| l.min(self.max));
    }

    /// Counts the bytes read into `scratch` off the literal being skipped.
    fn settle(&mut self) {
        self.discard_left -= self.scratch.len().min(self.discard_left);
        self.scratch.clear();
    }

    /// Room to read into (e.g. with tokio's `read_buf`): the body being received when one
    /// is incomplete (limited to its missing bytes, so nothing of the next response lands
    /// in it), otherwise the main buffer. Never empty, so a read of 0 bytes means the
    /// connection closed.
    ///
    /// The room is the `Vec`'s spare capacity, which `read_buf` fills without zeroing it
    /// first (TCP reads into it directly, tokio-rustls copies into it): zero-filling 64 KiB
    /// before every read cost more than 1 % of a copy's CPU.
    pub fn read_room(&mut self) -> Limit<&mut Vec<u8>> {
        self.settle();
        if self.discard_left > 0 {
            let room = self.discard_left.min(READ_ROOM);
            self.scratch.reserve(room);
            return BufMut::limit(&mut self.scratch, room);
        }
        let missing = self.body_missing();
        if missing == 0 {
            self.compact();
            self.buf.reserve(READ_ROOM);
        }
        match self.bodies.last_mut() {
            Some(body) if missing > 0 => BufMut::limit(body, missing),
            _ => BufMut::limit(&mut self.buf, READ_ROOM),
        }
    }

    /// Drops consumed bytes with one move, not per byte, once they are worth it.
    fn compact(&mut self) {
        let start = self.start;
        if start == 0 || (start < self.buf.len() && start < self.buf.capacity() / 2) {
            return;
        }
        self.buf.drain(..start);
        self.scan -= start;
        self.line -= start;
        for cut in &mut self.cuts {
            cut.digits -= start;
            cut.digits_end -= start;
            cut.data -= start;
            cut.resume -= start;
        }
        self.start = 0;
    }

    /// How many bytes the body being received still lacks (0 when none is).
    fn body_missing(&self) -> usize {
        self.bodies
            .last()
            .map_or(0, |b| self.last_body_len.saturating_sub(b.len()))
    }

    /// True if bytes are buffered that belong to no complete response yet.
    pub fn has_pending(&self) -> bool {
        self.start < self.buf.len() || !self.bodies.is_empty() || self.discard_left > 0
    }

    /// The size of the response being framed if it ended at `pos` in `buf`, counting taken
    /// bodies at their full length: what `max` limits.
    fn frame_len(&self, pos: usize) -> usize {
        (pos - self.start - self.skipped_in_buf).saturating_add(self.outside)
    }

    /// The next complete response, if buffered. Its bytes stay valid until the next call.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, FrameError> {
        self.settle();
        if self.discard_left > 0 || self.body_missing() > 0 {
            return Ok(None);
        }
        loop {
            let Some(nl) = memchr(b'\n', &self.buf[self.scan..]) else {
                if self.frame_len(self.buf.len()) > self.max {
                    return Err(FrameError::TooLong { limit: self.max });
                }
                self.scan = self.buf.len();
                return Ok(None);
            };
            let eol = self.scan + nl; // index of '\n'
            let line = &self.buf[self.line..eol];
            let Some(n) = literal_len(line) else {
                return Ok(Some(self.finish(eol + 1)));
            };
            let data = eol + 1;
            let body = body_digits(line, n);
            let over = self.frame_len(data).saturating_add(n) > self.max
                || (body.is_some() && n > self.body_limit);
            if over {
                // Beyond what imap-codec could parse anyway: no point reading it off.
                if u32::try_from(n).is_err() {
                    return Err(FrameError::TooLong { limit: self.max });
                }
                let is_body = body.is_some();
                let Some(digits) = body.or_else(|| announced_digits(line)) else {
                    return Err(FrameError::TooLong { limit: self.max });
                };
                let digits = self.line + digits.start..self.line + digits.end;
                self.skip_literal(digits, data, n, is_body);
                if self.discard_left > 0 {
                    return Ok(None);
                }
                continue;
            }
            if let Some(digits) = body {
                if self.gated && self.bodies.is_empty() && self.granted != Some(n) {
                    // Nothing is advanced: the same line is found again once granted.
                    self.wants = Some(n);
                    return Ok(None);
                }
                self.granted = None;
                let digits = self.line + digits.start..self.line + digits.end;
                self.take_body(digits, data, n);
                if self.body_missing() > 0 {
                    // The rest of the body is read straight into it.
                    return Ok(None);
                }
            } else {
                let end = data + n;
                if end > self.buf.len() {
                    // Wait for the whole literal; rescan this line when more arrives.
                    return Ok(None);
                }
                self.line = end;
                self.scan = end;
            }
        }
    }

    /// Takes the `n`-byte literal starting at `data` (announced by the digits at `digits`)
    /// out of the response: what of it is buffered is copied into a new body, which then
    /// receives the rest directly. Scanning goes on after the buffered part.
    fn take_body(&mut self, digits: std::ops::Range<usize>, data: usize, n: usize) {
        let resume = data + n.min(self.buf.len() - data);
        // `n` is within `max` (checked by the caller), so this allocation is bounded.
        let mut body = Vec::with_capacity(n);
        body.extend_from_slice(&self.buf[data..resume]);
        self.outside += n - (resume - data);
        self.bodies.push(body);
        self.last_body_len = n;
        self.cuts.push(Cut {
            digits: digits.start,
            digits_end: digits.end,
            data,
            resume,
        });
        self.line = resume;
        self.scan = resume;
    }

    /// Skips the `n`-byte literal starting at `data` (announced by the digits at
    /// `digits`): what of it is buffered stays in `buf` but out of the frame, the rest is
    /// read off into `scratch`. A `BODY[]` value gets an empty placeholder in `bodies`.
    fn skip_literal(&mut self, digits: std::ops::Range<usize>, data: usize, n: usize, body: bool) {
        let resume = data + n.min(self.buf.len() - data);
        self.skipped_in_buf += resume - data;
        self.discard_left = n - (resume - data);
        let index = body.then(|| {
            self.bodies.push(Vec::new());
            // The placeholder is complete: reads go on into `buf`.
            self.last_body_len = 0;
            self.bodies.len() - 1
        });
        self.skipped.push(Skipped {
            body: index,
            len: n as u64,
        });
        self.cuts.push(Cut {
            digits: digits.start,
            digits_end: digits.end,
            data,
            resume,
        });
        self.line = resume;
        self.scan = resume;
    }

    /// Ends the response being framed at `end` (just past its final `\n`) and hands it
    /// out: straight from `buf` when nothing was taken out, else rebuilt in `skeleton`
    /// (only the response's structure: a few hundred bytes for a FETCH of a message).
    fn finish(&mut self, end: usize) -> Frame<'_> {
        let start = std::mem::replace(&mut self.start, end);
        self.line = end;
        self.scan = end;
        self.outside = 0;
        self.last_body_len = 0;
        self.skipped_in_buf = 0;
        let bodies = std::mem::take(&mut self.bodies);
        let skipped = std::mem::take(&mut self.skipped);
        if self.cuts.is_empty() {
            return Frame {
                bytes: &self.buf[start..end],
                bodies,
                skipped,
            };
        }
        self.skeleton.clear();
        let mut from = start;
        for cut in self.cuts.drain(..) {
            self.skeleton.extend_from_slice(&self.buf[from..cut.digits]);
            self.skeleton.push(b'0');
            self.skeleton
                .extend_from_slice(&self.buf[cut.digits_end..cut.data]);
            from = cut.resume;
        }
        self.skeleton.extend_from_slice(&self.buf[from..end]);
        Frame {
            bytes: &self.skeleton,
            bodies,
            skipped,
        }
    }
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == needle)
}

/// The length announced at the end of `line` (without its `\n`): `{123}`, `{123+}`,
/// `{123-}` or `~{123}`, optionally followed by `\r`.
pub(super) fn literal_len(line: &[u8]) -> Option<usize> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let inner = line.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|&b| b == b'{')?;
    let digits = &inner[open + 1..];
    let digits = digits
        .strip_suffix(b"+")
        .or_else(|| digits.strip_suffix(b"-"))
        .unwrap_or(digits);
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Where the digits of the announcement ending `line` are (known to end in one).
fn announced_digits(line: &[u8]) -> Option<std::ops::Range<usize>> {
    let digits = line.iter().rposition(|&b| b == b'{')? + 1;
    let len = line[digits..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    Some(digits..digits + len)
}

/// Where the digits of the announcement ending `line` are, if it announces the value of a
/// `BODY[]` item: `(` or a space, `BODY[] ` in any case, then `{` (so not literal8 `~{`).
/// `line` is known to end in an announcement of `n` bytes (see [`literal_len`]).
///
/// A length imap-codec cannot parse (over `u32::MAX`) is left alone, so that such a
/// response still fails to decode as it did before, rather than decode with `{0}`.
fn body_digits(line: &[u8], n: usize) -> Option<std::ops::Range<usize>> {
    u32::try_from(n).ok()?;
    let open = line.iter().rposition(|&b| b == b'{')?;
    let before = &line[..open];
    let item = before.get(before.len().checked_sub(BODY_ITEM.len())?..)?;
    let lead = before.get(before.len().checked_sub(BODY_ITEM.len() + 1)?);
    if !item.eq_ignore_ascii_case(BODY_ITEM) || !matches!(lead, Some(b'(' | b' ')) {
        return None;
    }
    let digits = open + 1;
    let len = line[digits..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    Some(digits..digits + len)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Writes as much of `bytes` as the read room takes, as one read from a socket would;
    /// returns how many.
    fn feed(f: &mut Framer, bytes: &[u8]) -> usize {
        let mut room = f.read_room();
        let n = bytes.len().min(room.remaining_mut());
        room.put_slice(&bytes[..n]);
        n
    }

    type Framed = (Vec<u8>, Vec<Vec<u8>>);

    /// Every frame (bytes for the decoder, taken bodies) of `chunks`, each chunk arriving
    /// as one or more reads, frames taken between reads the way the client does. Also
    /// what `response.rs`'s tests decode.
    pub(in crate::imap) fn frames(chunks: &[&[u8]]) -> Vec<Framed> {
        let mut f = Framer::new(1 << 20);
        let mut out = Vec::new();
        for c in chunks {
            let mut rest = *c;
            while !rest.is_empty() {
                rest = &rest[feed(&mut f, rest)..];
                while let Some(fr) = f.next_frame().unwrap() {
                    out.push((fr.bytes.to_vec(), fr.bodies));
                }
            }
        }
        assert!(!f.has_pending(), "bytes left over");
        out
    }

    fn framed(bytes: &[u8], bodies: &[&[u8]]) -> Framed {
        (bytes.to_vec(), bodies.iter().map(|b| b.to_vec()).collect())
    }

    #[test]
    fn lines_and_literals() {
        let got = frames(&[
            b"* OK hi\r\n* 1 FETCH (BODY[] {5}\r\nab\r\n",
            b"c UID 4)\r\nA1 OK done\r\n",
        ]);
        assert_eq!(
            got,
            vec![
                framed(b"* OK hi\r\n", &[]),
                framed(b"* 1 FETCH (BODY[] {0}\r\n UID 4)\r\n", &[b"ab\r\nc"]),
                framed(b"A1 OK done\r\n", &[]),
            ]
        );
    }

    #[test]
    fn literal_that_looks_like_a_response_is_not_split() {
        // The literal holds "\r\nA1 OK\r\n{3}\r\n": counted, not parsed.
        let body = b"\r\nA1 OK\r\n{3}\r\n";
        let mut msg = format!("* 2 FETCH (BODY[] {{{}}}\r\n", body.len()).into_bytes();
        msg.extend_from_slice(body);
        msg.extend_from_slice(b")\r\nA2 OK\r\n");
        // Fed one byte at a time.
        let chunks: Vec<&[u8]> = msg.chunks(1).collect();
        let got = frames(&chunks);
        assert_eq!(
            got,
            vec![
                framed(b"* 2 FETCH (BODY[] {0}\r\n)\r\n", &[body]),
                framed(b"A2 OK\r\n", &[])
            ]
        );
    }

    #[test]
    fn only_body_literals_are_taken() {
        let wire: &[u8] = b"* 1 FETCH (UID 3 BODY[HEADER.FIELDS (SUBJECT)] {12}\r\n\
            Subject: x\r\n BODY[] {4}\r\nab)c body[] {0}\r\n BODY[]<0> {2}\r\nxy \
            BINARY[] ~{1}\r\nz)\r\n";
        assert_eq!(
            frames(&[wire]),
            vec![framed(
                b"* 1 FETCH (UID 3 BODY[HEADER.FIELDS (SUBJECT)] {12}\r\nSubject: x\r\n \
                  BODY[] {0}\r\n body[] {0}\r\n BODY[]<0> {2}\r\nxy BINARY[] ~{1}\r\nz)\r\n",
                &[b"ab)c", b""]
            )]
        );
    }

    #[test]
    fn body_item_text_inside_a_literal_is_not_an_announcement() {
        // "BODY[] " ends the first literal; the second announcement's own stretch of line
        // is just " ", so the second literal stays where it is.
        let wire: &[u8] = b"* 1 FETCH (ENVELOPE ({7}\r\nBODY[]  {2}\r\nab NIL)\r\n";
        assert_eq!(frames(&[wire]), vec![framed(wire, &[])]);
    }

    #[test]
    fn every_split_of_the_input_frames_the_same() {
        let wire: &[u8] = b"* 1 FETCH (UID 7 BODY[] {11}\r\n\0)\r\nA1 OK\r\n FLAGS (\\Seen))\r\n\
            * 2 FETCH (BODY[] {0}\r\n UID 8)\r\nA1 OK done\r\n";
        let whole = frames(&[wire]);
        assert_eq!(whole.len(), 3);
        assert_eq!(whole[0].1, vec![b"\0)\r\nA1 OK\r\n".to_vec()]);
        assert_eq!(whole[1].1, vec![Vec::<u8>::new()]);
        for i in 0..=wire.len() {
            for j in i..=wire.len() {
                let got = frames(&[&wire[..i], &wire[i..j], &wire[j..]]);
                assert_eq!(got, whole, "split at {i} and {j}");
            }
        }
    }

    #[test]
    fn a_large_body_is_read_into_its_own_buffer() {
        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut wire = format!("* 5 FETCH (UID 9 BODY[] {{{}}}\r\n", body.len()).into_bytes();
        wire.extend_from_slice(&body);
        wire.extend_from_slice(b" FLAGS ())\r\n");
        let mut f = Framer::new(1 << 20);
        let mut rest = &wire[..];
        rest = &rest[feed(&mut f, rest)..];
        assert_eq!(f.next_frame(), Ok(None));
        // The room offered now is exactly what the body still lacks.
        let head = wire.len() - body.len() - b" FLAGS ())\r\n".len();
        let taken = wire.len() - rest.len() - head;
        assert_eq!(f.read_room().remaining_mut(), body.len() - taken);
        while f.body_missing() > 0 {
            rest = &rest[feed(&mut f, rest)..];
        }
        assert_eq!(rest, b" FLAGS ())\r\n");
        assert_eq!(f.next_frame(), Ok(None));
        rest = &rest[feed(&mut f, rest)..];
        assert!(rest.is_empty());
        let fr = f.next_frame().unwrap().unwrap();
        assert_eq!(fr.bytes, b"* 5 FETCH (UID 9 BODY[] {0}\r\n FLAGS ())\r\n");
        assert!(fr.bodies == [body], "body differs");
        assert!(!f.has_pending());
    }

    #[test]
    fn consumed_bytes_are_dropped_in_the_middle_of_a_response() {
        // A long first response, then half of a second one with its body already taken:
        // the next read room drops the first (over half the buffer), moving the second.
        let mut first = b"* OK ".to_vec();
        first.extend(std::iter::repeat_n(b'x', 40_000));
        first.extend_from_slice(b"\r\n");
        let mut f = Framer::new(1 << 20);
        let mut read = first.clone();
        read.extend_from_slice(b"* 2 FETCH (BODY[] {3}\r\nabc UID");
        assert_eq!(feed(&mut f, &read), read.len());
        assert_eq!(f.next_frame().unwrap().unwrap().bytes, &first[..]);
        assert_eq!(f.next_frame(), Ok(None));
        feed(&mut f, b" 5)\r\n");
        assert_eq!(f.start, 0, "consumed bytes were dropped");
        let fr = f.next_frame().unwrap().unwrap();
        assert_eq!(fr.bytes, b"* 2 FETCH (BODY[] {0}\r\n UID 5)\r\n");
        assert_eq!(fr.bodies, vec![b"abc".to_vec()]);
    }

    #[test]
    fn literal_forms() {
        assert_eq!(literal_len(b"x {12}\r"), Some(12));
        assert_eq!(literal_len(b"x {12+}"), Some(12));
        assert_eq!(literal_len(b"x ~{0}\r"), Some(0));
        assert_eq!(literal_len(b"x {}\r"), None);
        assert_eq!(literal_len(b"x {1a}\r"), None);
        assert_eq!(literal_len(b"x {99999999999999999999999}\r"), None);
        assert_eq!(literal_len(b"* OK [ALERT] }\r"), None);
    }

    #[test]
    fn body_announcements() {
        assert_eq!(body_digits(b"* 1 FETCH (BODY[] {12}\r", 12), Some(19..21));
        assert_eq!(body_digits(b" body[] {5+}", 5), Some(9..10));
        assert_eq!(body_digits(b" BODY[] {007-}\r", 7), Some(9..12));
        assert_eq!(body_digits(b"BODY[] {5}\r", 5), None);
        assert_eq!(body_digits(b" XBODY[] {5}\r", 5), None);
        assert_eq!(body_digits(b" RFC822 {5}\r", 5), None);
        assert_eq!(body_digits(b" BODY[]<0> {5}\r", 5), None);
        assert_eq!(body_digits(b" BODY[TEXT] {5}\r", 5), None);
        assert_eq!(body_digits(b" BODY[] ~{5}\r", 5), None);
        assert_eq!(body_digits(b" BODY[]  {5}\r", 5), None);
        let huge = u32::MAX as usize + 1;
        assert_eq!(body_digits(b" BODY[] {4294967296}\r", huge), None);
    }

    #[test]
    fn too_long_is_an_error_not_an_allocation() {
        let mut f = Framer::new(10);
        feed(&mut f, b"* OK a very long line without end");
        assert_eq!(f.next_frame(), Err(FrameError::TooLong { limit: 10 }));
        // Taken bodies count at their full size, together with the rest of the response.
        let mut f = Framer::new(100);
        feed(&mut f, b"* 1 FETCH (BODY[] {70}\r\n");
        assert_eq!(f.next_frame(), Ok(None));
        feed(&mut f, &[b'a'; 70]);
        feed(&mut f, b" UID 1 FLAGS (\\Seen)");
        assert_eq!(f.next_frame(), Err(FrameError::TooLong { limit: 100 }));
        // A literal no decoder could take is not worth reading off.
        let mut f = Framer::new(100);
        feed(&mut f, b"* 1 FETCH (BODY[] {99999999999}\r\n");
        assert_eq!(f.next_frame(), Err(FrameError::TooLong { limit: 100 }));
    }

    /// A frame as a test keeps it: its bytes, its bodies and its skipped literals.
    type OwnedFrame = (Vec<u8>, Vec<Vec<u8>>, Vec<Skipped>);

    /// Feeds `chunks` in reads of at most `step` bytes; every frame with its skipped
    /// literals.
    fn frames_skipping(
        max: usize,
        body_limit: Option<usize>,
        wire: &[u8],
        step: usize,
    ) -> Vec<OwnedFrame> {
        let mut f = Framer::new(max);
        f.set_body_limit(body_limit);
        let mut out = Vec::new();
        let mut rest = wire;
        while !rest.is_empty() {
            let n = {
                let mut room = f.read_room();
                let n = rest.len().min(room.remaining_mut()).min(step);
                room.put_slice(&rest[..n]);
                n
            };
            rest = &rest[n..];
            while let Some(fr) = f.next_frame().unwrap() {
                out.push((fr.bytes.to_vec(), fr.bodies, fr.skipped));
            }
        }
        assert!(!f.has_pending(), "bytes left over");
        out
    }

    /// A literal over the limit (the response limit, or the body limit for a `BODY[]`)
    /// is counted off the wire, not kept; the frames after it are as they would be.
    #[test]
    fn oversized_literals_are_skipped_in_step() {
        let big = vec![b'x'; 300_000];
        let mut wire = format!("* 1 FETCH (UID 7 BODY[] {{{}}}\r\n", big.len()).into_bytes();
        wire.extend_from_slice(&big);
        wire.extend_from_slice(b" FLAGS (\\Seen))\r\n* 2 FETCH (UID 8 BODY[] {3}\r\nabc)\r\n");
        wire.extend_from_slice(b"* 3 FETCH (UID 9 BODY[HEADER] {200}\r\n");
        wire.extend_from_slice(&[b'h'; 200]);
        wire.extend_from_slice(b")\r\nc1 OK done\r\n");
        let want = |step| {
            let got = frames_skipping(100_000, Some(150), &wire, step);
            assert_eq!(got.len(), 4, "step {step}");
            assert_eq!(
                got[0].0,
                b"* 1 FETCH (UID 7 BODY[] {0}\r\n FLAGS (\\Seen))\r\n"
            );
            assert_eq!(got[0].1, vec![Vec::<u8>::new()]);
            assert_eq!(
                got[0].2,
                vec![Skipped {
                    body: Some(0),
                    len: 300_000
                }]
            );
            assert_eq!(got[1].1, vec![b"abc".to_vec()]);
            assert!(got[1].2.is_empty());
            // Not a body, and under the response limit: kept.
            assert!(got[2].2.is_empty(), "step {step}");
            assert_eq!(got[3].0, b"c1 OK done\r\n");
        };
        for step in [1 << 20, 65_536, 1000, 7] {
            want(step);
        }
        // Under a small response limit even a literal that is not a body is skipped.
        let got = frames_skipping(100, None, &wire, 4096);
        assert_eq!(got.len(), 4);
        assert_eq!(got[2].0, b"* 3 FETCH (UID 9 BODY[HEADER] {0}\r\n)\r\n");
        assert_eq!(
            got[2].2,
            vec![Skipped {
                body: None,
                len: 200
            }]
        );
        // Two bodies that fit alone but not together: the second is skipped.
        let mut wire = b"* 1 FETCH (BODY[] {40}\r\n".to_vec();
        wire.extend_from_slice(&[b'a'; 40]);
        wire.extend_from_slice(b" BODY[] {40}\r\n");
        wire.extend_from_slice(&[b'b'; 40]);
        wire.extend_from_slice(b")\r\n");
        let got = frames_skipping(100, None, &wire, 9);
        assert_eq!(got[0].1, vec![vec![b'a'; 40], Vec::new()]);
        assert_eq!(
            got[0].2,
            vec![Skipped {
                body: Some(1),
                len: 40
            }]
        );
    }
}
