# Shared set-up for the scripts: a git-ignored Python venv with the test and
# notebook tools. Sourced, not run.
VENV="${VENV:-$PWD/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
if [ ! -f "$VENV/.installed" ] || [ tests/requirements.txt -nt "$VENV/.installed" ]; then
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r tests/requirements.txt
  touch "$VENV/.installed"
fi
export PATH="$VENV/bin:$PATH"
export VIRTUAL_ENV="$VENV"
