#!/usr/bin/env bash
# Flood soak: the "Hostile clients" floods 3-6 (subscriptions, heartbeat pings, partly sent 60 MB frames,
# idle connections), a minute each, against one kernel; asserts its RSS stays under a bound and a cheap
# cell keeps answering within 100 ms p99. Not a CI test: about five minutes. Writes
# bench/results/flood_soak.json; exits 1 if a goal is missed. Extra arguments go to flood_soak.py (e.g.
# --seconds 20, --only heartbeat). See bench/env.sh for SAFE_DATA_PROFILE / SAFE_DATA_BIN.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/env.sh
exec "$BENCH_VENV/bin/python" bench/flood_soak.py --binary "$SAFE_DATA_BIN" "$@"
