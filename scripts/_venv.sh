# Shared by scripts/run and scripts/test: make the venv with a Python 3.11+ and install the
# project into it, only when pyproject.toml changed since the last install (or the extras asked
# for are not in yet): a stamp in the venv holds pyproject.toml's SHA-256 and the extras.
# Usage: source scripts/_venv.sh EXTRAS   (EXTRAS: "" or "[test]")
# Environment: VENV (default .venv), PYTHON (the interpreter of a new venv),
# GATEWAY_REINSTALL=1 (install even if nothing changed; the scripts' --reinstall sets it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=${VENV:-.venv}
extras=${1:-}
stamp=$VENV/.gateway-install
log=$VENV/install.log

pick_python() {
  if [ -n "${PYTHON:-}" ]; then  # named: that one or none, never another in its place
    if "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$PYTHON"; return 0
    fi
    echo "error: PYTHON=$PYTHON is not a Python 3.11 or newer" >&2
    return 1
  fi
  for candidate in python3 python3.13 python3.12 python3.11 python; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "error: Python 3.11 or newer is needed (set PYTHON=/path/to/python3.11)" >&2
  return 1
}

# Whether the stamp names this pyproject.toml and these extras ("" is content with any).
venv_is_current() {
  local digest installed
  [ -f "$stamp" ] || return 1
  read -r digest installed <"$stamp" || true
  [ "$digest" = "$1" ] && { [ -z "$extras" ] || [ "${installed:-}" = "$extras" ]; }
}

# pip with its own progress on a terminal (and a log), else quiet into the log.
run_pip() {
  if [ -t 1 ]; then
    "$VENV/bin/python" -m pip --disable-pip-version-check "$@" --log "$log"
  else
    "$VENV/bin/python" -m pip --disable-pip-version-check "$@" >>"$log" 2>&1
  fi
}

new_venv=
if [ ! -x "$VENV/bin/python" ]; then
  python=$(pick_python)
  echo "making $VENV with Python $("$python" -c 'import platform; print(platform.python_version())')" >&2
  "$python" -m venv "$VENV"
  new_venv=1
fi
pyproject=$("$VENV/bin/python" -c \
  'import hashlib; print(hashlib.sha256(open("pyproject.toml", "rb").read()).hexdigest())')

if [ -n "${GATEWAY_REINSTALL:-}" ]; then
  echo "installing the gateway${extras:+ with $extras} into $VENV (asked for) ..." >&2
elif venv_is_current "$pyproject"; then
  return 0
elif [ -f "$stamp" ]; then
  echo "installing the gateway${extras:+ with $extras} into $VENV (pyproject.toml or the extras changed) ..." >&2
else
  echo "installing the gateway${extras:+ with $extras} into $VENV (first run: about a minute; later runs skip this) ..." >&2
fi
started=$SECONDS
rm -f "$stamp"  # until this install is through
: >"$log"
# A venv's pip is as old as its Python: brought up to date once, when the venv is made.
if ! { { [ -z "$new_venv" ] || run_pip install --upgrade pip; } &&
       run_pip install -e ".$extras"; }; then
  if [ -t 1 ]; then
    echo "error: installing the gateway failed (pip's log: $log)" >&2
  else
    cat "$log" >&2
    echo "error: installing the gateway failed (log above, also in $log)" >&2
  fi
  exit 1
fi
echo "$pyproject $extras" >"$stamp"
echo "installed in $((SECONDS - started)) s" >&2
