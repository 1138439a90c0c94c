//! A tiny incremental HTTP/1.x response parser for the load generator.
//!
//! It only needs the status and where the response ends, so it parses the
//! head with `httparse` and then skips the body as it arrives (Content-Length,
//! chunked, or delimited by the connection closing) without buffering it.

use bytes::{Buf, BytesMut};

/// Most headers a response may carry.
const MAX_HEADERS: usize = 64;
/// Largest response head (status line and headers) accepted, in bytes.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Largest chunk-size or trailer line accepted, in bytes.
const MAX_LINE_BYTES: usize = 4 * 1024;

/// What the load generator keeps of a complete response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    /// The status code, e.g. 200.
    pub status: u16,
    /// Whether the connection may carry another request afterwards.
    pub keep_alive: bool,
}

/// Why a response could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The status line or a header is not valid HTTP/1.x.
    #[error("malformed response head: {0}")]
    Head(#[from] httparse::Error),
    /// The head did not end within [`MAX_HEAD_BYTES`].
    #[error("response head larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    /// A Content-Length header is not a number, or two of them disagree.
    #[error("invalid content-length header")]
    ContentLength,
    /// A chunk size line, chunk terminator or trailer is malformed.
    #[error("malformed chunked body")]
    Chunk,
    /// The connection closed before the response was complete.
    #[error("connection closed before the response was complete")]
    Incomplete,
}

impl From<ParseError> for std::io::Error {
    fn from(e: ParseError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Fixed { remaining: u64 },
    ChunkSize,
    ChunkData { remaining: u64 },
    ChunkDataEnd,
    Trailers,
    UntilClose,
}

/// Parses one response at a time from a connection's read buffer.
///
/// Feed it with [`ResponseParser::parse`] after every read; bytes it has used
/// are removed from the buffer. It is ready for the next response as soon as
/// it has returned one.
#[derive(Debug)]
pub struct ResponseParser {
    state: State,
    status: u16,
    keep_alive: bool,
}

impl Default for ResponseParser {
    fn default() -> Self {
        Self::new()
    }
}

impl ResponseParser {
    /// A parser waiting for a response head.
    pub fn new() -> Self {
        Self {
            state: State::Head,
            status: 0,
            keep_alive: true,
        }
    }

    /// Consumes what it can of `buf`; returns the response once it is complete
    /// and `None` while more bytes are needed.
    pub fn parse(&mut self, buf: &mut BytesMut) -> Result<Option<Response>, ParseError> {
        loop {
            match self.state {
                State::Head => {
                    if !self.parse_head(buf)? {
                        return Ok(None);
                    }
                }
                State::Fixed { remaining } => {
                    let remaining = skip(buf, remaining);
                    if remaining > 0 {
                        self.state = State::Fixed { remaining };
                        return Ok(None);
                    }
                    return Ok(Some(self.finish()));
                }
                State::ChunkSize => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        buf.advance(used);
                        self.state = if size == 0 {
                            State::Trailers
                        } else {
                            State::ChunkData { remaining: size }
                        };
                    }
                    Ok(httparse::Status::Partial) if buf.len() <= MAX_LINE_BYTES => return Ok(None),
                    Ok(httparse::Status::Partial) | Err(_) => return Err(ParseError::Chunk),
                },
                State::ChunkData { remaining } => {
                    let remaining = skip(buf, remaining);
                    if remaining > 0 {
                        self.state = State::ChunkData { remaining };
                        return Ok(None);
                    }
                    self.state = State::ChunkDataEnd;
                }
                State::ChunkDataEnd => {
                    if buf.len() < 2 {
                        if buf.first().is_some_and(|&b| b != b'\r') {
                            return Err(ParseError::Chunk);
                        }
                        return Ok(None);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(ParseError::Chunk);
                    }
                    buf.advance(2);
                    self.state = State::ChunkSize;
                }
                State::Trailers => match buf.windows(2).position(|w| w == b"\r\n") {
                    // An empty line ends the trailer section and the message.
                    Some(0) => {
                        buf.advance(2);
                        return Ok(Some(self.finish()));
                    }
                    // A trailer field: its content does not matter here.
                    Some(end) => buf.advance(end + 2),
                    None if buf.len() <= MAX_LINE_BYTES => return Ok(None),
                    None => return Err(ParseError::Chunk),
                },
                State::UntilClose => {
                    buf.clear();
                    return Ok(None);
                }
            }
        }
    }

    /// Called when the peer closed the connection: completes a response whose
    /// body is delimited by the close, and fails any other.
    pub fn eof(&mut self) -> Result<Response, ParseError> {
        if self.state == State::UntilClose {
            Ok(self.finish())
        } else {
            self.state = State::Head;
            Err(ParseError::Incomplete)
        }
    }

    /// Parses the head if it is complete and sets up the body's framing;
    /// returns whether it was complete.
    fn parse_head(&mut self, buf: &mut BytesMut) -> Result<bool, ParseError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut head = httparse::Response::new(&mut headers);
        let used = match head.parse(buf)? {
            httparse::Status::Complete(used) => used,
            httparse::Status::Partial if buf.len() > MAX_HEAD_BYTES => return Err(ParseError::HeadTooLarge),
            httparse::Status::Partial => return Ok(false),
        };
        let status = head.code.unwrap_or(0);
        // HTTP/1.1 is persistent by default, HTTP/1.0 is not.
        let mut keep_alive = head.version == Some(1);
        let mut content_length: Option<u64> = None;
        let mut chunked = false;
        for header in head.headers.iter() {
            if header.name.eq_ignore_ascii_case("content-length") {
                let value = std::str::from_utf8(header.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .ok_or(ParseError::ContentLength)?;
                if content_length.is_some_and(|previous| previous != value) {
                    return Err(ParseError::ContentLength);
                }
                content_length = Some(value);
            } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                // Chunked applies when it is the last coding listed.
                chunked = header
                    .value
                    .rsplit(|&b| b == b',')
                    .next()
                    .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            } else if header.name.eq_ignore_ascii_case("connection") {
                for token in header.value.split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        keep_alive = false;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        keep_alive = true;
                    }
                }
            }
        }
        buf.advance(used);
        self.status = status;
        self.keep_alive = keep_alive;
        self.state = if (100..200).contains(&status) {
            // An interim response: the final one follows on the same connection.
            State::Head
        } else if status == 204 || status == 304 {
            State::Fixed { remaining: 0 }
        } else if chunked {
            // Transfer-Encoding overrides Content-Length (RFC 9112, 6.3).
            State::ChunkSize
        } else if let Some(remaining) = content_length {
            State::Fixed { remaining }
        } else {
            self.keep_alive = false;
            State::UntilClose
        };
        Ok(true)
    }

    fn finish(&mut self) -> Response {
        self.state = State::Head;
        Response {
            status: self.status,
            keep_alive: self.keep_alive,
        }
    }
}

/// Drops up to `remaining` body bytes from the front of `buf`; returns how
/// many are still to come.
fn skip(buf: &mut BytesMut, remaining: u64) -> u64 {
    let take = usize::try_from(remaining).unwrap_or(usize::MAX).min(buf.len());
    buf.advance(take);
    remaining - take as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes and collects the responses.
    fn feed(input: &[u8], step: usize) -> Result<Vec<Response>, ParseError> {
        let mut parser = ResponseParser::new();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in input.chunks(step) {
            buf.extend_from_slice(piece);
            while let Some(response) = parser.parse(&mut buf)? {
                out.push(response);
            }
        }
        Ok(out)
    }

    fn every_split(input: &[u8]) -> Vec<Response> {
        let whole = feed(input, input.len()).expect("parses whole");
        for step in 1..input.len() {
            assert_eq!(feed(input, step).expect("parses in pieces"), whole, "step {step}");
        }
        whole
    }

    #[test]
    fn content_length_body_is_skipped() {
        let input = b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\n\r\nHello, world!";
        assert_eq!(
            every_split(input),
            vec![Response {
                status: 200,
                keep_alive: true
            }]
        );
    }

    #[test]
    fn consecutive_responses_on_one_connection() {
        let input =
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 503 Busy\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(
            every_split(input),
            vec![
                Response {
                    status: 200,
                    keep_alive: true
                },
                Response {
                    status: 503,
                    keep_alive: true
                }
            ]
        );
    }

    #[test]
    fn chunked_body_with_extension_and_trailer() {
        let input = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
            5\r\nHello\r\n8;ext=1\r\n, world!\r\n0\r\nX-Trailer: yes\r\n\r\n\
            HTTP/1.1 404 Not Found\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(
            every_split(input),
            vec![
                Response {
                    status: 200,
                    keep_alive: true
                },
                Response {
                    status: 404,
                    keep_alive: true
                }
            ]
        );
    }

    #[test]
    fn chunked_overrides_content_length() {
        let input = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
        assert_eq!(
            every_split(input),
            vec![Response {
                status: 200,
                keep_alive: true
            }]
        );
    }

    #[test]
    fn connection_close_and_http10_are_not_kept_alive() {
        let close = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            every_split(close),
            vec![Response {
                status: 200,
                keep_alive: false
            }]
        );
        let http10 = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            every_split(http10),
            vec![Response {
                status: 200,
                keep_alive: false
            }]
        );
        let http10_ka = b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            every_split(http10_ka),
            vec![Response {
                status: 200,
                keep_alive: true
            }]
        );
    }

    #[test]
    fn no_body_statuses_and_interim_responses() {
        let input = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n";
        assert_eq!(
            every_split(input),
            vec![
                Response {
                    status: 204,
                    keep_alive: true
                },
                Response {
                    status: 304,
                    keep_alive: true
                }
            ]
        );
    }

    #[test]
    fn body_delimited_by_close_completes_at_eof() {
        let mut parser = ResponseParser::new();
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\n\r\nsome body"[..]);
        assert_eq!(parser.parse(&mut buf), Ok(None));
        assert!(buf.is_empty());
        assert_eq!(
            parser.eof(),
            Ok(Response {
                status: 200,
                keep_alive: false
            })
        );
    }

    #[test]
    fn eof_inside_a_response_is_an_error() {
        let mut parser = ResponseParser::new();
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab"[..]);
        assert_eq!(parser.parse(&mut buf), Ok(None));
        assert_eq!(parser.eof(), Err(ParseError::Incomplete));
        let mut parser = ResponseParser::new();
        assert_eq!(parser.eof(), Err(ParseError::Incomplete));
    }

    #[test]
    fn malformed_heads_are_rejected() {
        assert!(matches!(
            feed(b"HTTX/1.1 200 OK\r\n\r\n", 64),
            Err(ParseError::Head(_))
        ));
        assert!(matches!(
            feed(b"HTTP/1.1 2x0 OK\r\n\r\n", 64),
            Err(ParseError::Head(_))
        ));
        assert_eq!(
            feed(b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n", 64),
            Err(ParseError::ContentLength)
        );
        assert_eq!(
            feed(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                64
            ),
            Err(ParseError::ContentLength)
        );
        let huge = [
            b"HTTP/1.1 200 OK\r\nX-Big: ".as_slice(),
            &[b'a'; MAX_HEAD_BYTES + 1],
        ]
        .concat();
        assert_eq!(feed(&huge, 4096), Err(ParseError::HeadTooLarge));
    }

    #[test]
    fn malformed_chunks_are_rejected() {
        let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        for body in [&b"zz\r\nhello\r\n"[..], b"2\r\nokXX0\r\n\r\n", b"2\r\nok\rX"] {
            let input = [head.as_slice(), body].concat();
            assert_eq!(feed(&input, input.len()), Err(ParseError::Chunk), "{body:?}");
        }
    }
}
