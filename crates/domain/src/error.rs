//! Errors the ports return. They say what happened in domain terms so the
//! HTTP edge can pick a status without knowing which engine is behind a port.

/// Failure of the SQL store port.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// A unique constraint was violated (for example a taken username).
    #[error("already exists")]
    Conflict,
    /// A row the operation depends on does not exist.
    #[error("not found")]
    NotFound,
    /// The engine could not be reached or failed; a retry may succeed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// Failure of a non-SQL port (cache, session store, queue, blobs).
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// The input was refused by the adapter (bad key, oversized value).
    #[error("invalid input: {0}")]
    Invalid(String),
    /// The engine could not be reached or failed; a retry may succeed.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
}

impl From<StoreError> for BackendError {
    fn from(e: StoreError) -> Self {
        BackendError::Unavailable(e.to_string())
    }
}
