# Shared set-up of the benchmark scripts (sourced from the repository root, not run):
# the git-ignored venv .venv-bench with bench/requirements.txt, and the safe-data
# binary to measure.
#
#   SAFE_DATA_PROFILE=release (default) builds target/release/safe-data (about 15 min
#   from scratch on 2 cores); SAFE_DATA_PROFILE=debug uses target/debug/safe-data.
#   SAFE_DATA_BIN=path skips the build and measures that binary.
BENCH_VENV="${BENCH_VENV:-$PWD/.venv-bench}"
if [ ! -x "$BENCH_VENV/bin/python" ]; then
  python3 -m venv "$BENCH_VENV"
fi
# Keep the venv out of git without touching the root .gitignore (what Python 3.13's venv does).
[ -f "$BENCH_VENV/.gitignore" ] || echo '*' > "$BENCH_VENV/.gitignore"
if [ ! -f "$BENCH_VENV/.installed" ] || [ bench/requirements.txt -nt "$BENCH_VENV/.installed" ]; then
  "$BENCH_VENV/bin/pip" install --quiet --disable-pip-version-check -r bench/requirements.txt
  touch "$BENCH_VENV/.installed"
fi

if [ -z "${SAFE_DATA_BIN:-}" ]; then
  case "${SAFE_DATA_PROFILE:-release}" in
    release) cargo build --release --bin safe-data; SAFE_DATA_BIN="$PWD/target/release/safe-data" ;;
    debug) cargo build --bin safe-data; SAFE_DATA_BIN="$PWD/target/debug/safe-data" ;;
    *) echo "SAFE_DATA_PROFILE must be release or debug" >&2; exit 2 ;;
  esac
fi
export SAFE_DATA_BIN
