//! The battery of the `queue` port (filled in by the issue-8 work).
