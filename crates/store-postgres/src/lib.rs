//! PostgreSQL adapters (work in progress).
