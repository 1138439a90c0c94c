//! The battery of the `blobs` port (filled in by the issue-8 work).
