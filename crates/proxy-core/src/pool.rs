//! A keep-alive pool of upstream connections keyed by peer, one pool per
//! worker thread: a socket is registered with the reactor of the thread
//! that opened it, and using it from another thread's runtime would turn
//! every read into a cross-thread wake-up. A thread says which pool it uses
//! with [`set_thread_slot`] (threads beyond [`SLOTS`] share, correct but
//! slower).

use bytes::BytesMut;
use std::cell::Cell;
use std::collections::HashMap;
use std::hash::Hash;
use std::io;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Pools kept; worker threads beyond this share them.
pub const SLOTS: usize = 64;

thread_local! {
    /// The pool this thread's runtime uses: its worker index.
    static THREAD_SLOT: Cell<usize> = const { Cell::new(0) };
}

/// Makes the calling thread use pool `slot` (each worker thread its own;
/// 0, the default, for the first).
pub fn set_thread_slot(slot: usize) {
    THREAD_SLOT.with(|s| s.set(slot));
}

/// Size and idle time of the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// Idle connections kept per peer and per thread; more are closed.
    pub max_idle_per_peer: usize,
    /// An idle connection older than this is closed instead of reused.
    pub idle_timeout: Duration,
}

impl Default for PoolConfig {
    /// 1024 connections per peer and thread, 30 s idle.
    fn default() -> Self {
        PoolConfig {
            max_idle_per_peer: 1024,
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// A pooled connection with its (empty) read buffer, kept to save an
/// allocation per request.
struct Idle {
    stream: TcpStream,
    buf: BytesMut,
    since: Instant,
}

/// FxHash (rustc's): the keys are a proxy's own configured peers, so a
/// keyed hash buys nothing, and this costs a multiply per word.
type PeerMap<K> = HashMap<K, Vec<Idle>, rustc_hash::FxBuildHasher>;

/// Idle keep-alive connections by peer, most recent last.
pub struct Pool<K> {
    config: PoolConfig,
    slots: Box<[Mutex<PeerMap<K>>]>,
}

impl<K: Hash + Eq + Clone> Pool<K> {
    /// An empty pool.
    pub fn new(config: PoolConfig) -> Self {
        Pool {
            config,
            slots: (0..SLOTS).map(|_| Mutex::new(PeerMap::default())).collect(),
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, PeerMap<K>> {
        self.slots[THREAD_SLOT.with(Cell::get) % SLOTS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// This thread's most recently used live connection to `peer`, with its
    /// buffer; connections idle too long or closed by the peer are dropped
    /// on the way.
    pub fn take(&self, peer: &K) -> Option<(TcpStream, BytesMut)> {
        loop {
            let idle = self.slot().get_mut(peer)?.pop()?;
            if idle.since.elapsed() < self.config.idle_timeout && is_open(&idle.stream) {
                return Some((idle.stream, idle.buf));
            }
        }
    }

    /// Gives a connection back to this thread's pool (closed when the pool
    /// holds `max_idle_per_peer` for `peer` already). `buf` must hold no
    /// unread bytes.
    pub fn put(&self, peer: &K, stream: TcpStream, buf: BytesMut) {
        let mut slot = self.slot();
        let idle = match slot.get_mut(peer) {
            Some(idle) => idle,
            None => slot.entry(peer.clone()).or_default(),
        };
        if idle.len() < self.config.max_idle_per_peer {
            idle.push(Idle {
                stream,
                buf,
                since: Instant::now(),
            });
        }
    }

    /// Closes every idle connection to `peer` (a removed backend).
    pub fn forget(&self, peer: &K) {
        for slot in self.slots.iter() {
            slot.lock().unwrap_or_else(|e| e.into_inner()).remove(peer);
        }
    }

    /// Idle connections to `peer` in this thread's pool.
    pub fn idle(&self, peer: &K) -> usize {
        self.slot().get(peer).map_or(0, Vec::len)
    }
}

/// A pooled connection the peer has closed is readable with EOF (or an
/// error) before we write to it; checking costs one non-blocking read.
fn is_open(stream: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn keeps_live_connections_up_to_the_limit() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::new(PoolConfig {
            max_idle_per_peer: 2,
            idle_timeout: Duration::from_secs(60),
        });
        let mut servers = Vec::new();
        for _ in 0..3 {
            let (c, s) = pair(&listener).await;
            servers.push(s);
            pool.put(&"a", c, BytesMut::new());
        }
        assert_eq!(pool.idle(&"a"), 2, "the third one was closed");
        assert!(pool.take(&"b").is_none(), "pools are per peer");
        assert!(pool.take(&"a").is_some());
        assert_eq!(pool.idle(&"a"), 1);
        pool.forget(&"a");
        assert_eq!(pool.idle(&"a"), 0);
    }

    #[tokio::test]
    async fn connections_the_peer_closed_are_not_handed_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::new(PoolConfig::default());
        let (c, s) = pair(&listener).await;
        pool.put(&"a", c, BytesMut::new());
        drop(s);
        // The close reaches the socket asynchronously: wait for it.
        let mut refused = false;
        for _ in 0..500 {
            match pool.take(&"a") {
                None => {
                    refused = true;
                    break;
                }
                Some((c, buf)) => {
                    pool.put(&"a", c, buf);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        assert!(refused, "the closed connection was dropped");
        assert_eq!(pool.idle(&"a"), 0);
    }

    #[tokio::test]
    async fn idle_connections_expire() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::new(PoolConfig {
            max_idle_per_peer: 8,
            idle_timeout: Duration::ZERO,
        });
        let (c, _s) = pair(&listener).await;
        pool.put(&1u8, c, BytesMut::new());
        assert!(pool.take(&1u8).is_none(), "older than the idle timeout");
        assert_eq!(pool.idle(&1u8), 0);
    }
}
