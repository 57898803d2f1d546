# Shared by scripts/serve and scripts/test: make sure Python 3.11+ with venv exists and
# build the project's virtual environment in .venv.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

apt_install() {
    # Only on Debian-like systems where we may install; otherwise say what is missing.
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        if [ -z "${TETHER_APT_UPDATED:-}" ]; then
            apt-get update -qq >/dev/null
            export TETHER_APT_UPDATED=1
        fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
    else
        echo "missing: $* (install them with your package manager)" >&2
        exit 1
    fi
}

PYTHON=${PYTHON:-python3}
if ! command -v "$PYTHON" >/dev/null 2>&1; then apt_install python3 python3-venv; fi
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), "tether needs Python 3.11+"'
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv 2>/dev/null || { apt_install python3-venv; rm -rf .venv; "$PYTHON" -m venv .venv; }
    .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
fi
