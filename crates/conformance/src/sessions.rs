//! The battery of the `SessionStore` port, run against SQLite, PostgreSQL,
//! Redis and Redis in front of SQL (`LayeredSessions`).
//!
//! Every case takes the store and a user it may open sessions for (the SQL
//! adapters refuse a session of a user that does not exist). How a store
//! keeps a token (only its SHA-256) is adapter-specific and tested beside
//! each adapter.

use crate::support::{announce, wait_past};
use domain::ports::SessionStore;
use domain::{now_millis, SessionToken, UserId};
use std::time::Duration;

const MINUTE: Duration = Duration::from_secs(60);

/// Runs every case of the battery on `sessions`, for sessions of `user`.
pub async fn run_all(sessions: &dyn SessionStore, user: UserId) {
    announce("sessions", "a_session_names_its_user_until_it_expires");
    a_session_names_its_user_until_it_expires(sessions, user).await;
    announce("sessions", "tokens_are_unique_and_logout_is_per_token");
    tokens_are_unique_and_logout_is_per_token(sessions, user).await;
    announce("sessions", "a_token_never_issued_has_no_session");
    a_token_never_issued_has_no_session(sessions).await;
    announce("sessions", "an_expired_session_is_gone");
    an_expired_session_is_gone(sessions, user).await;
}

/// A fresh token is 256 bits in hex; its session names the user and
/// expires `ttl` after its creation, by the wall clock.
pub async fn a_session_names_its_user_until_it_expires(sessions: &dyn SessionStore, user: UserId) {
    let before = now_millis();
    let t = sessions.create(user, MINUTE).await.unwrap();
    assert_eq!(t.expose().len(), 64);
    assert!(t.expose().bytes().all(|b| b.is_ascii_hexdigit()));
    let s = sessions.get(&t).await.unwrap().expect("a live session");
    let after = now_millis();
    assert_eq!(s.user_id, user);
    assert!(
        (before + 60_000..=after + 60_000).contains(&s.expires_at_ms),
        "expires at {} for a session created between {before} and {after}",
        s.expires_at_ms
    );
    // Reading does not consume it.
    assert_eq!(sessions.get(&t).await.unwrap().unwrap().user_id, user);
}

/// Two sessions get two tokens; deleting one (twice is fine) leaves the
/// other working.
pub async fn tokens_are_unique_and_logout_is_per_token(sessions: &dyn SessionStore, user: UserId) {
    let t = sessions.create(user, MINUTE).await.unwrap();
    let t2 = sessions.create(user, MINUTE).await.unwrap();
    assert_ne!(t, t2);
    sessions.delete(&t).await.unwrap();
    assert!(sessions.get(&t).await.unwrap().is_none());
    assert_eq!(sessions.get(&t2).await.unwrap().unwrap().user_id, user);
    sessions.delete(&t).await.unwrap(); // twice is fine
    assert_eq!(sessions.get(&t2).await.unwrap().unwrap().user_id, user);
    sessions.delete(&t2).await.unwrap();
    assert!(sessions.get(&t2).await.unwrap().is_none());
}

/// A well-formed token from a cookie that was never issued has no session;
/// deleting it is not an error.
pub async fn a_token_never_issued_has_no_session(sessions: &dyn SessionStore) {
    let forged = SessionToken::parse(&"ab".repeat(32)).unwrap();
    assert!(sessions.get(&forged).await.unwrap().is_none());
    sessions.delete(&forged).await.unwrap();
    let fresh = SessionToken::generate();
    assert!(sessions.get(&fresh).await.unwrap().is_none());
}

/// Once the clock is past a session's expiry, its token gives `None` at
/// once (not only after a sweep), while a longer session of the same user
/// still works.
pub async fn an_expired_session_is_gone(sessions: &dyn SessionStore, user: UserId) {
    let long = sessions.create(user, MINUTE).await.unwrap();
    let short = sessions.create(user, Duration::from_millis(1)).await.unwrap();
    // The session was stamped before `create` returned, so it expires at
    // most 1 ms after this instant.
    let created_by = now_millis();
    wait_past(created_by + 1).await;
    assert!(sessions.get(&short).await.unwrap().is_none());
    assert_eq!(sessions.get(&long).await.unwrap().unwrap().user_id, user);
}
