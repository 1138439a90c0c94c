#!/usr/bin/env bash
# The whole test suite, as the README and CI run it: install what is
# missing, then format check, lints, and every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
