#!/usr/bin/env bash
# Kernel start-up, execute round trip and idle RSS: Safe Data vs ipykernel.
# Writes bench/results/kernel.json. Extra arguments go to kernel_bench.py
# (e.g. --starts 5 --executions 100). See bench/env.sh for SAFE_DATA_PROFILE / SAFE_DATA_BIN.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/env.sh
exec "$BENCH_VENV/bin/python" bench/kernel_bench.py --binary "$SAFE_DATA_BIN" "$@"
