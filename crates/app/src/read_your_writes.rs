//! Read-your-writes across requests. With a replicated SQL tier, the DB
//! router notes the primary's WAL position after each write made while
//! serving a request; this middleware hands that position to the client in
//! a cookie (`ryw`) and, on the client's next requests, sets it as the read
//! floor, so the router sends that user's reads only to replicas that have
//! replayed their write (or to the primary). With the embedded store
//! nothing is noted and no cookie is set.
//!
//! A cookie rather than the server-side session: it costs no session write
//! per request, works for anonymous writes (sign-up), and a forged value can
//! only make its sender's own reads slower (sent to the primary) or staler.

use crate::auth::cookie;
use axum::extract::{Request, State};
use axum::http::header::SET_COOKIE;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

const COOKIE_NAME: &str = "ryw";
/// Long past any replica's catch-up under the lag ceiling.
const MAX_AGE_SECS: u32 = 300;

/// The middleware; `secure` adds `Secure` to the cookie (`cookie_secure`,
/// as for the session cookie).
pub async fn layer(State(secure): State<bool>, request: Request, next: Next) -> Response {
    let floor = cookie(request.headers(), COOKIE_NAME).and_then(|v| v.parse::<u64>().ok());
    let (mut response, written) = domain::consistency::scope(floor, next.run(request)).await;
    if let Some(lsn) = written.filter(|&w| Some(w) > floor) {
        let secure = if secure { "; Secure" } else { "" };
        let value =
            format!("{COOKIE_NAME}={lsn}; HttpOnly; SameSite=Lax; Path=/; Max-Age={MAX_AGE_SECS}{secure}");
        if let Ok(v) = HeaderValue::from_str(&value) {
            response.headers_mut().append(SET_COOKIE, v);
        }
    }
    response
}
