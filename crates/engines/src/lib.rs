//! Managed engines started from the installed binaries: private PostgreSQL
//! clusters (a primary and streaming replicas, with failover), Redis and NATS
//! (JetStream) servers, for `scalestack up` (under the data directory) and for the test
//! harness (in temporary directories on free ports).
//!
//! Invariants:
//! - Every process spawned here dies with its owner: its handle kills it when
//!   dropped, and the kernel signals it when the thread that spawned it exits
//!   (`PR_SET_PDEATHSIG`), even if the owning process is SIGKILLed. Spawn from
//!   a long-lived thread (a runtime worker or the test thread), never from a
//!   `spawn_blocking` closure, whose thread may exit while the engine runs.
//! - Engines listen on 127.0.0.1 only and are started on the port they are
//!   given; nothing here touches an instance it did not start, except that
//!   [`postgres::PgNode::pid`] and the signals sent through it go to whatever
//!   postmaster the data directory's lock file names.

pub mod nats;
mod owner;

/// `program` in the first directory of `PATH` that has it.
pub fn on_path(program: &str) -> Option<std::path::PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

pub mod postgres;
mod process;
pub mod redis;
