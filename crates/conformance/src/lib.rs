//! One conformance battery per port of `domain::ports`, run against every
//! adapter (as hickory-dns runs one battery against every zone handler):
//! an adapter crate's tests hand the battery an instance of its adapter (the
//! queue battery, whose cases need an empty queue each, a factory of fresh
//! ones). The batteries replace the per-adapter copies of the same tests
//! that had drifted apart.
//!
//! Each battery is a set of `pub async fn` cases taking the adapter under
//! test, plus a `run_all` that runs every case, so an adapter gains a new
//! case without touching its own tests.

pub mod blobs;
pub mod cache;
pub mod queue;
pub mod sessions;
pub mod store;
pub mod support;
