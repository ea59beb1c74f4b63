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

/// Why no frame could be produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The response is larger than the configured maximum.
    TooLong { limit: usize },
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
}

impl Framer {
    pub fn new(max_response_bytes: usize) -> Framer {
        Framer {
            buf: Vec::with_capacity(64 * 1024),
            start: 0,
            line: 0,
            scan: 0,
            max: max_response_bytes,
        }
    }

    /// Room to read into: the caller writes at most `spare.len()` bytes, then calls
    /// [`Framer::filled`] with the count.
    pub fn spare(&mut self, want: usize) -> &mut [u8] {
        if self.start > 0 && (self.start == self.buf.len() || self.start >= self.buf.capacity() / 2)
        {
            // Drop consumed bytes with one move, not per byte.
            self.buf.drain(..self.start);
            self.scan -= self.start;
            self.line -= self.start;
            self.start = 0;
        }
        let len = self.buf.len();
        self.buf.resize(len + want, 0);
        &mut self.buf[len..]
    }

    /// Records that `n` bytes were written into the last [`Framer::spare`] (the rest of the
    /// spare room is dropped).
    pub fn filled(&mut self, want: usize, n: usize) {
        let len = self.buf.len();
        self.buf.truncate(len - want + n);
    }

    /// True if bytes are buffered that belong to no complete response yet.
    pub fn has_pending(&self) -> bool {
        self.start < self.buf.len()
    }

    /// The next complete response, if buffered. Its bytes stay valid until the next call.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        loop {
            let Some(nl) = memchr(b'\n', &self.buf[self.scan..]) else {
                if self.buf.len() - self.start > self.max {
                    return Err(FrameError::TooLong { limit: self.max });
                }
                self.scan = self.buf.len();
                return Ok(None);
            };
            let eol = self.scan + nl; // index of '\n'
            match literal_len(&self.buf[self.line..eol]) {
                Some(n) => {
                    let end = eol + 1 + n;
                    if end - self.start > self.max {
                        return Err(FrameError::TooLong { limit: self.max });
                    }
                    if end > self.buf.len() {
                        // Wait for the whole literal; rescan this line when more arrives.
                        return Ok(None);
                    }
                    self.line = end;
                    self.scan = end;
                }
                None => {
                    let frame = self.start..eol + 1;
                    self.start = eol + 1;
                    self.line = self.start;
                    self.scan = self.start;
                    return Ok(Some(&self.buf[frame]));
                }
            }
        }
    }
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == needle)
}

/// The length announced at the end of `line` (without its `\n`): `{123}`, `{123+}`,
/// `{123-}` or `~{123}`, optionally followed by `\r`.
fn literal_len(line: &[u8]) -> Option<usize> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(f: &mut Framer, bytes: &[u8]) {
        let spare = f.spare(bytes.len());
        spare.copy_from_slice(bytes);
        f.filled(bytes.len(), bytes.len());
    }

    fn frames(chunks: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut f = Framer::new(1 << 20);
        let mut out = Vec::new();
        for c in chunks {
            feed(&mut f, c);
            while let Some(fr) = f.next_frame().unwrap() {
                out.push(fr.to_vec());
            }
        }
        out
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
                b"* OK hi\r\n".to_vec(),
                b"* 1 FETCH (BODY[] {5}\r\nab\r\nc UID 4)\r\n".to_vec(),
                b"A1 OK done\r\n".to_vec()
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
        assert_eq!(got.len(), 2);
        assert!(got[0].ends_with(b")\r\n"));
        assert_eq!(got[1], b"A2 OK\r\n");
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
    fn too_long_is_an_error_not_an_allocation() {
        let mut f = Framer::new(100);
        feed(&mut f, b"* 1 FETCH (BODY[] {1000000000}\r\n");
        assert_eq!(f.next_frame(), Err(FrameError::TooLong { limit: 100 }));
        let mut f = Framer::new(10);
        feed(&mut f, b"* OK a very long line without end");
        assert_eq!(f.next_frame(), Err(FrameError::TooLong { limit: 10 }));
    }
}
