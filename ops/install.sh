#!/usr/bin/env bash
# Sets up everything `make run` needs on Debian/Ubuntu (Debian packages, a venv, the pip packages of
# requirements.lock: the runtime dependencies only);
# `install.sh dev` installs requirements-dev.lock instead (the runtime lock plus the dev extra: pytest, ruff, mypy,
# uv, ...) for `make lint`, `make bench` and `make lock`;
# `install.sh test` is `dev` plus what only the tests use outside pip (Chromium for the browser test).
# Idempotent and quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-run}
case "$mode" in
  run) lock=requirements.lock ;;
  dev | test) lock=requirements-dev.lock ;;
  *) echo "usage: $0 [run|dev|test]" >&2; exit 2 ;;
esac

PYTHON=${PYTHON:-python3}
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

apt_install() {
  if ! command -v apt-get >/dev/null; then
    echo "install: apt-get not found; install these yourself: $*" >&2
    return 1
  fi
  if [ -z "${APT_UPDATED:-}" ]; then
    $SUDO apt-get update -qq
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v curl >/dev/null || missing+=(curl)
command -v prometheus >/dev/null || missing+=(prometheus)  # make run scrapes the stack; promtool checks ops/
# nginx: API_INSTANCES=N make run puts it in front of the instances; openssl: the tests' throwaway certificates.
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v openssl >/dev/null || missing+=(openssl)
command -v bwrap >/dev/null || missing+=(bubblewrap)  # the code agent's sandbox (workers/sandbox.py)
if [ "$mode" = "test" ]; then
  [ -x /usr/bin/chromium ] || missing+=(chromium)  # the browser test drives it with Playwright
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "install: Debian packages: ${missing[*]}"
  apt_install "${missing[@]}"
fi

if [ ! -x .venv/bin/python ]; then
  echo "install: creating .venv with $($PYTHON --version)"
  if ! $PYTHON -m venv .venv 2>/dev/null; then
    rm -rf .venv
    ver=$($PYTHON -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    apt_install python3-venv "python${ver}-venv" || apt_install python3-venv
    $PYTHON -m venv .venv
  fi
fi

# The exact versions (and hashes) of $lock, then the project itself without resolving again. `make lock` writes
# both locks from pyproject.toml, the dev lock constrained by the runtime one, so a package both name has the same
# version in each. PIP_CONSTRAINT=/dev/null: the lock is the whole answer, so a machine-wide pip constraints file
# (e.g. /etc/xdg/pip) can only get in its way.
# .venv/.installed names the lock last installed. A runtime install (make run) is already satisfied by an up-to-date
# dev install (the dev lock pins every runtime package at the runtime lock's version), so `make run` after
# `make test` neither reinstalls nor pulls the tools out from under a test run; a fresh .venv gets the runtime lock only.
stamp=.venv/.installed
installed=$(cat "$stamp" 2>/dev/null || true)
if [ "$mode" = run ] && [ "$installed" = requirements-dev.lock ] && [ ! requirements-dev.lock -nt "$stamp" ] \
  && [ ! "$lock" -nt "$stamp" ] && [ ! pyproject.toml -nt "$stamp" ]; then
  exit 0
fi
if [ "$installed" != "$lock" ] || [ "$lock" -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "install: pip packages from $lock"
  .venv/bin/python -m pip install -q --upgrade pip
  PIP_CONSTRAINT=/dev/null .venv/bin/python -m pip install -q --require-hashes -r "$lock"
  .venv/bin/python -m pip install -q --no-deps -e .
  # A package another lock (an older one, the dev lock, or a hand install) left behind goes, so .venv holds what
  # $lock says.
  locked=$(sed -nE 's/^([A-Za-z0-9._-]+)==.*/\1/p' "$lock" | tr 'A-Z_.' 'a-z--')
  stale=$(.venv/bin/python -m pip freeze --exclude-editable | sed -nE 's/^([A-Za-z0-9._-]+)==.*/\1/p' \
    | tr 'A-Z_.' 'a-z--' | grep -vxF "$locked" || true)
  if [ -n "$stale" ]; then
    echo "install: removing what $lock does not name:" $stale
    .venv/bin/python -m pip uninstall -q -y $stale
  fi
  echo "$lock" >"$stamp"
fi
