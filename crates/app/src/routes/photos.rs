//! Upload, delete, photo metadata, photo lists and the media files
//! themselves.

use crate::auth::CurrentUser;
use crate::error::{ApiError, ApiResult};
use crate::http_cache::{not_modified, strong_etag};
use crate::purge::photo_tag;
use crate::routes::assets::IMMUTABLE;
use crate::state::AppState;
use axum::extract::multipart::{MultipartError, MultipartRejection};
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use domain::consistency;
use domain::jobs::{ProcessPhoto, PROCESS_PHOTO};
use domain::{BlobKey, Caption, NewPhoto, Page, Photo, PhotoId, PhotoStatus, Username, Variant};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

/// A photo as the API shows it.
#[derive(Serialize)]
pub struct PhotoView {
    /// A string: ids are 64-bit, past what JavaScript numbers hold.
    id: String,
    owner: String,
    caption: Option<String>,
    status: PhotoStatus,
    created_at: String,
    width: u32,
    height: u32,
    variants: BTreeMap<&'static str, String>,
}

impl PhotoView {
    /// Renders a photo with media URLs under `media_base`.
    pub fn new(p: &Photo, media_base: &str) -> Self {
        let url = |key: BlobKey| format!("{media_base}/media/{}", key.as_str());
        let mut variants = BTreeMap::new();
        variants.insert("original", url(p.original_key()));
        if p.status == PhotoStatus::Ready {
            for v in Variant::ALL {
                variants.insert(v.as_str(), url(v.blob_key(p.id)));
            }
        }
        let created = UNIX_EPOCH + Duration::from_millis(p.created_at_ms.max(0) as u64);
        PhotoView {
            id: p.id.0.to_string(),
            owner: p.owner.to_string(),
            caption: p.caption.as_ref().map(|c| c.as_str().to_owned()),
            status: p.status,
            created_at: humantime::format_rfc3339_millis(created).to_string(),
            width: p.width,
            height: p.height,
            variants,
        }
    }
}

/// `?cursor=&limit=` of list endpoints.
#[derive(Deserialize)]
pub struct PageQuery {
    cursor: Option<String>,
    /// A string, parsed in [`PageQuery::page`], so a bad value gets the
    /// API's error shape rather than the extractor's plain-text rejection.
    limit: Option<String>,
}

/// Default and largest page size.
const PAGE_DEFAULT: u32 = 20;
const PAGE_MAX: u32 = 100;

impl PageQuery {
    /// Validates the cursor (a photo id) and the limit.
    pub fn page(&self) -> ApiResult<Page> {
        let before = match self.cursor.as_deref() {
            None | Some("") => None,
            Some(c) => Some(PhotoId(
                c.parse::<i64>()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| ApiError::BadRequest("invalid cursor".into()))?,
            )),
        };
        let limit = match self.limit.as_deref() {
            None | Some("") => PAGE_DEFAULT,
            Some(l) => l.parse::<u32>().unwrap_or(0),
        };
        if !(1..=PAGE_MAX).contains(&limit) {
            return Err(ApiError::BadRequest(format!("limit must be 1 to {PAGE_MAX}")));
        }
        Ok(Page { before, limit })
    }
}

/// A page of photos with the cursor of the next one.
#[derive(Serialize)]
pub struct PhotoPage {
    photos: Vec<PhotoView>,
    next_cursor: Option<String>,
}

/// Builds a page answer from the ids a list query returned.
pub async fn photo_page(state: &AppState, ids: Vec<PhotoId>, page: Page) -> ApiResult<Json<PhotoPage>> {
    // The cursor comes from the ids, not the photos, so a photo deleted
    // between the two reads cannot make the next page skip or repeat.
    let next_cursor = (ids.len() == page.limit as usize)
        .then(|| ids.last().map(|id| id.0.to_string()))
        .flatten();
    let photos = state.catalog.photos(&ids).await?;
    let base = state.settings.media_base();
    Ok(Json(PhotoPage {
        photos: photos.iter().map(|p| PhotoView::new(p, base)).collect(),
        next_cursor,
    }))
}

fn multipart_error(e: MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge("upload is larger than the limit".into())
    } else {
        ApiError::BadRequest(format!("malformed multipart body: {}", e.body_text()))
    }
}

/// Reads the `file` and optional `caption` fields; anything else is refused.
async fn read_upload(mut multipart: Multipart) -> ApiResult<(Bytes, Option<Caption>)> {
    let mut file = None;
    let mut caption = None;
    while let Some(field) = multipart.next_field().await.map_err(multipart_error)? {
        match field.name() {
            Some("file") if file.is_none() => file = Some(field.bytes().await.map_err(multipart_error)?),
            Some("caption") if caption.is_none() => {
                let text = field.text().await.map_err(multipart_error)?;
                caption = Some(Caption::parse(&text)?);
            }
            Some(name @ ("file" | "caption")) => {
                return Err(ApiError::BadRequest(format!("field {name:?} given twice")))
            }
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unexpected field {:?}",
                    other.unwrap_or("")
                )))
            }
        }
    }
    let file = file.ok_or_else(|| ApiError::BadRequest("missing field \"file\"".into()))?;
    Ok((file, caption.filter(|c| !c.as_str().is_empty())))
}

/// `POST /api/photos`: validates everything before storing anything, then
/// stores the row, the original and the job. If a later step fails the
/// earlier ones are undone, so a refused upload leaves nothing behind.
pub async fn upload(
    State(state): State<AppState>,
    user: CurrentUser,
    request_id: Option<axum::Extension<tower_http::request_id::RequestId>>,
    multipart: Result<Multipart, MultipartRejection>,
) -> ApiResult<Response> {
    let multipart = multipart.map_err(|r| {
        ApiError::UnsupportedMediaType(format!("expected a multipart/form-data body: {}", r.body_text()))
    })?;
    let (file, caption) = read_upload(multipart).await?;
    let info = imaging::inspect(&file, state.settings.max_pixels)?;
    let new = NewPhoto {
        owner_id: user.id,
        caption,
        format: info.format,
        width: info.width,
        height: info.height,
    };
    // The writes run in a task of their own: a client that disconnects
    // drops this handler, and must not stop it between the row and the job.
    // The task carries the request's read-your-writes scope across.
    let task = consistency::scope(
        consistency::current_floor(),
        store_upload(
            state.clone(),
            new,
            file,
            request_id.and_then(|id| id.header_value().to_str().ok().map(str::to_owned)),
        ),
    );
    let (stored, written) = tokio::spawn(task)
        .await
        .map_err(|e| ApiError::Unavailable(format!("upload task failed: {e}")))?;
    consistency::note_writes(&written);
    let photo = stored?;
    tracing::info!(
        user_id = user.id.0,
        photo_id = photo.id.0,
        width = info.width,
        height = info.height,
        "photo uploaded"
    );
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "id": photo.id.0.to_string(), "status": photo.status })),
    )
        .into_response())
}

/// Stores an accepted upload: the row, the original, the job. If a later
/// step fails the earlier ones are undone (and a failed undo is logged with
/// what it left), so a refused upload leaves nothing behind.
async fn store_upload(
    state: AppState,
    new: NewPhoto,
    file: Bytes,
    request_id: Option<String>,
) -> ApiResult<domain::Photo> {
    let b = &state.backends;
    let photo = b.store.create_photo(&new).await?;
    let stored = async {
        b.blobs.put(&photo.original_key(), file).await?;
        let job = ProcessPhoto {
            photo_id: photo.id.0,
            request_id,
        };
        b.queue.enqueue(PROCESS_PHOTO, &job.to_payload()).await
    }
    .await;
    if let Ok(job) = &stored {
        let job = *job;
        // So that deleting the photo can cancel its job. Not recording it
        // fails nothing: a worker that meets the job of a deleted photo
        // acks it without writing anything.
        match b.store.record_photo_job(photo.id, job).await {
            Ok(()) => {}
            Err(domain::StoreError::NotFound) => {
                // Deleted meanwhile by its owner, who guessed the id; the
                // delete may have run before the original was written.
                let _ = b.queue.cancel(job).await;
                let _ = b.blobs.delete(&photo.original_key()).await;
            }
            Err(e) => {
                tracing::warn!(photo_id = photo.id.0, job_id = job, error = %e, "the photo's job could not be recorded; a delete will leave it to the worker");
            }
        }
    }
    if let Err(e) = stored {
        if let Err(undo) = b.blobs.delete(&photo.original_key()).await {
            tracing::error!(photo_id = photo.id.0, error = %undo, "failed upload: its original could not be deleted");
        }
        if let Err(undo) = b.store.delete_photo(photo.id).await.map(drop) {
            tracing::error!(photo_id = photo.id.0, error = %undo, "failed upload: its row could not be deleted");
        }
        state.catalog.invalidate(new.owner_id, Some(photo.id)).await;
        return Err(e.into());
    }
    state.catalog.invalidate(new.owner_id, None).await;
    Ok(photo)
}

/// `GET /api/photos/{id}`.
pub async fn get_photo(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<PhotoView>> {
    let id = id
        .parse::<i64>()
        .map(PhotoId)
        .map_err(|_| ApiError::NotFound("no such photo"))?;
    let photo = state
        .catalog
        .photo(id)
        .await?
        .ok_or(ApiError::NotFound("no such photo"))?;
    Ok(Json(PhotoView::new(&photo, state.settings.media_base())))
}

/// How long a delete waits for the CDN edges to confirm its purge before
/// it answers anyway (the purges go on in the background).
const PURGE_WAIT: Duration = Duration::from_secs(1);

/// `DELETE /api/photos/{id}`: the owner deletes a photo. 204 once the row,
/// its job, its blobs and its cache entries are gone; 401 without a
/// session; 404 for an unknown id; 403 for someone else's photo (photos
/// are public, so a 404 would hide nothing: the caller may read it, not
/// delete it). The CDN edges are then purged by the photo's tag; the
/// answer waits for their confirmations at most [`PURGE_WAIT`].
pub async fn delete_photo(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = id
        .parse::<i64>()
        .map(PhotoId)
        .map_err(|_| ApiError::NotFound("no such photo"))?;
    // From the store, not the cache: the owner is all that is needed, and
    // an answer from a cache could be a deleted photo's.
    let photo = state
        .backends
        .store
        .photo(id)
        .await?
        .ok_or(ApiError::NotFound("no such photo"))?;
    if photo.owner_id != user.id {
        return Err(ApiError::Forbidden("not your photo"));
    }
    // In a task of its own, as an upload: a client that disconnects must
    // not stop the delete between the row and the blobs.
    let task = consistency::scope(consistency::current_floor(), remove_photo(state.clone(), id));
    let (removed, written) = tokio::spawn(task)
        .await
        .map_err(|e| ApiError::Unavailable(format!("delete task failed: {e}")))?;
    consistency::note_writes(&written);
    // `None`: a concurrent delete of the same photo got there first.
    let purge = removed?.ok_or(ApiError::NotFound("no such photo"))?;
    tracing::info!(user_id = user.id.0, photo_id = id.0, "photo deleted");
    let _ = tokio::time::timeout(PURGE_WAIT, purge).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes photo `id`: the row first (from then on the photo is gone for
/// every reader, and a worker rendering it finds out when it marks it
/// ready), then its jobs, its blobs and its cache entries; then, in the
/// background, purges the edges (after the blobs are gone, so an edge
/// cannot fetch them again). Returns that purge's task, or `None` if there
/// was no such photo.
async fn remove_photo(state: AppState, id: PhotoId) -> ApiResult<Option<tokio::task::JoinHandle<()>>> {
    let b = &state.backends;
    let Some(gone) = b.store.delete_photo(id).await? else {
        return Ok(None);
    };
    for &job in &gone.jobs {
        if let Err(e) = b.queue.cancel(job).await {
            // A worker that meets it finds the photo gone and acks it.
            tracing::warn!(photo_id = id.0, job_id = job, error = %e, "the deleted photo's job could not be cancelled");
        }
    }
    let mut left = vec![];
    for key in gone.blob_keys() {
        if let Err(e) = b.blobs.delete(&key).await {
            tracing::warn!(photo_id = id.0, key = key.as_str(), error = %e, "blob not deleted; retrying in the background");
            left.push(key);
        }
    }
    state.catalog.invalidate(gone.owner_id, Some(id)).await;
    let (blobs, purger) = (b.blobs.clone(), state.purger.clone());
    let schedule = crate::purge::RetrySchedule::giving_up_after(state.settings.cdn_purge_retry_secs);
    Ok(Some(tokio::spawn(async move {
        remove_blobs(&*blobs, left, schedule).await;
        purger.purge(&photo_tag(id)).await;
    })))
}

/// Deletes `keys` from the blob store, retrying on `schedule`; what is
/// still there when it gives up is logged (the origin keeps serving it).
async fn remove_blobs(
    blobs: &dyn domain::ports::BlobStore,
    mut keys: Vec<BlobKey>,
    schedule: crate::purge::RetrySchedule,
) {
    let started = std::time::Instant::now();
    let mut failed = 0;
    while !keys.is_empty() {
        failed += 1;
        let Some(pause) = schedule.next_pause(failed, started.elapsed()) else {
            let keys: Vec<&str> = keys.iter().map(BlobKey::as_str).collect();
            tracing::error!(?keys, "blobs of a deleted photo could not be deleted");
            return;
        };
        tokio::time::sleep(pause).await;
        let mut still = vec![];
        for key in keys {
            if blobs.delete(&key).await.is_err() {
                still.push(key);
            }
        }
        keys = still;
    }
}

/// Resolves a username from the path, 404 when unknown or malformed.
pub async fn user_id(state: &AppState, username: &str) -> ApiResult<domain::User> {
    let name = Username::parse(username).map_err(|_| ApiError::NotFound("no such user"))?;
    state
        .backends
        .store
        .user_by_name(&name)
        .await?
        .ok_or(ApiError::NotFound("no such user"))
}

/// `GET /api/users/{username}/photos?cursor=`.
pub async fn user_photos(
    State(state): State<AppState>,
    Path(username): Path<String>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<PhotoPage>> {
    let page = q.page()?;
    let owner = user_id(&state, &username).await?;
    let ids = state.catalog.user_photo_ids(owner.id, page).await?;
    photo_page(&state, ids, page).await
}

/// `GET /media/{*key}`: originals and variants with their content type. Keys
/// are immutable (a photo id never gets other bytes), so they may be cached
/// forever by browsers and the CDN, and the key alone makes a strong `ETag`:
/// a matching `If-None-Match` gets `304 Not Modified` without the body.
///
/// Every answer about a photo's key (a 404 too, should a cache keep it)
/// carries the photo's purge tag in `Surrogate-Key` and `Cache-Tag`, so a
/// delete purges it from the CDN edges ([`crate::purge`]).
pub async fn media(State(state): State<AppState>, Path(key): Path<String>, headers: HeaderMap) -> Response {
    let key = BlobKey::parse(&key).ok();
    let tag = key.as_ref().and_then(BlobKey::photo_id).map(photo_tag);
    let mut res = match key {
        Some(key) => media_answer(&state, &key, &headers)
            .await
            .unwrap_or_else(IntoResponse::into_response),
        None => ApiError::NotFound("no such file").into_response(),
    };
    if let Some(tag) = tag.and_then(|t| HeaderValue::from_str(&t).ok()) {
        res.headers_mut().insert(SURROGATE_KEY, tag.clone());
        res.headers_mut().insert(CACHE_TAG, tag);
    }
    res
}

/// The purge tags' fields: Fastly's and Varnish's `Surrogate-Key`
/// (space-separated), Cloudflare's `Cache-Tag` (comma-separated).
const SURROGATE_KEY: HeaderName = HeaderName::from_static("surrogate-key");
const CACHE_TAG: HeaderName = HeaderName::from_static("cache-tag");

async fn media_answer(state: &AppState, key: &BlobKey, headers: &HeaderMap) -> ApiResult<Response> {
    let content_type = match key.as_str().rsplit_once('.').map(|(_, ext)| ext) {
        Some("jpg") => "image/jpeg",
        Some("png") => "image/png",
        Some("webp") => "image/webp",
        _ => return Err(ApiError::NotFound("no such file")),
    };
    let bytes = state
        .backends
        .blobs
        .get(key)
        .await?
        .ok_or(ApiError::NotFound("no such file"))?;
    let etag = strong_etag(key.as_str().as_bytes());
    let common = [
        (header::CACHE_CONTROL, IMMUTABLE),
        (header::ETAG, etag.as_str()),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ];
    // After the read, so a key with no file is a 404 even when `*` is asked.
    if not_modified(headers, &etag) {
        return Ok((StatusCode::NOT_MODIFIED, common).into_response());
    }
    Ok((common, [(header::CONTENT_TYPE, content_type)], bytes).into_response())
}
