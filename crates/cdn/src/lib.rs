//! The CDN edge (`scalestack cdn`, issue 9): a shared HTTP cache as RFC 9111
//! defines it, in front of the origin, built on `proxy-core`. Built in
//! rooms: `policy/` decides (pure functions, no I/O: what may be stored,
//! for how long, what a request may be served, the cache key), `store/`
//! keeps objects (memory tier with a scan-resistant eviction, disk tier),
//! and the server that ties them to the proxy core comes next.
//!
//! The server's contract (what `up`, the web tier and the benchmarks use):
//! `scalestack cdn --config FILE` (a [`config::CdnConfig`] as TOML), with
//! `--listen`, `--admin-listen`, `--origin`, `--memory-mb` and `--threads`
//! overriding the file. The admin port serves `GET /metrics`, `GET /readyz`,
//! `GET /stats` (JSON) and `POST /purge` with exactly one of
//! `url=<absolute URL>`, `tag=<tag>` or `prefix=<absolute URL prefix>`, and
//! `mode=soft` for a soft purge (default hard); it answers
//! `{"purged": N}` (objects matched), or 400 with `{"error": …}` and
//! changes nothing.

pub mod config;
pub mod policy;
mod server;
pub mod store;

pub use config::CdnConfig;
pub use server::Edge;
