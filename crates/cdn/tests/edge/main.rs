//! The edge against a scripted origin that counts its requests: every
//! caching rule the issue names, each shown by what reached the origin and
//! what the client got.

mod failures;
mod helpers;
mod rules;

use helpers::*;
