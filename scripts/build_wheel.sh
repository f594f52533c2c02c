#!/usr/bin/env bash
# Builds the `safe-data` wheel (pyproject.toml: maturin, bindings = "bin") into
# dist/ and prints its path on the last line.
#
#   scripts/build_wheel.sh            # the dev profile (CI: reuses the artifacts
#                                     # of `cargo build --workspace --bins`)
#   PROFILE=release scripts/build_wheel.sh   # a wheel to publish
#
# maturin comes from PyPI into $VENV (scripts/env.sh; tests/requirements.txt
# lists it). CARGO_TARGET_DIR is honoured, so a shared target folder is reused.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

PROFILE="${PROFILE:-dev}"
OUT="${OUT:-$PWD/dist}"
if [ ! -x "$VENV/bin/maturin" ]; then
  "$VENV/bin/pip" install --quiet --disable-pip-version-check 'maturin>=1.5,<2'
fi
mkdir -p "$OUT"
# Only this build's wheel in the listing below.
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
rm -f "$OUT"/safe_data-"$version"-*.whl
# --compatibility: the lowest manylinux tag the binary's glibc symbols allow
# (maturin's audit), plain linux_x86_64 only if none does.
nice "$VENV/bin/maturin" build --profile "$PROFILE" --out "$OUT" --locked >&2
wheel="$(ls "$OUT"/safe_data-"$version"-*.whl)"
echo "$wheel"
