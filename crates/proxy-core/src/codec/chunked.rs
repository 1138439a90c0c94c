//! The one chunked decoder, for request and response bodies alike: a byte
//! state machine fed whatever has arrived, in any split, that finds where
//! the message ends and hands out the chunk data.
//!
//! Strict: a chunk size is 1 to 15 hex digits followed by `;extension` or
//! CRLF (no whitespace, no sign, no `0x`); every line ends in CRLF (a bare
//! LF or CR is refused); chunk data must be followed by CRLF; a size line
//! is at most 1 KiB and the trailer section at most 8 KiB.

/// Longest chunk-size line (digits and extensions), in bytes.
pub const MAX_SIZE_LINE: usize = 1024;
/// Largest trailer section, in bytes.
pub const MAX_TRAILER_BYTES: usize = 8192;

/// Why a chunked body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// Malformed framing; the reason says which rule.
    #[error("invalid chunked body: {0}")]
    Invalid(&'static str),
    /// The trailer section is larger than [`MAX_TRAILER_BYTES`].
    #[error("chunked trailer section too large")]
    TrailersTooLarge,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    #[default]
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    Trailer,
    TrailerLf,
    Done,
}

/// Follows chunked framing across reads.
#[derive(Debug, Default, Clone)]
pub struct ChunkedDecoder {
    state: State,
    /// The size being read, then what is left of the chunk's data.
    size: u64,
    digits: u8,
    /// Bytes of the current size line or trailer line.
    line: usize,
    trailer_bytes: usize,
}

impl ChunkedDecoder {
    /// A decoder at the start of a body.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the final chunk and the trailer section have been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes `input` up to the end of the message. `on_size` hears each
    /// chunk's size before its data (to refuse or budget it), `on_data`
    /// gets the data in pieces. Returns how many bytes of `input` belong to
    /// the message and whether it ended; bytes after the end are left.
    pub fn feed<E: From<ChunkError>>(
        &mut self,
        input: &[u8],
        mut on_size: impl FnMut(u64) -> Result<(), E>,
        mut on_data: impl FnMut(&[u8]),
    ) -> Result<(usize, bool), E> {
        use State::*;
        let invalid = |why| E::from(ChunkError::Invalid(why));
        let mut i = 0;
        while i < input.len() {
            let c = input[i];
            match self.state {
                Size => match c {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        self.digits += 1;
                        if self.digits > 15 {
                            return Err(invalid("chunk size too large"));
                        }
                        self.size = self.size * 16 + u64::from((c as char).to_digit(16).unwrap_or(0));
                    }
                    b';' if self.digits > 0 => {
                        self.state = Extension;
                        self.line = usize::from(self.digits) + 1;
                    }
                    b'\r' if self.digits > 0 => self.state = SizeLf,
                    _ => return Err(invalid("invalid chunk size")),
                },
                Extension => {
                    if c == b'\r' {
                        self.state = SizeLf;
                    } else if (c < 0x20 && c != b'\t') || c == 0x7f {
                        return Err(invalid("invalid chunk extension"));
                    } else {
                        self.line += 1;
                        if self.line > MAX_SIZE_LINE {
                            return Err(invalid("chunk line too long"));
                        }
                    }
                }
                SizeLf => {
                    if c != b'\n' {
                        return Err(invalid("chunk size line not ended by CRLF"));
                    }
                    self.line = 0;
                    if self.size == 0 {
                        self.state = Trailer;
                    } else {
                        on_size(self.size)?;
                        self.state = Data;
                    }
                }
                Data => {
                    let take = usize::try_from(self.size)
                        .unwrap_or(usize::MAX)
                        .min(input.len() - i);
                    on_data(&input[i..i + take]);
                    self.size -= take as u64;
                    i += take;
                    if self.size == 0 {
                        self.state = DataCr;
                    }
                    continue;
                }
                DataCr => {
                    if c != b'\r' {
                        return Err(invalid("chunk data not followed by CRLF"));
                    }
                    self.state = DataLf;
                }
                DataLf => {
                    if c != b'\n' {
                        return Err(invalid("chunk data not followed by CRLF"));
                    }
                    self.state = Size;
                    self.digits = 0;
                }
                Trailer => {
                    if c == b'\r' {
                        self.state = TrailerLf;
                    } else if c == b'\n' {
                        return Err(invalid("bare LF in trailer"));
                    } else {
                        self.line += 1;
                        self.trailer_bytes += 1;
                        if self.trailer_bytes > MAX_TRAILER_BYTES {
                            return Err(E::from(ChunkError::TrailersTooLarge));
                        }
                    }
                }
                TrailerLf => {
                    if c != b'\n' {
                        return Err(invalid("trailer line not ended by CRLF"));
                    }
                    if self.line == 0 {
                        self.state = Done;
                        return Ok((i + 1, true));
                    }
                    self.line = 0;
                    self.state = Trailer;
                }
                Done => return Ok((i, true)),
            }
            i += 1;
        }
        Ok((i, self.state == Done))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(input: &[u8]) -> Result<(usize, bool, Vec<u8>), ChunkError> {
        let mut data = Vec::new();
        let (used, done) =
            ChunkedDecoder::new().feed(input, |_| Ok::<_, ChunkError>(()), |d| data.extend_from_slice(d))?;
        Ok((used, done, data))
    }

    #[test]
    fn finds_the_end_in_any_split() {
        let body = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\nX-T: 1\r\n\r\n";
        for split in 0..body.len() {
            let mut d = ChunkedDecoder::new();
            let mut data = Vec::new();
            let (a, done_a) = d
                .feed(
                    &body[..split],
                    |_| Ok::<_, ChunkError>(()),
                    |x| data.extend_from_slice(x),
                )
                .unwrap();
            assert_eq!(a, split);
            assert!(!done_a);
            let (b, done) = d
                .feed(
                    &body[split..],
                    |_| Ok::<_, ChunkError>(()),
                    |x| data.extend_from_slice(x),
                )
                .unwrap();
            assert_eq!((a + b, done), (body.len(), true), "split at {split}");
            assert_eq!(data, b"Wikipedia");
            assert!(d.is_done());
        }
        assert_eq!(decode(b"0\r\n\r\nEXTRA").unwrap(), (5, true, vec![]));
    }

    #[test]
    fn sizes_are_announced_before_their_data() {
        let mut sizes = Vec::new();
        let r = ChunkedDecoder::new().feed(
            b"3\r\nabc\r\nA\r\n0123456789\r\n0\r\n\r\n",
            |n| {
                sizes.push(n);
                if n > 5 {
                    Err(ChunkError::Invalid("too big for the test"))
                } else {
                    Ok(())
                }
            },
            |_| {},
        );
        assert_eq!(r, Err(ChunkError::Invalid("too big for the test")));
        assert_eq!(sizes, [3, 10]);
    }

    #[test]
    fn malformed_chunks_are_refused() {
        for bad in [
            &b"x\r\n"[..],
            b"4\r\nWikiX\r\n",
            b"\r\n",
            b"4\rX",
            b"4\nWiki\r\n",
            b"-1\r\n",
            b"+1\r\n",
            b"0x1\r\n",
            b" 1\r\n",
            b"1 \r\n",
            b"1 ;a\r\n",
            b"1;a\nb\r\n",
            b"ffffffffffffffff0\r\n",
            b"10000000000000003\r\n",
            b"0\r\nX-T: 1\n\r\n",
            b"0\r\nX-T: 1\rX",
            b"1\r\na\n",
        ] {
            assert!(
                matches!(decode(bad), Err(ChunkError::Invalid(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long_ext = [b"1;".as_slice(), &[b'a'; MAX_SIZE_LINE], b"\r\n"].concat();
        assert!(matches!(decode(&long_ext), Err(ChunkError::Invalid(_))));
        let big_trailer = [b"0\r\nX: ".as_slice(), &[b'a'; MAX_TRAILER_BYTES], b"\r\n\r\n"].concat();
        assert_eq!(decode(&big_trailer), Err(ChunkError::TrailersTooLarge));
    }
}
