#!/bin/sh
# Install the peer tools the benchmark compares rekkord against, if missing:
# restic, borg 1.2 and duplicity (with gnupg) and GNU time (peak RSS) from
# Debian's packages; borg 1.4 from the package index into a virtual
# environment of its own (it builds against libacl, OpenSSL, lz4, zstd and
# xxhash, whose headers come from Debian).  Safe to run repeatedly.
#
#   sh benchmarks/setup.sh                         # restic, borg 1.2, duplicity
#   sh benchmarks/setup.sh --borg14 DIR            # also borg 1.4 in the venv DIR
#   sh benchmarks/setup.sh --with-rekkord          # also `pip install -e .` (rekkord and its deps)
#
# benchmarks/run.py calls this script itself when a peer is missing.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BORG14=""
WITH_REKKORD=""
while [ $# -gt 0 ]; do
    case "$1" in
        --borg14) BORG14="$2"; shift 2 ;;
        --with-rekkord) WITH_REKKORD=1; shift ;;
        *) echo "setup.sh: unknown option $1" >&2; exit 2 ;;
    esac
done

need=""
command -v restic >/dev/null 2>&1 || need="$need restic"
command -v borg >/dev/null 2>&1 || need="$need borgbackup"
command -v duplicity >/dev/null 2>&1 || need="$need duplicity"
command -v gpg >/dev/null 2>&1 || need="$need gnupg"
[ -x /usr/bin/time ] || need="$need time"   # GNU time: per-operation peak RSS
if [ -n "$BORG14" ] && [ ! -x "$BORG14/bin/borg" ]; then
    need="$need libacl1-dev libssl-dev liblz4-dev libzstd-dev libxxhash-dev pkg-config"
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
if [ -n "$need" ]; then
    echo "setup.sh: installing:$need" >&2
    $SUDO apt-get update
    # shellcheck disable=SC2086
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y $need
fi

if [ -n "$BORG14" ] && [ ! -x "$BORG14/bin/borg" ]; then
    echo "setup.sh: installing borg 1.4 into $BORG14" >&2
    python3 -m venv "$BORG14"
    "$BORG14/bin/pip" install -q 'borgbackup>=1.4,<1.5'
    "$BORG14/bin/borg" --version
fi

if [ -n "$WITH_REKKORD" ]; then
    python3 -m pip install -e "$ROOT"
fi

restic version
borg --version
duplicity --version
