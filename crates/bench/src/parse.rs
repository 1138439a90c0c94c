//! The load generator's response reader: proxy-core's codec (the same
//! strict head parser and body framing the load balancer uses) fed from a
//! connection's read buffer. It keeps only the status and whether the
//! connection stays open, and skips each body as it arrives without
//! buffering it.

use bytes::{Buf, BytesMut};
use http::Method;
use proxy_core::codec::{parse_response, BodyDecoder, ChunkError, HeadError, HeadLimits};

/// Largest response head (status line and headers) accepted, in bytes.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most headers a response may carry.
const MAX_HEADERS: usize = 64;

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
    /// The head is not valid HTTP/1.1, is ambiguous, or is too large.
    #[error("response head: {0}")]
    Head(#[from] HeadError),
    /// A chunk size line, chunk terminator or trailer is malformed.
    #[error("{0}")]
    Chunk(#[from] ChunkError),
    /// The connection closed before the response was complete.
    #[error("connection closed before the response was complete")]
    Incomplete,
}

impl From<ParseError> for std::io::Error {
    fn from(e: ParseError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }
}

/// Parses one response at a time from a connection's read buffer.
///
/// Feed it with [`ResponseParser::parse`] after every read; bytes it has used
/// are removed from the buffer. It is ready for the next response as soon as
/// it has returned one.
#[derive(Debug, Default)]
pub struct ResponseParser {
    /// The response whose body is being skipped.
    body: Option<(Response, BodyDecoder)>,
}

impl ResponseParser {
    /// A parser waiting for a response head.
    pub fn new() -> Self {
        Self::default()
    }

    /// Consumes what it can of `buf`; returns the response once it is complete
    /// and `None` while more bytes are needed.
    pub fn parse(&mut self, buf: &mut BytesMut) -> Result<Option<Response>, ParseError> {
        if self.body.is_none() {
            let limits = HeadLimits {
                max_bytes: MAX_HEAD_BYTES,
                max_fields: MAX_HEADERS,
            };
            // The load generator only sends GETs.
            let Some(head) = parse_response(buf, &Method::GET, &limits)? else {
                return Ok(None);
            };
            let response = Response {
                status: head.status,
                keep_alive: head.reusable,
            };
            self.body = Some((response, BodyDecoder::new(head.framing)));
        }
        let Some((response, body)) = &mut self.body else {
            return Ok(None);
        };
        let used = body.feed(buf, |_| {})?;
        buf.advance(used);
        if body.is_done() {
            let response = *response;
            self.body = None;
            return Ok(Some(response));
        }
        Ok(None)
    }

    /// Called when the peer closed the connection: completes a response whose
    /// body is delimited by the close, and fails any other.
    pub fn eof(&mut self) -> Result<Response, ParseError> {
        let (response, mut body) = self.body.take().ok_or(ParseError::Incomplete)?;
        if body.eof() {
            Ok(response)
        } else {
            Err(ParseError::Incomplete)
        }
    }
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
            HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n";
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

    /// The codec's strictness holds for the load generator too: what a
    /// proxy would refuse is an error here, not a guess.
    #[test]
    fn ambiguous_framing_is_refused() {
        for input in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
            b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
        ] {
            assert!(
                matches!(feed(input, input.len()), Err(ParseError::Head(HeadError::Invalid(_)))),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
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
            Err(ParseError::Head(HeadError::Invalid("invalid Content-Length")))
        );
        assert!(matches!(
            feed(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                64
            ),
            Err(ParseError::Head(HeadError::Invalid(_)))
        ));
        let huge = [
            b"HTTP/1.1 200 OK\r\nX-Big: ".as_slice(),
            &[b'a'; MAX_HEAD_BYTES + 1],
        ]
        .concat();
        assert_eq!(feed(&huge, 4096), Err(ParseError::Head(HeadError::TooLarge)));
    }

    #[test]
    fn malformed_chunks_are_rejected() {
        let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        for body in [&b"zz\r\nhello\r\n"[..], b"2\r\nokXX0\r\n\r\n", b"2\r\nok\rX"] {
            let input = [head.as_slice(), body].concat();
            assert!(
                matches!(feed(&input, input.len()), Err(ParseError::Chunk(_))),
                "{body:?}"
            );
        }
    }
}
