//! The CDN edge (`scalestack cdn`, issue 9): a shared HTTP cache as RFC 9111
//! defines it, in front of the origin, built on `proxy-core`. Built in
//! rooms: `policy/` decides (pure functions, no I/O: what may be stored,
//! for how long, what a request may be served, the cache key), `store/`
//! keeps objects (memory tier with a scan-resistant eviction, disk tier),
//! and the server that ties them to the proxy core comes next.

pub mod policy;
pub mod store;
