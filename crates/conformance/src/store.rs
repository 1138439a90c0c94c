//! The battery of the `store` port (filled in by the issue-8 work).
