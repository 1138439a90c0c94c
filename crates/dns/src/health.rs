//! Site health: each site's load balancer is probed with `GET /readyz`
//! every interval; [`RiseFall`] turns the probes into up and down with
//! rise and fall counts, so one lost probe does not flap a site, and
//! [`SiteStates`] is what the answering threads read (two atomics, no lock).

use crate::geo::SiteMask;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One site's state from its probes: it goes down after `fall` failures in
/// a row and up again after `rise` successes in a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RiseFall {
    pub up: bool,
    /// Probes in a row that disagreed with `up`.
    streak: u32,
}

impl RiseFall {
    /// Starts in the state the first probe found.
    pub fn new(up: bool) -> Self {
        RiseFall { up, streak: 0 }
    }

    /// Records one probe; true when the state changed.
    pub fn observe(&mut self, ok: bool, rise: u32, fall: u32) -> bool {
        if ok == self.up {
            self.streak = 0;
            return false;
        }
        self.streak += 1;
        if self.streak >= if ok { rise } else { fall } {
            self.up = ok;
            self.streak = 0;
            return true;
        }
        false
    }
}

/// The sites up now and the last non-empty set of sites up.
#[derive(Debug, Default)]
pub struct SiteStates {
    up: AtomicU64,
    last_good: AtomicU64,
}

impl SiteStates {
    /// All of `mask` up.
    pub fn new(mask: SiteMask) -> Self {
        SiteStates {
            up: AtomicU64::new(mask),
            last_good: AtomicU64::new(mask),
        }
    }

    /// (up, last known good).
    pub fn load(&self) -> (SiteMask, SiteMask) {
        (
            self.up.load(Ordering::Relaxed),
            self.last_good.load(Ordering::Relaxed),
        )
    }

    /// Sets site `i` up or down.
    pub fn set(&self, i: usize, up: bool) {
        let bit = 1u64 << i;
        let now = if up {
            self.up.fetch_or(bit, Ordering::Relaxed) | bit
        } else {
            self.up.fetch_and(!bit, Ordering::Relaxed) & !bit
        };
        if now != 0 {
            self.last_good.store(now, Ordering::Relaxed);
        }
    }
}

/// One probe: `GET /readyz` answered 200 within `timeout`.
pub async fn probe(addr: SocketAddr, timeout: Duration) -> bool {
    tokio::time::timeout(timeout, async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /readyz HTTP/1.1\r\nHost: dns-probe\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut head = [0u8; 16];
        s.read_exact(&mut head).await.ok()?;
        // "HTTP/1.1 200 OK"
        Some(head.starts_with(b"HTTP/1.") && &head[8..13] == b" 200 ")
    })
    .await
    .ok()
    .flatten()
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_lost_probe_does_not_flap() {
        let mut s = RiseFall::new(true);
        assert!(!s.observe(false, 2, 3));
        assert!(!s.observe(false, 2, 3));
        assert!(!s.observe(true, 2, 3));
        assert!(s.up);
        assert!(!s.observe(false, 2, 3));
        assert!(!s.observe(false, 2, 3));
        assert!(s.observe(false, 2, 3));
        assert!(!s.up);
        assert!(!s.observe(true, 2, 3));
        assert!(s.observe(true, 2, 3));
        assert!(s.up);
    }

    #[test]
    fn the_last_good_set_outlives_a_total_outage() {
        let s = SiteStates::new(0b11);
        s.set(0, false);
        assert_eq!(s.load(), (0b10, 0b10));
        s.set(1, false);
        assert_eq!(s.load(), (0, 0b10));
        s.set(0, true);
        assert_eq!(s.load(), (0b01, 0b01));
    }
}
