#!/usr/bin/env bash
# Installs lstm-adv into ./.venv from the lock file (requirements/lock.txt), editable, with the
# dev tools (pytest, nox, ruff, mypy). Needs only Python >= 3.11 with pip.
# The lock pins versions; dependencies of a platform-specific build (e.g. CUDA libraries of a
# torch wheel) are resolved at install time, so the same lock serves CPU and GPU machines.
#
# torch: the lock pins a version, not a build. Where pip is configured with a local folder of
# wheels (pip's find-links, e.g. a CPU build of torch), that configuration is passed on to uv;
# elsewhere the package index decides, as it would for `pip install torch`.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}

if ! "$PYTHON" -m uv --version >/dev/null 2>&1; then
    echo "installing uv (the installer) with pip…"
    "$PYTHON" -m pip install --quiet uv
fi

if [ -z "${UV_FIND_LINKS:-}" ]; then
    links=${PIP_FIND_LINKS:-$("$PYTHON" -m pip config get global.find-links 2>/dev/null || true)}
    if [ -n "$links" ]; then
        export UV_FIND_LINKS="$links"
    fi
fi

[ -x .venv/bin/python ] || "$PYTHON" -m uv venv --quiet --python "$PYTHON" .venv
"$PYTHON" -m uv pip install --quiet --python .venv/bin/python -r requirements/lock.txt
"$PYTHON" -m uv pip install --quiet --python .venv/bin/python --no-deps -e .
echo "lstm-adv installed in .venv — run .venv/bin/lstm-adv --help"
