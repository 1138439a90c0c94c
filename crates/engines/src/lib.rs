//! Managed engines started from the installed binaries (work in progress).
