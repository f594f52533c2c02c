#!/usr/bin/env bash
# Builds Safe Data, writes the synthetic hospital dataset, installs the
# kernelspec against it, and executes the example notebooks end to end.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

if [ ! -x "$VENV/bin/jupyter-lab" ]; then
  "$VENV/bin/pip" install --quiet --disable-pip-version-check jupyterlab
fi

cargo build --bin safe-data
BIN="$PWD/target/debug/safe-data"
DEMO="$PWD/demo"
if [ ! -f "$DEMO/safe-data.toml" ]; then
  "$BIN" demo "$DEMO"
fi
"$BIN" config check "$DEMO/safe-data.toml"
"$BIN" install --config "$DEMO/safe-data.toml" --sys-prefix

mkdir -p "$DEMO/notebooks"
for nb in notebooks/*.ipynb; do
  out="$DEMO/notebooks/$(basename "$nb")"
  echo "== executing $nb"
  "$VENV/bin/python" - "$nb" "$out" <<'PY'
import sys, nbformat
from nbclient import NotebookClient
nb = nbformat.read(sys.argv[1], as_version=4)
NotebookClient(nb, kernel_name="safe-data", timeout=300, resources={"metadata": {"path": "."}}).execute()
nbformat.write(nb, sys.argv[2])
PY
done

cat <<MSG

Done. Executed notebooks (with their outputs): $DEMO/notebooks/
Try a query from the terminal:
  $BIN query --config $DEMO/safe-data.toml "SELECT sex, COUNT(*), AVG(died) FROM patients GROUP BY sex"
Open JupyterLab with the Safe Data kernel:
  $VENV/bin/jupyter lab $DEMO/notebooks/
MSG
