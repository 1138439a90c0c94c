//! Whose fault a failed exchange is: decides the status a proxy answers,
//! what it logs, and which side's counters it bumps.

/// The party a failure is blamed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The downstream client: bad, too large or too slow requests, or it
    /// went away.
    Client,
    /// The upstream peer: refused, broke, timed out or answered nonsense.
    Upstream,
    /// The proxy itself: out of capacity, or a bug.
    Internal,
}
