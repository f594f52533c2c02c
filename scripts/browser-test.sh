#!/usr/bin/env bash
# The browser test: JupyterLab (from the venv) driven by Debian's Chromium
# through playwright-core (tests/browser/jupyterlab.test.mjs), run twice:
# 1. embedded: the `safe-data-test` kernelspec opens the demo's configuration
#    in the kernel process (`safe-data install --config`);
# 2. service: a `safe-data serve` started here (a copy of the demo's
#    configuration with a [service] section, its socket in a private 0700
#    folder, its own 0700 state_dir) and a `safe-data-test-service`
#    kernelspec that forwards everything to it (`safe-data install --service`).
# Each run checks the mode of the kernelspec and of the running kernel, and
# that the notebook's statements reached the audit log of that mode (the
# service's as the account running the test, not the demo's). The service is
# stopped on exit, whatever happens.
#
# Installs what it needs, idempotently (a no-op when already there):
# - the `chromium` Debian package (and `nodejs`/`npm` if there is no node),
#   with apt-get, through sudo when not root;
# - the node packages of tests/browser, with `npm ci` when node_modules is
#   missing or older than package-lock.json;
# - the demo dataset and the `safe-data-test` kernelspec in the venv, as the
#   Python tests do (tests/python/conftest.py). The service-mode kernelspec
#   lives in the service's temporary folder and goes with it.
# Screenshots and logs go to tests/browser/artifacts/{embedded,service}/ and
# the service's log to tests/browser/artifacts/safe-data-serve.log (git-ignored).
#
# Run alone: ./scripts/browser-test.sh (builds the kernel unless SAFE_DATA_BIN
# is set; scripts/test.sh sets it). Overrides: CHROMIUM (browser path),
# STEP_TIMEOUT_MS (bound of each step, default 60000), BROWSER_TEST_MODES
# ("embedded service" by default; one of them to run only that one).
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
MODES="${BROWSER_TEST_MODES:-embedded service}"
for mode in $MODES; do
  case "$mode" in
    embedded|service) ;;
    *) echo "browser-test: unknown mode \"$mode\" in BROWSER_TEST_MODES (embedded, service)" >&2; exit 2 ;;
  esac
done

ARTIFACTS_ROOT="$PWD/$BROWSER_DIR/artifacts"
mkdir -p "$ARTIFACTS_ROOT"
# Left by the one-run layout of earlier versions: every run now has its folder.
find "$ARTIFACTS_ROOT" -maxdepth 1 -type f \( -name '*.png' -o -name '*.log' -o -name '*.html' \) -delete

export CHROMIUM
export JUPYTER="$VENV/bin/jupyter"

# --- the data service (service mode) ---
SVC_DIR=""
SVC_PID=""
SVC_LOG="$ARTIFACTS_ROOT/safe-data-serve.log"

stop_service() {
  if [ -n "$SVC_PID" ] && kill -0 "$SVC_PID" 2>/dev/null; then
    kill -TERM "$SVC_PID" 2>/dev/null || true
    for _ in $(seq 100); do
      kill -0 "$SVC_PID" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$SVC_PID" 2>/dev/null; then
      echo "browser-test: the service did not stop within 10 s of SIGTERM: SIGKILL" >&2
      # Its own process group (setsid): the workers it started go too.
      kill -KILL -- "-$SVC_PID" 2>/dev/null || true
    fi
    wait "$SVC_PID" 2>/dev/null || true
  fi
  SVC_PID=""
  if [ -n "$SVC_DIR" ]; then
    rm -rf "$SVC_DIR"
    SVC_DIR=""
  fi
}
trap stop_service EXIT
trap 'exit 130' INT TERM HUP

start_service() {
  # Private: 0700, the socket and the kernelspec inside.
  SVC_DIR="$(mktemp -d "${TMPDIR:-/tmp}/safe-data-browser-svc.XXXXXX")" || exit 1
  chmod 0700 "$SVC_DIR" && mkdir -m 0700 "$SVC_DIR/state" || exit 1
  local demo_abs config="$SVC_DIR/safe-data.toml"
  demo_abs="$(cd "$DEMO" && pwd)"
  # The demo's paths are relative to its file: the copy names the demo's
  # sources absolutely and has its own state_dir.
  sed -E \
    -e "s#^(source[[:space:]]*=[[:space:]]*\")([^/\"][^\"]*)\"#\1$demo_abs/\2\"#" \
    -e "s#^state_dir[[:space:]]*=.*#state_dir = \"$SVC_DIR/state\"#" \
    "$DEMO/safe-data.toml" >"$config"
  if grep -Eq '^source[[:space:]]*=[[:space:]]*"[^/]' "$config" \
     || [ "$(grep -c "^state_dir = \"$SVC_DIR/state\"\$" "$config")" -ne 1 ]; then
    echo "browser-test: could not rewrite the paths of $DEMO/safe-data.toml for the service" >&2
    exit 1
  fi
  printf '\n[service]\nsocket = "%s"\nworkers = 2\n' "$SVC_DIR/safe-data.sock" >>"$config"
  SVC_SOCKET="$SVC_DIR/safe-data.sock"
  # The service lives through the run and starts its workers by exec'ing its
  # own binary again: a rebuild of SAFE_DATA_BIN meanwhile (cargo replaces the
  # file) would leave it no binary to exec. A hard link keeps this build for
  # the service and its kernels (the same path otherwise, e.g. across file systems).
  SVC_BIN="$SVC_DIR/safe-data"
  ln "$SAFE_DATA_BIN" "$SVC_BIN" 2>/dev/null || SVC_BIN="$SAFE_DATA_BIN"

  echo "browser-test: starting safe-data serve (socket $SVC_SOCKET, log ${SVC_LOG#"$PWD/"})"
  : >"$SVC_LOG"
  # Its own process group, so a stuck service goes with its workers.
  SAFE_DATA_LOG=info NO_COLOR=1 setsid "$SVC_BIN" serve --config "$config" \
    </dev/null >>"$SVC_LOG" 2>&1 &
  SVC_PID=$!
  local i
  for i in $(seq 300); do
    if grep -q "Safe Data service listening" "$SVC_LOG" && [ -S "$SVC_SOCKET" ]; then
      break
    fi
    if ! kill -0 "$SVC_PID" 2>/dev/null; then
      wait "$SVC_PID" && rc=0 || rc=$?
      SVC_PID=""
      echo "browser-test: safe-data serve exited with code $rc before listening; its log:" >&2
      cat "$SVC_LOG" >&2
      exit 1
    fi
    [ "$i" -lt 300 ] || { echo "browser-test: safe-data serve is not listening after 30 s; its log:" >&2; cat "$SVC_LOG" >&2; exit 1; }
    sleep 0.1
  done

  "$SVC_BIN" install --service "$SVC_SOCKET" --prefix "$SVC_DIR/prefix" \
    --name "$SVC_KERNEL_NAME" --display-name "$SVC_DISPLAY_NAME" >/dev/null || exit 1
}

SVC_KERNEL_NAME=safe-data-test-service
SVC_DISPLAY_NAME="Safe Data (test, service)"
DEMO_AUDIT="$DEMO/state/audit.jsonl"

# Runs the scenario in one mode; its status is the node script's.
run_mode() {
  local mode="$1"
  echo "== browser test, $mode mode"
  export KERNEL_MODE="$mode"
  export ARTIFACTS="$ARTIFACTS_ROOT/$mode"
  if [ "$mode" = embedded ]; then
    # (In a `||` list set -e does not hold here: every failure returns itself.)
    "$SAFE_DATA_BIN" install --prefix "$VENV" --name "$KERNEL_NAME" --display-name "$DISPLAY_NAME" \
      --config "$DEMO/safe-data.toml" >/dev/null || return 1
    export KERNEL_NAME DISPLAY_NAME
    export KERNELSPEC_DIR="$VENV/share/jupyter/kernels/$KERNEL_NAME"
    export AUDIT_LOG="$DEMO_AUDIT"
    unset SERVICE_SOCKET
    node "$BROWSER_DIR/jupyterlab.test.mjs"
  else
    start_service
    local before status=0
    before="$(stat -c %s "$DEMO_AUDIT" 2>/dev/null || echo 0)"
    KERNEL_NAME="$SVC_KERNEL_NAME" DISPLAY_NAME="$SVC_DISPLAY_NAME" \
      KERNELSPEC_DIR="$SVC_DIR/prefix/share/jupyter/kernels/$SVC_KERNEL_NAME" \
      AUDIT_LOG="$SVC_DIR/state/audit.jsonl" SERVICE_SOCKET="$SVC_SOCKET" \
      node "$BROWSER_DIR/jupyterlab.test.mjs" || status=$?
    # The notebook's table query (its alias is this test's own) must not reach
    # the demo's audit log: the kernel would have opened the data itself.
    # (Other records may: tests running meanwhile use the demo too.)
    if tail -c "+$((before + 1))" "$DEMO_AUDIT" 2>/dev/null \
       | grep -qF '"statement":"SELECT region, COUNT(*) AS patients FROM patients GROUP BY region ORDER BY region"'; then
      echo "browser-test: the service run's table query is in the demo's audit log ($DEMO_AUDIT): the kernel opened the data itself" >&2
      status=1
    fi
    if ! kill -0 "$SVC_PID" 2>/dev/null; then
      echo "browser-test: safe-data serve is not running any more after the service run; its log: $SVC_LOG" >&2
      status=1
    fi
    stop_service
    if grep -Eq '(^| )(ERROR|WARN)( |$)|panicked' "$SVC_LOG"; then
      echo "browser-test: the service logged warnings or errors (${SVC_LOG#"$PWD/"}):" >&2
      grep -E '(^| )(ERROR|WARN)( |$)|panicked' "$SVC_LOG" >&2
    fi
    return "$status"
  fi
}

failed=()
for mode in $MODES; do
  run_mode "$mode" || failed+=("$mode")
done
if [ "${#failed[@]}" -gt 0 ]; then
  echo "browser-test: FAILED in ${failed[*]} mode; artifacts in ${ARTIFACTS_ROOT#"$PWD/"}/" >&2
  exit 1
fi
echo "browser-test: passed in $(echo $MODES | sed 's/ / and /') mode"
