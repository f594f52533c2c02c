#!/usr/bin/env bash
# Coverage-guided fuzzing of the kernel's input surfaces (see fuzz/README.md).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]     # default 60
#
# Installs cargo-fuzz if missing, builds the targets (nightly, no sanitizer,
# optimized with debug assertions), runs each target for the given time and
# prints its executions and any crash. New coverage goes to
# fuzz/corpus-work/<target>/ (git-ignored); crashes to fuzz/artifacts/<target>/.
#
# Environment:
#   FUZZ_TARGETS="sql_check config wire_frames metamorphic editor_services history_glob history_request"
#                       targets to run
#   FUZZ_BUILD_FLAGS="--sanitizer none --codegen-units 16"
#   FUZZ_JOBS=1         parallel fuzzing processes per target (libFuzzer -fork)
#   FUZZ_KEEP_GOING=1   do not stop at the first crash (libFuzzer -fork with
#                       -ignore_crashes): every crashing input is saved; use it
#                       while a known crash is unfixed
#   FUZZ_LOG_DIR=DIR    keep libFuzzer's output there (default: a temporary dir)
#   FUZZ_MERGE=1        afterwards, minimize fuzz/corpus/<target>/ together with
#                       fuzz/corpus-work/<target>/ into fuzz/corpus/<target>/
#                       (libFuzzer -set_cover_merge=1 -use_counters=0: a small
#                       set of inputs covering the same edges); commit it
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
SECONDS_PER_TARGET=${1:-60}
TARGETS=${FUZZ_TARGETS:-"sql_check config wire_frames metamorphic editor_services history_glob history_request"}
BUILD_FLAGS=${FUZZ_BUILD_FLAGS:-"--sanitizer none --codegen-units 16"}
JOBS=${FUZZ_JOBS:-1}

if ! rustup toolchain list | grep -q '^nightly'; then
    echo "== installing the nightly toolchain"
    rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

cd "$ROOT/fuzz"
echo "== building the fuzz targets ($BUILD_FLAGS; the first build instruments polars and takes a while)"
# shellcheck disable=SC2086
nice -n 10 cargo +nightly fuzz build $BUILD_FLAGS

if [ -n "${FUZZ_LOG_DIR:-}" ]; then
    LOGS=$FUZZ_LOG_DIR && mkdir -p "$LOGS"
else
    LOGS=$(mktemp -d) && trap 'rm -rf "$LOGS"' EXIT
fi
failed=()
summary=()
for t in $TARGETS; do
    mkdir -p "corpus-work/$t" "corpus/$t" "artifacts/$t"
    before=$(ls "artifacts/$t" | wc -l)
    dict=()
    [ -f "dict/$t.dict" ] && dict=("-dict=dict/$t.dict")
    fork=()
    if [ "$JOBS" -gt 1 ] || [ "${FUZZ_KEEP_GOING:-0}" = 1 ]; then
        fork=("-fork=$JOBS" "-ignore_crashes=1")
    fi
    echo "== $t: ${SECONDS_PER_TARGET}s"
    status=0
    # New inputs land in the first corpus directory (corpus-work); the
    # committed corpus is read only.
    # shellcheck disable=SC2086
    nice -n 10 cargo +nightly fuzz run $BUILD_FLAGS "$t" "corpus-work/$t" "corpus/$t" -- \
        -max_total_time="$SECONDS_PER_TARGET" -timeout=30 -rss_limit_mb=4096 -max_len=8192 \
        -print_final_stats=1 "${dict[@]}" "${fork[@]}" >"$LOGS/$t.log" 2>&1 || status=$?
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$LOGS/$t.log" | grep -o '[0-9]*$' | tail -1 || true)
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$LOGS/$t.log" | grep -o '[0-9]*$' | tail -1 || true)
    if [ -z "$execs" ]; then
        # -fork mode prints no final stats: take the last status line.
        execs=$(grep -o '^#[0-9]*' "$LOGS/$t.log" | tail -1 | tr -d '#' || true)
        [ -n "$execs" ] && rate=$((execs / SECONDS_PER_TARGET))
    fi
    cov=$(grep -o 'cov: [0-9]*' "$LOGS/$t.log" | tail -1 | grep -o '[0-9]*' || true)
    after=$(ls "artifacts/$t" | wc -l)
    line="$t: ${execs:-?} executions in ${SECONDS_PER_TARGET}s (${rate:-?}/s), coverage ${cov:-?}, corpus-work $(ls "corpus-work/$t" | wc -l) files"
    summary+=("$line")
    echo "$line"
    if [ "$status" -ne 0 ] || [ "$after" -gt "$before" ]; then
        failed+=("$t")
        echo "!! $t: crash (exit $status); new artifacts in fuzz/artifacts/$t:"
        ls -t "artifacts/$t" | head -n $((after - before > 0 ? after - before : 1)) | sed 's/^/   /' || true
        grep -E -A12 "panicked at|ERROR: libFuzzer|==ERROR" "$LOGS/$t.log" | head -40 | sed 's/^/   /' || true
        echo "   reproduce: cd fuzz && cargo +nightly fuzz run $BUILD_FLAGS $t artifacts/$t/<file>"
    fi
done

if [ "${FUZZ_MERGE:-0}" = 1 ]; then
    for t in $TARGETS; do
        echo "== minimizing fuzz/corpus/$t"
        rm -rf "corpus-min/$t" && mkdir -p "corpus-min/$t"
        # shellcheck disable=SC2086
        nice -n 10 cargo +nightly fuzz run $BUILD_FLAGS "$t" "corpus-min/$t" "corpus/$t" "corpus-work/$t" -- \
            -set_cover_merge=1 -use_counters=0 -timeout=30 -rss_limit_mb=4096 -max_len=8192 >"$LOGS/$t.merge.log" 2>&1
        rm -rf "corpus/$t" && mv "corpus-min/$t" "corpus/$t"
        echo "   $(ls "corpus/$t" | wc -l) files"
    done
    rm -rf corpus-min
fi

echo
echo "== summary"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "crashes in: ${failed[*]} (copy a crashing input into fuzz/artifacts/<target>/ to replay it in cargo test)"
    exit 1
fi
