//! An incremental body reader over any [`Framing`]: fed what has arrived,
//! it says how much belongs to the message, hands out the payload (chunk
//! framing removed) and knows when the message ended. The upstream client,
//! the relay and the load generator all read bodies with it.

use super::chunked::{ChunkError, ChunkedDecoder};
use super::Framing;

/// Where a body stands.
#[derive(Debug, Clone)]
pub struct BodyDecoder {
    framing: Framing,
    /// Bytes still to come of a `Length` body.
    remaining: u64,
    chunked: ChunkedDecoder,
    done: bool,
}

impl BodyDecoder {
    /// A reader at the start of a body delimited by `framing`.
    pub fn new(framing: Framing) -> Self {
        let remaining = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        BodyDecoder {
            framing,
            remaining,
            chunked: ChunkedDecoder::new(),
            done: matches!(framing, Framing::None | Framing::Length(0)),
        }
    }

    /// The framing it follows.
    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// Whether the whole body has been read.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Consumes `input` up to the end of the body and passes the payload
    /// to `on_data`; returns how many bytes of `input` belong to the body
    /// (the rest is the next message's). A close-delimited body takes
    /// everything and ends only at [`BodyDecoder::eof`].
    pub fn feed(&mut self, input: &[u8], mut on_data: impl FnMut(&[u8])) -> Result<usize, ChunkError> {
        if self.done {
            return Ok(0);
        }
        match self.framing {
            Framing::None => Ok(0),
            Framing::Length(_) => {
                let take = usize::try_from(self.remaining)
                    .unwrap_or(usize::MAX)
                    .min(input.len());
                on_data(&input[..take]);
                self.remaining -= take as u64;
                self.done = self.remaining == 0;
                Ok(take)
            }
            Framing::Chunked => {
                let (used, done) = self.chunked.feed(input, |_| Ok::<_, ChunkError>(()), on_data)?;
                self.done = done;
                Ok(used)
            }
            Framing::UntilClose => {
                on_data(input);
                Ok(input.len())
            }
        }
    }

    /// The peer closed the connection: completes a close-delimited body;
    /// false when the body was cut short.
    pub fn eof(&mut self) -> bool {
        if self.framing == Framing::UntilClose {
            self.done = true;
        }
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(framing: Framing, input: &[u8], step: usize) -> (usize, bool, Vec<u8>) {
        let mut d = BodyDecoder::new(framing);
        let mut data = Vec::new();
        let mut used = 0;
        for piece in input.chunks(step) {
            used += d.feed(piece, |x| data.extend_from_slice(x)).unwrap();
        }
        (used, d.is_done(), data)
    }

    #[test]
    fn every_framing_in_any_split() {
        for step in 1..12 {
            assert_eq!(
                read_all(Framing::Length(3), b"abcNEXT", step),
                (3, true, b"abc".to_vec())
            );
            assert_eq!(
                read_all(Framing::Chunked, b"2\r\nab\r\n1\r\nc\r\n0\r\n\r\nNEXT", step),
                (18, true, b"abc".to_vec())
            );
            assert_eq!(
                read_all(Framing::UntilClose, b"abc", step),
                (3, false, b"abc".to_vec())
            );
        }
        assert_eq!(read_all(Framing::None, b"NEXT", 4), (0, true, vec![]));
        assert_eq!(read_all(Framing::Length(0), b"NEXT", 4), (0, true, vec![]));
    }

    #[test]
    fn eof_ends_only_a_close_delimited_body() {
        let mut d = BodyDecoder::new(Framing::UntilClose);
        d.feed(b"abc", |_| {}).unwrap();
        assert!(d.eof());
        let mut d = BodyDecoder::new(Framing::Length(5));
        d.feed(b"abc", |_| {}).unwrap();
        assert!(!d.eof());
        let mut d = BodyDecoder::new(Framing::Chunked);
        d.feed(b"3\r\nabc", |_| {}).unwrap();
        assert!(!d.eof());
    }
}
