//! Sign-up, login, logout and `me`.

use super::JsonBody;
use crate::auth::{self, CurrentUser, MaybeUser};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use domain::{Password, UserId, Username};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Body of sign-up and login.
#[derive(Deserialize)]
pub struct Credentials {
    username: String,
    password: String,
}

/// A user as the API shows them.
#[derive(Serialize)]
pub struct UserView {
    /// A string: ids are 64-bit, past what JavaScript numbers hold.
    pub id: String,
    pub username: String,
}

const BAD_CREDENTIALS: &str = "invalid username or password";

/// Starts a new session for `user`, ending the one the request presented
/// (if any), so a sign-up or login never keeps an old, possibly planted, id.
async fn start_session(
    state: &AppState,
    previous: Option<CurrentUser>,
    user: UserId,
    username: &Username,
    status: StatusCode,
) -> ApiResult<Response> {
    if let Some(prev) = previous {
        state.backends.sessions.delete(&prev.token).await?;
    }
    let ttl = state.settings.session_ttl_secs;
    let token = state
        .backends
        .sessions
        .create(user, Duration::from_secs(ttl))
        .await?;
    let cookie = auth::session_cookie(&token, ttl, state.settings.cookie_secure);
    tracing::info!(user_id = user.0, "session started");
    Ok((
        status,
        [cookie],
        Json(UserView {
            id: user.0.to_string(),
            username: username.to_string(),
        }),
    )
        .into_response())
}

/// `POST /api/signup`: 201 and a session, 409 if the name is taken. As at
/// login, a session presented with the request is ended.
pub async fn signup(
    State(state): State<AppState>,
    MaybeUser(previous): MaybeUser,
    JsonBody(c): JsonBody<Credentials>,
) -> ApiResult<Response> {
    let username = Username::parse(&c.username)?;
    let password = Password::parse(&c.password)?;
    let hash = auth::hash_password(password, state.settings.argon2_memory_kib).await?;
    let id = state
        .backends
        .store
        .create_user(&username, &hash)
        .await
        .map_err(|e| match e {
            domain::StoreError::Conflict => ApiError::Conflict("username is taken"),
            other => other.into(),
        })?;
    tracing::info!(user_id = id.0, username = %username, "signed up");
    start_session(&state, previous, id, &username, StatusCode::CREATED).await
}

/// `POST /api/login`: 200 and a new session; 401 with one message for an
/// unknown user and a wrong password alike. A session presented with the
/// request is ended, so a login never keeps an old (possibly planted) id.
pub async fn login(
    State(state): State<AppState>,
    MaybeUser(previous): MaybeUser,
    JsonBody(c): JsonBody<Credentials>,
) -> ApiResult<Response> {
    let (Ok(username), Ok(password)) = (Username::parse(&c.username), Password::parse(&c.password)) else {
        return Err(ApiError::Unauthorized(BAD_CREDENTIALS));
    };
    let user = state.backends.store.user_by_name(&username).await?;
    let ok = auth::verify_password(
        password,
        user.as_ref().map(|u| u.password_hash.clone()),
        state.settings.argon2_memory_kib,
    )
    .await?;
    let Some(user) = user.filter(|_| ok) else {
        tracing::info!(username = %username, "login refused");
        return Err(ApiError::Unauthorized(BAD_CREDENTIALS));
    };
    start_session(&state, previous, user.id, &user.username, StatusCode::OK).await
}

/// `POST /api/logout`: deletes the session server-side; 204.
pub async fn logout(State(state): State<AppState>, user: CurrentUser) -> ApiResult<Response> {
    state.backends.sessions.delete(&user.token).await?;
    tracing::info!(user_id = user.id.0, "logged out");
    Ok((
        StatusCode::NO_CONTENT,
        [auth::clear_cookie(state.settings.cookie_secure)],
    )
        .into_response())
}

/// `GET /api/me`.
pub async fn me(State(state): State<AppState>, user: CurrentUser) -> ApiResult<Json<UserView>> {
    let u = state
        .backends
        .store
        .user_by_id(user.id)
        .await?
        .ok_or(ApiError::Unauthorized("not logged in"))?;
    Ok(Json(UserView {
        id: u.id.0.to_string(),
        username: u.username.to_string(),
    }))
}
