#!/usr/bin/env bash
# Runs every test: Rust unit and integration tests, then the Python-driven
# protocol, conformance and notebook tests against the built kernel.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

echo "== cargo fmt --check"
cargo fmt --all --check

echo "== cargo test (workspace)"
cargo build --workspace --bins
cargo test --workspace --no-fail-fast

echo "== wheel (maturin, dev profile: reuses the build above)"
SAFE_DATA_WHEEL="$(./scripts/build_wheel.sh | tail -1)"
export SAFE_DATA_WHEEL

echo "== cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings

echo "== python tests"
export SAFE_DATA_BIN="$PWD/target/debug/safe-data"
"$VENV/bin/python" -m pytest tests/python -q -p no:cacheprovider

echo "== browser test"
./scripts/browser-test.sh
