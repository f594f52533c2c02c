#!/usr/bin/env bash
# The data service vs embedded kernels: round trip, cheap cells under a 10M-row aggregate with
# 20 kernels of 10 accounts, memory of service + kernels. Writes bench/results/service.json.
# Extra arguments go to service_bench.py (e.g. --quick, --check, --kernels 20 --users 10).
# Run as root for the accounts (otherwise one account). See bench/env.sh for
# SAFE_DATA_PROFILE / SAFE_DATA_BIN.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/env.sh
exec "$BENCH_VENV/bin/python" bench/service_bench.py --binary "$SAFE_DATA_BIN" "$@"
