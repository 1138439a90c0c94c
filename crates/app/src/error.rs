//! The HTTP edge of errors: every failure becomes `{"error": "..."}` with a
//! fitting status. Internal details are logged, never sent.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use domain::{BackendError, Invalid, StoreError};

/// An error a handler returns.
#[derive(Debug)]
pub enum ApiError {
    /// 400: the request is malformed.
    BadRequest(String),
    /// 401: no valid session, or wrong credentials.
    Unauthorized(&'static str),
    /// 403: the caller is known but may not do this (someone else's photo).
    Forbidden(&'static str),
    /// 404.
    NotFound(&'static str),
    /// 409: the resource exists already.
    Conflict(&'static str),
    /// 413: the body is over its limit.
    PayloadTooLarge(String),
    /// 415: not an accepted media type.
    UnsupportedMediaType(String),
    /// 422: well-formed but refused (image too large, bad field value).
    Unprocessable(String),
    /// 503: a backend is down; a retry may succeed.
    Unavailable(String),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn message(&self) -> String {
        match self {
            ApiError::BadRequest(m)
            | ApiError::PayloadTooLarge(m)
            | ApiError::UnsupportedMediaType(m)
            | ApiError::Unprocessable(m) => m.clone(),
            ApiError::Unauthorized(m)
            | ApiError::Forbidden(m)
            | ApiError::NotFound(m)
            | ApiError::Conflict(m) => (*m).to_owned(),
            ApiError::Unavailable(_) => "service temporarily unavailable".to_owned(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Unavailable(detail) = &self {
            tracing::error!(error = %detail, "backend failure");
        }
        (
            self.status(),
            Json(serde_json::json!({ "error": self.message() })),
        )
            .into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict => ApiError::Conflict("already exists"),
            StoreError::NotFound => ApiError::NotFound("not found"),
            StoreError::Unavailable(m) => ApiError::Unavailable(m),
        }
    }
}

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::Invalid(m) => ApiError::BadRequest(m),
            BackendError::Unavailable(m) => ApiError::Unavailable(m),
        }
    }
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        ApiError::Unprocessable(e.0)
    }
}

impl From<imaging::ImagingError> for ApiError {
    fn from(e: imaging::ImagingError) -> Self {
        use imaging::ImagingError::*;
        match e {
            Unsupported | BadHeader(_) => ApiError::UnsupportedMediaType(e.to_string()),
            TooManyPixels { .. } => ApiError::Unprocessable(e.to_string()),
            Decode(_) | Encode(_) => ApiError::Unprocessable(e.to_string()),
        }
    }
}

/// Handler result.
pub type ApiResult<T> = Result<T, ApiError>;
