#!/usr/bin/env bash
# The browser test: JupyterLab (from the venv) driven by Debian's Chromium
# through playwright-core (tests/browser/jupyterlab.test.mjs).
#
# Installs what it needs, idempotently (a no-op when already there):
# - the `chromium` Debian package (and `nodejs`/`npm` if there is no node),
#   with apt-get, through sudo when not root;
# - the node packages of tests/browser, with `npm ci` when node_modules is
#   missing or older than package-lock.json;
# - the demo dataset and the `safe-data-test` kernelspec in the venv, as the
#   Python tests do (tests/python/conftest.py).
# Screenshots and logs go to tests/browser/artifacts/ (git-ignored).
#
# Run alone: ./scripts/browser-test.sh (builds the kernel unless SAFE_DATA_BIN
# is set; scripts/test.sh sets it). Overrides: CHROMIUM (browser path),
# STEP_TIMEOUT_MS (bound of each step, default 60000).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
BROWSER_DIR=tests/browser
WORK=tests/.work
DEMO="$WORK/demo"
KERNEL_NAME=safe-data-test
DISPLAY_NAME="Safe Data (test)"

# Installs Debian packages, through sudo when not root.
apt_install() {
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null \
      || { echo "browser-test: sudo is not available; as root, run: apt-get install $*" >&2; exit 1; }
    sudo=(sudo)
  fi
  echo "browser-test: apt-get install $*"
  # A fresh Debian image has no package lists yet.
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# --- Chromium (Debian's; playwright's browser download is not used) ---
if [ ! -x "$CHROMIUM" ]; then
  apt_install chromium fonts-liberation fonts-dejavu-core
  [ -x "$CHROMIUM" ] || { echo "browser-test: chromium is installed but $CHROMIUM is not there" >&2; exit 1; }
fi

# --- node packages (playwright-core, pinned by package-lock.json) ---
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  apt_install nodejs npm
fi
if [ ! -f "$BROWSER_DIR/node_modules/.package-lock.json" ] \
   || [ "$BROWSER_DIR/package-lock.json" -nt "$BROWSER_DIR/node_modules/.package-lock.json" ] \
   || [ "$BROWSER_DIR/package.json" -nt "$BROWSER_DIR/node_modules/.package-lock.json" ]; then
  echo "browser-test: npm ci in $BROWSER_DIR"
  # No install scripts: nothing may download a browser.
  (cd "$BROWSER_DIR" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
fi

# --- the kernel under test ---
if [ -z "${SAFE_DATA_BIN:-}" ]; then
  # Run on its own (not from test.sh, which has built everything already).
  nice cargo build --quiet --bin safe-data
  SAFE_DATA_BIN="$PWD/target/debug/safe-data"
fi
export SAFE_DATA_BIN
if [ ! -f "$DEMO/safe-data.toml" ]; then
  # Written aside and renamed, so a run started meanwhile never sees a half-written demo.
  mkdir -p "$WORK"
  scratch="$WORK/demo.tmp-$$"
  rm -rf "$scratch"
  "$SAFE_DATA_BIN" demo "$scratch" >/dev/null
  mv -T "$scratch" "$DEMO" 2>/dev/null || [ -f "$DEMO/safe-data.toml" ] \
    || { echo "browser-test: could not write the demo in $DEMO" >&2; exit 1; }
  rm -rf "$scratch"
fi
"$SAFE_DATA_BIN" install --prefix "$VENV" --name "$KERNEL_NAME" --display-name "$DISPLAY_NAME" \
  --config "$DEMO/safe-data.toml" >/dev/null

export CHROMIUM KERNEL_NAME DISPLAY_NAME
export KERNELSPEC_DIR="$VENV/share/jupyter/kernels/$KERNEL_NAME"
export JUPYTER="$VENV/bin/jupyter"
export ARTIFACTS="$PWD/$BROWSER_DIR/artifacts"
exec node "$BROWSER_DIR/jupyterlab.test.mjs"
