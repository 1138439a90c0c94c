//! Read-your-writes across requests. With a replicated SQL tier, the DB
//! router notes its replica set primary's WAL position after each write
//! made while serving a request; this middleware hands those positions to
//! the client in a cookie (`ryw`) and, on the client's next requests, sets
//! them as the read floor, so each router sends that user's reads only to
//! replicas that have replayed their write (or to the primary). With the
//! embedded store nothing is noted and no cookie is set.
//!
//! The cookie's value is [`Positions`]' text form: a bare LSN while there
//! is one replica set (the format of old, so servers on either side of an
//! upgrade read each other's cookies), `v2.set:lsn.set:lsn` once there are
//! several. A value that does not parse is ignored: the request runs
//! without a floor, as without a cookie.
//!
//! A cookie rather than the server-side session: it costs no session write
//! per request, works for anonymous writes (sign-up), and a forged value can
//! only make its sender's own reads slower (sent to the primary) or staler.

use crate::auth::cookie;
use axum::extract::{Request, State};
use axum::http::header::SET_COOKIE;
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use domain::consistency::{self, Positions};

const COOKIE_NAME: &str = "ryw";
/// Long past any replica's catch-up under the lag ceiling.
const MAX_AGE_SECS: u32 = 300;

/// The middleware; `secure` adds `Secure` to the cookie (`cookie_secure`,
/// as for the session cookie).
pub async fn layer(State(secure): State<bool>, request: Request, next: Next) -> Response {
    let floor = floor_of(request.headers());
    let (mut response, written) = consistency::scope(floor.clone(), next.run(request)).await;
    if let Some(v) = cookie_after(&floor, &written, secure) {
        response.headers_mut().append(SET_COOKIE, v);
    }
    response
}

/// The floor a request carries in its cookie; none without one, or when
/// the value does not parse.
fn floor_of(headers: &HeaderMap) -> Positions {
    cookie(headers, COOKIE_NAME)
        .and_then(|v| v.parse().ok())
        .unwrap_or_default()
}

/// The cookie to set after a request that started from `floor` and wrote
/// `written`: the two merged (a write on one replica set keeps the floor of
/// the others), only when a write went past the floor.
fn cookie_after(floor: &Positions, written: &Positions, secure: bool) -> Option<HeaderValue> {
    if !written.is_ahead_of(floor) {
        return None;
    }
    let mut next = floor.clone();
    next.merge(written);
    let secure = if secure { "; Secure" } else { "" };
    let value =
        format!("{COOKIE_NAME}={next}; HttpOnly; SameSite=Lax; Path=/; Max-Age={MAX_AGE_SECS}{secure}");
    HeaderValue::from_str(&value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::header::COOKIE;
    use axum::http::StatusCode;
    use axum::routing::post;
    use consistency::ReplicaSetId;
    use tower::ServiceExt;

    fn eu() -> ReplicaSetId {
        ReplicaSetId::parse("eu").unwrap()
    }

    fn with_cookie(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            COOKIE,
            HeaderValue::from_str(&format!("sid=x; ryw={value}")).unwrap(),
        );
        h
    }

    #[test]
    fn the_floor_comes_from_the_cookie_old_or_new() {
        assert_eq!(floor_of(&HeaderMap::new()), Positions::new());
        assert_eq!(
            floor_of(&with_cookie("5000")),
            Positions::at(ReplicaSetId::DEFAULT, 5000),
            "a cookie of one LSN is the default set's floor"
        );
        let mut both = Positions::at(ReplicaSetId::DEFAULT, 7);
        both.raise(&eu(), 9);
        assert_eq!(floor_of(&with_cookie("v2.default:7.eu:9")), both);
        for garbage in [
            "",
            "abc",
            "-1",
            "v2.default:7.EU:9",
            "v9.x:1",
            "99999999999999999999999",
        ] {
            assert_eq!(floor_of(&with_cookie(garbage)), Positions::new(), "{garbage:?}");
        }
    }

    #[test]
    fn the_cookie_is_set_only_when_a_write_passed_the_floor() {
        let floor = Positions::at(ReplicaSetId::DEFAULT, 100);
        assert_eq!(cookie_after(&floor, &Positions::new(), false), None, "no write");
        let older = Positions::at(ReplicaSetId::DEFAULT, 90);
        assert_eq!(cookie_after(&floor, &older, false), None, "behind the floor");
        let newer = Positions::at(ReplicaSetId::DEFAULT, 300);
        assert_eq!(
            cookie_after(&floor, &newer, true).unwrap(),
            "ryw=300; HttpOnly; SameSite=Lax; Path=/; Max-Age=300; Secure"
        );
        // A write on another set keeps the default set's floor.
        let on_eu = Positions::at(eu(), 40);
        assert_eq!(
            cookie_after(&floor, &on_eu, false).unwrap(),
            "ryw=v2.default:100.eu:40; HttpOnly; SameSite=Lax; Path=/; Max-Age=300"
        );
    }

    /// The middleware in front of a handler that reports the floor it saw
    /// and writes at the LSN given in its body (0: no write).
    async fn call(cookie: Option<&str>, write_at: u64) -> (StatusCode, String, Option<String>) {
        let app = axum::Router::new()
            .route(
                "/",
                post(|body: String| async move {
                    let floor = consistency::read_floor(&ReplicaSetId::DEFAULT);
                    let lsn: u64 = body.parse().unwrap();
                    if lsn != 0 {
                        consistency::note_write(&ReplicaSetId::DEFAULT, lsn);
                    }
                    format!("{floor:?}")
                }),
            )
            .layer(axum::middleware::from_fn_with_state(false, layer));
        let mut request = axum::http::Request::post("/")
            .body(Body::from(write_at.to_string()))
            .unwrap();
        if let Some(c) = cookie {
            request
                .headers_mut()
                .insert(COOKIE, HeaderValue::from_str(c).unwrap());
        }
        let response = app.oneshot(request).await.unwrap();
        let status = response.status();
        let set_cookie = response
            .headers()
            .get(SET_COOKIE)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = axum::body::to_bytes(response.into_body(), 1024).await.unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap(), set_cookie)
    }

    #[tokio::test]
    async fn the_middleware_reads_and_sets_the_floor() {
        let (status, floor, set) = call(None, 700).await;
        assert_eq!((status, floor.as_str()), (StatusCode::OK, "None"));
        let set = set.unwrap();
        assert!(set.starts_with("ryw=700;"), "{set}");
        let (_, floor, set) = call(Some("ryw=700"), 0).await;
        assert_eq!((floor.as_str(), set), ("Some(700)", None));
        let (_, floor, _) = call(Some("ryw=v2.default:800"), 0).await;
        assert_eq!(floor, "Some(800)");
    }

    #[tokio::test]
    async fn a_garbage_cookie_is_ignored_never_an_error() {
        for garbage in [
            "ryw=",
            "ryw=%%%",
            "ryw=v2.",
            "ryw=v2.default:1.default",
            "ryw=+5",
            "ryw",
        ] {
            let (status, floor, set) = call(Some(garbage), 0).await;
            assert_eq!(
                (status, floor.as_str(), set),
                (StatusCode::OK, "None", None),
                "{garbage}"
            );
        }
        let (status, _, set) = call(Some("ryw=junk"), 42).await;
        assert_eq!(status, StatusCode::OK);
        assert!(set.unwrap().starts_with("ryw=42;"), "replaced by a good one");
    }
}
