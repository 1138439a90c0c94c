//! What the cache decides, as pure functions (filled in by the policy work).
