//! Passwords (argon2id) and sessions (server-side, cookie `sid`).

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use axum::extract::{FromRef, FromRequestParts};
use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};
use domain::{Password, SessionToken, UserId};

/// Name of the session cookie.
pub const COOKIE_NAME: &str = "sid";

fn argon2(memory_kib: u32) -> Argon2<'static> {
    let params = Params::new(memory_kib, 2, 1, None).expect("valid argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes a password on the blocking pool (argon2 is deliberately slow).
pub async fn hash_password(password: Password, memory_kib: u32) -> ApiResult<String> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        argon2(memory_kib)
            .hash_password(password.expose().as_bytes(), &salt)
            .map(|h| h.to_string())
    })
    .await
    .map_err(|e| ApiError::Unavailable(e.to_string()))?
    .map_err(|e| ApiError::Unavailable(e.to_string()))
}

/// Checks a password against a stored hash. With no stored hash (unknown
/// user) a dummy hash is computed anyway, so the answer takes as long as for
/// a wrong password and does not reveal which usernames exist.
pub async fn verify_password(password: Password, stored: Option<String>, memory_kib: u32) -> ApiResult<bool> {
    tokio::task::spawn_blocking(move || match stored {
        Some(stored) => {
            let Ok(parsed) = PasswordHash::new(&stored) else {
                return false;
            };
            // Verify with the parameters in the stored hash.
            Argon2::default()
                .verify_password(password.expose().as_bytes(), &parsed)
                .is_ok()
        }
        None => {
            let salt = SaltString::generate(&mut rand::rngs::OsRng);
            let _ = argon2(memory_kib).hash_password(password.expose().as_bytes(), &salt);
            false
        }
    })
    .await
    .map_err(|e| ApiError::Unavailable(e.to_string()))
}

/// The session token in the request's cookies, if it is well-formed.
pub fn token_from_headers(headers: &HeaderMap) -> Option<SessionToken> {
    cookie(headers, COOKIE_NAME).and_then(SessionToken::parse)
}

/// The value of cookie `name`, if the request carries it.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value)
}

/// `Set-Cookie` for a fresh session.
pub fn session_cookie(
    token: &SessionToken,
    max_age_secs: u64,
    secure: bool,
) -> (axum::http::HeaderName, HeaderValue) {
    let secure = if secure { "; Secure" } else { "" };
    let value = format!(
        "{COOKIE_NAME}={}; HttpOnly; SameSite=Lax; Path=/; Max-Age={max_age_secs}{secure}",
        token.expose()
    );
    (
        SET_COOKIE,
        HeaderValue::from_str(&value).expect("hex token is a valid header"),
    )
}

/// `Set-Cookie` that removes the session cookie.
pub fn clear_cookie(secure: bool) -> (axum::http::HeaderName, HeaderValue) {
    let secure = if secure { "; Secure" } else { "" };
    let value = format!("{COOKIE_NAME}=; HttpOnly; SameSite=Lax; Path=/; Max-Age=0{secure}");
    (SET_COOKIE, HeaderValue::from_str(&value).expect("valid header"))
}

/// The user of a request with a live session; rejects with 401 otherwise.
#[derive(Debug, Clone)]
pub struct CurrentUser {
    pub id: UserId,
    pub token: SessionToken,
}

/// Like [`CurrentUser`] but optional: `None` for anonymous requests.
#[derive(Debug, Clone)]
pub struct MaybeUser(pub Option<CurrentUser>);

impl<S> FromRequestParts<S> for MaybeUser
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AppState::from_ref(state);
        let Some(token) = token_from_headers(&parts.headers) else {
            return Ok(MaybeUser(None));
        };
        let session = state.backends.sessions.get(&token).await?;
        Ok(MaybeUser(session.map(|s| CurrentUser { id: s.user_id, token })))
    }
}

impl<S> FromRequestParts<S> for CurrentUser
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        MaybeUser::from_request_parts(parts, state)
            .await?
            .0
            .ok_or(ApiError::Unauthorized("not logged in"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_and_verify() {
        let p = Password::parse("correct horse").unwrap();
        let h = hash_password(p.clone(), 1024).await.unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password(p, Some(h.clone()), 1024).await.unwrap());
        let wrong = Password::parse("battery staple").unwrap();
        assert!(!verify_password(wrong.clone(), Some(h), 1024).await.unwrap());
        assert!(!verify_password(wrong, None, 1024).await.unwrap());
    }

    #[test]
    fn cookie_parsing() {
        let tok = "a".repeat(64);
        let mut h = HeaderMap::new();
        h.insert(
            COOKIE,
            HeaderValue::from_str(&format!("x=1; sid={tok}; y=2")).unwrap(),
        );
        assert_eq!(token_from_headers(&h).unwrap().expose(), tok);
        h.insert(COOKIE, HeaderValue::from_static("sid=../../etc"));
        assert!(token_from_headers(&h).is_none());
    }

    #[test]
    fn cookie_attributes() {
        let t = SessionToken::parse(&"b".repeat(64)).unwrap();
        let (_, v) = session_cookie(&t, 60, true);
        let v = v.to_str().unwrap();
        for attr in ["HttpOnly", "SameSite=Lax", "Path=/", "Secure", "Max-Age=60"] {
            assert!(v.contains(attr), "{v} lacks {attr}");
        }
        let (_, v) = session_cookie(&t, 60, false);
        assert!(!v.to_str().unwrap().contains("Secure"));
    }
}
