#!/usr/bin/env bash
# The 10M-row dialect suite: `safe-data query` (public and protected configs) vs
# polars and DuckDB. Generates bench/data/ on first use (about 0.5 GB of CSV and
# Parquet) and writes bench/results/dialect.json. Extra arguments go to
# dialect_bench.py (e.g. --rows 1000000 --only corr). See bench/env.sh for
# SAFE_DATA_PROFILE / SAFE_DATA_BIN.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/env.sh
exec "$BENCH_VENV/bin/python" bench/dialect_bench.py --binary "$SAFE_DATA_BIN" "$@"
