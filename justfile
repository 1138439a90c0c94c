# Task runner; every recipe is a plain command you can also type.

# Run the whole system (the README's first command).
run:
    cargo run --release

# The whole test suite (the README's second command; what CI runs).
test:
    scripts/test.sh

lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings
