//! One request, from lookup to answer: the cache's decisions in the order
//! a request meets them.
//!
//! ```text
//! unkeyed fields stripped (or 400) ─▶ not GET/HEAD: forward as is, invalidate on success
//! ─▶ lookup (memory, then disk) ─▶ fresh: hit │ max-stale: stale │ stale-while-revalidate: stale + one refresh
//! ─▶ otherwise (miss, or must revalidate): join the key's flight
//!      lead ─▶ fetch (conditional when something is stored) ─▶ 304: freshen │ storable: stream + fill │ else: stream, hit-for-miss
//!      wait ─▶ the leader's object │ its failure (stale if allowed) │ fetch for itself
//!      hit-for-miss ─▶ fetch for itself
//! origin refused / timed out / 5xx ─▶ stale content within stale-if-error or grace, else the error
//! ```

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use proxy_core::{RequestHead, Response, SendError, Timer};
use tokio::net::TcpStream;

use super::answer::{self, Asked};
use super::flights::{self, FlightGuard, Join, Outcome};
use super::metrics::{OriginKind, Outcome as Counted, StaleReason};
use super::origin::{self, unix_now, Forward};
use super::stored::StoredHead;
use super::Shared;
use crate::policy::{
    conditional_fields, invalidated_keys, is_safe, primary_key, secondary_key, storable, unkeyed_action,
    updates_stored, CacheControl, Fields, NotStorable, Reuse, UnkeyedAction, Vary,
};
use crate::store::{CacheKey, FillError, Object, Purge, PurgeMode};

/// One request as the decisions see it.
pub(crate) struct Req<'r> {
    pub head: &'r RequestHead,
    pub body: &'r [u8],
    pub keep_alive: bool,
    strip: Vec<&'static str>,
    cc: CacheControl,
    head_only: bool,
    started: Instant,
}

/// The connection a request is answered on.
pub(crate) struct Conn<'c, 't> {
    pub io: &'c mut TcpStream,
    pub t: Timer<'t>,
    /// The answer being built (kept between requests for its capacity).
    pub out: &'c mut Vec<u8>,
}

/// Handles one request; returns whether the connection may carry another.
pub(crate) async fn handle(
    sh: &Arc<Shared>,
    conn: &mut Conn<'_, '_>,
    head: &RequestHead,
    body: &[u8],
    keep_alive: bool,
) -> std::io::Result<bool> {
    let strip = match unkeyed_action(&sh.policy, head) {
        UnkeyedAction::Forward => Vec::new(),
        UnkeyedAction::Strip(names) => names,
        UnkeyedAction::Refuse => {
            let status = format!("{}; fwd=bypass; detail=unkeyed-field", sh.config.name);
            return edge_error(
                sh,
                conn,
                head,
                400,
                "request carries an unkeyed forwarding field",
                &status,
                keep_alive,
            )
            .await;
        }
    };
    let cc = if head.has(b"cache-control") || head.has(b"pragma") {
        CacheControl::of_request(head)
    } else {
        CacheControl::default()
    };
    let req = Req {
        head,
        body,
        keep_alive,
        strip,
        cc,
        head_only: head.method == http::Method::HEAD,
        started: Instant::now(),
    };
    let host = head.value(b"host").unwrap_or(b"");
    let key = primary_key(
        &sh.policy,
        head.method.as_str().as_bytes(),
        host,
        head.target().as_bytes(),
    );
    let Some(key) = key.map(Bytes::from) else {
        return fetch(sh, conn, &req, None, None, Forward::AsIs, "method").await;
    };
    let now = unix_now();
    let mut stale = None;
    if let Some(object) = lookup(sh, &key, head).await {
        if let Some(stored) = StoredHead::parse(object.head()) {
            let reuse = if object.is_soft_purged() {
                Reuse::Revalidate
            } else {
                stored.freshness().reuse(&sh.policy, &req.cc, now)
            };
            let ttl = answer::ttl_param(&stored, now);
            let name = &sh.config.name;
            match reuse {
                Reuse::Fresh => {
                    let status = format!("{name}; hit; ttl={ttl}");
                    return from_storage(sh, conn, &req, &object, now, &status, Counted::Hit).await;
                }
                Reuse::StaleAccepted => {
                    sh.metrics.stale(StaleReason::Accepted);
                    let status = format!("{name}; hit; ttl={ttl}; detail=max-stale");
                    return from_storage(sh, conn, &req, &object, now, &status, Counted::Stale).await;
                }
                Reuse::StaleWhileRevalidate => {
                    if let Some(guard) = sh.flights.refresh(&key) {
                        let task =
                            refresh(sh.clone(), guard, object.clone(), head.clone(), req.strip.clone());
                        tokio::spawn(task);
                    }
                    sh.metrics.stale(StaleReason::WhileRevalidate);
                    let status = format!("{name}; hit; ttl={ttl}; detail=stale-while-revalidate");
                    return from_storage(sh, conn, &req, &object, now, &status, Counted::Stale).await;
                }
                Reuse::Revalidate => stale = Some(object),
            }
        }
    }
    if req.cc.only_if_cached {
        let status = format!("{}; fwd=miss; detail=only-if-cached", sh.config.name);
        return edge_error(
            sh,
            conn,
            head,
            504,
            "not in cache (only-if-cached)",
            &status,
            keep_alive,
        )
        .await;
    }
    if req.cc.no_store {
        // This client's request may not be stored; others' flights are not
        // its business.
        return fetch(sh, conn, &req, None, stale, Forward::AsIs, "request").await;
    }
    match sh.flights.join(&key) {
        Join::Lead(guard) => fetch(sh, conn, &req, Some(guard), stale, Forward::ForStorage, "miss").await,
        Join::Pass => fetch(sh, conn, &req, None, stale, Forward::ForStorage, "hit-for-miss").await,
        Join::Wait(rx) => {
            sh.metrics.coalesced_waits.inc();
            match flights::wait(rx, sh.coalesce_wait).await {
                Some(Outcome::Stored(object)) if variant_matches(sh, &object, head) => {
                    let status = format!("{}; fwd=miss; collapsed", sh.config.name);
                    from_storage(sh, conn, &req, &object, unix_now(), &status, Counted::Collapsed).await
                }
                Some(Outcome::Failed(code)) => {
                    origin_failed(sh, conn, &req, stale.as_deref(), code, None).await
                }
                None => {
                    sh.metrics.coalesce_timeouts.inc();
                    fetch(sh, conn, &req, None, stale, Forward::ForStorage, "miss").await
                }
                Some(_) => fetch(sh, conn, &req, None, stale, Forward::ForStorage, "miss").await,
            }
        }
    }
}

/// Whether `object` is the variant `req` selects.
fn variant_matches(sh: &Shared, object: &Object, req: &RequestHead) -> bool {
    let Some(stored) = StoredHead::parse(object.head()) else {
        return false;
    };
    if !stored.has_vary() {
        return object.meta().variant.is_empty();
    }
    let vary = Vary::of(&stored.all_fields());
    secondary_key(&sh.policy, &vary, req).is_some_and(|k| k == object.meta().variant)
}

/// The stored object `req` selects: memory first; then the disk tier, off
/// the reactor.
async fn lookup(sh: &Arc<Shared>, key: &Bytes, req: &RequestHead) -> Option<Arc<Object>> {
    let key = CacheKey::from(key.clone());
    if let Some(found) = sh.store.memory().lookup(&key, |o| variant_matches(sh, o, req)) {
        return Some(found);
    }
    sh.store.disk()?;
    let (sh2, req) = (sh.clone(), req.clone());
    tokio::task::spawn_blocking(move || sh2.store.lookup(&key, |o| variant_matches(&sh2, o, &req)))
        .await
        .ok()
        .flatten()
}

/// Writes the answer from storage.
async fn from_storage(
    sh: &Shared,
    conn: &mut Conn<'_, '_>,
    req: &Req<'_>,
    object: &Object,
    now: u64,
    cache_status: &str,
    counted: Counted,
) -> std::io::Result<bool> {
    let Some(stored) = StoredHead::parse(object.head()) else {
        return edge_error(
            sh,
            conn,
            req.head,
            500,
            "corrupt stored object",
            cache_status,
            false,
        )
        .await;
    };
    conn.out.clear();
    let asked = Asked {
        head_only: req.head_only,
        request: Some(req.head),
        keep_alive: req.keep_alive,
    };
    let written = answer::from_storage(conn.out, object, &stored, now, cache_status, asked);
    if written.rest.is_empty() {
        conn.t.write_all(conn.io, conn.out, sh.write_timeout).await?;
    } else {
        write_both(conn, written.rest, sh.write_timeout).await?;
    }
    sh.metrics.answered(counted, written.body_len);
    access_log(sh, req, written.status, cache_status, written.body_len);
    Ok(req.keep_alive)
}

/// Writes the head in `conn.out` and then `body` with vectored writes
/// (one system call for both while the socket takes them), within
/// `within`.
async fn write_both(
    conn: &mut Conn<'_, '_>,
    body: &[u8],
    within: std::time::Duration,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let (mut head, mut body) = (&conn.out[..], body);
    conn.t.set(within);
    while !head.is_empty() || !body.is_empty() {
        let parts = [std::io::IoSlice::new(head), std::io::IoSlice::new(body)];
        let n = match conn.t.guard(conn.io.write_vectored(&parts)).await {
            Some(r) => r?,
            None => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the client did not read in time",
                ))
            }
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let from_head = n.min(head.len());
        head = &head[from_head..];
        body = &body[n - from_head..];
    }
    Ok(())
}

/// An answer the edge makes itself.
#[allow(clippy::too_many_arguments)]
async fn edge_error(
    sh: &Shared,
    conn: &mut Conn<'_, '_>,
    head: &RequestHead,
    status: u16,
    message: &str,
    cache_status: &str,
    keep_alive: bool,
) -> std::io::Result<bool> {
    let body = serde_json::json!({ "error": message }).to_string();
    let extra = [("cache-status", cache_status)];
    proxy_core::downstream::write_simple(conn.io, status, body.as_bytes(), &extra, keep_alive).await?;
    sh.metrics.answered(Counted::Error, body.len() as u64);
    if sh.config.access_log {
        tracing::info!(
            target: "scalestack::cdn::access",
            method = %head.method,
            target = head.target(),
            status,
            cache_status,
            "request"
        );
    }
    Ok(keep_alive)
}

fn access_log(sh: &Shared, req: &Req<'_>, status: u16, cache_status: &str, bytes: u64) {
    if sh.config.access_log {
        tracing::info!(
            target: "scalestack::cdn::access",
            method = %req.head.method,
            target = req.head.target(),
            status,
            cache_status,
            bytes,
            ms = req.started.elapsed().as_secs_f64() * 1000.0,
            "request"
        );
    }
}

/// The origin failed (`code`: 502 refused or broken, 504 timed out, or
/// its 5xx): stale content if the stored response allows it now, else the
/// error.
async fn origin_failed(
    sh: &Shared,
    conn: &mut Conn<'_, '_>,
    req: &Req<'_>,
    stale: Option<&Object>,
    code: u16,
    answered: Option<u16>,
) -> std::io::Result<bool> {
    let now = unix_now();
    let usable = stale.and_then(|o| Some((o, StoredHead::parse(o.head())?)));
    let name = &sh.config.name;
    if let Some((object, stored)) = usable {
        if stored.freshness().serve_on_error(&sh.policy, &req.cc, now) {
            sh.metrics.stale(StaleReason::Error);
            let ttl = answer::ttl_param(&stored, now);
            let fwd_status = answered.map(|s| format!("; fwd-status={s}")).unwrap_or_default();
            let status = format!("{name}; hit; ttl={ttl}; fwd=stale{fwd_status}; detail=stale-if-error");
            return from_storage(sh, conn, req, object, now, &status, Counted::Stale).await;
        }
    }
    let (message, detail) = match code {
        504 => (
            "gateway timeout: the origin did not answer in time",
            "origin-timeout",
        ),
        _ => ("bad gateway: the origin failed", "origin-error"),
    };
    let status = format!("{name}; fwd=miss; detail={detail}");
    edge_error(sh, conn, req.head, code, message, &status, req.keep_alive).await
}

/// Forwards `req` to the origin and answers: stored (and streamed while
/// it fills) when storable and `how` is for storage, streamed through
/// otherwise. `guard` is the flight this fetch leads, `stale` what is
/// stored for the key (revalidated with a conditional request, or served
/// if the origin fails), `why` the `Cache-Status` forward reason.
async fn fetch(
    sh: &Arc<Shared>,
    conn: &mut Conn<'_, '_>,
    req: &Req<'_>,
    guard: Option<FlightGuard>,
    stale: Option<Arc<Object>>,
    how: Forward,
    why: &str,
) -> std::io::Result<bool> {
    let validators = match (&stale, how) {
        (Some(o), Forward::ForStorage) => StoredHead::parse(o.head())
            .map(|s| conditional_fields(&s.all_fields()))
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    sh.metrics.origin(match (how, validators.is_empty()) {
        (Forward::AsIs, _) => OriginKind::Pass,
        (Forward::ForStorage, true) => OriginKind::Fetch,
        (Forward::ForStorage, false) => OriginKind::Revalidate,
    });
    let mut wire = Vec::with_capacity(512 + req.body.len());
    origin::encode_request(
        &sh.policy,
        req.head,
        req.body,
        how,
        &req.strip,
        &validators,
        &sh.config.name,
        &mut wire,
    );
    let method = match how {
        Forward::ForStorage => http::Method::GET,
        Forward::AsIs => req.head.method.clone(),
    };
    let request_time = unix_now();
    let mut sent = sh.client.send(sh.config.origin, &wire, &method, conn.t).await;
    if let Err(SendError::Broken(_)) = &sent {
        // A kept-alive connection the origin closed just as it was reused:
        // an idempotent request is sent once more, on a new connection if
        // need be.
        if proxy_core::is_idempotent(&method) {
            sent = sh.client.send(sh.config.origin, &wire, &method, conn.t).await;
        }
    }
    let resp = match sent {
        Ok(r) => r,
        Err(e) => {
            sh.metrics.origin_errors.inc();
            let code = send_error_status(&e);
            tracing::warn!(error = %e, target = req.head.target(), "origin request failed");
            if let Some(g) = guard {
                g.finish(Outcome::Failed(code));
            }
            return origin_failed(sh, conn, req, stale.as_deref(), code, None).await;
        }
    };
    let status = resp.status();
    sh.invalidate_after(req.head, status, resp.head()).await;
    if status >= 500 {
        if let Some(o) = stale.as_deref() {
            let usable = StoredHead::parse(o.head())
                .is_some_and(|s| s.freshness().serve_on_error(&sh.policy, &req.cc, unix_now()));
            if usable {
                if let Some(g) = guard {
                    g.finish(Outcome::Failed(status));
                }
                return origin_failed(sh, conn, req, Some(o), status, Some(status)).await;
            }
        }
    }
    if status == 304 && !validators.is_empty() {
        let old = stale.expect("validators come from a stored object");
        return revalidated(sh, conn, req, guard, &old, resp, request_time).await;
    }
    let name = &sh.config.name;
    // RFC 9211's forward reasons: a revalidation is `stale`; hit-for-miss
    // is a `miss` with a detail.
    let hit_for_miss = why == "hit-for-miss";
    let fwd = match (validators.is_empty(), hit_for_miss) {
        (false, _) => "stale",
        (true, true) => "miss",
        (true, false) => why,
    };
    if how == Forward::AsIs {
        let cache_status = format!("{name}; fwd={fwd}; fwd-status={status}");
        return stream_through(sh, conn, req, resp, &cache_status, Counted::Pass).await;
    }
    let decision = storable(&sh.policy, b"GET", req.head, status, resp.head());
    let too_large =
        matches!(resp.framing(), proxy_core::Framing::Length(n) if n > sh.store.max_object_bytes());
    let counted = if why == "hit-for-miss" {
        Counted::Pass
    } else {
        Counted::Miss
    };
    match decision {
        Ok(st) if !too_large => {
            let prepared = origin::prepare(&sh.policy, req.head, resp.head(), &st, request_time, unix_now());
            let declared = match resp.framing() {
                proxy_core::Framing::Length(n) => Some(n),
                _ => None,
            };
            let fill = sh.store.begin_fill(
                CacheKey::from(primary_key_of(sh, req.head)),
                prepared.meta,
                prepared.head,
                declared,
            );
            let cache_status = format!("{name}; fwd={fwd}; fwd-status={status}; stored");
            fill_and_stream(sh, conn, req, guard, resp, fill, &cache_status, counted).await
        }
        decided => {
            let detail = match decided {
                _ if hit_for_miss => "hit-for-miss",
                Err(reason) => reason.label(),
                Ok(_) => "too-large",
            };
            if let Some(g) = guard {
                g.finish(match decided {
                    // Only this request's fields made it unstorable: the
                    // others try for themselves, and no mark is left.
                    Err(NotStorable::Authorization | NotStorable::RequestNoStore) => Outcome::Abandoned,
                    _ if status >= 500 => Outcome::Failed(status),
                    _ => Outcome::Uncacheable,
                });
            }
            let cache_status = format!("{name}; fwd={fwd}; fwd-status={status}; detail={detail}");
            stream_through(sh, conn, req, resp, &cache_status, counted).await
        }
    }
}

/// The primary key of a request already known to have one.
fn primary_key_of(sh: &Shared, head: &RequestHead) -> Bytes {
    let host = head.value(b"host").unwrap_or(b"");
    primary_key(&sh.policy, b"GET", host, head.target().as_bytes())
        .map(Bytes::from)
        .unwrap_or_default()
}

fn send_error_status(e: &SendError) -> u16 {
    match e.status() {
        504 => 504,
        _ => 502,
    }
}

/// A `304` answered the edge's conditional request: the stored response is
/// freshened and answers.
async fn revalidated(
    sh: &Arc<Shared>,
    conn: &mut Conn<'_, '_>,
    req: &Req<'_>,
    guard: Option<FlightGuard>,
    old: &Arc<Object>,
    resp: Response,
    request_time: u64,
) -> std::io::Result<bool> {
    let matches = selects(sh, old, resp.head());
    let fresh = matches
        .then(|| origin::freshened(&sh.policy, old, resp.head(), request_time, unix_now()))
        .flatten();
    resp.release(&sh.client);
    let Some(fresh) = fresh else {
        if let Some(g) = guard {
            g.finish(Outcome::Failed(502));
        }
        sh.metrics.origin_errors.inc();
        let status = format!(
            "{}; fwd=stale; fwd-status=304; detail=304-mismatch",
            sh.config.name
        );
        return edge_error(
            sh,
            conn,
            req.head,
            502,
            "the origin's 304 matches nothing stored",
            &status,
            req.keep_alive,
        )
        .await;
    };
    let object = match sh.insert(fresh).await {
        Some(o) => o,
        None => {
            if let Some(g) = guard {
                g.finish(Outcome::Uncacheable);
            }
            let status = format!("{}; fwd=stale; fwd-status=304; detail=not-stored", sh.config.name);
            return edge_error(
                sh,
                conn,
                req.head,
                502,
                "the freshened object could not be stored",
                &status,
                req.keep_alive,
            )
            .await;
        }
    };
    if let Some(g) = guard {
        g.finish(Outcome::Stored(object.clone()));
    }
    let status = format!("{}; fwd=stale; fwd-status=304; stored", sh.config.name);
    from_storage(sh, conn, req, &object, unix_now(), &status, Counted::Revalidated).await
}

/// Whether a `304` answering the edge's conditional request for `old`
/// selects it (RFC 9111 4.3.4). A `304` that carries no validator at all
/// answers the one response the conditional was built from (as Varnish
/// reads it, and as many origins send it: Python's and some frameworks'
/// 304s omit the validators).
fn selects(sh: &Shared, old: &Object, not_modified: &proxy_core::ResponseHead) -> bool {
    if !not_modified.has(b"etag") && !not_modified.has(b"last-modified") {
        return true;
    }
    let only = sh.store.memory().variants(old.key()).len() <= 1;
    StoredHead::parse(old.head()).is_some_and(|s| updates_stored(&s.all_fields(), not_modified, only))
}

/// Streams `resp` to the client without storing it.
async fn stream_through(
    sh: &Shared,
    conn: &mut Conn<'_, '_>,
    req: &Req<'_>,
    resp: Response,
    cache_status: &str,
    counted: Counted,
) -> std::io::Result<bool> {
    let (keep, _) = stream(sh, conn, req, resp, None, cache_status, counted).await?;
    Ok(keep)
}

/// Streams `resp` to the client while it fills storage, then commits the
/// fill and tells the flight's waiters.
#[allow(clippy::too_many_arguments)]
async fn fill_and_stream(
    sh: &Arc<Shared>,
    conn: &mut Conn<'_, '_>,
    req: &Req<'_>,
    guard: Option<FlightGuard>,
    resp: Response,
    fill: crate::store::Fill,
    cache_status: &str,
    counted: Counted,
) -> std::io::Result<bool> {
    let key = fill.key().to_bytes();
    let (keep, end) = stream(sh, conn, req, resp, Some(fill), cache_status, counted).await?;
    let outcome = match end {
        FillEnd::Ended(fill) => match sh.commit(*fill).await {
            Ok(object) => {
                sh.flights.forget(&key);
                Outcome::Stored(object)
            }
            Err(FillError::TooLarge { .. } | FillError::Refused(_)) => Outcome::Uncacheable,
            Err(FillError::LengthMismatch { .. }) => Outcome::Failed(502),
        },
        FillEnd::TooLarge => Outcome::Uncacheable,
        FillEnd::CutShort | FillEnd::NotFilling => Outcome::Failed(502),
    };
    if let Some(g) = guard {
        g.finish(outcome);
    }
    Ok(keep)
}

/// How a fill ended.
enum FillEnd {
    /// There was no fill.
    NotFilling,
    /// The body grew past the per-object limit (streamed on, not stored).
    TooLarge,
    /// The origin's body ended cleanly: the fill is complete.
    Ended(Box<crate::store::Fill>),
    /// The origin's body failed (or the client left and there was nothing
    /// to fill).
    CutShort,
}

/// The body loop shared by streaming with and without a fill: each piece
/// from the origin goes into the fill (if any) and to the client (while it
/// is there: a client that went away does not stop the fill, so the
/// object is still stored for others). Returns whether the client
/// connection may carry another request, and the fill when the origin's
/// body ended cleanly (`Err(())` when it did not).
async fn stream(
    sh: &Shared,
    conn: &mut Conn<'_, '_>,
    req: &Req<'_>,
    mut resp: Response,
    mut fill: Option<crate::store::Fill>,
    cache_status: &str,
    counted: Counted,
) -> std::io::Result<(bool, FillEnd)> {
    conn.out.clear();
    let http10 = req.head.minor_version == 0;
    let framing = answer::streamed_head(
        conn.out,
        resp.head(),
        req.head_only,
        http10,
        cache_status,
        req.keep_alive,
    );
    let status = resp.status();
    let mut client_ok = conn
        .t
        .write_all(conn.io, conn.out, sh.write_timeout)
        .await
        .is_ok();
    if fill.is_none() && (framing == answer::Framing::None || !client_ok) && req.head_only {
        // Nothing more for this client, nothing to store: the origin
        // connection is closed rather than drained.
        sh.metrics.answered(counted, 0);
        access_log(sh, req, status, cache_status, 0);
        return Ok((
            client_ok && req.keep_alive && framing != answer::Framing::Close,
            FillEnd::NotFilling,
        ));
    }
    let mut piece = Vec::with_capacity(16 * 1024);
    let mut wire = Vec::with_capacity(16 * 1024 + 16);
    let mut sent = 0u64;
    let mut too_large = false;
    let ended = loop {
        piece.clear();
        match resp.next_chunk(&sh.client, &mut piece, conn.t).await {
            Ok(true) => {}
            Ok(false) => break true,
            Err(e) => {
                sh.metrics.origin_errors.inc();
                tracing::warn!(error = %e, target = req.head.target(), "origin body failed");
                break false;
            }
        }
        sh.metrics.origin_bytes.inc_by(piece.len() as u64);
        if let Some(f) = fill.as_mut() {
            if f.push(&piece).is_err() {
                fill = None;
                too_large = true;
            }
        }
        if client_ok && framing != answer::Framing::None {
            wire.clear();
            answer::body_piece(&mut wire, framing, &piece);
            client_ok = conn.t.write_all(conn.io, &wire, sh.write_timeout).await.is_ok();
            sent += piece.len() as u64;
        }
        if !client_ok && fill.is_none() {
            break false;
        }
    };
    if ended {
        resp.release(&sh.client);
        if client_ok {
            wire.clear();
            answer::body_end(&mut wire, framing);
            if !wire.is_empty() {
                client_ok = conn.t.write_all(conn.io, &wire, sh.write_timeout).await.is_ok();
            }
        }
    }
    sh.metrics.answered(counted, sent);
    access_log(sh, req, status, cache_status, sent);
    // A body cut short leaves the client's framing unfinished: only closing
    // the connection tells it so.
    let keep = ended && client_ok && req.keep_alive && framing != answer::Framing::Close;
    let end = match fill {
        Some(f) if ended => FillEnd::Ended(Box::new(f)),
        _ if too_large => FillEnd::TooLarge,
        _ if !ended => FillEnd::CutShort,
        _ => FillEnd::NotFilling,
    };
    Ok((keep, end))
}

/// A background refresh (`stale-while-revalidate`): a conditional request
/// for `old`; a `304` freshens it, a storable answer replaces it, anything
/// else leaves it as it is. Runs once per key at a time (the flight).
async fn refresh(
    sh: Arc<Shared>,
    guard: FlightGuard,
    old: Arc<Object>,
    head: RequestHead,
    strip: Vec<&'static str>,
) {
    sh.metrics.origin(OriginKind::Refresh);
    let validators = StoredHead::parse(old.head())
        .map(|s| conditional_fields(&s.all_fields()))
        .unwrap_or_default();
    let mut wire = Vec::with_capacity(512);
    origin::encode_request(
        &sh.policy,
        &head,
        b"",
        Forward::ForStorage,
        &strip,
        &validators,
        &sh.config.name,
        &mut wire,
    );
    let deadline = sh.clock.deadline();
    let t = Timer {
        clock: &sh.clock,
        deadline: &deadline,
    };
    let request_time = unix_now();
    let resp = match sh
        .client
        .send(sh.config.origin, &wire, &http::Method::GET, t)
        .await
    {
        Ok(r) => r,
        Err(e) => {
            sh.metrics.origin_errors.inc();
            tracing::warn!(error = %e, target = head.target(), "background refresh failed");
            return guard.finish(Outcome::Failed(send_error_status(&e)));
        }
    };
    let status = resp.status();
    let refreshed = if status == 304 && !validators.is_empty() {
        let matches = selects(&sh, &old, resp.head());
        let fresh = matches
            .then(|| origin::freshened(&sh.policy, &old, resp.head(), request_time, unix_now()))
            .flatten();
        resp.release(&sh.client);
        match fresh {
            Some(o) => sh.insert(o).await,
            None => None,
        }
    } else if let Ok(st) = storable(&sh.policy, b"GET", &head, status, resp.head()) {
        let prepared = origin::prepare(&sh.policy, &head, resp.head(), &st, request_time, unix_now());
        let max = sh.store.max_object_bytes();
        match resp.read_to_end(&sh.client, max, t).await {
            Ok((_, body)) => {
                sh.metrics.origin_bytes.inc_by(body.len() as u64);
                let object = Object::new(old.key().to_bytes().into(), prepared.meta, prepared.head, body);
                sh.insert(object).await
            }
            Err(e) => {
                sh.metrics.origin_errors.inc();
                tracing::warn!(error = %e, target = head.target(), "background refresh body failed");
                None
            }
        }
    } else {
        None
    };
    guard.finish(match refreshed {
        Some(o) => Outcome::Stored(o),
        None if status >= 500 => Outcome::Failed(status),
        None => Outcome::Abandoned,
    });
}

impl Shared {
    /// Stores `object` (off the reactor when there is a disk tier).
    pub(crate) async fn insert(self: &Arc<Self>, object: Object) -> Option<Arc<Object>> {
        if self.store.disk().is_none() {
            return self.store.insert(object).ok();
        }
        let sh = self.clone();
        tokio::task::spawn_blocking(move || sh.store.insert(object).ok())
            .await
            .ok()
            .flatten()
    }

    /// Commits a fill (off the reactor when there is a disk tier).
    async fn commit(self: &Arc<Self>, fill: crate::store::Fill) -> Result<Arc<Object>, FillError> {
        if self.store.disk().is_none() {
            return fill.commit(&self.store);
        }
        let sh = self.clone();
        tokio::task::spawn_blocking(move || fill.commit(&sh.store))
            .await
            .unwrap_or(Err(FillError::TooLarge { limit: 0 }))
    }

    /// Purges `purge` in every tier (off the reactor when there is a disk
    /// tier); returns the objects matched.
    pub(crate) async fn purge(self: &Arc<Self>, purge: Purge, mode: PurgeMode) -> usize {
        if self.store.disk().is_none() {
            let p = self.store.purge(&purge, mode);
            return p.memory + p.disk;
        }
        let sh = self.clone();
        tokio::task::spawn_blocking(move || {
            let p = sh.store.purge(&purge, mode);
            p.memory + p.disk
        })
        .await
        .unwrap_or(0)
    }

    /// After a successful unsafe request, drops what its URL, `Location`
    /// and `Content-Location` name (RFC 9111 4.4).
    async fn invalidate_after(self: &Arc<Self>, req: &RequestHead, status: u16, resp: &impl Fields) {
        let method = req.method.as_str().as_bytes();
        if is_safe(method) {
            return;
        }
        let host = req.value(b"host").unwrap_or(b"");
        for key in invalidated_keys(&self.policy, method, status, host, req.target().as_bytes(), resp) {
            self.metrics.invalidations.inc();
            self.purge(Purge::Key(CacheKey::from(key)), PurgeMode::Hard).await;
        }
    }
}
