//! Redis adapters (work in progress).
