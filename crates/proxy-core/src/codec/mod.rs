//! The strict HTTP/1.1 codec, the same for requests and responses: head
//! parsing ([`request`], [`response`]) over shared field storage and framing
//! rules, one chunked decoder ([`chunked`]) and one incremental body reader
//! ([`body`]) for both directions. Pure: no I/O, so every rule is unit
//! tested on bytes.
//!
//! Strict on purpose: whatever two HTTP parsers could read differently
//! (request smuggling, response splitting, cache poisoning) is refused on
//! both sides: `Content-Length` together with `Transfer-Encoding`, several
//! `Content-Length`s, a length that is not plain digits, any transfer coding
//! but a lone `chunked`, malformed chunk sizes, bare LF line ends, obsolete
//! line folding, control characters in values.

pub mod body;
pub mod chunked;
mod head;
pub mod request;
pub mod response;

pub use body::BodyDecoder;
pub use chunked::{ChunkError, ChunkedDecoder};
pub use head::{list_tokens, push_decimal, Framing, HeaderFields};
pub use request::{parse_request, RequestHead};
pub use response::{parse_response, ResponseHead};

/// Why a head (of a request or a response) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// More bytes or more fields than the limits allow.
    #[error("head too large")]
    TooLarge,
    /// Not valid HTTP/1.1, or ambiguous; the reason says which rule.
    #[error("invalid head: {0}")]
    Invalid(&'static str),
}

/// Limits on a head, in either direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// Largest head (start line, fields, blank line) in bytes.
    pub max_bytes: usize,
    /// Most header fields.
    pub max_fields: usize,
}

impl Default for HeadLimits {
    /// 64 KiB and 128 fields (what the LB accepts from a backend).
    fn default() -> Self {
        HeadLimits {
            max_bytes: 64 * 1024,
            max_fields: 128,
        }
    }
}

/// Header slots kept on the stack; more are allocated (a head is parsed
/// once per message, so the slots are not even initialised).
const STACK_FIELDS: usize = 128;
