//! The upstream side: an HTTP/1.1 client over the keep-alive [`Pool`],
//! written for proxying so the request and its response are handled in the
//! client connection's own task (no hand-off to a connection task and back,
//! as a general-purpose client does) and so the retry rules know exactly
//! what happened: refused connect, stale pooled connection, failure after
//! sending, or timeout.

use crate::codec::{parse_response, BodyDecoder, ChunkError, Framing, HeadError, HeadLimits, ResponseHead};
use crate::deadline::Timer;
use crate::error::Fault;
use crate::pool::{Pool, PoolConfig};
use bytes::{Bytes, BytesMut};
use http::Method;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Timeouts, pool and limits of the client.
#[derive(Debug, Clone, Copy)]
pub struct ClientConfig {
    /// Longest a connect may take.
    pub connect_timeout: Duration,
    /// Longest the upstream may take to send a response head once the
    /// request is sent, and between two reads of its body.
    pub response_timeout: Duration,
    /// Size and idle time of the keep-alive pool.
    pub pool: PoolConfig,
    /// Limits on a response head.
    pub head: HeadLimits,
}

impl Default for ClientConfig {
    /// 2 s to connect, 60 s to answer, the default pool and head limits
    /// (64 KiB, 128 fields).
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(60),
            pool: PoolConfig::default(),
            head: HeadLimits::default(),
        }
    }
}

/// Why a request got no response head.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be made: nothing was sent.
    #[error("cannot connect: {0}")]
    Connect(io::Error),
    /// The connection broke after (part of) the request was sent and before
    /// a response head arrived: the upstream may have acted on it.
    #[error("connection broken before a response: {0}")]
    Broken(io::Error),
    /// No response head within the response timeout.
    #[error("no response in time")]
    Timeout,
    /// The upstream sent something that is not a valid HTTP/1.1 response.
    #[error("invalid response: {0}")]
    BadResponse(&'static str),
}

impl SendError {
    /// Always the upstream's.
    pub fn fault(&self) -> Fault {
        Fault::Upstream
    }

    /// Whether the request may be sent to another peer: always when
    /// nothing was sent; otherwise only an idempotent method (a `POST` that
    /// reached a peer is never replayed).
    pub fn retry_safe(&self, method: &Method) -> bool {
        matches!(self, SendError::Connect(_)) || is_idempotent(method)
    }

    /// The status a proxy answers with: 503 when no connection could be
    /// made, 504 on a timeout, 502 otherwise.
    pub fn status(&self) -> u16 {
        match self {
            SendError::Connect(_) => 503,
            SendError::Timeout => 504,
            SendError::Broken(_) | SendError::BadResponse(_) => 502,
        }
    }
}

/// Why a response body could not be read in full.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("upstream connection failed mid-body: {0}")]
    Io(io::Error),
    #[error("upstream closed the connection mid-body")]
    CutShort,
    #[error("no body data in time")]
    Timeout,
    #[error(transparent)]
    Invalid(#[from] ChunkError),
    #[error("response body larger than {0} bytes")]
    TooLarge(u64),
}

impl BodyError {
    /// Always the upstream's.
    pub fn fault(&self) -> Fault {
        Fault::Upstream
    }
}

/// Methods a proxy may send again after a failure (RFC 9110, 9.2.2).
pub fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// An HTTP/1.1 client with a keep-alive pool per peer.
pub struct Client {
    config: ClientConfig,
    pool: Pool<SocketAddr>,
}

/// A response head with the connection its body arrives on.
pub struct Response {
    head: ResponseHead,
    peer: SocketAddr,
    conn: TcpStream,
    /// Body bytes read and not yet consumed.
    buf: BytesMut,
    body: BodyDecoder,
}

impl Client {
    /// A client with an empty pool.
    pub fn new(config: ClientConfig) -> Self {
        Client {
            pool: Pool::new(config.pool),
            config,
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Its keep-alive pool.
    pub fn pool(&self) -> &Pool<SocketAddr> {
        &self.pool
    }

    /// Takes a live pooled connection (with its buffer), or opens one.
    async fn connection(&self, peer: SocketAddr) -> Result<(TcpStream, BytesMut), SendError> {
        if let Some(pooled) = self.pool.take(&peer) {
            return Ok(pooled);
        }
        let stream = match tokio::time::timeout(self.config.connect_timeout, TcpStream::connect(peer)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(SendError::Connect(e)),
            Err(_) => {
                return Err(SendError::Connect(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connect timeout",
                )))
            }
        };
        let _ = stream.set_nodelay(true);
        Ok((stream, BytesMut::with_capacity(8 * 1024)))
    }

    /// Sends a request (head and body already encoded in `request`, in one
    /// write) for `method` to `peer` and reads the response head, within
    /// the response timeout on `t`.
    pub async fn send(
        &self,
        peer: SocketAddr,
        request: &[u8],
        method: &Method,
        t: Timer<'_>,
    ) -> Result<Response, SendError> {
        let (mut conn, mut buf) = self.connection(peer).await?;
        if let Err(e) = conn.write_all(request).await {
            return Err(SendError::Broken(e));
        }
        t.set(self.config.response_timeout);
        loop {
            match t.guard(conn.read_buf(&mut buf)).await {
                None => return Err(SendError::Timeout),
                Some(Err(e)) => return Err(SendError::Broken(e)),
                Some(Ok(0)) => {
                    return Err(SendError::Broken(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed before a response",
                    )))
                }
                Some(Ok(_)) => {}
            }
            match parse_response(&mut buf, method, &self.config.head) {
                Ok(None) => {}
                Ok(Some(head)) => {
                    let body = BodyDecoder::new(head.framing);
                    return Ok(Response {
                        head,
                        peer,
                        conn,
                        buf,
                        body,
                    });
                }
                Err(HeadError::TooLarge) => return Err(SendError::BadResponse("response head too large")),
                Err(HeadError::Invalid(why)) => return Err(SendError::BadResponse(why)),
            }
        }
    }
}

impl Response {
    /// The response head.
    pub fn head(&self) -> &ResponseHead {
        &self.head
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.head.status
    }

    /// The peer it came from.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Whether the whole body has been read.
    pub fn body_done(&self) -> bool {
        self.body.is_done()
    }

    /// Moves body bytes already read to `out`, as they are on the wire
    /// (`raw`: chunk framing kept) or as payload; returns whether the body
    /// ended.
    pub(crate) fn drain_into(&mut self, out: &mut Vec<u8>, raw: bool) -> Result<bool, BodyError> {
        let used = self.body.feed(&self.buf, |data| {
            if !raw {
                out.extend_from_slice(data)
            }
        })?;
        if raw {
            out.extend_from_slice(&self.buf[..used]);
        }
        bytes::Buf::advance(&mut self.buf, used);
        Ok(self.body.is_done())
    }

    /// Reads more of the body off the connection (within the response
    /// timeout); returns whether the body ended (only a close-delimited
    /// one ends at EOF).
    pub(crate) async fn read_more(&mut self, timeout: Duration, t: Timer<'_>) -> Result<bool, BodyError> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(8192);
        }
        t.set(timeout);
        match t.guard(self.conn.read_buf(&mut self.buf)).await {
            None => Err(BodyError::Timeout),
            Some(Err(e)) => Err(BodyError::Io(e)),
            Some(Ok(0)) if self.body.eof() => Ok(true),
            Some(Ok(0)) => Err(BodyError::CutShort),
            Some(Ok(_)) => Ok(false),
        }
    }

    /// Reads the next piece of the body into `out` (payload, chunk framing
    /// removed); `Ok(false)` once the body has ended, after which
    /// [`Response::release`] gives the connection back to the pool.
    pub async fn next_chunk(
        &mut self,
        client: &Client,
        out: &mut Vec<u8>,
        t: Timer<'_>,
    ) -> Result<bool, BodyError> {
        loop {
            let before = out.len();
            let done = self.drain_into(out, false)?;
            if out.len() > before {
                return Ok(true);
            }
            if done {
                return Ok(false);
            }
            // A close-delimited body ends at EOF; the next round says so.
            self.read_more(client.config.response_timeout, t).await?;
        }
    }

    /// Reads the whole body (payload, at most `max` bytes) and gives the
    /// connection back to the pool: what a cache does with a response it
    /// stores.
    pub async fn read_to_end(
        mut self,
        client: &Client,
        max: u64,
        t: Timer<'_>,
    ) -> Result<(ResponseHead, Bytes), BodyError> {
        let mut body = Vec::new();
        while self.next_chunk(client, &mut body, t).await? {
            if body.len() as u64 > max {
                return Err(BodyError::TooLarge(max));
            }
        }
        let head = self.head.clone();
        self.release(client);
        Ok((head, body.into()))
    }

    /// Gives the connection back to `client`'s pool if the body ended
    /// cleanly and the upstream keeps it alive; closes it otherwise.
    pub fn release(self, client: &Client) {
        if self.head.reusable && self.body.is_done() && self.buf.is_empty() {
            client.pool.put(&self.peer, self.conn, self.buf);
        }
    }

    /// The body framing.
    pub fn framing(&self) -> Framing {
        self.head.framing
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deadline::Clock;
    use tokio::net::TcpListener;

    /// A one-connection upstream that answers each request it reads with
    /// the next of `answers`.
    async fn upstream(answers: Vec<&'static [u8]>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            for answer in answers {
                let mut buf = [0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                s.write_all(answer).await.unwrap();
            }
            let _ = s.read(&mut [0u8; 16]).await;
        });
        addr
    }

    #[tokio::test]
    async fn bodies_are_read_in_every_framing_and_the_connection_reused() {
        let clock = Clock::new();
        let sweeper = tokio::spawn(clock.clone().run());
        let deadline = clock.deadline();
        let t = Timer {
            clock: &clock,
            deadline: &deadline,
        };
        let peer = upstream(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",
        ])
        .await;
        let client = Client::new(ClientConfig::default());
        let get = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let r = client.send(peer, get, &Method::GET, t).await.unwrap();
        assert_eq!((r.status(), r.head().value(b"x-a")), (200, Some(&b"1"[..])));
        let (_, body) = r.read_to_end(&client, 1024, t).await.unwrap();
        assert_eq!(&body[..], b"hello");
        assert_eq!(client.pool().idle(&peer), 1, "back in the pool");
        let r = client.send(peer, get, &Method::GET, t).await.unwrap();
        assert_eq!(r.status(), 201);
        let (_, body) = r.read_to_end(&client, 1024, t).await.unwrap();
        assert_eq!(&body[..], b"abcde");
        let e = client.send(peer, get, &Method::GET, t).await.err().unwrap();
        assert!(matches!(e, SendError::BadResponse(_)), "{e}");
        assert_eq!((e.status(), e.retry_safe(&Method::POST)), (502, false));
        sweeper.abort();
    }

    #[tokio::test]
    async fn a_refused_connection_is_safe_to_retry() {
        let clock = Clock::new();
        let deadline = clock.deadline();
        let t = Timer {
            clock: &clock,
            deadline: &deadline,
        };
        let closed = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let client = Client::new(ClientConfig::default());
        let e = client
            .send(closed, b"POST / HTTP/1.1\r\n\r\n", &Method::POST, t)
            .await
            .err()
            .unwrap();
        assert!(matches!(e, SendError::Connect(_)), "{e}");
        assert!(e.retry_safe(&Method::POST));
        assert_eq!((e.status(), e.fault()), (503, Fault::Upstream));
    }
}
