//! Profiles, follow and unfollow, and the feed.

use super::photos::{photo_page, user_id, PageQuery, PhotoPage};
use crate::auth::{CurrentUser, MaybeUser};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;

/// A user's public profile and the caller's relation to them.
#[derive(Serialize)]
pub struct ProfileView {
    /// A string: ids are 64-bit, past what JavaScript numbers hold.
    id: String,
    username: String,
    followers: i64,
    following: i64,
    followed_by_me: bool,
}

/// `GET /api/users/{username}`.
pub async fn profile(
    State(state): State<AppState>,
    MaybeUser(me): MaybeUser,
    Path(username): Path<String>,
) -> ApiResult<Json<ProfileView>> {
    let user = user_id(&state, &username).await?;
    let store = &state.backends.store;
    let p = store
        .profile(user.id)
        .await?
        .ok_or(ApiError::NotFound("no such user"))?;
    let followed_by_me = match me {
        Some(me) => store.is_following(me.id, user.id).await?,
        None => false,
    };
    Ok(Json(ProfileView {
        id: p.id.0.to_string(),
        username: p.username.to_string(),
        followers: p.followers,
        following: p.following,
        followed_by_me,
    }))
}

/// `POST /api/users/{username}/follow`: 204; following oneself is 422.
pub async fn follow(
    State(state): State<AppState>,
    me: CurrentUser,
    Path(username): Path<String>,
) -> ApiResult<StatusCode> {
    let target = user_id(&state, &username).await?;
    if target.id == me.id {
        return Err(ApiError::Unprocessable("you cannot follow yourself".into()));
    }
    state.backends.store.follow(me.id, target.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /api/users/{username}/follow`: 204.
pub async fn unfollow(
    State(state): State<AppState>,
    me: CurrentUser,
    Path(username): Path<String>,
) -> ApiResult<StatusCode> {
    let target = user_id(&state, &username).await?;
    state.backends.store.unfollow(me.id, target.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/feed?cursor=`: photos of followed users, newest first.
pub async fn feed(
    State(state): State<AppState>,
    me: CurrentUser,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<PhotoPage>> {
    let page = q.page()?;
    let ids = state.backends.store.feed_ids(me.id, page).await?;
    photo_page(&state, ids, page).await
}
