//! Test harness for real engines (work in progress).
