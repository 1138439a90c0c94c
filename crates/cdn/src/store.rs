//! Where stored objects live (filled in by the storage work).
