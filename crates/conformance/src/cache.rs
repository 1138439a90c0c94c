//! The battery of the `cache` port (filled in by the issue-8 work).
