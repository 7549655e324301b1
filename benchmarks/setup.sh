#!/bin/sh
# Install the peer tools the benchmark compares rekkord against (restic, borg),
# and GNU time (peak RSS), from Debian's packages, if they are missing.  Safe to run repeatedly.
#
#   sh benchmarks/setup.sh                 # restic + borg
#   sh benchmarks/setup.sh --with-rekkord  # also `pip install -e .` (rekkord and its deps)
#
# benchmarks/run.py calls this script itself when restic or borg is missing.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)

need=""
command -v restic >/dev/null 2>&1 || need="$need restic"
command -v borg >/dev/null 2>&1 || need="$need borgbackup"
[ -x /usr/bin/time ] || need="$need time"   # GNU time: per-operation peak RSS

if [ -n "$need" ]; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        SUDO="sudo"
    fi
    echo "setup.sh: installing:$need" >&2
    $SUDO apt-get update
    # shellcheck disable=SC2086
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y $need
fi

if [ "${1:-}" = "--with-rekkord" ]; then
    python3 -m pip install -e "$ROOT"
fi

restic version
borg --version
