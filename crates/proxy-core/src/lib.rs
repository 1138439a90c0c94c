//! The HTTP/1.1 proxy core shared by the load balancer (`lb`) and the CDN:
//! everything a reverse proxy needs that is not policy.
//!
//! - [`codec`]: the strict codec, the same rules for requests and responses
//!   (one [`Framing`], one chunked decoder, heads kept as bytes with offsets);
//! - [`hop_by_hop`]: the fields never forwarded;
//! - [`deadline`]: coarse per-connection deadlines (one slot per
//!   connection, a sweeper instead of a timer per wait);
//! - [`downstream`]: reading requests off a client connection with limits
//!   and a shared body budget, and the proxy's own small responses;
//! - [`pool`]: keep-alive upstream connections per peer and per thread;
//! - [`client`]: the upstream client (`send` → response head + body);
//! - [`relay`]: a request to an upstream and its answer back, with the
//!   decisions (peer, rewrites, retries) left to [`ProxyHooks`];
//! - [`serve`]: thread per core, the accept loop with its connection limit,
//!   and a connection's requests one by one ([`serve::RequestReader`]).
//!
//! ```text
//! client ─▶ downstream::read_head/read_body ─▶ relay(hooks) ─▶ hooks.select ─▶ client::send (pool) ─▶ upstream
//!        ◀─────────────── response head rewritten by the hooks, body streamed ◀──────────────────────┘
//! ```
//!
//! Modules depend downwards only: `serve` → `downstream`, `pool`;
//! `relay` → `client` → `pool`, `codec`, `deadline`; `downstream` →
//! `codec`, `deadline`; `codec` → nothing of the
//! crate but its own parts.

pub mod client;
pub mod codec;
pub mod deadline;
pub mod downstream;
pub mod error;
pub mod hop_by_hop;
pub mod pool;
pub mod relay;
pub mod serve;

pub use client::{is_idempotent, BodyError, Client, ClientConfig, Response, SendError};
pub use codec::{Framing, HeadError, HeadLimits, HeaderFields, RequestHead, ResponseHead};
pub use deadline::{Clock, Deadline, Timer};
pub use downstream::{Body, ReadError, ReadLimits};
pub use error::Fault;
pub use pool::{Pool, PoolConfig};
pub use relay::{relay, Downstream, Failure, ProxyHooks, Relayed, Scratch};
