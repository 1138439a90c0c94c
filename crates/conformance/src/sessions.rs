//! The battery of the `sessions` port (filled in by the issue-8 work).
