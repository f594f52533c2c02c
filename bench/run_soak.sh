#!/usr/bin/env bash
# Soak: 10,000 mixed executions through jupyter_client against one kernel; RSS growth after warm-up,
# cheap-query latency, audit chain and line count at the end. Not a timed test: a few minutes on the
# release build. Writes bench/results/soak.json; exits 1 if a goal is missed. Extra arguments go to
# soak.py (e.g. --executions 2000 --warmup 200). See bench/env.sh for SAFE_DATA_PROFILE / SAFE_DATA_BIN.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/env.sh
exec "$BENCH_VENV/bin/python" bench/soak.py --binary "$SAFE_DATA_BIN" "$@"
